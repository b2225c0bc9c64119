"""Legal n-gram cache mixed into the model at eval time (issue 6): the `# N-GRAM` section of train_gpt.py.

Standalone (stdlib + torch); pasted verbatim into train_gpt.py, whose own imports already cover these.
"""
from __future__ import annotations

import torch
from torch import Tensor

# -----------------------------------------------------------------------------
# N-GRAM
# -----------------------------------------------------------------------------
# The four conditions reviewers apply (issue #1017) and how this section meets them:
# (1) p_t depends only on the strict prefix: every count is of tokens before t; (2) a full normalised
# distribution over V: interpolated Witten-Bell (below) sums to 1 by construction, and the mixture
# weight depends on no candidate token; (3) score before update: score() never changes the tables,
# update() is called by the caller on already-scored tokens; (4) one left-to-right pass.
#
# Math: interpolated Witten-Bell backoff over context lengths L = 0..order-1 (L = 0: unigram), on a
# uniform floor p_{-1}(v) = 1/V. With c(h,v) the prefix count of v after context h, c(h) = sum_v c(h,v)
# and u(h) the number of distinct v seen after h:
#   p_L(v) = (c(h_L,v) + u(h_L) p_{L-1}(v)) / (c(h_L) + u(h_L))   if c(h_L) > 0, else p_{L-1}(v).
# sum_v p_L = (c(h) + u(h)) / (c(h) + u(h)) = 1 by induction, and p >= (backoff mass) / V > 0.
# Witten-Bell rather than Kneser-Ney: it needs only plain prefix counts (insert-only tables, no
# continuation counts that change when a lower-order context first appears).
# Mixture: p = (1 - a) p_model + a p_ngram, a = sigmoid(w0 + w1 H_model + w2 log1p(c(h_top)) + w3 n_top)
# where H_model is the model's entropy at t, h_top the longest context with data and n_top = its
# n-gram order (L + 1); a = 0 while the tables are empty. Nothing in a depends on the candidate token.
#
# Table: one sorted int64 array of keys (L << 59) + g * V + v (L the context length, g the hash of
# the L-token context, v the next token) with exact counts, ended by a sentinel. All continuations of
# (L, g) form the contiguous key range [base, base + V), so c(h) and u(h) are read off the same array
# (cumulative counts, range length). A hash collision merges two contexts into one whose counts are
# the sums: still an exact Witten-Bell distribution (of the merged context), so collisions cost
# accuracy, never normalisation. No lookup key contains the target: the target only picks which
# entry of the (normalised) distribution is scored.
# Hash: g_L = (g_{L-1} * (V+1) + tok_{t-L} + 1) mod M, M a prime near 2^59 / V: no int64 overflow,
# exact (collision-free) while (V+1)^L < M (V=1024: L <= 4; V=8192: L <= 3); order <= 16.
#
# Chunks: score(chunk) reads the tables (all tokens given to update() so far) plus the chunk's own
# strict prefix, counted with stable sorts; so every position sees exactly its strict prefix and the
# result equals a token-by-token pass for any chunk size. update(chunk) then inserts the chunk.
# Documents: BOS (id 1) starts each document; by default a context never reaches past the last BOS
# before t (it may start with that BOS). cross_bos=True lets contexts run across documents. The
# counts are always over the whole stream (a cache across documents).
# Multi-rank: walk val in global chunks in the same order on every rank. Rank r scores its slice
# chunk[a:b] with score(chunk[a:b], logprobs, prefix=chunk[:a]) (earlier tokens: context only), then
# every rank calls update(chunk) with the FULL chunk, so the tables stay identical and hold exactly
# the chunks before the one being scored. Ranks hold all val tokens already; if one holds only its
# slice, all-gather the chunk first (the caller's job).
# Cost: memory 24 bytes per distinct (L, context, token) entry (x2 while merging); update() is
# O(table size), so update in chunks of >= 32K tokens (results do not depend on the chunk size).


NGRAM_LEVEL_SHIFT = 59


def _earlier_equal(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each x[j], #{i < j: x[i] == x[j]}; also the stable sort permutation and each sorted element's group start."""
    xs, perm = torch.sort(x, stable=True)  # stable: equal keys stay in position order
    idx = torch.arange(x.numel(), device=x.device)
    first = torch.ones_like(xs, dtype=torch.bool)
    first[1:] = xs[1:] != xs[:-1]
    start = torch.where(first, idx, 0).cummax(0).values
    rank = torch.empty_like(idx)
    rank[perm] = idx - start
    return rank, perm, start


class NgramMixer:
    def __init__(self, vocab_size: int, order: int = 6, device: str | torch.device = "cpu",
                 alpha: tuple[float, float, float, float] = (-3.0, 0.25, 0.1, 0.25),
                 cross_bos: bool = False, bos_id: int = 1):
        assert 1 <= order <= 16, "the context length must fit in the key's level bits"
        self.V, self.n, self.dev = vocab_size, order, torch.device(device)
        self.alpha, self.cross_bos, self.bos = tuple(alpha), cross_bos, bos_id
        m = 2**NGRAM_LEVEL_SHIFT // vocab_size  # g * V + v < 2^59 and g * (V+1) + V < 2^63 for every g < m
        while any(pow(b, m - 1, m) != 1 for b in (2, 3, 5, 7)):  # (probable) prime: a better spread
            m -= 1
        self.M = m
        lng = dict(dtype=torch.long, device=self.dev)
        self.keys = torch.full((1,), 2**63 - 1, **lng)  # sentinel > every key
        self.cnt = torch.zeros(1, **lng)
        self.cum = torch.zeros(2, **lng)  # cum[i] = sum(cnt[:i])
        self.tail = torch.zeros(0, **lng)  # last order-1 tokens given to update(): context of the next chunk

    # --- keys and counts -------------------------------------------------------------------------
    def _ext(self, tokens: Tensor, prefix: Tensor | None) -> tuple[Tensor, int, int]:
        """(tail + prefix + tokens, index of the first in-chunk token, number of prefix tokens)."""
        tokens = tokens.to(self.dev, torch.long)
        prefix = tokens[:0] if prefix is None else prefix.to(self.dev, torch.long)
        return torch.cat([self.tail, prefix, tokens]), self.tail.numel(), prefix.numel()

    def _keys(self, ext: Tensor, t0: int) -> tuple[Tensor, Tensor, Tensor]:
        """For the targets y = ext[t0:] and each context length L, [order, n] each: the first key of
        the context's range, the key of (context, y), and whether the context is usable."""
        i = torch.arange(t0, ext.numel(), device=self.dev)
        if self.cross_bos:
            avail = i
        else:  # the context may start at the last BOS before t, not earlier
            j = torch.arange(ext.numel(), device=self.dev)
            last = torch.where(ext == self.bos, j, 0).cummax(0).values
            avail = i - torch.cat([last.new_zeros(1), last[:-1]])[i]
        pad = torch.cat([ext.new_zeros(self.n - 1), ext])
        g = torch.zeros(self.n, i.numel(), dtype=torch.long, device=self.dev)
        for L in range(1, self.n):
            g[L] = (g[L - 1] * (self.V + 1) + pad[i + self.n - 1 - L] + 1) % self.M
        lvl = torch.arange(self.n, device=self.dev)[:, None]
        valid = avail[None] >= lvl
        dummy = -1 - torch.arange(g.numel(), device=self.dev).view_as(g)  # unusable: unique, match nothing
        ctx = torch.where(valid, (lvl << NGRAM_LEVEL_SHIFT) + g * self.V, dummy * self.V)
        return ctx, torch.where(valid, ctx + ext[t0:], dummy), valid

    def _counts(self, ext: Tensor, t0: int) -> tuple:
        """c(h,y), c(h), u(h) [order, n] over the table plus the chunk's own strict prefix."""
        ctx, k, valid = self._keys(ext, t0)
        keys, cum = self.keys, self.cum
        lo, hi = torch.searchsorted(keys, ctx), torch.searchsorted(keys, ctx + self.V)
        pos = torch.searchsorted(keys, k)
        hit = keys[pos] == k
        c = torch.where(hit, cum[pos + 1] - cum[pos], 0)
        rk = _earlier_equal(k.flatten())[0].view_as(k)  # the same (context, token) earlier in this chunk
        rc, perm, start = _earlier_equal(ctx.flatten())  # the same context earlier in this chunk
        new = ((rk == 0) & ~hit & valid).flatten().long()[perm]  # first sight of a pair: one more type
        ex = new.cumsum(0) - new
        du = torch.empty_like(ex)
        du[perm] = ex - ex[start]
        tot, u = cum[hi] - cum[lo] + rc.view_as(k), hi - lo + du.view_as(k)
        return c + rk, tot, u, valid, (ctx, lo, hi, perm, start)

    def _dense_counts(self, ext: Tensor, t0: int, ctx, lo, hi, perm, start) -> Tensor:
        """c(h, v) for every v: [order, n, V] float64 (probes only)."""
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

    def _ngram(self, ext: Tensor, t0: int, dense: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Witten-Bell p(y) [n] (or p(v) for all v [n, V]), c(h_top) [n], n_top [n] for ext[t0:]."""
        c, tot, u, valid, aux = self._counts(ext, t0)
        use = valid & (tot > 0)
        top_o = (use * torch.arange(1, self.n + 1, device=self.dev)[:, None]).amax(0)
        top_c = torch.where(top_o > 0, tot.gather(0, (top_o - 1).clamp(min=0)[None])[0], 0)
        if dense:
            c, use, tot, u = self._dense_counts(ext, t0, *aux), use[..., None], tot[..., None], u[..., None]
        p = torch.full(c.shape[1:], 1.0 / self.V, dtype=torch.float64, device=self.dev)
        for L in range(self.n):  # interpolate from the unigram up to the longest context
            p = torch.where(use[L], (c[L] + u[L] * p) / (tot[L] + u[L]).clamp(min=1), p)
        return p, top_c, top_o

    def ngram_stats(self, tokens: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """p_ngram(true token) float64, c(h_top) and n_top (0: no data) at each position of tokens;
        prefix = stream tokens after the last update() and before tokens[0]."""
        ext, t0, n0 = self._ext(tokens, prefix)
        return tuple(x[n0:] for x in self._ngram(ext, t0))

    # --- mixture ---------------------------------------------------------------------------------
    def mix_weight(self, entropy: Tensor, top_count: Tensor, top_order: Tensor) -> Tensor:
        w0, w1, w2, w3 = self.alpha
        z = w0 + w1 * entropy.double() + w2 * torch.log1p(top_count.double()) + w3 * top_order
        return torch.where(top_order > 0, torch.sigmoid(z), 0.0)

    def mix_nll(self, logp_true: Tensor, entropy: Tensor, p_ngram: Tensor, top_count: Tensor,
                top_order: Tensor) -> Tensor:
        """-log((1-a) p_model(y) + a p_ngram(y)); needs only the model's log p(y) and entropy."""
        a = self.mix_weight(entropy.to(self.dev), top_count, top_order)
        lp = logp_true.to(self.dev, torch.float64)
        return -torch.logaddexp(torch.log1p(-a) + lp, torch.log(a) + torch.log(p_ngram))

    @staticmethod
    def model_stats(tokens: Tensor, model_logprobs: Tensor) -> tuple[Tensor, Tensor]:
        lp = model_logprobs.float()
        return lp.gather(1, tokens[:, None].long())[:, 0], torch.special.entr(lp.exp()).sum(1)

    def score(self, tokens: Tensor, model_logprobs: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Mixed NLL [T] (float64, nats) of tokens; model_logprobs [T, V] = the model's log-softmax at
        those positions; prefix = stream tokens after the last update() and before tokens[0].
        Does not change the tables: call update() with the whole chunk once it is scored."""
        tokens = tokens.to(self.dev, torch.long)
        logp, ent = self.model_stats(tokens, model_logprobs.to(self.dev))
        return self.mix_nll(logp, ent, *self.ngram_stats(tokens, prefix))

    def distribution(self, tokens: Tensor, model_logprobs: Tensor | None = None,
                     prefix: Tensor | None = None) -> Tensor:
        """The full distribution [T, V] (float64) at each position of tokens: the mixture, or the
        n-gram alone if model_logprobs is None. Row t depends on the stream before it only (probes)."""
        ext, t0, n0 = self._ext(tokens, prefix)
        P, top_c, top_o = (x[n0:] for x in self._ngram(ext, t0, dense=True))
        if model_logprobs is None:
            return P
        lp = model_logprobs.to(self.dev)
        a = self.mix_weight(self.model_stats(ext[t0 + n0:], lp)[1], top_c, top_o)[:, None]
        return (1 - a) * lp.double().exp() + a * P

    # --- table -----------------------------------------------------------------------------------
    def update(self, tokens: Tensor) -> None:
        """Insert the stream tokens that follow everything inserted so far (a whole, already-scored chunk)."""
        ext = torch.cat([self.tail, tokens.to(self.dev, torch.long)])
        _, k, valid = self._keys(ext, self.tail.numel())
        self._merge(*torch.unique(k[valid], return_counts=True))
        self.tail = ext[ext.numel() - min(self.n - 1, ext.numel()):]

    def _merge(self, k: Tensor, c: Tensor) -> None:
        """Add counts c of sorted unique keys k: increment the hits, merge the new keys in, O(table size)."""
        keys, cnt = self.keys, self.cnt
        pos = torch.searchsorted(keys, k)
        hit = keys[pos] == k
        cnt.index_add_(0, pos[hit], c[hit])
        k, c, pos = k[~hit], c[~hit], pos[~hit]
        shift = torch.zeros_like(keys).index_add_(0, pos, torch.ones_like(pos)).cumsum(0)
        old = torch.arange(keys.numel(), device=self.dev) + shift  # each old key moves past the new ones below it
        new = pos + torch.arange(k.numel(), device=self.dev)
        self.keys, self.cnt = keys.new_empty(keys.numel() + k.numel()), cnt.new_empty(keys.numel() + k.numel())
        self.keys[old], self.cnt[old], self.keys[new], self.cnt[new] = keys, cnt, k, c
        self.cum = torch.cat([cnt.new_zeros(1), self.cnt.cumsum(0)])
