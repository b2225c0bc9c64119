"""Training half of train_gpt.py on tiny CPU configs with real tokens (FineWeb train-pool docs)."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from tests.conftest import SHARED, SP1024, TINY, compile_whole, loss_and_grads

ROOT = Path(__file__).resolve().parents[1]


def hparams(data: Path, **over: str) -> tg.Hyperparameters:
    return tg.Hyperparameters({**TINY, "DATA_PATH": str(data), "TOKENIZER_PATH": str(SP1024), **over})


def run_train(h: tg.Hyperparameters) -> tuple[tg.GPT, dict]:
    torch.manual_seed(h.seed)
    model = tg.GPT(h)
    return model, tg.train(h, model, torch.device("cpu"), lambda *a, **k: None)


def test_loss_falls_over_30_steps(tiny_data):
    _, r = run_train(hparams(tiny_data, ITERATIONS="30"))
    losses = [l for _, l in r["history"]]
    assert r["steps"] == 30 and len(losses) == 30
    assert np.mean(losses[-5:]) < losses[0] - 1.0, losses


def test_warmup_restore_is_exact(tiny_data):
    """A run with compile warm-up ends bitwise where a run without it ends: weights restored,
    optimizer and EMA state fresh."""
    a, _ = run_train(hparams(tiny_data, ITERATIONS="3", WARMUP_STEPS="0"))
    b, _ = run_train(hparams(tiny_data, ITERATIONS="3", WARMUP_STEPS="2"))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_warmup_leaves_weights_and_reads_no_data(tiny_data):
    h = hparams(tiny_data, WARMUP_STEPS="2")
    model = tg.GPT(h)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def step(batch, opt, recur=False):
        seen.append((batch, recur))
        x, cus = batch
        model(x[:, :-1], x[:, 1:], recur=recur, cu=cus[0]).mean().backward()
        opt.step(1.0, 0.95)

    calib_s = tg.warmup_and_restore(model, step, h, torch.device("cpu"))
    assert [r for _, r in seen] == [False, False, True, True]  # two steps per graph: recurrence off and on
    assert all(x[:, 0].eq(tg.BOS_ID).all() for (x, _), _ in seen)  # random tokens, each row a document
    assert all(torch.equal(cus[0], tg.doc_offsets(x[:, :-1])) for (x, cus), _ in seen)  # the staged offsets
    assert h.quant == "gptq" and calib_s > 0  # the calibration pass was timed (on random tokens)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_loader_deterministic_and_world_size_independent(tiny_data):
    def batches(seed: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
        ld = tg.TokenLoader(str(tiny_data / "fineweb_train_*.bin"), 64, seed, rank, world, torch.device("cpu"))
        return [ld.next_batch(8, 8 // world)[0] for _ in range(3)]

    a, b, c = batches(1), batches(1), batches(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    halves = zip(batches(1, 0, 2), batches(1, 1, 2))
    assert all(torch.equal(torch.cat(pair), full) for pair, full in zip(halves, a))


def test_stream_loader_reads_like_the_official_baseline(tiny_data):
    """LOADER=stream: the shards in order as one wrapping stream; per step each rank takes the next
    contiguous seqs x seq_len + 1 tokens after the ranks before it; rows overlap by one token (x, y shift)."""
    files = tg.shard_files(str(tiny_data / "fineweb_train_*.bin"))
    flat = torch.from_numpy(np.concatenate([tg.load_shard(f) for f in files]).astype(np.int64))
    L, seqs, world = 64, 4, 2
    span = seqs // world * L + 1
    loaders = [
        tg.TokenLoader(str(tiny_data / "fineweb_train_*.bin"), L, 0, r, world, torch.device("cpu"), stream=True)
        for r in range(world)
    ]
    steps = len(flat) // (span * world) + 2  # past the end: the stream wraps to the first shard
    for step in range(steps):
        for r, ld in enumerate(loaders):
            start = step * span * world + r * span
            want = torch.cat([flat, flat])[start : start + span]
            assert torch.equal(ld.next_batch(seqs, seqs)[0], want.unfold(0, L + 1, L))


def test_bos_isolates_documents(tiny_data):
    """Record preset: changing the previous document's tokens changes no logit of the next one."""
    h = hparams(tiny_data)
    torch.manual_seed(0)
    model = tg.GPT(h)
    for p in model.parameters():  # random weights everywhere (zero-init layers would hide leaks)
        p.data.normal_(0, 0.2)
    ids = torch.randint(4, 1024, (1, 64))
    ids[0, 0] = ids[0, 40] = tg.BOS_ID
    other = ids.clone()
    other[0, 1:40] = torch.randint(4, 1024, (39,))
    with torch.no_grad():
        la, lb = model.logits(model.hidden(ids, True)), model.logits(model.hidden(other, True))
    assert not torch.allclose(la[0, :40], lb[0, :40])
    torch.testing.assert_close(la[0, 40:], lb[0, 40:], rtol=0, atol=1e-5)


def _segments_attention(q, k, v, cu, dout=None):
    """Causal attention of each packed sequence cu[i]:cu[i+1] with GQA and its log-sum-exp (heads, tokens), or with
    dout its q/k/v gradients, written out (a custom op's body runs below autograd)."""
    res, lse, rep = [torch.zeros_like(t) for t in (q, k, v)], q.new_empty(q.size(1), q.size(0)), q.size(1) // k.size(1)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        ks, vs = ks.repeat_interleave(rep, 0), vs.repeat_interleave(rep, 0)
        s = (qs @ ks.transpose(1, 2)) * q.size(-1) ** -0.5
        p = s.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        if dout is None:
            res[0][a:b], lse[:, a:b] = (p @ vs).transpose(0, 1), s.masked_fill(p == 0, float("-inf")).logsumexp(-1)
            continue
        do = dout[a:b].transpose(0, 1)
        dp = do @ vs.transpose(1, 2)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * q.size(-1) ** -0.5
        res[0][a:b] = (ds @ ks).transpose(0, 1)
        for i, g in ((1, ds.transpose(1, 2) @ qs), (2, p.transpose(1, 2) @ do)):  # summed over each GQA group
            res[i][a:b] = g.unflatten(0, (-1, rep)).sum(1).transpose(0, 1)
    return res if dout is not None else (res[0], lse)


def fake_fa3(monkeypatch) -> list:
    """FA3's forward and backward as stand-ins with its signature, computed per sequence; returns their calls."""
    calls = []

    def fa3_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal):
        calls.append(("fwd", k.size(1), cu_seqlens_q.tolist(), causal, softmax_scale == q.size(-1) ** -0.5))
        return *_segments_attention(q, k, v, cu_seqlens_q), None

    def fa3_bwd(dout, q, k, v, out, lse, cu, cu_k, _sq, _sk, max_q, max_k, dq, dk, dv, scale, causal):
        calls.append(("bwd", tuple(lse.shape), cu.tolist(), causal, scale == q.size(-1) ** -0.5))
        for buf, g in zip((dq, dk, dv), _segments_attention(q, k, v, cu, dout)):
            buf.copy_(g)

    monkeypatch.setattr(tg, "fa3_fwd", fa3_fwd)
    monkeypatch.setattr(tg, "fa3_bwd", fa3_bwd)
    return calls


def test_varlen_call_gets_document_offsets_and_unrepeated_kv(monkeypatch):
    """attend's varlen path (the H100's) against the dense document mask, on the CPU: a stand-in for torch's
    flash varlen kernel checks the call the GPU gets (one sequence per (row, document), the 4 k/v heads as
    they are: flash does GQA itself) and computes it per sequence."""
    calls = []

    def varlen(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        calls.append((k.size(1), cu_q.tolist(), kw))
        return _segments_attention(q, k, v, cu_q)[0]

    monkeypatch.setattr(tg, "varlen_attn", varlen)
    torch.manual_seed(0)
    ids = torch.randint(4, 1024, (2, 24))
    ids[0, 10] = ids[1, 0] = ids[1, 5] = tg.BOS_ID
    q, k, v = torch.randn(2, 24, 8, 16), torch.randn(2, 24, 4, 16), torch.randn(2, 24, 4, 16)
    got = tg.attend(q, k, v, tg.AttnMask(ids, True, "varlen"))
    torch.testing.assert_close(got, tg.attend(q, k, v, tg.AttnMask(ids, True, "sdpa")))
    assert calls == [(4, [0, 10, 24, 29, 48], {**tg.VARLEN_CAUSAL, **tg.VARLEN_GQA})]


@pytest.mark.parametrize("impl", ["fa3", "fa4"])
def test_flash_varlen_op_calls_fa3_and_fa4_as_their_interfaces_expect(monkeypatch, impl):
    """The custom op that COMPILE=2 traces (train_gpt::flash_varlen) around FA3's and FA4's forward and backward,
    on the CPU: stand-ins with each library's signature check the calls (one sequence per (row, document), FA4 the
    4 k/v heads unrepeated, FA3 repeated to 8, causal, FA4 asked for the lse) and compute them; the output and the
    q/k/v gradients must match SDPA with the dense document mask, eagerly and compiled (aot_eager, one graph). First a
    second copy of train_gpt.py is imported into this process, as verify and make import a shipped one: the ops must
    survive it."""
    spec = importlib.util.spec_from_file_location("_copy_of_train_gpt", tg.__file__)
    monkeypatch.setitem(sys.modules, spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(sys.modules[spec.name])
    calls = fake_fa3(monkeypatch)

    def fa4_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, return_lse):
        calls.append(("fwd", k.size(1), cu_seqlens_q.tolist(), causal and return_lse, softmax_scale == 16**-0.5))
        return *_segments_attention(q, k, v, cu_seqlens_q), None, None, None

    def fa4_bwd(q, k, v, out, dout, lse, scale, causal, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        calls.append(("bwd", tuple(lse.shape), cu_seqlens_q.tolist(), causal, scale == 16**-0.5))
        return _segments_attention(q, k, v, cu_seqlens_q, dout)

    monkeypatch.setattr(tg, "fa4_fwd", fa4_fwd)
    monkeypatch.setattr(tg, "fa4_bwd", fa4_bwd)
    torch.manual_seed(0)
    ids = torch.randint(4, 1024, (2, 24))
    ids[0, 10] = ids[1, 0] = ids[1, 5] = tg.BOS_ID
    qkv = [torch.randn(2, 24, 8, 16), torch.randn(2, 24, 4, 16), torch.randn(2, 24, 4, 16)]
    dout = torch.randn(2, 24, 8, 16)

    def out_and_grads(fn, mask_impl):
        leaves = [t.clone().requires_grad_() for t in qkv]
        out = fn(*leaves, tg.AttnMask(ids, True, mask_impl))
        return [out, *torch.autograd.grad(out, leaves, dout)]

    want = out_and_grads(tg.attend, "sdpa")
    for fn in (tg.attend, torch.compile(tg.attend, backend="aot_eager", fullgraph=True)):
        for got, ref in zip(out_and_grads(fn, impl), want):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    cu, kv_heads = [0, 10, 24, 29, 48], 8 if impl == "fa3" else 4  # FA3 gets k/v repeated to the query heads
    assert calls == 2 * [("fwd", kv_heads, cu, True, True), ("bwd", (8, 48), cu, True, True)]


def test_training_offsets_are_staged_on_the_cpu_and_compile_once(tiny_data, monkeypatch):
    """The varlen offsets training gives the packed kernels are built on the CPU in TokenLoader's background thread
    (doc_offsets of each micro-batch: on the GPU, nonzero is a host sync a step). On real windows they cut each row
    at its BOS tokens and nowhere else; COMPILE=2's graph (aot_eager, FA3 as a stand-in) takes them for any number
    of documents without recompiling, and gives the loss and gradients of the offsets AttnMask builds itself."""
    h = hparams(tiny_data, TRAIN_SEQ_LEN="256", TRAIN_BATCH_TOKENS=str(8 * 256), MICRO_BATCH_TOKENS=str(4 * 256))
    loader = tg.TokenLoader(h.train_files, h.train_seq_len, h.seed, 0, 1, torch.device("cpu"))
    batches = [loader.next_batch(8, 4) for _ in range(3)]
    for x, cus in batches:
        assert len(cus) == 2
        for rows, cu in zip(x.split(4), cus):
            ids, cu = rows[:, :-1].flatten(), cu.tolist()
            assert cu[0] == 0 and cu[-1] == len(ids) and cu == sorted(set(cu))
            bos = set(torch.nonzero(ids == tg.BOS_ID).flatten().tolist())
            assert set(cu[:-1]) == bos | set(range(0, len(ids), h.train_seq_len))  # a BOS or a row start
    assert len({len(cu) for _, cus in batches for cu in cus}) > 1  # the document count varies
    calls = fake_fa3(monkeypatch)
    torch.manual_seed(0)
    model = tg.GPT(h)
    model.attn_impl = "fa3"
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    compiled, built = copy.deepcopy(model), []
    compile_whole(compiled, monkeypatch)
    monkeypatch.setattr(tg, "doc_offsets", lambda ids, f=tg.doc_offsets: built.append(1) or f(ids))
    for i, (x, cus) in enumerate(batches):
        n = len(calls)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = loss_and_grads(compiled, x[:4], cu=cus[0])
        assert not built and {tuple(c[2]) for c in calls[n:]} == {tuple(cus[0].tolist())}  # FA3 got the staged ones
        want = loss_and_grads(model, x[:4])  # AttnMask builds them
        assert built
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        built.clear()
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "capability,installed,auto", [((9, 0), "fa3 fa4", "fa3"), ((9, 0), "fa4", "fa4"), ((8, 0), "fa3 fa4", "varlen")]
)
def test_auto_attention_takes_fa3_then_fa4_then_torch_varlen_on_hopper(monkeypatch, capability, installed, auto):
    """ATTN_IMPL=auto on a (faked) CUDA machine: FA3, else FA4, else torch's varlen kernel; FA3 and FA4 only on
    Hopper or later (their kernels do not run on an A100)."""
    monkeypatch.setattr(tg.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tg.torch.cuda, "get_device_capability", lambda *_: capability)
    for name in ("fa3_fwd", "fa4_fwd", "varlen_attn"):
        monkeypatch.setattr(tg, name, object() if name[:3] in installed or name == "varlen_attn" else None)
    assert tg.default_attn_impl() == auto
    assert [k for k, ok in tg.attn_impls().items() if ok][0] == auto


SWITCHES = [
    "XSA=0",
    "SMEAR=0",
    "ATTN_GATE=0",
    "UNET=0",
    "SKIP_GATES=0",
    "X0_MIX=0",
    "LN_SCALE=0",
    "PARALLEL_FROM=-1",
    "RECUR_EXTRA=0",
    "DOC_MASK=0",
    "MUON_ROW_NORM=0",
    "POLAR_EXPRESS=0",
    "EMA=0",
    "ROPE_DIMS=0",
    "LEAKY_SLOPE=0",
    "GRAD_CLIP_NORM=0",
    "BF16_RESID=0",
    "EMBED_BF16=1",
]


@pytest.mark.parametrize("switch", SWITCHES)
def test_feature_switch_builds_and_trains(tiny_data, switch):
    key, value = switch.split("=")
    _, r = run_train(hparams(tiny_data, ITERATIONS="6", **{key: value}))
    losses = [l for _, l in r["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("on", [1, 0])
def test_bf16_resid_sets_the_residual_dtype_under_autocast_only(on):
    h = tg.Hyperparameters({**TINY, "BF16_RESID": str(on)})
    model, seen = tg.GPT(h), []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    ids = torch.randint(4, 1024, (2, 32))
    with torch.no_grad():
        model.hidden(ids, True)
        with torch.autocast("cpu", torch.bfloat16):
            model.hidden(ids, True)
    n = len(seen) // 2
    assert seen[:n] == [torch.float32] * n  # no autocast (CPU eval, tests): fp32 as before
    assert seen[n:] == [torch.bfloat16 if on else torch.float32] * n


def test_whole_compile_matches_eager(monkeypatch):
    """compile_parts(whole=True), as COMPILE=2 trains (hidden as one graph, run_block a nested region
    reused by every virtual layer), gives the eager loss and gradients; aot_eager: the same trace and
    autograd graph as inductor's, without a C++ compiler. COMPILE=2 is refused for the other archs."""
    h = tg.Hyperparameters(TINY)
    torch.manual_seed(0)
    model = tg.GPT(h)
    with torch.no_grad():
        for p in model.parameters():  # off the zero init, so every branch carries gradient
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randint(4, h.vocab_size, (2, 65))
    x[:, ::20] = tg.BOS_ID

    want, compiled = loss_and_grads(model, x), copy.deepcopy(model)
    compile_whole(compiled, monkeypatch)
    got = loss_and_grads(compiled, x)
    torch._dynamo.reset()
    for a, b in zip(want, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="COMPILE=2 compiles ARCH=gpt only"):
        tg.Hyperparameters({**TINY, "COMPILE": "2", "ARCH": "pse"})
    # the record default compiles whole; an alternative ARCH and the baseline (as measured) per block
    assert [
        tg.Hyperparameters({"PRESET": p, "ARCH": a}).compile
        for p, a in (("record", "gpt"), ("record", "pse"), ("baseline", "gpt"))
    ] == [2, 1, 1]
    # and the fp32 residual they were measured with, unless BF16_RESID is given
    cases = (("gpt", {}), ("scan", {}), ("scan", {"BF16_RESID": "1"}))
    assert [tg.Hyperparameters({"PRESET": "record", "ARCH": a, **e}).bf16_resid for a, e in cases] == [1, 0, 1]


def test_fused_qkv_trains_as_the_three_linears_and_compiles(monkeypatch):
    """FUSED_QKV=1: in bf16 training q, k and v come from one GEMM over the three linears' weights, each cast, stacked.
    The loss and every gradient equal the three linears' to bf16 rounding, eager and in COMPILE=2's whole graph
    (aot_eager). Under no_grad (calibration), in eval mode (scoring, TTT) and in fp32 the linears themselves run,
    so their hooks and adapters see x; without BF16_RESID the knob is refused."""
    torch.manual_seed(0)
    base = tg.GPT(tg.Hyperparameters(TINY))
    with torch.no_grad():
        for p in base.parameters():  # off the zero init, so every branch carries gradient
            p.add_(0.01 * torch.randn_like(p))
    fused = tg.GPT(tg.Hyperparameters({**TINY, "FUSED_QKV": "1"}))
    fused.load_state_dict(base.state_dict())
    x = torch.randint(4, 1024, (2, 65))
    x[:, ::20] = tg.BOS_ID
    calls = []
    for block in fused.blocks:
        block.attn.c_v.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape))

    want, compiled = loss_and_grads(base, x, bf16=True), copy.deepcopy(fused)
    for got in (
        loss_and_grads(fused, x, bf16=True),
        (compile_whole(compiled, monkeypatch), loss_and_grads(compiled, x, bf16=True))[1],
    ):
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=0.02, atol=0.02 * a.abs().max().item())
    torch._dynamo.reset()
    assert calls == []  # bf16 training: the stacked GEMM
    loss_and_grads(fused, x)  # fp32
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        fused(x[:, :-1], x[:, 1:])
    fused.eval()(x[:, :-1], x[:, 1:])
    assert len(calls) == 3 * len(fused.orders[True])  # every virtual layer's c_v, each time
    with pytest.raises(ValueError, match="FUSED_QKV=1 wants BF16_RESID=1"):
        tg.Hyperparameters({**TINY, "FUSED_QKV": "1", "BF16_RESID": "0"})


def grad_check(*over: str) -> dict:
    """bench/grad_check.py on the tiny model (3 steps): a child process, since the memory corruption it guards
    against can abort the interpreter (glibc's heap checks)."""
    cmd = [sys.executable, "bench/grad_check.py", *(f"{k}={v}" for k, v in TINY.items()), "GRAD_SEQS=2", "GRAD_STEPS=3"]
    p = subprocess.run([*cmd, *over], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_compile_2_under_inductor_gives_the_eager_gradients():
    """COMPILE=2 through Inductor itself (the tests elsewhere trace with aot_eager), fp32, depth recurrence on, so
    block regions are reused within a step: loss and every gradient within 1e-4 of the eager model's, step after
    step. With Inductor's buffer reuse (torch 2.13, CPU) resid_mix's came out up to 0.47 of its norm off: reuse
    overwrote a block input a region had saved for its backward (2026-12-07_qkv_h100.md)."""
    r = grad_check()
    assert (r["compile"], r["dtype"], r["buffer_reuse"], r["base"], r["steps"]) == (2, "fp32", False, "COMPILE=0", 3)
    assert r["max_rel"] < 1e-4, r["worst"]


def test_fused_qkv_under_inductor_with_recurrence():
    """COMPILE=2 through Inductor, bf16, depth recurrence on: with FUSED_QKV=1 loss and gradients are the three
    linears' (both compiled; bf16 rounding apart), step after step. Stacked uncast, the weights' gradients left the
    region as views of one buffer, whose memory Inductor reused: glibc aborted here, and on an H100 the proxy-300 run
    lost 0.037 bpb (bench/results/2026-12-07_qkv_h100.md)."""
    r = grad_check("GRAD_DTYPE=bf16", "FUSED_QKV=1", "GRAD_BASE=COMPILE=2,FUSED_QKV=0")
    assert (r["compile"], r["fused_qkv"], r["dtype"], r["buffer_reuse"]) == (2, 1, "bf16", False)
    # bf16 rounding apart: the weights within 2e-2; q_gain's small gradient moved 0.019-0.050 in six runs (Inductor's
    # CPU reductions), so it gets 0.2. The bug this guards put c_k's gradient off by inf, or aborted.
    weights = [w["rel"] for w in r["worst"] if not w["name"].endswith("q_gain")]  # 4 q_gains: the rest is in the top 8
    assert max(weights) <= 0.02 and r["max_rel"] <= 0.2, r["worst"]


def test_baseline_parameter_count():
    h = tg.Hyperparameters({"PRESET": "baseline"})
    model = tg.GPT(h)
    assert sum(p.numel() for p in model.parameters()) == 17_059_912
    # the official script keeps its tied embedding in bf16 (the rest of the record stack: fp32 master weights)
    assert model.tok_emb.weight.dtype == torch.bfloat16 and model.blocks[0].mlp.fc.weight.dtype == torch.float32
    assert tg.GPT(tg.Hyperparameters(TINY)).tok_emb.weight.dtype == torch.float32


def test_presets_and_env_override():
    h = tg.Hyperparameters({"PRESET": "record"})
    assert (h.num_layers, h.model_dim, h.vocab_size, h.rope_dims, h.parallel_from) == (11, 512, 8192, 16, 7)
    assert tg.Hyperparameters({"PRESET": "baseline", "NUM_LAYERS": "5"}).num_layers == 5
    with pytest.raises(ValueError, match="PRESET"):
        tg.Hyperparameters({"PRESET": "nope"})


def test_lr_schedule():
    h = tg.Hyperparameters({"PRESET": "record", "LR_FLOOR": "0.1"})
    assert tg.lr_scale(0.2, h, 100.0, 588.0) == 1.0
    assert tg.lr_scale(1.0, h, 100.0, 588.0) == pytest.approx(0.1)
    assert tg.lr_scale(1 - h.warmdown_frac / 2, h, 100.0, 588.0) == pytest.approx(0.55)
    # WARMDOWN_ITERS (the baseline): that many steps at the current ms/step, as a share of the budget
    hb = tg.Hyperparameters({"PRESET": "baseline"})
    assert tg.lr_scale(0.95, hb, 50.0, 600.0) == pytest.approx(0.5)  # 1200 x 50 ms: the last 10% of 600 s


@pytest.mark.parametrize("every", [1, 10])
def test_the_clock_is_read_every_clock_every_steps_and_every_step_near_the_cap(monkeypatch, every):
    """train_loop syncs (drains the GPU queue) to read the clock only every CLOCK_EVERY steps, and on every step
    once within 2 x (CLOCK_EVERY + 1) steps of the budget; in between it extrapolates. On a clock where each step takes
    0.125 s, CLOCK_EVERY=10 stops at the same step as reading every step, and the cap holds."""
    now, reads = [0.0], []
    monkeypatch.setattr(tg.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(tg, "sync", lambda device: reads.append(steps[0]))
    steps = [0]

    def step(batch, opt, scale, mom, recur):
        now[0], steps[0] = now[0] + 0.125, steps[0] + 1
        return torch.zeros(())

    h = tg.Hyperparameters({**TINY, "CLOCK_EVERY": str(every), "EMA": "0", "ITERATIONS": "100000"})
    loader = type("Loader", (), {"next_batch": lambda self, n, micro: None})()
    n, train_s, _ = tg.train_loop(h, tg.GPT(h), step, loader, 10.0, torch.device("cpu"), lambda *a: None, None, None)
    assert n == 79 and train_s == 9.875  # the next step would end at the cap
    mid = [r for r in reads[1:-1] if r < n - 2 * every - 2]  # before the last 2 x (CLOCK_EVERY + 1) steps
    assert mid == list(range(every, n - 2 * every - 2, every)) and len(mid) >= 50 // every
    assert set(range(n - 2 * every + 1, n + 1)) <= set(reads)  # every step near the cap


def test_cli_run_logs_source_and_compliance(tiny_data, tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **TINY,
        "DATA_PATH": str(tiny_data),
        "TOKENIZER_PATH": str(SP1024),
        "ITERATIONS": "4",
        "RUN_ID": "cli_test",
        "TRAIN_LOG_EVERY": "2",
    }
    r = subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "logs/cli_test.txt").read_text()
    assert log.startswith((ROOT / "train_gpt.py").read_text())
    assert "compliance train:" in log and "compliance eval:" in log
    assert "\nbytes: val counts the tokenizer pieces\n" in log  # a CaseOps set says it counts its sidecar
    final = [l for l in log.splitlines() if l.startswith("eval val sliding:")]
    assert len(final) == 1 and (tmp_path / "artifacts/cli_test.pgq").exists()
    # EVAL_ONLY re-scores the artifact from disk: the same numbers, and PER_TOKEN_OUT holds them per token
    env.update(EVAL_ONLY="1", ARTIFACT="artifacts/cli_test.pgq", RUN_ID="cli_eval", PER_TOKEN_OUT="nll.npy")
    r = subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    again = [l for l in (tmp_path / "logs/cli_eval.txt").read_text().splitlines() if l.startswith("eval val sliding:")]
    assert again[0].split(" seconds ")[0] == final[0].split(" seconds ")[0]
    nll = np.load(tmp_path / "nll.npy")
    tokens = int(final[0].split(" tokens ")[1].split()[0])
    loss = float(final[0].split("val_loss ")[1].split()[0])
    assert nll.shape == (tokens,) and nll.dtype == np.float32
    assert float(nll.astype(np.float64).mean()) == pytest.approx(loss, abs=1e-5)
    # an artifact over SIZE_CAP is still scored, then the run fails with one line
    env.update(SIZE_CAP="100000", RUN_ID="cli_cap", PER_TOKEN_OUT="")
    r = subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "SIZE_CAP" in r.stderr
    assert "eval val sliding:" in (tmp_path / "logs/cli_cap.txt").read_text()


def test_cli_bad_tokenizer_is_one_line_error(tiny_data, tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        **TINY,
        "DATA_PATH": str(tiny_data),
        "TOKENIZER_PATH": str(SHARED / "data/tokenizers/fineweb_8192_bpe.model"),
    }
    r = subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_bench_agree_tells_matching_curves_from_different_ones(tiny_data, tmp_path):
    """bench/agree.py (#3's 1-GPU vs 2-GPU check): curves from the same seed agree, another seed's do not, a
    run that stopped early is an error; end to end through torchrun at one rank on CPU."""
    sys.path.insert(0, str(ROOT / "bench"))
    import agree

    def curve(seed: str) -> dict[int, float]:
        lines = []
        h = hparams(tiny_data, ITERATIONS="8", SEED=seed)
        torch.manual_seed(h.seed)
        tg.train(h, tg.GPT(h), torch.device("cpu"), lines.append)
        return agree.losses("\n".join(lines))

    a, b, c = curve("1"), curve("1"), curve("2")
    assert sorted(a) == list(range(1, 9)) and agree.compare({1: a, 2: b}, 8, 1e-2)["ok"]
    bad = agree.compare({1: a, 2: c}, 8, 1e-2)
    assert not bad["ok"] and bad["runs"][2]["abs_diff_at_steps"] > 1e-2
    assert (
        "no train_loss" in agree.compare({1: a, 2: {s: v for s, v in a.items() if s < 8}}, 8, 1e-2)["runs"][2]["error"]
    )


def test_two_ranks_train_like_one_and_score_the_same(tiny_data, tmp_path):
    """torchrun at 2 ranks on CPU (gloo): the sharded Muon step, the split batch (4 and 2 micro-batches) and the
    rank-averaged loss train like 1 rank (bench/agree.py, #3's check); every eval path, TTT's global SGD and
    per-document LoRA included (and its cached-context mode), gives the same numbers from one artifact at 1 and 2
    ranks (each position scored once); and a clock-bound run (warm-up, recurrence switch, stop, calibration
    reserve) ends on every rank."""
    art = tmp_path / "agree.pgq"
    env = {
        **TINY,
        "DATA_PATH": str(tiny_data),
        "TOKENIZER_PATH": str(SP1024),
        "ARTIFACT": str(art),
        "MICRO_BATCH_TOKENS": "256",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
    }  # gloo: no hostname lookup
    p = subprocess.run(
        [
            sys.executable,
            "bench/agree.py",
            "--nprocs",
            "1,2",
            "--steps",
            "6",
            "--tol",
            "2e-3",
            "--out",
            str(tmp_path),
            *(f"{k}={v}" for k, v in env.items()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "agree.json").read_text())
    assert (
        r["ok"] and r["runs"]["2"]["max_abs_diff"] < 2e-3 and "world_size 2" in (tmp_path / "agree_n2.txt").read_text()
    )

    def torchrun(n: int, run_id: str, **over: str) -> list[str]:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={n}",
                str(ROOT / "train_gpt.py"),
            ],
            cwd=tmp_path,
            env={**os.environ, **env, **over, "RUN_ID": run_id},
            check=True,
            capture_output=True,
            timeout=600,
        )
        return (tmp_path / f"logs/{run_id}.txt").read_text().split("\nhyperparameters: ")[1].splitlines()

    def evals(n: int, paths="plain,sliding,ngram,ttt,ttt_ngram", **over: str) -> list[str]:
        log = torchrun(
            n,
            f"evals_n{n}{len(over)}",
            EVAL_ONLY="1",
            EVAL_PATHS=paths,
            TTT_LORA="1",
            TTT_DOCS="4",
            TTT_CHUNK="64",
            TTT_PHASES="2",
            TTT_PHASE_DOCS="20",  # the 40 val docs in two phases
            **over,
        )
        return [line.split(" seconds")[0] for line in log if line.startswith("eval val ")]

    def same(one: list[str], two: list[str]) -> bool:
        """The same paths, tokens and bytes, and losses equal to float noise: a rank's batch holds other
        documents, and a batched matmul's last bits may depend on its shape (2e-8 seen in cached TTT)."""
        nums = lambda line: [float(x) for x in line.split()[4::2]]  # val_loss, val_bpb, tokens, bytes
        return [l.split(":")[0] for l in one] == [l.split(":")[0] for l in two] and all(
            nums(a)[2:] == nums(b)[2:] and np.allclose(nums(a)[:2], nums(b)[:2], rtol=0, atol=1e-6)
            for a, b in zip(one, two)
        )

    one, two = evals(1), evals(2)  # the record's TTT: LoRA with cached context
    assert len(one) == 5 and same(one, two)
    one, two = evals(1, "ttt", TTT_CACHE="0"), evals(2, "ttt", TTT_CACHE="0")  # windows: each chunk re-reads
    assert len(one) == 1 and same(one, two)
    log = torchrun(
        2,
        "clock_n2",
        ARTIFACT=str(tmp_path / "clock.pgq"),
        MAX_WALLCLOCK_SECONDS="4",
        GPTQ_RESERVE_SECONDS="1",
        WARMUP_STEPS="2",
        ITERATIONS="1000000",
        PRE_EXPORT_PATHS="",
        EVAL_PATHS="plain",
        TRAIN_LOG_EVERY="1000",
    )
    assert any(line.startswith("warmup: compiled") for line in log) and any(
        "depth recurrence on" in line for line in log
    )
    assert any(line.startswith("compliance train:") and line.endswith("cap 4 held True") for line in log)


def test_bench_table_lists_every_committed_run():
    """bench/table.py (#9's rehearsal table) on the committed proxy-300 rows: one line per run, right cells."""
    sys.path.insert(0, str(ROOT / "bench"))
    import table

    rows = table.rows_of(str(ROOT / "bench/results/2026-11-23_train.json"))
    lines = table.table(rows).splitlines()
    assert len(lines) == 2 + len(rows) and all(line.count("|") == lines[0].count("|") for line in lines)
    seed = next(line for line in lines if line.startswith("| record_proxy300_n1_s2025 "))
    assert (
        "| 1698 | 169.6 | 579,584 | 26.4% |" in seed
        and "| 1.00817 | 1.49014 |" in seed
        and seed.endswith("| yes | yes |")
    )
    nested = table.rows_of(str(ROOT / "bench/results/2026-12-05_train.json"))  # runs as {"name", "result"}
    assert {"baseline_178_s1337", "record_whole_s1337", "record_gqa_rope_s1337"} <= {r["name"] for r in nested}
    h200 = next(line for line in table.table(nested).splitlines() if line.startswith("| record_gqa_rope_s1337 "))
    assert "| NVIDIA H200 | 1 | 2219 | 129.8 | 757,419 | 34.5% |" in h200
    import proxy_run  # a raw row names the card its log names

    gpus = "['NVIDIA H100 80GB HBM3', 'NVIDIA H100 80GB HBM3']"
    env = f"env: python 3.12.3 torch 2.11.0 cuda 13.0 gpus {gpus} world_size 2\n"
    assert table.gpu(proxy_run.parse(env)) == "NVIDIA H100 80GB HBM3" and "| 0.98954 | 1.47819 |" in h200


def test_bench_loss_head_runs_ours_and_names_missing_libraries(tmp_path):
    """bench/loss_head.py (#27's fused-CE comparison) on the CPU: its `ours` row is train_gpt's GPT.nll, the mean
    soft-capped cross-entropy a plain reference computes; a library that is not installed is a row saying so."""
    out = tmp_path / "lh.json"
    args = ["--tokens", "256", "--dim", "16", "--vocab", "64", "--iters", "2", "--warmup", "1", "--impls", "ours,cce"]
    p = subprocess.run(
        [sys.executable, "bench/loss_head.py", str(out), *args], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    rows = {r["impl"]: r for r in json.loads(out.read_text())["rows"]}
    g = torch.Generator().manual_seed(0)  # the script's inputs, drawn in its order
    h, w = torch.randn(256, 16, generator=g), 0.05 * torch.randn(64, 16, generator=g)
    y = torch.randint(0, 64, (256,), generator=g)
    ref = F.cross_entropy(30.0 * torch.tanh(h @ w.T / 30.0), y)
    assert rows["ours"]["loss"] == pytest.approx(float(ref), rel=1e-5)
    assert "error" in rows["cce"] or "d_grad_weight" in rows["cce"]
