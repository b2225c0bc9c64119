"""Configuration is checked once, up front (issue 23): every enumerated knob refuses a bad value with one line
naming it, in well under a second and before any data is read; nothing changes the settings after they are
logged; an artifact's model is rebuilt through the same checks; the record path never loads the seed
architectures' module."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from tests.conftest import SP1024, TINY

ROOT = Path(__file__).resolve().parents[1]
# A value each enumerated knob must refuse; list-valued knobs get one bad item among good ones.
BAD = dict.fromkeys(tg.FLAGS, "2") | dict(
    PRESET="recrod",
    ARCH="gtp",
    LOADER="random",
    COMPILE="3",
    ATTN_IMPL="foo",
    QUANT="foo",
    CALIB="foo",
    EVAL_PATHS="sliding,bogus",
    PRE_EXPORT_PATHS="plain,bogus",
    CODECS="brotli,bogus",
    TTT_TARGETS="c_q,bogus",
)


def test_every_enumerated_knob_is_covered():
    assert set(BAD) == set(tg.choices()) and set(tg.LISTS) <= set(BAD)


@pytest.mark.parametrize("key", sorted(BAD))
def test_a_bad_value_is_one_line_naming_the_knob(key):
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        tg.Hyperparameters({**TINY, key: BAD[key]})
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert msg.startswith(f"{key}=") and "\n" not in msg
    assert "bogus" in msg or BAD[key] in msg


@pytest.mark.parametrize(
    "over,needle",
    [
        (dict(NUM_HEADS="5"), "MODEL_DIM=32"),
        (dict(ROPE_DIMS="3"), "ROPE_DIMS=3"),
        (dict(RECUR_END="9"), "RECUR_START..RECUR_END=1..9"),
        (dict(TRAIN_BATCH_TOKENS="32"), "TRAIN_BATCH_TOKENS/TRAIN_SEQ_LEN=0 sequences"),
        (dict(EVAL_STRIDE="0"), "EVAL_STRIDE=0"),
        (dict(EVAL_PATHS="ttt", TTT_CHUNK="128"), "TTT_CHUNK=128"),
        (dict(NGRAM_ORDER="17"), "NGRAM_ORDER=17"),
        (dict(NGRAM_ALPHA="1,2,x,4"), "NGRAM_ALPHA"),
        (dict(NGRAM_ALPHA="1,2"), "NGRAM_ALPHA"),
        (dict(EVAL_PATHS=""), "EVAL_PATHS is empty"),
        (dict(CODECS=""), "CODECS is empty"),
        (dict(COMPILE="2", ARCH="scan"), "COMPILE=2"),
        (dict(NUM_LAYERS="four"), "NUM_LAYERS='four' is not a valid int"),
        (dict(WORLD_SIZE="3"), "TRAIN_BATCH_TOKENS/TRAIN_SEQ_LEN=16 sequences over 3 ranks"),
        (dict(FUSED_MLP="1", MLP_MULT="2.125"), "FUSED_MLP=1: MODEL_DIM and its MLP width must be multiples of 8"),
        (dict(FP8_MLP="1", MLP_MULT="2.25"), "FP8_MLP=1: MODEL_DIM, the MLP width and TRAIN_SEQ_LEN must be multiples"),
        (dict(FP8_MLP="1", TRAIN_SEQ_LEN="72"), "FP8_MLP=1: MODEL_DIM, the MLP width and TRAIN_SEQ_LEN"),
        (dict(FP8_MLP="1", FUSED_MLP="1"), "FUSED_MLP=1 and FP8_MLP=1: one MLP kernel at a time"),
        (dict(ARCH="pse", FUSED_XSA="1"), "FUSED_QKV/XSA=1: ARCH=pse's attention has neither"),
        (dict(ARCH="pse", FUSED_QKV="1", BF16_RESID="1"), "FUSED_QKV/XSA=1: ARCH=pse's attention has neither"),
    ],
)
def test_inconsistent_settings_are_refused_up_front(over, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        tg.Hyperparameters({**TINY, **over})


CLI_CASES = [
    (dict(EVAL_PATHS="bogus"), "EVAL_PATHS='bogus'"),
    (dict(CODECS="bogus"), "CODECS='bogus'"),
    (dict(TOKENIZER_PATH="/nonexistent.model"), "TOKENIZER_PATH=/nonexistent.model"),
    (dict(ATTN_IMPL="foo"), "ATTN_IMPL='foo'"),
    (dict(QUANT="foo"), "QUANT='foo'"),
    (dict(CALIB="foo"), "CALIB='foo'"),
    (dict(TTT_TARGETS="bogus"), "TTT_TARGETS='bogus'"),
    (dict(ATTN_IMPL="varlen"), "ATTN_IMPL=varlen: not available on this machine"),  # CPU: no flash kernel
    (dict(ATTN_IMPL="fa4"), "ATTN_IMPL=fa4: not available on this machine"),
    (dict(DATA_PATH="/nonexistent"), "no files match /nonexistent/fineweb_"),
    (dict(EVAL_ONLY="1", ARTIFACT="missing.pgq"), "ARTIFACT='missing.pgq' is not a file"),
]


@pytest.mark.parametrize(
    "over,needle", CLI_CASES, ids=[next(iter(o)) + "=" + next(iter(o.values())) for o, _ in CLI_CASES]
)
def test_cli_refuses_bad_configuration_before_any_work(tiny_data, tmp_path, one_line_error, over, needle):
    """Each of these was accepted or failed late (after training and export, or as a traceback) before issue 23:
    now one `error:` line and exit 1, in well under a second of the script's own time (constructing and checking
    the settings), with no log written and no data read."""
    env = {**TINY, "DATA_PATH": str(tiny_data), "TOKENIZER_PATH": str(SP1024), **over}
    t0 = time.perf_counter()
    with pytest.raises((ValueError, FileNotFoundError)) as err:  # what main checks before its log
        h = tg.Hyperparameters(env)
        tg.preflight(h)
        tg.tokenizer_luts(h, h.val_files, h.train_files)
    assert time.perf_counter() - t0 < 1.0 and needle in str(err.value)
    p = subprocess.run(
        [sys.executable, str(ROOT / "train_gpt.py")],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    one_line_error(p, needle)
    assert not (tmp_path / "logs").exists()  # it stopped before the log, hence before any data


def test_settings_are_not_changed_after_they_are_logged(tiny_data):
    """The reserve for calibration is raised when the warm-up measures a slower pass, as a derived value: the
    settings object keeps what was logged."""
    h = tg.Hyperparameters(
        {**TINY, "DATA_PATH": str(tiny_data), "TOKENIZER_PATH": str(SP1024), "WARMUP_STEPS": "1", "ITERATIONS": "2"}
    )
    h = tg.Hyperparameters({**h._env, "MAX_WALLCLOCK_SECONDS": "600"})
    before, lines = dict(h.items()), []
    torch.manual_seed(0)
    tg.train(h, tg.GPT(h), torch.device("cpu"), lambda msg, console=True: lines.append(msg))
    assert dict(h.items()) == before and h.gptq_reserve_seconds == 0.0
    reserve = next(line for line in lines if line.startswith("reserve: "))
    compliance = next(line for line in lines if line.startswith("compliance train: "))
    assert f"reserve {reserve.split(' -> ')[1]}" in compliance  # the raised reserve is the one the clock used


def test_an_artifact_model_is_rebuilt_through_the_same_checks(tmp_path):
    """load_artifact builds the artifact's settings with the constructor: its model keys are checked like any
    other setting (no forged settings object), and the run's own settings are kept."""
    h = tg.Hyperparameters({**TINY, "CODECS": "zlib", "EVAL_STRIDE": "16"})
    model, path = tg.GPT(h), str(tmp_path / "a.pgq")
    tg.export_artifact(model, {}, h, path, lambda *a, **k: None)
    again, hm = tg.load_artifact(path, tg.Hyperparameters({**TINY, "NUM_LAYERS": "3", "EVAL_STRIDE": "8"}), "cpu")
    assert (hm.num_layers, hm.eval_stride) == (4, 8) and len(again.blocks) == 4
    qstate, meta = tg.decode_artifact(open(path, "rb").read())
    meta["hyperparameters"]["num_heads"] = 5  # a model no constructor accepts
    with open(path, "wb") as f:
        f.write(tg.encode_artifact(qstate, meta, ("zlib",))[0])
    with pytest.raises(ValueError, match="MODEL_DIM=32 must split into 5 heads"):
        tg.load_artifact(path, h, "cpu")


def test_the_record_path_never_loads_the_seed_architectures():
    """The record's settings, model and artifact meta know nothing of ARCH=worker|pse|scan; seed_archs.py loads
    (and registers its blocks and knobs) only when ARCH names one, and then the artifact carries its knobs."""
    code = (
        "import sys, train_gpt as tg\n"
        "h = tg.Hyperparameters({'PRESET': 'tiny'}); tg.GPT(h)\n"
        "assert 'seed_archs' not in sys.modules and set(tg.BLOCKS) == {'gpt'}, sorted(sys.modules)\n"
        "assert not any('scan' in k or 'worker' in k or 'pse' in k for k in h.model_keys() + tuple(vars(h)))\n"
        "s = tg.Hyperparameters({'PRESET': 'tiny', 'ARCH': 'scan', 'SCAN_CHUNK': '16'})\n"
        "assert 'seed_archs' in sys.modules and s.scan_chunk == 16 and s.model_keys()[-1] == 'scan_chunk'\n"
        "assert tg.PLUGIN_FILES == [tg.os.path.join(tg.os.path.dirname(tg.__file__), 'seed_archs.py')]\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_the_record_kernels_are_on_where_they_fit_and_an_ablation_stays_one_knob():
    """The record trains with kernels.py's MLP and XSA kernels and the stacked q, k, v GEMM by default (FUSED_MLP=1,
    FUSED_XSA=1: 2026-12-07's valid run, bench/results/2026-12-07_gradfix_h100.md; FUSED_QKV=1: its gradients under
    torch varlen, 2026-12-07_varlen_h100.md). A default kernel the model cannot take is off (an XSA, gate, width or
    fp32-stream ablation is one knob); asked for, it is the one-line error. The seed architectures and the baseline
    train without them unless asked. plugins() names what the run imports, which `make pack` bundles."""
    rec = lambda **kw: tg.Hyperparameters({"PRESET": "record", **kw})
    kernels = lambda h: (h.fused_mlp, h.fused_xsa, h.fused_qkv)
    assert kernels(rec()) == (1, 1, 1) and rec().plugins() == ["kernels"]
    assert kernels(rec(XSA="0")) == kernels(rec(ATTN_GATE="0")) == kernels(rec(MODEL_DIM="576")) == (1, 0, 1)
    assert kernels(rec(MLP_MULT="2.1")) == kernels(rec(FP8_MLP="1")) == (0, 1, 1)  # width 1,075: not TMA's 8s
    assert kernels(rec(BF16_RESID="0")) == (1, 1, 0)  # the fp32 stream: the linears' own casts
    assert kernels(rec(ARCH="scan")) == (0, 0, 0) and rec(ARCH="scan").plugins() == ["seed_archs"]
    assert kernels(rec(ARCH="scan", FUSED_MLP="1")) == (1, 0, 0)
    base = tg.Hyperparameters({"PRESET": "baseline"})
    assert kernels(base) == (0, 0, 0) and base.plugins() == []
    assert kernels(tg.Hyperparameters({"PRESET": "tiny"})) == (1, 0, 1)  # head dim 18: no XSA kernel
    assert rec(EVAL_PATHS="ttt_ngram", FUSED_MLP="0", FUSED_XSA="0").plugins() == ["ngram_mix"]
    assert kernels(rec(EVAL_ONLY="1")) == (0, 0, 0) and rec(EVAL_ONLY="1").plugins() == []  # scoring trains nothing
    for over, needle in [(dict(XSA="0"), "FUSED_XSA=1: wants XSA=1"), (dict(MLP_MULT="2.1"), "FUSED_MLP=1: MODEL_DIM")]:
        key = "FUSED_XSA" if "XSA" in needle else "FUSED_MLP"
        with pytest.raises(ValueError, match=needle):
            rec(**over, **{key: "1"})
