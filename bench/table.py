"""Markdown table of full-pipeline runs (bench/proxy_run.py JSON rows), one row per run, for #9's rehearsal
and scaling notes: ranks, steps, ms/step, tok/s per GPU, MFU, train and export seconds, bytes, then bpb and
eval seconds of each post-export path on each val set, and whether both clocks held.

Usage: python bench/table.py ROW.json [ROW.json ...]   (a file may also hold a list of rows, or {"runs": [...]},
each run a row or, as bench/results/ files name them, {"name": ..., "result": row})
"""

import json
import re
import sys


def rows_of(path: str) -> list[dict]:
    d = json.load(open(path))
    card = d.get("device") if isinstance(d, dict) else None  # a results file's card, unless a run names its own
    d = d.get("runs", [d]) if isinstance(d, dict) else d
    d = [
        {"device": card, **r, **(r["result"] if isinstance(r.get("result"), dict) else {}), "name": r.get("name")}
        for r in d
        if isinstance(r, dict)
    ]
    return [r for r in d if "evals" in r]


def gpu(r: dict) -> str:
    m = re.search(r"\((NVIDIA [^)]*)\)", r.get("device") or "")
    return r.get("gpu") or (m.group(1) if m else "-")


def held(r: dict, clock: str) -> str:
    line = next((c for c in r.get("compliance", []) if c.startswith(f"compliance {clock}:")), None)
    return "-" if line is None else ("yes" if re.search(r"held True", line) else "**no**")


def table(rows: list[dict]) -> str:
    paths = [
        p for p in ("plain", "sliding", "ngram", "ttt", "ttt_ngram") if any(f"val/{p}" in r["evals"] for r in rows)
    ]
    head = [
        "run",
        "GPU",
        "ranks",
        "steps",
        "ms/step",
        "tok/s/GPU",
        "MFU",
        "train s",
        "export s (quant+encode)",
        "total bytes",
    ]
    head += [f"{s} {p}" for p in paths for s in ("val", "dev")] + ["val eval s", "train clock", "eval clock"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        n = r.get("hyperparameters", {}).get("world_size") or int(re.search(r"_n(\d+)_", r["name"] + "_n1_").group(1))
        ev = r["evals"]
        cells = [
            r["name"],
            gpu(r),
            str(n),
            f"{r.get('steps', '-')}",
            f"{r.get('ms_per_step', '-')}",
            f"{r['tokens_per_s'] / n:,.0f}" if r.get("tokens_per_s") else "-",
            f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-",
            f"{r.get('train_seconds', '-')}",
            f"{r['quantize_seconds'] + r['encode_seconds']:.1f}" if "encode_seconds" in r else "-",
            f"{r['total_bytes']:,}" if r.get("total_bytes") else "-",
        ]
        cells += [f"{ev[k]['bpb']:.5f}" if k in ev else "-" for p in paths for k in (f"val/{p}", f"dev/{p}")]
        cells += [
            ", ".join(f"{p} {ev[f'val/{p}']['seconds']:.1f}" for p in paths if f"val/{p}" in ev) or "-",
            held(r, "train"),
            held(r, "eval"),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table([r for f in sys.argv[1:] for r in rows_of(f)]))
