"""The loss head, forward + backward, with and without a fused soft-capped cross-entropy library (issue 27).

    python bench/loss_head.py OUT.json [--tokens 98304] [--dim 512] [--vocab 8192] [--impls ours,cce,...]

ours: train_gpt.GPT.nll itself (logits = softcap * tanh(h W^T / softcap), cast to fp32, then cross-entropy): the
(tokens x vocab) logits are materialised; ours_compiled: the same under torch.compile, as training runs it.
cce: cut-cross-entropy's linear_cross_entropy(softcap=); liger:
liger-kernel's LigerFusedLinearCrossEntropyLoss(softcap=); both fuse the projection, the cap and the loss and
never write the fp32 logits. Inputs as in training: bf16 hidden states under autocast, the fp32 tied embedding.
For each: the mean loss and the gradients of the hidden states and of the weight against ours (max abs
difference), median milliseconds of forward + backward over --iters after --warmup, and the peak memory.
A library that is not installed is a row saying so. GPU-only libraries (Triton); ours runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402
from bench.proxy_run import head_commit  # noqa: E402


def ours(softcap: float):
    """train_gpt's own loss head on (hidden, weight, targets): GPT.nll with the given tied embedding weight."""

    def loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = types.SimpleNamespace(softcap=softcap, tok_emb=types.SimpleNamespace(weight=w), lora=None)
        m.logits = lambda x: tg.GPT.logits(m, x)
        return tg.GPT.nll(m, h[None], y[None]).mean()

    return loss


def cce(softcap: float):
    from cut_cross_entropy import linear_cross_entropy

    return lambda h, w, y: linear_cross_entropy(h, w.to(h.dtype), y, softcap=softcap)


def liger(softcap: float):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fn = LigerFusedLinearCrossEntropyLoss(softcap=softcap)
    return lambda h, w, y: fn(w.to(h.dtype), h, y)


IMPLS = {"ours": ours, "ours_compiled": lambda softcap: torch.compile(ours(softcap)), "cce": cce, "liger": liger}


def run(impl, h, w, y, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    with tg.autocast(device):
        loss = impl(h, w, y)
    loss.backward()
    return loss.detach().float(), h.grad.float(), w.grad.float()


def measure(name: str, make, args, device, ref, iters: int, warmup: int) -> dict:
    try:
        impl = make(args.softcap)
    except ImportError as e:
        return dict(impl=name, error=f"not installed: {e}")
    h, w, y = args.inputs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        out = run(impl, h, w, y, device)
    times = []
    for _ in range(iters):
        tg.sync(device)
        t0 = time.perf_counter()
        out = run(impl, h, w, y, device)
        tg.sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    row = dict(impl=name, ms=sorted(times)[len(times) // 2], loss=float(out[0]))
    if ref is not None:
        row |= dict(
            zip(("d_loss", "d_grad_hidden", "d_grad_weight"), (float((a - b).abs().max()) for a, b in zip(out, ref)))
        )
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row | {"_out": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=98_304)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--softcap", type=float, default=30.0)
    ap.add_argument("--impls", default="ours,ours_compiled,cce,liger")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    h = torch.randn(args.tokens, args.dim, generator=g).to(device, dtype)
    w = (0.05 * torch.randn(args.vocab, args.dim, generator=g)).to(device)
    y = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)
    args.inputs = (h, w, y)
    rows, ref = [], None
    for name in args.impls.split(","):
        row = measure(name, IMPLS[name], args, device, ref, args.iters, args.warmup)
        ref = row.pop("_out", None) if ref is None and name == "ours" else ref
        row.pop("_out", None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result = dict(command=" ".join(sys.argv), git_commit=head_commit(), device=card, torch=torch.__version__, rows=rows)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
