"""Run train_gpt.py once (proxy protocol, ../shared/docs/proxy.md) and turn its log into a JSON row.

Usage: python bench/proxy_run.py NAME [--nproc N] [--out DIR] [--timeout S] [--script PATH] [KEY=VALUE ...]
The KEY=VALUE pairs are env vars for train_gpt.py; --script runs another copy of it (packed/train_gpt.py
from `make pack`: its own bytes are the counted code). The row holds the exact command, the git commit,
steps, ms/step, tokens/s, MFU (model FLOPs incl. causal attention / 798e12 per GPU, the bf16 matmul
rate measured on this H100), peak memory, artifact bytes, every eval line, and the compliance lines.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_FLOPS = 798e12  # measured bf16 8192^3 matmul on the lent H100 (device KINDS.md)


def flops_per_token(h: dict, recur: bool) -> float:
    """Training FLOPs per token: 6 x matmul params on the token's path (virtual layers, tied head)
    + causal attention 6 x T x d per virtual layer (QK^T and AV, fwd+bwd, half the window)."""
    d, L, V, T = h["model_dim"], h["num_layers"], h["vocab_size"], h["train_seq_len"]
    kv = d // h["num_heads"] * h["num_kv_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 2 * d * int(h["mlp_mult"] * d)
    n_virtual = L + (h["recur_end"] - h["recur_start"] + 1) * h["recur_extra"] if recur and h["recur_extra"] else L
    return 6 * (per_layer * n_virtual + V * d) + 6 * n_virtual * T * d


def parse(log: str) -> dict:
    row: dict = {"evals": {}, "compliance": []}
    hp = re.search(r"^hyperparameters: (\{.*\})$", log, re.M)
    h = json.loads(hp.group(1)) if hp else {}
    row["hyperparameters"] = h
    if m := re.search(r"^env: .* gpus \['([^']*)'", log, re.M):  # the card the run logged (the first of its GPUs)
        row["gpu"] = m.group(1)
    if m := re.search(r"^model: ([\d,]+) parameters, attention (\w+)", log, re.M):
        row["params"], row["attention"] = int(m.group(1).replace(",", "")), m.group(2)
    steps = [(int(s), float(e)) for s, e in re.findall(r"^step (\d+) train_loss \S+ .* elapsed ([\d.]+)s", log, re.M)]
    recur_at = re.search(r"^step (\d+): depth recurrence on", log, re.M)
    if m := re.search(r"^train: (\d+) steps in ([\d.]+)s, ([\d.]+) ms/step, peak memory ([\d.]+) GiB", log, re.M):
        n, secs = int(m.group(1)), float(m.group(2))
        row.update(steps=n, train_seconds=secs, ms_per_step=float(m.group(3)), peak_gib=float(m.group(4)))
        tok_step = h["train_batch_tokens"]
        row["tokens_per_s"] = round(n * tok_step / secs)
        r0 = int(recur_at.group(1)) if recur_at else n
        flops = r0 * tok_step * flops_per_token(h, False) + (n - r0) * tok_step * flops_per_token(h, True)
        row["mfu"] = round(flops / secs / (PEAK_FLOPS * h.get("world_size", 1)), 4)
        row["recur_on_step"] = recur_at and r0
        # per-phase speed from the step log (cumulative elapsed at logged steps)
        pre = [s for s in steps if s[0] <= r0]
        if len(pre) >= 2:
            (s0, e0), (s1, e1) = pre[1], pre[-1]
            if s1 > s0:
                row["tokens_per_s_before_recur"] = round((s1 - s0) * tok_step / (e1 - e0))
                row["mfu_before_recur"] = round(
                    row["tokens_per_s_before_recur"] * flops_per_token(h, False) / PEAK_FLOPS, 4
                )
        post = [s for s in steps if s[0] > r0]
        if len(post) >= 2 and post[-1][0] > post[0][0]:
            (s0, e0), (s1, e1) = post[0], post[-1]
            row["tokens_per_s_after_recur"] = round((s1 - s0) * tok_step / (e1 - e0))
            row["mfu_after_recur"] = round(row["tokens_per_s_after_recur"] * flops_per_token(h, True) / PEAK_FLOPS, 4)
    for name, path, loss, bpb, toks, byts, secs in re.findall(
        r"^eval (\S+) (\S+): val_loss ([\d.]+) val_bpb ([\d.]+) tokens (\d+) bytes (\d+) seconds ([\d.]+)", log, re.M
    ):
        row["evals"][f"{name}/{path}"] = dict(
            loss=float(loss), bpb=float(bpb), tokens=int(toks), bytes=int(byts), seconds=float(secs)
        )
    if m := re.search(r"^code: train_gpt.py (\d+) bytes sha256 ([0-9a-f]{64})", log, re.M):
        row["code_sha256"] = m.group(2)
    for key, pat in [
        ("artifact_bytes", r"^artifact: (\d+) bytes"),
        ("code_bytes", r"code (\d+) bytes"),
        ("total_bytes", r"total (\d+) bytes"),
        ("quantize_seconds", r"^export: .* tensors in ([\d.]+)s"),
        ("encode_seconds", r"^export: .* encoded in ([\d.]+)s"),
    ]:
        if m := re.search(pat, log, re.M):
            row[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    row["compliance"] = re.findall(r"^compliance .*$", log, re.M)
    row["log_tail"] = [l for l in log.splitlines() if l.startswith(("export", "artifact", "codec", "ttt", "ngram"))][
        -40:
    ]
    return row


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    nproc, out, timeout, script = 1, Path(os.environ.get("OUT", ROOT / "bench/out")), None, "train_gpt.py"
    env_pairs = []
    while args:
        a = args.pop(0)
        if a == "--nproc":
            nproc = int(args.pop(0))
        elif a == "--out":
            out = Path(args.pop(0))
        elif a == "--timeout":  # kill the run but keep its partial log: a device call's limit loses everything
            timeout = float(args.pop(0))
        elif a == "--script":
            script = args.pop(0)
        else:
            env_pairs.append(a)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **dict(p.split("=", 1) for p in env_pairs), "RUN_ID": name}
    cmd = [sys.executable, script] if nproc == 1 else ["torchrun", "--standalone", f"--nproc_per_node={nproc}", script]
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        returncode = 124
    log_path = ROOT / "logs" / f"{name}.txt"
    log = log_path.read_text() if log_path.exists() else ""
    (out / f"{name}.log").write_text(log + "\n--- stderr ---\n" + stderr[-20000:])
    # the caller stamps the commit in .devdata/COMMIT before a device call: the device's copy may carry a
    # stale .git, so the stamp wins; the log's code sha256 (parsed below) pins the file that really ran
    stamp = ROOT / ".devdata/COMMIT"
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    commit = stamp.read_text().strip() if stamp.exists() else git.stdout.strip() if git.returncode == 0 else "unknown"
    dirty = (
        not stamp.exists()
        and git.returncode == 0
        and bool(
            subprocess.run(
                ["git", "status", "--porcelain", "train_gpt.py", "quant/pack.py"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
    )
    row = dict(
        name=name,
        command=" ".join(env_pairs + cmd[1:] if nproc > 1 else env_pairs + ["python", script]),
        git_commit=commit,
        train_gpt_dirty=dirty,
        returncode=returncode,
        wall_seconds=round(time.time() - t0, 1),
        **parse(log),
    )
    if returncode:
        row["stderr_tail"] = stderr[-3000:]
    (out / f"{name}.json").write_text(json.dumps(row, indent=1))
    print(json.dumps({k: v for k, v in row.items() if k not in ("hyperparameters", "log_tail")}, indent=1))


if __name__ == "__main__":
    main()
