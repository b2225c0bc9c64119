"""The n-gram cache that EVAL_PATHS=ngram|ttt_ngram mixes into the model's scores: a plug-in of train_gpt.py.

train_gpt.py imports this module only when an n-gram path is named (`make pack EVAL_PATHS=...` bundles it into
the shipped file, and a run's log embeds it); ngram_eval extends it for the probes and sweeps.

Legality (issue #1017): (1) p_t depends only on the strict prefix (every count is of tokens before t); (2) a full
normalised distribution over V (interpolated Witten-Bell sums to 1; the mixture weight depends on no candidate
token); (3) score before update (score() never changes the tables; the caller update()s with scored tokens);
(4) one pass. ngram_eval.probe tests (1)-(3) on the running code.
Witten-Bell over context lengths L = 0..order-1 on a uniform floor p_{-1}(v) = 1/V, with c(h,v) the prefix count
of v after context h, c(h) = sum_v c(h,v) and u(h) the distinct v seen after h:
  p_L(v) = (c(h_L,v) + u(h_L) p_{L-1}(v)) / (c(h_L) + u(h_L))   if c(h_L) > 0, else p_{L-1}(v)
(plain prefix counts: insert-only tables, unlike Kneser-Ney's continuation counts). Mixture: (1 - a) p_model +
a p_ngram, a = sigmoid(w0 + w1 H_model + w2 log1p(c(h_top)) + w3 n_top) (the model's entropy at t; the longest
context with data and its order L + 1); a = 0 on empty tables. With NGRAM_GATE_LR > 0 each update() first fits
the w (Adam) to the positions scored since the last: a chunk's gate knows earlier chunks only.
Table: one sorted int64 array of keys (L << 59) + g * V + v (g the hash of the L-token context), exact counts,
a sentinel; the continuations of (L, g) are the range [base, base + V), so c(h) and u(h) come from one array. A
hash collision merges two contexts: still normalised, it costs accuracy, never mass. Hash g_L = (g_{L-1} (V+1)
+ tok_{t-L} + 1) mod M, M a prime near 2^59 / V: exact while (V+1)^L < M (V=8192: L <= 3). No key holds the target.
score(chunk) counts the chunk's own strict prefix with stable sorts: equal to a token-by-token pass for any chunk
size. Contexts stop at the last BOS (cross_bos=True: they don't); counts span the stream. mix_ngram runs after
the model pass in stream order on its (log p(y), entropy), so TTT may score out of order and ranks split the
work. Memory: 24 bytes per distinct (L, context, token); update() is O(table size): chunks of >= 32K tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from train_gpt import BOS_ID, Hyperparameters, progress

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


GATE_STEPS = 8  # Adam steps on the gate per update(): one pass over a chunk is cheap next to scoring it


class NgramMixer:
    def __init__(self, vocab_size: int, order: int, device, alpha: tuple, gate_lr: float = 0.0, cross_bos=False):
        """alpha: the gate's four weights; gate_lr > 0: learned online from already-scored chunks (learn_gate)."""
        assert 1 <= order <= 16, "the context length must fit in the key's level bits"
        self.V, self.n, self.dev = vocab_size, order, torch.device(device)
        self.alpha, self.cross_bos = tuple(alpha), cross_bos
        self.seen = []
        self.gate = torch.zeros(4, dtype=torch.float64, device=self.dev, requires_grad=True)  # alpha while learning
        self.gate_opt = torch.optim.Adam([self.gate], lr=gate_lr) if gate_lr > 0 else None
        m = 2**NGRAM_LEVEL_SHIFT // vocab_size  # g * V + v < 2^59 and g * (V+1) + V < 2^63 for every g < m
        while any(pow(b, m - 1, m) != 1 for b in (2, 3, 5, 7)):  # (probable) prime: a better spread
            m -= 1
        self.M = m
        lng = dict(dtype=torch.long, device=self.dev)
        self.keys = torch.full((1,), 2**63 - 1, **lng)  # sentinel > every key
        self.cnt = torch.zeros(1, **lng)
        self.cum = torch.zeros(2, **lng)  # cum[i] = sum(cnt[:i])
        self.tail = torch.zeros(0, **lng)  # last order-1 tokens given to update(): context of the next chunk

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
            last = torch.where(ext == BOS_ID, j, 0).cummax(0).values
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

    def _top(self, tot: Tensor, use: Tensor) -> tuple[Tensor, Tensor]:
        """c(h_top) and n_top: the count and order (L + 1; 0: none) of the longest context with data."""
        top_o = (use * torch.arange(1, self.n + 1, device=self.dev)[:, None]).amax(0)
        return torch.where(top_o > 0, tot.gather(0, (top_o - 1).clamp(min=0)[None])[0], 0), top_o

    def _interpolate(self, c: Tensor, tot: Tensor, u: Tensor, use: Tensor) -> Tensor:
        """Interpolate from the uniform floor and the unigram up to the longest context, per position (and token)."""
        p = torch.full(c.shape[1:], 1.0 / self.V, dtype=torch.float64, device=self.dev)
        for L in range(self.n):
            p = torch.where(use[L], (c[L] + u[L] * p) / (tot[L] + u[L]).clamp(min=1), p)
        return p

    def ngram_stats(self, tokens: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """p_ngram(true token) float64, c(h_top) and n_top (0: no data) at each position of tokens;
        prefix = stream tokens after the last update() and before tokens[0]."""
        ext, t0, n0 = self._ext(tokens, prefix)
        c, tot, u, valid, _ = self._counts(ext, t0)
        use = valid & (tot > 0)
        return tuple(x[n0:] for x in (self._interpolate(c, tot, u, use), *self._top(tot, use)))

    @staticmethod
    def gate_features(entropy: Tensor, top_count: Tensor, top_order: Tensor) -> Tensor:
        """[n, 4] float64 (1, H_model, log1p(c(h_top)), n_top): the gate is sigmoid(features @ alpha)."""
        return torch.stack([torch.ones_like(entropy), entropy, torch.log1p(top_count), top_order], 1).double()

    def mix_weight(self, entropy: Tensor, top_count: Tensor, top_order: Tensor) -> Tensor:
        alpha = torch.tensor(self.alpha, dtype=torch.float64, device=top_count.device)
        z = self.gate_features(entropy.double(), top_count.double(), top_order.double()) @ alpha
        return torch.where(top_order > 0, torch.sigmoid(z), 0.0)

    def mix_nll(self, logp_true: Tensor, entropy: Tensor, p_ngram: Tensor, top_count, top_order) -> Tensor:
        """-log((1-a) p_model(y) + a p_ngram(y)); needs only the model's log p(y) and entropy."""
        a = self.mix_weight(entropy.to(self.dev), top_count, top_order)
        lp = logp_true.to(self.dev, torch.float64)
        return -torch.logaddexp(torch.log1p(-a) + lp, torch.log(a) + torch.log(p_ngram))

    def score(self, tokens: Tensor, model: tuple[Tensor, Tensor], prefix: Tensor | None = None) -> Tensor:
        """Mixed NLL [T] (float64, nats) of tokens; model = the model's (log p(y), entropy) at those positions;
        prefix = stream tokens after the last update() and before tokens[0]. Does not change the tables: call
        update() with the whole chunk once it is scored."""
        logp, ent = (x.to(self.dev) for x in model)
        stats = self.ngram_stats(tokens.to(self.dev, torch.long), prefix)
        if self.gate_opt:
            self.seen.append((logp, ent, *stats))
        return self.mix_nll(logp, ent, *stats)

    def learn_gate(self) -> None:
        """GATE_STEPS Adam steps on alpha, on the mean mixed NLL of the positions score() gave since the
        last call: already scored, so a gate only ever reflects earlier chunks."""
        seen, self.seen = self.seen, []
        lp, ent, p, c, o = (torch.cat(x) for x in zip(*seen)) if seen else [torch.zeros(0, device=self.dev)] * 5
        keep = o > 0  # a = 0 where the tables have no context: no gradient there
        f = self.gate_features(ent.double(), c.double(), o.double())[keep]
        lp, lpn = lp.double()[keep], torch.log(p.double()[keep])
        with torch.no_grad():  # alpha is the gate everywhere else (sweeps may set it)
            self.gate.copy_(torch.tensor(self.alpha, dtype=torch.float64))
        for _ in range(GATE_STEPS):
            with torch.enable_grad():  # eval runs under no_grad
                z = f @ self.gate  # log a and log(1 - a) as logsigmoids: finite gradients where a saturates
                loss = -torch.logaddexp(F.logsigmoid(-z) + lp, F.logsigmoid(z) + lpn).sum()
                g = torch.autograd.grad(loss, self.gate)[0]
            if not keep.any():
                break
            self.gate.grad = g / keep.sum()  # the mean over the scored positions
            self.gate_opt.step()
        self.alpha = tuple(self.gate.tolist())

    def update(self, tokens: Tensor) -> None:
        """Insert the stream tokens that follow everything inserted so far (a whole, already-scored chunk);
        with gate_lr > 0, learn the gate from what was scored first."""
        if self.gate_opt:
            self.learn_gate()
        ext = torch.cat([self.tail, tokens.to(self.dev, torch.long)])
        _, k, valid = self._keys(ext, self.tail.numel())
        self._merge(*torch.unique(k[valid], return_counts=True))
        self.tail = ext[ext.numel() - min(self.n - 1, ext.numel()) :]

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


def mix_ngram(stats: Tensor, tokens: Tensor, h: Hyperparameters) -> Tensor:
    """Mixed NLL [N] from the model's per-token (NLL, entropy) [2, N] of the whole stream, in stream
    order: chunks of NGRAM_CHUNK targets are scored against the tables of every earlier chunk, then inserted."""
    alpha = tuple(float(a) for a in h.ngram_alpha.split(","))
    mixer = NgramMixer(h.vocab_size, h.ngram_order, stats.device, alpha, h.ngram_gate_lr)
    nll, done = torch.zeros_like(stats[0]), 0
    tick = progress("ngram: tokens", len(tokens))
    for s in range(1, len(tokens), h.ngram_chunk):
        e = min(s + h.ngram_chunk, len(tokens))
        tick(s)
        nll[s:e] = mixer.score(tokens[s:e], (-stats[0, s:e], stats[1, s:e]), prefix=tokens[done:s])
        mixer.update(tokens[done:e])
        done = e
    return nll
