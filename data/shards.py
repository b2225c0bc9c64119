"""Write and check shards in the official format (train_gpt.py defines and reads it).

python -m data.shards check FILE... [--vocab-size V]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys

import numpy as np

from train_gpt import BOS_ID, HEADER_INTS, SHARD_MAGIC, SHARD_VERSION, ShardError, load_shard


def write_shard(path: str, tokens: np.ndarray) -> str:
    """Write tokens (ints in [0, 65536)) as an official shard; return the file's sha256.
    The bytes go to a temp file that is renamed into place, so a crash never leaves half a shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError(f"{path}: token ids must fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    payload = np.ascontiguousarray(tokens, dtype="<u2")  # written and hashed in place: no copy of 200 MB
    sha = hashlib.sha256(header)
    sha.update(payload)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return sha.hexdigest()


def check_shard(path: str, vocab_size: int | None = None) -> tuple[int, int]:
    """(tokens, docs) of a valid shard; docs = BOS count. Raises ShardError (one line) otherwise."""
    tokens = load_shard(path)  # validates magic, version and size against the header
    if vocab_size is not None and tokens.size:
        bad = tokens >= vocab_size
        if bad.any():
            pos = int(np.argmax(bad))
            raise ShardError(f"{path}: token id {int(tokens[pos])} at position {pos} >= vocab size {vocab_size}")
    return tokens.size, int(np.count_nonzero(tokens == BOS_ID))


def vocab_size_from_path(path: str) -> int | None:
    """The V of the last `spV` in a path (fineweb10B_sp1024/..., fineweb_val_sp8192.bin), if any."""
    found = re.findall(r"(?<![A-Za-z0-9])sp(\d+)(?!\d)", path)
    return int(found[-1]) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.shards", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="validate shards; print tokens and docs per file")
    check.add_argument("files", nargs="+")
    check.add_argument("--vocab-size", type=int, help="default: from an spV in the path, else unchecked")
    args = parser.parse_args(argv)
    failed = False
    for path in args.files:
        vocab = args.vocab_size if args.vocab_size is not None else vocab_size_from_path(path)
        try:
            ntokens, ndocs = check_shard(path, vocab)
        except ShardError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        print(f"ok {path} tokens={ntokens} docs={ndocs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
