"""data.shards: the official shard format, written and checked, and its CLI's messages."""

from __future__ import annotations

import os

import numpy as np
import pytest

from data.shards import check_shard, vocab_size_from_path, write_shard
from train_gpt import HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, ShardError, load_shard


def tokens(n: int = 1000, vocab: int = 1024, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).integers(2, vocab, n)
    t[::100] = 1  # a BOS every 100 tokens: 10 docs
    return t


def test_round_trip(tmp_path):
    path = str(tmp_path / "fineweb_train_000000.bin")
    t = tokens()
    write_shard(path, t)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [SHARD_MAGIC, SHARD_VERSION, t.size] and not header[3:].any()
    assert os.path.getsize(path) == HEADER_BYTES + 2 * t.size
    assert np.array_equal(load_shard(path), t)
    assert check_shard(path, 1024) == (1000, 10)
    assert os.listdir(tmp_path) == ["fineweb_train_000000.bin"]  # no temp file left behind


def test_empty_shard(tmp_path):
    path = str(tmp_path / "empty.bin")
    write_shard(path, [])
    assert check_shard(path, 1024) == (0, 0)


def test_write_refuses_non_uint16_and_keeps_old_file(tmp_path):
    path = str(tmp_path / "s.bin")
    write_shard(path, [1, 2, 3])
    with pytest.raises(ValueError):
        write_shard(path, [1, 70000])
    assert check_shard(path) == (3, 1)


def test_check_names_first_bad_token(tmp_path):
    path = str(tmp_path / "s.bin")
    write_shard(path, [1, 5, 1023, 1024, 4000])
    with pytest.raises(ShardError, match=r"token id 1024 at position 3 >= vocab size 1024"):
        check_shard(path, 1024)
    assert check_shard(path, 4001) == (5, 1)


@pytest.mark.parametrize(
    "path,vocab",
    [
        ("data/datasets/fineweb10B_sp1024/fineweb_val_000000.bin", 1024),
        ("../shared/data/fineweb_dev/fineweb_val_sp8192.bin", 8192),
        ("data/datasets/devset_sp8192_fineweb_dev/fineweb_val_000000.bin", 8192),
        ("/tmp/wasp2/x.bin", None),
        ("/tmp/x.bin", None),
    ],
)
def test_vocab_size_from_path(path, vocab):
    assert vocab_size_from_path(path) == vocab


def _corrupt(path: str, kind: str) -> None:
    """Damage a valid 1000-token shard in one way."""
    raw = bytearray(open(path, "rb").read())
    if kind == "magic":
        raw[0:4] = np.int32(20240521).tobytes()
    elif kind == "version":
        raw[4:8] = np.int32(2).tobytes()
    elif kind == "truncated":
        raw = raw[:-10]
    elif kind == "header_short":
        raw = raw[:100]
    elif kind == "count":  # header says fewer tokens than the payload holds
        raw[8:12] = np.int32(900).tobytes()
    open(path, "wb").write(bytes(raw))


BAD = {  # kind of damage -> what the one-line error must say
    "magic": "bad magic 20240521",
    "version": "unsupported version 2",
    "truncated": "truncated: header says 1000 tokens",
    "header_short": "truncated header",
    "count": "header/payload mismatch",
    "vocab": "token id",
}


def _bad_shards(folder) -> dict[str, str]:
    folder.mkdir()  # named devset_sp1024: the vocab check takes 1024 from the path
    paths = {}
    for kind in BAD:
        paths[kind] = str(folder / f"fineweb_train_{kind}.bin")
        write_shard(paths[kind], tokens(vocab=2000 if kind == "vocab" else 1024))
        _corrupt(paths[kind], kind)
    return paths


def test_cli_one_bad_shard_one_line(tmp_path, run_cli, one_line_error):
    path = _bad_shards(tmp_path / "devset_sp1024")["magic"]
    one_line_error(run_cli("data.shards", "check", path), path, BAD["magic"])


def test_cli_each_bad_shard_gets_its_own_line(tmp_path, run_cli):
    # one process for all kinds of damage (each start pays for importing torch); a good file still passes
    paths = _bad_shards(tmp_path / "devset_sp1024")
    good = str(tmp_path / "devset_sp1024" / "fineweb_train_000000.bin")
    write_shard(good, tokens())
    proc = run_cli("data.shards", "check", *paths.values(), good)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"ok {good} tokens=1000 docs=10"]
    errors = proc.stderr.splitlines()
    assert len(errors) == len(BAD), proc.stderr
    for line, (kind, path) in zip(errors, paths.items()):
        assert line.startswith(f"error: {path}: ") and BAD[kind] in line, line


def test_cli_vocab_flag_overrides_path(tmp_path, run_cli):
    path = str(tmp_path / "sp1024_x.bin")  # without the flag this fails: see the "vocab" kind above
    write_shard(path, [1, 5000])
    proc = run_cli("data.shards", "check", path, "--vocab-size", "8192")
    assert proc.returncode == 0 and proc.stdout == f"ok {path} tokens=2 docs=1\n"


def test_cli_ok_on_real_dev_shards(shared, run_cli):
    dev = shared / "data" / "fineweb_dev"
    proc = run_cli("data.shards", "check", dev / "fineweb_val_sp1024.bin", dev / "fineweb_val_sp8192.bin")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"ok {dev / 'fineweb_val_sp1024.bin'} tokens=817103 docs=700",
        f"ok {dev / 'fineweb_val_sp8192.bin'} tokens=533502 docs=700",
    ]
