"""Do N GPUs train like one? Issue #3's multi-GPU check: the same seed and global batch at several world sizes
must log the same train loss (within --tol) for the first --steps steps.

Usage (device, from the repo root; devset built by bench/device_run.sh or `make devset`):
    python bench/agree.py --nprocs 1,2 --steps 50 [--out DIR] [KEY=VALUE ...]
Each world size runs `torchrun --standalone --nproc_per_node=N train_gpt.py` with the KEY=VALUE env (default:
PRESET=record on the sp8192 devset, its 1-GPU proxy batch of 98,304 tokens, ITERATIONS=--steps, a train-loss
line every step, the cheapest export and eval). train_gpt.py logs the loss averaged over ranks, so the curves
are comparable; they differ only by reduction order and bf16 noise. Writes agree.json to --out and prints it.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = dict(
    PRESET="record",
    SEED="1337",
    DATA_PATH="data/datasets/devset_sp8192",
    TOKENIZER_PATH="data/tokenizers/fineweb_8192_bpe.model",
    DEV_VAL_FILES="",
    TRAIN_BATCH_TOKENS="98304",
    MAX_WALLCLOCK_SECONDS="0",
    TRAIN_LOG_EVERY="1",
    QUANT="rtn",
    CODECS="zlib",
    PRE_EXPORT_PATHS="plain",
    EVAL_PATHS="plain",
)


def losses(log: str) -> dict[int, float]:
    """step -> train_loss from a train_gpt.py log."""
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+) train_loss (\S+)", log, re.M)}


def compare(runs: dict[int, dict[int, float]], steps: int, tol: float) -> dict:
    """Each world size against the first, over the steps all of them logged up to `steps`."""
    ref_n, ref = next(iter(runs.items()))
    out = {"steps": steps, "tol": tol, "reference_nproc": ref_n, "runs": {}}
    for n, curve in runs.items():
        common = sorted(s for s in ref if s in curve and s <= steps)
        if not common or common[-1] != steps:
            out["runs"][n] = {"ok": False, "error": f"no train_loss logged at step {steps}"}
            continue
        diffs = [abs(curve[s] - ref[s]) for s in common]
        out["runs"][n] = {
            "loss_at_steps": curve[steps],
            "abs_diff_at_steps": round(abs(curve[steps] - ref[steps]), 6),
            "max_abs_diff": round(max(diffs), 6),
            "ok": abs(curve[steps] - ref[steps]) <= tol,
        }
    out["ok"] = all(r["ok"] for r in out["runs"].values())
    return out


def run(nproc: int, env: dict[str, str], out: Path) -> str:
    run_id = f"agree_n{nproc}"  # OVERWRITE=1: a rerun replaces this script's own earlier log and artifact
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train_gpt.py"]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env, "RUN_ID": run_id, "OVERWRITE": "1"}, check=True)
    log = (ROOT / "logs" / f"{run_id}.txt").read_text()
    (out / f"{run_id}.txt").write_text(log)
    return log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nprocs", default="1,2")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    ap.add_argument("env", nargs="*", help="KEY=VALUE overrides for train_gpt.py")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**DEFAULTS, "ITERATIONS": str(a.steps), **dict(kv.split("=", 1) for kv in a.env)}
    runs = {n: losses(run(n, env, out)) for n in map(int, a.nprocs.split(","))}
    result = {"env": env, **compare(runs, a.steps, a.tol)}
    (out / "agree.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
