"""Does a compiled training step give the eager model's gradients? The same weights and tokens through the eager model
and through train_gpt's compile (COMPILE=2 by default: GPT.hidden whole, each block a reused region), depth recurrence
on; per parameter the relative difference |g - g_eager| / |g_eager|, worst first. GRAD_BASE=KEY=VALUE,...
(default COMPILE=0) sets what the reference model changes, e.g. GRAD_BASE=COMPILE=2,FUSED_QKV=0 with FUSED_QKV=1:
the stacked q, k, v GEMM against the three linears, both compiled.

Usage (device or CPU): python bench/grad_check.py [KEY=VALUE ...]  -> one JSON line on stdout.
GRAD_SEQS (4): sequences of TRAIN_SEQ_LEN a step (eager keeps the whole graph: the record's 48 do not fit an H100).
GRAD_STEPS (2): steps, each on new tokens, without an update. GRAD_DTYPE=fp32 (default; TF32 off, and ATTN_IMPL=sdpa
unless given, FA3/FA4 being bf16 only): a correct graph is within about 1e-5 of eager. GRAD_DTYPE=bf16: autocast as
training runs (FA3 where auto picks it); rounding alone then moves the smallest gradients (q_gain's) by up to 0.27 of
their norm in the tests' tiny model, so fp32 is the check. GRAD_REUSE=1: compile with Inductor's buffer reuse, as
train_gpt did before 8145046; on the CPU (torch 2.13) that put resid_mix's gradient 24-70% off
(bench/results/2026-12-07_qkv_h100.md), and on an H100 (torch 2.11, record model) up to 74%
(2026-12-07_gradfix_h100.md). The weights are the initial ones moved off their zero init (every branch then carries
gradient), or a trained artifact's with GRAD_ARTIFACT=path.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy_run import head_commit, with_buffer_reuse  # noqa: E402  (bench/ is this script's folder)

import train_gpt as tg  # noqa: E402


def main() -> None:
    env = {"PRESET": "record", **dict(a.split("=", 1) for a in sys.argv[1:])}
    seqs, steps = int(env.pop("GRAD_SEQS", "4")), int(env.pop("GRAD_STEPS", "2"))
    dtype, reuse = env.pop("GRAD_DTYPE", "fp32"), env.pop("GRAD_REUSE", "0") == "1"
    weights, base = env.pop("GRAD_ARTIFACT", ""), env.pop("GRAD_BASE", "COMPILE=0")
    if dtype not in ("fp32", "bf16"):
        sys.exit(f"GRAD_DTYPE={dtype}: expected fp32 or bf16")
    if dtype == "fp32":
        env.setdefault("ATTN_IMPL", "sdpa")
    env.setdefault("COMPILE", "2")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if reuse:
        with_buffer_reuse()
    h = tg.Hyperparameters(env)
    hb = tg.Hyperparameters({**env, **dict(kv.split("=", 1) for kv in base.split(","))})
    models = [tg.GPT(hb).to(dev), tg.GPT(h).to(dev)]
    torch.manual_seed(h.seed)
    with torch.no_grad():
        if weights:
            models[0].load_state_dict(tg.load_artifact(weights, h, dev)[0].state_dict())
        else:
            for p in models[0].parameters():
                p.add_(0.01 * torch.randn_like(p))
    models[1].load_state_dict(models[0].state_dict())
    for m in models:
        if m.h.compile:
            m.compile_parts(whole=m.h.compile == 2)
    names = ["loss", *(n for n, _ in models[0].named_parameters())]
    worst = dict.fromkeys(names, 0.0)
    for step in range(steps):
        x = torch.randint(4, h.vocab_size, (seqs, h.train_seq_len + 1), generator=torch.Generator().manual_seed(step))
        x[:, ::1000] = tg.BOS_ID
        x, got = x.to(dev), []
        for m in models:
            m.zero_grad()
            with torch.autocast(dev.type, torch.bfloat16, enabled=dtype == "bf16"):
                loss = m(x[:, :-1], x[:, 1:], recur=True).mean()
            loss.backward()
            got.append([loss.detach().float(), *(p.grad.float() for p in m.parameters())])
        for name, a, b in zip(names, *got, strict=True):
            worst[name] = max(worst[name], ((b - a).norm() / a.norm().clamp_min(1e-12)).item())
    top = sorted(worst.items(), key=lambda kv: -kv[1])
    print(
        json.dumps(
            dict(
                commit=head_commit(),
                device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                torch=torch.__version__,
                compile=h.compile,
                buffer_reuse=reuse,
                base=base,
                dtype=dtype,
                attention=models[1].attn_impl,
                fused_qkv=h.fused_qkv,
                seqs=seqs,
                steps=steps,
                weights_from=weights or "init, moved off zero",
                worst=[dict(name=n, rel=round(e, 7)) for n, e in top[:8]],
                max_rel=round(top[0][1], 7),
            )
        )
    )


if __name__ == "__main__":
    main()
