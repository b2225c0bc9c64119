"""Build the dev set from the shared data (what `make devset` runs).

    python -m data.devset --shared ../shared [--workers W] [--variants sp1024,sp8192] [--out data/datasets]
    python -m data.devset --shared ../shared --tokenizer MODEL [--caseops]   (variant: MODEL's file stem)

For each variant, in OUT (default data/datasets) and its sibling tokenizers/ folder:
  devset_<variant>/fineweb_train_*.bin   all of <shared>/data/proxy/*.jsonl.xz, in sorted file order
  devset_<variant>/fineweb_val_000000.bin  <shared>/data/proxy_val/proxy_val.jsonl.xz (the primary proxy score)
  devset_<variant>_fineweb_dev/fineweb_val_000000.bin  a byte-identical copy of the real FineWeb dev shard
                                         (--tokenizer: the FineWeb dev docs tokenized with MODEL)
  ../tokenizers/fineweb_<V>_bpe.model    the tokenizer (--tokenizer: MODEL's file name)
--caseops tokenizes the CaseOps text (MODEL must be a CaseOps tokenizer) and writes each val shard's byte sidecar.
Training documents that also occur in proxy_val or the FineWeb dev docs are refused. A variant whose
manifest matches its inputs and whose shards are whole is skipped, so re-running is cheap.
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import os
import shutil
import sys
import time

from data.prepare import PrepareError, prepare, read_manifest, summary, up_to_date
from data.shards import check_shard
from train_gpt import ShardError

TOKENIZERS = {"sp1024": "fineweb_1024_bpe.model", "sp8192": "fineweb_8192_bpe.model"}


def copy_if_different(src: str, dst: str) -> None:
    """Make dst a byte-identical copy of src (via a temp file, so a crash leaves no half copy)."""
    if os.path.isfile(dst) and filecmp.cmp(src, dst, shallow=False):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def build_variant(
    shared: str, variant: str, out: str, workers: int, tokenizer: str | None = None, caseops: bool = False
) -> str:
    """Build (or confirm) one variant; return its summary line. A variant of TOKENIZERS uses the shared tokenizer
    and copies the FineWeb dev shard; with `tokenizer` (your own, e.g. a CaseOps one) the variant is its file's stem
    and the FineWeb dev documents are tokenized with it (CaseOps: with their byte sidecar)."""
    data = os.path.join(shared, "data")
    own = tokenizer is not None
    if own and not os.path.isfile(tokenizer):
        raise PrepareError(f"{tokenizer}: no such file")  # yours: not a --shared problem
    tokenizer = tokenizer or os.path.join(data, "tokenizers", TOKENIZERS[variant])
    train = sorted(glob.glob(os.path.join(data, "proxy", "*.jsonl.xz")))
    val = [os.path.join(data, "proxy_val", "proxy_val.jsonl.xz")]
    holdout = [os.path.join(data, "fineweb_dev", "fineweb_val_docs.jsonl")]
    dev_shard = os.path.join(data, "fineweb_dev", f"fineweb_val_{variant}.bin")
    if not train:
        raise PrepareError(f"{os.path.join(data, 'proxy')}: no *.jsonl.xz files (is --shared right?)")
    for path in [*val, *holdout, *([] if own else [tokenizer, dev_shard])]:
        if not os.path.isfile(path):
            raise PrepareError(f"{path}: no such file (is --shared right?)")

    t0 = time.perf_counter()
    dest, dev = os.path.join(out, f"devset_{variant}"), os.path.join(out, f"devset_{variant}_fineweb_dev")
    built = not up_to_date(dest, train, tokenizer, val, holdout, caseops=caseops)
    if built:
        prepare(train, dest, tokenizer, val, holdout, workers=workers, caseops=caseops)
    if not own:
        copy_if_different(dev_shard, os.path.join(dev, "fineweb_val_000000.bin"))
    elif not up_to_date(dev, [], tokenizer, holdout, caseops=caseops):  # the dev docs are this build's val set
        prepare([], dev, tokenizer, holdout, workers=workers, caseops=caseops)
        built = True
    state = f"built in {time.perf_counter() - t0:.1f} s" if built else "up to date"
    vocab = read_manifest(dest)["tokenizer"]["vocab_size"]
    dev_tokens, dev_docs = check_shard(os.path.join(dev, "fineweb_val_000000.bin"), vocab)
    name = os.path.basename(tokenizer) if own else TOKENIZERS[variant]
    copy_if_different(tokenizer, os.path.join(os.path.dirname(os.path.abspath(out)), "tokenizers", name))
    return (
        f"devset_{variant} ({state}): {summary(read_manifest(dest))}; "
        f"fineweb_dev {dev_docs:,} docs {dev_tokens:,} tokens"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.devset", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", default="../shared", help="folder holding data/{proxy,proxy_val,fineweb_dev,tokenizers}"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", default="sp1024,sp8192")
    parser.add_argument("--out", default=os.path.join("data", "datasets"))
    parser.add_argument("--tokenizer", help="your own SentencePiece model instead: variant devset_<its file stem>")
    parser.add_argument("--caseops", action="store_true", help="with --tokenizer, a CaseOps one (data/caseops.py)")
    args = parser.parse_args(argv)
    variants = [os.path.basename(args.tokenizer).removesuffix(".model")] if args.tokenizer else args.variants.split(",")
    unknown = sorted(set(variants) - set(TOKENIZERS))
    if args.caseops and not args.tokenizer:
        parser.error("--caseops needs --tokenizer (a CaseOps tokenizer: python -m data.caseops tokenizer)")
    if unknown and not args.tokenizer:
        parser.error(f"unknown variant(s) {','.join(unknown)}; choose from {','.join(TOKENIZERS)}")
    t0 = time.perf_counter()
    try:
        for variant in variants:
            print(build_variant(args.shared, variant, args.out, args.workers, args.tokenizer, args.caseops), flush=True)
    except (PrepareError, ShardError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"devset: done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
