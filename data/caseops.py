"""Lossless case operations (CaseOps): words are lowercased and their capitalisation moves to four reserved
control characters, so "The" and "the" share one lexical token; BPB stays charged on the original bytes
through a per-token byte sidecar.

    python -m data.caseops tokenizer --docs DOCS.jsonl[.xz] ... --vocab-size V --out MODEL
    python -m data.caseops val --tokenizer MODEL --docs DOCS.jsonl[.xz] --out DIR   (DIR/fineweb_val_[bytes_]000000.bin)

The transform (our own definition; the idea is the 2026-04-18 record's). A word is a maximal run of letters
(str.isalpha). A letter is foldable when it is upper case and lowercases to one lower-case letter that
uppercases back to it (so "ß", "İ" or title-case digraphs are never folded: they stay as written).
- a word whose first letter is foldable and the rest has no upper case: TITLE + the word lowercased;
- a word of two or more letters, all foldable: UPPER + the word lowercased;
- any other word with a foldable letter: CAP before each foldable letter, which is lowercased;
- a control character in the input: ESC + that character. Everything else is copied.
- a word that starts with TITLE, UPPER or CAP right after a space: that control moves before the space, so the
  tokenizer can still join the space and the word into one piece (" The": TITLE + " the", two tokens where the
  2026-04-18 record's transform, which leaves the control on the word, makes three: a lone space piece).
decode() undoes it exactly: TITLE upper-cases the next letter, UPPER every letter of the run that follows,
CAP the next letter (each first passes one space that directly follows it), ESC passes the next character
through. decode(encode(t)) == t for every string.

Bytes: a CaseOps tokenizer (data.prepare.train_tokenizer with caseops=True) normalises nothing, so its pieces
spell the transformed text exactly and decoding inverts to the raw document. Each token's sidecar count is the
number of original UTF-8 bytes that decoding emits while reading that token's characters: controls emit none,
and the counts of a document sum to len(text.encode()) (data.check_bpb --caseops proves it on real text).
train_gpt.py reads fineweb_val_bytes_N.bin beside each val shard fineweb_val_N.bin (the shard format, one count
per token, 0 for BOS; the published CaseOps data's layout) and counts those bytes on every eval path.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from collections.abc import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from data.prepare import PrepareError, iter_texts, load_tokenizer, train_tokenizer
from data.shards import write_shard
from train_gpt import BOS_ID, SIDECAR

TITLE, UPPER, CAP, ESC = "\ue000", "\ue001", "\ue002", "\ue003"  # Private Use Area: no text means them
CONTROLS = (TITLE, UPPER, CAP, ESC)


def foldable(c: str) -> bool:
    """An upper-case letter that lowercases to one lower-case letter and back to itself."""
    low = c.lower()
    return c.isupper() and len(low) == 1 and low.islower() and low.isalpha() and low.upper() == c


def raise_letter(c: str) -> str:
    """The inverse of folding on a lower-case letter (anything else is returned as it is)."""
    up = c.upper()
    return up if len(up) == 1 and foldable(up) and up.lower() == c else c


def _words(text: str) -> Iterator[tuple[bool, str]]:
    """(is a word, run) over text: maximal runs of letters and of everything else, in order."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or text[i].isalpha() != text[start].isalpha():
            yield text[start].isalpha(), text[start:i]
            start = i


def _encode_word(w: str) -> str:
    folds = [foldable(c) for c in w]
    if not any(folds):
        return w
    if folds[0] and not any(c.isupper() for c in w[1:]):
        return TITLE + w[0].lower() + w[1:]
    if len(w) >= 2 and all(folds):
        return UPPER + "".join(c.lower() for c in w)  # per letter: str.lower() gives a final sigma a word end
    return "".join(CAP + c.lower() if f else c for c, f in zip(w, folds))


def encode(text: str) -> str:
    """The CaseOps text of `text` (see the module docstring)."""
    out = []
    for is_word, run in _words(text):
        if not is_word:
            out.append("".join(ESC + c if c in CONTROLS else c for c in run))
            continue
        word = _encode_word(run)
        if word[0] in CONTROLS and out and out[-1].endswith(" "):  # control, space, word: one " word" piece
            out[-1], word = out[-1][:-1] + word[0], " " + word[1:]
        out.append(word)
    return "".join(out)


class Decoder:
    """decode() one character at a time: push(c) returns the original characters c stands for ('' for a
    control), so a token's original bytes are the bytes its characters push out."""

    def __init__(self):
        self.mode, self.fresh = "", False  # fresh: a control was just read, and may pass one space first

    def push(self, c: str) -> str:
        mode, fresh, self.fresh = self.mode, self.fresh, False
        if mode == ESC:
            self.mode = ""
            return c
        if c in CONTROLS:
            self.mode, self.fresh = c, True
            return ""
        if fresh and c == " ":
            return c
        if mode == UPPER and c.isalpha():
            return raise_letter(c)
        self.mode = ""
        return raise_letter(c) if mode in (TITLE, CAP) else c


def decode(text: str) -> str:
    """The original text of a CaseOps text: decode(encode(t)) == t."""
    d = Decoder()
    return "".join(d.push(c) for c in text)


def token_texts(sp: spm.SentencePieceProcessor, ids: Iterable[int]) -> list[str]:
    """The characters each token completes: pieces with U+2581 as a space, byte-fallback tokens joined into
    UTF-8 characters (a character belongs to the token that completes it). Concatenated: the tokens' text."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = []
    for i in ids:
        piece = sp.id_to_piece(i)
        raw = bytes([int(piece[3:5], 16)]) if sp.is_byte(i) else piece.replace("\u2581", " ").encode("utf-8")
        out.append("" if sp.is_control(i) else utf8.decode(raw))
    return out


def byte_counts(sp: spm.SentencePieceProcessor, ids: list[int]) -> tuple[str, list[int]]:
    """(the original text the CaseOps tokens `ids` of one document stand for, each token's original bytes)."""
    d, text, counts = Decoder(), [], []
    for chars in token_texts(sp, ids):
        out = "".join(d.push(c) for c in chars)
        text.append(out)
        counts.append(len(out.encode("utf-8")))
    return "".join(text), counts


def sidecar(sp: spm.SentencePieceProcessor, ids: list[int], text: str, where: str) -> list[int]:
    """Each of the CaseOps tokens `ids` of `text`: its original bytes; refuses tokens that do not invert to text."""
    back, counts = byte_counts(sp, ids)
    if back != text:
        raise PrepareError(f"{where}: its CaseOps tokens do not invert to it (the tokenizer normalises)")
    return counts


def check_tokenizer(sp: spm.SentencePieceProcessor, name: str) -> None:
    """A CaseOps tokenizer keeps every control a piece of its own and normalises nothing."""
    for c in CONTROLS:
        if sp.encode(c) != [sp.piece_to_id(c)] or sp.is_unknown(sp.piece_to_id(c)):
            raise PrepareError(f"{name}: U+{ord(c):04X} is not one piece: not a CaseOps tokenizer (data.caseops)")
    probe = "A  b\u00a0\ufb01 x\n"
    if "".join(token_texts(sp, sp.encode(encode(probe)))) != encode(probe):
        raise PrepareError(f"{name}: normalises its input (spaces, NFKC): CaseOps bytes would not invert")


def encode_docs(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, sidecar) of documents as a val shard holds them: [BOS] + the CaseOps tokens of each, and each
    token's original bytes (0 for BOS). Refuses a document whose tokens do not invert to it."""
    tokens, counts = [], []
    for doc, text in enumerate(texts):
        ids = sp.encode(encode(text))
        tokens += [BOS_ID, *ids]
        counts += [0, *sidecar(sp, ids, text, f"doc {doc}")]
    return np.asarray(tokens, dtype=np.int64), np.asarray(counts, dtype=np.int64)


def write_val(sp: spm.SentencePieceProcessor, texts: Iterable[str], out: str) -> tuple[int, int]:
    """out/fineweb_val_000000.bin and its sidecar out/fineweb_val_bytes_000000.bin; returns (tokens, bytes)."""
    tokens, counts = encode_docs(sp, texts)
    os.makedirs(out, exist_ok=True)
    write_shard(os.path.join(out, "fineweb_val_000000.bin"), tokens)
    write_shard(os.path.join(out, f"{SIDECAR}000000.bin"), counts)
    return len(tokens), int(counts.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.caseops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer", help="train a CaseOps SentencePiece BPE")
    t.add_argument("--docs", nargs="+", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True)
    v = sub.add_parser("val", help="write a CaseOps val shard and its byte sidecar")
    v.add_argument("--tokenizer", required=True)
    v.add_argument("--docs", required=True)
    v.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "tokenizer":
            print(f"wrote {train_tokenizer(args.docs, args.vocab_size, args.out, caseops=True)}")
        else:
            sp = load_tokenizer(args.tokenizer)
            check_tokenizer(sp, args.tokenizer)
            n, b = write_val(sp, iter_texts(args.docs), args.out)
            print(f"wrote {args.out}/fineweb_val_000000.bin ({n} tokens) and its sidecar ({b} original bytes)")
    except (PrepareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
