"""Run train_gpt.py once (proxy protocol, ../shared/docs/proxy.md) and turn its log into a JSON row.

Usage: python bench/proxy_run.py NAME [--nproc N] [--out DIR] [--timeout S] [--script PATH] [KEY=VALUE ...]
The KEY=VALUE pairs are env vars for train_gpt.py; --script runs another copy of it (packed/train_gpt.py
from `make pack`: its own bytes are the counted code). The row holds the exact command, the git commit (and
train_gpt.py's sha256: under a device stamp git cannot see a changed file),
steps, ms/step, tokens/s, MFU (model FLOPs incl. causal attention / 798e12 per GPU, the bf16 matmul
rate measured on this H100), peak memory, artifact bytes, every eval line, and the compliance lines.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from submissions.logs import LogError, read_events, read_text_log  # noqa: E402

STAMP = ROOT / ".devdata/COMMIT"  # the caller stamps the commit here before a device call


def head_commit() -> str:
    """The commit a run is of: the stamp wins (the device's copy of the tree may carry a stale .git), else git."""
    if STAMP.exists():
        return STAMP.read_text().strip()
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return git.stdout.strip() if git.returncode == 0 else "unknown"


def with_buffer_reuse() -> None:
    """Make torch.compile drop COMPILE=2's allow_buffer_reuse=False (since 8145046; its other options stay):
    grad_check's GRAD_REUSE=1 and step_profile's STEP_REUSE=1 reuse buffers as train_gpt did before."""
    import torch  # here: the run driver itself needs no torch

    compile_ = torch.compile

    def compile_reusing(fn, options=None, **kw):
        return compile_(fn, options={k: v for k, v in (options or {}).items() if k != "allow_buffer_reuse"}, **kw)

    torch.compile = compile_reusing


PEAK_FLOPS = 798e12  # measured bf16 8192^3 matmul on the lent H100 (device KINDS.md)


def flops_per_token(h: dict, recur: bool) -> float:
    """Training FLOPs per token: 6 x matmul params on the token's path (virtual layers, tied head)
    + causal attention 6 x T x d per virtual layer (QK^T and AV, fwd+bwd, half the window)."""
    d, L, V, T = h["model_dim"], h["num_layers"], h["vocab_size"], h["train_seq_len"]
    kv = d // h["num_heads"] * h["num_kv_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 2 * d * int(h["mlp_mult"] * d)
    n_virtual = L + (h["recur_end"] - h["recur_start"] + 1) * h["recur_extra"] if recur and h["recur_extra"] else L
    return 6 * (per_layer * n_virtual + V * d) + 6 * n_virtual * T * d


def parse(text: str) -> dict:
    """The row of a run from its log (or what a killed run left of it), read by submissions.logs."""
    lines = text.splitlines()
    try:
        log = read_text_log(text)
    except LogError:  # no embedded source: the run died before its header, or a fragment
        log = read_events(lines)
    h = log["hyperparameters"] or {}
    row: dict = {"hyperparameters": h}
    if log["env"] and log["env"]["gpus"]:  # the card the run logged (the first of its GPUs)
        row["gpu"] = log["env"]["gpus"][0]
    if log["params"]:
        row["params"], row["attention"] = log["params"], log["attention"]
    if log["train"]:
        row.update(train_row(log, h))
    row["evals"] = {
        k: dict(loss=e["val_loss"], bpb=e["val_bpb"], tokens=e["tokens"], bytes=e["bytes"], seconds=e["seconds"])
        for k, e in log["evals"].items()
    }
    if log.get("code_sha256") and log.get("code_line"):
        row["code_sha256"] = log["code_sha256"]
    if log["artifact"]:
        a = log["artifact"]
        row.update(artifact_bytes=a["bytes"], code_bytes=a["code"], total_bytes=a["total"])
    row.update(log["export"] or {})
    row["compliance"] = [line for line in lines if line.startswith("compliance ")]
    row["log_tail"] = [line for line in lines if line.startswith(("export", "artifact", "codec", "ttt", "ngram"))][-40:]
    return row


def train_row(log: dict, h: dict) -> dict:
    """Steps, speed and MFU of the training phase, overall and before and after depth recurrence switched on
    (per-phase speed from the cumulative elapsed seconds at the logged steps)."""
    n, secs, tok_step = log["train"]["steps"], log["train"]["seconds"], h["train_batch_tokens"]
    r0 = log["recur_step"] if log["recur_step"] is not None else n
    flops = r0 * tok_step * flops_per_token(h, False) + (n - r0) * tok_step * flops_per_token(h, True)
    row = dict(steps=n, train_seconds=secs, ms_per_step=log["train"]["step_avg_ms"])
    row.update(peak_gib=log["train"]["peak_memory_gib"], tokens_per_s=round(n * tok_step / secs))
    row.update(mfu=round(flops / secs / (PEAK_FLOPS * h.get("world_size", 1)), 4), recur_on_step=log["recur_step"])
    for phase, (recur, steps) in {
        "before": (False, [s for s in log["train_steps"] if s[0] <= r0][1:]),  # from the 2nd: step 1 holds compiles
        "after": (True, [s for s in log["train_steps"] if s[0] > r0]),
    }.items():
        if len(steps) >= 2 and steps[-1][0] > steps[0][0]:
            (s0, e0), (s1, e1) = steps[0], steps[-1]
            row[f"tokens_per_s_{phase}_recur"] = tps = round((s1 - s0) * tok_step / (e1 - e0))
            row[f"mfu_{phase}_recur"] = round(tps * flops_per_token(h, recur) / PEAK_FLOPS, 4)
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
    commit = head_commit()  # the log's code sha256 (parsed below) pins the file that really ran
    # under a stamp no git can tell (the device's copy): None, and train_gpt_sha256 says which source ran, to compare
    # with `git show COMMIT:train_gpt.py | sha256sum` (a file swapped in on the device once passed as clean)
    dirty = None
    if not STAMP.exists() and commit != "unknown":
        git = ["git", "status", "--porcelain", "train_gpt.py", "quant/pack.py"]
        dirty = bool(subprocess.run(git, cwd=ROOT, capture_output=True, text=True).stdout.strip())
    row = dict(
        name=name,
        command=" ".join(env_pairs + cmd[1:] if nproc > 1 else env_pairs + ["python", script]),
        git_commit=commit,
        train_gpt_dirty=dirty,
        train_gpt_sha256=hashlib.sha256((ROOT / "train_gpt.py").read_bytes()).hexdigest(),
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
