"""data.prepare: documents -> official shards + manifest, the val-overlap refusal, determinism across
worker counts, and tokenizer training."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re

import numpy as np
import pytest
import sentencepiece as spm

from data.check_bpb import check_docs
from data.prepare import iter_texts, prepare
from data.shards import check_shard
from train_gpt import BOS_ID, load_shard


@pytest.fixture(scope="module")
def dev(shared):
    d = shared / "data"
    return {
        "train": str(d / "fineweb_dev" / "fineweb_train_docs.jsonl"),
        "val": str(d / "fineweb_dev" / "fineweb_val_docs.jsonl"),
        "sp1024": str(d / "tokenizers" / "fineweb_1024_bpe.model"),
        "shard1024": str(d / "fineweb_dev" / "fineweb_val_sp1024.bin"),
    }


def write_jsonl(path, texts, xz=False) -> str:
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (path.write_bytes(lzma.compress(data)) if xz else path.write_bytes(data))
    return str(path)


def folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_cli_val_shard_is_the_official_one(dev, tmp_path, run_cli):
    # Our export of the 700 dev docs is byte-identical to the official val shard of those docs.
    out = tmp_path / "out"
    proc = run_cli(
        "data.prepare",
        "--docs",
        dev["train"],
        "--val-docs",
        dev["val"],
        "--tokenizer",
        dev["sp1024"],
        "--out",
        out,
        "--workers",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "train 200 docs" in proc.stdout and "val 700 docs 817,103 tokens in 1 shard(s)" in proc.stdout
    assert (out / "fineweb_val_000000.bin").read_bytes() == open(dev["shard1024"], "rb").read()
    assert sorted(os.listdir(out)) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "manifest.json"]


def test_shards_pack_whole_docs_and_match_manifest(dev, tmp_path):
    out = tmp_path / "out"
    m = prepare([dev["train"]], str(out), dev["sp1024"], shard_tokens=100_000, workers=1)
    sp = spm.SentencePieceProcessor(model_file=dev["sp1024"])
    want = np.concatenate([[BOS_ID] + sp.encode(t) for t in iter_texts(dev["train"])])
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 3 and "val" not in m["splits"]
    got = []
    for s in shards:
        path = str(out / s["file"])
        assert check_shard(path, 1024) == (s["tokens"], s["docs"]) and s["tokens"] <= 100_000
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == s["sha256"]
        tokens = load_shard(path)
        assert tokens[0] == BOS_ID  # no document was split: every shard starts a document
        got.append(np.array(tokens))
    assert np.array_equal(np.concatenate(got), want)
    assert sum(s["docs"] for s in shards) == m["splits"]["train"]["docs"] == 200
    assert m["tokenizer"]["sha256"] == hashlib.sha256(open(dev["sp1024"], "rb").read()).hexdigest()
    assert json.loads((out / "manifest.json").read_text()) == m


def test_only_a_doc_longer_than_a_shard_is_split(dev, tmp_path):
    texts = ["short one", "word " * 300, "short two"]
    sp = spm.SentencePieceProcessor(model_file=dev["sp1024"])
    n1, n2, n3 = (1 + len(sp.encode(t)) for t in texts)
    assert n1 < 100 < n2 and n2 % 100 + n3 <= 100
    m = prepare(
        [write_jsonl(tmp_path / "d.jsonl.xz", texts, xz=True)], str(tmp_path / "out"), dev["sp1024"], shard_tokens=100
    )
    shards = m["splits"]["train"]["shards"]
    # the short docs stay whole; the long one starts a shard, and its tail shares one with the next doc
    assert [s["tokens"] for s in shards] == [n1] + [100] * (n2 // 100) + [n2 % 100 + n3]
    assert [s["docs"] for s in shards] == [1, 1] + [0] * (n2 // 100 - 1) + [1]


def test_workers_do_not_change_the_output(dev, tmp_path):
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare(
            [dev["train"], dev["train"]], str(out), dev["sp1024"], [dev["val"]], shard_tokens=200_000, workers=workers
        )
        outs.append(folder_bytes(out))
    assert outs[0] == outs[1] and len(outs[0]) > 4


def test_refuses_val_overlap_and_writes_nothing(dev, tmp_path, run_cli, one_line_error):
    out = tmp_path / "out"
    prepare([dev["train"]], str(out), dev["sp1024"], [dev["val"]])
    before = folder_bytes(out)
    val_doc = next(iter_texts(dev["val"]))
    leaky = write_jsonl(tmp_path / "leaky.jsonl", ["an innocent doc", f"  {val_doc}\n", ""])
    proc = run_cli(
        "data.prepare",
        "--docs",
        dev["train"],
        leaky,
        "--val-docs",
        dev["val"],
        "--tokenizer",
        dev["sp1024"],
        "--out",
        out,
        "--shard-tokens",
        "1000",
    )
    one_line_error(proc, f"{leaky}:2: this training document is also a validation document")
    assert folder_bytes(out) == before  # the previous build is untouched, no new shards, no temp folder
    m = prepare([dev["train"], leaky], str(tmp_path / "dropped"), dev["sp1024"], [dev["val"]], drop_overlap=True)
    assert m["splits"]["train"]["dropped"] == 1 and m["splits"]["train"]["docs"] == 200 + 2  # the empty doc stays


def test_bad_input_is_one_line(dev, tmp_path, run_cli, one_line_error):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "no text key"}\n')
    proc = run_cli("data.prepare", "--docs", bad, "--tokenizer", dev["sp1024"], "--out", tmp_path / "out")
    one_line_error(proc, f"{bad}:2")
    assert not (tmp_path / "out").exists()


def test_rebuild_drops_stale_shards(dev, tmp_path):
    out = tmp_path / "out"
    prepare([dev["train"]], str(out), dev["sp1024"], [dev["val"]], shard_tokens=100_000)
    m = prepare([dev["train"]], str(out), dev["sp1024"], shard_tokens=10_000_000)
    assert sorted(os.listdir(out)) == ["fineweb_train_000000.bin", "manifest.json"]
    assert m["splits"]["train"]["shards"][0]["docs"] == 200


def test_trains_a_tokenizer_with_the_official_settings(dev, tmp_path):
    # A vocab of 320 holds 4 specials, 256 bytes and the ~40 characters of this corpus: ~20 merges.
    texts = [re.sub(r"[^a-z0-9 .,]", "", t.lower()) for t in iter_texts(dev["train"])]
    docs, out = write_jsonl(tmp_path / "small.jsonl", texts), tmp_path / "out"
    m = prepare([docs], str(out), val=[dev["val"]], train_vocab=320, workers=2)
    prepare([docs], str(tmp_path / "w1"), val=[dev["val"]], train_vocab=320, workers=1)
    assert folder_bytes(tmp_path / "w1") == folder_bytes(out)  # tokenizer files included
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.vocab_size() == m["tokenizer"]["vocab_size"] == 320
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    assert sum(sp.is_byte(i) for i in range(320)) == 256  # byte fallback
    assert any(len(sp.id_to_piece(i).lstrip("\u2581")) > 1 for i in range(260, 320))  # it learned merges
    assert sp.encode("2024") == [sp.piece_to_id(c) for c in "2024"]  # split_digits
    assert not sp.id_to_piece(sp.encode("hello world")[0]).startswith("\u2581")  # no dummy prefix
    for s in m["splits"]["train"]["shards"] + m["splits"]["val"]["shards"]:
        check_shard(str(out / s["file"]), 320)
    report = check_docs(sp, iter_texts(dev["val"]))  # our byte accounting holds for our tokenizers too
    assert report.matched == report.docs == 700


def test_tokenizer_docs_trains_on_the_first_documents_only(dev, tmp_path, run_cli):
    """--tokenizer-docs N: the tokenizer learns from the first N training documents (SentencePiece holds what it
    trains on in memory) while every document is still tokenized; the manifest says so. Only with --train-tokenizer."""
    texts = [re.sub(r"[^a-z0-9 .,]", "", t.lower()) for t in iter_texts(dev["train"])]
    first = write_jsonl(tmp_path / "first.jsonl", texts[:50])
    docs = write_jsonl(tmp_path / "all.jsonl", texts)
    capped = prepare([docs], str(tmp_path / "capped"), train_vocab=320, tokenizer_docs=50)
    alone = prepare([first], str(tmp_path / "alone"), train_vocab=320)
    full = prepare([docs], str(tmp_path / "full"), train_vocab=320)
    model = {k: (tmp_path / k / "tokenizer.model").read_bytes() for k in ("capped", "alone", "full")}
    assert model["capped"] == model["alone"] != model["full"]
    assert capped["tokenizer"]["trained_on_docs"] == 50 and "trained_on_docs" not in full["tokenizer"]
    assert capped["splits"]["train"]["docs"] == len(texts) and alone["splits"]["train"]["docs"] == 50
    proc = run_cli(
        "data.prepare", "--docs", docs, "--tokenizer", dev["sp1024"], "--out", tmp_path / "x", "--tokenizer-docs", "5"
    )
    assert proc.returncode == 2 and "--tokenizer-docs N (N >= 1) goes with --train-tokenizer" in proc.stderr
