"""Parse a train_gpt.py log (logs/<RUN_ID>.txt) into the numbers a submission needs.

A log is the exact source of train_gpt.py, a line of 100 '=', a `code:` line (bytes and sha256 of
that source), then one line per event (train_gpt.py: log_header, train, export_artifact, run_evals).
Lines are recognised by their leading words and read as `name value` pairs, so a field added to a
line does not break the parser; a missing required line is a LogError naming it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

SEP = "\n" + "=" * 100 + "\n"
CODE_LINE = re.compile(r"code: (\S+) (\d+) bytes sha256 ([0-9a-f]{64})")
TRAIN_LINE = re.compile(r"train: (\d+) steps in ([\d.]+)s, ([\d.]+) ms/step(?:, peak memory ([\d.]+) GiB)?")
EVAL_LINE = re.compile(r"eval (\S+) (\S+): (.*)")
CODEC_LINE = re.compile(r"codec (\S+) shuffle (\d) pack (\d): (\d+) bytes")


class LogError(ValueError):
    """A log this toolkit cannot use; the message names the file and what is missing."""


def split_source(text: str) -> tuple[str, str] | None:
    """(embedded source, rest) for a log of this toolkit, None for any other text. The source ends at
    a separator followed by a `code:` line; the first whose byte count fits wins, so a line of '='
    inside the source cannot cut it short, while an edited source still splits (and fails its sha)."""
    found, at = [], text.find(SEP)
    while at >= 0:
        m = CODE_LINE.match(text, at + len(SEP))
        if m:
            found.append((at, int(m.group(2))))
        elif text.startswith("env: python ", at + len(SEP)):  # logs from before the code: line existed
            found.append((at, -1))
        at = text.find(SEP, at + 1)
    if not found:
        return None
    at = next((a for a, n in found if len(text[:a].encode("utf-8")) == n), found[0][0])
    return text[:at], text[at + len(SEP) :]


def read_text(path: str | Path) -> str:
    """The file as UTF-8 without newline translation (the embedded source must stay byte-exact)."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise LogError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise LogError(f"{path}: not UTF-8 text") from None


def is_toolkit_log(path: str | Path) -> bool:
    try:
        return split_source(read_text(path)) is not None
    except LogError:
        return False


def _field(line: str, name: str, where: str) -> str:
    m = re.search(rf"(?:^|\s){re.escape(name)} (\S+)", line)
    if m is None:
        raise LogError(f"{where}: no '{name}' in line {line[:120]!r}")
    return m.group(1).rstrip(",")


def _num(s: str) -> float:
    return float(s.rstrip("s").replace(",", ""))


def _fields(line: str, names: tuple[str, ...], where: str) -> dict[str, float]:
    return {n: _num(_field(line, n, where)) for n in names}


def _held(line: str, key: str, where: str) -> bool:
    value = _field(line, key, where)
    if value not in ("True", "False"):
        raise LogError(f"{where}: '{key}' is {value!r}, not True/False")
    return value == "True"


def parse_log(path: str | Path, score_path: str | None = None) -> dict:
    """Everything a submission needs from one log. The score is the last final (post-export) eval of
    the val set, or its `score_path` eval (e.g. sliding) when given. Raises LogError (one line) when the
    file is not a log of this toolkit, holds more than one run, or lacks a line the submission needs."""
    where = str(path)
    split = split_source(read_text(path))
    if split is None:
        raise LogError(
            f"{where}: not a train_gpt.py log of this toolkit (no embedded source "
            f"followed by a line of 100 '=' and a 'code:' line)"
        )
    source, rest = split
    raw = source.encode("utf-8")
    lines = rest.splitlines()
    m = CODE_LINE.match(lines[0])
    # an older log has no code: line; its source then vouches for itself (compared to the shipped file only)
    code_name, code_bytes, code_sha = m.groups() if m else ("train_gpt.py", len(raw), hashlib.sha256(raw).hexdigest())
    runs = sum(line.startswith("hyperparameters: ") for line in lines)
    if runs > 1:  # the Logger appends: a reused RUN_ID stacks runs in one file
        raise LogError(f"{where}: holds {runs} runs (RUN_ID reused, train_gpt.py appends); keep one run per log")
    log: dict = dict(
        path=where,
        source=source,
        code_name=code_name,
        code_bytes=int(code_bytes),
        code_sha256=code_sha,
        code_line=m is not None,
        source_intact=len(raw) == int(code_bytes) and hashlib.sha256(raw).hexdigest() == code_sha,
        env=None,
        hyperparameters=None,
        params=None,
        train=None,
        compliance_train=None,
        artifact=None,
        compliance_eval=None,
        evals={},
        codecs=[],
        train_curve=[],
        val_curve=[],
    )
    for line in lines[1 if m else 0 :]:
        _parse_line(line, log, where)
    for key, what in (
        ("hyperparameters", "hyperparameters:"),
        ("train", "train:"),
        ("compliance_train", "compliance train:"),
        ("artifact", "artifact:"),
        ("compliance_eval", "compliance eval:"),
    ):
        if log[key] is None:
            raise LogError(f"{where}: no '{what}' line (run unfinished, or an EVAL_ONLY log)")
    final = {
        k.split("/")[0]: k
        for k in log["evals"]  # dicts keep order: last wins
        if "/pre_" not in k and score_path in (None, k.split("/", 1)[1])
    }
    if "val" not in final:
        raise LogError(
            f"{where}: no final 'eval val {score_path or '<path>'}:' line (the score from the artifact on disk)"
        )
    pre = {k.split("/")[0]: k for k in log["evals"] if "/pre_" in k}
    h = log["hyperparameters"]
    for key in ("seed", "run_id", "preset", "world_size"):
        if key not in h:
            raise LogError(f"{where}: hyperparameters lack '{key}'")
    score = log["evals"][final["val"]]
    log.update(
        seed=int(h["seed"]),
        run_id=str(h["run_id"]),
        preset=str(h["preset"]),
        world_size=int(h["world_size"]),
        final={s: log["evals"][k] | {"path": k.split("/", 1)[1]} for s, k in final.items()},
        pre_export={s: log["evals"][k] | {"path": k.split("/", 1)[1]} for s, k in pre.items()},
        val_bpb=score["val_bpb"],
        val_loss=score["val_loss"],
        eval_path=final["val"].split("/", 1)[1],
        steps=log["train"]["steps"],
        step_avg_ms=log["train"]["step_avg_ms"],
        train_seconds=log["compliance_train"]["total"],
        eval_seconds=log["compliance_eval"]["eval_seconds"],
        artifact_bytes=log["artifact"]["bytes"],
        total_bytes=log["artifact"]["total"],
        codec=min(log["codecs"], key=lambda c: c[3])[0] if log["codecs"] else None,
    )
    return log


def _parse_line(line: str, log: dict, where: str) -> None:
    if line.startswith("env: "):
        m = re.search(r"gpus (\[.*\])", line)
        log["env"] = dict(
            python=_field(line, "python", where),
            torch=_field(line, "torch", where),
            cuda=_field(line, "cuda", where),
            gpus=ast.literal_eval(m.group(1)) if m else [],
            world_size=int(_num(_field(line, "world_size", where))),
        )
    elif line.startswith("hyperparameters: "):
        try:
            log["hyperparameters"] = json.loads(line[len("hyperparameters: ") :])
        except json.JSONDecodeError as e:
            raise LogError(f"{where}: hyperparameters line is not JSON ({e.msg})") from None
    elif line.startswith("model: "):
        m = re.match(r"model: ([\d,]+) parameters", line)
        log["params"] = int(m.group(1).replace(",", "")) if m else None
        log["attention"] = (re.search(r"attention (\w+)", line) or [None, None])[1]
    elif line.startswith("step ") and " train_loss " in line:
        f = _fields(line, ("train_loss", "elapsed"), where)
        log["train_curve"].append((f["elapsed"], f["train_loss"]))
    elif line.startswith("step ") and " val_loss " in line:
        f = _fields(line, ("val_loss", "val_bpb", "elapsed"), where)
        log["val_curve"].append((f["elapsed"], f["val_loss"], f["val_bpb"]))
    elif line.startswith("train: "):
        m = TRAIN_LINE.match(line)
        if m is None:
            raise LogError(f"{where}: cannot read line {line!r}")
        log["train"] = dict(
            steps=int(m.group(1)),
            seconds=float(m.group(2)),
            step_avg_ms=float(m.group(3)),
            peak_memory_gib=float(m.group(4) or 0),
        )
    elif line.startswith("compliance train: "):
        log["compliance_train"] = _fields(
            line, ("train_seconds", "calibration_seconds", "reserve", "total", "cap"), where
        ) | {"held": _held(line, "held", where)}
    elif line.startswith("eval ") and (m := EVAL_LINE.match(line)):
        f = _fields(m.group(3), ("val_loss", "val_bpb", "tokens", "bytes", "seconds"), where)
        f["tokens"], f["bytes"] = int(f["tokens"]), int(f["bytes"])
        log["evals"].pop(f"{m.group(1)}/{m.group(2)}", None)  # a repeated path moves to the end
        log["evals"][f"{m.group(1)}/{m.group(2)}"] = f
    elif line.startswith("codec ") and (m := CODEC_LINE.match(line)):
        log["codecs"].append((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
    elif line.startswith("artifact: "):
        m = re.match(r"artifact: (\d+) bytes", line)
        if m is None:
            raise LogError(f"{where}: cannot read line {line!r}")
        f = _fields(line, ("code", "total", "margin"), where)
        log["artifact"] = dict(
            bytes=int(m.group(1)),
            code=int(f["code"]),
            total=int(f["total"]),
            margin=int(f["margin"]),
            cap_held=_held(line, "cap_held", where),
        )
    elif line.startswith("compliance eval: "):
        log["compliance_eval"] = _fields(line, ("eval_seconds", "budget"), where) | {"held": _held(line, "held", where)}


def find_logs(folder: str | Path) -> list[Path]:
    """The logs of a submission folder: *.log and *.txt at its top level or in logs/ (the official
    records use both; requirements.txt is not a log)."""
    found = []
    for d in (Path(folder), Path(folder) / "logs"):
        if d.is_dir():
            found += sorted(
                p for p in d.iterdir() if p.is_file() and p.suffix in (".log", ".txt") and p.name != "requirements.txt"
            )
    return found
