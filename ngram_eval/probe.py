"""Legality probes for any per-token scorer: `python -m ngram_eval.probe`.

A scorer is a callable (the protocol):
    scorer(tokens: LongTensor[T]) -> nll: Tensor[T]
        the NLL (nats) of every position 1..T-1 of the stream `tokens` (position 0 has no prefix and is
        ignored), computed from a fresh state; deterministic.
    scorer.distribution(prefix: LongTensor[t]) -> probs: Tensor[V]      (optional)
        the distribution it claims for the token after `prefix`.
    scorer.trace                                                          (optional attribute)
        the probe sets it to a Trace; the scorer calls trace.score(positions) once those positions' NLLs
        are final and trace.update(positions) when those tokens enter any state used later.

Probes (the conditions of issue #1017):
  normalisation  sum over every v of p(v | prefix), where p(v) = exp(-nll[t]) of the stream
                 prefix + [v]: the probability the scorer really assigns, whatever it claims. This
                 is what exposes seed 003's target-keyed table (a claimed distribution, if any, must
                 also sum to 1 and equal these probabilities).
  causality      changing tokens at positions >= t, or cutting the stream at t, leaves nll[:t] unchanged.
  score-first    (instrumented) every scored position is scored once, and is updated at most once and
                 only after it was scored. Only as good as the scorer's reporting; the two probes above
                 test behaviour and trust nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ngram_eval._impl import FakeModel, NgramMixer, read_tokens, run_stream, target_bytes

SHARED = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
DEV_SHARD = SHARED / "data/fineweb_dev/fineweb_val_sp1024.bin"


class Trace:
    """Event clock for score-first: when each position was scored and when it was updated."""

    def __init__(self, n: int):
        self.clock = 0
        self.scored_at, self.updated_at = np.full(n, -1), np.full(n, -1)
        self.n_scored, self.n_updated = np.zeros(n, int), np.zeros(n, int)

    def score(self, positions) -> None:
        p = np.asarray(positions, dtype=int)
        self.clock += 1
        self.scored_at[p], self.n_scored[p] = self.clock, self.n_scored[p] + 1

    def update(self, positions) -> None:
        p = np.asarray(positions, dtype=int)
        self.clock += 1
        self.updated_at[p], self.n_updated[p] = self.clock, self.n_updated[p] + 1


class Result(NamedTuple):
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    value: float = 0.0  # the worst deviation found (normalisation: |sum - 1|; causality: |change|)


def _result(name: str, ok: bool | None, detail: str, value: float = 0.0) -> Result:
    return Result(name, {True: "PASS", False: "FAIL", None: "SKIP"}[ok], detail, value)


def probe_normalisation(
    scorer, tokens: Tensor, positions, vocab: int, tol: float = 1e-5, stop_above: float | None = None
):
    """Implied mass sum_v p(v | tokens[:t]) at each t, by substituting every v at t and re-scoring.
    stop_above: stop a position's sum once it passes this (then it is a lower bound, marked >=)."""
    worst, worst_claim, details = 0.0, 0.0, []
    for t in positions:
        stream = tokens[: t + 1].clone()
        p, total = torch.zeros(vocab, dtype=torch.float64), 0.0
        for v in range(vocab):
            stream[t] = v
            p[v] = math.exp(-float(scorer(stream)[t]))
            total += p[v].item()
            if stop_above is not None and total > stop_above:
                break
        partial = v < vocab - 1
        worst = max(worst, abs(total - 1))
        details.append(
            f"t={t}: {'>=' if partial else ''}{total:.8f}" + (f" (first {v + 1} of {vocab} tokens)" if partial else "")
        )
        if hasattr(scorer, "distribution"):  # a claimed distribution must be proper AND be what is scored
            q = scorer.distribution(tokens[:t]).double().cpu()
            worst_claim = max(worst_claim, abs(q.sum().item() - 1), (q - p).abs().max().item())
    extra = f"; claimed distribution off by {worst_claim:.2g}" if hasattr(scorer, "distribution") else ""
    return _result(
        "normalisation",
        worst <= tol and worst_claim <= tol,
        f"implied sum over V: {', '.join(details)} (|sum-1| <= {tol}){extra}",
        worst,
    )


def probe_causality(scorer, tokens: Tensor, positions, vocab: int, seed: int = 0, tol: float = 1e-7):
    """nll[1:t] must not move when tokens[t:] change or when the stream is cut at t. The tolerance
    only absorbs float32 model noise (batch shapes change); a leak moves counts, and NLLs far more."""
    g = torch.Generator().manual_seed(seed)
    base, worst = scorer(tokens).double(), 0.0
    for t in positions:
        pert = tokens.clone()
        pert[t:] = torch.randint(vocab, (tokens.numel() - t,), generator=g)
        worst = max(
            worst,
            (scorer(pert).double()[1:t] - base[1:t]).abs().max().item(),
            (scorer(tokens[:t]).double()[1:t] - base[1:t]).abs().max().item(),
        )
    return _result("causality", worst <= tol, f"max |change of nll before t| = {worst:.3g} (tol {tol})", worst)


def probe_score_first(scorer, tokens: Tensor):
    if not hasattr(scorer, "trace"):
        return _result("score-first", None, "scorer has no trace hook")
    tr = scorer.trace = Trace(tokens.numel())
    try:
        scorer(tokens)
    finally:
        scorer.trace = None
    upd = tr.n_updated[1:] > 0
    bad = {
        "not scored exactly once": int((tr.n_scored[1:] != 1).sum()),
        "updated more than once": int((tr.n_updated[1:] > 1).sum()),
        "updated before scored": int((upd & (tr.updated_at[1:] <= tr.scored_at[1:])).sum()),
    }
    ok = not any(bad.values())
    return _result(
        "score-first",
        ok,
        "all positions scored once, each update after its score"
        if ok
        else ", ".join(f"{k}: {v}" for k, v in bad.items() if v),
    )


def run_probes(scorer, tokens: Tensor, positions, vocab: int) -> list[Result]:
    return [
        probe_normalisation(scorer, tokens, positions, vocab),
        probe_causality(scorer, tokens, positions, vocab),
        probe_score_first(scorer, tokens),
    ]


# --- scorers ------------------------------------------------------------------------------------------
class MixerScorer:
    """Our mixer over a fixed fake model, chunked score-first. update_first=True: LEAKY control."""

    def __init__(
        self, vocab: int, order: int = 6, chunk: int = 64, seed: int = 0, update_first: bool = False, **mixer_kw
    ):
        self.V, self.order, self.chunk, self.kw = vocab, order, chunk, mixer_kw
        self.model, self.update_first, self.trace = FakeModel(vocab, seed), update_first, None

    def _mixer(self) -> NgramMixer:
        return NgramMixer(self.V, self.order, **self.kw)

    def __call__(self, tokens: Tensor) -> Tensor:
        return run_stream(self._mixer(), tokens, self.model, self.chunk, self.trace, self.update_first)

    def distribution(self, prefix: Tensor) -> Tensor:
        t = prefix.numel()  # replay the chunks before the one holding t, then read its row t
        s = 1 + (t - 1) // self.chunk * self.chunk
        mixer = self._mixer()
        run_stream(mixer, prefix[:s], self.model, self.chunk)  # inserts prefix[:s] unless s == 1
        return mixer.distribution(
            torch.cat([prefix[s:], prefix[:1]]),
            self.model.logprobs(prefix[s - 1 : t]),
            prefix=prefix[:1] if s == 1 else None,
        )[-1]


class Seed003Scorer:
    """NEGATIVE CONTROL: the disqualified construction of PR #187 (seed 003), rebuilt from its description.
    Per order o, a count table of hash(context) and one of hash(context, TARGET), `buckets` each;
    p_ng = min(c(ctx, target) / c(ctx), 1) at the highest order with c(ctx) >= min_count, mixed as
    (1 - alpha) p_model + alpha p_ng. Causal and score-first, but keyed on the target: with hash
    collisions the implied mass over V is far above 1."""

    def __init__(
        self,
        vocab: int,
        orders=(2, 3, 4, 5),
        buckets: int = 1 << 16,
        alpha: float = 0.2,
        min_count: int = 2,
        chunk: int = 256,
        seed: int = 0,
    ):
        self.V, self.orders, self.B, self.alpha = vocab, orders, buckets, alpha
        self.min_count, self.chunk, self.model = min_count, chunk, FakeModel(vocab, seed)

    def __call__(self, tokens: Tensor) -> Tensor:
        T, B = tokens.numel(), self.B
        ctx, pair = [], []
        for o in self.orders:
            h = torch.zeros(T, dtype=torch.long)
            for j in range(1, o):
                h[j:] = (h[j:] * 1000003 + tokens[:-j] + 1) % B
            ctx.append(h)
            pair.append((h * 1000003 + tokens + 7) % B)  # the key includes the target: the flaw
        ctab, ptab = torch.zeros(len(self.orders), B), torch.zeros(len(self.orders), B)
        nll = torch.zeros(T, dtype=torch.float64)
        for s in range(1, T, self.chunk):
            e = min(s + self.chunk, T)
            p_model = self.model.logprobs(tokens[s - 1 : e - 1]).gather(1, tokens[s:e, None])[:, 0].double().exp()
            p_ng, found = torch.zeros(e - s, dtype=torch.float64), torch.zeros(e - s, dtype=torch.bool)
            for i, o in reversed(list(enumerate(self.orders))):
                cc, pc = ctab[i][ctx[i][s:e]], ptab[i][pair[i][s:e]]
                use = ~found & (cc >= self.min_count) & (torch.arange(s, e) >= o - 1)
                p_ng = torch.where(use, (pc / cc.clamp(min=1)).clamp(max=1).double(), p_ng)
                found |= use
            p = torch.where(found, (1 - self.alpha) * p_model + self.alpha * p_ng, p_model)
            nll[s:e] = -p.log()
            for i, o in enumerate(self.orders):  # after scoring: update with the scored chunk
                ok = torch.arange(s, e) >= o - 1
                ctab[i].index_add_(0, ctx[i][s:e][ok], torch.ones(int(ok.sum())))
                ptab[i].index_add_(0, pair[i][s:e][ok], torch.ones(int(ok.sum())))
        return nll


# --- CLI ----------------------------------------------------------------------------------------------
def check_per_token(path: str, shard: str, tokenizer: str | None, expect: int | None) -> bool:
    """What a PER_TOKEN_OUT file alone can show: shape, dtype, count, finiteness, p <= 1, and its bpb."""
    nll = np.load(path)
    tokens = read_tokens(shard)
    n = tokens.numel() - 1 if expect is None else expect
    checks = [
        ("1-D float32", nll.ndim == 1 and nll.dtype == np.float32, f"shape {nll.shape}, dtype {nll.dtype}"),
        ("length", nll.size == n, f"{nll.size} values, expected {n} (scored targets)"),
        ("finite", bool(np.isfinite(nll).all()), f"{int((~np.isfinite(nll)).sum())} non-finite"),
        ("p <= 1", bool((nll >= 0).all()), f"{int((nll < 0).sum())} negative NLLs (p > 1)"),
    ]
    ok = all(c[1] for c in checks)
    for name, good, detail in checks:
        print(f"{'PASS' if good else 'FAIL'} per-token {name}: {detail}")
    if tokenizer and ok:
        vocab = int(tokens.max()) + 1
        import sentencepiece as spm

        vocab = max(vocab, spm.SentencePieceProcessor(model_file=tokenizer).vocab_size())
        nbytes = target_bytes(tokens[: nll.size + 1], tokenizer, vocab, shard).sum().item()
        print(
            f"INFO nats/token {nll.astype(np.float64).mean():.5f}, "
            f"bpb {nll.astype(np.float64).sum() / math.log(2) / nbytes:.5f} over {nll.size} tokens"
        )
    print(
        "NOTE a file of per-token NLLs cannot show normalisation over V, causality or score-first:\n"
        "     those need the scorer itself (run the probes on it). It can only show the count, that\n"
        "     every value is a finite NLL of a probability <= 1, and the bpb the file implies."
    )
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default=str(DEV_SHARD), help="official-format shard")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--n", type=int, default=400, help="stream length for the probes")
    ap.add_argument("--positions", type=int, default=3, help="positions probed (each costs V re-scorings)")
    ap.add_argument("--order", type=int, default=6)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--cross-bos", action="store_true")
    ap.add_argument("--controls", action="store_true", help="also probe seed 003's scorer and a leaky one")
    ap.add_argument("--control-n", type=int, default=2000, help="stream length for the seed 003 control")
    ap.add_argument("--per-token", help="check a PER_TOKEN_OUT .npy file instead")
    ap.add_argument("--tokenizer", help="with --per-token: sentencepiece model, to report the bpb")
    ap.add_argument("--expect", type=int, help="with --per-token: expected count (default: tokens - 1)")
    a = ap.parse_args(argv)
    if a.per_token:
        return 0 if check_per_token(a.per_token, a.tokens, a.tokenizer, a.expect) else 1
    torch.set_num_threads(1)  # thousands of tiny re-scorings: threads only add overhead
    tokens = read_tokens(a.tokens, a.n)
    rng = np.random.default_rng(0)
    positions = sorted(rng.choice(np.arange(tokens.numel() // 2, tokens.numel()), a.positions, replace=False).tolist())
    ours = MixerScorer(a.vocab, a.order, a.chunk, cross_bos=a.cross_bos)
    failed = 0
    for name, status, detail, _ in run_probes(ours, tokens, positions, a.vocab):
        print(f"{status} ngram-mixer {name}: {detail}")
        failed += status == "FAIL"
    if a.controls:  # negative controls: these must FAIL, or the probes are too weak
        long = read_tokens(a.tokens, a.control_n)  # seed 003's collisions need a fuller table
        lpos = sorted(rng.choice(np.arange(long.numel() // 2, long.numel()), a.positions, replace=False).tolist())
        leaky = MixerScorer(a.vocab, a.order, a.chunk, update_first=True)
        controls = [
            ("seed003", lambda: probe_normalisation(Seed003Scorer(a.vocab), long, lpos, a.vocab, stop_above=2.0)),
            ("leaky-update-first", lambda: probe_causality(leaky, tokens, positions, a.vocab)),
            ("leaky-update-first", lambda: probe_score_first(leaky, tokens)),
        ]
        for label, probe in controls:
            name, status, detail, _ = probe()
            print(f"{status} control {label} {name} (expected FAIL): {detail}")
            failed += status != "FAIL"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
