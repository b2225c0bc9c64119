"""Alternative blocks (issue 8, train_gpt.py ALTERNATIVE BLOCKS): causality, document isolation, shapes, learnability,
and each design's defining property (scan == recurrence, PSE == attention over slots, memory tokens
conv-only), on tiny CPU configs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import train_gpt as tg
from tests.conftest import TINY as BASE

arch = tg.load_plugin("seed_archs")  # the blocks live in seed_archs.py, train_gpt's seed-architecture plug-in

ARCHS = ("worker", "pse", "scan")
# The suite's tiny model, 2 layers (layers 0-1 looped once more).
TINY = {**BASE, "NUM_LAYERS": "2", "RECUR_START": "0", "RECUR_END": "1"}
# Small values, so T=50 crosses several worker and chunk boundaries and every scale matters.
KNOBS = dict(worker_interval=4, worker_kernel=4, pse_scales=4, pse_max_halflife=64.0, scan_chunk=8)


def hparams(arch_name: str, **knobs) -> tg.Hyperparameters:
    return tg.Hyperparameters({**TINY, "ARCH": arch_name, **{k.upper(): str(v) for k, v in {**KNOBS, **knobs}.items()}})


def init_like_gpt(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, tg.CastedLinear):
            nn.init.zeros_(m.weight) if getattr(m, "zero_init", False) else nn.init.orthogonal_(m.weight)


def randomize(model: nn.Module) -> None:
    """N(0, 0.2) on every parameter: zero-initialised branches would hide a leak."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)


class TinyLM(nn.Module):
    """Embedding, n of the blocks on the GPT path (x0 = normed embeddings), tied head."""

    def __init__(self, h: tg.Hyperparameters, n: int = 2):
        super().__init__()
        self.h = h
        self.emb = nn.Embedding(h.vocab_size, h.model_dim)
        self.blocks = nn.ModuleList(tg.BLOCKS[h.arch](h, i) for i in range(n))
        nn.init.normal_(self.emb.weight, std=0.05)
        init_like_gpt(self)

    def hidden(self, ids: torch.Tensor, doc_mask: bool = True) -> torch.Tensor:
        x0 = tg.rms_norm(self.emb(ids))
        mask, x = tg.block_class(self.h.arch).make_mask(ids, doc_mask, "sdpa", self.h), x0
        for block in self.blocks:
            x = block(x, x0, mask)
        return x

    def forward(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = F.linear(tg.rms_norm(self.hidden(ids)), self.emb.weight)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def sample_ids(B: int, T: int, gen: torch.Generator, bos_at=(0, 13, 30)) -> torch.Tensor:
    """Ids from a small alphabet (PSE slots repeat), never BOS except at `bos_at`."""
    ids = torch.randint(2, 12, (B, T), generator=gen)
    ids[:, [p for p in bos_at if p < T]] = tg.BOS_ID
    return ids


def gpt_with(h: tg.Hyperparameters, monkeypatch=None) -> tg.GPT:
    """The full GPT (smear, U-Net skips, recurrence) built with the arch's blocks."""
    return tg.GPT(h)


def assert_causal(fn, ids: torch.Tensor, cuts, gen: torch.Generator) -> None:
    with torch.no_grad():
        base = fn(ids)
        for t in cuts:
            other = ids.clone()
            other[:, t:] = torch.randint(0, 12, other[:, t:].shape, generator=gen)  # BOS (1) included
            out = fn(other)
            assert torch.allclose(out[:, :t], base[:, :t], atol=1e-5), f"position < {t} changed"
            assert not torch.allclose(out[:, t:], base[:, t:], atol=1e-5), f"probe at {t} changed nothing"


CUTS = (1, 3, 4, 7, 8, 9, 13, 16, 17, 31, 32, 49)  # worker (t%4==3) and chunk (t%8==0) edges, doc starts


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("doc_mask", (True, False))
@pytest.mark.parametrize("n_blocks", (1, 2))
def test_causal(name, doc_mask, n_blocks):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = TinyLM(hparams(name), n_blocks)
    randomize(model)
    assert_causal(lambda ids: model.hidden(ids, doc_mask), sample_ids(2, 50, gen), CUTS, gen)


@pytest.mark.parametrize("name", ARCHS)
def test_documents_are_isolated(name):
    """With doc masking, nothing before a BOS reaches positions from it on (incl. chunk summaries,
    conv taps and PSE slots that span the boundary)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    model = TinyLM(hparams(name))
    randomize(model)
    ids = sample_ids(2, 50, gen)
    with torch.no_grad():
        base = model.hidden(ids)
        other = ids.clone()
        other[:, 14:30] = torch.randint(2, 12, (2, 16), generator=gen)  # inside doc 2, BOS kept
        assert torch.allclose(model.hidden(other)[:, 30:], base[:, 30:], atol=1e-5)
        assert not torch.allclose(model.hidden(other)[:, 14:30], base[:, 14:30], atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_full_gpt_causal_and_steps(name, monkeypatch):
    """Integration preview: the blocks inside tg.GPT (recurrence on), causal, and Muon/Adam steps run."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    h = hparams(name, num_layers=4, recur_start=1, recur_end=2, recur_extra=1, parallel_from=2)
    model = gpt_with(h, monkeypatch)
    randomize(model)
    assert_causal(lambda ids: model.hidden(ids, True), sample_ids(2, 50, gen), (4, 9, 17, 31), gen)
    opt = tg.Optimizers(model, h)
    x = sample_ids(4, 41, gen)
    for _ in range(2):
        loss = model(x[:, :-1], x[:, 1:]).mean()
        assert torch.isfinite(loss)
        loss.backward()
        opt.step(1.0, 0.95)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("T", (1, 3, 5, 50, 67))
def test_shapes(name, T):
    """(B, T, D) in and out for T below and not a multiple of the worker interval / chunk."""
    torch.manual_seed(0)
    model = TinyLM(hparams(name))
    randomize(model)
    ids = sample_ids(3, T, torch.Generator().manual_seed(T))
    x = tg.rms_norm(model.emb(ids))
    y = model.blocks[0](x, x, arch.SeedBlock.make_mask(ids, True, "sdpa", model.h))
    assert y.shape == (3, T, 32) and torch.isfinite(y).all()


@pytest.fixture(scope="module")
def tokens(shared) -> torch.Tensor:
    return torch.from_numpy(
        np.asarray(tg.load_shard(str(shared / "data/fineweb_dev/fineweb_val_sp1024.bin"))[:20000], dtype=np.int64)
    )


@pytest.mark.parametrize("name", ARCHS)
def test_trains(name, tokens):
    """20 Adam steps on real sp1024 tokens lower the held-out loss, and every parameter gets a gradient
    (no dead knob or zero-init dead end)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    model = TinyLM(hparams(name, scan_chunk=16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train, held = tokens[:16000], tokens[16000:].unfold(0, 65, 65)[:16]

    def held_loss() -> float:
        with torch.no_grad():
            return float(model(held[:, :-1], held[:, 1:]))

    before, touched = held_loss(), set()
    for _ in range(20):
        starts = torch.randint(0, len(train) - 65, (16,), generator=gen)
        x = torch.stack([train[s : s + 65] for s in starts])
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        touched |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
        opt.zero_grad()
    after = held_loss()
    assert after < before - 0.8, (before, after)  # ~6.97 -> ~5.85 here
    assert touched == {n for n, _ in model.named_parameters()}, {n for n, _ in model.named_parameters()} - touched


def test_blelloch_equals_recurrence():
    gen = torch.Generator().manual_seed(5)
    for n in (1, 2, 3, 5, 8, 13):
        a = torch.rand(2, n, 3, generator=gen, dtype=torch.float64)
        b = torch.randn(2, n, 3, generator=gen, dtype=torch.float64)
        s, ref = torch.zeros(2, 3, dtype=torch.float64), []
        for i in range(n):
            ref.append(s)
            s = a[:, i] * s + b[:, i]
        assert torch.allclose(arch.blelloch_scan(a, b), torch.stack(ref, 1)), n


@pytest.mark.parametrize("doc_mask", (True, False))
def test_pse_is_attention_over_slots(doc_mask, monkeypatch):
    """PSEAttention == a literal loop: for each t, one slot per distinct id seen at <= t (in t's document),
    key/value from the id's last occurrence, EMA bank summed over all its occurrences. Query chunks of 5
    (T=23) check that chunking changes nothing."""
    monkeypatch.setattr(arch, "PSE_QUERY_CHUNK", 5)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(6)
    att = arch.PSEAttention(hparams("pse"))
    randomize(att)
    B, T, H, hd = 2, 23, 4, 8
    x, ids = torch.randn(B, T, 32, generator=gen), sample_ids(B, T, gen, bos_at=(0, 9))
    docs = (ids == tg.BOS_ID).cumsum(1) if doc_mask else torch.zeros_like(ids)
    with torch.no_grad():
        got = att(x, ids, docs if doc_mask else None)
        q = tg.rms_norm(att.c_q(x).view(B, T, H, hd)) * att.q_gain[:, None]
        k = tg.rms_norm(att.c_k(x).view(B, T, 2, hd)).repeat_interleave(2, 2)
        v = att.c_v(x).view(B, T, 2, hd).repeat_interleave(2, 2)
        u = att.c_u(x).view(B, T, H, -1)
        decay = torch.exp2(att.log2_decay)
        y = torch.zeros(B, T, H, hd)
        for b in range(B):
            for t in range(T):
                seen = [o for o in range(t + 1) if docs[b, o] == docs[b, t]]
                last = {int(ids[b, o]): o for o in seen}  # slot -> its latest occurrence
                bank = {i: sum(decay ** (t - o) for o in seen if ids[b, o] == i) * (1 - decay) for i in last}
                for hh in range(H):
                    s = torch.stack(
                        [q[b, t, hh] @ k[b, o, hh] / math.sqrt(hd) + u[b, t, hh] @ bank[i] for i, o in last.items()]
                    )
                    p = s.softmax(0)
                    y[b, t, hh] = sum(
                        p[j] * (v[b, o, hh] + bank[i] @ att.ema_v[hh]) for j, (i, o) in enumerate(last.items())
                    )
        want = att.proj(y.reshape(B, T, 32))
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_worker_memory_tokens_are_conv_only():
    """With the conv zeroed, only worker positions (t % k == k-1) change: memory tokens skip attention
    and the MLP."""
    torch.manual_seed(0)
    h = hparams("worker")
    block = arch.WorkerBlock(h, 0)
    randomize(block)
    with torch.no_grad():
        block.conv.zero_()
        x, x0 = torch.randn(2, 50, 32), torch.randn(2, 50, 32)
        ids = sample_ids(2, 50, torch.Generator().manual_seed(7))
        y = block(x, x0, arch.SeedBlock.make_mask(ids, True, "sdpa", h))
        mixed = block.resid_mix[0] * x + block.resid_mix[1] * x0
    worker = torch.arange(50) % 4 == 3
    assert torch.allclose(y[:, ~worker], mixed[:, ~worker]) and not torch.allclose(y[:, worker], mixed[:, worker])


@pytest.mark.parametrize("name", ARCHS)
def test_exports_and_reloads_through_the_artifact(name, tmp_path):
    """Each arch goes through the same export path: quantize, encode, write, read back, rebuild."""
    h = hparams(name, recur_extra=0, codecs="zlib")
    model = tg.GPT(h)
    randomize(model)
    path = str(tmp_path / f"{name}.pgq")
    tg.export_artifact(model, {}, h, path, lambda *a, **k: None)
    again, hm = tg.load_artifact(path, h, torch.device("cpu"))
    assert hm.arch == name and type(again.blocks[0]) is type(model.blocks[0])
    ids = sample_ids(2, 40, torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.logits(model.hidden(ids, True)), again.logits(again.hidden(ids, True))
    assert (a - b).abs().max() < 0.5  # int6/int8 weights: close, not equal
