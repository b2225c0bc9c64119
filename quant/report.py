"""Where an artifact's bytes go: per tensor class, and what each codec would make of it.

    python -m quant.report ARTIFACT [--codecs brotli,zstd,lzma,zlib | --no-recompress]

Per class: tensors, parameters, bits per value, bytes of the codes at that fixed rate, their order-0 entropy
in bytes (what an ideal codec of independent values reaches), fp16 scale bytes and LQER factor bytes. Per
codec candidate (codec x byte shuffle): the artifact's size when re-encoded with train_gpt.encode_artifact,
which takes as long as an export (--no-recompress skips it), against the file and against the order-0 limit
(vs_entropy: the codes at their entropy plus everything else raw; the rest compresses, so a codec can go below).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import train_gpt as tg

CLASS_COLS = ("class", "count", "params", "bits", "value_bytes", "entropy_bytes", "scale_bytes", "lqer_bytes")
CODEC_COLS = ("codec", "shuffle", "bytes", "vs_file", "vs_entropy")


def artifact_report(buf: bytes, codecs: tuple[str, ...] = tuple(tg.CODECS)) -> list[dict]:
    """Where the bytes go. One row per tensor class (count, params, bits, fixed-rate bytes of codes,
    their order-0 entropy in bytes, bytes of scales and LQER factors), then one row per codec candidate
    (re-encoded: this recompresses everything, so it takes as long as an export)."""
    qstate, meta = tg.decode_artifact(buf)
    rows: dict[str, dict] = {}
    for e in qstate.values():
        cls, t = e.get("cls", "fp16" if "t" in e and e["t"].is_floating_point() else "raw"), e.get("q", e.get("t"))
        zero = dict.fromkeys(("count", "params", "value_bytes", "entropy_bytes", "scale_bytes", "lqer_bytes"), 0)
        r = rows.setdefault(cls, {"class": cls, "bits": e.get("bits", 8 * t.element_size()), **zero})
        r["count"], r["params"] = r["count"] + 1, r["params"] + t.numel()
        r["value_bytes"] += -(-t.numel() * r["bits"] // 8)
        if "q" in e:
            p = np.bincount(t.numpy().reshape(-1).astype(np.int64) + 128) / t.numel()
            r["entropy_bytes"] += int(-(p[p > 0] * np.log2(p[p > 0])).sum() * t.numel() / 8)
            r["scale_bytes"] += e["scale"].numel() * 2
            r["lqer_bytes"] += sum(x.numel() * x.element_size() for x in e.get("lqer", []))
    cands = tg.encode_artifact(qstate, meta, codecs, log=lambda s: None)[1] if codecs else []
    return list(rows.values()) + [{"codec": c, "shuffle": s, "bytes": n} for c, s, n in cands]


def table(rows: list[dict], cols: tuple[str, ...]) -> str:
    """First column left-aligned, the others right-aligned; ints with thousands separators."""
    cell = lambda v: str(int(v)) if isinstance(v, bool) else f"{v:,}" if isinstance(v, int) else str(v)
    cells = [list(cols)] + [[cell(r.get(c, "")) for c in cols] for r in rows]
    width = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, width))) for row in cells
    )


def report(buf: bytes, codecs: tuple[str, ...]) -> str:
    rows = artifact_report(buf, codecs)
    classes = [r for r in rows if "class" in r]
    total = {"class": "total", **{c: sum(r[c] for r in classes) for c in CLASS_COLS[1:] if c != "bits"}}
    out = [table(classes + [total], CLASS_COLS)]
    cands = sorted((r for r in rows if "codec" in r), key=lambda r: r["bytes"])
    # the information limit of the order-0 model: the codes at their entropy, everything else as stored (raw)
    limit = total["entropy_bytes"] + total["scale_bytes"] + total["lqer_bytes"]
    limit += sum(r["value_bytes"] for r in classes if not r["entropy_bytes"])
    if cands:
        gaps = [{"vs_file": f"{r['bytes'] - len(buf):+,}", "vs_entropy": f"{r['bytes'] - limit:+,}"} for r in cands]
        out.append(table([r | g for r, g in zip(cands, gaps)], CODEC_COLS))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quant.report", description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--codecs", default=",".join(tg.CODECS), help="codecs to re-encode with (default: all)")
    ap.add_argument("--no-recompress", action="store_true", help="only the per-class rows (fast)")
    args = ap.parse_args(argv)
    codecs = () if args.no_recompress else tuple(c for c in args.codecs.split(",") if c)
    unknown = set(codecs) - set(tg.CODECS)
    if unknown:
        ap.error(f"--codecs: unknown {sorted(unknown)}, expected some of {list(tg.CODECS)}")
    try:
        with open(args.artifact, "rb") as f:
            buf = f.read()
        text = report(buf, codecs)
    except OSError as e:
        print(f"error: {args.artifact}: cannot read ({e.strerror})", file=sys.stderr)
        return 1
    except tg.ArtifactError as e:
        print(f"error: {args.artifact}: {e}", file=sys.stderr)
        return 1
    codec = next(c for c, i in tg.CODECS.items() if i == buf[len(tg.MAGIC) + 1])  # decoded above: the id is valid
    print(f"{args.artifact}: {len(buf):,} bytes, {codec}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
