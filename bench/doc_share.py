"""How much of a full causal window the document mask leaves: sum over documents of len^2 / T^2 per
TRAIN_SEQ_LEN window, averaged over windows (the MFU formula of bench/proxy_run.py counts the full window).
Usage: python bench/doc_share.py 'data/datasets/devset_sp8192/fineweb_train_*.bin' [--seq 2048] [--windows 2000]
Also prints the share for step_profile.py's synthetic rows (a BOS every 1,000 tokens). CPU only.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def share(windows: np.ndarray) -> float:
    """Mean over (n, T) windows of sum(len^2) / T^2, the lengths being the sequences train_gpt's varlen mask
    cuts (one per row and document)."""
    ids = torch.from_numpy(windows.astype(np.int64))
    lens = tg.AttnMask(ids, True, "varlen").cu.diff().double()
    return float((lens**2).sum() / ids.numel() / ids.size(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("pattern")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=2000)
    a = ap.parse_args()
    tokens = np.concatenate([tg.load_shard(f) for f in tg.shard_files(a.pattern)])
    n = len(tokens) // a.seq
    picks = range(0, n, max(1, n // a.windows))
    real = share(np.stack([tokens[i * a.seq : (i + 1) * a.seq] for i in picks]))
    synthetic = np.full((1, a.seq), 4, dtype=tokens.dtype)
    synthetic[:, ::1000] = tg.BOS_ID
    print(
        f"within-document share of the causal window: {real:.3f} over {len(picks)} windows of {a.seq}; "
        f"step_profile's synthetic rows: {share(synthetic):.3f}"
    )


if __name__ == "__main__":
    main()
