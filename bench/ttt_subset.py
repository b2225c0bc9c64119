"""Eval settings (sliding, TTT variants) on the first DOCS documents of each val set, from one artifact, on one GPU.

Usage: python bench/ttt_subset.py OUT.json --docs N [--profile NAME] "NAME:KEY=VALUE;KEY=VALUE" ...
The artifact, data and tokenizer come from the usual knobs in the environment (ARTIFACT, DATA_PATH, DEV_VAL_FILES,
TOKENIZER_PATH, PRESET); each setting adds its own (`sliding` scores the sliding path, a name starting `sgd` times
one global SGD pass over the set (no score), any other name runs eval_ttt with its knobs). The first N documents of
a stream are a stream of their own, and a TTT score depends on its prefix only (tests/test_eval.py cuts the stream
and checks it), so with one phase (TTT_GLOBAL=0) these are the scores those documents get in a run over the whole
set. A TTT setting first runs train_gpt's warm_up_ttt on random tokens, as main does (`warm_up_s`). Seconds are wall
time after a sync, compile of shapes first seen included (the first val set pays what the warm-up missed: `compile_s`
is the first set's time minus the rate of the second set's applied to its tokens, a rough split).
--profile NAME runs that setting once more on 8 documents under torch.profiler and stores its top kernels. Every
score is a proxy score when the model was trained on the proxy corpus.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402


def first_docs(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The first n documents (train_gpt's doc_spans) with the BOS that ends the last (its end-of-document target)."""
    spans = tg.doc_spans(tokens)
    return tokens[: spans[n][0] + 1] if n < len(spans) else tokens


def run_setting(name: str, knobs: dict, vals: dict, device, profile=False) -> dict:
    h = tg.Hyperparameters({**os.environ, "EVAL_ONLY": "1", **knobs})
    luts = tg.tokenizer_luts(h)
    model, hm = tg.load_artifact(h.artifact_path, h, device)
    row = {"knobs": knobs, "sets": {}}
    if hm.compile and device.type == "cuda":
        model.compile_parts()
        if name != "sliding" and not name.startswith("sgd"):  # as main does: TTT's graphs before the timed sets
            row["warm_up_s"] = tg.warm_up_ttt(model, hm, luts, device)
    for set_name, tokens in vals.items():
        tg.sync(device)
        t0 = time.perf_counter()
        if profile:
            tokens = first_docs(tokens, 8)
        if name == "sliding":
            r = tg.eval_stream(model, tokens, hm, luts, device, hm.eval_stride)
        elif name.startswith("sgd"):  # timing only: one global SGD pass over the set's documents, nothing scored
            tg.global_sgd(model, tokens, tg.doc_spans(tokens), hm, device)
            r = dict(bpb=float("nan"), loss=float("nan"), tokens=len(tokens) - 1, bytes=0)
        else:
            r = tg.eval_ttt(model, tokens, hm, luts, device)
        tg.sync(device)
        seconds = time.perf_counter() - t0
        row["sets"][set_name] = dict(
            bpb=r["bpb"], loss=r["loss"], tokens=r["tokens"], bytes=r["bytes"], seconds=seconds
        )
        print(f"{name} {set_name}: bpb {r['bpb']:.5f} tokens {r['tokens']} seconds {seconds:.1f}", flush=True)
        if profile:
            break
    sets = list(row["sets"].values())
    if len(sets) == 2 and not profile:
        rate = sets[1]["tokens"] / sets[1]["seconds"]
        row["tokens_per_s_second_set"] = rate
        row["compile_s"] = max(0.0, sets[0]["seconds"] - sets[0]["tokens"] / rate)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, required=True)
    ap.add_argument("--profile", default="")
    ap.add_argument("settings", nargs="+")
    a = ap.parse_args()
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    h = tg.Hyperparameters({**os.environ, "EVAL_ONLY": "1"})
    vals = {"val": first_docs(tg.load_val(h.val_files, h.vocab_size), a.docs)}
    if h.dev_val_files:
        vals["dev"] = first_docs(tg.load_val(h.dev_val_files, h.vocab_size), a.docs)
    # either may be stale (a device copy's .git, a .devdata/COMMIT of the last device call): the sha256 pins the code
    stamp = ROOT / ".devdata/COMMIT"
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    commit = dict(git=git, devdata_commit=stamp.read_text().strip() if stamp.exists() else None)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    code = hashlib.sha256((ROOT / "train_gpt.py").read_bytes()).hexdigest()  # pins the file that ran
    result = dict(
        command=" ".join(sys.argv), git_commit=commit, train_gpt_sha256=code, device=gpu, docs=a.docs, rows={}
    )
    env_keys = ("PRESET", "ARTIFACT", "DATA_PATH", "DEV_VAL_FILES", "TOKENIZER_PATH", "PYTHONPATH")
    result["env"] = {k: os.environ[k] for k in env_keys if k in os.environ}
    for spec in a.settings:
        name, _, rest = spec.partition(":")
        knobs = dict(kv.split("=", 1) for kv in rest.split(";") if kv)
        result["rows"][name] = run_setting(name, knobs, vals, device)
        Path(a.out).write_text(json.dumps(result, indent=1))  # after each row: a killed call keeps what it did
        if name == a.profile and device.type == "cuda":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run_setting(name, knobs, vals, device, profile=True)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=20)
            result["rows"][name]["profile_top"] = table
            Path(a.out).write_text(json.dumps(result, indent=1))
            print(table, flush=True)


if __name__ == "__main__":
    main()
