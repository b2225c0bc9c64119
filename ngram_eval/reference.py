"""A slow, obviously-correct reference of the n-gram mixture: plain dicts, one token at a time.

Same math as train_gpt.NgramMixer (interpolated Witten-Bell over context lengths 0..order-1 on a uniform
floor, contexts stopped at the last BOS unless cross_bos, mixture weight from the model's entropy
and the longest context with data) but with exact tuple contexts instead of hashes and the plainest
possible semantics: predict position t from the counts of tokens[:t], then add token t.
The fast path is chunked but counts each chunk's own strict prefix too, so the two must agree
token by token for any chunk size.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

DEFAULT_ALPHA = (-3.0, 0.25, 0.1, 0.25)


class RefNgram:
    def __init__(self, vocab_size: int, order: int = 6, cross_bos: bool = False, bos_id: int = 1):
        self.V, self.n, self.cross_bos, self.bos = vocab_size, order, cross_bos, bos_id
        self.counts = [defaultdict(Counter) for _ in range(order)]  # counts[L][context tuple][token]
        self.totals = [Counter() for _ in range(order)]  # totals[L][context tuple] = sum of counts
        self.hist: list[int] = []

    def _max_len(self) -> int:
        """Longest usable context before the next position: it may start with a BOS, not reach past one."""
        t, L = len(self.hist), 0
        while L < self.n - 1 and L < t and (self.cross_bos or L == 0 or self.hist[t - L] != self.bos):
            L += 1
        return L

    def _contexts(self):
        t = len(self.hist)
        for L in range(self._max_len() + 1):
            yield L, tuple(self.hist[t - L : t])

    def stats(self, y: int) -> tuple[float, int, int]:
        """(p_ngram(y | history), count of the longest context with data, its order L+1 (0: none))."""
        p, top_c, top_o = 1.0 / self.V, 0, 0
        for L, ctx in self._contexts():
            tot = self.totals[L][ctx]
            if tot > 0:
                d = self.counts[L][ctx]
                p = (d.get(y, 0) + len(d) * p) / (tot + len(d))
                top_c, top_o = tot, L + 1
        return p, top_c, top_o

    def dist(self) -> np.ndarray:
        """p_ngram(v | history) for every v, [V] float64."""
        p = np.full(self.V, 1.0 / self.V)
        for L, ctx in self._contexts():
            tot = self.totals[L][ctx]
            if tot > 0:
                d = self.counts[L][ctx]
                c = np.zeros(self.V)
                for v, k in d.items():
                    c[v] = k
                p = (c + len(d) * p) / (tot + len(d))
        return p

    def add(self, y: int) -> None:
        for L, ctx in self._contexts():
            self.counts[L][ctx][y] += 1
            self.totals[L][ctx] += 1
        self.hist.append(int(y))


def ref_weight(entropy: float, top_c: int, top_o: int, alpha=DEFAULT_ALPHA) -> float:
    if top_o == 0:
        return 0.0
    w0, w1, w2, w3 = alpha
    return 1.0 / (1.0 + math.exp(-(w0 + w1 * entropy + w2 * math.log1p(top_c) + w3 * top_o)))


def ref_stream(
    tokens,
    logp_true,
    entropy,
    vocab_size: int,
    order: int = 6,
    alpha=DEFAULT_ALPHA,
    cross_bos: bool = False,
    bos_id: int = 1,
):
    """Score tokens[1:] one by one (tokens[0] is context only). logp_true[i], entropy[i] belong to
    target tokens[i+1]. Returns float64 arrays (nll, p_ngram, top_count, top_order) of length T-1."""
    tokens = [int(x) for x in tokens]
    ng = RefNgram(vocab_size, order, cross_bos, bos_id)
    ng.add(tokens[0])
    out = np.zeros((4, len(tokens) - 1))
    for i, y in enumerate(tokens[1:]):
        p, c, o = ng.stats(y)
        a = ref_weight(float(entropy[i]), c, o, alpha)
        out[:, i] = -math.log((1 - a) * math.exp(float(logp_true[i])) + a * p), p, c, o
        ng.add(y)  # after scoring
    return out
