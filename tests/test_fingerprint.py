"""Behaviour on the record path is unchanged: a tiny record-stack run of train_gpt.py (training with warm-up,
GPTQ export, every eval path) reproduces the fingerprint recorded before the issue-23 refactoring exactly."""

import json

from tests.fingerprint import RECORDED, fingerprint


def test_record_path_reproduces_the_recorded_fingerprint(shared):
    recorded = json.loads(RECORDED.read_text())
    fp = fingerprint()
    assert fp["losses"] == recorded["losses"]
    assert fp["evals"] == recorded["evals"]
    assert (fp["artifact_bytes"], fp["artifact_sha256"]) == (recorded["artifact_bytes"], recorded["artifact_sha256"])
