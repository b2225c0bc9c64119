"""data.devset: the real dev set when `make setup` has built it, and always the build itself on a tiny
stand-in for ../shared (the same sub-layout, with the real sp1024 tokenizer and fineweb_dev files)."""

from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm

from data import devset
from data.prepare import iter_texts, read_manifest, train_tokenizer
from data.shards import check_shard
from train_gpt import BOS_ID, load_shard, load_sidecar

DATASETS = Path(__file__).resolve().parents[1] / "data" / "datasets"


@pytest.mark.parametrize("variant", ["sp1024", "sp8192"])
def test_real_devset(shared, variant):
    folder = DATASETS / f"devset_{variant}"
    manifest = read_manifest(str(folder))
    if manifest is None:
        pytest.skip(f"{folder} not built (make devset)")
    assert manifest["complete"] and set(manifest["splits"]) == {"train", "val"}
    vocab = int(variant[2:])
    for split in manifest["splits"].values():
        for s in split["shards"]:
            assert check_shard(str(folder / s["file"]), vocab) == (s["tokens"], s["docs"])
    assert manifest["splits"]["val"]["docs"] == 515
    dev = shared / "data" / "fineweb_dev" / f"fineweb_val_{variant}.bin"
    copy = DATASETS / f"devset_{variant}_fineweb_dev" / "fineweb_val_000000.bin"
    assert copy.read_bytes() == dev.read_bytes()
    model = devset.TOKENIZERS[variant]
    copy, real = DATASETS.parent / "tokenizers" / model, shared / "data" / "tokenizers" / model
    assert copy.read_bytes() == real.read_bytes()


@pytest.fixture
def fake_shared(shared, tmp_path) -> Path:
    """shared/data with 2 proxy sources of 60 docs, 10 proxy_val docs, and the real fineweb_dev/tokenizer."""
    root, real = tmp_path / "shared", shared / "data"
    texts = list(iter_texts(str(real / "fineweb_dev" / "fineweb_train_docs.jsonl")))
    for sub, name, docs in [
        ("proxy", "b_second.jsonl.xz", texts[60:120]),
        ("proxy", "a_first.jsonl.xz", texts[:60]),
        ("proxy_val", "proxy_val.jsonl.xz", texts[120:130]),
    ]:
        (root / "data" / sub).mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"text": t, "source": "test"}) + "\n" for t in docs)
        (root / "data" / sub / name).write_bytes(lzma.compress(lines.encode()))
    for sub, name in [
        ("fineweb_dev", "fineweb_val_docs.jsonl"),
        ("fineweb_dev", "fineweb_val_sp1024.bin"),
        ("tokenizers", "fineweb_1024_bpe.model"),
    ]:
        (root / "data" / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real / sub / name, root / "data" / sub / name)
    return root


def test_build_skip_and_repair_on_a_stand_in(fake_shared, tmp_path, run_cli, capsys):
    out = tmp_path / "data" / "datasets"
    proc = run_cli("data.devset", "--shared", fake_shared, "--variants", "sp1024", "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "devset_sp1024 (built in" in proc.stdout
    assert "train 120 docs" in proc.stdout and "val 10 docs" in proc.stdout
    assert "fineweb_dev 700 docs 817,103 tokens" in proc.stdout
    folder = out / "devset_sp1024"
    assert sorted(os.listdir(folder)) == ["fineweb_train_000000.bin", "fineweb_val_000000.bin", "manifest.json"]
    real = fake_shared / "data"
    assert (out / "devset_sp1024_fineweb_dev" / "fineweb_val_000000.bin").read_bytes() == (
        real / "fineweb_dev" / "fineweb_val_sp1024.bin"
    ).read_bytes()
    assert (out.parent / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == (
        real / "tokenizers" / "fineweb_1024_bpe.model"
    ).read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(real / "tokenizers" / "fineweb_1024_bpe.model"))
    first = [BOS_ID] + sp.encode(next(iter_texts(str(real / "proxy" / "a_first.jsonl.xz"))))
    assert list(load_shard(str(folder / "fineweb_train_000000.bin"))[: len(first)]) == first  # sorted file order

    args = ["--shared", str(fake_shared), "--variants", "sp1024", "--out", str(out), "--workers", "1"]
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert devset.main(args) == 0 and "devset_sp1024 (up to date)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp

    with open(folder / "fineweb_train_000000.bin", "r+b") as f:  # a truncated shard is noticed and rebuilt
        f.truncate(5000)
    assert devset.main(args) == 0 and "devset_sp1024 (built in" in capsys.readouterr().out
    assert check_shard(str(folder / "fineweb_train_000000.bin"), 1024)[1] == 120


def test_refuses_training_docs_from_either_val_set(fake_shared, tmp_path, capsys):
    real = fake_shared / "data"
    args = ["--shared", str(fake_shared), "--variants", "sp1024", "--out", str(tmp_path / "datasets")]
    for val in [real / "fineweb_dev" / "fineweb_val_docs.jsonl", real / "proxy_val" / "proxy_val.jsonl.xz"]:
        leak = json.dumps({"text": list(iter_texts(str(val)))[3]}) + "\n"
        (real / "proxy" / "c_leak.jsonl.xz").write_bytes(lzma.compress(leak.encode()))
        assert devset.main(args) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        assert "c_leak.jsonl.xz:1: this training document is also a validation" in err[0]
    assert not (tmp_path / "datasets" / "devset_sp1024").exists()


def test_missing_shared_is_one_line(tmp_path, capsys):
    assert devset.main(["--shared", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no *.jsonl.xz files (is --shared right?)" in err[0]


def test_own_tokenizer_and_caseops(shared, fake_shared, tmp_path, capsys):
    """--tokenizer MODEL: devset_<stem> and the FineWeb dev docs tokenized with MODEL (the official sp1024 model
    gives the official dev shard byte for byte); --caseops adds each val shard's sidecar, which sums to the
    documents' UTF-8 bytes, and a truncated sidecar is noticed and rebuilt."""
    real, out = fake_shared / "data", tmp_path / "datasets"
    official = real / "tokenizers" / "fineweb_1024_bpe.model"
    args = ["--shared", str(fake_shared), "--out", str(out), "--workers", "2"]
    assert devset.main([*args, "--tokenizer", str(official)]) == 0
    assert "devset_fineweb_1024_bpe (built in" in capsys.readouterr().out
    dev = out / "devset_fineweb_1024_bpe_fineweb_dev" / "fineweb_val_000000.bin"
    assert dev.read_bytes() == (real / "fineweb_dev" / "fineweb_val_sp1024.bin").read_bytes()

    model = tmp_path / "co_512.model"
    train_tokenizer([str(shared / "data" / "fineweb_dev" / "fineweb_train_docs.jsonl")], 512, str(model), caseops=True)
    assert devset.main([*args, "--tokenizer", str(model), "--caseops"]) == 0
    assert "devset_co_512 (built in" in capsys.readouterr().out
    assert (out.parent / "tokenizers" / "co_512.model").read_bytes() == model.read_bytes()
    for folder, docs in [("devset_co_512", real / "proxy_val" / "proxy_val.jsonl.xz"), (dev.parent.name, None)]:
        pattern = str(out / folder.replace("fineweb_1024_bpe", "co_512") / "fineweb_val_*.bin")
        texts = list(iter_texts(str(docs or real / "fineweb_dev" / "fineweb_val_docs.jsonl")))
        assert int(load_sidecar(pattern).sum()) == sum(len(t.encode("utf-8")) for t in texts)
    assert not list((out / "devset_co_512").glob("fineweb_train_bytes_*"))
    side = out / "devset_co_512_fineweb_dev" / "fineweb_val_bytes_000000.bin"
    with open(side, "r+b") as f:
        f.truncate(5000)
    assert devset.main([*args, "--tokenizer", str(model), "--caseops"]) == 0
    assert "devset_co_512 (built in" in capsys.readouterr().out
    assert (
        len(load_sidecar(str(side.parent / "fineweb_val_*.bin")))
        == read_manifest(str(side.parent))["splits"]["val"]["tokens"]
    )
    assert devset.main([*args, "--tokenizer", str(model), "--caseops"]) == 0
    assert "devset_co_512 (up to date)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        devset.main([*args, "--caseops"])  # a CaseOps build needs its tokenizer
    capsys.readouterr()
    assert devset.main([*args, "--tokenizer", str(tmp_path / "nope.model")]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'nope.model'}: no such file"]
