"""bench/latency.py (issue #8): the incremental Decoder gives the full forward's logits at every position
for gpt, worker and pse (tiny fp32 configs with every Block knob of the record stack on, depth recurrence
on, BOS inside the sequence at different places per row, doc masking on and off); its state sizes are
those the design promises; the static-shape step (CUDA graph mode) gives the eager step's logits; and the
timing path runs on CPU."""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_arch import hparams, randomize, sample_ids

import train_gpt as tg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import latency  # noqa: E402

T = 41  # > 10 worker groups of 4, not a multiple of 4


def tiny_model(name: str) -> tg.GPT:
    """test_arch's tiny config in the full GPT: 4 layers, layers 1-2 looped once more (6 virtual layers,
    3 U-Net skips), parallel lanes from layer 2, GQA 4/2, partial RoPE 4/8, XSA, gate, smear, x0 mix."""
    torch.manual_seed(0)
    h = hparams(name, num_layers=4, recur_start=1, recur_end=2, recur_extra=1, parallel_from=2)
    model = tg.GPT(h)
    randomize(model)
    with torch.no_grad():  # sharp attention: a wrong key or position must move the output
        for m in model.modules():
            if hasattr(m, "q_gain"):
                m.q_gain.fill_(4.0)
    return model.eval()


def mixed_docs(seed: int) -> torch.Tensor:
    """Two rows from test_arch's small alphabet (PSE slots repeat): row 0 opens with a BOS and has two
    more; row 1 starts mid-document and has one BOS elsewhere."""
    ids = sample_ids(2, T, torch.Generator().manual_seed(seed), bos_at=())
    ids[0, [0, 13, 30]] = tg.BOS_ID
    ids[1, 22] = tg.BOS_ID
    return ids


def decode(
    model: tg.GPT, ids: torch.Tensor, doc_mask: bool, static: bool = False
) -> tuple[torch.Tensor, latency.Decoder]:
    dec = latency.Decoder(model, ids.size(0), ids.size(1), doc_mask, static)
    return torch.stack([dec.step(ids[:, t]) for t in range(ids.size(1))], 1), dec


@pytest.mark.parametrize("name", ("gpt", "worker", "pse"))
@pytest.mark.parametrize("doc_mask", (True, False))
def test_decoder_equals_full_forward(name, doc_mask):
    model, ids = tiny_model(name), mixed_docs(1)
    with torch.no_grad():
        full = model.logits(model.hidden(ids, doc_mask))
    got, _ = decode(model, ids, doc_mask)
    err = (got - full).abs().max(-1).values  # (B, T)
    assert err.max() < 1e-4, f"first position off: {torch.nonzero(err >= 1e-4)[0].tolist()}, max err {err.max():.2e}"


@pytest.mark.parametrize("name", ("gpt", "worker", "pse"))
@pytest.mark.parametrize("doc_mask", (True, False))
def test_static_step_equals_eager_step(name, doc_mask):
    """static=True (full-capacity state, device-side position and masks, no slot growth) gives the eager
    step's logits at every one of T steps, BOS and new slots included; its shapes never change."""
    model, ids = tiny_model(name), mixed_docs(4)
    eager, _ = decode(model, ids, doc_mask)
    static, dec = decode(model, ids, doc_mask, static=True)
    assert (static - eager).abs().max() < 1e-5 and int(dec.pos) == dec.t == T
    if name == "pse":
        assert dec.slots.used == dec.slots.last.size(1) == T and all(st.k.size(2) == T for st in dec.states)


def test_static_step_after_fill_random():
    """The timing setup: random state at L, then static and eager decoders fed the same ids from the same
    state give the same logits (pse: ids that hold slots, a slot capacity of exactly the slots filled)."""
    for name in ("gpt", "worker", "pse"):
        model, L, S = tiny_model(name), 20, 6
        decs = [latency.Decoder(model, 2, L + 9), latency.Decoder(model, 2, S if name == "pse" else L + 9, static=True)]
        for d in decs:
            torch.manual_seed(5)
            held = d.fill_random(L, S)
        feed = latency.id_feed(held, 2, 4, model.h.vocab_size, held.device if held is not None else "cpu")
        for ids in torch.cat([feed(), feed()]):
            a, b = (d.step(ids) for d in decs)
            assert (a - b).abs().max() < 1e-5, name


def test_static_step_needs_no_host_sync():
    """On the meta device (shapes, no data) any .item() / int(tensor) raises: the static step has none, so a
    CUDA graph can hold it; the dynamic pse step has its one (n.max()), which shows the check bites."""
    for name in ("gpt", "worker", "pse"):
        model, ids = tiny_model(name).to("meta"), torch.full((2,), 5, device="meta")
        static = latency.Decoder(model, 2, 16, doc_mask=True, static=True)
        shapes = {tuple(static.step(ids).shape) for _ in range(5)}
        assert shapes == {(2, model.h.vocab_size)} and static.t == 5
    with pytest.raises(RuntimeError, match="meta"):
        latency.Decoder(model, 2, 16).step(ids)


def test_decoder_runs_the_recurrent_order():
    """The decoder follows `recur`: with recurrence off it matches the non-recurrent forward."""
    model, ids = tiny_model("gpt"), mixed_docs(2)
    with torch.no_grad():
        full = model.logits(model.hidden(ids, True, recur=False))
    dec = latency.Decoder(model, ids.size(0), ids.size(1), True, recur=False)
    got = torch.stack([dec.step(ids[:, t]) for t in range(ids.size(1))], 1)
    assert len(dec.states) == 4 and (got - full).abs().max() < 1e-4


def test_rotary_at_a_start_position_equals_the_full_sequence():
    rot = tg.Rotary(4, 10000.0, 8)  # a table of 8 positions: steps 0..7 read it, the rest compute cos/sin
    x = torch.randn(2, 20, 3, 8)
    full = rot(x)
    assert torch.allclose(tg.Rotary(4, 10000.0, 32)(x), full, atol=1e-6)  # the same values from the table
    for pos in (0, 1, 7, 19):  # as the decoder calls it: an int (eager step) or a device tensor (static step)
        assert torch.allclose(rot(x[:, pos : pos + 1], pos), full[:, pos : pos + 1], atol=1e-6)
        assert torch.allclose(rot(x[:, pos : pos + 1], torch.tensor(pos)), full[:, pos : pos + 1], atol=1e-6)


def test_state_sizes():
    """worker: T // k keys per virtual layer (positions k-1, 2k-1, ...), a conv window of K; pse: one slot
    per distinct id (of the current document with doc masking); gpt: all T."""
    ids = mixed_docs(3)
    _, gpt = decode(tiny_model("gpt"), ids, True)
    assert all(st.n == T for st in gpt.states)
    _, worker = decode(tiny_model("worker"), ids, False)
    assert all(st.kv.n == T // 4 and st.window.size(1) == 4 for st in worker.states)
    assert worker.state_bytes() * 3 < gpt.state_bytes()  # k=4: a quarter of the KV plus a 3-token window
    _, pse = decode(tiny_model("pse"), ids, False)
    assert pse.slots.n.tolist() == [len(set(row.tolist())) for row in ids]
    _, pse = decode(tiny_model("pse"), ids, True)
    assert pse.slots.n.tolist() == [len(set(ids[0, 30:].tolist())), len(set(ids[1, 22:].tolist()))]


def test_timing_smoke(tmp_path):
    """The timing path end to end on CPU: record-preset models, random state, JSON and table."""
    out = tmp_path / "lat.json"
    r = latency.main(
        ["--device", "cpu", "--contexts", "64,128", "--batch", "1", "--groups", "1", "--warmup", "0", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == r and "RANDOM" in r["state"] and r["torch"] == torch.__version__
    assert [(x["arch"], x["context"]) for x in r["rows"]] == [
        (a, c) for a in ("gpt", "worker", "pse") for c in (64, 128)
    ]
    assert all(x["ms_per_token_eager"] > 0 and x["floor_ms_eager"] > 0 and x["state_bytes"] > 0 for x in r["rows"])
    assert all(x["ms_per_token_graph"] is None and x["graph_error"].startswith("skipped") for x in r["rows"])
    gpt, worker, pse = (
        next(x for x in r["rows"] if x["arch"] == a and x["context"] == 128) for a in ("gpt", "worker", "pse")
    )
    kv = 2 * 17 * 128 * 4 * 64 * 2  # 17 virtual layers x 128 positions x 4 kv heads x 64 dims, k and v, bf16
    assert gpt["state_bytes"] == kv and worker["state_bytes"] == kv // 4 + 17 * 3 * 512 * 2 and pse["pse_slots"] == 128
