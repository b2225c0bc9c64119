"""How many chunk steps score-first LoRA TTT takes, per rank, on a val stream or on a bootstrap of one to the official
val set's size: TTT's time is steps x seconds a step (a step is one forward + backward of TTT_DOCS x TTT_CHUNK
positions, padded rows included), so a token rate measured on a small set with a long-document tail does not
project. The layout is train_gpt's own (ttt_phases, ttt_batches): phases of TTT_PHASE_DOCS documents from the start,
each sorted by length into batches of TTT_DOCS, dealt longest first to the least-loaded rank; a batch runs
ceil(its longest / TTT_CHUNK) steps.

Usage: python bench/ttt_steps.py SHARD [--bootstrap 50000 --seeds 20] [--ranks 8] [--docs 64] [--chunk 48]
       [--phases 4 --phase-docs 12500] [--ms-per-step M]
A bootstrap draws document lengths from the shard's with replacement: it cannot draw a document longer than the
shard's longest, so the official set's tail (documents past 13,000 tokens: the 2026-04-29 leader's log) is a risk
it does not see; --inject N puts one document of N tokens in each draw to see what such a tail costs. Prints JSON.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def rank_steps(lengths: np.ndarray, ranks: int, docs: int, chunk: int, phases: int, phase_docs: int) -> list[int]:
    """Chunk steps of each rank over every phase: train_gpt's own phases and batches (ttt_phases, ttt_batches)."""
    ends = np.cumsum(lengths)
    spans = list(zip((ends - lengths).tolist(), ends.tolist()))
    knobs = dict(ttt_docs=docs, ttt_chunk=chunk, ttt_phases=phases, ttt_phase_docs=phase_docs, ttt_global=1)
    steps = [0] * ranks
    for phase in tg.ttt_phases(spans, SimpleNamespace(**knobs)):
        for r in range(ranks):
            batches = tg.ttt_batches(phase, SimpleNamespace(**knobs, rank=r, world_size=ranks))
            steps[r] += sum(math.ceil((b[-1][1] - b[-1][0]) / chunk) for b in batches)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shard")
    ap.add_argument("--bootstrap", type=int, default=0, help="documents to draw (0: the shard itself)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--docs", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=48)
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--phase-docs", type=int, default=12_500)
    ap.add_argument("--ms-per-step", type=float, default=0.0)
    ap.add_argument("--inject", type=int, default=0, help="N: the first drawn document gets N tokens (a longer tail)")
    a = ap.parse_args()
    tokens = torch.from_numpy(np.asarray(tg.load_shard(a.shard)).astype(np.int64))
    lengths = np.array([e - s for s, e in tg.doc_spans(tokens)])
    draws = (
        [lengths.copy()]
        if not a.bootstrap
        else [np.random.default_rng(s).choice(lengths, a.bootstrap) for s in range(a.seeds)]
    )
    for d in draws if a.inject else []:
        d[0] = a.inject  # draws are copies: the shard's lengths stay as read
    runs = [
        (max(st), int(d.sum()))
        for d in draws
        for st in [rank_steps(d, a.ranks, a.docs, a.chunk, a.phases, a.phase_docs)]
    ]
    worst = float(np.mean([w for w, _ in runs]))
    out = dict(
        shard=a.shard, documents=len(lengths), tokens=int(lengths.sum()), longest=int(lengths.max()),
        settings=vars(a), slowest_rank_steps=worst, drawn_tokens=float(np.mean([t for _, t in runs])),
        row_use=float(np.mean([t for _, t in runs])) / a.ranks / (worst * a.docs * a.chunk),
    )  # fmt: skip
    if a.ms_per_step:
        out["seconds"] = worst * a.ms_per_step / 1000
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
