"""The MLP kernels (kernels.py: FUSED_MLP=1, FP8_MLP=1) against the MLP as training compiles it, on one GPU (#27).

    python bench/mlp_kernel.py OUT.json [--tokens 98304] [--dim 512] [--hidden 2048] [--slope 0.5] [--sweep]

At the record's shape (one GPU's 98,304 tokens, 512 -> 2048 -> 512, bf16 activations, weights cast from fp32 as
CastedLinear does): forward and forward+backward of
- eager: proj(leaky_relu(fc(x), slope)^2) as written;
- compiled: the same under torch.compile (inductor fuses the activation and its backward into pointwise kernels);
- fused: kernels.fused_mlp (the activation in the GEMMs' epilogues), with its tiles (kernels.TILES);
- fp8, fp8 compiled: kernels.fp8_mlp (float8 GEMMs, torch._scaled_mm), eager and under torch.compile (as trained);
- with --sweep, instead of the fp8 rows: fused again with each tile of SWEEP for both GEMMs (a row says why a tile
  failed to compile).
Median of 20 timed passes after 3 warm-up passes (CUDA events), peak memory, and the outputs' and gradients' largest
difference from an fp32 reference of the same inputs.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy_run import head_commit  # noqa: E402  (bench/ is this script's folder)

import train_gpt as tg  # noqa: E402


def eager(x, w1, w2, slope):
    return F.linear(F.leaky_relu(F.linear(x, w1), slope).square(), w2)


SWEEP = [  # (BM, BN, BK, stages, warps, split epilogue): tiles that fit the H100's shared memory in both directions,
    # as `bench/kernel_resources.py --sweep` checks on the CPU (128x256 only split, in 3 stages)
    (128, 128, 64, 4, 8, False),
    (128, 128, 64, 4, 8, True),
    (128, 256, 64, 3, 8, True),
    (256, 128, 64, 3, 8, True),
]


def timed(fn, n=20) -> float:
    for _ in range(3):
        fn()
    ms = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return sorted(ms)[n // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=98304)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--slope", type=float, default=0.5)
    ap.add_argument("--sweep", action="store_true")
    a = ap.parse_args()
    kernels = tg.load_plugin("kernels")
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.randn(a.tokens, a.dim, device="cuda", generator=g).bfloat16()
    w1 = torch.randn(a.hidden, a.dim, device="cuda", generator=g) * a.dim**-0.5
    w2 = torch.randn(a.dim, a.hidden, device="cuda", generator=g) * a.hidden**-0.5
    dy = torch.randn(a.tokens, a.dim, device="cuda", generator=g).bfloat16()
    compiled = torch.compile(eager)
    impls = dict(eager=eager, compiled=compiled, fused=kernels.fused_mlp)
    if not a.sweep:
        impls |= {"fp8": kernels.fp8_mlp, "fp8 compiled": torch.compile(kernels.fp8_mlp)}
    tiles = {name: dict(kernels.TILES) for name in impls}
    for t in SWEEP if a.sweep else []:
        impls[f"fused {t}"], tiles[f"fused {t}"] = kernels.fused_mlp, dict.fromkeys((True, False), t)
    ref = None
    rows = []
    for name, f in impls.items():
        kernels.TILES.update(tiles[name])
        x, p1, p2 = (t.detach().clone().requires_grad_() for t in (x0, w1, w2))

        def fwd(f=f, x=x, p1=p1, p2=p2):
            return f(x, p1.bfloat16(), p2.bfloat16(), a.slope)

        def fwd_bwd(fwd=fwd):
            fwd().backward(dy)

        torch.cuda.reset_peak_memory_stats()
        try:
            fb = timed(fwd_bwd)
        except Exception as e:  # a tile over the shared memory, say: the row says so, the sweep goes on
            rows.append(dict(impl=name, error=f"{type(e).__name__}: {e}"[:300]))
            print(json.dumps(rows[-1]), flush=True)
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30
        with torch.no_grad():
            fw = timed(fwd)
        for p in (x, p1, p2):
            p.grad = None
        fwd_bwd()
        got = [fwd().detach().float(), x.grad.float(), p1.grad.float(), p2.grad.float()]
        if ref is None:  # fp32 reference from the same bf16 inputs
            xr, r1, r2 = (t.detach().float().clone().requires_grad_() for t in (x0, w1, w2))
            out = eager(xr, r1, r2, a.slope)
            out.backward(dy.float())
            ref = [out.detach(), xr.grad, r1.grad, r2.grad]
        err = [round(float((u - v).abs().max() / v.abs().max()), 5) for u, v in zip(got, ref)]
        row = dict(impl=name, fwd_ms=round(fw, 3), fwd_bwd_ms=round(fb, 3), peak_gib=round(peak, 2))
        row["rel_err_out_dx_dw1_dw2"] = err
        if name.startswith("fused"):
            row["tiles_fwd_bwd"] = [tiles[name][True], tiles[name][False]]  # (BM, BN, BK, stages, warps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = dict(command="python " + " ".join(sys.argv), git_commit=head_commit(), device=torch.cuda.get_device_name())
    meta |= dict(torch=torch.__version__, shape=dict(tokens=a.tokens, dim=a.dim, hidden=a.hidden, slope=a.slope))
    Path(a.out).write_text(json.dumps(dict(**meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
