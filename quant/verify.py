"""Verify an artifact in a fresh process: the checks to run before trusting a logged score.

    python -m quant.verify ARTIFACT --code train_gpt.py [--log LOG] [--val GLOB --tokenizer MODEL]
        [--expect-bpb X] [--path sliding|plain|ttt|ngram] [--device cpu|cuda] [--cap BYTES] [--tol X]
        [--preset NAME] [--set KEY=VALUE ...]   (the last two only without --log)

size     code bytes (the --code file exactly as shipped) + artifact bytes <= 16,000,000, with the margin;
         with --log also: the artifact has the size the run logged
code     (--log) --code equals the source the log starts with and its `code:` line (sha256, bytes): the
         shipped code is the code that ran, and the only file it ran (a run that loaded a plug-in such as
         seed_archs.py or ngram_mix.py from a separate file fails: ship the packed copy that bundles it,
         `make pack ARCH=... EVAL_PATHS=...`)
decode   train_gpt.decode_artifact + dequantize_state (a truncated or corrupt artifact stops here)
rebuild  train_gpt.load_artifact rebuilds the model from the artifact's meta with the code's own classes, and
         needs no file beside --code that the size check did not count
eval     train_gpt.run_evals scores the val set with one eval path on this machine
match    val_bpb equals --expect-bpb or the log's final `eval val <path>` val_bpb within --tol (1e-6)

The model code is the --code file itself, loaded as the module `train_gpt`, so a packed copy
(quant.pack) is verified as what ships. With --log every run setting (eval_seq_len, eval_stride,
eval_cross_doc, eval_batch_seqs, TTT and n-gram knobs, data paths) is the logged one; without it, the
train_gpt defaults of the preset closest to the artifact's architecture, overridable with --set.
Exit 0: no FAIL; 1: a FAIL (one `error:` line on stderr); 2: bad arguments (argparse); 3: no FAIL, but
the score differs and the log ran on another device, world size or torch, where the tolerance does not
apply (WARN: reported, not judged).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass
from types import ModuleType

import torch

from quant.pack import unpack
from submissions.logs import LogError, read_log

CAP = 16_000_000  # the challenge's limit in decimal bytes, not the run's SIZE_CAP knob
LAYOUT = ("rank", "world_size", "local_rank")  # torchrun's process layout: this process is rank 0 of 1
CHECKS = ("size", "code", "decode", "rebuild", "eval", "match")
Row = tuple[str, str]  # (status, detail)


class Fatal(Exception):
    """A failed check that leaves nothing for the checks after it."""

    def __init__(self, check: str, msg: str):
        super().__init__(msg)
        self.check = check


@dataclass
class RunLog:
    sources: list[dict]  # the files the run executed, as submissions.logs reads them (name, source, bytes, sha256)
    code_line: bool  # logs of older train_gpt.py versions have no `code:` line
    setup: str  # where the run's final eval ran, as `here_setup` spells it
    hparams: dict
    artifact_bytes: int | None  # None: the run died before export
    finals: dict[str, dict]  # eval path -> final (post-export) val numbers, in log order


def parse_log(path: str) -> RunLog:
    try:
        log = read_log(path)
    except LogError as e:
        raise Fatal("code", f"log {e}") from None
    if log["runs"] > 1:
        raise Fatal("code", f"log {path}: holds {log['runs']} runs (RUN_ID reused; train_gpt.py appends)")
    if log["env"] is None or log["hyperparameters"] is None:
        raise Fatal("code", f"log {path}: no `env:` or `hyperparameters:` line: not a train_gpt.py log")
    env = log["env"]
    finals = {
        k.split("/", 1)[1]: dict(bpb=e["val_bpb"], tokens=e["tokens"], bytes=e["bytes"])
        for k, e in log["evals"].items()
        if k.startswith("val/") and "/pre_" not in k
    }
    setup = f"{env['gpus'][0] if env['gpus'] else 'cpu'} x{env['world_size']} torch {env['torch']}"
    art = log["artifact"]["bytes"] if log["artifact"] else None
    return RunLog(log["sources"], log["code_line"], setup, log["hyperparameters"], art, finals)


def read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Fatal("size", f"{what} {path}: cannot read ({e.strerror})") from None


def check_size(code: int, artifact: int, cap: int, log: RunLog | None) -> Row:
    total = code + artifact
    detail = f"code {code:,} + artifact {artifact:,} = {total:,} bytes, cap {cap:,}, margin {cap - total:+,}"
    if total > cap:
        return "FAIL", detail + f": over the cap by {total - cap:,} bytes"
    if log and log.artifact_bytes is not None and log.artifact_bytes != artifact:
        return "FAIL", f"artifact is {artifact:,} bytes, the logged run wrote {log.artifact_bytes:,}: another artifact"
    return "PASS", detail


def check_code(code: bytes, log: RunLog) -> Row:
    """The log proves its code twice: the source it starts with and (newer logs) the `code:` line."""
    sha, main = hashlib.sha256(code).hexdigest(), log.sources[0]
    if (sha, len(code)) != (main["sha256"], main["bytes"]) or code != main["source"].encode("utf-8"):
        packed = unpack(main["source"]) is not None  # the run executed a `make pack` copy
        hint = (
            f"; the run executed a packed copy ({main['bytes']:,} bytes): pass that file, --code packed/train_gpt.py "
            "(make verify-artifact ... CODE=packed/train_gpt.py)"
            if packed
            else "; the run executed an unpacked source: pass the train_gpt.py it ran"
            if unpack(code.decode("utf-8", errors="replace")) is not None
            else ""
        )
        return (
            "FAIL",
            f"--code is sha256 {sha[:12]}.. ({len(code):,} bytes), the run's code was "
            f"{main['sha256'][:12]}..: not the code that ran{hint}",
        )
    if len(log.sources) > 1:
        others = ", ".join(f"{s['name']} ({s['bytes']:,} bytes)" for s in log.sources[1:])
        return (
            "FAIL",
            f"the run also executed {others} from beside the script: its bytes count and a "
            f"submission is one file; run and ship the packed copy that bundles it (make pack ARCH=... EVAL_PATHS=...)",
        )
    return "PASS", f"sha256 {sha[:12]}.. ({len(code):,} bytes) equals the log's source" + (
        " and code: line" if log.code_line else " (this log has no code: line)"
    )


def import_code(path: str) -> ModuleType:
    """Load --code as the module `train_gpt` (registered first: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("train_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_gpt"] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # any failure here means the shipped code cannot even be imported
        raise Fatal("code", f"--code {path} does not import: {type(e).__name__}: {e}") from None
    return mod


def check_decode(tg: ModuleType, buf: bytes) -> tuple[Row, dict]:
    try:
        qstate, meta = tg.decode_artifact(buf)
        tg.dequantize_state(qstate)
        missing = sorted(set(tg.MODEL_KEYS) - set(meta["hyperparameters"]))
    except tg.ArtifactError as e:
        raise Fatal("decode", str(e)) from None
    except Exception as e:  # a header that passed the CRC but is not what this code writes
        raise Fatal("decode", f"artifact does not decode: {type(e).__name__}: {e}") from None
    codec = next(c for c, i in tg.CODECS.items() if i == buf[len(tg.MAGIC) + 1])  # prefix: magic, version, codec id
    n_q = sum("q" in e for e in qstate.values())
    n_lq = sum("lqer" in e for e in qstate.values())
    # load_artifact lets the settings fill model keys the meta lacks (an artifact of an older version)
    note = f"; meta lacks {missing[:4]}: the settings' values apply" if missing else ""
    return ("PASS", f"{codec}: {len(qstate)} tensors ({n_q} quantized, {n_lq} with LQER) dequantized{note}"), meta


def closest_preset(tg: ModuleType, model: dict) -> str:
    """The preset whose model settings agree with the artifact's on the most keys (meta names no preset)."""
    agree = {
        p: sum(
            getattr(tg.Hyperparameters({"PRESET": p, "ARCH": model.get("arch", "gpt")}), k, None) == v
            for k, v in model.items()
        )
        for p in tg.PRESETS
    }
    return max(agree, key=agree.get)


def settings(tg: ModuleType, args: argparse.Namespace, meta: dict, log: RunLog | None):
    """The Hyperparameters to rebuild and score with (built by the code's own constructor; a check never writes
    PER_TOKEN_OUT), and where they came from."""
    over = {"PER_TOKEN_OUT": "", **({"TOKENIZER_PATH": args.tokenizer} if args.tokenizer else {})}
    try:
        arch = (log.hparams if log else meta["hyperparameters"]).get("arch", "gpt")
        known = set(tg.DEFAULTS) | set(tg.block_class(arch).knobs)  # the seed architecture's knobs too
        if log:  # through the constructor, so types are the code's; then every logged value must come back
            env = {k.upper(): str(v) for k, v in log.hparams.items() if k.upper() in known}
            drift = sorted(
                k for k, v in log.hparams.items() if k not in LAYOUT and getattr(tg.Hyperparameters(env), k, None) != v
            )
            if drift:
                raise Fatal(
                    "rebuild", f"logged settings do not round-trip through this code's Hyperparameters: {drift[:4]}"
                )
            source = "the log's"
        else:
            unknown = [k for k, _ in args.set if k not in known]
            if unknown:  # Hyperparameters reads known keys only: a typo would change nothing, silently
                raise Fatal("rebuild", f"--set {unknown[0]}: not a train_gpt.py setting")
            # the meta names no preset (yet): --preset, else the one closest to the artifact's model
            preset = args.preset or meta.get("preset") or closest_preset(tg, meta["hyperparameters"])
            env = {"PRESET": preset, "ARCH": arch, **dict(args.set)}
            source = f"PRESET={preset} defaults" + "".join(f" {k}={v}" for k, v in args.set)
        return tg.Hyperparameters(env | over), source
    except (ValueError, FileNotFoundError) as e:
        raise Fatal("rebuild", str(e)) from None


def describe(h, path: str) -> str:
    keys = ["eval_seq_len", "eval_stride", "eval_cross_doc", "eval_batch_seqs", "val_files"]
    keys += {
        "ttt": [
            "ttt_lora",
            "ttt_global",
            "ttt_chunk",
            "ttt_docs",
            "ttt_rank",
            "ttt_alpha",
            "ttt_targets",
            "ttt_lr",
            "ttt_phases",
            "ttt_epochs",
            "ttt_sgd_lr",
        ],
        "ngram": ["ngram_order", "ngram_alpha", "ngram_chunk"],
    }.get(path, [])
    return " ".join(f"{k} {getattr(h, k)}" for k in keys)


def rebuild(tg: ModuleType, args: argparse.Namespace, meta: dict, log: RunLog | None, device: torch.device) -> tuple:
    h, source = settings(tg, args, meta, log)
    torch.manual_seed(h.seed)  # as train_gpt.main(); the eval paths draw from seeded generators of their own
    if device.type == "cuda":  # as train_gpt.main()
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        model, hm = tg.load_artifact(args.artifact, h, device)
    except (tg.ArtifactError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise Fatal("rebuild", " ".join(str(e).split())) from None
    if hm.compile and device.type == "cuda":  # as train_gpt.main(): the compiled graphs are the scored ones
        model.compile_parts()
    detail = (
        f"GPT {sum(p.numel() for p in model.parameters()):,} params, attention {model.attn_impl}, "
        f"layer order {model.orders[True]}; {source} settings: {describe(hm, args.path)}"
    )
    if tg.PLUGIN_FILES:  # imported from beside --code: bytes the size check did not count
        files = ", ".join(f"{os.path.basename(f)} ({os.path.getsize(f):,} bytes)" for f in tg.PLUGIN_FILES)
        why = f"the model needs {files} from beside --code, uncounted by the size check"
        return model, hm, ("FAIL", f"{why}: verify the packed copy that bundles it (make pack ARCH={hm.arch})")
    if log:
        model_keys = meta["hyperparameters"].items()
        other = [f"{k} {v} vs {log.hparams.get(k)}" for k, v in model_keys if log.hparams.get(k) != v]
        if other:
            return model, hm, ("FAIL", f"artifact's model differs from the logged run's: {', '.join(other[:4])}")
    return model, hm, ("PASS", detail)


def evaluate(tg: ModuleType, model, h, path: str, device: torch.device, val: str | None) -> tuple[dict, Row]:
    try:  # the same inputs train_gpt.main() builds for its final eval (--val: another glob)
        luts = tg.tokenizer_luts(h, val or h.val_files)  # refuses a val set another tokenizer made
        tokens = tg.load_val(val or h.val_files, h.vocab_size)
        side = tg.load_sidecar(val or h.val_files) if hasattr(tg, "load_sidecar") else None  # CaseOps: original bytes
        luts = luts if side is None else side
    except (OSError, ValueError, RuntimeError) as e:  # ShardError is a ValueError
        raise Fatal("eval", f"{' '.join(str(e).split())} (pass --val GLOB --tokenizer MODEL)") from None
    echo = lambda msg, console=True: print(msg, flush=True)  # run_evals logs through a train_gpt.Logger
    try:
        results = tg.run_evals(model, h, {"val": tokens}, luts, device, echo, [path])
    except Exception as e:  # a crash inside an eval path is that check's FAIL, reported in one line
        raise Fatal("eval", f"{path} raised {type(e).__name__}: {' '.join(str(e).split())}") from None
    r = results[f"val/{path}"]
    detail = (
        f"{path} on {device.type}: val_loss {r['loss']:.6f} val_bpb {r['bpb']:.8f} tokens {r['tokens']} "
        f"bytes {r['bytes']} in {r['seconds']:.1f}s"
    )
    return r, ("PASS" if math.isfinite(r["bpb"]) else "FAIL", detail)


def here_setup(device: torch.device) -> str:
    return f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} x1 torch {torch.__version__}"


def compare(r: dict, args: argparse.Namespace, log: RunLog | None, here: str) -> Row:
    final = log.finals.get(args.path) if log else None
    if final and (r["tokens"], r["bytes"]) != (final["tokens"], final["bytes"]):
        return (
            "FAIL",
            f"scored {r['tokens']} tokens / {r['bytes']} bytes, the log {final['tokens']} / "
            f"{final['bytes']}: another val set",
        )
    ref, src = (
        (args.expect_bpb, "--expect-bpb")
        if args.expect_bpb is not None
        else (final and final["bpb"], f"log's final eval val {args.path}")
    )
    if ref is None:
        return "SKIP", f"nothing to compare with: no final `eval val {args.path}` line in a log, no --expect-bpb"
    diff = r["bpb"] - ref
    detail = f"val_bpb {r['bpb']:.8f} vs {ref} ({src}), diff {diff:+.2e}, tol {args.tol:g}"
    other = log is not None and log.setup != here  # another device, world size or torch: other kernels
    if other:
        detail += f"; the tolerance assumes the run's setup: log {log.setup}, here {here}"
    if abs(diff) <= args.tol:
        return "PASS", detail
    return ("WARN" if other else "FAIL"), detail


def pick_device(name: str | None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise Fatal("rebuild", "--device cuda: no CUDA device visible")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def verify(args: argparse.Namespace, rows: dict[str, Row]) -> None:
    """Fill `rows` check by check; a Fatal stops the rest (main marks them not reached)."""
    log = parse_log(args.log) if args.log else None
    code, buf = read_bytes(args.code, "--code"), read_bytes(args.artifact, "artifact")
    rows["size"] = check_size(len(code), len(buf), args.cap, log)
    rows["code"] = check_code(code, log) if log else ("SKIP", "no --log: nothing to compare the code with")
    tg = import_code(args.code)
    rows["decode"], meta = check_decode(tg, buf)
    args.path = args.path or (list(log.finals)[-1] if log and log.finals else "sliding")
    device = pick_device(args.device)
    model, h, rows["rebuild"] = rebuild(tg, args, meta, log, device)
    r, rows["eval"] = evaluate(tg, model, h, args.path, device, args.val)
    rows["match"] = compare(r, args, log, here_setup(device))


def print_table(rows: dict[str, Row]) -> None:
    print(f"{'check':<8} {'status':<6} detail")
    for check in CHECKS:
        status, detail = rows.get(check, ("SKIP", "not reached: an earlier check failed"))
        print(f"{check:<8} {status:<6} {detail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m quant.verify", description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--code", required=True, help="the train_gpt.py that ships (its bytes count)")
    ap.add_argument("--log", help="the run's logs/<RUN_ID>.txt: its code sha, settings and final score")
    ap.add_argument("--val", help="val shard glob (default: the logged DATA_PATH's fineweb_val_*.bin)")
    ap.add_argument("--tokenizer", help="sentencepiece model (default: the logged TOKENIZER_PATH)")
    ap.add_argument("--expect-bpb", type=float, help="reference val_bpb (default: the log's final line)")
    ap.add_argument(
        "--path", choices=("sliding", "plain", "ttt", "ngram"), help="default: the log's last final path, else sliding"
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible")
    ap.add_argument("--cap", type=int, default=CAP, help=f"size cap in bytes (default {CAP:,})")
    ap.add_argument("--tol", type=float, default=1e-6, help="allowed |val_bpb difference| (default 1e-6)")
    ap.add_argument("--preset", help="without --log: whose defaults to use (default: closest to the artifact's model)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=lambda s: tuple(s.split("=", 1)),
        help="without --log: a Hyperparameters override, e.g. EVAL_STRIDE=64 (repeatable)",
    )
    args = ap.parse_args(argv)
    if any(len(kv) != 2 for kv in args.set):
        ap.error("--set takes KEY=VALUE")
    if args.log and (args.set or args.preset):
        ap.error("--set/--preset change the logged settings: drop --log to score with other settings")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"verify {args.artifact} with {args.code}" + (f" against {args.log}" if args.log else ""), flush=True)
    rows: dict[str, Row] = {}
    t0 = time.perf_counter()
    try:
        verify(args, rows)
    except Fatal as e:
        rows[e.check] = ("FAIL", " ".join(str(e).split()))
    print_table(rows)
    print(f"({time.perf_counter() - t0:.1f}s)")
    failed = [f"{c}: {d}" for c, (s, d) in rows.items() if s == "FAIL"]
    if failed:
        print("error: " + "; ".join(failed), file=sys.stderr)
        return 1
    if any(s == "WARN" for s, _ in rows.values()):
        print("warning: the score differs and the log ran on another setup: verify there to judge it", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
