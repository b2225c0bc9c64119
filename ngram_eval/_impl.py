"""The one place ngram_eval imports the fast n-gram implementation (ngram_mix.NgramMixer, the plug-in that
train_gpt.py loads for its n-gram paths), extended with what only the tools need (scoring from a full
log-softmax, the whole distribution at every position for the probes), plus shared helpers."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

import train_gpt
from train_gpt import load_shard  # noqa: F401  (re-exported for the tools)

ngram_mix = train_gpt.load_plugin("ngram_mix")
NGRAM_LEVEL_SHIFT, mix_ngram = ngram_mix.NGRAM_LEVEL_SHIFT, ngram_mix.mix_ngram


class NgramMixer(ngram_mix.NgramMixer):
    """train_gpt's mixer, plus score() from the model's full log-softmax and distribution() (probes)."""

    def __init__(
        self, vocab_size: int, order=6, device="cpu", alpha=(-3.0, 0.25, 0.1, 0.25), cross_bos=False, gate_lr=0.0
    ):
        """The tools' defaults: order 6 and a fixed gate (the probes' and sweeps' reference mixture weight)."""
        super().__init__(vocab_size, order, device, alpha, gate_lr, cross_bos)

    @staticmethod
    def model_stats(tokens: Tensor, model_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """All the mixture needs of the model's log-softmax [T, V]: log p(y) and the entropy, [T] each."""
        lp = model_logprobs.float()
        return lp.gather(1, tokens[:, None].long())[:, 0], torch.special.entr(lp.exp()).sum(1)

    def score(self, tokens: Tensor, model: Tensor | tuple[Tensor, Tensor], prefix: Tensor | None = None) -> Tensor:
        """train_gpt's score(); `model` may also be the model's log-softmax [T, V] at those positions."""
        if isinstance(model, Tensor):
            model = self.model_stats(tokens.to(self.dev, torch.long), model.to(self.dev))
        return super().score(tokens, model, prefix)

    def distribution(self, tokens: Tensor, model_logprobs: Tensor | None = None, prefix: Tensor | None = None):
        """The full distribution [T, V] (float64) at each position of tokens: the mixture, or the n-gram alone
        if model_logprobs is None. Row t depends on the stream before it only."""
        ext, t0, n0 = self._ext(tokens, prefix)
        c, tot, u, valid, aux = self._counts(ext, t0)
        use = valid & (tot > 0)
        top_c, top_o = (x[n0:] for x in self._top(tot, use))
        P = self._interpolate(self._dense_counts(ext, t0, *aux), tot[..., None], u[..., None], use[..., None])[n0:]
        if model_logprobs is None:
            return P
        lp = model_logprobs.to(self.dev)
        a = self.mix_weight(self.model_stats(ext[t0 + n0 :], lp)[1], top_c, top_o)[:, None]
        return (1 - a) * lp.double().exp() + a * P

    def _dense_counts(self, ext: Tensor, t0: int, ctx, lo, hi, perm, start) -> Tensor:
        """c(h, v) for every v: [order, n, V] float64, over the table plus the chunk's own strict prefix."""
        V, dev = self.V, self.dev
        lo, ln, rows = lo.flatten(), (hi - lo).flatten(), torch.arange(ctx.numel(), device=dev)
        r = torch.repeat_interleave(rows, ln)  # one entry per stored continuation of each context
        idx = lo[r] + torch.arange(r.numel(), device=dev) - (ln.cumsum(0) - ln)[r]
        C = torch.zeros(ctx.numel(), V, dtype=torch.float64, device=dev)
        C.index_put_((r, (self.keys[idx] & (2**NGRAM_LEVEL_SHIFT - 1)) % V), self.cnt[idx].double(), accumulate=True)
        ok = (ctx >= 0).flatten()
        one = torch.zeros_like(C)
        one[rows[ok], ext[t0:].repeat(self.n)[ok]] = 1.0
        cs = one[perm].cumsum(0) - one[perm]  # in-chunk counts of earlier positions with the same context
        return C.index_add_(0, perm, cs - cs[start]).view(self.n, -1, V)


def read_tokens(path: str, limit: int | None = None) -> Tensor:
    """Tokens of an official-format shard (validated by train_gpt.load_shard), as int64."""
    return torch.from_numpy(np.asarray(load_shard(path)[:limit]).astype(np.int64))


def target_bytes(tokens: Tensor, tokenizer: str, vocab_size: int, shard: str | None = None) -> Tensor:
    """Bytes of each target tokens[1:] under the official rule (train_gpt's byte LUTs); when `shard` (whose first
    tokens these are) has a CaseOps byte sidecar, its counts: the original text's bytes, as train_gpt counts them."""
    import sentencepiece as spm

    from train_gpt import build_byte_luts, load_sidecar, token_bytes

    side = load_sidecar(shard) if shard else None
    if side is not None:
        return side[1 : tokens.numel()]

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
