"""CaseOps (issue 28): the transform inverts on real and adversarial text, a CaseOps tokenizer's byte sidecar
sums to the original bytes of every FineWeb dev document, and train_gpt.py counts the sidecar, not the pieces."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch

import train_gpt as tg
from data import caseops as co
from data.check_bpb import check_caseops, official_rule
from data.prepare import PrepareError, train_tokenizer
from data.shards import write_shard
from ngram_eval._impl import target_bytes
from tests.conftest import REPO, SHARED, SP1024, TINY

DOCS = SHARED / "data/fineweb_dev/fineweb_val_docs.jsonl"
ADVERSARIAL = [
    "",
    "A",
    "I am HERE, McDonald's iPhone.",
    "STRAßE İstanbul ǅemal ΣΊΣΥΦΟΣ ς Ω",  # no one-letter upper case, dotted I, a title-case digraph, final sigma
    "\ue000\ue001 x \ue002\ue003 ABC\ue000def",  # the control characters themselves, inside and beside words
    "Kelvin \u212a, \ufb01ne, E\u0301COLE \u00c9cole",  # a sign that lowercases to ASCII, a ligature, accents
    "  two  spaces\n\ttab\r\n",
]


def texts(n: int | None = None) -> list[str]:
    lines = DOCS.read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="module")
def sp(shared, tmp_path_factory) -> spm.SentencePieceProcessor:
    """A 1024-piece CaseOps tokenizer trained on the 200 FineWeb train-pool documents (seconds)."""
    path = tmp_path_factory.mktemp("caseops") / "caseops_1024.model"
    train_tokenizer([str(SHARED / "data/fineweb_dev/fineweb_train_docs.jsonl")], 1024, str(path), caseops=True)
    model = spm.SentencePieceProcessor(model_file=str(path))
    co.check_tokenizer(model, str(path))
    return model


def test_transform_inverts_on_dev_docs_and_adversarial_strings(shared):
    for t in texts() + ADVERSARIAL:
        assert co.decode(co.encode(t)) == t
    rng, pool = random.Random(0), "aAbBzZßẞİıiIǅǄǆΣσςΊίΩω\u212ak \n1_\ue000\ue001\ue002\ue003éÉ\u0301ﬁ"
    for _ in range(5000):
        t = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        assert co.decode(co.encode(t)) == t, repr(t)
    assert co.encode("The USA, iPhone") == f"{co.TITLE}the{co.UPPER} usa, i{co.CAP}phone"
    assert co.encode("x  McD\nThe") == f"x {co.CAP} mc{co.CAP}d\n{co.TITLE}the"  # one space moves, not \n


def test_sidecar_sums_to_the_original_bytes_of_every_dev_doc(sp):
    """data.check_bpb --caseops on the 700 FineWeb dev documents: the tokens invert to each document, and their
    sidecar counts sum to its UTF-8 bytes; the pieces' own bytes (the official rule on these tokens) do not."""
    docs = texts()
    report = check_caseops(sp, docs)
    assert report.matched == report.docs == 700 and report.first_bad is None
    assert report.bytes == sum(len(t.encode("utf-8")) for t in docs)
    rule, pieces = official_rule(sp), 0
    for t in docs[:100]:
        ids = torch.tensor([tg.BOS_ID] + sp.encode(co.encode(t)))
        pieces += int(rule(ids[:-1], ids[1:]).sum())
    assert pieces > sum(len(t.encode("utf-8")) for t in docs[:100])  # 3 bytes a control, counted as text


def test_check_bpb_finds_a_wrong_count(sp, monkeypatch):
    real = co.byte_counts
    monkeypatch.setattr(co, "byte_counts", lambda s, ids: (lambda t, c: (t, [c[0] + 1, *c[1:]]))(*real(s, ids)))
    report = check_caseops(sp, texts(3))
    assert report.matched == 0 and report.first_bad.startswith("doc 0: sidecar counts")


def test_a_normalising_tokenizer_is_refused(shared):
    with pytest.raises(PrepareError, match="not one piece: not a CaseOps tokenizer"):
        co.check_tokenizer(spm.SentencePieceProcessor(model_file=str(SP1024)), "sp1024")


def test_train_gpt_counts_the_sidecar_on_every_eval_path(sp, tmp_path, run_cli):
    """`data.caseops val` writes the shard and its sidecar; train_gpt loads the sidecar (one error line when it
    does not fit its shard) and every eval path counts the original bytes: the same totals as the documents'
    UTF-8, where the pieces would count other bytes (ngram_eval's offline tools too). Causality holds on the CaseOps
    stream on every path, the n-gram ones included. A val file of another name never reads itself as its sidecar."""
    docs = texts(6)
    model_path = tmp_path / "caseops.model"
    model_path.write_bytes(sp.serialized_model_proto())
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    r = run_cli("data.caseops", "val", "--tokenizer", model_path, "--docs", tmp_path / "docs.jsonl", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    pattern = str(tmp_path / "fineweb_val_*.bin")
    tokens, side = tg.load_val(pattern, 1024), tg.load_sidecar(pattern)
    original = sum(len(t.encode("utf-8")) for t in docs)
    assert int(side.sum()) == original and len(side) == len(tokens) and int(side[tokens == tg.BOS_ID].sum()) == 0
    torch.manual_seed(0)
    h = tg.Hyperparameters({**TINY, "TTT_DOCS": "4", "TTT_CHUNK": "16"})
    model = tg.GPT(h)
    luts = tg.build_byte_luts(sp, 1024)
    paths = ["plain", "sliding", "ttt", "ngram", "ttt_ngram"]
    tg.load_plugin("ngram_mix")  # the n-gram paths' mixer, as preflight loads it
    caseops = tg.run_evals(model, h, {"val": tokens}, {"val": side}, torch.device("cpu"), lambda s: None, paths)
    pieces = tg.run_evals(model, h, {"val": tokens}, luts, torch.device("cpu"), lambda s: None, paths)
    for p in paths:
        assert caseops[f"val/{p}"]["bytes"] == original != pieces[f"val/{p}"]["bytes"]
        assert caseops[f"val/{p}"]["bpb"] > pieces[f"val/{p}"]["bpb"]  # the pieces' 3 bytes a control flatter it
    other = tokens.clone()
    other[300:] = torch.where(other[300:] == tg.BOS_ID, tg.BOS_ID, 7)
    for p in paths[1:]:  # the legality probe of every path on the CaseOps stream: what follows t moves nothing before
        a = tg.run_evals(model, h, {"val": other}, {"val": side}, torch.device("cpu"), lambda s: None, [p])
        torch.testing.assert_close(a[f"val/{p}"]["nll"][:299], caseops[f"val/{p}"]["nll"][:299], rtol=0, atol=1e-6)
    shard = str(tmp_path / "fineweb_val_000000.bin")
    assert int(target_bytes(tokens, str(model_path), 1024, shard).sum()) == original  # ngram_eval's tools count it
    assert int(target_bytes(tokens, str(model_path), 1024).sum()) != original
    (tmp_path / "dev.bin").write_bytes(open(shard, "rb").read())
    assert tg.load_sidecar(str(tmp_path / "dev.bin")) is None  # another name never counts itself as its sidecar
    write_shard(str(tmp_path / "fineweb_val_bytes_000000.bin"), np.zeros(5, dtype=np.int64))
    with pytest.raises(tg.ShardError, match="5 byte counts for the .* tokens of"):
        tg.load_sidecar(pattern)
    write_shard(str(tmp_path / "fineweb_val_bytes_000000.bin"), side.numpy())
    write_shard(str(tmp_path / "fineweb_val_000001.bin"), np.asarray([tg.BOS_ID, 5]))
    with pytest.raises(tg.ShardError, match="fineweb_val_bytes_000001.bin: missing"):
        tg.load_sidecar(pattern)


def test_prepare_writes_caseops_shards_with_val_sidecars(shared, tmp_path, run_cli):
    """data.prepare --caseops --train-tokenizer: a CaseOps tokenizer, train shards of CaseOps text, val shards
    (split across shards like any document) with a sidecar each that sums to the val documents' bytes; the
    same bytes at 1 and 2 workers, and every val document decodes back to itself."""
    train, val = SHARED / "data/fineweb_dev/fineweb_train_docs.jsonl", tmp_path / "val.jsonl"
    docs = texts(20)
    val.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        args = ["--docs", train, "--val-docs", val, "--out", out, "--train-tokenizer", "--vocab-size", "512"]
        r = run_cli("data.prepare", *args, "--caseops", "--shard-tokens", "5000", "--workers", w)
        assert r.returncode == 0, r.stderr
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()})
    assert outs[0] == outs[1] and "fineweb_val_bytes_000001.bin" in outs[0]
    out = tmp_path / "w1"
    tokens, side = tg.load_val(str(out / "fineweb_val_*.bin"), 512), tg.load_sidecar(str(out / "fineweb_val_*.bin"))
    assert int(side.sum()) == sum(len(t.encode("utf-8")) for t in docs)
    model = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    starts = [*torch.nonzero(tokens == tg.BOS_ID).flatten().tolist(), len(tokens)]
    back = [co.byte_counts(model, tokens[a + 1 : b].tolist())[0] for a, b in zip(starts, starts[1:])]
    assert back == docs and json.loads((out / "manifest.json").read_text())["format"]["caseops"] is True
    assert not list(out.glob("fineweb_train_bytes_*"))


def test_a_caseops_run_logs_its_accounting_and_verifies(shared, tmp_path, run_cli):
    """End to end: data.prepare --caseops (train + val with sidecar, a trained CaseOps tokenizer), a tiny
    train_gpt.py run on it (its log says it counts the sidecar; its val bytes are the documents' UTF-8 bytes),
    and quant.verify re-scores the artifact to the logged bpb with the same accounting."""
    val = tmp_path / "val.jsonl"
    docs = texts(8)
    val.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    data = tmp_path / "data"
    train = SHARED / "data/fineweb_dev/fineweb_train_docs.jsonl"
    args = ["--docs", train, "--val-docs", val, "--out", data, "--train-tokenizer", "--vocab-size", "1024"]
    r = run_cli("data.prepare", *args, "--caseops", "--workers", "1")
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1", **TINY, "ITERATIONS": "3", "CODECS": "zlib", "RUN_ID": "co"}
    env |= {"DATA_PATH": str(data), "TOKENIZER_PATH": str(data / "tokenizer.model"), "EVAL_PATHS": "sliding"}
    script = str(REPO / "train_gpt.py")
    p = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    log = (tmp_path / "logs/co.txt").read_text()
    line = next(l for l in log.splitlines() if l.startswith("eval val sliding:"))
    assert "\nbytes: val counts its byte sidecar\n" in log
    assert f" bytes {sum(len(t.encode('utf-8')) for t in docs)}" in line
    r = run_cli("quant.verify", tmp_path / "artifacts/co.pgq", "--code", script, "--log", tmp_path / "logs/co.txt")
    assert r.returncode == 0, r.stdout + r.stderr
