"""Write a records folder from train_gpt.py logs: every number comes from the logs.

    python -m submissions.make --name NAME --logs a.txt b.txt c.txt [--reference DIR | --reference-bpb x,y,z]
        [--artifacts DIR] [--out submissions] [--author A --github-id G] [--label "proxy (...)"]
        [--track 10min_16mb|non_record_16mb]

writes <out>/<YYYY-MM-DD>_<NAME>/: README.md, submission.json, train_seed<S>.txt (the logs, copied),
train_gpt.py (byte-identical to the source every log embeds), requirements.txt (derived from that
source's imports) and loss_curves.png. It refuses logs that disagree on source or config, or repeat
a seed, and logs that record a broken rule (train clock, eval clock, size cap) unless
--allow-rule-breaks, which then marks the folder. With a reference it adds a one-sided Welch t-test:
the record bar is beating the reference by >= 0.005 nats at p < 0.01. Runs on other data than the
official FineWeb shards (DATA_PATH not a fineweb10B_<variant> folder, e.g. the proxy devset) are
labelled proxy everywhere and never tested against a FineWeb reference.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import re
import shlex
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path

from quant.pack import unpack
from submissions.logs import LogError, find_logs, parse_log

SIZE_CAP = 16_000_000
LIMIT_S = 600.0  # the train and the eval clock of the challenge
THRESHOLD_NATS, ALPHA = 0.005, 0.01
DIGITS = 8  # JSON rounding of means and stds; the logs print 6 decimals, so this loses nothing
TRACKS = ("10min_16mb", "non_record_16mb")  # the official records/track_<name>/ folders
# Keys train_gpt.py derives or torchrun sets: never env vars of the reproduce command.
DERIVED = {
    "run_id",
    "seed",
    "rank",
    "local_rank",
    "world_size",
    "train_files",
    "val_files",
    "artifact_path",
    "overwrite",
}
# May differ between seeds' logs (where the data lay on each machine; extra eval paths reported beside
# the scored one); everything else must match.
LOCAL = {"data_path", "tokenizer_path", "dev_val_files", "artifact", "per_token_out", "eval_paths", "pre_export_paths"}
KEY_HPARAMS = (
    "preset",
    "vocab_size",
    "num_layers",
    "model_dim",
    "num_heads",
    "num_kv_heads",
    "mlp_mult",
    "train_seq_len",
    "train_batch_tokens",
    "iterations",
    "max_wallclock_seconds",
    "gptq_reserve_seconds",
    "warmdown_frac",
    "matrix_lr",
    "scalar_lr",
    "tied_embed_lr",
    "muon_wd",
    "ema_decay",
    "recur_start",
    "recur_end",
    "recur_extra",
    "recur_frac",
    "parallel_from",
    "quant",
    "matrix_bits",
    "embed_bits",
    "lqer_top",
    "lqer_rank",
    "codecs",
    "eval_paths",
    "eval_seq_len",
    "eval_stride",
)


class SubmissionError(ValueError):
    """Input that cannot become a submission; the message says why."""


def load_logs(paths: list[str], score_path: str | None = None) -> list[dict]:
    """Parse the logs and refuse any set that is not n seeds of one script, one config and one scored path."""
    logs = [parse_log(p, score_path) for p in paths]
    scored = Counter(log["eval_path"] for log in logs)
    if len(scored) > 1:
        listing = ", ".join(f"{Path(l['path']).name}={l['eval_path']}" for l in logs)
        raise SubmissionError(f"logs end with different eval paths ({listing}); name the scored one with --score-path")
    for log in logs:
        if not log["source_intact"]:
            raise SubmissionError(f"{log['path']}: embedded source does not match its code: line (edited log?)")
        if len(log["sources"]) > 1:
            others, hp = ", ".join(f["name"] for f in log["sources"][1:]), log["hyperparameters"]
            raise SubmissionError(
                f"{log['path']}: the run also executed {others} from beside train_gpt.py; a submission is one "
                f"file: run the packed copy that bundles it (make pack ARCH={hp.get('arch')} "
                f"EVAL_PATHS={hp.get('eval_paths')} FUSED_MLP={hp.get('fused_mlp', 0)} FP8_MLP={hp.get('fp8_mlp', 0)} "
                f"FUSED_XSA={hp.get('fused_xsa', 0)})"
            )
    shas = Counter(log["code_sha256"] for log in logs)
    if len(shas) > 1:
        listing = ", ".join(f"{Path(l['path']).name}={l['code_sha256'][:12]}" for l in logs)
        raise SubmissionError(
            f"logs embed {len(shas)} different train_gpt.py sources ({listing}); one script per submission"
        )
    seeds = Counter(log["seed"] for log in logs)
    if len(seeds) < len(logs):
        raise SubmissionError(
            f"seeds repeat: {sorted(s for s, n in seeds.items() if n > 1)}; each log must be a distinct seed"
        )
    ref = logs[0]["hyperparameters"]
    for log in logs[1:]:
        h = log["hyperparameters"]
        diff = sorted(k for k in ref.keys() | h.keys() if k not in DERIVED | LOCAL and ref.get(k) != h.get(k))
        if diff:
            raise SubmissionError(f"{log['path']}: config differs from {logs[0]['path']} in {', '.join(diff)}")
    return logs


def rule_breaks(logs: list[dict]) -> list[str]:
    """What the logs themselves record as broken: the train clock (training + calibration), the eval clock,
    the size cap."""
    out = []
    for log in logs:
        name, t, e, a = Path(log["path"]).name, log["compliance_train"], log["compliance_eval"], log["artifact"]
        if not t["held"] or t["total"] > LIMIT_S:
            out.append(
                f"{name}: train {t['total']} s incl. calibration against a {t['cap']:.0f} s cap (held {t['held']})"
            )
        if not e["held"] or e["eval_seconds"] > LIMIT_S:
            out.append(f"{name}: eval {e['eval_seconds']} s against {e['budget']:.0f} s (held {e['held']})")
        if a["total"] > SIZE_CAP:
            out.append(f"{name}: code + artifact {a['total']:,} bytes > {SIZE_CAP:,}")
        elif not a["cap_held"]:
            out.append(f"{name}: artifact line says cap_held False ({a['total']:,} bytes)")
    return out


def data_of(logs: list[dict]) -> dict:
    """The data the runs trained and were scored on: the official FineWeb shards are the fineweb10B_<variant>
    folder data.download writes; anything else (the proxy devset, own shards) gives a proxy score."""
    names = sorted({Path(str(log["hyperparameters"].get("data_path", ""))).name for log in logs})
    return dict(official_fineweb=all(n.startswith("fineweb10B_") for n in names), data=names)


def check_artifacts(logs: list[dict], folder: Path) -> dict[int, str]:
    """Each run's artifact <folder>/<RUN_ID>.pgq: size as logged and decodable; seed -> sha256."""
    try:
        from train_gpt import ArtifactError, decode_artifact
    except ImportError as e:
        raise SubmissionError(
            f"--artifacts needs train_gpt.py importable (run from the repository root): {e}"
        ) from None
    shas = {}
    for log in logs:
        path = folder / f"{log['run_id']}.pgq"
        if not path.is_file():
            raise SubmissionError(f"{path}: no artifact for run {log['run_id']}")
        blob = path.read_bytes()
        if len(blob) != log["artifact_bytes"]:
            raise SubmissionError(f"{path}: {len(blob)} bytes, but {log['path']} logged {log['artifact_bytes']}")
        try:
            decode_artifact(blob)
        except ArtifactError as e:
            raise SubmissionError(f"{path}: {e}") from None
        shas[log["seed"]] = hashlib.sha256(blob).hexdigest()
    return shas


# -----------------------------------------------------------------------------
# reference and significance
# -----------------------------------------------------------------------------


def load_reference(folder: str | None, bpb: str | None) -> dict | None:
    """Per-seed val_bpb of the run to beat: explicit numbers, or a submission folder (its toolkit logs,
    else its submission.json seed_results, else its single val_bpb)."""
    if bpb:
        try:
            values = [float(x) for x in bpb.split(",") if x.strip()]
        except ValueError:
            raise SubmissionError(f"--reference-bpb {bpb!r}: expected numbers separated by commas") from None
        if not values:
            raise SubmissionError("--reference-bpb: no numbers")
        return dict(source="explicit --reference-bpb", val_bpb=values)
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise SubmissionError(f"--reference {folder}: not a directory")
    logs = []
    for p in find_logs(path):
        try:
            logs.append(parse_log(p))
        except LogError:
            pass  # not a log of this toolkit: fall back to submission.json
    if logs:
        return dict(source=f"{folder} (logs)", val_bpb=[l["val_bpb"] for l in logs]) | data_of(logs)
    try:
        meta = json.loads((path / "submission.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SubmissionError(f"--reference {folder}: no toolkit logs and no readable submission.json ({e})") from None
    results, data = meta.get("seed_results"), meta.get("data") if isinstance(meta.get("data"), dict) else {}
    data = dict(official_fineweb=data.get("official_fineweb", True), data=data.get("data", ["official records"]))
    if (
        isinstance(results, dict)
        and results
        and all(isinstance(r, dict) and _is_num(r.get("val_bpb")) for r in results.values())
    ):
        values = [r["val_bpb"] for r in results.values()]
        return dict(source=f"{folder} (submission.json seed_results)", val_bpb=values) | data
    if _is_num(meta.get("val_bpb")):
        return dict(source=f"{folder} (submission.json val_bpb, one value)", val_bpb=[meta["val_bpb"]]) | data
    raise SubmissionError(f"--reference {folder}: submission.json has no val_bpb")


def comparable(ours: dict, ref: dict) -> str | None:
    """Why the reference's scores cannot be tested against ours (None when they can): a proxy score
    is never tested against FineWeb, nor against scores on other data. Explicit --reference-bpb numbers
    carry no data tag; they are the caller's word."""
    if "official_fineweb" not in ref or (ours["official_fineweb"] and ref["official_fineweb"]):
        return None
    if ours["official_fineweb"] != ref["official_fineweb"] or ours["data"] != ref["data"]:
        return f"these runs are on {', '.join(ours['data'])}, the reference on {', '.join(ref['data'])}: not comparable"
    return None


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def welch(ours: list[float], ref: list[float], margin: float = 0.0) -> dict:
    """One-sided test of mean(ours) < mean(ref) - margin: Welch's t-test (scipy.stats.ttest_ind,
    equal_var=False) of ours + margin against ref. A reference of one value has no variance; it is
    then a constant and the test a one-sample t-test. p is None where the data give no variance."""
    from scipy import stats

    shifted = [x + margin for x in ours]
    if len(ours) < 2:  # one seed has no variance: nothing to test
        return dict(test="none: one seed has no variance", t=None, df=None, p=None)
    if len(ref) == 1:
        r = stats.ttest_1samp(shifted, ref[0], alternative="less")
        test = "one-sided one-sample t-test: the reference is one value"
    else:
        r = stats.ttest_ind(shifted, ref, equal_var=False, alternative="less")
        test = "one-sided Welch t-test"
    p, t = float(r.pvalue), float(r.statistic)
    ok = math.isfinite(p)
    return dict(test=test, t=t if ok else None, df=float(r.df) if ok else None, p=p if ok else None)


def significance(logs: list[dict], ref: dict) -> dict:
    """Our seeds against the reference, in bpb and in nats per token. The reference's nats are its bpb
    at this run's bytes per token (val_loss = val_bpb * ln 2 * bytes / tokens), so a reference on another
    tokenizer compares fairly; ours are the logged val_loss."""
    counts = {(l["final"]["val"]["tokens"], l["final"]["val"]["bytes"]) for l in logs}
    if len(counts) > 1:
        raise SubmissionError(f"seeds were scored on different val sets (tokens, bytes): {sorted(counts)}")
    tokens, n_bytes = counts.pop()
    per_token = n_bytes / tokens
    ours_bpb, ours_nats = [l["val_bpb"] for l in logs], [l["val_loss"] for l in logs]
    ref_bpb = list(ref["val_bpb"])
    ref_nats = [b * math.log(2) * per_token for b in ref_bpb]
    d_bpb = statistics.fmean(ours_bpb) - statistics.fmean(ref_bpb)
    d_nats = statistics.fmean(ours_nats) - statistics.fmean(ref_nats)
    bpb_test, nats_test = welch(ours_bpb, ref_bpb), welch(ours_nats, ref_nats, THRESHOLD_NATS)
    meets = nats_test["p"] is not None and nats_test["p"] < ALPHA and d_nats <= -THRESHOLD_NATS
    return dict(
        reference=ref["source"],
        reference_val_bpb=ref_bpb,
        reference_mean_val_bpb=_r(statistics.fmean(ref_bpb)),
        bytes_per_token=_r(per_token),
        delta_bpb=_r(d_bpb),
        delta_nats=_r(d_nats),
        test=nats_test["test"],
        t_nats=_r(nats_test["t"]),
        df=_r(nats_test["df"]),
        p_nats_improvement_over_threshold=nats_test["p"],
        p_bpb_improvement=bpb_test["p"],
        threshold_nats=THRESHOLD_NATS,
        alpha=ALPHA,
        meets_record_bar=meets,
    )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, DIGITS)


# -----------------------------------------------------------------------------
# what the folder says
# -----------------------------------------------------------------------------


def imports_of(source: str) -> dict[str, bool]:
    """Top-level modules the source imports beyond the stdlib -> optional (every import of it sits in a
    try whose handler catches ImportError). Sees import, from-import (absolute) and
    importlib.import_module(<expr>) with string constants in <expr>, dict values included. A packed
    train_gpt.py (quant.pack) is read through to the source it carries."""
    source = unpack(source) or source
    try:
        tree = ast.parse(source)
    except SyntaxError:  # minified by a newer Python (3.12 f-strings) than this one
        return _scan_imports(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
            and node.args
        ):
            names = _strings(node.args[0])
        else:
            continue
        for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names):
            found[top] = found.get(top, True) and _guarded(node, parents)
    return dict(sorted(found.items()))


def _scan_imports(source: str) -> dict[str, bool]:
    """imports_of for ast.unparse output this Python cannot parse: one statement per line, so an import is
    optional when the nearest less-indented line above it is `try:`."""
    lines, found = source.splitlines(), {}
    for i, line in enumerate(lines):
        m = re.match(r"( *)(?:import ([\w., ]+)$|from (\w[\w.]*) import |.*import_module\((.*)\))", line)
        if not m:
            continue
        names = (
            [n.split(" as ")[0].strip() for n in m.group(2).split(",")]
            if m.group(2)
            else [m.group(3)]
            if m.group(3)
            else re.findall(r"['\"]\s*:\s*['\"]([\w.]+)['\"]", m.group(4))
            or re.findall(r"^['\"]([\w.]+)['\"]$", m.group(4))
        )
        indent = len(m.group(1))
        above = next((l for l in reversed(lines[:i]) if len(l) - len(l.lstrip()) < indent), "")
        for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names):
            found[top] = found.get(top, True) and above.strip() == "try:"
    return dict(sorted(found.items()))


def _strings(expr: ast.expr) -> list[str]:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return [expr.value]
    if isinstance(expr, ast.Dict):
        return [s for v in expr.values for s in _strings(v)]
    if isinstance(expr, ast.Subscript):
        return _strings(expr.value)
    if isinstance(expr, ast.IfExp):
        return _strings(expr.body) + _strings(expr.orelse)
    return []


def _guarded(node: ast.AST, parents: dict) -> bool:
    catches = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    child, parent = node, parents.get(node)
    while parent is not None:
        if (
            isinstance(parent, ast.Try)
            and child in parent.body
            and any(
                h.type is None
                or catches & {ast.unparse(t) for t in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])}
                for h in parent.handlers
            )
        ):
            return True
        child, parent = parent, parents.get(parent)
    return False


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution(module: str) -> str:
    """The pip name that provides `module` here (e.g. yaml -> PyYAML); the module name when not installed."""
    return (_distributions().get(module) or [module])[0]


def requirements_txt(source: str, logs: list[dict]) -> str:
    imports = imports_of(source)
    torch_versions = sorted({l["env"]["torch"] for l in logs if l["env"]})
    sha = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
    lines = [f"# Derived from the imports of train_gpt.py (sha256 {sha}...) by submissions.make."]
    if torch_versions:
        lines.append(f"# torch as logged by the runs: {', '.join(torch_versions)} (install the build for your CUDA).")
    for module, optional in imports.items():
        if not optional:
            pin = f"=={torch_versions[0].split('+')[0]}" if module == "torch" and len(torch_versions) == 1 else ""
            lines.append(distribution(module) + pin)
    optional = [m for m, opt in imports.items() if opt]
    if optional:
        codecs = sorted({l["codec"] for l in logs if l["codec"]})
        lines.append(
            "# Optional: imported inside try/except ImportError"
            + (f"; the artifacts of these runs use codec {', '.join(codecs)}" if codecs else "")
        )
        # a module not installed here has no known pip name: a comment, so `pip install -r` cannot fail on it
        lines += [
            distribution(m) if m in _distributions() else f"# {m} (no pip name known here; install by hand)"
            for m in optional
        ]
    fast = dict(
        fa3="FlashAttention-3 (flash_attn_interface)", fa4="FA4 (pip install flash-attn-4 'nvidia-cutlass-dsl')"
    )
    for impl, what in fast.items():  # an optional import the runs' speed depended on
        if any(l.get("attention") == impl for l in logs):
            lines.append(
                f"# The runs trained with {what} (logged 'attention {impl}'). Without it train_gpt.py falls back to "
                "a slower kernel (ATTN_IMPL=auto): fewer steps in the same 600 s."
            )
    return "\n".join(lines) + "\n"


def hardware(logs: list[dict]) -> str:
    def one(log: dict) -> str:
        env = log["env"] or {}
        gpus = Counter(env.get("gpus") or [])
        what = ", ".join(f"{n}x {name}" for name, n in gpus.items()) or "CPU"
        return f"{what} (world_size {log['world_size']})"

    return " / ".join(dict.fromkeys(one(l) for l in logs))


def techniques(h: dict, log: dict) -> str:
    """A factual summary of the logged config (what the switches are set to, nothing inferred)."""
    g = h.get
    parts = [
        f"{g('num_layers')}L x {g('model_dim')}d, {g('num_heads')} heads / {g('num_kv_heads')} KV, "
        f"MLP {g('mlp_mult')}x" + (f" LeakyReLU({g('leaky_slope')})^2" if g("leaky_slope") else " ReLU^2"),
        f"vocab {g('vocab_size')}, seq {g('train_seq_len')}, batch {g('train_batch_tokens')} tokens",
    ]
    arch = {
        "worker": f"ARCH=worker (every {g('worker_interval')}th token attends, conv kernel {g('worker_kernel')})",
        "pse": f"ARCH=pse ({g('pse_scales')} EMA scales up to half-life {g('pse_max_halflife')})",
        "scan": f"ARCH=scan (chunks of {g('scan_chunk')}, Blelloch prefix scan)",
    }.get(g("arch", "gpt"))
    if arch:
        parts.insert(0, arch)
    if g("recur_extra"):
        parts.append(
            f"layers {g('recur_start')}-{g('recur_end')} looped +{g('recur_extra')} from {g('recur_frac')} of training"
        )
    if g("parallel_from", -1) >= 0:
        parts.append(f"parallel residuals from layer {g('parallel_from')}")
    flags = [
        name
        for key, name in (
            ("xsa", "XSA"),
            ("smear", "SmearGate"),
            ("attn_gate", "attention output gate"),
            ("unet", "U-Net skips"),
            ("x0_mix", "x0 mix"),
            ("doc_mask", "document mask"),
        )
        if g(key)
    ]
    if g("rope_dims"):
        flags.append(f"RoPE on {g('rope_dims')} dims")
    parts.append(", ".join(flags))
    opt = ("MuonEq-R" if g("muon_row_norm") else "Muon") + (" (Polar Express)" if g("polar_express") else "")
    parts.append(opt + (f", EMA {g('ema_decay')}" if g("ema") else "") + f", warmdown {g('warmdown_frac')}")
    export = f"{str(g('quant')).upper()} int{g('matrix_bits')} matrices / int{g('embed_bits')} embeddings"
    if g("lqer_top"):
        export += f", LQER rank {g('lqer_rank')} on {g('lqer_top')} tensors"
    parts.append(export + (f", {log['codec']}" if log["codec"] else ""))
    parts.append(f"scored by eval path '{log['eval_path']}' (seq {g('eval_seq_len')}, stride {g('eval_stride')})")
    return "; ".join(p for p in parts if p)


def preset_defaults(script: Path, preset: str) -> dict | None:
    """Resolved hyperparameters of PRESET=<preset> alone, from the shipped script itself (the repo's copy
    may have moved on); None when it cannot be loaded (then the reproduce command lists every knob)."""
    name = "_shipped_train_gpt"
    try:
        spec = importlib.util.spec_from_file_location(name, script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        return dict(module.Hyperparameters({"PRESET": preset}).items())
    except Exception:  # any failure only makes the command longer
        return None
    finally:
        sys.modules.pop(name, None)


def reproduce_command(logs: list[dict], defaults: dict | None) -> str:
    h = logs[0]["hyperparameters"]
    env = {"PRESET": h["preset"]} | {
        k.upper(): v
        for k, v in sorted(h.items())
        if k not in DERIVED | {"preset"} and (defaults is None or defaults.get(k) != v)
    }
    assigns = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    n = logs[0]["world_size"]
    run = "python train_gpt.py" if n == 1 else f"torchrun --standalone --nproc_per_node={n} train_gpt.py"
    seeds = " ".join(str(l["seed"]) for l in logs)
    return (
        f"for SEED in {seeds}; do\n  RUN_ID=seed$SEED SEED=$SEED {assigns} \\\n    {run}\ndone\n"
        f"# -> logs/seed<SEED>.txt and artifacts/seed<SEED>.pgq"
    )


# -----------------------------------------------------------------------------
# writing
# -----------------------------------------------------------------------------


def submission_json(
    args: argparse.Namespace, logs: list[dict], date: str, sig: dict | str | None, artifact_shas: dict[int, str]
) -> dict:
    bpb, loss = [l["val_bpb"] for l in logs], [l["val_loss"] for l in logs]
    std = lambda xs: _r(statistics.stdev(xs)) if len(xs) > 1 else None
    seed_results = {}
    for l in logs:
        seed_results[str(l["seed"])] = dict(
            val_loss=l["val_loss"],
            val_bpb=l["val_bpb"],
            artifact_bytes=l["artifact_bytes"],
            steps=l["steps"],
            step_avg_ms=l["step_avg_ms"],
            eval_time_s=l["eval_seconds"],
            train_time_s=l["train_seconds"],
            bytes_total=l["total_bytes"],
            log=log_name(l),
        )
        if "val" in l["pre_export"]:
            seed_results[str(l["seed"])]["pre_export_val_bpb"] = l["pre_export"]["val"]["val_bpb"]
        if l["seed"] in artifact_shas:
            seed_results[str(l["seed"])]["artifact_sha256"] = artifact_shas[l["seed"]]
    label = f" [{args.label}]" if args.label else ""
    h = logs[0]["hyperparameters"]
    blurb = args.blurb or (
        f"{h['preset']} preset of train_gpt.py, {len(logs)} seeds, scored by eval path "
        f"'{logs[0]['eval_path']}' on the artifact read back from disk."
    )
    meta = dict(
        author=args.author,
        github_id=args.github_id,
        name=args.name + label,
        blurb=(f"[{args.label}] " if args.label else "") + blurb,
        date=date,
        track=args.track,
        val_loss=_r(statistics.fmean(loss)),
        val_bpb=_r(statistics.fmean(bpb)),
        val_loss_std=std(loss),
        val_bpb_std=std(bpb),
        seeds=[l["seed"] for l in logs],
        seed_results=seed_results,
        artifact_bytes_max=max(l["artifact_bytes"] for l in logs),
        bytes_total=max(l["total_bytes"] for l in logs),
        bytes_code=logs[0]["artifact"]["code"],
        hardware=hardware(logs),
        pytorch_version=" / ".join(sorted({l["env"]["torch"] for l in logs if l["env"]})) or "unknown",
        technique_summary=techniques(h, logs[0]),
        eval_path=logs[0]["eval_path"],
    )
    if all("val" in l["pre_export"] for l in logs):
        meta["pre_quant_val_bpb"] = _r(statistics.fmean(l["pre_export"]["val"]["val_bpb"] for l in logs))
    if args.label:
        meta["label"] = args.label
    meta["data"] = data_of(logs)
    if rule_breaks(logs):  # only with --allow-rule-breaks
        meta["rule_breaks"] = rule_breaks(logs)
    if isinstance(sig, dict):
        meta["significance"] = sig
    elif sig:
        meta["significance_skipped"] = sig
    return meta


def log_name(log: dict) -> str:
    return f"train_seed{log['seed']}.txt"


def fmt(x: float | int | None, digits: int = 6) -> str:
    if x is None:
        return "n/a"
    return f"{x:,}" if isinstance(x, int) else f"{x:.{digits}f}"


def readme(meta: dict, logs: list[dict], args: argparse.Namespace, command: str, requirements: str) -> str:
    h = logs[0]["hyperparameters"]
    label = args.label
    tag = f" [{label}]" if label else ""
    pre_path = (
        logs[0]["pre_export"].get("val", {}).get("path", "").removeprefix("pre_")
    )  # may differ from the scored one
    out = [f"# {meta['name']}", ""]
    if meta.get("rule_breaks"):
        out += [
            "> **This run breaks the challenge rules; it is not a valid submission.** Written with "
            "`--allow-rule-breaks`. The logs record: " + "; ".join(meta["rule_breaks"]) + ".",
            "",
        ]
    if not meta["data"]["official_fineweb"]:
        out += [
            f"> **Proxy data:** trained and scored on {', '.join(meta['data']['data'])}, not the official FineWeb "
            "shards; not comparable with FineWeb records"
            + (f" ({meta['significance_skipped']})." if meta.get("significance_skipped") else "."),
            "",
        ]
    if label:
        out += [
            f'> **{label}.** Every number below is from runs labelled "{label}"; '
            "it is not a record claim on the official setting.",
            "",
        ]
    out += [
        meta["blurb"],
        "",
        f"## Result{tag}",
        "",
        "| | |",
        "|---|---|",
        f"| val_bpb, mean of {len(logs)} seeds | **{fmt(meta['val_bpb'], 8)}** (std {fmt(meta['val_bpb_std'], 8)}) |",
        f"| val_loss (nats/token), mean | {fmt(meta['val_loss'], 8)} (std {fmt(meta['val_loss_std'], 8)}) |",
        f"| scored eval path | `{meta['eval_path']}`, on the artifact read back from disk |",
        f"| pre-export val_bpb ({pre_path or 'n/a'}), mean | {fmt(meta.get('pre_quant_val_bpb'), 8)} |",
        f"| artifact bytes, max | {meta['artifact_bytes_max']:,} |",
        f"| code bytes (train_gpt.py) | {meta['bytes_code']:,} |",
        f"| total bytes, max | {meta['bytes_total']:,} (margin {SIZE_CAP - meta['bytes_total']:,} "
        f"under {SIZE_CAP:,}) |",
        f"| ms/step, mean | {statistics.fmean(l['step_avg_ms'] for l in logs):.1f} |",
        f"| train seconds incl. calibration, max | {max(l['train_seconds'] for l in logs):.1f} |",
        f"| eval seconds, max | {max(l['eval_seconds'] for l in logs):.1f} |",
        "",
        f"## Per seed{tag}",
        "",
        f"| seed | val_bpb | val_loss | pre-export val_bpb ({pre_path or 'n/a'}) | steps | ms/step | train s | eval s "
        "| artifact bytes | total bytes | log |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for l in logs:
        pre = l["pre_export"].get("val", {}).get("val_bpb")
        out.append(
            f"| {l['seed']} | {fmt(l['val_bpb'])} | {fmt(l['val_loss'])} | {fmt(pre)} | {l['steps']} | "
            f"{l['step_avg_ms']:.1f} | {l['train_seconds']:.1f} | {l['eval_seconds']:.1f} | "
            f"{l['artifact_bytes']:,} | {l['total_bytes']:,} | [{log_name(l)}]({log_name(l)}) |"
        )
    out += [
        f"| mean | {fmt(meta['val_bpb'], 8)} | {fmt(meta['val_loss'], 8)} | | | | | | | | |",
        f"| std | {fmt(meta['val_bpb_std'], 8)} | {fmt(meta['val_loss_std'], 8)} | | | | | | | | |",
        "",
        "std is the sample standard deviation (n-1).",
        "",
    ]
    if "significance" in meta:
        s = meta["significance"]
        verdict = "**yes**" if s["meets_record_bar"] else "**no**"
        out += [
            f"## Significance{tag}",
            "",
            f"Reference: {s['reference']}: val_bpb {', '.join(fmt(x) for x in s['reference_val_bpb'])} "
            f"(mean {fmt(s['reference_mean_val_bpb'], 8)}).",
            "",
            "| | |",
            "|---|---|",
            f"| delta val_bpb (ours - reference) | {s['delta_bpb']:+.8f} |",
            f"| delta nats/token | {s['delta_nats']:+.8f} (at {s['bytes_per_token']:.4f} bytes/token) |",
            f"| p, improvement > {s['threshold_nats']} nats ({s['test']}) "
            f"| {fmt(s['p_nats_improvement_over_threshold'], 6)} |",
            f"| p, any improvement in bpb | {fmt(s['p_bpb_improvement'], 6)} |",
            f"| beats the reference by >= {s['threshold_nats']} nats with p < {s['alpha']} | {verdict} |",
            "",
            "The reference's nats are its val_bpb at this run's bytes per token (val_loss = val_bpb x ln 2 x "
            "bytes / tokens), so references on another tokenizer compare fairly.",
            "",
        ]
    keys = [k for k in KEY_HPARAMS if k in h]
    out += [
        "## Configuration",
        "",
        f"train_gpt.py preset `{h['preset']}`; hardware {meta['hardware']}; torch {meta['pytorch_version']}; "
        f"python {' / '.join(sorted({l['env']['python'] for l in logs if l['env']})) or 'unknown'}"
        + (f"; {logs[0]['params']:,} parameters" if logs[0]["params"] else "")
        + ".",
        "",
        "| hyperparameter | value |",
        "|---|---|",
    ] + [f"| {k} | `{h[k]}` |" for k in keys]
    out += [
        "",
        "Every resolved hyperparameter is in the `hyperparameters:` line of each log.",
        "",
        "## Techniques",
        "",
        meta["technique_summary"],
        "",
        "## Reproduce",
        "",
        "From this folder, with the data and tokenizer the paths below name:",
        "",
        "```bash",
        "pip install -r requirements.txt",
        command,
        "```",
        "",
        "Check the folder (files, scores, sizes, time limits, byte-identical code):",
        "",
        "```bash",
        f"python -m submissions.check {Path(args.out) / folder_name(meta['date'], args.name)}",
        "```",
        "",
        "## Files",
        "",
        f"- `train_gpt.py`: {logs[0]['code_bytes']:,} bytes, sha256 `{logs[0]['code_sha256']}`, byte-identical "
        "to the source embedded at the top of every log.",
        "- " + ", ".join(f"`{log_name(l)}`" for l in logs) + ": the logs, as written by train_gpt.py.",
        "- `requirements.txt`: " + ", ".join(l for l in requirements.splitlines() if not l.startswith("#")) + ".",
        "- `loss_curves.png`: train loss (and val loss where logged) against elapsed training time, per seed.",
        "- `submission.json`: the numbers above.",
        "",
        "Generated by `python -m submissions.make` from the logs; no number here was typed by hand.",
        "",
    ]
    return "\n".join(out)


def plot(logs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for log in logs:
        color = None
        if log["train_curve"]:
            color = ax.plot(*zip(*log["train_curve"]), label=f"seed {log['seed']} train")[0].get_color()
        if log["val_curve"]:
            t, loss, _ = zip(*log["val_curve"])
            ax.plot(t, loss, "o--", color=color, label=f"seed {log['seed']} val")
    ax.set(xlabel="elapsed training seconds", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def folder_name(date: str, name: str) -> str:
    return f"{date}_{name}"


def make(args: argparse.Namespace) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise SubmissionError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    date = args.date or datetime.date.today().isoformat()
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise SubmissionError(f"--date {date!r}: expected YYYY-MM-DD")
    logs = load_logs(args.logs, args.score_path)
    breaks = rule_breaks(logs)
    if breaks and not args.allow_rule_breaks:
        raise SubmissionError(
            "the logs record a broken rule (" + "; ".join(breaks) + "); check-submission rejects such a folder. "
            "Pass --allow-rule-breaks to write it anyway, marked as breaking the rules"
        )
    data = data_of(logs)
    if not data["official_fineweb"] and "proxy" not in args.label.lower():
        args.label = f"proxy ({', '.join(data['data'])}, not FineWeb)" + (f"; {args.label}" if args.label else "")
    ref = load_reference(args.reference, args.reference_bpb)
    shas = check_artifacts(logs, Path(args.artifacts)) if args.artifacts else {}
    sig = (comparable(data, ref) or significance(logs, ref)) if ref else None
    folder = Path(args.out) / folder_name(date, args.name)
    if folder.exists():
        if not args.force:
            raise SubmissionError(f"{folder} exists; pass --force to replace it")
        if not (folder / "submission.json").is_file():
            raise SubmissionError(f"{folder} exists and is not a submission folder; not replacing it")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "train_gpt.py").write_bytes(logs[0]["source"].encode("utf-8"))
    for log in logs:
        shutil.copyfile(log["path"], folder / log_name(log))
    requirements = requirements_txt(logs[0]["source"], logs)
    (folder / "requirements.txt").write_text(requirements, encoding="utf-8")
    meta = submission_json(args, logs, date, sig, shas)
    (folder / "submission.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    title = args.name + (f" [{args.label}]" if args.label else "")
    plot(logs, folder / "loss_curves.png", title)
    command = reproduce_command(logs, preset_defaults(folder / "train_gpt.py", logs[0]["preset"]))
    (folder / "README.md").write_text(readme(meta, logs, args, command, requirements), encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m submissions.make", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="submission name; the folder is <out>/<date>_<name>")
    p.add_argument("--logs", nargs="+", required=True, help="train_gpt.py logs, one per seed")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", help="submission folder to compare against (ours or official layout)")
    ref.add_argument("--reference-bpb", help="the reference's per-seed val_bpb, comma-separated")
    p.add_argument("--score-path", help="eval path that is the score (default: each log's last final eval)")
    p.add_argument("--artifacts", help="folder with <RUN_ID>.pgq: check sizes, decode, record sha256")
    p.add_argument("--out", default="submissions", help="parent folder (default: submissions)")
    p.add_argument("--author", default="", help="submission.json author")
    p.add_argument("--github-id", default="", help="submission.json github_id")
    p.add_argument("--label", default="", help='e.g. "proxy (not FineWeb, 1xH100)": shown everywhere')
    p.add_argument(
        "--track",
        default=TRACKS[0],
        choices=TRACKS,
        help="non_record_16mb for a new idea that does not beat the record (it still fits 16 MB)",
    )
    p.add_argument("--blurb", default="", help="one-paragraph description (default: generated)")
    p.add_argument("--date", default="", help="YYYY-MM-DD (default: today)")
    p.add_argument("--force", action="store_true", help="replace an existing folder of the same date and name")
    p.add_argument(
        "--allow-rule-breaks",
        action="store_true",
        help="write a folder even from logs that broke the train clock, eval clock or size cap (marked so)",
    )
    args = p.parse_args(argv)
    try:
        folder = make(args)
    except (SubmissionError, LogError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = json.loads((folder / "submission.json").read_text(encoding="utf-8"))
    print(
        f"wrote {folder}: val_bpb {meta['val_bpb']:.8f} (std {fmt(meta['val_bpb_std'], 8)}, "
        f"{len(meta['seeds'])} seed(s)), total bytes max {meta['bytes_total']:,}"
    )
    if meta.get("rule_breaks"):
        print("warning: written with --allow-rule-breaks; the logs record: " + "; ".join(meta["rule_breaks"]))
    if meta.get("significance_skipped"):
        print(f"note: no significance test: {meta['significance_skipped']}")
    if "significance" in meta:
        s = meta["significance"]
        print(
            f"vs {s['reference']}: delta {s['delta_nats']:+.6f} nats, p {fmt(s['p_nats_improvement_over_threshold'])}, "
            f"record bar {'met' if s['meets_record_bar'] else 'not met'}"
        )
    if not (args.author and args.github_id):
        print("note: --author/--github-id not given; fill them in before opening a PR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
