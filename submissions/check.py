"""Check a submission folder: PASS/FAIL table, one row per check, exit 1 on any FAIL.

    python -m submissions.check DIR [--artifacts ARTIFACTS_DIR]

Works on folders written by submissions.make and on the official records layout
(records/track_10min_16mb/<folder>/ with train_seed42.log or logs/*.txt and an official-style
submission.json). Logs not written by this toolkit's train_gpt.py cannot be re-read: the checks that
need them report SKIP, while the file, JSON, seed, mean and size checks still run on submission.json.

What it trusts. The log is the evidence: the source it embeds (self-checked against its `code:` line's
bytes and sha256), its final `eval val` line (the score of the artifact read back from disk), its
`artifact:` line (model bytes as written at export), its `compliance train:` / `compliance eval:` lines
(seconds). The model artifact is not part of a records folder; `--artifacts DIR` compares
DIR/<RUN_ID>.pgq with the logged size and the sha256 that make recorded. An edited log can only be
caught where it disagrees with itself, the shipped code or submission.json.

Tolerances. Per seed, submission.json copies the 6-decimal logged val_bpb/val_loss, so they must agree
to 5e-7 (any edit of a printed digit fails). Means and sample stds (n-1) are rounded to 8 decimals by
make and must agree to 1e-6. In official-layout folders the mean may be rounded anywhere: it must agree
with seed_results to half a unit of its last written decimal, or 1e-6 if that is larger. Seconds agree
to 0.15 (two numbers printed to 0.1), ms/step to 0.05.

Statuses: PASS, FAIL, SKIP (cannot be checked here), WARN (worth a look; not a failure).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import re
import statistics
import sys
from decimal import Decimal
from pathlib import Path

from submissions.logs import (
    LogError,
    find_logs,
    find_official_logs,
    is_toolkit_log,
    parse_log,
    read_official_log,
)
from submissions.make import SIZE_CAP, _distributions, distribution, imports_of

LIMIT_S = 600.0
NOT_OURS = "not a train_gpt.py log of this toolkit"
REQUIRED_FILES = ("README.md", "submission.json", "train_gpt.py", "requirements.txt")
NUM, INT, STR = "number", "integer", "string"
FIELDS = dict(
    author=STR,
    github_id=STR,
    name=STR,
    blurb=STR,
    date=STR,
    track=STR,
    val_loss=NUM,
    val_bpb=NUM,
    val_bpb_std=NUM,
    seeds="list",
    seed_results="object",
    artifact_bytes_max=INT,
    bytes_total=INT,
    bytes_code=INT,
    hardware=STR,
    pytorch_version=STR,
    technique_summary=STR,
)
SEED_FIELDS = dict(val_bpb=NUM, artifact_bytes=INT, steps=INT, step_avg_ms=NUM, eval_time_s=NUM)
CORE = ("author", "github_id", "name", "date", "val_bpb")  # on (nearly) every merged record
ALIASES = dict(name=("run_name",), val_bpb=("mean_val_bpb",), val_loss=("mean_val_loss",))  # merged records' names
Row = tuple[str, str, str]


def _is(value: object, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    return {
        NUM: isinstance(value, (int, float)) and math.isfinite(value),
        INT: isinstance(value, int),
        STR: isinstance(value, str),
        "list": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]


def _row(name: str, fails: list[str], warns: list[str], ok: str) -> Row:
    if fails:
        return name, "FAIL", "; ".join(fails)
    return (name, "WARN", "; ".join(warns)) if warns else (name, "PASS", ok)


def _named(folder: Path, name: str, pattern: str, exact: bool) -> Path | None:
    """folder/name, or (official records only) the one file matching pattern: some merged records ship
    submission_<x>.json or train_gpt_<x>.py."""
    if (folder / name).is_file() or exact:
        return folder / name if (folder / name).is_file() else None
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    return found[0] if len(found) == 1 else None


def load(folder: Path) -> dict:
    """Everything the checks read, read once: the JSON, the logs (ours parsed, others' score and size lines),
    the code."""
    ctx = dict(folder=folder, meta=None, meta_error=None, raw_json="", logs=[], foreign=[], broken=[], shipped=None)
    ctx["ours"] = any(is_toolkit_log(p) for p in find_logs(folder))  # this toolkit's folder: its logs are evidence
    ctx["json_path"] = _named(folder, "submission.json", "submission*.json", ctx["ours"])
    ctx["code_path"] = _named(folder, "train_gpt.py", "train_gpt*.py", ctx["ours"])
    try:
        if ctx["json_path"] is None:
            raise FileNotFoundError
        ctx["raw_json"] = ctx["json_path"].read_text(encoding="utf-8")
        ctx["meta"] = json.loads(ctx["raw_json"])
        if not isinstance(ctx["meta"], dict):
            ctx["meta"], ctx["meta_error"] = None, f"{ctx['json_path'].name} is not a JSON object"
    except FileNotFoundError:
        ctx["meta_error"] = "no submission.json"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        ctx["meta_error"] = f"submission.json unreadable: {e}"
    if ctx["code_path"] is not None:
        ctx["shipped"] = ctx["code_path"].read_bytes()
    if not ctx["ours"]:
        ctx["foreign"] = find_official_logs(folder)
        ctx["official"] = [read_official_log(p) for p in ctx["foreign"]]
        return ctx
    for path in find_logs(folder):
        if not is_toolkit_log(path):
            ctx["foreign"].append(path)
            continue
        try:
            scored = (ctx["meta"] or {}).get("eval_path")  # the path submission.json says is the score
            ctx["logs"].append(parse_log(path, scored if isinstance(scored, str) else None))
        except LogError as e:
            ctx["broken"].append(str(e))
    return ctx


def _seed_results(ctx: dict) -> dict:
    meta = ctx["meta"] or {}
    return meta["seed_results"] if isinstance(meta.get("seed_results"), dict) else {}


def _json_seeds(ctx: dict) -> list | None:
    meta = ctx["meta"] or {}
    seeds = meta.get("seeds")
    if not ctx["ours"] and seeds is None:  # official records may name one `seed`, or only seed_results
        seeds = [meta["seed"]] if _is(meta.get("seed"), INT) else list(_seed_results(ctx)) or None
    return list(seeds) if isinstance(seeds, (list, dict)) else None


def _claim(ctx: dict, key: str) -> tuple[str, float] | tuple[None, None]:
    """(field, value) of the folder's headline score: `key`, or an official record's variant of its name."""
    meta = ctx["meta"] or {}
    for name in (key,) + (() if ctx["ours"] else ALIASES.get(key, ())):
        if _is(meta.get(name), NUM):
            return name, meta[name]
    return None, None


# -----------------------------------------------------------------------------
# the checks: each returns one row
# -----------------------------------------------------------------------------


def check_files(ctx: dict) -> Row:
    folder, fails, warns = ctx["folder"], [], []
    found = dict(zip(REQUIRED_FILES, (folder / "README.md", ctx["json_path"], ctx["code_path"])))
    found["requirements.txt"] = folder / "requirements.txt"
    for name, path in found.items():
        if path is None or not path.is_file():
            # official records ship requirements.txt only when there are dependencies
            (warns if name == "requirements.txt" and not ctx["ours"] else fails).append(f"no {name}")
    n_logs = len(ctx["logs"]) + len(ctx["foreign"]) + len(ctx["broken"])
    if n_logs == 0:
        fails.append("no log (*.log or *.txt, top level or logs/)")
    names = [p.name for p in found.values() if p is not None and p.is_file()]
    return _row("files", fails, warns, f"{', '.join(names)}, {n_logs} log(s)")


def check_json(ctx: dict) -> Row:
    meta = ctx["meta"]
    if meta is None:
        return "json fields", "FAIL", ctx["meta_error"]
    fails, warns = [], []
    for key, kind in FIELDS.items():
        strict = ctx["ours"]  # official records vary; their logs, not their JSON, are checked for the score
        name = next((a for a in (key,) + ALIASES.get(key, ()) if a in meta), key) if not strict else key
        if name not in meta:
            (fails if strict else warns if key in CORE else []).append(f"no {key}")
        elif not (_is(meta[name], kind) or (key == "val_bpb_std" and meta[name] is None)):
            (fails if strict else warns).append(f"{name} is {type(meta[name]).__name__}, expected {kind}")
    for seed, r in _seed_results(ctx).items():
        for key, kind in SEED_FIELDS.items():
            bad = f"seed_results[{seed}].{key}: " + (
                "missing" if not isinstance(r, dict) or key not in r else f"{type(r[key]).__name__}, expected {kind}"
            )
            if not isinstance(r, dict) or key not in r or not _is(r[key], kind):
                (fails if ctx["ours"] else warns).append(bad)
    for key in ("author", "github_id"):
        if isinstance(meta.get(key), str) and not meta[key].strip():
            warns.append(f"{key} is empty (fill it before a PR)")
    if ctx["ours"] and meta.get("val_bpb_std") is None and len(_json_seeds(ctx) or []) > 1:
        fails.append("val_bpb_std is null with more than one seed")
    return _row("json fields", fails, warns, f"{len(meta)} fields in {ctx['json_path'].name}, types as expected")


def check_seeds(ctx: dict) -> Row:
    fails, warns = [], []
    seeds = _json_seeds(ctx)
    if seeds is None:
        (fails if ctx["ours"] else warns).append("submission.json lists no seeds")
        seeds = []
    if len(set(map(str, seeds))) < len(seeds):
        fails.append(f"submission.json seeds repeat: {seeds}")
    results = _seed_results(ctx)
    if results and seeds and set(results) != set(map(str, seeds)):
        fails.append(f"seed_results keys {sorted(results)} != seeds {sorted(map(str, seeds))}")
    logged = [log["seed"] for log in ctx["logs"]]
    if len(set(logged)) < len(logged):
        fails.append(f"logs repeat seeds: {sorted(logged)}")
    if ctx["ours"] and seeds and sorted(map(str, logged)) != sorted(map(str, seeds)):
        fails.append(f"logged seeds {sorted(logged)} != submission.json seeds {seeds}")
    return _row(
        "seeds",
        fails,
        warns,
        f"{len(seeds)} distinct: {', '.join(map(str, seeds))}" + (" (each with one log)" if ctx["ours"] else ""),
    )


def check_logs(ctx: dict) -> Row:
    if not ctx["ours"]:
        return "logs", "SKIP", f"{NOT_OURS}: {', '.join(p.name for p in ctx['foreign']) or 'none'}"
    fails = ctx["broken"] + [
        f"{p.name}: {NOT_OURS} (a folder of this toolkit ships only its logs)" for p in ctx["foreign"]
    ]
    return _row("logs", fails, [], f"{len(ctx['logs'])} log(s) of this toolkit, each one finished run")


def check_code(ctx: dict) -> Row:
    if not ctx["ours"]:
        return "code", "SKIP", NOT_OURS
    shipped, fails, warns = ctx["shipped"], [], []
    if shipped is None:
        return "code", "FAIL", "no train_gpt.py"
    sha = hashlib.sha256(shipped).hexdigest()
    for log in ctx["logs"]:
        name = Path(log["path"]).name
        if not log["source_intact"]:
            fails.append(f"{name}: embedded source does not match its own code: line (log edited)")
        if not log["code_line"]:
            warns.append(f"{name}: no code: line (older log); its source is compared, not self-checked")
        if len(log["sources"]) > 1:
            others = ", ".join(f"{f['name']} ({f['bytes']:,} bytes)" for f in log["sources"][1:])
            fails.append(
                f"{name}: the run also executed {others} from beside train_gpt.py, which the folder's one "
                "file cannot carry: run the packed copy that bundles it (make pack ARCH=... EVAL_PATHS=...)"
            )
        source = log["source"].encode("utf-8")
        if source != shipped:
            fails.append(
                f"train_gpt.py ({len(shipped)} bytes, sha256 {sha[:12]}) differs from the source embedded "
                f"in {name} ({len(source)} bytes, sha256 {hashlib.sha256(source).hexdigest()[:12]})"
            )
    return _row(
        "code",
        fails,
        warns,
        f"train_gpt.py (sha256 {sha[:12]}) is byte-identical to the source in {len(ctx['logs'])} logs",
    )


def _close(a: object, b: float, tol: float) -> bool:
    return _is(a, NUM) and abs(a - b) <= tol


def _decimals_tol(raw_json: str, key: str) -> float:
    """Half a unit of the last decimal `key` is written with at the top level of the JSON text."""
    m = re.search(rf'^\s*"{re.escape(key)}"\s*:\s*(-?[\d.]+(?:[eE][-+]?\d+)?)', raw_json, re.M)
    if not m:
        return 1e-6
    return max(1e-6, 0.5 * 10.0 ** Decimal(m.group(1)).as_tuple().exponent)


def check_mean(ctx: dict) -> Row:
    """submission.json's val_bpb (and val_loss, std) against its own seed_results."""
    meta, results = ctx["meta"] or {}, _seed_results(ctx)
    bpb = [r.get("val_bpb") for r in results.values() if isinstance(r, dict)]
    if not results or not all(_is(x, NUM) for x in bpb) or len(bpb) != len(results):
        return ("json mean", "FAIL" if ctx["ours"] else "SKIP", "no per-seed val_bpb in seed_results to average")
    fails, warns = [], []
    for key in ("val_bpb", "val_loss"):
        values, (name, claimed) = [r.get(key) for r in results.values()], _claim(ctx, key)
        if name is None or not all(_is(x, NUM) for x in values):
            continue
        tol = 1e-6 if ctx["ours"] else _decimals_tol(ctx["raw_json"], name)
        if not _close(claimed, statistics.fmean(values), tol):
            # an official record's val_loss is not its score: a slip there is worth a look, not a failure
            (fails if ctx["ours"] or key == "val_bpb" else warns).append(
                f"{name} {claimed} != mean of seed_results {statistics.fmean(values):.8f} (tol {tol:g})"
            )
        std_key = f"{key}_std"
        if len(values) > 1 and _is(meta.get(std_key), NUM):
            sample, population = statistics.stdev(values), statistics.pstdev(values)
            tol_std = 1e-6 if ctx["ours"] else _decimals_tol(ctx["raw_json"], std_key)
            if not _close(meta[std_key], sample, tol_std):
                msg = f"{std_key} {meta[std_key]} != sample std {sample:.8f}"
                if ctx["ours"]:
                    fails.append(msg)
                elif not _close(meta[std_key], population, tol_std):  # some records use n, not n-1
                    warns.append(msg + f" or population std {population:.8f}")
    name, claimed = _claim(ctx, "val_bpb")
    return _row("json mean", fails, warns, f"{name} {claimed} = mean of {len(bpb)} seed(s)")


def check_scores(ctx: dict) -> Row:
    """Each log's final val score (and run stats) against submission.json's seed_results."""
    if not ctx["ours"]:
        return official_scores(ctx)
    results, fails = _seed_results(ctx), []
    for log in ctx["logs"]:
        name, r = Path(log["path"]).name, results.get(str(log["seed"]))
        f = log["final"]["val"]  # the line must agree with itself: bpb = loss / ln 2 * tokens / bytes
        ratio = f["tokens"] / f["bytes"] / math.log(2)
        if abs(f["val_loss"] * ratio - f["val_bpb"]) > 5e-7 * (1 + ratio):
            fails.append(
                f"{name}: final eval line inconsistent: val_loss {f['val_loss']} x tokens / bytes / ln 2 = "
                f"{f['val_loss'] * ratio:.6f} != val_bpb {f['val_bpb']}"
            )
        if not isinstance(r, dict):
            fails.append(f"{name}: seed {log['seed']} not in seed_results")
            continue
        for key, logged, tol in (
            ("val_bpb", log["val_bpb"], 5e-7),
            ("val_loss", log["val_loss"], 5e-7),
            ("steps", log["steps"], 0),
            ("step_avg_ms", log["step_avg_ms"], 0.05),
            ("eval_time_s", log["eval_seconds"], 0.15),
            ("train_time_s", log["train_seconds"], 0.15),
        ):
            if key in r and not _close(r[key], logged, tol):
                fails.append(f"{name}: {key} logged {logged} != submission.json {r[key]}")
            elif key not in r and key in SEED_FIELDS:
                fails.append(f"{name}: seed_results[{log['seed']}] has no {key}")
    paths = {log["eval_path"] for log in ctx["logs"]}
    return _row(
        "scores vs logs",
        fails,
        [],
        f"{len(ctx['logs'])} seed(s): final 'eval val {'/'.join(paths)}' "
        f"val_bpb, val_loss, steps, ms/step, seconds as logged",
    )


def check_size(ctx: dict) -> Row:
    meta, fails, warns = ctx["meta"] or {}, [], []
    if not ctx["ours"]:
        return official_size(ctx)
    results = _seed_results(ctx)
    for log in ctx["logs"]:
        name, a = Path(log["path"]).name, log["artifact"]
        if a["bytes"] + a["code"] != a["total"]:
            fails.append(f"{name}: artifact line inconsistent: {a['bytes']} + {a['code']} != {a['total']}")
        if a["code"] != len(log["source"].encode("utf-8")):
            fails.append(
                f"{name}: counted code {a['code']} bytes, but the embedded source is "
                f"{len(log['source'].encode('utf-8'))}"
            )
        if a["bytes"] + a["code"] > SIZE_CAP or not a["cap_held"]:
            fails.append(
                f"{name}: code {a['code']:,} + artifact {a['bytes']:,} = {a['bytes'] + a['code']:,} > {SIZE_CAP:,}"
                if a["bytes"] + a["code"] > SIZE_CAP
                else f"{name}: cap_held False"
            )
        r = results.get(str(log["seed"]), {})
        if isinstance(r, dict) and r.get("artifact_bytes") != a["bytes"]:
            fails.append(f"{name}: artifact_bytes logged {a['bytes']} != submission.json {r.get('artifact_bytes')}")
    if ctx["logs"]:
        expect = dict(
            bytes_code=ctx["logs"][0]["artifact"]["code"],
            artifact_bytes_max=max(l["artifact"]["bytes"] for l in ctx["logs"]),
            bytes_total=max(l["artifact"]["bytes"] + l["artifact"]["code"] for l in ctx["logs"]),
        )
        fails += [
            f"{k} in submission.json {meta.get(k)} != {v} from the logs" for k, v in expect.items() if meta.get(k) != v
        ]
        if _is(meta.get("bytes_total"), INT) and meta["bytes_total"] > SIZE_CAP:
            fails.append(f"bytes_total {meta['bytes_total']:,} > {SIZE_CAP:,}")
        if ctx["shipped"] is not None and len(ctx["shipped"]) != expect["bytes_code"]:
            fails.append(f"shipped train_gpt.py is {len(ctx['shipped'])} bytes, logs counted {expect['bytes_code']}")
    worst = max((l["artifact"]["bytes"] + l["artifact"]["code"] for l in ctx["logs"]), default=0)
    return _row("size", fails, warns, f"code + artifact <= {worst:,} <= {SIZE_CAP:,} per log, = submission.json")


# -----------------------------------------------------------------------------
# official records: submission.json against the score and size lines of their own logs
# -----------------------------------------------------------------------------


def _unit(number: object) -> float:
    """Half a unit of the last decimal a number is written with (the rounding it may carry)."""
    return 0.5 * 10.0 ** Decimal(str(number)).as_tuple().exponent


def _agrees(claim: float, printed: list[str]) -> bool:
    """claim equals the mean of printed numbers, allowing for the rounding of each side."""
    mean = statistics.fmean(float(x) for x in printed)
    return abs(claim - mean) <= _unit(claim) + max(_unit(x) for x in printed) + 1e-12


def _by_seed(ctx: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for log in ctx["official"]:
        if log["scores"]:
            out.setdefault(log["seed"] or log["path"], []).append(log)
    return out


def _means(groups: list[list[dict]], key: str) -> list[list[str]]:
    """Per score label printed by every group: one pick of a log per group (a seed may have a rerun's log)."""
    labels = set.intersection(*({s["label"] for log in g for s in log["scores"]} for g in groups))
    picks = []
    for label in sorted(labels):
        per_group = [[s[key] for log in g for s in log["scores"] if s["label"] == label] for g in groups]
        picks += [list(p) for p in itertools.islice(itertools.product(*per_group), 512)]
    return picks


def _seed_claims(ctx: dict, logs: dict[str, list[dict]], fails: list, warns: list) -> None:
    for seed, r in _seed_results(ctx).items():
        for key in ("val_bpb", "val_loss"):
            claim = r.get(key) if isinstance(r, dict) else None
            if not _is(claim, NUM):
                continue
            if str(seed) not in logs:
                warns.append(f"seed {seed}: no log of it")
                break
            printed = [s[key] for log in logs[str(seed)] for s in log["scores"]]
            if not any(_agrees(claim, [x]) for x in printed):
                names = ", ".join(Path(log["path"]).name for log in logs[str(seed)])
                fails.append(
                    f"seed_results[{seed}].{key} {claim} is in no final score line of {names} ({', '.join(printed)})"
                )


def official_scores(ctx: dict) -> Row:
    """Every per-seed score submission.json states must be printed by that seed's log, and its headline
    val_bpb must be one seed's score (one seed claimed) or the mean of the claimed seeds' scores."""
    logs, fails, warns = _by_seed(ctx), [], []
    if not logs:
        return "scores vs logs", "FAIL", "no log prints a final `val_loss:... val_bpb:...` line"
    _seed_claims(ctx, logs, fails, warns)
    name, claim = _claim(ctx, "val_bpb")
    seeds = [str(s) for s in _json_seeds(ctx) or []]
    if name is None:
        warns.append("submission.json states no val_bpb (nor mean_val_bpb): the logs' scores stand alone")
        loss = (ctx["meta"] or {}).get("val_loss")
        if _is(loss, NUM) and any(_agrees(loss, p) for p in _means(list(logs.values()), "val_bpb")):
            warns.append(f"its val_loss {loss} is the logs' mean val_bpb (a mislabelled field?)")
        return _row("scores vs logs", fails, warns, "")
    missing = [s for s in seeds if s not in logs]
    groups = [logs[s] for s in seeds] if seeds and not missing else list(logs.values())
    picks = _means(groups, "val_bpb")
    stated = [r.get("val_bpb") for r in _seed_results(ctx).values() if isinstance(r, dict)]
    if not fails and stated and all(_is(x, NUM) for x in stated):  # each already matched its log
        picks.append([str(x) for x in stated])
    if len(seeds) != 1 and not (seeds and not missing):  # seeds unknown, or not all logged: any one log may hold it
        picks += [[s["val_bpb"]] for g in logs.values() for log in g for s in log["scores"]]
    hit = next((p for p in picks if _agrees(claim, p)), None)
    if hit is None and missing:
        warns.append(f"seeds {', '.join(missing)} have no log: {name} {claim} cannot be recomputed from the logs")
    elif hit is None:
        fails.append(f"{name} {claim} is neither a logged final score nor a mean of one per seed")
    how = "the log's" if hit and len(hit) == 1 else f"the mean of {len(hit or [])} seeds'"
    each = ", each seed_results value as logged" if _seed_results(ctx) else ""
    return _row("scores vs logs", fails, warns, f"{name} {claim} = {how} final score{each}")


def official_size(ctx: dict) -> Row:
    """The logs' `Total submission size` lines and every byte count submission.json states, against the cap."""
    meta, fails, warns = ctx["meta"] or {}, [], []
    keys = ("bytes_total", "artifact_bytes_max", "artifact_size_bytes", "artifact_bytes")
    stated = [(k, meta[k]) for k in keys if _is(meta.get(k), INT)]
    for s, r in _seed_results(ctx).items():
        stated += [(f"seed_results[{s}].{k}", r[k]) for k in ("artifact_bytes", "bytes_total") if _is(r.get(k), INT)]
        logged = {
            n for log in ctx["official"] if log["seed"] == str(s) for n in (log["total_bytes"], log["model_bytes"])
        }
        if _is(r.get("artifact_bytes"), INT) and logged - {None} and r["artifact_bytes"] not in logged:
            warns.append(f"seed_results[{s}].artifact_bytes {r['artifact_bytes']:,} is no byte count of its log")
    fails += [f"{k} {v:,} > {SIZE_CAP:,}" for k, v in stated if v > SIZE_CAP]
    totals = [(Path(log["path"]).name, log["total_bytes"]) for log in ctx["official"] if log["total_bytes"]]
    fails += [f"{n}: logged total {v:,} > {SIZE_CAP:,}" for n, v in totals if v > SIZE_CAP]
    if not stated and not totals:
        return "size", "FAIL", "neither submission.json nor a log states the submission's bytes"
    worst = max(v for _, v in stated + totals)
    return _row(
        "size", fails, warns, f"max {worst:,} <= {SIZE_CAP:,} ({len(totals)} logged totals, {len(stated)} stated)"
    )


def _time_from_json(ctx: dict, key: str, name: str) -> Row:
    values = {s: r[key] for s, r in _seed_results(ctx).items() if isinstance(r, dict) and _is(r.get(key), NUM)}
    if not values:
        return name, "SKIP", NOT_OURS
    fails = [f"seed {s}: {key} {v} > {LIMIT_S:.0f}" for s, v in values.items() if v > LIMIT_S]
    return _row(name, fails, [], f"max {max(values.values())} s <= {LIMIT_S:.0f} (from submission.json; {NOT_OURS})")


def check_train_time(ctx: dict) -> Row:
    if not ctx["ours"]:
        return _time_from_json(ctx, "train_time_s", "train time")
    fails = []
    for log in ctx["logs"]:
        name, c = Path(log["path"]).name, log["compliance_train"]
        limit = c["cap"] if c["cap"] > 0 else LIMIT_S  # cap 0: no wallclock stop, the rule's 600 s still binds
        if c["cap"] > LIMIT_S:
            fails.append(f"{name}: cap {c['cap']:.0f} s > {LIMIT_S:.0f}")
        if c["total"] > limit:
            fails.append(f"{name}: train total {c['total']} s (incl. calibration) > {limit:.0f}")
        if not c["held"]:
            fails.append(f"{name}: compliance train held False")
        if abs(c["train_seconds"] + c["calibration_seconds"] - c["total"]) > 0.15:
            fails.append(
                f"{name}: train {c['train_seconds']} + calibration {c['calibration_seconds']} != total {c['total']}"
            )
    worst = max((l["compliance_train"]["total"] for l in ctx["logs"]), default=0)
    return _row("train time", fails, [], f"max total {worst} s (train + calibration) <= cap <= {LIMIT_S:.0f}")


def check_eval_time(ctx: dict) -> Row:
    if not ctx["ours"]:
        return _time_from_json(ctx, "eval_time_s", "eval time")
    fails = []
    for log in ctx["logs"]:
        name, c = Path(log["path"]).name, log["compliance_eval"]
        if c["eval_seconds"] > LIMIT_S:
            fails.append(f"{name}: eval {c['eval_seconds']} s > {LIMIT_S:.0f}")
        if c["budget"] > LIMIT_S:
            fails.append(f"{name}: eval budget {c['budget']:.0f} s > {LIMIT_S:.0f}")
        if not c["held"]:
            fails.append(f"{name}: compliance eval held False")
        final = [v["seconds"] for k, v in log["evals"].items() if k.startswith("val/") and "/pre_" not in k]
        if abs(sum(final) - c["eval_seconds"]) > 0.1 + 0.05 * len(final):
            fails.append(f"{name}: final val evals took {sum(final):.1f} s, compliance eval says {c['eval_seconds']}")
    worst = max((l["eval_seconds"] for l in ctx["logs"]), default=0)
    return _row("eval time", fails, [], f"max {worst} s <= {LIMIT_S:.0f} (the final val evals, as logged)")


def _requirement_names(text: str) -> set[str]:
    norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
    return {
        norm(m.group(0))
        for line in text.splitlines()
        if (m := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line.split("#")[0].strip()))
    }


def check_requirements(ctx: dict) -> Row:
    folder = ctx["folder"]
    if ctx["shipped"] is None or not (folder / "requirements.txt").is_file():
        return "requirements", "FAIL" if ctx["ours"] else "SKIP", "no train_gpt.py or no requirements.txt"
    try:
        imports = imports_of(ctx["shipped"].decode("utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError) as e:
        return "requirements", "FAIL" if ctx["ours"] else "WARN", f"train_gpt.py does not parse: {e}"
    listed = _requirement_names((folder / "requirements.txt").read_text(encoding="utf-8", errors="replace"))
    norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
    fails, warns, covered, unknown = [], [], [], []
    for module, optional in imports.items():
        if norm(distribution(module)) in listed or norm(module) in listed:
            covered.append(module)
        elif not optional:
            (fails if ctx["ours"] else warns).append(
                f"imports {module} but requirements.txt lacks {distribution(module)}"
            )
        elif module in _distributions():
            warns.append(f"optional import {module} ({distribution(module)}) not in requirements.txt")
        else:  # optional, and no pip name known here: left to whoever installs it by hand
            unknown.append(module)
    return _row(
        "requirements",
        fails,
        warns,
        f"lists the non-stdlib imports {', '.join(covered) or '(none)'}"
        + (f"; optional without a known pip name: {', '.join(unknown)}" if unknown else ""),
    )


def check_artifacts(ctx: dict, folder: Path) -> Row:
    if not ctx["ours"]:
        return "artifacts", "SKIP", NOT_OURS
    fails, results = [], _seed_results(ctx)
    for log in ctx["logs"]:
        path = folder / f"{log['run_id']}.pgq"
        if not path.is_file():
            fails.append(f"no {path}")
            continue
        blob = path.read_bytes()
        if len(blob) != log["artifact_bytes"]:
            fails.append(f"{path.name}: {len(blob)} bytes, logged {log['artifact_bytes']}")
        recorded = results.get(str(log["seed"]), {}).get("artifact_sha256")
        if recorded and recorded != hashlib.sha256(blob).hexdigest():
            fails.append(f"{path.name}: sha256 differs from submission.json's")
    return _row(
        "artifacts", fails, [], f"{len(ctx['logs'])} artifacts in {folder}: sizes as logged, sha256 as recorded"
    )


CHECKS = (
    check_files,
    check_json,
    check_seeds,
    check_logs,
    check_code,
    check_mean,
    check_scores,
    check_size,
    check_train_time,
    check_eval_time,
    check_requirements,
)


def check(folder: str | Path, artifacts: str | Path | None = None) -> list[Row]:
    ctx = load(Path(folder))
    rows = []
    for fn in CHECKS:
        try:
            rows.append(fn(ctx))
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:  # odd input: a row, not a traceback
            rows.append(
                (fn.__name__.removeprefix("check_").replace("_", " "), "FAIL", f"cannot check: {type(e).__name__}: {e}")
            )
    if artifacts:
        rows.append(check_artifacts(ctx, Path(artifacts)))
    return rows


def table(rows: list[Row]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'check':<{width}}  status  reason"] + [f"{n:<{width}}  {s:<6}  {why}" for n, s, why in rows]
    failed = [n for n, s, _ in rows if s == "FAIL"]
    lines.append(
        f"FAIL: {len(failed)} of {len(rows)} checks failed ({', '.join(failed)})"
        if failed
        else f"PASS: {len(rows)} checks, none failed"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m submissions.check", description=__doc__.split("\n")[0])
    p.add_argument("dir", help="submission folder (ours or official records layout)")
    p.add_argument("--artifacts", help="folder with <RUN_ID>.pgq: sizes and sha256 against the logs and JSON")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        print(f"error: {args.dir} is not a directory", file=sys.stderr)
        return 1
    rows = check(args.dir, args.artifacts)
    print(table(rows))
    return 1 if any(s == "FAIL" for _, s, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
