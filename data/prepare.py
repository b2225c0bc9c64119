"""Tokenize JSONL documents into official-format shards.

    python -m data.prepare --docs FILE.jsonl[.xz]... --tokenizer MODEL --out DIR [--val-docs FILE...]
        [--shard-tokens N] [--workers W] [--train-tokenizer --vocab-size V [--tokenizer-docs N]] [--caseops]
        [--drop-val-overlap]

Each document {"text": ...} becomes [BOS] + sp.encode(text), no EOS, like the official export.
Documents are packed whole into fineweb_train_NNNNNN.bin (fineweb_val_NNNNNN.bin for --val-docs)
of at most --shard-tokens tokens; only a document longer than a shard is split. DIR/manifest.json
(written last) lists every shard with its docs, tokens and sha256, the tokenizer and the sources.
A training document whose stripped text is also a validation document is refused: nothing is
written (--drop-val-overlap leaves such documents out and counts them). The output is byte-identical for any --workers.
--caseops tokenizes the CaseOps text of each document (data/caseops.py; the tokenizer must be a CaseOps one,
or --train-tokenizer trains one) and writes beside each val shard its byte sidecar fineweb_val_bytes_NNNNNN.bin:
each token's bytes of the original text, which train_gpt.py counts instead of the pieces'.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import itertools
import json
import lzma
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import sentencepiece as spm

from data.shards import write_shard
from train_gpt import BOS_ID, HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, SIDECAR, ShardError, read_shard_header

SHARD_TOKENS = 100_000_000  # the official export's shard size
BATCH_CHARS = 1 << 20  # text per worker task: small enough to balance 16 workers, large enough to amortise IPC
STAGE = ".prepare-tmp"  # inside DIR, so publishing is a rename on the same filesystem


class PrepareError(Exception):
    """Bad input or a refused request; the message is one line."""


# -----------------------------------------------------------------------------
# documents

Line = tuple[str, int, str]  # (path, line number, the line): a document before parsing


def iter_lines(paths: Iterable[str]) -> Iterator[Line]:
    """The non-blank lines of .jsonl / .jsonl.xz files, in order."""
    for path in paths:
        opener = lzma.open if path.endswith(".xz") else open
        lineno = 0
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield path, lineno, line
        except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as e:
            where = f"{path}:{lineno + 1}" if lineno else path
            raise PrepareError(f"{where}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def parse_doc(path: str, lineno: int, line: str) -> str:
    try:
        text = json.loads(line)["text"]
        text.encode("utf-8")  # lone surrogates from \ud800 escapes would crash the tokenizer
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PrepareError(f'{path}:{lineno}: not a JSON object with a "text" string') from None
    return text


def iter_texts(path: str) -> Iterator[str]:
    """The "text" of each document of a .jsonl or .jsonl.xz file."""
    return (parse_doc(*line) for line in iter_lines([path]))


def text_key(text: str) -> bytes:
    """Identity of a document for the overlap check: exact text after strip()."""
    return hashlib.blake2b(text.strip().encode("utf-8"), digest_size=16).digest()


EMPTY_KEY = text_key("")  # empty documents carry nothing to leak; they never count as overlap


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# tokenization: worker processes parse and encode batches of lines; results come back in input order

_SP: spm.SentencePieceProcessor | None = None
_CASEOPS = False


def load_tokenizer(path: str) -> spm.SentencePieceProcessor:
    try:
        sp = spm.SentencePieceProcessor(model_file=path)
    except (OSError, RuntimeError):
        raise PrepareError(f"{path}: not a readable SentencePiece model") from None
    if sp.bos_id() != BOS_ID or sp.vocab_size() > 2**16:
        raise PrepareError(
            f"{path}: need bos_id={BOS_ID} and at most 65536 pieces for uint16 shards "
            f"(has bos_id={sp.bos_id()}, {sp.vocab_size()} pieces)"
        )
    return sp


def _init_worker(model: str, caseops: bool = False) -> None:
    global _SP, _CASEOPS
    _SP, _CASEOPS = load_tokenizer(model), caseops


Encoded = tuple[str, int, bytes, np.ndarray]  # (path, line number, text key, [BOS] + ids)
Encoder = Callable[..., Iterator[Encoded]]  # (paths, sides) -> their documents, encoded (+ byte counts)


def _encode_batch(job: tuple[list[Line], bool]) -> tuple[list[tuple[str, int]], list[bytes], np.ndarray, np.ndarray]:
    """(where, text keys, lengths, [BOS] + ids of each document); with sides (CaseOps val) also each token's
    original bytes, stacked under the ids."""
    lines, sides = job
    texts = [parse_doc(*line) for line in lines]  # parsed here, not in the parent: it is a third of the work
    co = caseops_module() if _CASEOPS else None
    ids = _SP.encode(
        [co.encode(t) for t in texts] if co else texts, add_bos=True, num_threads=1
    )  # the processes parallelise
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=int(lengths.sum()))
    if sides:
        counts = []
        for (path, lineno, _), text, doc in zip(lines, texts, ids):
            counts += [0, *co.sidecar(_SP, doc[1:], text, f"{path}:{lineno}")]
        flat = np.stack([flat, np.asarray(counts, dtype=np.uint16)])
    return [line[:2] for line in lines], [text_key(t) for t in texts], lengths, flat


def _batches(lines: Iterable[Line]) -> Iterator[list[Line]]:
    batch, size = [], 0
    for line in lines:
        batch.append(line)
        size += len(line[2])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@contextlib.contextmanager
def encoder(model: str, workers: int, caseops: bool = False) -> Iterator[Encoder]:
    """A function (paths, sides) -> one Encoded per document, in input order whatever the worker count; sides:
    each doc is [ids, original bytes] (CaseOps val). All files go through one pipeline: no worker idles."""
    pool = mp.get_context("fork").Pool(workers, _init_worker, (model, caseops)) if workers > 1 else None
    if pool is None:
        _init_worker(model, caseops)
    imap = pool.imap if pool is not None else map

    def encode(paths: Iterable[str], sides: bool = False) -> Iterator[Encoded]:
        jobs = ((batch, sides) for batch in _batches(iter_lines(paths)))
        for where, keys, lengths, flat in imap(_encode_batch, jobs):
            for (path, lineno), key, doc in zip(where, keys, np.split(flat, np.cumsum(lengths)[:-1], axis=-1)):
                yield path, lineno, key, doc

    try:
        yield encode
    finally:
        if pool is not None:
            pool.terminate()


# -----------------------------------------------------------------------------
# shards


class ShardWriter:
    """Packs whole documents into fineweb_<split>_NNNNNN.bin of at most `cap` tokens."""

    def __init__(self, folder: str, split: str, cap: int):
        self.folder, self.split, self.cap = folder, split, cap
        self.buf: list[np.ndarray] = []
        self.fill = 0
        self.shards: list[dict] = []

    def add(self, doc: np.ndarray) -> None:
        """doc: [BOS] + ids, or [2, n]: those and each token's original bytes (the byte sidecar, CaseOps)."""
        if self.fill and self.fill + doc.shape[-1] > self.cap:
            self.flush()
        while self.fill + doc.shape[-1] > self.cap:  # only a document longer than a whole shard gets here
            take = self.cap - self.fill
            self.buf.append(doc[..., :take])
            self.fill += take
            self.flush()
            doc = doc[..., take:]
        self.buf.append(doc)
        self.fill += doc.shape[-1]

    def flush(self) -> None:
        if not self.fill:
            return
        tokens = np.concatenate(self.buf, axis=-1)
        name = f"fineweb_{self.split}_{len(self.shards):06d}.bin"
        side = {}
        if tokens.ndim == 2:  # CaseOps: the sidecar beside the shard, then the tokens
            side["bytes_file"] = name.replace("fineweb_val_", SIDECAR, 1)
            side["bytes_sha256"] = write_shard(os.path.join(self.folder, side["bytes_file"]), tokens[1])
            tokens = tokens[0]
        sha = write_shard(os.path.join(self.folder, name), tokens)
        docs = int(np.count_nonzero(tokens == BOS_ID))
        self.shards.append({"file": name, "docs": docs, "tokens": int(tokens.size), "sha256": sha, **side})
        self.buf, self.fill = [], 0


def write_split(
    encode: Encoder, paths: list[str], folder: str, split: str, cap: int, forbidden=frozenset(), sides=False, drop=False
) -> tuple[dict, set[bytes]]:
    """Tokenize the documents of `paths` into shards (sides: with CaseOps byte sidecars); return (stats, keys).
    A document in `forbidden` is refused, or with `drop` left out and counted."""
    writer, keys = ShardWriter(folder, split, cap), set()
    docs = tokens = dropped = 0
    for path, lineno, key, doc in encode(paths, sides):
        if key in forbidden and key != EMPTY_KEY:
            if drop:
                dropped += 1
                continue
            raise PrepareError(
                f"{path}:{lineno}: this training document is also a validation document "
                f"(same text after strip); refusing to write shards (--drop-val-overlap leaves such documents out)"
            )
        keys.add(key)
        writer.add(doc)
        docs, tokens = docs + 1, tokens + doc.shape[-1]
    writer.flush()
    return {"docs": docs, "tokens": tokens, "shards": writer.shards} | ({"dropped": dropped} if drop else {}), keys


def train_tokenizer(
    paths: list[str], vocab_size: int, model_path: str, caseops: bool = False, max_docs: int | None = None
) -> str:
    """Train a SentencePiece BPE with the official export's settings into model_path. The model records
    the options given, so num_threads is left at its default (16, as in the official export) and the
    model goes through model_writer, not a path prefix: the file depends on the documents alone.
    caseops: on the CaseOps text, normalising nothing (identity rule, whitespace kept: its pieces spell the
    transformed text, so decoding inverts to the raw document) and with the four controls as pieces.
    max_docs: only the first documents (SentencePiece holds all it trains on in memory: 10B tokens do not fit)."""
    texts = itertools.islice((t.replace("\x00", " ").strip() for p in paths for t in iter_texts(p)), max_docs)
    norm = dict(normalization_rule_name="nmt_nfkc")
    if caseops:
        co = caseops_module()
        texts = map(co.encode, texts)
        norm = dict(
            normalization_rule_name="identity", remove_extra_whitespaces=False, user_defined_symbols=list(co.CONTROLS)
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t for t in texts if t),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.999,
            byte_fallback=True,
            split_digits=True,
            **norm,
            add_dummy_prefix=False,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise PrepareError(f"tokenizer training failed: {str(e).splitlines()[0]}") from None
    with open(model_path, "wb") as f:
        f.write(model.getvalue())
    return model_path


# -----------------------------------------------------------------------------
# the build and its manifest


def _sources(paths: Iterable[str]) -> list[dict]:
    return [{"path": p, "sha256": file_sha256(p)} for p in paths]


def _fingerprint(manifest: dict) -> tuple:
    """What a build depends on: format, tokenizer and source contents (not their paths)."""
    return (
        manifest["format"],
        manifest["tokenizer"]["sha256"],
        {k: [s["sha256"] for s in v] for k, v in manifest["sources"].items()},
    )


def _format(shard_tokens: int, caseops: bool = False) -> dict:
    plain = {
        "magic": SHARD_MAGIC,
        "version": SHARD_VERSION,
        "bos_id": BOS_ID,
        "append_eos": False,
        "shard_tokens": shard_tokens,
    }
    return plain | ({"caseops": True} if caseops else {})  # up_to_date: a CaseOps build is not a plain one


def read_manifest(out: str) -> dict | None:
    try:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def up_to_date(
    out: str,
    train: list[str],
    tokenizer: str,
    val: list[str] = (),
    holdout: list[str] = (),
    shard_tokens: int = SHARD_TOKENS,
    caseops: bool = False,
) -> bool:
    """True if DIR holds a complete build of exactly these inputs and every shard (and sidecar) is whole.
    Shards are checked by header and size, not re-hashed: that catches missing and truncated files."""
    m = read_manifest(out)
    if not m or not m.get("complete"):
        return False
    want = {
        "format": _format(shard_tokens, caseops),
        "tokenizer": {"sha256": file_sha256(tokenizer)},
        "sources": {"train": _sources(train), "val": _sources(val), "holdout": _sources(holdout)},
    }
    try:
        if _fingerprint(m) != _fingerprint(want):
            return False
        for split in m["splits"].values():
            for s in split["shards"]:
                for path in [os.path.join(out, s[k]) for k in ("file", "bytes_file") if k in s]:
                    if (
                        read_shard_header(path) != s["tokens"]
                        or os.path.getsize(path) != HEADER_BYTES + 2 * s["tokens"]
                    ):
                        return False
    except (KeyError, TypeError, ShardError):
        return False
    return True


def _publish(stage: str, out: str, manifest: dict) -> None:
    """Move the staged files into DIR, drop shards of an older build, write the manifest last."""
    manifest_path = os.path.join(out, "manifest.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)  # DIR is not a complete build until the new manifest lands
    for name in sorted(os.listdir(stage)):
        os.replace(os.path.join(stage, name), os.path.join(out, name))
    keep = {
        s[k] for split in manifest["splits"].values() for s in split["shards"] for k in ("file", "bytes_file") if k in s
    }
    for path in glob.glob(os.path.join(out, "fineweb_*_[0-9]*.bin")):
        if os.path.basename(path) not in keep:
            os.remove(path)
    tmp = manifest_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, manifest_path)


def prepare(
    train: list[str],
    out: str,
    tokenizer: str | None = None,
    val: list[str] = (),
    holdout: list[str] = (),
    shard_tokens: int = SHARD_TOKENS,
    workers: int = 1,
    train_vocab: int | None = None,
    caseops: bool = False,
    tokenizer_docs: int | None = None,
    drop_overlap: bool = False,
) -> dict:
    """Build DIR from the documents of `train` (and `val`); `holdout` documents are only checked
    for overlap. Tokenizes with `tokenizer`, or trains DIR/tokenizer.model when train_vocab is set.
    Returns the manifest. On any error DIR is left as it was."""
    if shard_tokens < 1:
        raise PrepareError("--shard-tokens must be positive")
    for p in [*train, *val, *holdout, *([tokenizer] if not train_vocab else [])]:
        if not os.path.isfile(p):
            raise PrepareError(f"{p}: no such file")
    created = not os.path.isdir(out)
    stage = os.path.join(out, STAGE)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        if train_vocab:
            model = os.path.join(stage, "tokenizer.model")
            tokenizer = train_tokenizer(train, train_vocab, model, caseops, tokenizer_docs)
        sp = load_tokenizer(tokenizer)
        if caseops:
            caseops_module().check_tokenizer(sp, tokenizer)
        forbidden = {text_key(t) for p in holdout for t in iter_texts(p)}
        with encoder(tokenizer, workers, caseops) as encode:
            val_stats, val_keys = write_split(encode, list(val), stage, "val", shard_tokens, sides=caseops)
            train_keys = forbidden | val_keys
            train_stats, _ = write_split(encode, train, stage, "train", shard_tokens, train_keys, drop=drop_overlap)
        manifest = {
            "complete": True,
            "format": _format(shard_tokens, caseops),
            "tokenizer": {
                "path": "tokenizer.model" if train_vocab else tokenizer,  # trained: in DIR
                "sha256": file_sha256(tokenizer),
                "vocab_size": sp.vocab_size(),
                **({"trained_on_docs": tokenizer_docs} if train_vocab and tokenizer_docs else {}),
            },
            "sources": {"train": _sources(train), "val": _sources(val), "holdout": _sources(holdout)},
            "splits": {"train": train_stats, **({"val": val_stats} if val else {})},
        }
        _publish(stage, out, manifest)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return manifest


def caseops_module():
    from data import caseops  # it imports this module

    return caseops


def summary(manifest: dict) -> str:
    return ", ".join(
        f"{k} {v['docs']:,} docs {v['tokens']:,} tokens in {len(v['shards'])} shard(s)"
        + (f" ({v['dropped']:,} in val, left out)" if v.get("dropped") else "")
        for k, v in manifest["splits"].items()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--docs", nargs="+", required=True, help="training documents, .jsonl or .jsonl.xz")
    parser.add_argument("--tokenizer", help="SentencePiece .model (not with --train-tokenizer)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-docs", nargs="+", default=[], help="validation documents")
    parser.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--train-tokenizer", action="store_true", help="train DIR/tokenizer.model on --docs")
    parser.add_argument("--vocab-size", type=int)
    parser.add_argument("--caseops", action="store_true", help="CaseOps text; val shards get byte sidecars")
    parser.add_argument("--tokenizer-docs", type=int, help="with --train-tokenizer: train on the first N docs only")
    parser.add_argument("--drop-val-overlap", action="store_true", help="leave out (not refuse) train docs in val")
    args = parser.parse_args(argv)
    if args.train_tokenizer != (args.vocab_size is not None) or args.train_tokenizer == (args.tokenizer is not None):
        parser.error("give either --tokenizer MODEL or --train-tokenizer --vocab-size V")
    if args.tokenizer_docs is not None and (not args.train_tokenizer or args.tokenizer_docs < 1):
        parser.error("--tokenizer-docs N (N >= 1) goes with --train-tokenizer")
    t0 = time.perf_counter()
    try:
        manifest = prepare(
            args.docs,
            args.out,
            args.tokenizer,
            args.val_docs,
            shard_tokens=args.shard_tokens,
            workers=args.workers,
            train_vocab=args.vocab_size,
            caseops=args.caseops,
            tokenizer_docs=args.tokenizer_docs,
            drop_overlap=args.drop_val_overlap,
        )
    except (PrepareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {summary(manifest)} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
