"""Bytes and seconds of each zstd level on a real artifact's payload, as export_artifact would encode it.

Usage: python bench/codec_levels.py ARTIFACT.pgq [LEVEL ...]  -> one JSON line per level on stdout.
Decodes the artifact, re-serializes its codes with the byte shuffle (zstd's winning layout), then compresses
that payload once per level on this machine's CPU (single-threaded, as export does per candidate). Seconds
depend on the CPU; bytes do not.
"""

import json
import sys
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def main() -> None:
    path, levels = sys.argv[1], [int(a) for a in sys.argv[2:]] or [17, 18, 19, 22]
    qstate, meta = tg.decode_artifact(Path(path).read_bytes())
    raw = tg._serialize(qstate, meta, shuffle=True)
    for level in levels:
        t0 = time.perf_counter()
        n = len(zstandard.ZstdCompressor(level=level).compress(raw))
        print(
            json.dumps(
                dict(
                    artifact=Path(path).name,
                    payload_bytes=len(raw),
                    level=level,
                    bytes=n,
                    seconds=round(time.perf_counter() - t0, 1),
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
