"""Shared test fixtures: the repository root, the shared data folder, and running a module's CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest` as well as `python -m pytest` must import data.* and train_gpt
    sys.path.insert(0, str(REPO))


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
