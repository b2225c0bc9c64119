"""Eval legality probes on a tiny CPU model (issue 5): causality for every path, score before update
for TTT, every target scored exactly once, and BPB totals equal to data.check_bpb's."""

import copy
import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import sentencepiece as spm
import torch

import train_gpt as tg
from data.check_bpb import check_docs
from tests.conftest import REPO, SHARED
from tests.conftest import TINY as BASE

SP1024 = str(SHARED / "data/tokenizers/fineweb_1024_bpe.model")
DEV = str(SHARED / "data/fineweb_dev/fineweb_val_sp1024.bin")
# the suite's tiny model, 3 layers (layers 0-1 looped), short windows and chunks, 3-document TTT batches, 2 phases:
# the first 2 documents, then the rest
TINY = {
    **BASE,
    **dict(NUM_LAYERS="3", RECUR_START="0", RECUR_END="1", EVAL_SEQ_LEN="48", EVAL_STRIDE="16", EVAL_BATCH_SEQS="8"),
    **dict(TTT_CHUNK="16", TTT_DOCS="3", TTT_PHASES="2", TTT_PHASE_DOCS="2", TTT_LORA="1", TTT_LR="0.01"),
    **dict(TTT_SGD_LR="0.01", TTT_CACHE="0"),  # windows: the reference semantics; TTT_CACHE=1 where a test says
    # the model is 32 wide: rank 8, scale alpha/rank 0.5. The record's rank 96 and scale 1.5 at this lr (100x its own)
    # make adapters diverge from float noise between batched and one-document scoring (0.3 nats in ~80 steps)
    **dict(TTT_RANK="8", TTT_ALPHA="4"),
    **dict(NGRAM_CHUNK="64"),
}
CPU = torch.device("cpu")
NGM = tg.load_plugin("ngram_mix")  # the n-gram mixer: train_gpt's plug-in for the ngram paths


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    h = tg.Hyperparameters(TINY)
    model = tg.GPT(h)
    for p in model.parameters():  # random weights everywhere: zero-init layers would hide leaks
        p.data.normal_(0, 0.2)
    luts = tg.build_byte_luts(spm.SentencePieceProcessor(model_file=SP1024), 1024)
    tokens = torch.from_numpy(np.asarray(tg.load_shard(DEV))[:300].astype(np.int64))
    assert int((tokens == tg.BOS_ID).sum()) >= 1
    tokens[[100, 180, 230]] = tg.BOS_ID  # several short documents
    return h, model, luts, tokens


def ten_docs() -> torch.Tensor:
    """1,100 real FineWeb tokens as ten documents of 10 to 300 tokens: several widths, windows past EVAL_SEQ_LEN."""
    tokens = torch.from_numpy(np.asarray(tg.load_shard(DEV))[:1100].astype(np.int64))
    tokens[[100, 180, 230, 350, 360, 600, 700, 1000]] = tg.BOS_ID
    return tokens


def run_path(path: str, model, tokens, h, luts):
    """One eval path alone through run_evals (the n-gram paths mix after their model pass)."""
    if path == "ttt_global":  # TTT_LORA=0: phases scored with sliding windows, global SGD between them
        h, path = tg.Hyperparameters({**TINY, "TTT_LORA": "0"}), "ttt"
    if path == "ttt_cache":  # TTT_CACHE=1: a chunk attends to its document's cached keys and values
        h, path = tg.Hyperparameters({**TINY, "TTT_CACHE": "1"}), "ttt"
    return tg.run_evals(model, h, {"val": tokens}, luts, CPU, lambda *a, **k: None, [path])[f"val/{path}"]


@pytest.mark.parametrize("path", ["plain", "sliding", "ttt", "ttt_global", "ttt_cache", "ngram", "ttt_ngram"])
def test_causality(setup, path):
    """Perturbing tokens at positions >= t leaves the NLL of every target before t unchanged."""
    h, model, luts, tokens = setup
    base = run_path(path, model, tokens, h, luts)["nll"]
    for t in (37, 150, 231):
        other = tokens.clone()
        free = torch.arange(t, len(tokens))
        free = free[tokens[free] != tg.BOS_ID]  # keep document boundaries (TTT batches by doc length)
        other[free] = torch.randint(4, 1024, (len(free),), generator=torch.Generator().manual_seed(t))
        nll = run_path(path, model, other, h, luts)["nll"]
        # nll[i] scores target position i + 1: positions < t are nll[:t - 1]
        torch.testing.assert_close(nll[: t - 1], base[: t - 1], rtol=0, atol=1e-6)
        assert not torch.allclose(nll[t:], base[t:])  # the probe can see a change


def test_ttt_changes_scores_and_restores_weights(setup):
    h, model, luts, tokens = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = tg.eval_ttt(model, tokens, tg.Hyperparameters({**TINY, "TTT_LORA": "0", "TTT_GLOBAL": "0"}), luts, CPU)
    ttt = tg.eval_ttt(model, tokens, h, luts, CPU)
    assert not torch.allclose(plain["nll"], ttt["nll"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cache", ["0", "1"])
def test_warm_up_ttt_keeps_the_weights(setup, cache):
    """The eval warm-up (main runs it before the eval clock when compiled) runs TTT on random tokens: it takes no
    val tokens at all, and the base weights come back unchanged."""
    h, model, luts, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert tg.warm_up_ttt(model, tg.Hyperparameters({**TINY, "TTT_CACHE": cache}), luts, CPU) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_warm_up_ttt_compiles_what_scoring_needs(setup, monkeypatch):
    """After the warm-up, scoring real documents (every length, a partial last batch) captures no new graph: the
    compile time it saves is all of TTT's (global SGD's graphs excepted: phases change the base weights). The
    aot_eager backend stands in for inductor on the CPU; the warm-up steps the adapters, so backward runs too."""
    from torch._dynamo.utils import counters

    _, model, luts, _ = setup
    tokens = torch.from_numpy(np.asarray(tg.load_shard(DEV))[:3000].astype(np.int64))
    h = tg.Hyperparameters({**TINY, "TTT_CACHE": "1", "TTT_GLOBAL": "0", "TTT_TARGETS": "c_q,c_v,proj,fc,head"})
    compile_ = torch.compile  # nn.Module.compile calls it too
    monkeypatch.setattr(torch, "compile", lambda f, **k: compile_(f, **{**k, "backend": "aot_eager"}))
    torch._dynamo.reset()
    steps, step = [], torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda opt, *a: (steps.append(1), step(opt, *a))[1])
    model = copy.deepcopy(model)
    model.compile_parts()
    tg.warm_up_ttt(model, h, luts, CPU)
    captured = counters["stats"]["calls_captured"]
    assert captured > 0 and steps
    tg.eval_ttt(model, tokens, h, luts, CPU)
    assert counters["stats"]["calls_captured"] == captured
    torch._dynamo.reset()


@pytest.mark.parametrize("ranks", [1, 2, 8])
def test_ttt_batches_deal_every_document_once_longest_first(ranks):
    """ttt_batches: the ranks' batches cover a phase's documents once, each batch of similar lengths (consecutive in
    the sorted order), and dealing longest first to the least-loaded rank leaves the loads within one batch's steps."""
    rng = np.random.default_rng(0)
    ends = np.cumsum(rng.pareto(1.2, 1000).astype(int) * 40 + 5)
    phase = list(zip([0, *ends[:-1].tolist()], ends.tolist()))
    knobs = dict(ttt_docs=64, ttt_chunk=48, world_size=ranks)
    dealt = [tg.ttt_batches(phase, SimpleNamespace(**knobs, rank=r)) for r in range(ranks)]
    assert sorted(d for batches in dealt for b in batches for d in b) == phase
    order = sorted(phase, key=lambda se: se[1] - se[0])
    assert all(b == order[order.index(b[0]) : order.index(b[0]) + len(b)] for bs in dealt for b in bs)
    steps = [[math.ceil((b[-1][1] - b[-1][0]) / 48) for b in bs] for bs in dealt]
    loads = [sum(s) for s in steps]
    assert max(loads) - min(loads) <= max(max(s) for s in steps)
    # warm_up_ttt's stream: TTT_DOCS equal documents a rank deal one batch to every rank, so every rank compiles
    equal = [(i * 96, (i + 1) * 96) for i in range(64 * ranks)]
    assert [len(tg.ttt_batches(equal, SimpleNamespace(**knobs, rank=r))) for r in range(ranks)] == [1] * ranks


@pytest.mark.parametrize("cfg", [{}, {"TTT_PHASES": "1", "TTT_DOCS": "2"}])
def test_bench_ttt_steps_counts_the_steps_eval_ttt_takes(setup, monkeypatch, cfg):
    """bench/ttt_steps.py's count (its projection of TTT's time) is the number of chunk forwards eval_ttt runs."""
    sys.path.insert(0, str(REPO / "bench"))
    import ttt_steps

    _, model, luts, _ = setup
    tokens = ten_docs()
    h, calls, chunk_batch = tg.Hyperparameters({**TINY, **cfg}), [], tg.chunk_batch
    monkeypatch.setattr(tg, "chunk_batch", lambda *a: (calls.append(1), chunk_batch(*a))[1])
    tg.eval_ttt(model, tokens, h, luts, CPU)
    lengths = np.array([e - s for s, e in tg.doc_spans(tokens)])
    steps = ttt_steps.rank_steps(lengths, 1, h.ttt_docs, h.ttt_chunk, h.ttt_phases, h.ttt_phase_docs)
    assert steps == [len(calls)] and len(calls) > len(lengths) // h.ttt_docs


def reference_ttt(model, tokens, h):
    """The TTT semantics one document at a time, without batching, padding or width buckets: every document's
    adapters start from the same A (one SEED-seeded draw per target linear, in module order) and B = 0;
    each chunk is scored with up to EVAL_SEQ_LEN tokens of context, then AdamW steps on its mean NLL;
    global SGD runs on each finished phase (tg.global_sgd)."""
    model, nll = copy.deepcopy(model), torch.zeros(len(tokens), dtype=torch.float64)
    C, L, spans, phases = h.ttt_chunk, h.eval_seq_len, tg.doc_spans(tokens), h.ttt_phases if h.ttt_global else 1
    k = h.ttt_phase_docs  # phase p: documents p*k .. (p+1)*k - 1 from the start; the last phase takes the rest
    bounds = [(p * k, (p + 1) * k if p < phases - 1 else len(spans)) for p in range(phases)]
    names = h.ttt_targets.split(",")
    targets = [
        m for n, m in model.blocks.named_modules() if isinstance(m, tg.CastedLinear) and n.split(".")[-1] in names
    ]
    targets += [model] if "head" in names else []  # the tied head's adapter, made after the block linears'
    d_in, d_out = (
        lambda m: model.tok_emb.weight.size(1) if m is model else m.in_features,
        lambda m: model.tok_emb.weight.size(0) if m is model else m.out_features,
    )
    for p in range(phases):
        model.requires_grad_(False)
        g = torch.Generator().manual_seed(h.seed)
        inits = [torch.randn(h.ttt_rank, d_in(m), generator=g) / math.sqrt(d_in(m)) for m in targets]
        for s, e in spans[bounds[p][0] : bounds[p][1]]:  # in any order: documents do not interact
            for m, A in zip(targets, inits):
                m.lora = tg.BatchedLoRA(1, d_in(m), d_out(m), h.ttt_rank, h.ttt_alpha, torch.Generator())
                m.lora.A.data = A[None].clone()
            params = [q for m in targets for q in m.lora.parameters()]
            opt = torch.optim.AdamW(params, lr=h.ttt_lr, betas=(h.ttt_beta1, h.ttt_beta2), weight_decay=h.ttt_wd)
            for lo in range(1, e - s + 1, C):
                hi = min(lo + C - 1, e - s)
                a = max(0, hi - L)
                loss = model(tokens[None, s + a : s + hi], tokens[None, s + a + 1 : s + hi + 1])[0, lo - 1 - a :]
                nll[s + lo : s + hi + 1] = loss.detach().double()
                opt.zero_grad()
                loss.mean().backward()
                opt.step()
        for m in targets:
            m.lora = None
        model.requires_grad_(True)
        if p < phases - 1 and bounds[p + 1][0] < len(spans):
            tg.global_sgd(model, tokens, spans[bounds[p][0] : bounds[p][1]], h, CPU)
    return nll[1:]


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"TTT_DOCS": "2", "TTT_PHASES": "1"},
        {"TTT_CHUNK": "8", "EVAL_SEQ_LEN": "40", "TTT_DOCS": "5", "TTT_GLOBAL": "0"},
        {"TTT_TARGETS": "c_q,head", "TTT_BETA2": "0.999", "TTT_DOCS": "2", "TTT_GLOBAL": "0"},  # the head adapter
    ],
)
def test_ttt_equals_one_document_at_a_time(setup, cfg):
    """Batched TTT (TTT_DOCS padded rows, adapters made once and reset per batch, width buckets, one
    masked loss) computes what scoring each document alone does: full and short (padded) batches,
    several widths, windows that slide past EVAL_SEQ_LEN, with and without global SGD."""
    h, model, luts, tokens = setup
    longer = ten_docs()
    for toks in (tokens, longer):
        hc = tg.Hyperparameters({**TINY, **cfg})
        torch.testing.assert_close(
            tg.eval_ttt(model, toks, hc, luts, CPU)["nll"], reference_ttt(model, toks, hc), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("L", ["512", "48"])
def test_ttt_cache_without_learning_scores_like_the_windows(setup, L):
    """TTT_CACHE=1 with the adapters left at identity (TTT_LR=0): while a document fits in EVAL_SEQ_LEN, cached
    keys and values are the ones a window recomputes, so every score equals the windowed TTT's (512: all documents;
    positions come from a tensor start there, not the RoPE table). Past it (48), the window recomputes its first
    tokens from a cut context while the cache kept them as scored, with their own context: scores differ there
    and only there (the cache's receptive field grows with depth, like any KV cache of a sliding window)."""
    _, model, luts, _ = setup
    tokens = ten_docs()
    knobs = {**TINY, "TTT_LR": "0", "TTT_GLOBAL": "0", "EVAL_SEQ_LEN": L, "TTT_DOCS": "4"}
    cached = tg.eval_ttt(model, tokens, tg.Hyperparameters({**knobs, "TTT_CACHE": "1"}), luts, CPU)["nll"]
    windowed = tg.eval_ttt(model, tokens, tg.Hyperparameters(knobs), luts, CPU)["nll"]
    inside = torch.zeros(len(tokens) - 1, dtype=torch.bool)
    for s, e in tg.doc_spans(tokens):  # nll[i] scores target i + 1: a document's targets 1..L are nll[s:s+L]
        inside[s : min(e, s + int(L))] = True
    assert inside.all() == (L == "512")
    torch.testing.assert_close(cached[inside], windowed[inside], rtol=0, atol=2e-5)
    assert L == "512" or not torch.allclose(cached[~inside], windowed[~inside])


def test_ttt_cache_learns(setup):
    """With learning, TTT_CACHE=1 changes the scores: the adapters step between a document's chunks."""
    _, model, luts, tokens = setup
    hc = tg.Hyperparameters({**TINY, "TTT_CACHE": "1", "TTT_GLOBAL": "0"})
    still = tg.eval_ttt(model, tokens, tg.Hyperparameters({**TINY, "TTT_CACHE": "1", "TTT_LR": "0"}), luts, CPU)
    assert not torch.allclose(tg.eval_ttt(model, tokens, hc, luts, CPU)["nll"], still["nll"])


@pytest.mark.parametrize("cache", ["0", "1"])
def test_ttt_compiles_a_few_graphs_once(setup, cache):
    """With the blocks and loss head compiled as compile_parts does (dynamo's eager backend: the same
    guards), TTT builds one graph per width bucket and block kind (TTT_CACHE=1: one width, the cached
    attention eager between the graphs), a second stream builds none, and the scores are the eager ones."""
    _, model, luts, tokens = setup
    h = tg.Hyperparameters({**TINY, "TTT_CACHE": cache})
    eager = tg.eval_ttt(model, tokens, h, luts, CPU)["nll"]
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.compile(backend="eager", dynamic=False)
    model.nll = torch.compile(model.nll, backend="eager", dynamic=False)
    from torch._dynamo.utils import counters

    counters.clear()
    torch.testing.assert_close(tg.eval_ttt(model, tokens, h, luts, CPU)["nll"], eager, rtol=0, atol=1e-5)
    first = counters["stats"]["unique_graphs"]
    counters.clear()
    other = tokens.flip(0)
    other[0] = tg.BOS_ID
    tg.eval_ttt(model, other, h, luts, CPU)
    again = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    # widths 16, 32, 48 x block kinds (first block, later sequential, parallel) + heads, + global SGD's few
    assert first <= 16 and again == 0, (first, again)


@pytest.mark.parametrize("ngram,lora,cache", [(False, "1", "0"), (True, "1", "0"), (False, "0", "0"), (True, "1", "1")])
def test_ttt_scores_before_every_update(setup, ngram, lora, cache, monkeypatch):
    """Instrumented TTT loop: every target position used by an optimizer step (LoRA or global SGD)
    has had its loss recorded before that step; every target is scored exactly once. ttt_ngram: the
    n-gram post-pass scores every target once, in stream order, each against tables of earlier tokens
    only, and the totals are those of the ttt path."""
    _, model, luts, tokens = setup
    h = tg.Hyperparameters({**TINY, "TTT_LORA": lora, "TTT_CACHE": cache})
    clock, scored, violations, updates = [0], {}, [], [0]
    events = []  # the mixer's calls: ("score", first target, end) / ("update", first token, end)
    score, update = NGM.NgramMixer.score, NGM.NgramMixer.update

    def log_score(self, toks, stats, prefix=None):
        start = sum(e - s for k, s, e in events if k == "update") + len(prefix)
        events.append(("score", start, start + len(toks)))
        return score(self, toks, stats, prefix)

    def log_update(self, toks):
        start = sum(e - s for k, s, e in events if k == "update")
        events.append(("update", start, start + len(toks)))
        update(self, toks)

    monkeypatch.setattr(NGM.NgramMixer, "score", log_score)
    monkeypatch.setattr(NGM.NgramMixer, "update", log_update)

    def on_score(lo, hi):
        for t in range(lo, hi + 1):
            assert t not in scored, f"target {t} scored twice"
            scored[t] = clock[0]
        clock[0] += 1

    def on_update(ranges):
        updates[0] += 1
        for lo, hi in ranges:
            violations.extend(t for t in range(lo, hi + 1) if t not in scored or scored[t] >= clock[0])
        clock[0] += 1

    r = tg.eval_ttt(model, tokens, h, luts, CPU, on_score, on_update, entropy=ngram)
    if ngram:  # the ttt_ngram path: the n-gram post-pass over what TTT recorded
        r = tg.totals(NGM.mix_ngram(r["stats"], tokens, h), tokens, luts)
    assert updates[0] > 0 and not violations
    assert sorted(scored) == list(range(1, len(tokens)))
    ttt = tg.eval_ttt(model, tokens, h, luts, CPU)
    assert r["tokens"] == ttt["tokens"] == len(tokens) - 1 and r["bytes"] == ttt["bytes"]
    assert r["loss"] == pytest.approx(float(r["nll"].mean()), rel=1e-12) and bool((r["nll"] > 0).all())
    if ngram:
        scored_to, inserted_to = 1, 0
        for kind, s, e in events:
            if kind == "score":  # contiguous, in stream order, against tables of earlier tokens only
                assert s == scored_to and inserted_to <= s
                scored_to = e
            else:  # only scored tokens enter the tables
                assert s == inserted_to and e <= scored_to
                inserted_to = e
        assert scored_to == inserted_to == len(tokens) and sum(k == "score" for k, _, _ in events) > 2


@pytest.mark.parametrize(
    "n,L,stride", [(2, 8, 4), (100, 16, 16), (101, 16, 5), (1000, 64, 64), (999, 64, 7), (50, 64, 8)]
)
def test_windows_score_every_target_once(n, L, stride):
    count = np.zeros(n, dtype=int)
    for a, b, first in tg.eval_windows(n, min(L, n - 1), stride):
        assert b - a <= L and first > a  # at least one token of context, window no longer than L
        count[first : b + 1] += 1
    assert count[0] == 0 and (count[1:] == 1).all()


def test_doc_spans_cover_every_target_once(setup):
    *_, tokens = setup
    count = np.zeros(len(tokens), dtype=int)
    for s, e in tg.doc_spans(tokens):
        count[s + 1 : e + 1] += 1
    assert count[0] == 0 and (count[1:] == 1).all()


def test_bpb_bytes_equal_check_bpb_totals():
    """The eval's byte total over the first 60 FineWeb dev docs equals data.check_bpb's, which is
    itself checked against the tokenizer's own decoding."""
    sp = spm.SentencePieceProcessor(model_file=SP1024)
    texts = [json.loads(line)["text"] for line in open(SHARED / "data/fineweb_dev/fineweb_val_docs.jsonl")][:60]
    report = check_docs(sp, texts)
    assert report.matched == report.docs == 60
    val = np.asarray(tg.load_shard(DEV))
    cut = np.flatnonzero(val == tg.BOS_ID)[60]
    tokens = torch.from_numpy(val[:cut].astype(np.int64))
    assert len(tokens) == report.tokens
    h = tg.Hyperparameters({**TINY, "EVAL_SEQ_LEN": "256", "EVAL_STRIDE": "256", "EVAL_BATCH_SEQS": "32"})
    r = tg.eval_stream(tg.GPT(h), tokens, h, tg.build_byte_luts(sp, 1024), CPU, 256)
    assert r["bytes"] == report.bytes and r["tokens"] == len(tokens) - 1
    assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / np.log(2) / report.bytes, rel=1e-12)


def test_ngram_paths_reduce_to_the_model_when_its_weight_is_zero(setup):
    """Gate forced to 0 (a huge negative bias, no learning): ngram is sliding, ttt_ngram is ttt."""
    h, model, luts, tokens = setup
    off = tg.Hyperparameters({**TINY, "NGRAM_ALPHA": "-1000,0,0,0", "NGRAM_GATE_LR": "0"})
    for path, base in (("ngram", "sliding"), ("ttt_ngram", "ttt")):
        mixed, model_only = (
            run_path(path, model, tokens, off, luts)["nll"],
            run_path(base, model, tokens, h, luts)["nll"],
        )
        torch.testing.assert_close(mixed, model_only, rtol=0, atol=1e-6)


def test_ngram_path_does_not_depend_on_chunking(setup):
    """With a fixed gate the chunk size is only a schedule (a learned gate learns per chunk, by design)."""
    h, model, luts, tokens = setup
    a = run_path("ngram", model, tokens, tg.Hyperparameters({**TINY, "NGRAM_GATE_LR": "0"}), luts)["nll"]
    b = run_path("ngram", model, tokens, tg.Hyperparameters({**TINY, "NGRAM_CHUNK": "16", "NGRAM_GATE_LR": "0"}), luts)[
        "nll"
    ]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_run_evals_shares_a_pass_between_a_path_and_its_ngram_mix(setup):
    """sliding+ngram and ttt+ttt_ngram each run one model pass; every score equals the path run alone."""
    h, model, luts, tokens = setup
    lines = []
    both = tg.run_evals(model, h, {"val": tokens}, luts, CPU, lines.append, ["sliding", "ngram", "ttt", "ttt_ngram"])
    for path in ("sliding", "ngram", "ttt", "ttt_ngram"):
        alone = run_path(path, model, tokens, h, luts)
        torch.testing.assert_close(both[f"val/{path}"]["nll"], alone["nll"], rtol=0, atol=1e-9)
        assert both[f"val/{path}"]["bpb"] == pytest.approx(alone["bpb"], abs=1e-12)
    assert len(lines) == 5 and lines[-1].startswith("compliance eval:")
    with pytest.raises(ValueError, match="'sliidng' is not one of plain, sliding, ttt, ngram, ttt_ngram"):
        tg.Hyperparameters({**TINY, "EVAL_PATHS": "sliding,sliidng"})


def test_ttt_without_adapters_is_sliding_then_global_sgd(setup):
    """TTT_LORA=0 scores each phase with the sliding path's windows over that stretch of the stream: without
    global SGD (one phase) it is the sliding path exactly; with it, the first phase is the sliding path on its
    stretch (nothing learned yet), later phases differ, and the base weights come back afterwards."""
    _, model, luts, tokens = setup
    h = tg.Hyperparameters({**TINY, "TTT_LORA": "0", "TTT_GLOBAL": "0"})
    sliding = tg.eval_stream(model, tokens, h, luts, CPU, h.eval_stride)["nll"]
    torch.testing.assert_close(tg.eval_ttt(model, tokens, h, luts, CPU)["nll"], sliding, rtol=0, atol=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hg = tg.Hyperparameters({**TINY, "TTT_LORA": "0"})
    spans = tg.doc_spans(tokens)
    first_end = spans[hg.ttt_phase_docs - 1][1]  # targets 1..first_end: phase 0
    nll = tg.eval_ttt(model, tokens, hg, luts, CPU)["nll"]
    phase0 = tg.eval_stream(model, tokens[: first_end + 1], hg, luts, CPU, hg.eval_stride)["nll"]  # that stretch alone
    assert torch.equal(nll[:first_end], phase0) and not torch.allclose(nll[first_end:], sliding[first_end:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ttt_with_more_phases_than_documents(setup):
    """Two documents, four phases: the empty phases are skipped, every target still scored once."""
    _, model, luts, tokens = setup
    two = tokens[:150].clone()
    two[1:150][two[1:150] == tg.BOS_ID] = 5
    two[100] = tg.BOS_ID
    for lora in ("0", "1"):
        r = tg.eval_ttt(model, two, tg.Hyperparameters({**TINY, "TTT_LORA": lora, "TTT_PHASES": "4"}), luts, CPU)
        assert r["tokens"] == 149 and bool((r["nll"] > 0).all())


@pytest.mark.parametrize("lora", ["0", "1", "cache"])
def test_ttt_scores_depend_only_on_the_prefix(setup, lora):
    """Cut the stream inside a late document, or add documents after the cut: every TTT score before that
    document's start stays (phase boundaries count documents from the start; 4365752 cut the stream into
    TTT_PHASES equal shares of all documents, so what came later moved the boundaries and changed earlier scores)."""
    _, model, luts, _ = setup
    tokens = ten_docs()
    knobs = {"TTT_LORA": "1", "TTT_CACHE": "1"} if lora == "cache" else {"TTT_LORA": lora}
    h = tg.Hyperparameters({**TINY, **knobs, "TTT_PHASES": "3", "TTT_PHASE_DOCS": "3"})
    full = tg.eval_ttt(model, tokens, h, luts, CPU)["nll"]
    start = 700  # a document of the last phase; nll[i] scores target i + 1
    cut = tg.eval_ttt(model, tokens[:760].clone(), h, luts, CPU)["nll"]
    more = tokens.clone()
    more[[800, 850, 900, 950]] = tg.BOS_ID  # more documents after the cut
    longer = tg.eval_ttt(model, more, h, luts, CPU)["nll"]
    for other in (cut, longer):
        torch.testing.assert_close(other[: start - 1], full[: start - 1], rtol=0, atol=1e-6)
    assert not torch.allclose(longer[900:], full[900:])  # the probe sees the change where it is


def test_per_token_out_after_an_ngram_path_feeds_the_sweep(setup, tmp_path):
    """PER_TOKEN_OUT: the last path's NLL (.npy); after an n-gram path also the model's own log p and entropy
    (_model.npz) in ngram_eval.sweep's format, so gate policies can be swept offline from one GPU eval."""
    _, model, luts, tokens = setup
    h = tg.Hyperparameters({**TINY, "PER_TOKEN_OUT": str(tmp_path / "val.npy")})
    r = tg.run_evals(model, h, {"val": tokens}, luts, CPU, lambda s: None, ["sliding", "ngram"])
    np.testing.assert_array_equal(np.load(tmp_path / "val.npy"), r["val/ngram"]["nll"].numpy().astype(np.float32))
    m = np.load(tmp_path / "val_model.npz")
    np.testing.assert_allclose(-m["logp"], r["val/sliding"]["nll"].numpy(), rtol=1e-6)
    assert m["entropy"].shape == m["logp"].shape == (len(tokens) - 1,) and (m["entropy"] > 0).all()


@pytest.mark.parametrize("lora", ["0", "1"])
def test_ttt_batches_keep_varlen_sequences_few(setup, lora, monkeypatch):
    """Batch padding is never BOS: with BOS padding every pad position was its own varlen sequence, and
    TTT_DOCS=64 x 2048 went over flash's 65,535-sequence grid on the H100 (CUDA invalid argument). Every
    forward of TTT (per-document rows, global SGD windows) holds at most one sequence per document + row."""
    h, model, luts, tokens = setup
    seen = []

    def spy(ids, doc_mask, impl, h, cu=None):
        m = tg.AttnMask(ids, True, "varlen")  # the offsets the GPU kernel would get
        seen.append((len(m.cu) - 1, ids.size(0) + int((ids == tg.BOS_ID).sum())))
        return tg.AttnMask(ids, doc_mask, impl)

    monkeypatch.setattr(tg.Block, "make_mask", staticmethod(spy))
    tg.eval_ttt(model, tokens, tg.Hyperparameters({**TINY, "TTT_LORA": lora}), luts, CPU)
    assert seen and all(n <= bound for n, bound in seen)
    assert max(n for n, _ in seen) < len(tokens) / 4  # BOS padding gave ~one sequence per pad position


def test_sweep_with_gate_lr_replays_the_eval_paths_online_gate(setup, tmp_path):
    """ngram_eval.sweep --gate-lr runs the eval path's own mixture (online gate from NGRAM_ALPHA, learning
    from scored chunks) on saved model outputs: it must give the ngram path's bpb."""
    from ngram_eval import sweep
    from ngram_eval._impl import target_bytes

    _, model, luts, tokens = setup
    h = tg.Hyperparameters({**TINY, "PER_TOKEN_OUT": str(tmp_path / "val.npy")})
    r = tg.run_evals(model, h, {"val": tokens}, luts, CPU, lambda s: None, ["sliding", "ngram"])
    m = np.load(tmp_path / "val_model.npz")
    nbytes = int(target_bytes(tokens, SP1024, h.vocab_size).sum())
    alpha = tuple(float(a) for a in h.ngram_alpha.split(","))
    (row,) = sweep.sweep(
        tokens,
        torch.from_numpy(m["logp"]),
        torch.from_numpy(m["entropy"]),
        nbytes,
        h.vocab_size,
        [h.ngram_order],
        [alpha],
        h.ngram_chunk,
        gate_lr=h.ngram_gate_lr,
    )
    assert h.ngram_gate_lr > 0 and row["bpb"] == pytest.approx(r["val/ngram"]["bpb"], abs=1e-6)
