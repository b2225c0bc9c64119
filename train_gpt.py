"""Parameter Golf training script: recurrent parallel-residual GPT, MuonEq-R, GPU EMA,
int6 GPTQ export, sliding-window and score-first TTT eval.

Run:  torchrun --standalone --nproc_per_node=8 train_gpt.py       (PRESET=record, sp8192)
      python train_gpt.py                                          (CPU: tiny config on the devset)
Every knob is an env var read once by Hyperparameters; the resolved values are logged.
"""
from __future__ import annotations

import glob
import math
import os
import sys
import time

import numpy as np
import torch
from torch import Tensor

# -----------------------------------------------------------------------------
# TOKENIZER BYTE ACCOUNTING
# -----------------------------------------------------------------------------
# val_bpb = sum(nll) / ln 2 / sum(bytes). For a target token t after a token p:
#   bytes(t) = utf8_len(piece(t) minus its leading U+2581) + [piece(t) has U+2581 and p is not a boundary]
# byte-fallback pieces <0xNN> are exactly 1 byte; control/unknown/unused pieces are 0 bytes and
# are boundaries (a document's first word has no space before it: BOS precedes it).

def build_byte_luts(sp, vocab_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(base_bytes int16, has_leading_space bool, is_boundary bool), each of length vocab_size."""
    if sp.vocab_size() > vocab_size:
        raise ValueError(f"tokenizer has {sp.vocab_size()} pieces but VOCAB_SIZE={vocab_size}")
    base = np.zeros(vocab_size, dtype=np.int16)
    space = np.zeros(vocab_size, dtype=np.bool_)
    boundary = np.ones(vocab_size, dtype=np.bool_)  # ids past the tokenizer never occur; 0 bytes
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            space[i], piece = True, piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary)


def token_bytes(prev: Tensor, tgt: Tensor, luts: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Bytes of each target token given its predecessor (same shapes); int32."""
    base, space, boundary = luts
    return base[tgt].int() + (space[tgt] & ~boundary[prev]).int()

# -----------------------------------------------------------------------------
# SHARDS
# -----------------------------------------------------------------------------
# Official format: 256 x int32 header (magic, version, token count, zeros), then uint16 tokens.
SHARD_MAGIC, SHARD_VERSION, HEADER_INTS = 20240520, 1, 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1


class ShardError(ValueError):
    """A shard that is not in the official format; the message is one line naming the file."""


def read_shard_header(path: str) -> int:
    """Validate the header and size of a shard; return its token count."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(HEADER_BYTES), dtype="<i4")
    except OSError as e:
        raise ShardError(f"{path}: cannot read ({e.strerror})") from None
    if header.size < HEADER_INTS:
        raise ShardError(f"{path}: truncated header ({size} bytes < {HEADER_BYTES})")
    if header[0] != SHARD_MAGIC:
        raise ShardError(f"{path}: bad magic {header[0]} (expected {SHARD_MAGIC})")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported version {header[1]} (expected {SHARD_VERSION})")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        kind = "truncated" if size < HEADER_BYTES + 2 * n else "header/payload mismatch"
        raise ShardError(f"{path}: {kind}: header says {n} tokens, payload holds {(size - HEADER_BYTES) / 2:g}")
    return n


def load_shard(path: str) -> np.ndarray:
    """Memory-mapped uint16 tokens of a validated shard."""
    n = read_shard_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def shard_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    return files
