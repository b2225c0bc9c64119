"""kernels.py checked on the CPU: the fused MLP (FUSED_MLP=1) and the XSA + gate kernel (FUSED_XSA=1), whose Triton
kernels run under TRITON_INTERPRET=1 (`make setup` installs triton beside the CPU torch; it ships with every CUDA
torch), and the float8 MLP (FP8_MLP=1), whose torch._scaled_mm the CPU torch runs too.
The CUDA path of the first is the same kernel with larger tiles; the speed of each is a benchmark
(bench/mlp_kernel.py, bench/step_profile.py), not a test."""

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
assert os.environ["TRITON_INTERPRET"] == "1"  # set by conftest.py before anything imported triton

import train_gpt as tg  # noqa: E402
from quant.pack import pack  # noqa: E402
from tests.conftest import TINY, compile_whole, loss_and_grads  # noqa: E402

ROOT = tg.os.path.dirname(tg.os.path.abspath(tg.__file__))
K = tg.load_plugin("kernels")


def eager(x, w1, w2, slope):
    return F.linear(F.leaky_relu(F.linear(x, w1), slope).square(), w2)


def grads(f, *args):
    args = [a.detach().clone().requires_grad_() for a in args]
    y = f(*args)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()  # an uneven upstream gradient
    return [y.detach(), *(a.grad for a in args)]


@pytest.mark.parametrize("slope,split", [(0.5, False), (0.0, False), (0.5, True)])
def test_fused_mlp_matches_the_eager_mlp_forward_and_backward(slope, split, monkeypatch):
    """Shapes that fill no tile (M=2x37, d=40, hidden=72 against 32-wide tiles; TMA rows are multiples of 16 bytes):
    the descriptors' zero-filled loads and dropped stores past every edge are exercised, with the epilogue whole and
    split in two column halves (split: the right half of the last column tile is wholly past the edge)."""
    monkeypatch.setitem(K.TILES, True, (*K.TILES[True][:5], split))
    monkeypatch.setitem(K.TILES, False, (*K.TILES[False][:5], split))
    g = torch.Generator().manual_seed(0)
    x, w1, w2 = torch.randn(2, 37, 40, generator=g), torch.randn(72, 40, generator=g), torch.randn(40, 72, generator=g)
    fused = grads(lambda x, w1, w2: K.fused_mlp(x, w1, w2, slope), x, w1, w2)
    ref = grads(lambda x, w1, w2: eager(x, w1, w2, slope), x, w1, w2)
    for name, a, b in zip(("out", "dx", "dw1", "dw2"), fused, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5 * b.abs().max(), name


def test_fused_mlp_compiles_as_one_graph():
    """torch.compile (aot_eager: the CPU stand-in for inductor) traces the custom ops and their backward whole."""
    g = torch.Generator().manual_seed(1)
    x, w1, w2 = torch.randn(64, 32, generator=g), torch.randn(96, 32, generator=g), torch.randn(32, 96, generator=g)
    f = torch.compile(lambda x, w1, w2: K.fused_mlp(x, w1, w2, 0.5), backend="aot_eager", fullgraph=True)
    for a, b in zip(grads(f, x, w1, w2), grads(lambda x, w1, w2: eager(x, w1, w2, 0.5), x, w1, w2)):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_the_mlp_takes_the_kernel_only_to_train():
    """MLP.forward calls kernels.py for bf16 activations in training mode with gradients on; calibration (no_grad:
    its hooks must see fc and proj) and TTT (eval mode: its adapters sit on the linears) take the eager path."""
    h = tg.Hyperparameters({"PRESET": "tiny"})
    mlp, calls = tg.MLP(h), []
    mlp.fused = lambda x, w1, w2, slope: calls.append(x.shape) or eager(x, w1, w2, slope)
    x = torch.randn(2, 8, h.model_dim, dtype=torch.bfloat16)
    mlp(x)
    assert len(calls) == 1
    with torch.no_grad():
        mlp(x)
    mlp(x.float())
    mlp.eval()
    mlp(x)
    assert len(calls) == 1


def xsa_branch(attn, x, y, v, fused: bool):
    """Attention.out before its projection, its output and the gradients of x, y, v and the gate weight."""
    x, y, v = (t.detach().clone().requires_grad_() for t in (x, y, v))
    attn.gate.weight.grad = None
    if fused:
        out = K.xsa_gate(y.flatten(0, 1), v.flatten(0, 1), x.flatten(0, 1), attn.gate.weight).view_as(x)
    else:
        proj, attn.proj = attn.proj, torch.nn.Identity()
        out, attn.proj = tg.Attention.out(attn, x, y, v), proj
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()  # an uneven upstream gradient
    return [out.detach(), x.grad, y.grad, v.grad, attn.gate.weight.grad]


def test_fused_xsa_matches_attention_out_forward_and_backward():
    """kernels.xsa_gate against Attention.out's eager XSA + gate at the record's heads (8 over 4 kv heads, head dim
    64, a 12-dim gate), in fp32: 2x37 rows fill no 32-row block, and one value vector's norm is under normalize's eps
    (clamped: its backward keeps the part along v, scaled by 1/eps). x, y, v and the gate weight get gradients."""
    attn = tg.Attention(tg.Hyperparameters({"PRESET": "record", "ATTN_IMPL": "sdpa"}))
    torch.nn.init.normal_(attn.gate.weight, std=0.5)  # zero-initialised in a model: every gate would be 1
    g = torch.Generator().manual_seed(2)
    x, y, v = (torch.randn(2, 37, *shape, generator=g) for shape in ((512,), (8, 64), (4, 64)))
    v[0, 3, 1] *= 1e-14
    got, want = xsa_branch(attn, x, y, v, True), xsa_branch(attn, x, y, v, False)
    clamped = torch.zeros_like(v, dtype=torch.bool)
    clamped[0, 3, 1] = True
    got[3], want[3] = got[3][~clamped], want[3][~clamped]  # the clamped row's gradient is ~1e12: on its own
    got.append(xsa_branch(attn, x, y, v, True)[3][clamped])
    want.append(xsa_branch(attn, x, y, v, False)[3][clamped])
    for name, a, b in zip(("out", "dx", "dy", "dv", "dw", "dv_clamped"), got, want):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * b.abs().max(), name
    assert want[-1].abs().min() > 1e6  # the clamped branch, not a zero gradient


def test_fused_xsa_reads_v_in_place_from_fused_qkv(monkeypatch):
    """With FUSED_QKV=1, v is a view of the stacked q, k, v output: its rows are 1,024 apart, not 256. fused_xsa hands
    that view to the kernel as it is (no copy) and gives what a contiguous v gives, forward and every gradient."""
    attn = tg.Attention(tg.Hyperparameters({"PRESET": "record", "ATTN_IMPL": "sdpa"}))
    torch.nn.init.normal_(attn.gate.weight, std=0.5)
    g = torch.Generator().manual_seed(4)
    x, y, qkv = (torch.randn(2, 37, *shape, generator=g) for shape in ((512,), (8, 64), (1024,)))
    strides, op = [], K.xsa_gate
    monkeypatch.setattr(K, "xsa_gate", lambda y, v, *a: strides.append(v.stride()) or op(y, v, *a))

    def run(qkv, contiguous):
        qkv = qkv.detach().clone().requires_grad_()
        v = qkv[..., 768:].view(2, 37, 4, 64)
        out = K.fused_xsa(y, v.contiguous() if contiguous else v, x, attn.gate.weight)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), qkv.grad

    got, want = run(qkv, False), run(qkv, True)
    assert strides == [(1024, 64, 1), (256, 64, 1)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_attention_takes_the_xsa_kernel_to_train_and_compiles():
    """FUSED_XSA=1: Attention.out calls kernels.fused_xsa for bf16 in training with gradients on (COMPILE=2's graph
    traces it: aot_eager, whole); eval (TTT), no_grad (calibration) and fp32 take the eager code. On the CPU the
    attention stays eager unless told, as the MLP does."""
    h = tg.Hyperparameters({"PRESET": "record", "ATTN_IMPL": "sdpa", "FUSED_XSA": "1"})
    attn = tg.Attention(h)
    assert attn.fused is None
    torch.nn.init.normal_(attn.gate.weight, std=0.5)
    calls = []
    attn.fused = lambda *a: calls.append(1) or K.fused_xsa(*a)
    g = torch.Generator().manual_seed(3)
    x, y, v = (torch.randn(2, 40, *shape, generator=g).bfloat16() for shape in ((512,), (8, 64), (4, 64)))
    want = tg.Attention.out(attn.eval(), x, y, v)
    assert calls == []
    f = torch.compile(attn.train().out, backend="aot_eager", fullgraph=True)
    got = f(x, y, v)
    assert calls == [1] and got.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 0.02 * want.float().abs().max()  # bf16 rounding apart
    with torch.no_grad():
        attn.out(x, y, v)
    attn.out(x.float(), y.float(), v.float())
    assert calls == [1]


def fold_model(**env):
    """A tiny model with XSA and the attention gate (what the XSA kernel fuses), moved off its zero init."""
    torch.manual_seed(0)
    model = tg.GPT(tg.Hyperparameters({**TINY, "XSA": "1", "ATTN_GATE": "1", **env}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_the_folds_are_the_scaled_branches_they_replace():
    """Attention(x, mask, s) = s * Attention(x, mask) and MLP(x, s) = s * MLP(x), with the kernels (s folded into
    proj's rows) and without (fp32, where the kernels' and eager's arithmetic agree to 1e-5), every gradient too:
    with the kernels s's comes from the scaled weight's. A fold that lost s or the gate would be off by O(1)."""
    blk = fold_model(PARALLEL_FROM="-1").blocks[1]
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 40, 32, generator=g)
    ids = torch.randint(4, 100, (2, 40), generator=g)
    ids[:, ::17] = tg.BOS_ID
    mask = tg.Block.make_mask(ids, True, "sdpa", blk.attn)

    def run(fold: bool, mod, s):
        xx, args = x.detach().clone().requires_grad_(), (mask,) if mod is blk.attn else ()
        mod.zero_grad(), setattr(s, "grad", None)
        y = mod(xx, *args, s) if fold else s * mod(xx, *args)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.detach(), xx.grad, s.grad.clone(), *(p.grad for p in mod.parameters() if p.grad is not None)]

    for kernels in (True, False):
        blk.attn.fused, blk.mlp.fused = (K.fused_xsa, K.fused_mlp) if kernels else (None, None)
        for mod, s in ((blk.attn, blk.attn_scale), (blk.mlp, blk.mlp_scale)):
            got, want = run(True, mod, s), run(False, mod, s)
            assert len(got) == len(want) > 4
            for i, (a, b) in enumerate(zip(got, want, strict=True)):
                assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (type(mod).__name__, kernels, i)


def test_a_block_trains_through_the_folds_and_compiles(monkeypatch):
    """With both kernels set (bf16 training), every virtual layer's Block scales its branches in the projections'
    weights (serial and parallel blocks, recurrence on), eagerly and in COMPILE=2's whole graph (aot_eager), and gives
    the eager model's loss and gradients to bf16's rounding: no parameter's gradient moves further from the eager
    bf16 one than twice as far as that is from fp32's (up to 0.13 of its norm here: q_gain). The MLP kernel runs in
    fp32 here: the interpreter keeps bf16 as uint16 and its tl.dot multiplies the bit patterns (triton-lang/triton
    #11584, unsupported); on the GPU bf16 trains."""
    model, x, calls = fold_model(), torch.randint(4, 100, (2, 65)), []
    want, fp32 = loss_and_grads(model, x, bf16=True), loss_and_grads(model, x)
    floor = [float((a - b).norm() / b.norm()) for a, b in zip(want[1:], fp32[1:], strict=True)]

    def mlp32(x, w1, w2, slope):
        calls.append(1)
        with torch.autocast("cpu", enabled=False):  # fp32 throughout, its backward too
            return K.fused_mlp(x.float(), w1.float(), w2.float(), slope).to(x.dtype)

    folds, forward = [], tg.Attention.forward
    monkeypatch.setattr(tg.Attention, "forward", lambda self, *a: folds.append(len(a) == 3) or forward(self, *a))
    for b in model.blocks:
        b.attn.fused, b.mlp.fused = K.fused_xsa, mlp32
    got = loss_and_grads(model, x, bf16=True)
    assert folds == [True] * len(calls) and len(calls) == len(model.orders[True])  # every virtual layer folded
    compiled = copy.deepcopy(model)
    compile_whole(compiled, monkeypatch)
    traced = loss_and_grads(compiled, x, bf16=True)
    torch._dynamo.reset()
    assert all(folds) and len(folds) > len(model.orders[True])  # the trace went through the folds
    for run in (got, traced):
        torch.testing.assert_close(run[0], want[0], rtol=2e-3, atol=0)
        for a, b, f in zip(run[1:], want[1:], floor, strict=True):
            assert float((a - b).norm() / b.norm()) < 2 * f + 1e-3


def test_the_log_names_every_kernel_that_trains():
    """The log's model line names the kernels.py functions the blocks train with (the MLP's and the XSA's), else says
    that none trains (a baseline has no XSA to call eager)."""
    model, lines = tg.GPT(tg.Hyperparameters({**TINY})), []
    tg.log_model(lines.append, model)
    assert ", no kernels.py, layer order" in lines[-1]
    model.blocks[0].mlp.fused, model.blocks[1].attn.fused = K.fused_mlp, K.fused_xsa
    tg.log_model(lines.append, model)
    assert ", kernels fused_mlp, fused_xsa in training, layer order" in lines[-1]


def test_fused_xsa_wants_what_it_fuses():
    with pytest.raises(ValueError, match="FUSED_XSA=1: wants XSA=1, ATTN_GATE=1"):
        tg.Hyperparameters({"PRESET": "record", "FUSED_XSA": "1", "XSA": "0"})


@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_fp8_mlp_matches_the_eager_mlp_within_float8_rounding(slope):
    """FP8_MLP=1's MLP (torch._scaled_mm, which the CPU torch runs too) against the fp32 MLP: every GEMM rounds its
    operands to float8 (e4m3's 3 mantissa bits, e5m2's 2 for gradients), so the results differ by a few percent
    and no more; an operand without its scale, or a swapped gradient, is off by far more."""
    g = torch.Generator().manual_seed(2)
    x, w1, w2 = torch.randn(2, 48, 32, generator=g), torch.randn(64, 32, generator=g), torch.randn(32, 64, generator=g)
    w1, w2 = w1 * 0.01, w2 * 300  # scales far from 1: a missing scale shows
    fp8 = grads(lambda x, w1, w2: K.fp8_mlp(x, w1, w2, slope), x, w1, w2)
    ref = grads(lambda x, w1, w2: eager(x, w1, w2, slope), x, w1, w2)
    for name, a, b in zip(("out", "dx", "dw1", "dw2"), fp8, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        err = float((a - b).norm() / b.norm())
        assert 1e-4 < err < (0.08 if name == "out" else 0.15), (name, err)  # > 1e-4: it did round to float8


def test_fp8_mlp_compiles_as_one_graph():
    """The float8 MLP traces whole (aot_eager) and computes exactly what it computes eagerly, bf16 as it trains."""
    g = torch.Generator().manual_seed(3)
    x, w1, w2 = torch.randn(64, 32, generator=g), torch.randn(96, 32, generator=g), torch.randn(32, 96, generator=g)
    x, w1, w2 = x.bfloat16(), w1.bfloat16(), w2.bfloat16()
    f = torch.compile(lambda x, w1, w2: K.fp8_mlp(x, w1, w2, 0.5), backend="aot_eager", fullgraph=True)
    for a, b in zip(grads(f, x, w1, w2), grads(lambda x, w1, w2: K.fp8_mlp(x, w1, w2, 0.5), x, w1, w2)):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_fp8_mlp_is_refused_without_float8_gemms(monkeypatch):
    """FP8_MLP=1 on a (faked) CUDA card below compute capability 8.9 (an A100: no float8 GEMMs) stops in preflight,
    one line naming the card, before any data is read."""
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tg.torch.cuda, "get_device_capability", lambda *_: (8, 0))
    monkeypatch.setattr(tg.torch.cuda, "get_device_name", lambda *_: "NVIDIA A100")
    h = tg.Hyperparameters({**TINY, "FP8_MLP": "1", "ATTN_IMPL": "sdpa", "DATA_PATH": "/nonexistent"})
    with pytest.raises(ValueError, match=r"FP8_MLP=1: NVIDIA A100 has no float8 GEMMs \(compute capability < 8.9\)"):
        tg.preflight(h)


def test_fused_mlp_is_refused_without_tma(monkeypatch):
    """The record's default FUSED_MLP=1 on a (faked) CUDA card before Hopper (an A100: no TMA descriptors) stops in
    preflight, one line naming the card and the knob that turns it off, before any data is read."""
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tg.torch.cuda, "get_device_capability", lambda *_: (8, 0))
    monkeypatch.setattr(tg.torch.cuda, "get_device_name", lambda *_: "NVIDIA A100")
    h = tg.Hyperparameters({**TINY, "ATTN_IMPL": "sdpa", "DATA_PATH": "/nonexistent"})
    with pytest.raises(ValueError, match=r"FUSED_MLP=1: NVIDIA A100 has no TMA \(Hopper's\): set FUSED_MLP=0"):
        tg.preflight(h)


def test_fp8_mlp_trains_in_the_whole_compiled_model(monkeypatch):
    """COMPILE=2's graph (hidden whole, each block a nested region; aot_eager) traces the float8 MLP of the blocks
    under bf16 autocast, as a CUDA run trains it (on the CPU a model's MLP stays eager: the test sets the kernel)."""
    h = tg.Hyperparameters({**TINY, "FP8_MLP": "1"})
    torch.manual_seed(0)
    model = tg.GPT(h)
    mlps = [m for m in model.modules() if isinstance(m, tg.MLP)]
    assert mlps and all(m.fused is None for m in mlps)  # on the CPU the MLP stays eager unless told
    calls = []
    for m in mlps:
        m.fused = lambda *a: calls.append(1) or K.fp8_mlp(*a)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randint(4, h.vocab_size, (2, 65))
    x[:, ::20] = tg.BOS_ID

    want, compiled = loss_and_grads(model, x, bf16=True), copy.deepcopy(model)
    assert len(calls) == len(model.orders[True])  # every virtual layer's MLP, eagerly (recurrence on)
    compile_whole(compiled, monkeypatch)
    got = loss_and_grads(compiled, x, bf16=True)
    torch._dynamo.reset()
    assert len(calls) > len(model.orders[True])  # the trace went through fp8_mlp (the Python runs only to trace)
    # where compiled bf16 arithmetic differs from eager in a last bit, a float8 rounding can flip: the loss agrees
    # closely, the gradients to a few percent (float8 against bf16 differs as much: numerics are the tests above)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=0)
    assert max(float((a - b).norm() / b.norm()) for a, b in zip(want[1:], got[1:])) < 0.1


def test_the_cuda_tiles_fit_the_h100s_shared_memory():
    """bench/kernel_resources.py compiles gemm_act with kernels.CUDA_TILES, and xsa_gate_kernel both ways, for sm90
    here (triton's own ptxas, no GPU; the interpreter the other tests use compiles nothing): each kernel must need at
    most the H100's 232,448 bytes of shared memory a block, else it builds on the card and fails at its first launch,
    and spill no registers; a tile known to be over (262,208 bytes on an H100) is reported so."""
    tool = os.path.join(ROOT, "bench", "kernel_resources.py")
    out = subprocess.run([sys.executable, tool], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    gemm = [(r["forward"], tuple(r["tile"])) for r in rows if r["kernel"] == "gemm_act"]
    assert gemm == list(K.CUDA_TILES.items())
    assert [(r["forward"], tuple(r["tile"])) for r in rows if r["kernel"] == "xsa_gate"] == [
        (True, K.XSA_BLOCK),
        (False, K.XSA_BLOCK),
    ]
    assert all(0 < r["shared"] <= 232448 and r["spill"] == 0 for r in rows), rows
    over = subprocess.run([sys.executable, tool, "--tiles", "128,256,64,4,8,0"], capture_output=True, text=True)
    assert over.returncode == 1 and json.loads(over.stdout.splitlines()[0])["shared"] > 232448


def test_a_bundled_kernels_plug_in_runs_from_the_packed_file(tmp_path):
    """FUSED_MLP=1 ships kernels.py inside the packed file (make pack FUSED_MLP=1). Triton's jit reads a kernel's
    source: load_plugin registers the bundled text, so the packed copy runs the kernel it carries, not a file."""
    packed = tmp_path / "train_gpt.py"
    packed.write_text(pack(open(os.path.join(ROOT, "train_gpt.py")).read(), {"kernels": open(K.__file__).read()}))
    script = (
        "import torch, train_gpt as tg\n"
        "k = tg.load_plugin('kernels')\n"
        "assert 'kernels' in tg.BUNDLED and tg.PLUGIN_FILES == []\n"
        "x, w1, w2 = torch.randn(33, 16), torch.randn(48, 16), torch.randn(16, 48)\n"
        "ref = torch.nn.functional.linear(torch.nn.functional.leaky_relu(x @ w1.T, 0.5).square(), w2)\n"
        "print(float((k.fused_mlp(x, w1, w2, 0.5) - ref).abs().max() / ref.abs().max()))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-5


def test_a_kernels_module_imported_first_is_the_plug_in():
    """A script that imports kernels.py itself before train_gpt loads it gets one module, not a second copy, which
    registered the kernels:: custom ops again; calls through the first then crashed at random (segfaults, a missing
    op schema: 2026-12-07_fold_args.md). The log still embeds the file."""
    script = (
        "import kernels, train_gpt as tg\n"
        "assert tg.load_plugin('kernels') is kernels\n"
        "assert tg.PLUGIN_FILES == [tg.os.path.join(tg.os.path.dirname(tg.__file__), 'kernels.py')], tg.PLUGIN_FILES\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_step_profile_finds_what_inductor_fused_into_a_kernel(tmp_path, monkeypatch):
    """bench/step_profile.py lists, for each of Inductor's kernels in its top table, the source nodes and ATen ops
    fused into it, from the comment Inductor's output code writes above the kernel's definition. The header here is
    the one this torch's get_kernel_metadata writes; graph-fragment lines need not all be comments."""
    import torch._inductor.utils as inductor_utils

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("step_profile", os.path.join(ROOT, "bench", "step_profile.py"))
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    header, mapping = inductor_utils.get_kernel_metadata([], type("Wrapper", (), {"comment": "#"})())
    sigmoid = header.replace("[]", "[sigmoid, mul_3]", 1).replace("[]", "[aten.sigmoid, aten.mul]")
    wrapper = f"""
# kernel path: /tmp/ind/ab/cab.py
{sigmoid}
{mapping}
#   mul_3 => mul
# Graph fragment:
#   %mul_3 : Tensor = call_function[target=torch.ops.aten.mul.Tensor](args = (%a,
   %b), kwargs = {{}})
triton_poi_fused_mul_sigmoid_0 = async_compile.triton('triton_poi_fused_mul_sigmoid_0', '''
import triton
''', device_str='cuda')


# kernel path: /tmp/ind/cd/ccd.py
{header}
{mapping}
triton_per_fused_sum_1 = async_compile.triton('triton_per_fused_sum_1', '''
''', device_str='cuda')
"""
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "cwrapper.py").write_text(wrapper)
    (tmp_path / "ab" / "cab.py").write_text("import triton\n# a kernel's own source: no metadata\n")
    names = {"triton_poi_fused_mul_sigmoid_0", "triton_per_fused_sum_1", "triton_poi_fused_absent_2"}
    assert profile.kernel_origins(str(tmp_path), names) == {
        "triton_poi_fused_mul_sigmoid_0": ["sigmoid, mul_3 | aten.sigmoid, aten.mul"],
        "triton_per_fused_sum_1": [" | "],
    }


def test_step_profile_sets_inductor_config_and_refuses_unknown_settings(monkeypatch):
    """STEP_INDUCTOR=name=value,...: bool and int settings of torch._inductor.config (dotted names reach its
    sub-configs) are set and reported for the JSON row; an unknown name, a non-integer value or a setting of another
    type stops the profile with one line before any GPU work."""
    import torch._inductor.config as cfg

    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    spec = importlib.util.spec_from_file_location("step_profile", os.path.join(ROOT, "bench", "step_profile.py"))
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    with cfg.patch(coordinate_descent_tuning=False, **{"triton.spill_threshold": 16}):
        got = profile.inductor_settings("coordinate_descent_tuning=1,triton.spill_threshold=24")
        assert got == {"coordinate_descent_tuning": True, "triton.spill_threshold": 24}
        assert cfg.coordinate_descent_tuning is True and cfg.triton.spill_threshold == 24
    for bad in ("no_such_setting=1", "coordinate_descent_tuning=yes", "triton.nope=1", "cpp.simdlen=4"):
        with pytest.raises(SystemExit, match="STEP_INDUCTOR="):
            profile.inductor_settings(bad)
