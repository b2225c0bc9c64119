"""The legal n-gram mixture (issue 6): fast path == slow reference on real devset tokens, proper
distributions, and the legality probes: PASS on ours, FAIL on seed 003's construction and on a leaky
(update-before-score) scorer."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ngram_eval import probe, sweep  # noqa: E402
from ngram_eval._impl import FakeModel, NgramMixer, ngram_stream, read_tokens, run_stream  # noqa: E402
from ngram_eval.reference import RefNgram, ref_stream  # noqa: E402

DATA = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared")) / "data"
SP1024 = DATA / "fineweb_dev/fineweb_val_sp1024.bin"
SP8192 = DATA / "fineweb_dev/fineweb_val_sp8192.bin"
TOK1024 = DATA / "tokenizers/fineweb_1024_bpe.model"
pytestmark = pytest.mark.skipif(not SP1024.exists() or not SP8192.exists(), reason="needs ../shared devset")


@pytest.mark.parametrize(
    "shard,vocab,n,order,chunk,cross_bos",
    [
        (SP1024, 1024, 20000, 6, 1000, False),
        (SP1024, 1024, 6000, 3, 777, True),
        (SP8192, 8192, 4000, 6, 1500, False),
    ],
)
def test_fast_matches_reference_token_by_token(shard, vocab, n, order, chunk, cross_bos):
    tokens = read_tokens(str(shard), n)
    model = FakeModel(vocab)
    logp, ent = model.stats(tokens)
    nll_ref, p_ref, c_ref, o_ref = ref_stream(tokens, logp, ent, vocab, order, cross_bos=cross_bos)
    mixer = NgramMixer(vocab, order, cross_bos=cross_bos)
    p, c, o = ngram_stream(mixer, tokens, chunk)
    assert np.array_equal(c.numpy(), c_ref) and np.array_equal(o.numpy(), o_ref)
    assert np.abs(p.numpy() - p_ref).max() < 1e-12
    assert np.abs(mixer.mix_nll(logp, ent, p, c, o).numpy() - nll_ref).max() < 1e-5
    # the full-distribution path (score() from [T, V] log-probs), with another chunking
    nll = run_stream(NgramMixer(vocab, order, cross_bos=cross_bos), tokens, model, chunk // 3 + 1)
    assert np.abs(nll[1:].numpy() - nll_ref).max() < 1e-5
    assert o_ref.max() == order  # the longest contexts were reached


@pytest.mark.parametrize("shard,vocab", [(SP1024, 1024), (SP8192, 8192)])
def test_distribution_is_proper_and_is_what_is_scored(shard, vocab):
    tokens = read_tokens(str(shard), 2564)
    model = FakeModel(vocab)
    mixer = NgramMixer(vocab, 6)
    ngram_stream(mixer, tokens[:2000], 700)  # the table holds tokens[:2000]
    chunk, pre = tokens[2500:2564], tokens[2000:2500]  # score 64 positions after 500 unmerged ones
    lp = model.logprobs(tokens[2499:2563])
    D = mixer.distribution(chunk, lp, prefix=pre)
    assert (D.sum(1) - 1).abs().max() < 1e-5 and D.min() > 0
    Pn = mixer.distribution(chunk, prefix=pre)  # n-gram alone: exact in float64
    assert (Pn.sum(1) - 1).abs().max() < 1e-12
    nll = mixer.score(chunk, lp, prefix=pre)
    assert (D.gather(1, chunk[:, None])[:, 0].log().neg() - nll).abs().max() < 1e-5
    ref = RefNgram(vocab, 6)
    for y in tokens[:2540].tolist():
        ref.add(y)
    assert np.abs(ref.dist() - Pn[40].numpy()).max() < 1e-12


def test_hash_collisions_merge_contexts_but_stay_normalised():
    tokens = read_tokens(str(SP1024), 3000)
    mixer = NgramMixer(1024, 6)
    mixer.M = 5  # every context of a length falls in 5 buckets: massive collisions
    ngram_stream(mixer, tokens[:2500], 512)
    P = mixer.distribution(tokens[2500:2600])
    assert (P.sum(1) - 1).abs().max() < 1e-12 and P.min() > 0
    p, _, _ = mixer.ngram_stats(tokens[2500:2600])
    assert (P.gather(1, tokens[2500:2600, None])[:, 0] - p).abs().max() < 1e-12


@pytest.mark.parametrize("gate_lr", [0.0, 0.5])  # fixed gate, and a gate learned online (fast, to move it)
def test_probes_pass_on_our_mixer(gate_lr):
    tokens = read_tokens(str(SP1024), 240)
    scorer = probe.MixerScorer(1024, order=6, chunk=60, gate_lr=gate_lr)
    norm = probe.probe_normalisation(scorer, tokens, [50, 200], 1024)  # in the first chunk, and after 3 updates
    assert norm.status == "PASS", norm.detail
    caus = probe.probe_causality(scorer, tokens, [30, 101, 170, 230], 1024)
    assert caus.status == "PASS", caus.detail
    first = probe.probe_score_first(
        probe.MixerScorer(1024, order=6, chunk=256, gate_lr=gate_lr), read_tokens(str(SP1024), 3000)
    )
    assert first.status == "PASS", first.detail


@pytest.mark.parametrize("start,lr", [((-8.0, 0.0, 0.0, 0.0), 0.05), ((-3.0, 0.25, 0.1, 0.25), 0.5)])
def test_online_gate_beats_a_bad_fixed_gate(start, lr):
    """The fake model is weak, so the n-gram should carry most of the mass: starting with it nearly
    off, or at the default gate, the learned gate scores the same real stream better than the fixed
    one and stays finite at a large step; score() never moves it, update() does."""
    tokens, model = read_tokens(str(SP1024), 20000), FakeModel(1024)
    fixed = run_stream(NgramMixer(1024, 6, alpha=start), tokens, model, 1000)[1:].mean()
    mixer = NgramMixer(1024, 6, alpha=start, gate_lr=lr)
    learned = run_stream(mixer, tokens, model, 1000)[1:].mean()
    assert learned < fixed - 0.01 and mixer.alpha != start
    before = mixer.alpha
    mixer.score(tokens[1:50], model.logprobs(tokens[:49]))
    assert mixer.alpha == before


def test_normalisation_probe_rejects_seed003():
    # a short stream needs a small table for a realistic collision rate (the CLI control: 2^16, 2000 tokens)
    tokens = read_tokens(str(SP1024), 460)
    seed003 = probe.Seed003Scorer(1024, buckets=1 << 12)
    norm = probe.probe_normalisation(seed003, tokens, [450], 1024)
    assert norm.status == "FAIL" and norm.value > 1.0, norm.detail  # implied mass over V > 2
    caus = probe.probe_causality(seed003, tokens, [200, 440], 1024)
    assert caus.status == "PASS", caus.detail  # it is causal: only normalisation exposes it


def test_leaky_scorer_fails_causality_and_score_first():
    tokens = read_tokens(str(SP1024), 300)
    leaky = probe.MixerScorer(1024, order=6, chunk=64, update_first=True)
    assert probe.probe_causality(leaky, tokens, [100, 250], 1024).status == "FAIL"
    assert probe.probe_score_first(leaky, tokens).status == "FAIL"


def test_per_token_file_check(tmp_path, capsys):
    n = read_tokens(str(SP1024)).numel() - 1
    good = tmp_path / "good.npy"
    np.save(good, np.full(n, 2.0, dtype=np.float32))
    assert probe.check_per_token(str(good), str(SP1024), str(TOK1024), None)
    assert "bpb" in capsys.readouterr().out
    bad = np.full(n, 2.0, dtype=np.float32)
    bad[5] = -0.1  # p > 1
    np.save(tmp_path / "bad.npy", bad)
    assert not probe.check_per_token(str(tmp_path / "bad.npy"), str(SP1024), None, None)
    np.save(tmp_path / "short.npy", bad[:-10].clip(0))
    assert not probe.check_per_token(str(tmp_path / "short.npy"), str(SP1024), None, None)


def test_sweep_matches_reference_bpb(tmp_path, capsys):
    tokens = read_tokens(str(SP1024), 4001)
    logp, ent = FakeModel(1024).stats(tokens)
    np.savez(tmp_path / "lp.npz", logp=logp.numpy(), entropy=ent.numpy())
    assert (
        sweep.main(
            [
                "--logprobs",
                str(tmp_path / "lp.npz"),
                "--tokens",
                str(SP1024),
                "--tokenizer",
                str(TOK1024),
                "--orders",
                "2,4",
                "--alphas=-3,0.25,0.1,0.25;-2,0,0,0",
                "--chunk",
                "999",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4000 targets" in out and len(out.strip().splitlines()) == 2 + 4
    from ngram_eval._impl import target_bytes

    nbytes = target_bytes(tokens, str(TOK1024), 1024).sum().item()
    rows = sweep.sweep(tokens, logp, ent, nbytes, 1024, [4], [(-3, 0.25, 0.1, 0.25)], chunk=999)
    nll_ref = ref_stream(tokens, logp, ent, 1024, 4)[0]
    assert abs(rows[0]["bpb"] - nll_ref.sum() / np.log(2) / nbytes) < 1e-9


@pytest.mark.parametrize("gate_lr", [0.0, 0.5])
def test_score_from_model_stats_equals_score_from_full_logprobs(gate_lr):
    """score() given only (log p(y), entropy) per token, what TTT records, is the mixer given the full
    log-softmax: over several chunks, with the gate learned online in between."""
    tokens, model = read_tokens(str(SP1024), 3000), FakeModel(1024)
    full, stats = NgramMixer(1024, 6, gate_lr=gate_lr), NgramMixer(1024, 6, gate_lr=gate_lr)
    done = 0
    for s in range(1, 3000, 700):
        e, lp = min(s + 700, 3000), model.logprobs(tokens[s - 1 : min(s + 700, 3000) - 1])
        a = full.score(tokens[s:e], lp, prefix=tokens[done:s])
        b = stats.score(tokens[s:e], NgramMixer.model_stats(tokens[s:e], lp), prefix=tokens[done:s])
        assert (a - b).abs().max() < 1e-9
        full.update(tokens[done:e])
        stats.update(tokens[done:e])
        done = e
    assert full.alpha == stats.alpha and (gate_lr == 0) == (full.alpha == (-3.0, 0.25, 0.1, 0.25))
