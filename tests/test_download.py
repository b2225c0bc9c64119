"""data.download against a local stand-in for the Hugging Face hub.

The server answers what huggingface_hub's hf_hub_download (2.x) asks of a dataset repo: HEAD and GET
/datasets/<repo>/resolve/<revision>/<path>, with the X-Repo-Commit, ETag and Content-Length headers it
requires (file_download.get_hf_file_metadata), and 404 + X-Error-Code: EntryNotFound for a missing file.
It can break a transfer off halfway: http_get then retries (with a Range header once it has written
some of the file; a file smaller than its 10 MB chunk is fetched again whole, which is what happens here),
or stall one until released (the test kills the downloader meanwhile). It answers `Range: bytes=N-` with
206 and the rest of the file, as the hub's storage does.
The downloader runs as a subprocess with HF_ENDPOINT pointing here and HF_HOME in tmp.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from data.shards import check_shard, write_shard

REPO_ID = "golf/test-data"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATASET = "datasets/fineweb10B_sp1024"  # under the remote root, and under OUT


class Hub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}  # path in the repo -> content
    cut: set[str] = set()  # paths whose next GET breaks off halfway
    stall: dict[str, int] = {}  # path -> bytes after which its next GET waits for `release`
    release = threading.Event()
    requests: list[str] = []
    ranges: list[str] = []  # the Range headers of GETs

    def _resolve(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        prefix = f"/datasets/{REPO_ID}/resolve/main/"
        name = self.path[len(prefix) :] if self.path.startswith(prefix) else None
        data = self.files.get(name)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "bytes=0-")[1])
        if body and self.headers.get("Range"):
            self.ranges.append(f"{name} {self.headers['Range']}")
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if body and name in self.cut:
            self.cut.discard(name)
            self.wfile.write(data[: len(data) // 2])  # then the connection closes: a broken transfer
        elif body and name in self.stall:
            self.wfile.write(data[start : self.stall.pop(name)])
            self.wfile.flush()
            self.release.wait(60)
        elif body:
            self.wfile.write(data[start:])

    def do_HEAD(self) -> None:
        self._resolve(body=False)

    def do_GET(self) -> None:
        self._resolve(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(shared, tmp_path):
    """Serve a small hub-shaped repo: manifest, 1 val + 3 train shards, the real sp1024 tokenizer."""
    rng = np.random.default_rng(0)
    files = {}
    for name in ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(3)]:
        tokens = rng.integers(2, 1024, 5000)
        tokens[::500] = 1
        write_shard(str(tmp_path / name), tokens)
        files[f"datasets/{DATASET}/{name}"] = (tmp_path / name).read_bytes()
    tok = shared / "data" / "tokenizers"
    for name in ["fineweb_1024_bpe.model", "fineweb_1024_bpe.vocab"]:
        files[f"datasets/tokenizers/{name}"] = (tok / name).read_bytes()
    manifest = {  # the shape openai/parameter-golf's export writes (download_hf_docs_and_tokenize.py)
        "version": "10B",
        "num_docs": 8,
        "num_val_docs": 2,
        "shard_size": 100_000_000,
        "append_eos": False,
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "kind": "sentencepiece_bpe",
                "vocab_size": 1024,
                "bos_id": 1,
                "eos_id": 2,
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            }
        ],
        "datasets": [
            {
                "name": "fineweb10B_sp1024",
                "tokenizer_name": "sp_bpe_1024",
                "vocab_size": 1024,
                "path": DATASET,
                "stats": {"files_train": 3, "files_val": 1},
            }
        ],
    }
    files["datasets/manifest.json"] = json.dumps(manifest).encode()
    Hub.files, Hub.cut, Hub.stall, Hub.requests, Hub.ranges = files, set(), {}, [], []
    Hub.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}  # HF_HUB_OFFLINE too
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1",
    )
    yield files, env
    Hub.release.set()
    server.shutdown()
    server.server_close()


def download(run_cli, env, out: Path, train_shards: int):
    return run_cli(
        "data.download",
        "--variant",
        "sp1024",
        "--train-shards",
        str(train_shards),
        "--repo-id",
        REPO_ID,
        "--out",
        out,
        env=env,
    )


def test_download_layout_validation_and_noop_rerun(hub, tmp_path, run_cli):
    files, env = hub
    out = tmp_path / "data"
    val = f"datasets/{DATASET}/fineweb_val_000000.bin"
    Hub.cut.add(val)
    proc = download(run_cli, env, out, 2)
    assert proc.returncode == 0, proc.stderr
    assert sum(r == f"GET /datasets/{REPO_ID}/resolve/main/{val}" for r in Hub.requests) == 2  # retried
    assert "1 val + 2 train shards (15,000 tokens)" in proc.stdout and "6 file(s) downloaded" in proc.stdout
    local = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert local == {
        "manifest.json",
        "tokenizers/fineweb_1024_bpe.model",
        "tokenizers/fineweb_1024_bpe.vocab",
        "datasets/fineweb10B_sp1024/fineweb_val_000000.bin",
        "datasets/fineweb10B_sp1024/fineweb_train_000000.bin",
        "datasets/fineweb10B_sp1024/fineweb_train_000001.bin",
    }  # no staging left behind
    for path in local:
        assert (out / path).read_bytes() == files[f"datasets/{path}"]
        if path.endswith(".bin"):
            assert check_shard(str(out / path), 1024) == (5000, 10)

    Hub.requests.clear()
    proc = download(run_cli, env, out, 2)
    assert proc.returncode == 0 and "0 file(s) downloaded" in proc.stdout, proc.stderr
    assert Hub.requests == []  # everything present and whole: not one request

    # a missing shard and a truncated one are fetched again; nothing else is
    (out / DATASET / "fineweb_train_000000.bin").unlink()
    with open(out / DATASET / "fineweb_train_000001.bin", "r+b") as f:
        f.truncate(3000)
    proc = download(run_cli, env, out, 2)
    assert proc.returncode == 0 and "2 file(s) downloaded" in proc.stdout, proc.stderr
    assert {r.split()[1].rsplit("/", 1)[1] for r in Hub.requests} == {
        "fineweb_train_000000.bin",
        "fineweb_train_000001.bin",
    }
    for i in range(2):
        assert check_shard(str(out / DATASET / f"fineweb_train_{i:06d}.bin"), 1024) == (5000, 10)


def test_corrupt_shard_is_deleted_and_reported(hub, tmp_path, run_cli, one_line_error):
    files, env = hub
    name = f"datasets/{DATASET}/fineweb_train_000002.bin"
    bad = bytearray(files[name])
    bad[0:4] = np.int32(12345).tobytes()
    files[name] = bytes(bad)
    out = tmp_path / "data"
    proc = download(run_cli, env, out, 3)
    one_line_error(proc, "fineweb_train_000002.bin", "invalid, deleted", "bad magic 12345")
    assert not list(out.rglob("fineweb_train_000002.bin"))  # neither in place nor in the staging folder
    assert check_shard(str(out / DATASET / "fineweb_train_000001.bin"), 1024) == (5000, 10)  # the rest landed


def test_errors_are_one_line(hub, tmp_path, run_cli, one_line_error):
    _, env = hub
    one_line_error(download(run_cli, env, tmp_path / "a", 4), "--train-shards 4", "has 3")
    proc = run_cli(
        "data.download",
        "--variant",
        "sp1024",
        "--train-shards",
        "1",
        "--repo-id",
        "golf/missing",
        "--out",
        tmp_path / "b",
        env=env,
    )
    one_line_error(proc, "datasets/manifest.json from golf/missing")


def test_killed_download_continues_where_it_stopped(hub, tmp_path, run_cli):
    """4365752 (hf_hub_download 2.x: a fresh temp file per process) fetched a killed shard again from byte 0."""
    files, env = hub
    name = f"datasets/{DATASET}/fineweb_train_000000.bin"
    tokens = np.random.default_rng(1).integers(2, 1024, 6_000_000)  # 12 MB: past http_get's 10 MB chunk
    tokens[::500] = 1
    write_shard(str(tmp_path / "big.bin"), tokens)
    files[name] = (tmp_path / "big.bin").read_bytes()
    Hub.stall[name] = 11_000_000  # the first 10 MB chunk reaches the disk, then the transfer hangs
    out = tmp_path / "data"
    args = ["--variant", "sp1024", "--train-shards", "1", "--repo-id", REPO_ID, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "data.download", *args], env=env, cwd=Path(__file__).parents[1])
    part = out / "datasets/.download" / DATASET / "fineweb_train_000000.bin.part"
    deadline = time.time() + 120
    while not (part.is_file() and part.stat().st_size >= 10 * 2**20) and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()  # as a user's Ctrl-C or a lost machine would
    proc.wait()
    Hub.release.set()
    have = part.stat().st_size
    assert have >= 10 * 2**20
    r = download(run_cli, env, out, 1)
    assert r.returncode == 0, r.stderr
    assert f"{name} bytes=" + str(have) + "-" in Hub.ranges  # asked only for the rest
    assert f"continued at byte {have:,}" in r.stdout
    assert (out / DATASET / "fineweb_train_000000.bin").read_bytes() == files[name]
    assert re.search(r"^download: tokenizers/fineweb_1024_bpe.model 254,483 bytes in [\d.]+s$", r.stdout, re.M)


def test_caseops_variant_fetches_val_byte_sidecars(hub, tmp_path, run_cli):
    """--variant sp8192_caseops: the published CaseOps dataset's shards, tokenizer and each val shard's byte
    sidecar (one count per token, checked), laid out as train_gpt.py reads them (load_sidecar); a sidecar that
    does not fit its shard is deleted and reported in one line."""
    import train_gpt as tg

    files, env = hub
    name = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
    manifest = json.loads(files["datasets/manifest.json"])
    manifest["datasets"].append({**manifest["datasets"][0], "name": name, "stats": {"files_train": 1, "files_val": 1}})
    files["datasets/manifest.json"] = json.dumps(manifest).encode()
    for split in ("val", "train"):
        files[f"datasets/datasets/{name}/fineweb_{split}_000000.bin"] = files[
            f"datasets/{DATASET}/fineweb_{split}_000000.bin"
        ]
    write_shard(str(tmp_path / "side.bin"), np.full(5000, 3))
    files[f"datasets/datasets/{name}/fineweb_val_bytes_000000.bin"] = (tmp_path / "side.bin").read_bytes()
    out = tmp_path / "data"
    args = ["--variant", "sp8192_caseops", "--train-shards", "1", "--repo-id", REPO_ID, "--out", out]
    proc = run_cli("data.download", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    folder = out / "datasets" / name
    assert sorted(p.name for p in folder.iterdir()) == [
        "fineweb_train_000000.bin",
        "fineweb_val_000000.bin",
        "fineweb_val_bytes_000000.bin",
    ]
    pattern = str(folder / "fineweb_val_*.bin")  # the sidecar matches this glob too: train_gpt keeps them apart
    assert len(tg.load_val(pattern, 1024)) == 5000 and int(tg.load_sidecar(pattern).sum()) == 15000
    write_shard(str(tmp_path / "side.bin"), np.full(4999, 3))
    files[f"datasets/datasets/{name}/fineweb_val_bytes_000000.bin"] = (tmp_path / "side.bin").read_bytes()
    (folder / "fineweb_val_bytes_000000.bin").unlink()
    proc = run_cli("data.download", *args, env=env)
    assert proc.returncode == 1 and "not one byte count per token" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (folder / "fineweb_val_bytes_000000.bin").exists()


def test_docs_variant_checks_and_splits_the_published_documents(hub, tmp_path, run_cli):
    """--variant docs: docs_selected.jsonl checked against its source manifest's docs_sha256, split as the official
    export splits it (the first docs_val documents are val) into the two files data.prepare reads; the unsplit file
    goes, and a second run makes no request. A file whose sha256 is not the manifest's is deleted and reported."""
    files, env = hub
    lines = [json.dumps({"text": f"document {i} \u00e9"}, ensure_ascii=False) + "\n" for i in range(5)]
    docs = (lines[0] + "\n" + "".join(lines[1:])).encode()  # a blank line is not a document
    meta = {"num_docs": 5, "docs_val": 2, "docs_sha256": hashlib.sha256(docs).hexdigest()}
    files["datasets/docs_selected.jsonl"] = docs
    files["datasets/docs_selected.source_manifest.json"] = json.dumps(meta).encode()
    out = tmp_path / "data"
    args = ["--variant", "docs", "--repo-id", REPO_ID, "--out", out]
    proc = run_cli("data.download", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "docs: 2 val + 3 train documents" in proc.stdout
    assert (out / "docs" / "fineweb_val_docs.jsonl").read_text() == "".join(lines[:2])
    assert (out / "docs" / "fineweb_train_docs.jsonl").read_text() == "".join(lines[2:])
    assert not (out / "docs_selected.jsonl").exists()
    Hub.requests.clear()
    proc = run_cli("data.download", *args, env=env)
    assert proc.returncode == 0 and "docs: up to date" in proc.stdout and Hub.requests == []

    files["datasets/docs_selected.source_manifest.json"] = json.dumps({**meta, "docs_sha256": "0" * 64}).encode()
    other = tmp_path / "other"
    proc = run_cli("data.download", "--variant", "docs", "--repo-id", REPO_ID, "--out", other, env=env)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "docs_selected.jsonl from golf/test-data is invalid, deleted: sha256 is not the docs_sha256" in proc.stderr
    assert not (other / "docs").exists()
    proc = run_cli("data.download", "--variant", "docs", "--train-shards", "1", "--out", other, env=env)
    assert proc.returncode == 2 and "--train-shards N is for the shard variants" in proc.stderr
