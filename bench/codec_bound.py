"""How far below brotli an entropy coder can take an artifact's GPTQ codes: bounds and real rANS bytes (issue 26).

    python bench/codec_bound.py ARTIFACT [--out OUT.json] [--buckets 16]

For every quantized tensor, the codes are coded under three explicit models; each model's cost counts its own
side information (histograms as 16-bit counts, column bucket ids at log2(buckets) bits):
- order0: one histogram per tensor (two-pass, static);
- columns: columns sorted into --buckets groups by the spread of their codes, one histogram per group;
- columns+left: as columns, with the left neighbour's code (clamped to -2..2) as context: a bound only.
The *_free rows drop the side information: what a model with (nearly) free parameters could reach. The *_adaptive
rows learn their histograms as they code (KT estimator, no side information): order-0, left context, both.
order0 and columns are also coded for real with constriction's rANS coder (ANS stack, fixed categorical
models), decoded back and compared (exact or the script fails), with encode/decode seconds on one core.
Everything else (fp16 scales, LQER factors, small fp16 tensors, the JSON header) is compressed separately with
brotli-11 and lzma, the smaller counted, so totals compare with the artifact's own size (its best codec).
Last, train_gpt.py's codec `rans` (order-0 rANS codes + lzma for the rest) encodes and decodes the whole artifact.
--simsort adds the 2026-04-27 leader's row order: rows sorted by greedy L1 nearest neighbour, then each code coded
adaptively with the code above it (clamped to -2..2) as context; the permutation's cost is not counted (it is free
only for an MLP's hidden units, fc's rows), so the row is a bound for the other tensors.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import lzma
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import gammaln

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train_gpt as tg  # noqa: E402

COUNT_BITS = 16  # side information: one 16-bit count per histogram bin


def entropy_bytes(sym: np.ndarray, k: int) -> float:
    c = np.bincount(sym, minlength=k)
    p = c[c > 0] / sym.size
    return float(-(c[c > 0] * np.log2(p)).sum() / 8)


def adaptive_bytes(sym: np.ndarray, k: int) -> float:
    """Code length of sym under an adaptive model (KT: counts + 1/2, learned as it goes, no side information): it
    depends only on the final counts, so no coding is needed to know it."""
    c = np.bincount(sym, minlength=k).astype(np.float64)
    return float(
        (gammaln(c.sum() + k / 2) - gammaln(k / 2) - (gammaln(c + 0.5) - gammaln(0.5)).sum()) / math.log(2) / 8
    )


def column_buckets(a: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket id per column: quantiles of the columns' code spread (the side information the decoder reads)."""
    s = a.std(axis=0)
    return np.searchsorted(np.quantile(s, np.linspace(0, 1, buckets + 1)[1:-1]), s)


def categorical(sym: np.ndarray, k: int):
    import constriction

    c = np.bincount(sym, minlength=k).astype(np.float64)
    return constriction.stream.model.Categorical(np.maximum(c, 1e-3) / c.sum(), perfect=False)


def rans_groups(groups: list[np.ndarray], k: int) -> tuple[int, float, float]:
    """Code each group with its own fixed model on one ANS stack; decode, check, and time both ways."""
    import constriction

    models = [categorical(g, k) for g in groups]
    t0 = time.perf_counter()
    coder = constriction.stream.stack.AnsCoder()
    for g, m in zip(reversed(groups), reversed(models)):  # a stack: the last group encoded is decoded first
        coder.encode_reverse(g.astype(np.int32), m)
    comp = coder.get_compressed()
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    dec = constriction.stream.stack.AnsCoder(comp)
    for g, m in zip(groups, models):
        if not np.array_equal(dec.decode(m, g.size), g):
            raise SystemExit("rANS round trip failed")
    return comp.nbytes, t_enc, time.perf_counter() - t0


def simsort_up_adaptive(a: np.ndarray, sym: np.ndarray, k: int) -> float:
    x, order, left = a.astype(np.float32), [0], np.ones(len(a), bool)
    left[0] = False
    for _ in range(len(a) - 1):
        d = np.abs(x[left] - x[order[-1]]).sum(1)
        order.append(int(np.flatnonzero(left)[d.argmin()]))
        left[order[-1]] = False
    s, up = sym[order], np.clip(a[order][:-1], -2, 2) + 2
    return adaptive_bytes(s[0], k) + sum(adaptive_bytes(s[1:][up == c], k) for c in range(5))


def tensor_costs(a: np.ndarray, buckets: int, simsort: bool = False) -> dict:
    lo = int(a.min())
    sym, k = (a - lo).astype(np.int64), int(a.max()) - lo + 1
    side = k * COUNT_BITS / 8
    b = column_buckets(a, buckets)
    col_groups = [sym[:, b == j].reshape(-1) for j in range(buckets) if (b == j).any()]
    ids = a.shape[1] * math.log2(buckets) / 8
    left = np.pad(np.clip(a[:, :-1], -2, 2) + 2, ((0, 0), (1, 0)), constant_values=2)  # first column: context 0
    ctx = left * buckets + b[None, :]
    cl = [sym[ctx == c] for c in np.unique(ctx)]
    o0_bytes, o0_enc, o0_dec = rans_groups([sym.reshape(-1)], k)
    col_bytes, col_enc, col_dec = rans_groups(col_groups, k)
    col_free, left_free = (sum(entropy_bytes(g, k) for g in groups) for groups in (col_groups, cl))
    return dict(
        order0_bound=entropy_bytes(sym.reshape(-1), k) + side,
        order0_rans=o0_bytes + side,
        columns_bound=col_free + len(col_groups) * side + ids,
        columns_rans=col_bytes + len(col_groups) * side + ids,
        left_bound=left_free + len(cl) * side + ids,
        order0_adaptive=adaptive_bytes(sym.reshape(-1), k),
        left_adaptive=sum(adaptive_bytes(sym[left == c], k) for c in range(5)),
        columns_left_adaptive=sum(adaptive_bytes(g, k) for g in cl) + ids,
        columns_free=col_free,  # side information for free: the potential
        left_free=left_free,
        **(dict(simsort_up_adaptive=simsort_up_adaptive(a, sym, k)) if simsort else {}),
        encode_s=o0_enc + col_enc,
        decode_s=o0_dec + col_dec,
    )


def other_bytes(qstate: dict) -> dict:
    """Everything but the codes, serialized as the artifact does, compressed on its own."""
    rest = {n: ({"t": e["t"]} if "t" in e else {k: v for k, v in e.items() if k != "q"}) for n, e in qstate.items()}
    raw = b"".join(t.contiguous().numpy().tobytes() for e in rest.values() for t in _tensors(e))
    brotli = tg._codec("brotli")
    sizes = {"lzma": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))}
    if brotli:
        sizes["brotli"] = len(brotli[0](raw))
    return dict(raw=len(raw), **sizes)


def _tensors(e: dict) -> list:
    return [e["t"]] if "t" in e else [e["scale"], *e.get("lqer", [])]


def rans_codec(qstate: dict, meta: dict, artifact_bytes: int) -> dict:
    """train_gpt.py's own codec rans, as the export runs it (encode) and as verify-artifact reads it (decode)."""
    out = {}
    for shuffle in (False, True):
        t0 = time.perf_counter()
        blob = tg._wrap(tg._serialize(qstate, meta, shuffle, "rans"), "rans")
        t1 = time.perf_counter()
        q2, _ = tg.decode_artifact(blob)
        t2 = time.perf_counter()
        if any(not np.array_equal(e["q"].numpy(), q2[n]["q"].numpy()) for n, e in qstate.items() if "q" in e):
            raise SystemExit("codec rans round trip failed")
        out[f"shuffle_{int(shuffle)}"] = dict(
            bytes=len(blob), below_artifact=artifact_bytes - len(blob), encode_s=t1 - t0, decode_s=t2 - t1
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--out", default="")
    ap.add_argument("--buckets", type=int, default=16)
    ap.add_argument("--simsort", action="store_true", help="add the similarity-sorted up-context row (slow: O(rows^2))")
    a = ap.parse_args()
    buf = Path(a.artifact).read_bytes()
    qstate, meta = tg.decode_artifact(buf)
    header = len(json.dumps(meta, separators=(",", ":"))) + 120 * len(qstate)  # meta + ~120 bytes per tensor entry
    keys = ("order0_bound", "order0_rans", "columns_bound", "columns_rans", "left_bound", "columns_free", "left_free")
    keys += ("order0_adaptive", "left_adaptive", "columns_left_adaptive", "encode_s", "decode_s")
    keys += ("simsort_up_adaptive",) if a.simsort else ()
    totals, classes = dict.fromkeys(keys, 0.0), {}
    for e in qstate.values():
        if "q" in e:
            c = tensor_costs(e["q"].numpy().astype(np.int64), a.buckets, a.simsort)
            for k in keys:
                totals[k] += c[k]
                classes.setdefault(e["cls"], dict.fromkeys(keys, 0.0))[k] += c[k]
    other = other_bytes(qstate)
    rest = min(v for k, v in other.items() if k != "raw") + header
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    row = dict(
        command="python " + " ".join(sys.argv),
        git_commit=git,
        machine=f"CPU ({os.cpu_count()} cores), constriction {importlib.metadata.version('constriction')}",
        artifact=a.artifact,
        artifact_bytes=len(buf),
        codes=totals,
        classes=classes,
        other=other,
        header_estimate=header,
        totals={k: totals[k] + rest for k in keys if not k.endswith("_s")},
    )
    row["below_artifact"] = {k: len(buf) - v for k, v in row["totals"].items()}
    row["train_gpt_rans"] = rans_codec(qstate, meta, len(buf))
    text = json.dumps(row, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
