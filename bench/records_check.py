"""check-submission over the official records folders: the verdict table, and the test data cut from it.

    python bench/records_check.py RECORDS_DIR --out bench/results/<date>_submission
    python bench/records_check.py RECORDS_DIR --extract tests/data/records FOLDER...

RECORDS_DIR is records/track_10min_16mb of a clone of openai/parameter-golf (the `fetch` tool brings one).
The table run also checks an edited copy of each `--edit` folder, with every val_bpb in its submission.json
lowered by 0.05: those must FAIL. --extract writes, per folder, only what the checks read: submission.json
without its prose fields, and of each log the score, size and seed lines; README.md and the code file are
one-line stand-ins (the records' code and prose are not ours to copy).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from submissions import check  # noqa: E402
from submissions.logs import OFFICIAL_MODEL, OFFICIAL_SCORE, OFFICIAL_TOTAL, find_official_logs  # noqa: E402

EDIT = ("2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT", "2026-04-09_A2_Muon097_3Seed")
PROSE = ("blurb", "technique_summary", "techniques", "description", "notes", "summary")


def lowered(meta: object, by: float = 0.05) -> object:
    """The JSON with every val_bpb-like number (val_bpb, mean_val_bpb, mean_bpb) lowered by `by`."""
    if isinstance(meta, dict):
        return {
            k: round(v - by, 8) if k in ("val_bpb", "mean_val_bpb", "mean_bpb") and isinstance(v, float) else lowered(v)
            for k, v in meta.items()
        }
    return meta


def verdict(folder: Path) -> dict:
    rows = check.check(folder)
    failed = [f"{n}: {why}" for n, s, why in rows if s == "FAIL"]
    warned = [f"{n}: {why}" for n, s, why in rows if s == "WARN"]
    by_name = {n: f"{s} {why}" for n, s, why in rows}
    return dict(
        folder=folder.name,
        verdict="FAIL" if failed else "PASS",
        scores=by_name["scores vs logs"],
        size=by_name["size"],
        failed=failed,
        warned=warned,
    )


def table(records: Path, edit: tuple[str, ...]) -> list[dict]:
    rows = [verdict(d) | dict(copy="as merged") for d in sorted(p for p in records.iterdir() if p.is_dir())]
    with tempfile.TemporaryDirectory() as tmp:
        for name in edit:
            d = Path(tmp) / name
            shutil.copytree(records / name, d)
            meta = json.loads((d / "submission.json").read_text())
            (d / "submission.json").write_text(json.dumps(lowered(meta), indent=2))
            rows.append(verdict(d) | dict(copy="val_bpb lowered by 0.05"))
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    out = [
        f"# check-submission over the official records ({meta['date']})",
        "",
        f"`{meta['command']}` at commit {meta['commit']}, on the CPU; records from {meta['records']}.",
        "",
        "Every warning is in the .json. `scores vs logs` and `size` are the checks that read the records' own logs.",
        "",
        "| folder | copy | verdict | scores vs logs | size | failed checks |",
        "|---|---|---|---|---|---|",
    ]
    cut = lambda x, n=200: x[:n].replace("|", "/") + ("..." if len(x) > n else "")
    for r in rows:
        failed = "; ".join(f.split(":")[0] for f in r["failed"]) or "-"
        cells = (r["folder"], r["copy"], f"**{r['verdict']}**", cut(r["scores"]), cut(r["size"], 120), failed)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def extract(records: Path, names: list[str], to: Path) -> None:
    for name in names:
        src, dst = records / name, to / name
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        ctx = check.load(src)
        prose = lambda k, v: k in PROSE or (isinstance(v, str) and len(v) > 100)
        meta = {k: v for k, v in (ctx["meta"] or {}).items() if not prose(k, v)}
        (dst / ctx["json_path"].name).write_text(json.dumps(meta, indent=2) + "\n")
        (dst / "README.md").write_text(f"Stand-in: the checked numbers of records/track_10min_16mb/{name}.\n")
        (dst / ctx["code_path"].name).write_text("# stand-in: the record's code is not copied here\n")
        for log in find_official_logs(src):
            text = log.read_bytes().decode("utf-8", errors="replace")
            keep = [m.group(0) for rx in (OFFICIAL_SCORE, OFFICIAL_TOTAL, OFFICIAL_MODEL) for m in rx.finditer(text)]
            seed = re.search(r"(?:^|\s)(seed[:=]\s*\d+)", text, re.M)
            if keep:
                (dst / log.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                lines = ([seed.group(1)] if seed else []) + keep
                (dst / log.relative_to(src)).write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", type=Path, help="records/track_10min_16mb of a parameter-golf clone")
    p.add_argument("--out", help="write <out>.json and <out>.md")
    p.add_argument("--edit", nargs="*", default=list(EDIT), help="folders also checked with lowered val_bpb")
    p.add_argument("--extract", type=Path, help="write trimmed copies of the named folders here")
    p.add_argument("--source", default="", help="where RECORDS_DIR came from (repository and commit), for the table")
    p.add_argument("folders", nargs="*")
    args = p.parse_intermixed_args()
    if args.extract:
        extract(args.records, args.folders, args.extract)
        return 0
    rows = table(args.records, tuple(args.edit))
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = dict(
        date=git("log", "-1", "--format=%cs") or "",
        commit=git("rev-parse", "--short", "HEAD"),
        command="python " + " ".join(sys.argv),
        records=args.source or str(args.records),
        card="none (CPU)",
    )
    for r in rows:
        print(f"{r['verdict']}  {r['copy']:<24} {r['folder']}")
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(dict(meta, rows=rows), indent=2) + "\n")
        Path(args.out + ".md").write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
