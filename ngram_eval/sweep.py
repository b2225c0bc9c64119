"""bpb of the n-gram mixture over orders and mixture-weight policies, from saved model outputs.

    python -m ngram_eval.sweep --logprobs FILE.npz --tokens SHARD --tokenizer MODEL \\
        [--orders 2,3,4,6,8] [--alphas="w0,w1,w2,w3;..."] [--n N] [--chunk 32768]

FILE.npz holds two float32 arrays, one value per scored target in val order:
    logp     log p_model(target), natural log
    entropy  the entropy (nats) of the model's full distribution at that position
logp[i] and entropy[i] belong to target tokens[1 + i] of the shard (its first token is never scored).
train_gpt.py writes them with PER_TOKEN_OUT after an n-gram path (GPT.nll with entropy=True gives both).

Why these two suffice: the mixture scores the true token y with (1 - a) p_model(y) + a p_ngram(y),
where a depends on the model's entropy and on n-gram counts, and p_ngram(y) on the token stream.
Nothing else of the model's distribution enters the score. (Normalisation of the mixture needs the
whole distribution: that is ngram_eval.probe's business, not the sweep's.)

Each policy is a = sigmoid(w0 + w1 H + w2 log1p(c_top) + w3 n_top) (a constant a: w1 = w2 = w3 = 0).
With --gate-lr > 0 each policy is instead the START of train_gpt's online gate (NGRAM_ALPHA, NGRAM_GATE_LR):
the eval path's own mix_ngram runs, learning the gate from each scored chunk, so NGRAM_CHUNK (--chunk) matters.
Choosing a policy by its score on val is tuning on val: prefer a sweep on non-val text, or report it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from ngram_eval._impl import NgramMixer, mix_ngram, ngram_stream, read_tokens, target_bytes

DEFAULT_ALPHAS = "-4.595,0,0,0;-3,0.25,0.1,0.25;-2.944,0,0,0;-2.197,0,0,0;-4,0.5,0,0.3;-5,0.5,0.2,0.5"


def parse_alphas(spec: str) -> list[tuple[float, float, float, float]]:
    out = [tuple(float(x) for x in part.split(",")) for part in spec.split(";") if part.strip()]
    if any(len(a) != 4 for a in out):
        raise SystemExit(f"--alphas: each policy is w0,w1,w2,w3; got {spec!r}")
    return out


def sweep(
    tokens: torch.Tensor,
    logp: torch.Tensor,
    entropy: torch.Tensor,
    nbytes: int,
    vocab: int,
    orders: list[int],
    alphas: list[tuple],
    chunk: int = 32768,
    cross_bos: bool = False,
    device: str = "cpu",
    gate_lr: float = 0.0,
) -> list[dict]:
    """One row per (order, policy): bpb and its change against the model alone."""
    to_bpb = 1 / (math.log(2) * nbytes)
    base = -logp.double().sum().item() * to_bpb
    rows = []
    if gate_lr > 0:  # the eval path itself: stats[:, i] belong to target tokens[i] (column 0 unused)
        stats = torch.zeros(2, tokens.numel(), dtype=torch.float64, device=device)
        stats[0, 1:], stats[1, 1:] = -logp.double(), entropy.double()
        for order, alpha in ((o, a) for o in orders for a in alphas):
            t0 = time.time()
            h = SimpleNamespace(
                vocab_size=vocab,
                ngram_order=order,
                ngram_alpha=",".join(map(str, alpha)),
                ngram_gate_lr=gate_lr,
                ngram_chunk=chunk,
            )
            bpb = mix_ngram(stats, tokens.to(device), h)[1:].sum().item() * to_bpb
            rows.append(
                dict(
                    order=order,
                    alpha=alpha,
                    bpb=bpb,
                    delta=bpb - base,
                    ngram_only=math.nan,
                    mean_a=math.nan,
                    secs=time.time() - t0,
                    model=base,
                )
            )
        return rows
    for order in orders:
        t0 = time.time()
        mixer = NgramMixer(vocab, order, device, cross_bos=cross_bos)
        p, c, o = ngram_stream(mixer, tokens, chunk)
        secs = time.time() - t0
        ng_only = -p.log().sum().item() * to_bpb
        for alpha in alphas:
            mixer.alpha = alpha
            bpb = mixer.mix_nll(logp, entropy, p, c, o).sum().item() * to_bpb
            rows.append(
                dict(
                    order=order,
                    alpha=alpha,
                    bpb=bpb,
                    delta=bpb - base,
                    ngram_only=ng_only,
                    mean_a=mixer.mix_weight(entropy, c, o).mean().item(),
                    secs=secs,
                    model=base,
                )
            )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logprobs", required=True, help=".npz with float32 arrays logp, entropy")
    ap.add_argument("--tokens", required=True, help="the official-format shard they were scored on")
    ap.add_argument("--tokenizer", required=True, help="sentencepiece model (bytes for bpb)")
    ap.add_argument("--orders", default="2,3,4,6,8")
    ap.add_argument(
        "--alphas", default=DEFAULT_ALPHAS, help="';'-separated policies w0,w1,w2,w3 (write --alphas=-3,...)"
    )
    ap.add_argument("--n", type=int, help="use only the first N targets")
    ap.add_argument("--chunk", type=int, default=32768, help="update granularity (results do not depend on it)")
    ap.add_argument("--cross-bos", action="store_true", help="let contexts run across documents")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gate-lr", type=float, default=0.0, help="> 0: policies start the online gate (NGRAM_GATE_LR)")
    a = ap.parse_args(argv)
    if a.gate_lr > 0 and a.cross_bos:
        raise SystemExit("--gate-lr runs train_gpt's eval path, whose contexts never cross a BOS: drop --cross-bos")
    data = np.load(a.logprobs)
    logp, entropy = (torch.from_numpy(data[k].astype(np.float32)) for k in ("logp", "entropy"))
    if logp.shape != entropy.shape or logp.ndim != 1:
        raise SystemExit(f"{a.logprobs}: logp {logp.shape} and entropy {entropy.shape} must be equal 1-D arrays")
    n = logp.numel() if a.n is None else min(a.n, logp.numel())
    tokens = read_tokens(a.tokens, n + 1)
    if tokens.numel() != n + 1:
        raise SystemExit(f"{a.tokens}: {tokens.numel()} tokens, fewer than the {n} targets + 1 of {a.logprobs}")
    import sentencepiece as spm

    vocab = max(spm.SentencePieceProcessor(model_file=a.tokenizer).vocab_size(), int(tokens.max()) + 1)
    nbytes = target_bytes(tokens, a.tokenizer, vocab, a.tokens).sum().item()
    rows = sweep(
        tokens,
        logp[:n],
        entropy[:n],
        nbytes,
        vocab,
        [int(x) for x in a.orders.split(",")],
        parse_alphas(a.alphas),
        a.chunk,
        a.cross_bos,
        a.device,
        a.gate_lr,
    )
    print(f"{n} targets, {nbytes} bytes, V={vocab}; model alone: {rows[0]['model']:.5f} bpb")
    head = ("order", "policy w0,w1,w2,w3", "bpb", "delta", "mean a", "ngram-only", "ngram s")
    print("{:>5}  {:<24} {:>8} {:>9} {:>7} {:>10} {:>8}".format(*head))
    for r in rows:
        pol = ",".join(f"{w:g}" for w in r["alpha"])
        print(
            f"{r['order']:>5}  {pol:<24} {r['bpb']:8.5f} {r['delta']:+9.5f} {r['mean_a']:7.4f} "
            f"{r['ngram_only']:10.5f} {r['secs']:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
