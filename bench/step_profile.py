"""Where a record training step's time goes on one GPU: eager forward+backward vs the optimizer step.

Usage (device): python bench/step_profile.py [KEY=VALUE ...]  -> one JSON line on stdout.
Random tokens with a BOS every ~1000 (documents for the varlen mask), the preset's per-GPU batch.
Eager, so forward+backward is slower than the compiled run; the optimizer step is the same code.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def timed(fn, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    env = {"PRESET": "record", "TRAIN_BATCH_TOKENS": "98304", **dict(a.split("=", 1) for a in sys.argv[1:])}
    h, dev = tg.Hyperparameters(env), torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = tg.GPT(h).to(dev)
    model.recur = True
    opt = tg.Optimizers(model, h)
    seqs = h.train_batch_tokens // h.train_seq_len
    x = torch.randint(4, h.vocab_size, (seqs, h.train_seq_len + 1), device=dev)
    x[:, ::1000] = tg.BOS_ID

    def fwd_bwd():
        with torch.autocast("cuda", torch.bfloat16):
            loss = model(x[:, :-1], x[:, 1:], doc_mask=True).mean()
        loss.backward()

    def step():
        opt.step(0.0, h.muon_momentum)  # lr 0: same work, weights unchanged

    fwd_bwd(), step(), fwd_bwd(), step()  # warm-up (kernels, autotune, optimizer state)
    full = timed(lambda: (fwd_bwd(), step()), 5)  # step() needs fresh grads (it clears them)
    fb = timed(fwd_bwd, 5)
    model.zero_grad(set_to_none=True)
    fwd_bwd()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    top = [dict(name=e.key[:80], cuda_ms=round(e.device_time_total / 1000, 3), calls=e.count)
           for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]]
    print(json.dumps(dict(attention=model.attn_impl, seqs=seqs, eager_fwd_bwd_ms=round(fb, 1), optimizer_step_ms=round(full - fb, 1),
                          muon_matrices=len(opt.muon.param_groups[0]["params"]), optimizer_top_kernels=top)))


if __name__ == "__main__":
    main()
