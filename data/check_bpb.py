"""Check train_gpt.py's byte accounting against the tokenizer's own decoding, document by document.

    python -m data.check_bpb --tokenizer MODEL --docs DOCS.jsonl[.xz] [--caseops]

Each document is scored as the validation set is: [BOS] + sp.encode(text), every text token a target
whose predecessor is the token before it (BOS for the first). The bytes the rule counts must equal
len(sp.decode(text ids).encode("utf-8")): the bytes of exactly the text those tokens stand for. (The
decoder drops the U+2581 of a first piece, as the rule does after BOS, and the tokenizer's
normalisation means that text can differ from the raw input, e.g. collapsed whitespace; the tokens,
not the raw input, are what a model is scored on.) Exits 1 at any mismatch, naming the first bad
token. `tokens` in the summary counts BOS, as a shard does.

--caseops checks a CaseOps tokenizer (data/caseops.py) instead: each document's CaseOps tokens must decode and
invert to the document itself, and the byte sidecar's counts must sum to its UTF-8 bytes (the pieces' own bytes
would count the control characters and the lowercased text instead).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sentencepiece as spm
import torch
from torch import Tensor

from data.prepare import PrepareError, iter_texts, load_tokenizer
from train_gpt import BOS_ID, build_byte_luts, token_bytes

ByteRule = Callable[[Tensor, Tensor], Tensor]  # (prev ids, target ids) -> bytes of each target


def official_rule(sp: spm.SentencePieceProcessor) -> ByteRule:
    luts = build_byte_luts(sp, sp.vocab_size())
    return lambda prev, tgt: token_bytes(prev, tgt, luts)


def decoded_bytes(sp: spm.SentencePieceProcessor, ids: list[int]) -> int:
    return len(sp.decode(ids).encode("utf-8"))


def spans(sp: spm.SentencePieceProcessor, ids: list[int]) -> list[tuple[int, int]]:
    """[start, end) over ids[1:]: one token each, except byte-fallback tokens grouped into whole UTF-8
    characters, the smallest units whose decoded bytes are well defined."""
    out: list[tuple[int, int]] = []
    for i in range(1, len(ids)):
        continuation = sp.is_byte(ids[i]) and 0x80 <= int(sp.id_to_piece(ids[i])[3:5], 16) < 0xC0
        if continuation and out and sp.is_byte(ids[out[-1][1] - 1]):
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def first_mismatch(sp: spm.SentencePieceProcessor, doc: int, ids: list[int], counts: list[int]) -> str:
    """Name the first span whose counted bytes differ from the growth of the decoded prefix.
    Decodes every prefix (quadratic), which is fine: it only runs on a failing document."""
    done = 0
    for start, end in spans(sp, ids):
        upto = decoded_bytes(sp, ids[1:end])
        got = sum(counts[start - 1 : end - 1])
        if got != upto - done:
            toks = ", ".join(f"id {i} {sp.id_to_piece(i)!r}" for i in ids[start:end])
            return (
                f"doc {doc}: counted {sum(counts)} bytes, decoding gives {decoded_bytes(sp, ids[1:])}; "
                f"first bad token {start} ({toks}): counted {got}, expected {upto - done}"
            )
        done = upto
    raise AssertionError("document totals differ but no span does")


@dataclass
class Report:
    docs: int = 0
    matched: int = 0
    bytes: int = 0
    tokens: int = 0
    first_bad: str | None = None

    def line(self) -> str:
        return (
            f"bytes match: {self.matched}/{self.docs} docs, bytes={self.bytes}, tokens={self.tokens}, "
            f"bytes_per_token={self.bytes / max(self.tokens, 1):.4f}"
        )


def check_docs(sp: spm.SentencePieceProcessor, texts: Iterable[str], rule: ByteRule | None = None) -> Report:
    rule = rule or official_rule(sp)
    report = Report()
    for doc, text in enumerate(texts):
        ids = [BOS_ID] + sp.encode(text)
        t = torch.tensor(ids)
        counts = rule(t[:-1], t[1:]).tolist()
        counted, expected = sum(counts), decoded_bytes(sp, ids[1:])
        report.docs += 1
        report.bytes += counted
        report.tokens += len(ids)
        if counted == expected:
            report.matched += 1
        elif report.first_bad is None:
            report.first_bad = first_mismatch(sp, doc, ids, counts)
    return report


def check_caseops(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> Report:
    """Per document: the CaseOps tokens decode and invert to the text, and their sidecar counts sum to its bytes."""
    from data import caseops

    report = Report()
    for doc, text in enumerate(texts):
        ids = sp.encode(caseops.encode(text))
        back, counts = caseops.byte_counts(sp, ids)
        expected = len(text.encode("utf-8"))
        report.docs, report.bytes, report.tokens = (
            report.docs + 1,
            report.bytes + sum(counts),
            report.tokens + len(ids) + 1,
        )
        if back == text and sum(counts) == expected:
            report.matched += 1
        elif report.first_bad is None:
            at = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
            report.first_bad = (
                f"doc {doc}: sidecar counts {sum(counts)} bytes, the text has {expected}; "
                f"decoded text {'equals' if back == text else f'differs at character {at}'}"
            )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.check_bpb", description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    parser.add_argument("--docs", required=True, help='.jsonl or .jsonl.xz of {"text": ...}')
    parser.add_argument("--caseops", action="store_true", help="a CaseOps tokenizer: check inversion and sidecar")
    args = parser.parse_args(argv)
    try:
        sp = load_tokenizer(args.tokenizer)
        if args.caseops:
            from data.caseops import check_tokenizer

            check_tokenizer(sp, args.tokenizer)
        report = (check_caseops if args.caseops else check_docs)(sp, iter_texts(args.docs))
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.line())
    if report.first_bad:
        print(f"error: {report.first_bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
