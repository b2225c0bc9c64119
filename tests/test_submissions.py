"""submissions/: a folder made from two real tiny CPU runs of train_gpt.py checks PASS; tampered copies
FAIL with the reason named; official-layout folders get SKIPs, not crashes; the Welch test is right."""

import ast
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from scipy import stats

import train_gpt as tg
from submissions import check, make
from submissions.logs import LogError, parse_log

ROOT = Path(__file__).resolve().parents[1]
# tests/test_train.py's TINY config, with one eval pass (stride = window) and a real wallclock cap
TINY = dict(
    PRESET="tiny",
    MODEL_DIM="32",
    NUM_HEADS="4",
    NUM_KV_HEADS="2",
    NUM_LAYERS="4",
    ROPE_DIMS="4",
    RECUR_START="1",
    RECUR_END="2",
    RECUR_EXTRA="1",
    PARALLEL_FROM="2",
    TRAIN_SEQ_LEN="64",
    TRAIN_BATCH_TOKENS="1024",
    MICRO_BATCH_TOKENS="1024",
    EVAL_SEQ_LEN="64",
    EVAL_STRIDE="64",
    EVAL_BATCH_SEQS="16",
    MAX_WALLCLOCK_SECONDS="600",
    GPTQ_RESERVE_SECONDS="0",
    TRAIN_LOG_EVERY="1",
    ATTN_GATE_DIMS="8",
    DEV_VAL_FILES="",
    ITERATIONS="4",
)


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(tg.HEADER_INTS, dtype="<i4")
    header[:3] = tg.SHARD_MAGIC, tg.SHARD_VERSION, len(tokens)
    path.write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared) -> Path:
    """Seeds 1 and 2 of train_gpt.py, run as subprocesses in a tmp cwd (logs/, artifacts/ land there) on
    200 real FineWeb train-pool docs and 8 dev docs. Both run one frozen copy of the script, so edits
    made to the repo's train_gpt.py meanwhile cannot give the two logs different sources."""
    out = tmp_path_factory.mktemp("runs")
    sp = spm.SentencePieceProcessor(model_file=str(shared / "data/tokenizers/fineweb_1024_bpe.model"))
    docs = [json.loads(line)["text"] for line in open(shared / "data/fineweb_dev/fineweb_train_docs.jsonl")]
    (out / "data").mkdir()
    write_shard(out / "data/fineweb_train_000000.bin", np.concatenate([[tg.BOS_ID] + sp.encode(d) for d in docs]))
    val = np.asarray(tg.load_shard(str(shared / "data/fineweb_dev/fineweb_val_sp1024.bin")))
    write_shard(out / "data/fineweb_val_000000.bin", val[: np.flatnonzero(val == tg.BOS_ID)[8]])
    shutil.copyfile(ROOT / "train_gpt.py", out / "train_gpt.py")
    env = {
        **os.environ,
        **TINY,
        "DATA_PATH": "data",
        "OMP_NUM_THREADS": "1",
        "TOKENIZER_PATH": str(shared / "data/tokenizers/fineweb_1024_bpe.model"),
    }
    pre = {"1": "plain", "2": ""}  # seed 2 skips the pre-export evals (a local knob: the logs still match)
    procs = [
        subprocess.Popen(
            [sys.executable, "train_gpt.py"],
            cwd=out,
            stdout=subprocess.DEVNULL,
            env={**env, "SEED": s, "RUN_ID": f"seed{s}", "PRE_EXPORT_PATHS": pre[s]},
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in ("1", "2")
    ]
    for p in procs:  # in parallel: each is one thread, mostly waiting on Python
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def folder(runs, run_cli) -> Path:
    r = run_cli(
        "submissions.make",
        "--name",
        "tiny-two-seeds",
        "--logs",
        runs / "logs/seed1.txt",
        runs / "logs/seed2.txt",
        "--out",
        runs / "submissions",
        "--artifacts",
        runs / "artifacts",
        "--reference-bpb",
        "4.1,4.2,4.15",
        "--author",
        "Test",
        "--github-id",
        "test",
        "--label",
        "proxy (tiny CPU, not FineWeb)",
        "--date",
        "2026-01-02",
    )
    assert r.returncode == 0, r.stderr
    return runs / "submissions/2026-01-02_tiny-two-seeds"


def status(rows: list, name: str) -> tuple[str, str]:
    return next((s, why) for n, s, why in rows if n == name)


def test_make_writes_numbers_from_the_logs(runs, folder, run_cli):
    logs = [parse_log(runs / f"logs/seed{s}.txt") for s in (1, 2)]
    assert (folder / "train_gpt.py").read_bytes() == (runs / "train_gpt.py").read_bytes()
    for log in logs:
        assert (folder / f"train_seed{log['seed']}.txt").read_bytes() == Path(log["path"]).read_bytes()
    meta = json.loads((folder / "submission.json").read_text())
    assert meta["seeds"] == [1, 2] and meta["val_bpb"] == pytest.approx(np.mean([l["val_bpb"] for l in logs]), abs=1e-8)
    assert meta["val_bpb_std"] == pytest.approx(float(np.std([l["val_bpb"] for l in logs], ddof=1)), abs=1e-8)
    for log in logs:
        r = meta["seed_results"][str(log["seed"])]
        assert (r["val_bpb"], r["val_loss"], r["artifact_bytes"], r["steps"]) == (
            log["val_bpb"],
            log["val_loss"],
            log["artifact_bytes"],
            log["steps"],
        )
        assert (
            r["artifact_sha256"] == hashlib.sha256((runs / f"artifacts/seed{log['seed']}.pgq").read_bytes()).hexdigest()
        )
    assert meta["bytes_code"] == (runs / "train_gpt.py").stat().st_size
    assert meta["bytes_total"] == max(l["total_bytes"] for l in logs) and meta["track"] == "10min_16mb"
    assert [("val" in l["pre_export"]) for l in logs] == [True, False] and "pre_quant_val_bpb" not in meta
    assert meta["significance"]["delta_bpb"] == pytest.approx(meta["val_bpb"] - 4.15, abs=1e-7)
    reqs = [l for l in (folder / "requirements.txt").read_text().splitlines() if not l.startswith("#")]
    assert reqs[:3] == ["numpy", "sentencepiece", f"torch=={logs[0]['env']['torch'].split('+')[0]}"]
    assert {"brotli", "zstandard"} <= set(reqs)
    assert (folder / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (folder / "README.md").read_text()
    label = "proxy (tiny CPU, not FineWeb)"
    assert readme.count(label) >= 4 and label in meta["name"] and meta["label"] == label
    assert f"| 1 | {logs[0]['val_bpb']:.6f} |" in readme and "for SEED in 1 2; do" in readme
    r = run_cli("submissions.check", folder, "--artifacts", runs / "artifacts")
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1].startswith("PASS") and " FAIL " not in r.stdout


def test_make_non_record_track(runs, tmp_path, run_cli):
    r = run_cli(
        "submissions.make",
        "--name",
        "idea",
        "--logs",
        runs / "logs/seed1.txt",
        "--out",
        tmp_path,
        "--track",
        "non_record_16mb",
        "--date",
        "2026-01-03",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "2026-01-03_idea/submission.json").read_text())["track"] == "non_record_16mb"
    assert make.techniques(
        {**parse_log(runs / "logs/seed1.txt")["hyperparameters"], "arch": "scan", "scan_chunk": 64},
        dict(codec="", eval_path="sliding"),
    ).startswith("ARCH=scan (chunks of 64")
    r = run_cli(
        "submissions.make",
        "--name",
        "idea",
        "--logs",
        runs / "logs/seed1.txt",
        "--out",
        tmp_path,
        "--track",
        "record_16mb",
    )
    assert r.returncode != 0 and "invalid choice" in r.stderr


def edited_log(runs: Path, tmp_path: Path, *subs: tuple[str, str]) -> Path:
    """seed1's log with regex substitutions in its event lines (its embedded source stays intact)."""
    text = (runs / "logs/seed1.txt").read_text()
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text)
        assert n, pattern
    path = tmp_path / f"edited{len(list(tmp_path.glob('edited*')))}.txt"
    path.write_text(text)
    return path


def test_make_refuses_rule_breaks_unless_told(runs, tmp_path, run_cli, one_line_error):
    """4365752 packaged logs saying `held False` (clock) or `cap_held False` (size) with exit 0, no warning."""
    over_clock = edited_log(
        runs, tmp_path, (r"(compliance train: .*?)total [\d.]+ (.*)held True", r"\1total 612.3 \2held False")
    )
    over_size = edited_log(runs, tmp_path, (r"cap_held True", "cap_held False"))
    for log, needle in ((over_clock, "train 612.3 s incl. calibration"), (over_size, "says cap_held False")):
        args = ("--name", "broken", "--logs", log, "--out", tmp_path / "out", "--date", "2026-01-04")
        one_line_error(run_cli("submissions.make", *args), "the logs record a broken rule", needle)
        assert not (tmp_path / "out").exists()  # nothing written
    args = ("--name", "broken", "--logs", over_clock, "--out", tmp_path / "out", "--date", "2026-01-04")
    r = run_cli("submissions.make", *args, "--allow-rule-breaks")
    assert r.returncode == 0 and "warning: written with --allow-rule-breaks" in r.stdout, r.stderr
    folder = tmp_path / "out/2026-01-04_broken"
    meta = json.loads((folder / "submission.json").read_text())
    assert meta["rule_breaks"] == [
        f"{over_clock.name}: train 612.3 s incl. calibration against a 600 s cap (held False)"
    ]
    assert "This run breaks the challenge rules; it is not a valid submission." in (folder / "README.md").read_text()
    assert status(check.check(folder), "train time")[0] == "FAIL"  # the flag writes it; the check still rejects it


def test_make_marks_proxy_data_and_skips_fineweb_references(runs, tmp_path, run_cli):
    """4365752 labelled a devset/proxy run as the 10-minute track and Welch-tested it against FineWeb records."""
    ref = official_folder(tmp_path / "ref", 15_900_000)  # an official records folder: FineWeb scores
    args = ("--logs", runs / "logs/seed1.txt", runs / "logs/seed2.txt", "--out", tmp_path, "--date", "2026-01-05")
    r = run_cli("submissions.make", "--name", "proxy", *args, "--reference", ref)
    assert r.returncode == 0, r.stderr
    assert "note: no significance test: these runs are on data, the reference on official records" in r.stdout
    folder = tmp_path / "2026-01-05_proxy"
    meta = json.loads((folder / "submission.json").read_text())
    assert meta["data"] == dict(official_fineweb=False, data=["data"]) and "significance" not in meta
    assert meta["label"] == "proxy (data, not FineWeb)" and meta["name"].endswith("[proxy (data, not FineWeb)]")
    assert (
        "> **Proxy data:** trained and scored on data, not the official FineWeb shards"
        in (folder / "README.md").read_text()
    )
    # the same runs as if on the official shards: FineWeb, tested against the FineWeb reference
    fine = [edited_log(runs, tmp_path, (r'"data_path": "data"', '"data_path": "/d/fineweb10B_sp1024"'))]
    r = run_cli("submissions.make", "--name", "fine", "--logs", *fine, "--out", tmp_path, "--reference", ref)
    meta = json.loads(next(tmp_path.glob("*_fine/submission.json")).read_text())
    assert r.returncode == 0 and meta["data"]["official_fineweb"] and "label" not in meta and "significance" in meta


def tampered(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def test_edited_log_score_fails(folder, tmp_path, run_cli):
    copy = tampered(folder, tmp_path)
    log = copy / "train_seed2.txt"
    text = log.read_text()
    line = re.search(r"^eval val sliding: .*$", text, re.M).group(0)
    bpb = re.search(r"val_bpb (\S+)", line).group(1)
    log.write_text(text.replace(line, line.replace(f"val_bpb {bpb}", f"val_bpb {float(bpb) - 0.01:.6f}")))
    s, why = status(check.check(copy), "scores vs logs")
    assert s == "FAIL" and "train_seed2.txt: val_bpb logged" in why and "final eval line inconsistent" in why
    r = run_cli("submissions.check", copy)
    assert r.returncode == 1 and "FAIL: 1 of 11 checks failed (scores vs logs)" in r.stdout


def test_changed_code_fails(folder, tmp_path):
    copy = tampered(folder, tmp_path)
    with open(copy / "train_gpt.py", "a") as f:
        f.write("# one more line\n")
    rows = check.check(copy)
    s, why = status(rows, "code")
    assert s == "FAIL" and "differs from the source embedded in train_seed1.txt" in why
    assert status(rows, "size")[0] == "FAIL"  # the shipped bytes no longer equal the counted ones


def test_over_budget_artifact_fails(folder, tmp_path):
    """The checker trusts the log's artifact line for the model's bytes (the artifact is not shipped):
    a log whose export came out 1 byte over the cap fails, even with submission.json agreeing with it."""
    copy = tampered(folder, tmp_path)
    log, meta = copy / "train_seed1.txt", json.loads((copy / "submission.json").read_text())
    code = meta["bytes_code"]
    big = 16_000_001 - code
    text = re.sub(
        r"^artifact: .*$",
        f"artifact: {big} bytes code {code} bytes total 16000001 bytes margin -1 cap_held False",
        log.read_text(),
        flags=re.M,
    )
    log.write_text(text)
    meta["seed_results"]["1"]["artifact_bytes"] = meta["artifact_bytes_max"] = big
    meta["bytes_total"] = 16_000_001
    (copy / "submission.json").write_text(json.dumps(meta))
    s, why = status(check.check(copy), "size")
    assert s == "FAIL" and "= 16,000,001 > 16,000,000" in why and "bytes_total 16,000,001 > 16,000,000" in why
    assert "!=" not in why  # JSON and log agree: only the cap fails


def test_make_refuses_bad_sets(runs, tmp_path, run_cli, one_line_error):
    one = runs / "logs/seed1.txt"
    one_line_error(run_cli("submissions.make", "--name", "x", "--logs", one, one, "--out", tmp_path), "seeds repeat")
    # seed 2 re-written as a run of another script: its source and code: line changed together
    source, rest = parse_log(runs / "logs/seed2.txt")["source"], (runs / "logs/seed2.txt").read_text()
    other = source + "# edited\n"
    raw = other.encode()
    text = other + rest[len(source) :]
    text = re.sub(
        r"^code: .*$",
        f"code: train_gpt.py {len(raw)} bytes sha256 {hashlib.sha256(raw).hexdigest()}",
        text,
        count=1,
        flags=re.M,
    )
    (tmp_path / "other.txt").write_text(text)
    one_line_error(
        run_cli("submissions.make", "--name", "x", "--logs", one, tmp_path / "other.txt", "--out", tmp_path),
        "different train_gpt.py sources",
    )
    one_line_error(
        run_cli("submissions.make", "--name", "x", "--logs", ROOT / "README.md", "--out", tmp_path),
        "not a train_gpt.py log of this toolkit",
    )
    one_line_error(run_cli("submissions.check", tmp_path / "nope"), "not a directory")


def test_score_path_names_the_scored_eval(runs, tmp_path, run_cli, one_line_error):
    """Seed 1 also reports an extra path after its scored one: make refuses the ambiguous set until
    --score-path names the score, and check then reads that path (not the last line) back from the logs."""
    text = (runs / "logs/seed1.txt").read_text()
    line = re.search(r"^eval val sliding: .*$", text, re.M).group(0)
    (tmp_path / "seed1.txt").write_text(
        text.replace(line, line + "\n" + line.replace("sliding", "ngram").replace("val_bpb ", "val_bpb 0"))
    )
    logs = [tmp_path / "seed1.txt", runs / "logs/seed2.txt"]
    one_line_error(
        run_cli("submissions.make", "--name", "x", "--logs", *logs, "--out", tmp_path),
        "different eval paths",
        "seed1.txt=ngram",
        "--score-path",
    )
    r = run_cli(
        "submissions.make",
        "--name",
        "x",
        "--logs",
        *logs,
        "--out",
        tmp_path,
        "--score-path",
        "sliding",
        "--date",
        "2026-01-02",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "2026-01-02_x/submission.json").read_text())
    assert meta["eval_path"] == "sliding"
    assert meta["seed_results"]["1"]["val_bpb"] == parse_log(runs / "logs/seed1.txt")["val_bpb"]
    assert status(check.check(tmp_path / "2026-01-02_x"), "scores vs logs")[0] == "PASS"


def test_packed_code_is_read_through(tmp_path):
    """A packed train_gpt.py (what a submission ships to save code bytes) has the imports of the source
    it carries; the line scan used when this Python cannot parse that source agrees with the AST."""
    from quant.pack import minify, pack, unpack

    src = (ROOT / "train_gpt.py").read_text()
    assert unpack(pack(src)) == minify(src) and unpack(src) is None
    assert (
        make.imports_of(pack(src))
        == make.imports_of(src)
        == make._scan_imports(minify(src))
        == make._scan_imports(ast.unparse(ast.parse(src)))
    )  # the form older packs carry


def test_parse_log_names_what_is_missing(runs, tmp_path):
    text = (runs / "logs/seed1.txt").read_text()
    (tmp_path / "cut.txt").write_text(text[: text.index("\nartifact: ") + 1])
    with pytest.raises(LogError, match="no 'artifact:' line"):
        parse_log(tmp_path / "cut.txt")
    (tmp_path / "twice.txt").write_text(text + text)  # a reused RUN_ID appends a second run
    with pytest.raises(LogError, match="holds 2 runs"):
        parse_log(tmp_path / "twice.txt")
    log = parse_log(runs / "logs/seed1.txt")
    assert log["source_intact"] and log["eval_path"] == "sliding" and "val/pre_plain" in log["evals"]
    assert len(log["train_curve"]) == 4 and log["compliance_train"]["cap"] == 600 and log["compliance_train"]["held"]


def official_folder(tmp_path: Path, bytes_total: int) -> Path:
    """An official-records-layout folder: logs of another script (top level and logs/) in its print format,
    merged-record-style JSON with a mean rounded to 5 decimals and a population std."""
    d = tmp_path / "records/track_10min_16mb/2026-01-01_Other"
    (d / "logs").mkdir(parents=True)
    (d / "README.md").write_text("# other\n")
    (d / "train_gpt.py").write_text("import numpy\nimport torch\n")
    (d / "requirements.txt").write_text("numpy\ntorch\n")
    bpb = [1.10001, 1.10003]
    for path, b, size in (("train_seed7.log", bpb[0], bytes_total - 100), ("logs/train1.txt", bpb[1], bytes_total)):
        (d / path).write_text(
            f"seed:{7 if 'seed7' in path else 1}\nstep:100/20000 val_loss:2.5000 val_bpb:1.4800 train_time:9ms\n"
            f"pre-quantization post-ema val_loss:1.80000000 val_bpb:1.05000000 eval_time:9ms\n"
            f"Total submission size int6+brotli: {size} bytes\nquantized val_loss:1.86000000 val_bpb:{b:.8f}\n"
        )
    (d / "submission.json").write_text(
        json.dumps(
            dict(
                author="a",
                github_id="a",
                name="other",
                date="2026-01-01",
                track="10min_16mb",
                val_bpb=1.10002,
                val_bpb_std=round(float(np.std(bpb)), 5),
                seeds=[7, 1],
                bytes_total=bytes_total,
                seed_results={
                    "7": dict(val_bpb=bpb[0], artifact_bytes=bytes_total - 100, eval_time_s=500.0),
                    "1": dict(val_bpb=bpb[1], artifact_bytes=bytes_total, eval_time_s=510.0),
                },
            ),
            indent=2,
        )
    )
    return d


def test_official_layout_reads_their_logs(tmp_path):
    rows = check.check(official_folder(tmp_path, 15_900_000))
    for name in ("logs", "code", "train time"):
        s, why = status(rows, name)
        assert s == "SKIP" and "not a train_gpt.py log of this toolkit" in why, (name, why)
    for name in ("files", "seeds", "json mean", "size", "eval time", "requirements"):
        assert status(rows, name)[0] == "PASS", status(rows, name)
    s, why = status(rows, "scores vs logs")  # the score lines, not the curve or the pre-quantization line
    assert s == "PASS" and "val_bpb 1.10002 = the mean of 2 seeds' final score" in why, why
    assert status(rows, "json fields")[0] == "WARN"  # e.g. no bytes_code, no steps per seed: not failures
    s, why = status(check.check(official_folder(tmp_path / "over", 16_000_050)), "size")
    assert s == "FAIL" and "bytes_total 16,000,050 > 16,000,000" in why and "train1.txt: logged total" in why
    # a claimed score that is the pre-quantization line of the logs is no final score
    d = official_folder(tmp_path / "pre", 15_900_000)
    meta = json.loads((d / "submission.json").read_text())
    meta.update(val_bpb=1.05, seed_results={k: v | dict(val_bpb=1.05) for k, v in meta["seed_results"].items()})
    (d / "submission.json").write_text(json.dumps(meta))
    s, why = status(check.check(d), "scores vs logs")
    assert s == "FAIL" and "seed_results[7].val_bpb 1.05 is in no final score line of train_seed7.log" in why


RECORDS = ROOT / "tests/data/records"  # cut from openai/parameter-golf by bench/records_check.py --extract
# each folder's verdict and why it is there: the JSON naming variants of merged records, logs in a subfolder,
# claims without all their logs, and one folder whose own logs state a total over the cap
VERDICTS = {
    "2026-03-19_MLP3x_QAT_Int6_SlidingWindow": ("PASS", "run_name; 2 of 3 claimed seeds without a log"),
    "2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit": ("PASS", "mean_val_bpb, no seeds list"),
    "2026-03-19_smeargate_orthoinit_muonwd": ("PASS", "artifact_size_bytes, train_gpt_v5.py, one `seed`"),
    "2026-03-20_10L_Int5MLP_MuonWD04_SWA50": ("PASS", "no val_bpb: its val_loss holds the mean bpb"),
    "2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon": ("PASS", "submission_ternary.json, no size line"),
    "2026-04-06_SP8192_HessianSDClip_ProgressiveRecurrence": ("FAIL", "val_loss mean off 6e-4 (WARN); logs > cap"),
    "2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT": ("PASS", "per-seed values rounded to 5 decimals"),
    "2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE": (
        "PASS",
        "per-seed scores from re-evaluation logs in ttt_pr1767/",
    ),
}


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_official_records_verdicts(name):
    rows = check.check(RECORDS / name)
    verdict = "FAIL" if any(s == "FAIL" for _, s, _ in rows) else "PASS"
    assert verdict == VERDICTS[name][0], (VERDICTS[name][1], [r for r in rows if r[1] != "PASS"])
    if name.startswith("2026-04-06"):  # over the cap by its own logs, and for nothing else
        assert [n for n, s, _ in rows if s == "FAIL"] == ["size"]
        assert "train_seed3141.log: logged total 16,059,704 > 16,000,000" in status(rows, "size")[1]
        assert status(rows, "json mean")[0] == "WARN"


def test_official_record_with_lowered_scores_fails(tmp_path):
    def lowered(meta: dict) -> dict:  # every val_bpb, the headline's and each seed's, 0.05 lower
        seeds = {k: v | dict(val_bpb=round(v["val_bpb"] - 0.05, 8)) for k, v in meta["seed_results"].items()}
        return meta | dict(val_bpb=round(meta["val_bpb"] - 0.05, 8), seed_results=seeds)

    name = "2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT"
    for what in ("all", "headline"):
        d = tmp_path / what / name
        shutil.copytree(RECORDS / name, d)
        meta = json.loads((d / "submission.json").read_text())
        meta = lowered(meta) if what == "all" else meta | dict(val_bpb=round(meta["val_bpb"] - 0.05, 8))
        (d / "submission.json").write_text(json.dumps(meta))
        s, why = status(check.check(d), "scores vs logs")
        assert s == "FAIL", (what, why)
    s, why = status(check.check(tmp_path / "headline" / name), "scores vs logs")
    assert "val_bpb 1.031 is neither a logged final score nor a mean of one per seed" in why, why
    s, why = status(check.check(tmp_path / "all" / name), "scores vs logs")
    assert "seed_results[42].val_bpb 1.03079 is in no final score line of train_seed42.log" in why, why


def test_welch_math_on_fixed_numbers():
    # [1,2,3] vs [4,5,6]: t = -3 / sqrt(1/3 + 1/3) = -3.674235, Welch df = 4, one-sided p = 0.010656
    r = make.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert r["t"] == pytest.approx(-3.674234614) and r["df"] == pytest.approx(4.0)
    assert r["p"] == pytest.approx(0.0106558206, rel=1e-6)
    # unequal variances: the Welch-Satterthwaite df by hand, p from the t distribution
    a, b, margin = [0.10, 0.12, 0.11, 0.13], [0.20, 0.30, 0.25], 0.05
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) + margin - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    r = make.welch(a, b, margin)
    assert r["t"] == pytest.approx(t) and r["df"] == pytest.approx(df) and r["p"] == pytest.approx(stats.t.cdf(t, df))
    assert make.welch([1.0], [2.0, 3.0])["p"] is None  # one seed: no variance, no test


def fake_logs(bpb: list[float], per_token: float = 3.0) -> list[dict]:
    """Minimal parsed logs: val_loss = val_bpb * ln 2 * bytes / tokens, on one val set."""
    tokens, n_bytes = 1_000_000, int(3_000_000 * per_token / 3.0)
    return [
        dict(val_bpb=b, val_loss=b * math.log(2) * n_bytes / tokens, final={"val": dict(tokens=tokens, bytes=n_bytes)})
        for b in bpb
    ]


def test_record_bar_needs_margin_and_significance():
    ref = dict(source="fixed", val_bpb=[1.0800, 1.0805, 1.0795])
    # 0.01 bpb better = 0.0208 nats at 3 bytes/token, seed spread 0.0005: meets the bar
    s = make.significance(fake_logs([1.0700, 1.0705, 1.0695]), ref)
    assert s["delta_nats"] == pytest.approx(-0.01 * math.log(2) * 3.0, abs=1e-8) and s["meets_record_bar"]
    assert s["p_nats_improvement_over_threshold"] < 0.01
    # 0.001 bpb better: clearly better (p_bpb small) but under 0.005 nats: does not meet the bar
    s = make.significance(fake_logs([1.0790, 1.07905, 1.07895]), ref)
    assert s["p_bpb_improvement"] < 0.05 and not s["meets_record_bar"]
    assert s["p_nats_improvement_over_threshold"] > 0.5


def test_requirements_are_derived_from_imports():
    src = (
        "import os\nimport numpy as np\nfrom torch import nn\ntry:\n    import brotli\nexcept ImportError:\n"
        "    brotli = None\ndef f(name):\n    import sentencepiece\n    try:\n"
        "        return importlib.import_module({'zstd': 'zstandard'}[name])\n    except ImportError:\n"
        "        return None\n"
    )
    assert make.imports_of(src) == {
        "brotli": True,
        "numpy": False,
        "sentencepiece": False,
        "torch": False,
        "zstandard": True,
    }
    real = make.imports_of((ROOT / "train_gpt.py").read_text())
    assert {m for m, opt in real.items() if not opt} == {"numpy", "sentencepiece", "torch"}
    assert {"brotli", "zstandard"} <= {m for m, opt in real.items() if opt}
    source, run = (ROOT / "train_gpt.py").read_text(), dict(env=None, codec=None)
    assert "FlashAttention-3" not in make.requirements_txt(source, [run | dict(attention="varlen")])
    # a set of runs that trained on FA3 says its speed depended on it
    assert "logged 'attention fa3'" in make.requirements_txt(source, [run | dict(attention="fa3")])
    assert "pip install flash-attn-4" in make.requirements_txt(source, [run | dict(attention="fa4")])


@pytest.mark.parametrize(
    "folder", sorted(p.parent for p in (ROOT / "submissions").glob("*/submission.json")), ids=lambda p: p.name
)
def test_committed_folders_pass_the_check(folder):
    """Every folder shipped under submissions/ still passes check-submission (its logs, code and JSON agree)."""
    rows = check.check(folder)
    assert all(s in ("PASS", "SKIP") for _, s, _ in rows), rows
