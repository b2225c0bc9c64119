"""Behaviour is unchanged by the issue-23 refactoring: a tiny record-stack run of train_gpt.py (training with
warm-up, GPTQ export, every eval path) and a tiny run of each seed architecture reproduce the fingerprints
recorded before it exactly."""

import json

import pytest

from tests.fingerprint import RECORDED, VARIANTS, fingerprint


@pytest.mark.parametrize("variant", VARIANTS)
def test_run_reproduces_the_recorded_fingerprint(shared, variant):
    recorded = json.loads(RECORDED.read_text())["fingerprints"][variant]
    fp = fingerprint(variant)
    assert fp["losses"] == recorded["losses"]
    assert fp["evals"] == recorded["evals"]
    assert fp["weights_sha256"] == recorded["weights_sha256"]
    assert (fp["artifact_bytes"], fp["artifact_sha256"]) == (recorded["artifact_bytes"], recorded["artifact_sha256"])
