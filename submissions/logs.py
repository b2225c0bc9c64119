"""Parse a train_gpt.py log (logs/<RUN_ID>.txt): the toolkit's one reader of its log format (submissions,
quant.verify and bench/proxy_run.py all read logs through it).

A log is the exact source of every file the run executed (train_gpt.py, then any plug-in it loaded from a file
beside it: seed_archs.py, ngram_mix.py), each followed by a line of 100 '=', then one `code:` line per file (name,
bytes and sha256 of that source), then one line per event (train_gpt.py: log_header, train, export_artifact,
run_evals). Lines are recognised by their leading words and read as `name value` pairs, so a field added to a
line does not break the parser. read_log takes whatever a log holds; parse_log also demands what a submission
needs (a missing line is a LogError naming it).
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
EXPORT_LINE = re.compile(r"export: .* tensors in ([\d.]+)s, .* encoded in ([\d.]+)s")
CODEC_LINE = re.compile(r"codec (\S+) shuffle (\d)(?: pack \d)?: (\d+) bytes")  # older logs name a pack flag


class LogError(ValueError):
    """A log this toolkit cannot use; the message names the file and what is missing."""


def split_sources(text: str) -> tuple[list[tuple[str, str]], str] | None:
    """([(file name, embedded source)], rest) for a log of this toolkit, None for any other text. The sources
    end at a separator followed by the `code:` lines; the first whose byte counts tile the text before it wins,
    so a line of '=' inside a source cannot cut it short, while an edited source still splits (and fails its
    sha). Logs from before the `code:` line existed hold one source, followed by `env: python`."""
    found, at = [], text.find(SEP)
    while at >= 0:
        codes, pos = [], at + len(SEP)
        while m := CODE_LINE.match(text, pos):
            codes.append((m.group(1), int(m.group(2))))
            pos = m.end() + 1
        if codes or text.startswith("env: python ", at + len(SEP)):
            found.append((at, codes))
        at = text.find(SEP, at + 1)
    if not found:
        return None
    for at, codes in found:
        head = text[:at].encode("utf-8")
        if codes and sum(n for _, n in codes) + (len(codes) - 1) * len(SEP) == len(head):
            parts, pos = [], 0
            for name, n in codes:
                parts.append((name, head[pos : pos + n].decode("utf-8")))
                pos += n + len(SEP)
            return parts, text[at + len(SEP) :]
    at = found[0][0]
    return [("train_gpt.py", text[:at])], text[at + len(SEP) :]


def split_source(text: str) -> tuple[str, str] | None:
    """(the main embedded source, rest) for a log of this toolkit, None for any other text."""
    split = split_sources(text)
    return None if split is None else (split[0][0][1], split[1])


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


def read_log(path: str | Path) -> dict:
    """Whatever a log of this toolkit holds (read_text_log of the file)."""
    return read_text_log(read_text(path), str(path))


def read_text_log(text: str, where: str = "log") -> dict:
    """Everything a log holds, with None (or empty) for lines it lacks: its embedded sources and whether each
    still matches its `code:` line, the runs it stacks, the environment, settings, training, export and evals.
    Raises LogError only when the text is not a log of this toolkit."""
    split = split_sources(text)
    if split is None:
        raise LogError(
            f"{where}: not a train_gpt.py log of this toolkit (no embedded source "
            f"followed by a line of 100 '=' and a 'code:' line)"
        )
    parts, rest = split
    lines = rest.splitlines()
    codes = []
    while len(codes) < len(lines) and (m := CODE_LINE.match(lines[len(codes)])):
        codes.append(m.groups())
    # an older log has no code: line; its source then vouches for itself (compared to the shipped file only)
    sources = []
    for i, (name, source) in enumerate(parts):
        raw = source.encode("utf-8")
        name, n, sha = codes[i] if i < len(codes) else (name, len(raw), hashlib.sha256(raw).hexdigest())
        intact = len(raw) == int(n) and hashlib.sha256(raw).hexdigest() == sha
        sources.append(dict(name=name, source=source, bytes=int(n), sha256=sha, intact=intact))
    main = sources[0]
    log = read_events(lines[len(codes) :], where)
    log.update(path=where, sources=sources, source=main["source"], code_name=main["name"])
    log.update(code_bytes=main["bytes"], code_sha256=main["sha256"], code_line=bool(codes))
    log.update(source_intact=all(s["intact"] for s in sources))
    return log


def read_events(lines: list[str], where: str = "log") -> dict:
    """What the event lines of a log hold (those after its sources; a killed run's partial log, a fragment)."""
    log: dict = dict(runs=sum(line.startswith("hyperparameters: ") for line in lines), recur_step=None, export=None)
    log.update(env=None, hyperparameters=None, params=None, attention=None, train=None, compliance_train=None)
    log.update(artifact=None, compliance_eval=None, evals={}, codecs=[], train_curve=[], train_steps=[], val_curve=[])
    for line in lines:
        _parse_line(line, log, where)
    return log


def parse_log(path: str | Path, score_path: str | None = None) -> dict:
    """Everything a submission needs from one log. The score is the last final (post-export) eval of
    the val set, or its `score_path` eval (e.g. sliding) when given. Raises LogError (one line) when the
    file is not a log of this toolkit, holds more than one run, or lacks a line the submission needs."""
    where = str(path)
    log = read_log(path)
    if log["runs"] > 1:  # a reused RUN_ID stacked runs in one file
        raise LogError(f"{where}: holds {log['runs']} runs (RUN_ID reused, train_gpt.py appends); keep one run per log")
    for key, what in (
        ("hyperparameters", "hyperparameters:"),
        ("train", "train:"),
        ("compliance_train", "compliance train:"),
        ("artifact", "artifact:"),
        ("compliance_eval", "compliance eval:"),
    ):
        if log[key] is None:
            raise LogError(f"{where}: no '{what}' line (run unfinished, or an EVAL_ONLY log)")
    final = {k.split("/")[0]: k for k in log["evals"] if "/pre_" not in k and score_path in (None, k.split("/", 1)[1])}
    if "val" not in final:  # dicts keep order: the last line of a path wins
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
        codec=min(log["codecs"], key=lambda c: c[2])[0] if log["codecs"] else None,
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
        f = _fields(line, ("step", "train_loss", "elapsed"), where)
        log["train_curve"].append((f["elapsed"], f["train_loss"]))
        log["train_steps"].append((int(f["step"]), f["elapsed"]))
    elif line.startswith("step ") and ": depth recurrence on" in line:
        log["recur_step"] = int(line.split()[1].rstrip(":"))
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
        log["codecs"].append((m.group(1), int(m.group(2)), int(m.group(3))))
    elif line.startswith("export: ") and (m := EXPORT_LINE.match(line)):
        log["export"] = dict(quantize_seconds=float(m.group(1)), encode_seconds=float(m.group(2)))
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


# -----------------------------------------------------------------------------
# logs of other scripts (the official records): only their score and size lines
# -----------------------------------------------------------------------------

# The challenge's train_gpt.py lineage prints `<label> val_loss:X val_bpb:Y ...` (a few write `=`, or a space
# after the colon; newer ones prefix a unix time) and `Total submission size <codec>: N bytes`. Lines of the
# training curve (`step:...`, `1000/20000 val_loss: ...`) and pre-export diagnostics are not final scores.
_STAMP = r"^(?:\d{9,}\.\d+ )?"
OFFICIAL_SCORE = re.compile(
    _STAMP + r"(?P<label>[A-Za-z][^\n]*?)\s+(?:stride:\d+ )?val_loss[:=]\s*(?P<loss>\d+\.\d+)\s+"
    r"val_bpb[:=]\s*(?P<bpb>\d+\.\d+)",
    re.M,
)
OFFICIAL_TOTAL = re.compile(_STAMP + r"Total submission size[^:\n]*: (\d+) bytes", re.M)
OFFICIAL_MODEL = re.compile(_STAMP + r"Serialized model [^:\n]+: (\d+) bytes", re.M)
NOT_FINAL = re.compile(r"^step|pre[-_ ]?quant|post[-_ ]?ema", re.I)


def read_official_log(path: str | Path) -> dict:
    """The final score lines, the last `Total submission size` / `Serialized model` byte counts and the seed
    (from the file name, else a `seed:`/`seed=` line) of a log written by another script. Each score keeps the
    text it was printed as, so a comparison can allow for its rounding."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    scores = [
        dict(label=m["label"], val_loss=m["loss"], val_bpb=m["bpb"])
        for m in OFFICIAL_SCORE.finditer(text)
        if not NOT_FINAL.search(m["label"])
    ]
    totals, models = OFFICIAL_TOTAL.findall(text), OFFICIAL_MODEL.findall(text)
    seed = re.search(r"seed[_-]?(\d+)", path.stem) or re.search(r"(?:^|\s)seed[:=]\s*(\d+)", text, re.M)
    return dict(
        path=str(path),
        seed=seed and seed.group(1),
        scores=scores,
        total_bytes=int(totals[-1]) if totals else None,
        model_bytes=int(models[-1]) if models else None,
    )


def find_official_logs(folder: str | Path) -> list[Path]:
    """Every *.log and *.txt under an official records folder, subfolders included (some keep re-evaluation logs
    apart), requirements.txt excepted."""
    return sorted(
        p
        for p in Path(folder).rglob("*")
        if p.suffix in (".log", ".txt") and p.is_file() and p.name != "requirements.txt"
    )


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
