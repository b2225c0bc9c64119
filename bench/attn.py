"""Attention candidates for the record model's shape on one GPU: fwd+bwd time and TFLOP/s.

Doc-masked (correct for the record preset): flex_attention with a document block mask, SDPA with
a dense boolean mask, torch's varlen flash kernel, FA3 varlen when installed (e.g. PYTHONPATH=.fa3 after
bench/build_fa3.sh). Each row gives the largest difference of its output and of its q/k/v gradients from SDPA
with the dense document mask. Plain causal SDPA (flash) crosses documents and is listed as the speed
reference only. Documents are cut at the BOS positions of a real val shard.
At 25be12f a varlen_gqa row gave the varlen kernel the k/v heads unrepeated (train_gpt then repeated them to the
query heads): 3.66 vs 3.87 ms, gradients within 0.001; train_gpt's varlen has done so since.
FA3 and FA4 (flash-attn-4 from PyPI: CuTe DSL kernels, compiled at their first call) run through train_gpt's own
custom ops (ATTN_IMPL=fa3|fa4), as training calls them; the first call's time is a field. Where FA4 is installed but
fails to import, its row says why (train_gpt then leaves it out of ATTN_IMPL=auto). Since 8168631 train_gpt gives FA3
the k/v heads repeated to the query heads, so the fa3 row times that (the separate fa3_mha row is gone; it never ran).
Usage: python bench/attn.py SHARD [--batch 48 --seq 2048] -> JSON on stdout
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

try:
    import flash_attn.cute.interface  # noqa: F401

    FA4_ERROR = None
except Exception as e:  # not installed, or installed without what it needs (a row then says why)
    FA4_ERROR = None if isinstance(e, ModuleNotFoundError) and e.name == "flash_attn" else repr(e)


def time_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shard")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    a = ap.parse_args()
    B, T, H, KV, D = a.batch, a.seq, a.heads, a.kv_heads, a.head_dim
    tokens = torch.from_numpy(tg.load_shard(a.shard)[: B * T].astype("int64")).view(B, T).cuda()
    q = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(B, T, KV, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    causal_flops = 3 * 2 * 2 * B * H * D * T * T / 2  # fwd+bwd, QK^T and AV, causal half
    attend = torch.compile(tg.attend)
    impls = ["causal", "flex", "sdpa"] + [k for k in ("varlen", "fa3", "fa4") if tg.attn_impls()[k]]
    rows = {"fa4": dict(error=FA4_ERROR[:300])} if FA4_ERROR else {}

    def out_and_grads(impl: str, fn=tg.attend) -> list[torch.Tensor]:
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, tg.AttnMask(tokens, impl != "causal", impl))
        out.backward(grad)
        return [out.detach().float()] + [t.grad.float() for t in (q, k, v)]

    ref = out_and_grads("sdpa")  # the dense document mask: the reference every doc-masked kernel must match
    for impl in impls:

        def run(impl=impl):
            attend(q, k, v, tg.AttnMask(tokens, impl != "causal", impl)).backward(grad)

        try:
            t0 = time.perf_counter()
            run()
            first_s = time.perf_counter() - t0
            ms = time_ms(run)
            diffs = [(a - b).abs().max().item() for a, b in zip(out_and_grads(impl, attend), ref)]
            rows[impl] = dict(
                ms=round(ms, 3),
                causal_tflops=round(causal_flops / ms / 1e9, 1),
                max_abs_diff_vs_dense_doc_mask=diffs[0],
                grad_max_abs_diff=dict(zip("qkv", diffs[1:])),
                first_call_s=round(first_s, 1),
            )  # k/v: summed over the GQA group
        except Exception as e:  # report, keep measuring the others
            rows[impl] = dict(error=f"{type(e).__name__}: {e}"[:300])
        mask_ms = time_ms(lambda i=impl: tg.AttnMask(tokens, i != "causal", i)) if "ms" in rows[impl] else None
        rows[impl]["mask_build_ms"] = mask_ms and round(mask_ms, 3)
    docs = int((tokens == tg.BOS_ID).sum())
    print(
        json.dumps(
            dict(
                shape=dict(B=B, T=T, H=H, KV=KV, D=D),
                docs_in_batch=docs,
                gpu=torch.cuda.get_device_name(),
                torch=torch.__version__,
                results=rows,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
