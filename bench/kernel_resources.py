"""kernels.py's gemm_act (and xsa_gate_kernel, at the record's heads and kernels.XSA_BLOCK) as the H100 would run
them, compiled here for sm90 by triton's own ptxas (no GPU needed): each direction's shared memory a block, registers a
thread and local-memory spill bytes, and whether it fits the H100's 232,448 bytes of shared memory. A tile over that
builds on the card and fails at its first launch (128x256x64 in 4 stages did on an H100, 262,208 bytes: this compile
finds the same figure), so check a tile here before a device call.

    python bench/kernel_resources.py [--tiles BM,BN,BK,STAGES,WARPS,SPLIT ...] [--sweep] [--out OUT.json]

Default: kernels.CUDA_TILES (each direction its own tile) and xsa_gate_kernel both ways; --tiles and --sweep
(bench/mlp_kernel.py's SWEEP): each gemm_act tile in both directions. One JSON line a kernel on stdout; exit code 1 if
any does not fit. Resources come from the cubin (cuobjdump); the triton here may differ in version from the device's.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, not interpret (the tests interpret the same kernel)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels  # noqa: E402

H100_SHARED = 232448  # bytes of shared memory a block may take on an H100 (227 KiB)


def usage(src: ASTSource, warps: int, stages: int = 3) -> tuple[int, int, int]:
    """(shared bytes a block, registers a thread, local-memory spill bytes) of a kernel compiled for sm90."""
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True)
    regs, local = (int(re.search(rf"{k}:(\d+)", out.stdout).group(1)) for k in ("REG", "LOCAL"))
    return compiled.metadata.shared, regs, local


def xsa_resources(forward: bool) -> dict:
    """xsa_gate_kernel for 8 heads over 4 kv heads of 64 dims and a 12-dim gate (the record's), kernels.XSA_BLOCK."""
    (bn, warps), grads = kernels.XSA_BLOCK, ("dout", "dv", "dl")
    sig = dict.fromkeys(("y", "v", "x", "w", "dout", "o", "dv"), "*bf16") | dict(
        dl="*fp32", N="i32", sx="i32", sv="i32"
    )
    meta = dict(H=8, KV=4, D=64, GD=12, GP=16, BN=bn, FORWARD=forward) | (dict.fromkeys(grads, None) if forward else {})
    sig |= dict.fromkeys(meta, "constexpr")
    src = ASTSource(kernels.xsa_gate_kernel, sig, constexprs={(i,): meta[k] for i, k in enumerate(sig) if k in meta})
    shared, regs, spill = usage(src, warps)
    return dict(kernel="xsa_gate", forward=forward, tile=[bn, warps], shared=shared, fits=shared <= H100_SHARED,
                regs=regs, spill=spill)  # fmt: skip


def resources(forward: bool, tile: tuple) -> dict:
    bm, bn, bk, stages, warps, split = tile
    a, b, out = f"[{bm},{bk}]", f"[{bn},{bk}]" if forward else f"[{bk},{bn}]", f"[{bm},{bn // 2 if split else bn}]"
    meta = dict(FORWARD=forward, BM=bm, BN=bn, BK=bk, GROUP=8, PROGRAMS=132, SPLIT=split)
    descs = {k: f"tensordesc<bf16{v}>" for k, v in dict(a=a, b=b, c=out, aux=out).items()}
    sig = descs | dict.fromkeys("MNK", "i32") | dict(slope="fp32") | dict.fromkeys(meta, "constexpr")
    src = ASTSource(kernels.gemm_act, sig, constexprs={(i,): meta[k] for i, k in enumerate(sig) if k in meta})
    shared, regs, spill = usage(src, warps, stages)
    return dict(kernel="gemm_act", forward=forward, tile=list(tile), shared=shared, fits=shared <= H100_SHARED,
                regs=regs, spill=spill)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", nargs="*", default=[])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    tiles = [tuple(int(v) for v in t.split(",")) for t in a.tiles]
    if a.sweep:
        from mlp_kernel import SWEEP  # (bench/ is this script's folder)

        tiles += SWEEP
    pairs = [(f, (*t[:5], bool(t[5]))) for t in tiles for f in (True, False)] or list(kernels.CUDA_TILES.items())
    rows = [resources(f, t) for f, t in pairs] + ([] if tiles else [xsa_resources(f) for f in (True, False)])
    for row in rows:
        print(json.dumps(row), flush=True)
    if a.out:
        meta = dict(command="python " + " ".join(sys.argv), triton=triton.__version__, target="cuda sm90 (H100)")
        Path(a.out).write_text(json.dumps(dict(**meta, limit=H100_SHARED, rows=rows), indent=1))
    sys.exit(0 if all(r["fits"] for r in rows) else 1)


if __name__ == "__main__":
    main()
