"""The one place ngram_eval imports the fast n-gram implementation, plus shared helpers.

When the section is merged into train_gpt.py, change the import below to
`from train_gpt import NgramMixer` and nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from train_gpt import NgramMixer, load_shard, mix_ngram  # noqa: F401  (the fast implementation lives in train_gpt.py)


def read_tokens(path: str, limit: int | None = None) -> Tensor:
    """Tokens of an official-format shard (validated by train_gpt.load_shard), as int64."""
    return torch.from_numpy(np.asarray(load_shard(path)[:limit]).astype(np.int64))


def target_bytes(tokens: Tensor, tokenizer: str, vocab_size: int) -> Tensor:
    """Bytes of each target tokens[1:] under the official rule (train_gpt's byte LUTs)."""
    import sentencepiece as spm

    from train_gpt import build_byte_luts, token_bytes

    luts = build_byte_luts(spm.SentencePieceProcessor(model_file=tokenizer), vocab_size)
    return token_bytes(tokens[:-1], tokens[1:], luts).long()


class FakeModel:
    """A fixed stand-in model for probes and tests: log-softmax of a seeded low-rank bigram table.
    It is a proper distribution over V that depends on the previous token only."""

    def __init__(self, vocab_size: int, seed: int = 0, rank: int = 16, scale: float = 3.0):
        g = torch.Generator().manual_seed(seed)
        self.E = torch.randn(vocab_size, rank, generator=g)
        self.W = torch.randn(rank, vocab_size, generator=g) * (scale / math.sqrt(rank))

    def logprobs(self, prev: Tensor) -> Tensor:
        """[n, V] float32 log-probs of the token after each of prev."""
        return torch.log_softmax(self.E[prev.long()] @ self.W, -1)

    def stats(self, tokens: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """(log p(tokens[i+1]), entropy at i+1) for every target tokens[1:], float32."""
        T = tokens.numel()
        out = [
            NgramMixer.model_stats(tokens[s + 1 : s + 1 + chunk], self.logprobs(tokens[s : min(s + chunk, T - 1)]))
            for s in range(0, T - 1, chunk)
        ]
        return torch.cat([a for a, _ in out]), torch.cat([b for _, b in out])


def run_stream(
    mixer: NgramMixer, tokens: Tensor, model: FakeModel, chunk: int, trace=None, update_first: bool = False
) -> Tensor:
    """Mixed NLL [T] (float64) of tokens[1:] in one left-to-right chunked pass; nll[0] = 0 (no prefix).
    trace (optional) gets .score(positions) / .update(positions) events. update_first=True is the
    LEAKY negative control: it inserts each chunk before scoring it."""
    T = tokens.numel()
    nll = torch.zeros(T, dtype=torch.float64)
    done = 0  # tokens[:done] are in the tables

    def update(e: int) -> None:
        nonlocal done
        mixer.update(tokens[done:e])
        if trace is not None:
            trace.update(range(done, e))
        done = e

    for s in range(1, T, chunk):
        e = min(s + chunk, T)
        if update_first:
            update(e)
        nll[s:e] = mixer.score(tokens[s:e], model.logprobs(tokens[s - 1 : e - 1]), prefix=tokens[done:s]).cpu()
        if trace is not None:
            trace.score(range(s, e))
        if not update_first:
            update(e)
    return nll


def ngram_stream(mixer: NgramMixer, tokens: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """(p_ngram, top_count, top_order) for every target tokens[1:], score-first in chunks."""
    out, done = [], 0
    for s in range(1, tokens.numel(), chunk):
        e = min(s + chunk, tokens.numel())
        out.append([x.cpu() for x in mixer.ngram_stats(tokens[s:e], prefix=tokens[done:s])])
        mixer.update(tokens[done:e])
        done = e
    return tuple(torch.cat(x) for x in zip(*out))
