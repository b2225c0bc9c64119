"""Download the published challenge data from the Hugging Face hub into the official layout.

    python -m data.download --variant sp1024|sp8192|sp8192_caseops --train-shards N [--repo-id R] [--remote-root P]
        [--out data]
    python -m data.download --variant docs [--repo-id R] [--remote-root P] [--out data]

Like openai/parameter-golf's data/cached_challenge_fineweb.py, it is driven by <root>/manifest.json:
its "datasets" entry fineweb10B_<variant> gives the shard counts (stats.files_val, stats.files_train)
and the name of its "tokenizers" entry, whose model_path/vocab_path are the tokenizer files. It
fetches all val shards, the first N train shards and the tokenizer into
    OUT/manifest.json, OUT/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin, OUT/tokenizers/
Files already present and whole are skipped (a second run makes no request). Each file is
downloaded into OUT/datasets/.download/<path>.part, validated (shards with data.shards.check_shard),
and only then moved into place; a bad one is deleted and reported. A killed or broken download
continues from the bytes its .part holds (an HTTP Range request), unless the remote file's ETag
changed. Every file prints a line when it lands, and a long one a progress line every 15 s.
sp8192_caseops is the published CaseOps export of the 2026-04-18 record (its own lossless-case transform and
tokenizer; data/caseops.py is ours): dataset fineweb10B_sp8192_lossless_caps_caseops_v1_reserved, plus each val
shard's byte sidecar fineweb_val_bytes_NNNNNN.bin, checked to hold one count per token of its shard.
docs is the official export's raw documents (docs_selected.jsonl, checked against the docs_sha256 of its
docs_selected.source_manifest.json), split as the export splits them: the first docs_val (default 50,000) are
val. It writes OUT/docs/fineweb_{val,train}_docs.jsonl for data.prepare (your own tokenizer, CaseOps) and drops the
unsplit file; OUT/docs/split.json records the source, so a second run makes no request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get  # resumes at a byte offset; hf_hub_download 2.x restarts
from huggingface_hub.utils import build_hf_headers

from data.prepare import PrepareError, file_sha256, iter_lines, load_tokenizer
from data.shards import check_shard
from train_gpt import HEADER_BYTES, SIDECAR, ShardError, progress, read_shard_header

# willdepueoai/parameter-golf publishes only sp1024; the sp8192 records download from kevclark's copy
# (MATCHED_FINEWEB_REPO_ID=kevclark/parameter-golf in their READMEs), same layout under datasets/.
REPO_IDS = {"sp1024": "willdepueoai/parameter-golf", "sp8192": "kevclark/parameter-golf"}
REPO_IDS["sp8192_caseops"] = "romeerp/parameter-golf-caseops-v1"  # the 2026-04-18 record's README names it
DATASETS = {"sp8192_caseops": "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"}  # else fineweb10B_<variant>
REPO_IDS["docs"] = "willdepueoai/parameter-golf"  # the documents every official export was tokenized from
REMOTE_ROOT = "datasets"
DOCS, DOCS_META, VAL_DOCS = "docs_selected.jsonl", "docs_selected.source_manifest.json", 50_000


Validator = Callable[[str], object]


class DownloadError(Exception):
    """A failed or invalid download; the message is one line."""


class Ticking:
    """The file a download writes into, reporting bytes written to a progress tick."""

    def __init__(self, f, done: int, tick: Callable[[int], None]):
        self.f, self.done, self.tick = f, done, tick

    def write(self, chunk: bytes) -> int:
        self.done += len(chunk)
        self.tick(self.done)
        return self.f.write(chunk)

    def __getattr__(self, name: str):  # seek, tell, truncate: the file's own
        return getattr(self.f, name)


class Hub:
    """Fetches `root/<path>` of a dataset repo into OUT, validating each file before it lands."""

    def __init__(self, repo_id: str, root: str, out: str):
        self.repo_id, self.root, self.out = repo_id, root.strip("/"), out
        self.stage = os.path.join(out, "datasets", ".download")
        self.downloaded = 0

    def transfer(self, path: str) -> str:
        """Download `path` into the stage, continuing a .part left by an earlier run of the same remote file."""
        url = hf_hub_url(self.repo_id, self.remote(path), repo_type="dataset")
        meta = get_hf_file_metadata(url)
        part = os.path.join(self.stage, path + ".part")
        os.makedirs(os.path.dirname(part), exist_ok=True)
        tag = part + ".etag"  # a .part is only continued for the remote file it began
        have = os.path.getsize(part) if os.path.isfile(part) else 0
        if have and (not os.path.isfile(tag) or open(tag).read() != str(meta.etag) or have > (meta.size or have)):
            have = 0
        with open(tag, "w") as f:
            f.write(str(meta.etag))
        t0, total = time.perf_counter(), meta.size or 0
        with open(part, "ab" if have else "wb") as f:
            tick = progress(f"download {os.path.basename(path)} bytes", total)
            http_get(
                meta.location,
                Ticking(f, have, tick),
                resume_size=have,
                headers=build_hf_headers(),
                expected_size=meta.size,
            )
        resumed = f", continued at byte {have:,}" if have else ""
        print(f"download: {path} {os.path.getsize(part):,} bytes in {time.perf_counter() - t0:.1f}s{resumed}")
        os.remove(tag)
        return part

    def remote(self, path: str) -> str:
        return f"{self.root}/{path}" if self.root else path

    def fetch(self, path: str, validate: Validator, present_ok: Validator | None = None, force: bool = False) -> str:
        """OUT/<path>, downloaded unless already there and passing present_ok (default: validate).
        A validator raises ShardError, PrepareError or ValueError on a bad file."""
        if os.path.isabs(path) or ".." in path.split("/"):
            raise DownloadError(f"{self.repo_id}: manifest names a path outside the data folder: {path}")
        local = os.path.join(self.out, path)
        if not force and os.path.isfile(local) and _passes(present_ok or validate, local):
            return local
        try:
            staged = self.transfer(path)
        except Exception as e:  # network, HTTP and hub errors alike: report them in one line
            first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
            raise DownloadError(f"{self.remote(path)} from {self.repo_id}: {type(e).__name__}: {first}") from None
        try:
            validate(staged)
        except (ShardError, PrepareError, ValueError) as e:
            os.remove(staged)
            why = str(e).replace(f"{staged}: ", "")
            raise DownloadError(f"{self.remote(path)} from {self.repo_id} is invalid, deleted: {why}") from None
        os.makedirs(os.path.dirname(local), exist_ok=True)
        os.replace(staged, local)
        self.downloaded += 1
        return local


def _passes(validate: Validator, path: str) -> bool:
    try:
        validate(path)
        return True
    except (ShardError, PrepareError, ValueError):
        return False


def _load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # a JSONDecodeError is a ValueError


def _check_manifest(path: str) -> None:
    manifest = _load_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("datasets"), list):
        raise ValueError("no datasets list")


def _entry(entries: list, name: str) -> dict | None:
    return next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)


def download(variant: str, train_shards: int, repo_id: str, root: str, out: str) -> str:
    hub = Hub(repo_id, root, out)
    dataset = DATASETS.get(variant, f"fineweb10B_{variant}")
    manifest = _load_json(hub.fetch("manifest.json", _check_manifest))
    if _entry(manifest["datasets"], dataset) is None:  # a manifest kept from another repo or an older upload
        manifest = _load_json(hub.fetch("manifest.json", _check_manifest, force=True))
    entry = _entry(manifest["datasets"], dataset)
    if entry is None:
        raise DownloadError(f"{dataset} is not in {hub.remote('manifest.json')} of {repo_id}")
    stats = entry.get("stats") or {}
    n_train, n_val = int(stats.get("files_train", 0)), int(stats.get("files_val", 0))
    if not 0 <= train_shards <= n_train:
        raise DownloadError(f"--train-shards {train_shards}: {repo_id} has {n_train} {dataset} train shards")
    tokenizer = _entry(manifest.get("tokenizers") or [], entry.get("tokenizer_name"))
    artifacts = [tokenizer[k] for k in ("model_path", "vocab_path", "path") if tokenizer and tokenizer.get(k)]
    if not artifacts:
        raise DownloadError(f"{repo_id}: no tokenizer files for {dataset} in its manifest")
    vocab = int(entry.get("vocab_size") or variant[2:].split("_")[0])

    def check_model(path: str) -> None:
        if load_tokenizer(path).vocab_size() != vocab:
            raise ValueError(f"tokenizer does not have {vocab} pieces")

    shards = [f"datasets/{dataset}/fineweb_val_{i:06d}.bin" for i in range(n_val)]
    shards += [f"datasets/{dataset}/fineweb_train_{i:06d}.bin" for i in range(train_shards)]
    tokens = 0
    for path in shards:  # a shard already in place was checked when it landed: header and size suffice now
        local = hub.fetch(path, lambda p: check_shard(p, vocab), read_shard_header)
        tokens += (os.path.getsize(local) - HEADER_BYTES) // 2
    for i in range(n_val) if variant in DATASETS else []:  # CaseOps: each val shard's byte sidecar

        def fits(p: str, i=i) -> None:
            shard = os.path.join(out, "datasets", dataset, f"fineweb_val_{i:06d}.bin")
            if check_shard(p)[0] != read_shard_header(shard):
                raise ShardError(f"{p}: not one byte count per token of {shard}")

        hub.fetch(f"datasets/{dataset}/{SIDECAR}{i:06d}.bin", fits, read_shard_header)
    for path in artifacts:
        hub.fetch(path, check_model if path.endswith(".model") else lambda p: None)
    shutil.rmtree(hub.stage, ignore_errors=True)
    return (
        f"{dataset}: {n_val} val + {train_shards} train shards ({tokens:,} tokens) and "
        f"{', '.join(os.path.basename(a) for a in artifacts)} in {out} ({hub.downloaded} file(s) downloaded)"
    )


def download_docs(repo_id: str, root: str, out: str) -> str:
    """The published documents, checked and split into OUT/docs/fineweb_{val,train}_docs.jsonl (module docstring)."""
    hub, folder = Hub(repo_id, root, out), os.path.join(out, "docs")
    split = {k: os.path.join(folder, f"fineweb_{k}_docs.jsonl") for k in ("val", "train")}
    meta = _load_json(hub.fetch(DOCS_META, _check_docs_meta))
    want = {"source_sha256": meta.get("docs_sha256"), "docs_val": int(meta.get("docs_val", VAL_DOCS))}
    stamp = os.path.join(folder, "split.json")
    done = _load_json(stamp) if os.path.isfile(stamp) and all(map(os.path.isfile, split.values())) else {}
    if done.get("source") == want:
        return f"docs: up to date in {folder} ({done['docs']})"

    def check(path: str) -> None:
        if want["source_sha256"] and file_sha256(path) != want["source_sha256"]:
            raise ValueError(f"sha256 is not the docs_sha256 of {DOCS_META}")

    docs = hub.fetch(DOCS, check)
    os.makedirs(folder, exist_ok=True)
    counts = {"val": 0, "train": 0}
    with (
        open(split["val"] + ".tmp", "w", encoding="utf-8") as val,
        open(split["train"] + ".tmp", "w", encoding="utf-8") as train,
    ):
        for _, _, line in iter_lines([docs]):
            k = "val" if counts["val"] < want["docs_val"] else "train"
            (val if k == "val" else train).write(line if line.endswith("\n") else line + "\n")
            counts[k] += 1
    n_all = counts["val"] + counts["train"]
    if counts["val"] < want["docs_val"] or n_all != meta.get("num_docs", n_all):
        raise DownloadError(f"{DOCS}: {counts['val']} + {counts['train']} documents, not what {DOCS_META} says")
    for path in split.values():
        os.replace(path + ".tmp", path)
    with open(stamp, "w") as f:
        json.dump({"source": want, "docs": counts}, f)
    os.remove(docs)  # the split holds every document: keep one copy
    shutil.rmtree(hub.stage, ignore_errors=True)
    return f"docs: {counts['val']:,} val + {counts['train']:,} train documents in {folder}"


def _check_docs_meta(path: str) -> None:
    meta = _load_json(path)
    sha = meta.get("docs_sha256") if isinstance(meta, dict) else None
    counts = [meta.get(k, 0) for k in ("docs_val", "num_docs")] if isinstance(meta, dict) else [None]
    if (
        not isinstance(meta, dict)
        or (sha is not None and len(str(sha)) != 64)
        or not all(isinstance(c, int) for c in counts)
    ):
        raise ValueError("not an object with docs_sha256 (64 hex), docs_val and num_docs (integers)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.download", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(REPO_IDS), required=True)
    parser.add_argument("--train-shards", type=int, help="download the first N train shards (not for docs)")
    parser.add_argument(
        "--repo-id", help="hub dataset repo (default: " + ", ".join(f"{r} for {v}" for v, r in REPO_IDS.items()) + ")"
    )
    parser.add_argument("--remote-root", default=REMOTE_ROOT, help="folder of manifest.json in the repo")
    parser.add_argument("--out", default="data")
    args = parser.parse_args(argv)
    if (args.train_shards is None) != (args.variant == "docs"):
        parser.error("--train-shards N is for the shard variants, and only for them")
    repo_id = args.repo_id or REPO_IDS[args.variant]
    try:
        if args.variant == "docs":
            print(download_docs(repo_id, args.remote_root, args.out))
        else:
            print(download(args.variant, args.train_shards, repo_id, args.remote_root, args.out))
    except (DownloadError, PrepareError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
