"""Honest runs (issue 24), each case as a new user hit it on 4365752: a wrong dataset/tokenizer pairing or an id
past the vocabulary is one error line before training (it was a silent wrong byte count, or an IndexError); a run
that breaks a clock or the size cap is scored and logged, then ends non-zero (it exited 0 with `held False`); a
reused RUN_ID is refused instead of appended to (OVERWRITE=1 replaces it); every error line also reaches the log;
EVAL_ONLY's model line is the artifact's model; long steps print progress lines."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import train_gpt as tg
from data.shards import write_shard
from tests.conftest import SHARED, SP1024, TINY

ROOT = Path(__file__).resolve().parents[1]
SP8192 = SHARED / "data/tokenizers/fineweb_8192_bpe.model"
FAST = dict(ITERATIONS="3", CODECS="zlib", EVAL_PATHS="plain", PRE_EXPORT_PATHS="", EVAL_SEQ_LEN="64")


def run(cwd: Path, data: Path, **over: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **TINY, **FAST, "DATA_PATH": str(data), "TOKENIZER_PATH": str(SP1024)}
    env |= over
    return subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_wrong_tokenizer_for_the_shards_is_one_line_before_training(tiny_data, tmp_path, one_line_error):
    """sp1024 shards with the sp8192 tokenizer and VOCAB_SIZE=8192 scored a wrong byte count with exit 0 before."""
    p = run(tmp_path, tiny_data, TOKENIZER_PATH=str(SP8192), VOCAB_SIZE="8192", RUN_ID="pair")
    one_line_error(p, "fineweb_val_000000.bin", "0% of its first documents' tokens round-trip through", "not its shard")
    assert not (tmp_path / "logs").exists()
    # the right pairing passes the same check; ids past the tokenizer's vocabulary are refused by it too
    sp = tg.spm.SentencePieceProcessor(model_file=str(SP1024))
    tg.tokenized_by(sp, str(tiny_data / "fineweb_val_000000.bin"), "sp1024")
    val8192 = str(SHARED / "data/fineweb_dev/fineweb_val_sp8192.bin")
    try:
        tg.tokenized_by(sp, val8192, "sp1024")
        raise AssertionError("sp8192 ids passed for sp1024")
    except tg.ShardError as e:
        assert "is past the 1024 pieces of sp1024" in str(e)


def test_train_ids_past_the_vocabulary_are_refused(tiny_data, tmp_path, one_line_error):
    """An id >= VOCAB_SIZE past the sampled head of the train shard: an IndexError at step 1 (a device assert on a
    GPU) before; now the batch that holds it is refused with one line naming the shards."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "fineweb_val_000000.bin").symlink_to(tiny_data / "fineweb_val_000000.bin")
    train = np.asarray(tg.load_shard(str(tiny_data / "fineweb_train_000000.bin"))).astype(np.int64)
    train[70_000::997] = 5000  # past the 65,536 tokens the pairing check reads, in every batch's reach
    write_shard(str(data / "fineweb_train_000000.bin"), train)
    p = run(tmp_path, data, RUN_ID="ids")
    one_line_error(p, "fineweb_train_*.bin: token id 5000 >= VOCAB_SIZE 1024")
    assert "error: " in (tmp_path / "logs/ids.txt").read_text().splitlines()[-1]  # the error line reaches the log


def test_a_run_that_breaks_a_rule_ends_non_zero_after_writing_everything(tiny_data, tmp_path, one_line_error):
    """Calibration (inside the clock) overruns a 2 s cap with no reserve, and the eval clock is set below what the
    eval takes: both were `held False` with exit 0. Now the run writes its artifact and every eval line, then ends
    with one error line naming both breaks, which the log holds too. 64 calibration batches: on loaded cores a
    slow step ended training early enough for 4 batches to fit the cap (seen once in CI)."""
    p = run(
        tmp_path, tiny_data, RUN_ID="rules", ITERATIONS="1000", MAX_WALLCLOCK_SECONDS="2", GPTQ_RESERVE_SECONDS="0",
        EVAL_BUDGET_SECONDS="0.001", CALIB_BATCHES="64",
    )  # fmt: skip
    line = one_line_error(p, "the run broke a rule", "train clock:", "eval clock:")
    log = (tmp_path / "logs/rules.txt").read_text().splitlines()
    assert (tmp_path / "artifacts/rules.pgq").exists() and any(s.startswith("eval val plain:") for s in log)
    assert any(s.startswith("compliance train:") and s.endswith("held False") for s in log)
    assert log[-1] == line


def test_a_reused_run_id_is_refused_and_overwrite_replaces_it(tiny_data, tmp_path, one_line_error):
    """A second run with the same RUN_ID appended to the first's log and replaced its artifact, silently."""
    assert run(tmp_path, tiny_data, RUN_ID="again").returncode == 0
    first_log, first_art = (tmp_path / "logs/again.txt").read_text(), (tmp_path / "artifacts/again.pgq").read_bytes()
    p = run(tmp_path, tiny_data, RUN_ID="again", SEED="7")
    one_line_error(p, "RUN_ID=again", "exists", "OVERWRITE=1")
    assert (tmp_path / "logs/again.txt").read_text() == first_log
    assert (tmp_path / "artifacts/again.pgq").read_bytes() == first_art
    assert run(tmp_path, tiny_data, RUN_ID="again", SEED="7", OVERWRITE="1").returncode == 0
    log = (tmp_path / "logs/again.txt").read_text()
    assert log.count("\nhyperparameters: ") == 1 and '"seed": 7' in log  # one run per log, the new one
    # an EVAL_ONLY run reads an existing artifact under a new RUN_ID; its model line is the artifact's model
    p = run(tmp_path, tiny_data, RUN_ID="score", EVAL_ONLY="1", ARTIFACT="artifacts/again.pgq", MODEL_DIM="48")
    assert p.returncode == 0, p.stderr
    model = next(s for s in (tmp_path / "logs/score.txt").read_text().splitlines() if s.startswith("model: "))
    params = next(s for s in log.splitlines() if s.startswith("model: "))
    assert model == params  # MODEL_DIM=48 in the settings; the artifact's model is 32 wide


def test_progress_lines_name_done_total_rate_and_eta(capsys):
    tick = tg.progress("eval: windows", 40, every=0.0)
    tick(10)
    line = capsys.readouterr().out.strip()
    assert line.startswith("eval: windows 10/40 ") and "/s elapsed " in line and line.endswith("s")
    quiet = tg.progress("eval: windows", 40)  # the default interval: nothing within the first seconds
    quiet(10)
    assert capsys.readouterr().out == ""
