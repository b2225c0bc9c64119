"""The record path's behaviour on the CPU, pinned (issue 23): a tiny record-stack run of train_gpt.py's main
(fixed seed, real FineWeb tokens) with warm-up, GPTQ export and every eval path. Its fingerprint is the train
loss of every step, the artifact's sha256 and bytes, the sha256 of the tensors it decodes to (codes, scales,
LQER factors, fp16 tensors: the model, whatever the container format), and every eval line's val_bpb (pre- and
post-export), as the log prints them. A refactoring that keeps the behaviour reproduces it exactly
(tests/test_fingerprint.py).

    python -m tests.fingerprint           print this checkout's fingerprints and compare them with the recorded ones
    python -m tests.fingerprint --write   record it in tests/fingerprint.json (only for an intended change)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "fingerprint.json"
sys.path.insert(0, str(ROOT))  # `python -m tests.fingerprint` and pytest alike import data.* and train_gpt
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
N_VAL_DOCS = 8
# PRESET=tiny is the record stack at toy size; MODEL_DIM=72 puts the embedding through GPTQ. TTT_LORA=1 runs
# the per-document adapters (4 rows a batch, not the preset's 64) and the global SGD phases; NGRAM_CHUNK
# makes the n-gram tables fill mid-stream.
ENV = dict(
    PRESET="tiny",
    RUN_ID="fingerprint",
    SEED="1337",
    ITERATIONS="6",
    WARMUP_STEPS="1",
    TRAIN_LOG_EVERY="1",
    MAX_WALLCLOCK_SECONDS="0",
    EVAL_PATHS="plain,sliding,ngram,ttt,ttt_ngram",
    PRE_EXPORT_PATHS="sliding",
    TTT_LORA="1",
    TTT_DOCS="4",
    TTT_PHASE_DOCS="2",  # the 8 docs in the preset's 4 phases of 2, as 4365752 split them (it ignores this knob)
    # the TTT settings the fingerprint was recorded with (the record's defaults until a993804: windows, no cache;
    # alpha, beta1 and weight decay the record's until the leader's optimizer became its default)
    **dict(TTT_CACHE="0", TTT_RANK="8", TTT_LR="0.003", TTT_TARGETS="c_q,c_v,fc"),
    **dict(TTT_ALPHA="16.0", TTT_BETA1="0.9", TTT_WD="0.0"),
    NGRAM_CHUNK="1024",
    DEV_VAL_FILES="",
)
# The seed architectures (ARCH plug-ins): training, export and the sliding path.
VARIANTS = {"record": ENV} | {
    arch: {**ENV, "ARCH": arch, "RUN_ID": "fingerprint", "EVAL_PATHS": "sliding", "PRE_EXPORT_PATHS": ""}
    for arch in ("worker", "pse", "scan")
}


def make_data(out: Path) -> Path:
    """Train shard: the 200 FineWeb train-pool docs (sp1024); val shard: the first N_VAL_DOCS FineWeb dev docs."""
    import sentencepiece as spm

    from data.shards import write_shard

    sp = spm.SentencePieceProcessor(model_file=str(SHARED / "data/tokenizers/fineweb_1024_bpe.model"))
    docs = [json.loads(line)["text"] for line in open(SHARED / "data/fineweb_dev/fineweb_train_docs.jsonl")]
    write_shard(str(out / "fineweb_train_000000.bin"), np.concatenate([[1] + sp.encode(d) for d in docs]))
    val = np.fromfile(SHARED / "data/fineweb_dev/fineweb_val_sp1024.bin", dtype="<u2", offset=1024)
    write_shard(str(out / "fineweb_val_000000.bin"), val[: np.flatnonzero(val == 1)[N_VAL_DOCS]])
    return out


def weights_sha256(artifact: bytes) -> str:
    """sha256 over every decoded array of the artifact (name, role, dtype, shape, bytes), names sorted."""
    import train_gpt

    digest = hashlib.sha256()
    for name, entry in sorted(train_gpt.decode_artifact(artifact)[0].items()):
        arrays = [(k, v) for k, v in entry.items() if hasattr(v, "numpy")] + list(enumerate(entry.get("lqer", [])))
        for role, t in arrays:
            a = t.contiguous().numpy()
            digest.update(f"{name}.{role} {a.dtype} {a.shape}".encode() + a.tobytes())
    return digest.hexdigest()


def fingerprint(variant: str = "record", script: Path = ROOT / "train_gpt.py") -> dict:
    """Run `script` with VARIANTS[variant] in a fresh tmp folder on make_data's shards; the fingerprint read
    off its log."""
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            **VARIANTS[variant],
            "DATA_PATH": str(data),
            "TOKENIZER_PATH": str(SHARED / "data/tokenizers/fineweb_1024_bpe.model"),
        }
        p = subprocess.run([sys.executable, str(script)], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode:
            raise RuntimeError(f"{script} exited {p.returncode}: {p.stderr[-2000:]}")
        log = (Path(tmp) / "logs" / "fingerprint.txt").read_text()
        weights = weights_sha256((Path(tmp) / "artifacts" / "fingerprint.pgq").read_bytes())
    art = re.search(r"^artifact: (\d+) bytes .* sha256 ([0-9a-f]{64})$", log, re.M)
    return dict(
        losses=re.findall(r"^step \d+ train_loss (\S+) ", log, re.M),
        artifact_bytes=int(art[1]),
        artifact_sha256=art[2],
        weights_sha256=weights,
        evals=dict(re.findall(r"^eval (\S+ \S+): val_loss \S+ val_bpb (\S+) ", log, re.M)),
    )


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fingerprint", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="record this checkout's fingerprints")
    args = ap.parse_args()
    fps = {v: fingerprint(v) for v in VARIANTS}
    print(json.dumps(fps, indent=1))
    if args.write:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        out = dict(commit=commit, n_val_docs=N_VAL_DOCS, env=VARIANTS, fingerprints=fps)
        RECORDED.write_text(json.dumps(out, indent=1) + "\n")
        return 0
    same = json.loads(RECORDED.read_text())["fingerprints"] == fps
    print("same as tests/fingerprint.json" if same else "DIFFERS from tests/fingerprint.json")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
