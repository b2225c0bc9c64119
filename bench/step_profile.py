"""Where a record training step's time goes on one GPU: compiled forward+backward vs the optimizer step.

Usage (device): python bench/step_profile.py [KEY=VALUE ...]  -> one JSON line on stdout.
Random tokens with a BOS every ~1000 (documents for the varlen mask), the preset's per-GPU batch, split
into micro-batches and compiled per block exactly as train_gpt.py trains (an eager pass over the whole
98,304-token batch needs more than the H100's 80 GB). Depth recurrence on: the slower, later phase.
Prints the step split and the top CUDA kernels of each half from one profiled step.
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
    if h.compile:
        model.compile_parts()
    opt = tg.Optimizers(model, h)
    seqs = h.train_batch_tokens // h.train_seq_len
    micro = max(1, min(seqs, h.micro_batch_tokens // h.train_seq_len))
    x = torch.randint(4, h.vocab_size, (seqs, h.train_seq_len + 1), device=dev)
    x[:, ::1000] = tg.BOS_ID

    def fwd_bwd():
        for xb in x.split(micro):
            with torch.autocast("cuda", torch.bfloat16):
                loss = model(xb[:, :-1], xb[:, 1:], doc_mask=True).mean()
            loss.backward()

    def step():
        opt.step(0.0, h.muon_momentum)  # lr 0: same work, weights unchanged

    t0 = time.perf_counter()
    for _ in range(3):  # compile, autotune, optimizer state
        fwd_bwd(), step()
    warm = time.perf_counter() - t0
    full = timed(lambda: (fwd_bwd(), step()), 5)  # step() needs fresh grads (it clears them)
    fb = timed(fwd_bwd, 5)
    model.zero_grad(set_to_none=True)

    def top(fn, n=12):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        ev = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        return dict(total_cuda_ms=round(sum(e.device_time_total for e in ev) / 1000, 2),
                    top=[dict(name=e.key[:80], cuda_ms=round(e.device_time_total / 1000, 3), calls=e.count) for e in ev[:n]])

    print(json.dumps(dict(attention=model.attn_impl, compiled=bool(h.compile), seqs=seqs, micro=micro,
                          warmup_s=round(warm, 1), step_ms=round(full, 1), fwd_bwd_ms=round(fb, 1),
                          optimizer_step_ms=round(full - fb, 1), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                          muon_matrices=len(opt.muon.param_groups[0]["params"]),
                          fwd_bwd_kernels=top(fwd_bwd), optimizer_kernels=top(step))))

if __name__ == "__main__":
    main()
