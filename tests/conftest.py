"""Shared test fixtures: the repository root, the shared data folder, the suite's one tiny model config and its
real-token shards, running a module's CLI, and a model's loss and gradients eagerly or compiled as COMPILE=2 does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Before anything imports triton: kernels.py's Triton kernel then runs interpreted on the CPU (tests/test_kernels.py)
os.environ["TRITON_INTERPRET"] = "1"
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest` as well as `python -m pytest` must import data.* and train_gpt
    sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
SP1024 = SHARED / "data/tokenizers/fineweb_1024_bpe.model"
# The suite's tiny model: the record stack at toy size (4 layers, layers 1-2 looped once more, parallel lanes
# from layer 2, GQA 4/2, partial RoPE), on 64-token windows with no clock. Tests override what they study.
TINY = dict(
    **dict(PRESET="tiny", MODEL_DIM="32", NUM_HEADS="4", NUM_KV_HEADS="2", NUM_LAYERS="4", ROPE_DIMS="4"),
    **dict(RECUR_START="1", RECUR_END="2", RECUR_EXTRA="1", PARALLEL_FROM="2", ATTN_GATE_DIMS="8"),
    **dict(TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="1024", MICRO_BATCH_TOKENS="1024", TRAIN_LOG_EVERY="1"),
    **dict(EVAL_SEQ_LEN="64", EVAL_STRIDE="32", EVAL_BATCH_SEQS="16"),
    **dict(MAX_WALLCLOCK_SECONDS="0", GPTQ_RESERVE_SECONDS="0", DEV_VAL_FILES=""),
)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Train shard: 200 real FineWeb train-pool docs; val shard: the first 40 FineWeb dev docs (sp1024)."""
    import sentencepiece as spm

    import train_gpt as tg
    from data.shards import write_shard

    out = tmp_path_factory.mktemp("tiny_data")
    sp = spm.SentencePieceProcessor(model_file=str(SP1024))
    docs = [json.loads(line)["text"] for line in open(SHARED / "data/fineweb_dev/fineweb_train_docs.jsonl")]
    write_shard(str(out / "fineweb_train_000000.bin"), np.concatenate([[tg.BOS_ID] + sp.encode(d) for d in docs]))
    val = np.asarray(tg.load_shard(str(SHARED / "data/fineweb_dev/fineweb_val_sp1024.bin")))
    write_shard(str(out / "fineweb_val_000000.bin"), val[: np.flatnonzero(val == tg.BOS_ID)[40]])
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Every test's tensors are tiny: one intra-op thread avoids oversubscription (two threads on two
    shared cores ran some tests 10x slower). Subprocess runs set OMP_NUM_THREADS=1 for the same reason."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared beside the repository (SHARED_DIR overrides); skips the test when it is absent."""
    path = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared")).resolve()
    if not (path / "data").is_dir():
        pytest.skip(f"no shared data at {path}")
    return path


@pytest.fixture(scope="session")
def run_cli():
    """run_cli("data.shards", "check", path, env={...}) -> CompletedProcess of `python -m` in the repo root."""

    def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture(scope="session")
def one_line_error():
    """one_line_error(proc, *needles): the CLI failed with a non-zero exit and exactly one stderr line,
    'error: ...', containing each needle (so no traceback)."""

    def check(proc: subprocess.CompletedProcess, *needles: str) -> str:
        assert proc.returncode != 0, proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        for needle in needles:
            assert needle in lines[0], lines[0]
        return lines[0]

    return check


def loss_and_grads(model, x, bf16: bool = False, cu=None) -> list:
    """The mean loss on rows x (T + 1 ids each) and every parameter's gradient; bf16: under CPU bf16 autocast;
    cu: the inputs' varlen offsets, given as training gives them."""
    import torch

    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = model(x[:, :-1], x[:, 1:], cu=cu).mean()
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


def compile_whole(model, monkeypatch) -> None:
    """compile_parts(whole=True), as COMPILE=2 trains, with aot_eager: inductor's trace and autograd graph without
    a C++ compiler. The caller resets dynamo after."""
    import torch

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="aot_eager", **kw))
    model.compile_parts(whole=True)
