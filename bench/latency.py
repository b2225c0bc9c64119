"""Per-token decode latency vs context length for ARCH=gpt|worker|pse (issue #8: the inference-time claim).

Decoder: incremental decoding (one token per step) of a train_gpt.GPT through the model's own modules
(linear layers, norms, MLP, lanes, gates, conv, U-Net skips, the layer order the model is set to run),
with one state per virtual layer (a block looped by depth recurrence gets one per pass):
  gpt     a KV cache of every position;
  worker  the conv window (last WORKER_KERNEL-1 inputs) and a KV cache of worker positions only (1/k);
  pse     one slot per distinct token id seen: k and v of its last occurrence and its EMA bank.
tests/test_latency.py checks that its logits equal the full forward's at every position.
static=True: the step with static shapes, for CUDA graphs: each state preallocated at full capacity (gpt
KV: L+steps, worker: L/k+steps, pse: slots), attention over all of it under a mask made on the device, the
position a device tensor, no host sync; pse slots never grow (timing feeds ids that hold one). Tested.

Timing: python bench/latency.py --contexts 1024,4096,16384 --batch 1,64 [--out FILE.json]
Record-preset model in bf16 (no autocast), state filled to context L with RANDOM contents: this times
the step, not quality, with the state as large as L tokens would leave it. ms/token: median over groups
of WORKER_INTERVAL consecutive steps (each group holds exactly one worker step) / group size.
eager: the dynamic step, launch-bound on a GPU. graph (CUDA only): the static step, one group captured as
one CUDA graph and replayed, its ids copied in first (the copy is timed); a failed capture is recorded in
the row. floor_ms_*: the same at L=16, the fixed per-step cost.
CPU smoke: --device cpu --contexts 64,128 --batch 1 (graph timing skipped, said so in rows and output)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train_gpt as tg  # noqa: E402

sa = tg.load_plugin("seed_archs")  # the worker and pse blocks (train_gpt's seed-architecture plug-in)

# Distinct ids in L tokens of sp8192 val text crossing documents (so more than one document would hold):
# realistic PSE slot counts, an upper bound. Contexts not listed get min(L, vocab), all tokens distinct.
PSE_SLOTS = "1024:456,4096:1334,16384:3229"
FLOOR_CONTEXT = 16
# Not cuDNN's attention: it builds a plan per shape, and the KV length changes at every step
# (measured on an H100: gpt 60-94 ms/token with it, every length alike).
DECODE_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
# The static step reads the whole preallocated cache under a mask of the valid entries. Flash takes no
# mask and cuDNN plans per shape, so on CUDA: the memory-efficient kernel (the mask becomes an additive
# bias; KVCache 16-aligns capacity so it needs no padding copy), alone, so a refusal raises and is
# recorded rather than silently falling back to MATH. Its forward grid is query blocks x heads x batch,
# no split over keys: at B=1 4 CTAs each stream a kv head's whole cache, a per-SM rate, not HBM
# bandwidth (--static-sdpa math: cuBLAS matmuls, parallel over keys, the scores in memory). CPU: MATH.
STATIC_SDPA = {"efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}


class KVCache:
    """Keys and values (B, Hkv, capacity, D) and, with doc masking, each entry's document index."""

    def __init__(self, att: tg.Attention, B: int, capacity: int, like: Tensor, doc_mask: bool):
        capacity = -(-capacity // 16) * 16
        self.k = like.new_zeros(B, att.kv_heads, capacity, att.head_dim)
        self.v = torch.zeros_like(self.k)
        self.doc = torch.full((B, capacity), -1, device=like.device) if doc_mask else None
        self.n, self.idx = 0, torch.arange(capacity, device=like.device)

    def append(
        self, k: Tensor, v: Tensor, doc: Tensor | None, at: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """k, v (B, 1, Hkv, D) -> all keys, values, and the mask of those in doc (None: all visible).
        at (static step): the entry's index, a device tensor; all `capacity` entries come back, masked."""
        if at is not None:
            at = at.view(1)
            self.k.index_copy_(2, at, k.transpose(1, 2)), self.v.index_copy_(2, at, v.transpose(1, 2))
            mask = self.idx <= at
            if self.doc is not None:
                self.doc.index_copy_(1, at, doc[:, None])
                mask = mask & (self.doc == doc[:, None])
            return self.k, self.v, mask.view(-1, 1, 1, self.idx.numel())
        self.k[:, :, self.n], self.v[:, :, self.n] = k[:, 0], v[:, 0]
        if self.doc is not None:
            self.doc[:, self.n] = doc
        self.n += 1
        mask = None if self.doc is None else (self.doc[:, : self.n] == doc[:, None])[:, None, None]
        return self.k[:, :, : self.n], self.v[:, :, : self.n], mask

    def fill_random(self, n: int) -> None:
        self.k[:, :, :n].normal_(), self.v[:, :, :n].normal_()
        self.n = n

    def nbytes(self) -> int:
        return 2 * self.k[:, :, : self.n].numel() * self.k.element_size()


def attn_step(att: tg.Attention, x: Tensor, cache: KVCache, pos: int | Tensor, dec: Decoder) -> Tensor:
    """Attention.forward for one token x (B, 1, C) at RoPE position pos (a tensor: static), over the cache."""
    B = x.size(0)
    q, k, v = att.qkv(x, pos)
    keys, values, mask = cache.append(k, v, dec.docs, pos if dec.static else None)
    # GQA at decode: a kv head's `rep` query heads act as `rep` queries of one plain (non-GQA) attention
    q = q.view(B, att.kv_heads, att.heads // att.kv_heads, att.head_dim)
    with sdpa_kernel(dec.sdpa):
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask).reshape(B, 1, att.heads, att.head_dim)
    return att.out(x, y, v)


def gpt_step(block: tg.Block, x: Tensor, x0: Tensor, st: KVCache, dec: Decoder) -> Tensor:
    """Block.forward for one token."""
    x = block.mix(x, x0)
    return block.branches(x, attn_step(block.attn, block.norm(x), st, dec.now, dec))


class WorkerState:
    """The conv's window (the last K inputs, this token's included) and the workers' KV cache."""

    def __init__(self, block: sa.WorkerBlock, B: int, capacity: int, like: Tensor, doc_mask: bool):
        self.window = like.new_zeros(B, block.conv.size(1), like.size(-1))  # zeros == the conv's zero padding
        self.window_doc = torch.full(self.window.shape[:2], -1, device=like.device) if doc_mask else None
        self.k, self.kv = block.k, KVCache(block.attn, B, capacity // block.k + 1, like, doc_mask)

    def fill_random(self, L: int) -> None:
        self.window.normal_()
        self.kv.fill_random(L // self.k)  # worker positions k-1, 2k-1, ... below L

    def nbytes(self) -> int:  # the K-1 inputs carried to the next step, and the workers' KV
        return self.window[:, 1:].numel() * self.window.element_size() + self.kv.nbytes()


def worker_step(block: sa.WorkerBlock, x: Tensor, x0: Tensor, st: WorkerState, dec: Decoder) -> Tensor:
    """WorkerBlock.forward for one token: causal_dwconv itself on the window, then attention + MLP
    only at a worker position (t % k == k-1; RoPE counts workers)."""
    x = block.mix(x, x0)
    st.window.copy_(torch.cat((st.window[:, 1:], block.norm(x)), 1))  # in place: a graph replays into it
    if st.window_doc is not None:
        st.window_doc.copy_(torch.cat((st.window_doc[:, 1:], dec.doc[:, None]), 1))
    x = x + sa.causal_dwconv(st.window, block.conv, st.window_doc)[:, -1:]
    if dec.t % block.k != block.k - 1:  # a memory token: conv only (dec.t: the host's count, no sync)
        return x
    return block.branches(x, attn_step(block.attn, block.norm(x), st.kv, dec.now // block.k, dec))


class Slots:
    """Which slot each token id holds, per row: shared by all layers (slots depend on the ids alone).
    static: `capacity` slots, never grown, all read by attention (more distinct ids than that: an error)."""

    def __init__(self, B: int, vocab: int, device: torch.device, capacity: int = 64, static: bool = False):
        self.of = torch.full((B, vocab), -1, dtype=torch.long, device=device)
        self.n = torch.zeros(B, dtype=torch.long, device=device)  # slots in use per row
        self.last = torch.zeros(B, capacity, dtype=torch.long, device=device)  # each slot's latest occurrence
        self.static, self.used = static, capacity if static else 0  # dynamic: n.max(), the slots attention reads

    def fill_random(self, L: int, S: int) -> Tensor:
        """S random distinct ids per row hold slots 0..S-1, last seen at random times < L; returns them."""
        B, V = self.of.shape
        held = torch.rand(B, V, device=self.of.device).argsort(1)[:, :S]
        self.of.scatter_(1, held, torch.arange(S, device=held.device).expand(B, -1))
        self.n.fill_(S)
        if not self.static:
            self.used, self.last = S, self.last.new_zeros(B, 2 * S)
        self.last[:, :S].random_(0, L)
        return held

    def see(self, ids: Tensor, t: int | Tensor, new_doc: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids (B,) at t -> (slot, is_new, gap since the slot's previous occurrence). Dynamic: one
        host sync (n.max()), the slot tensors grow and attention is sliced on the host's count."""
        if new_doc is not None:  # a BOS opens a document: its row starts again with no slots
            self.of.masked_fill_(new_doc[:, None], -1)
            self.n.masked_fill_(new_doc, 0)
        rows = torch.arange(len(ids), device=ids.device)
        slot = self.of[rows, ids]
        new = slot < 0
        slot = torch.where(new, self.n, slot)
        self.n += new
        self.of[rows, ids] = slot
        if not self.static:
            self.used = int(self.n.max())
            if self.used > self.last.size(1):
                self.last = F.pad(self.last, (0, self.last.size(1)))
        gap = (t - self.last[rows, slot]).float()
        self.last[rows, slot] = t
        return slot, new, gap


class PSEState:
    """One layer's slots: k, v of each slot's last occurrence (B, Hkv, S, D), EMA bank (B, S, scales)
    summed up to that occurrence, unscaled (pse_slots scales by 1 - decay at the end; fp32 as there)."""

    def __init__(self, att: sa.PSEAttention, B: int, capacity: int, like: Tensor):
        self.k = like.new_zeros(B, att.kv_heads, capacity, att.head_dim)
        self.v = torch.zeros_like(self.k)
        self.bank = torch.zeros(B, capacity, att.log2_decay.numel(), device=like.device)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.bank.size(1)
        if extra > 0:
            self.k, self.v = F.pad(self.k, (0, 0, 0, extra)), F.pad(self.v, (0, 0, 0, extra))
            self.bank = F.pad(self.bank, (0, 0, 0, extra))

    def fill_random(self, S: int, capacity: int) -> None:
        self.grow(capacity)  # Slots.fill_random's; drawn contiguous: the same state whatever the capacity
        for t, draw in (
            (self.k[:, :, :S], torch.randn_like),
            (self.v[:, :, :S], torch.randn_like),
            (self.bank[:, :S], lambda t: torch.rand_like(t) * 3 + 1),
        ):
            t.copy_(draw(t))

    def nbytes(self, S: int) -> int:
        return 2 * self.k[:, :, :S].numel() * self.k.element_size() + self.bank[:, :S].numel() * 4


def pse_attn_step(att: sa.PSEAttention, x: Tensor, st: PSEState, dec: Decoder) -> Tensor:
    """PSEAttention.forward (its _chunk) for one token, over the active slots instead of all positions."""
    B, _, D = x.shape
    rep, hd, S = att.heads // att.kv_heads, att.head_dim, dec.slots.used
    rows, (slot, new, gap) = torch.arange(B, device=x.device), dec.seen
    q = tg.rms_norm(att.c_q(x).view(B, 1, att.heads, hd)) * att.q_gain.to(x.dtype)[:, None]
    q = q.view(B, att.kv_heads, rep, hd)  # GQA as in attn_step: repeat_interleave's head order
    u = att.c_u(x).view(B, att.heads, -1)
    # this occurrence takes the slot: its k, v, and pse_slots' EMA step bank = decay^gap * bank + 1
    st.k[rows, :, slot] = tg.rms_norm(att.c_k(x).view(B, att.kv_heads, hd))
    st.v[rows, :, slot] = att.c_v(x).view(B, att.kv_heads, hd)
    a = torch.where(new[:, None], 0.0, torch.exp2(gap[:, None] * att.log2_decay))
    st.bank[rows, slot] = a * st.bank[rows, slot] + 1
    live = torch.arange(S, device=x.device) < dec.slots.n[:, None]  # (B, S)
    age = (dec.now - dec.slots.last[:, :S]).float()[..., None]  # steps since each slot's last occurrence
    ema = st.bank[:, :S] * (1 - torch.exp2(att.log2_decay)) * torch.exp2(age * att.log2_decay) * live[..., None]
    score = (q @ st.k[:, :, :S].mT).view(B, att.heads, S) / math.sqrt(hd)
    score = score + torch.einsum("bhs,bns->bhn", u, ema.to(u.dtype))
    p = torch.softmax(score.float().masked_fill(~live[:, None], float("-inf")), -1).to(x.dtype)
    y = (p.view(B, att.kv_heads, rep, S) @ st.v[:, :, :S]).view(B, att.heads, hd)
    banks = torch.einsum("bhn,bns->bhs", p, ema.to(p.dtype))  # the attended EMA bank per head
    y = y + torch.einsum("bhs,hsd->bhd", banks, att.ema_v.to(p.dtype))
    return att.proj(y.reshape(B, 1, D))


def pse_step(block: sa.PSEBlock, x: Tensor, x0: Tensor, st: PSEState, dec: Decoder) -> Tensor:
    """PSEBlock.forward for one token."""
    x = block.mix(x, x0)
    return block.branches(x, pse_attn_step(block.attn, block.norm(x), st, dec))


STEPS = {"gpt": gpt_step, "worker": worker_step, "pse": pse_step}


class Decoder:
    """Feeds one token per row per step through `model` as GPT.hidden + GPT.logits would at that
    position, in the layer order of `recur` (on, as every eval runs, by default). doc_mask:
    as hidden's doc_mask, no attention / conv tap / slot crosses a BOS (rows may differ). capacity:
    positions (gpt, worker); pse: slots if static, else unused (slots grow). static: see the top."""

    def __init__(self, model: tg.GPT, batch: int, capacity: int, doc_mask=False, static=False, recur=True):
        if model.h.arch not in STEPS:
            raise ValueError(f"ARCH={model.h.arch}: no decoder (gpt, worker, pse)")
        self.model, self.arch, self.doc_mask, self.t, self.static = model, model.h.arch, doc_mask, 0, static
        like = model.tok_emb.weight
        self.pos = torch.zeros((), dtype=torch.long, device=like.device)  # static: self.t on the device
        self.sdpa = STATIC_SDPA["efficient" if like.is_cuda else "math"] if static else DECODE_SDPA
        self.recur, self.order = recur, model.orders[recur]
        self.prev = like.new_zeros(batch, 1, like.size(1))  # SmearGate: the previous token's normed embedding
        self.doc = torch.zeros(batch, dtype=torch.long, device=like.device)  # BOS count so far, as doc ids
        self.docs = self.doc if doc_mask else None  # what the caches mask on (updated in place)
        slot_kw = dict(capacity=capacity, static=True) if static else {}
        self.slots = Slots(batch, like.size(0), like.device, **slot_kw) if self.arch == "pse" else None
        self.seen: tuple[Tensor, Tensor, Tensor] | None = None  # pse: this step's (slot, is_new, gap)
        self.states = [self._state(model.blocks[i], batch, capacity, like) for i in self.order]

    def _state(self, block: torch.nn.Module, B: int, capacity: int, like: Tensor) -> KVCache | WorkerState | PSEState:
        if self.arch == "gpt":
            return KVCache(block.attn, B, capacity, like, self.doc_mask)
        if self.arch == "worker":
            return WorkerState(block, B, capacity, like, self.doc_mask)
        return PSEState(block.attn, B, self.slots.last.size(1), like)

    @property
    def now(self) -> int | Tensor:
        """This step's position: the host's int, or (static) the device's tensor."""
        return self.pos if self.static else self.t

    @torch.no_grad()
    def step(self, ids: Tensor) -> Tensor:
        """ids (B,) at position self.t -> logits (B, vocab)."""
        m, bos = self.model, ids == tg.BOS_ID
        self.doc += bos
        x = m.embed(ids[:, None])
        if m.smear is not None:  # never across a BOS, with or without doc_mask (as hidden)
            prev = self.prev * (~bos).to(x.dtype)[:, None, None]
            self.prev.copy_(x)
            x = torch.lerp(x, prev, torch.sigmoid(m.smear).to(x.dtype))
        if self.slots is not None:
            self.seen = self.slots.see(ids, self.now, bos if self.doc_mask else None)
            for st in self.states:
                st.grow(self.slots.last.size(1))
        x0 = x
        x = m.layers(x, lambda j, i, y: STEPS[self.arch](m.blocks[i], y, x0, self.states[j], self), self.recur)
        self.t += 1
        if self.static:
            self.pos += 1
        return m.logits(tg.rms_norm(x))[:, 0]

    def fill_random(self, L: int, slots: int) -> Tensor | None:
        """Random state of the size L tokens leave (pse: `slots` distinct ids); returns, for pse, the
        ids (B, slots) that hold slots, so timing can feed ids that keep the slot count fixed."""
        self.t = L
        self.pos.fill_(L), self.prev.normal_()
        held = None if self.slots is None else self.slots.fill_random(L, slots)
        for st in self.states:
            st.fill_random(L) if held is None else st.fill_random(slots, self.slots.last.size(1))
        return held

    def state_bytes(self) -> int:
        if self.arch != "pse":
            return sum(st.nbytes() for st in self.states)
        table = (self.slots.of.numel() + self.slots.n.numel() + self.slots.last[:, : self.slots.used].numel()) * 8
        return table + sum(st.nbytes(self.slots.used) for st in self.states)


# --- timing ---------------------------------------------------------------------------------------


def record_model(arch: str, device: torch.device) -> tg.GPT:
    """The record preset's model with random weights in bf16 (decoded with recurrence on, as at eval)."""
    model = tg.GPT(tg.Hyperparameters({"PRESET": "record", "ARCH": arch})).to(device)
    for p in model.parameters():  # parameters only: fp32 buffers (RoPE frequencies, EMA decays) stay fp32
        p.data = p.data.bfloat16()
    return model.eval()


def timed_ms(fn: Callable[[], object], dev: torch.device) -> float:
    """ms of fn(): CUDA events on a GPU (launch gaps included: the step is host-bound at small B), else host time."""
    if dev.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def id_feed(held: Tensor | None, B: int, k: int, V: int, dev: torch.device) -> Callable[[], Tensor]:
    """Ids (k, B) for one group: any id but BOS, or (pse) ids that already hold a slot, so the slot count
    stays the one asked for (and a static decoder's slot capacity is never exceeded)."""
    if held is None:
        return lambda: torch.randint(tg.BOS_ID + 1, V, (k, B), device=dev)
    return lambda: held.gather(1, torch.randint(0, held.size(1), (B, k), device=dev)).T.contiguous()


def group_steps(model: tg.GPT) -> int:
    """Steps per timed group: the worker interval (a group holds one worker step), for every arch alike."""
    return getattr(model.h, "worker_interval", sa.WorkerBlock.knobs["WORKER_INTERVAL"])


def measure(model: tg.GPT, B: int, L: int, slots: int, groups: int, warmup: int) -> dict:
    """ms/token of the eager step at batch B after L tokens of random state: median over groups of k steps / k."""
    dev, k, V = model.tok_emb.weight.device, group_steps(model), model.h.vocab_size
    dec = Decoder(model, B, L + (groups + warmup) * k + 1)
    held = dec.fill_random(L, slots)
    state_bytes = dec.state_bytes()  # the state of L tokens, before the timed steps add to it
    feed, times = id_feed(held, B, k, V, dev), []
    for _ in range(warmup + groups):
        ids = feed()
        times.append(timed_ms(lambda ids=ids: [dec.step(i) for i in ids], dev) / k)
    return dict(
        arch=model.h.arch,
        batch=B,
        context=L,
        ms_per_token_eager=round(statistics.median(times[warmup:]), 4),
        state_bytes=state_bytes,
        pse_slots=slots if held is not None else None,
    )


def measure_graph(model: tg.GPT, B: int, L: int, slots: int, groups: int, warmup: int, sdpa: str) -> dict:
    """ms/token of the static step as a CUDA graph: one group of k steps captured once, then per group its
    ids copied into the graph's input buffer and one replay (both timed): median over groups / k.
    Capacity: gpt / worker attend over L + all steps run here (+ up to 16), pse over `slots` slots.
    Any failure (capture, memory) comes back as graph_error, so one call always finishes its table."""
    dev, k, V = model.tok_emb.weight.device, group_steps(model), model.h.vocab_size
    try:
        dec = Decoder(model, B, slots if model.h.arch == "pse" else L + (1 + warmup + groups) * k + 1, static=True)
        feed = id_feed(dec.fill_random(L, slots), B, k, V, dev)
        ids = feed()  # the graph's input buffer
        if dev.type != "cuda":  # one group of the static step, eager and untimed: the CPU smoke runs it
            [dec.step(i) for i in ids]
            return dict(ms_per_token_graph=None, graph_error="skipped: CUDA graphs need a CUDA device")
        dec.sdpa = STATIC_SDPA[sdpa]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream before capture: one group, eager
            [dec.step(i) for i in ids]
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records kernels only: dec.t moves on by k (host), dec.pos does not,
            [dec.step(i) for i in ids]  # and each replay moves dec.pos by k: the worker phase stays aligned
        feeds = [feed() for _ in range(warmup + groups)]
        times = [timed_ms(lambda f=f: (ids.copy_(f), graph.replay()), dev) / k for f in feeds]
    except Exception as e:  # noqa: BLE001 - recorded in the row
        if dev.type == "cuda":  # a capture_end that raised leaves the capture stream current
            torch.cuda.set_stream(torch.cuda.default_stream(dev))
        return dict(ms_per_token_graph=None, graph_error=f"{type(e).__name__}: {e}"[:500])
    return dict(ms_per_token_graph=round(statistics.median(times[warmup:]), 4), graph_error=None)


def git_commit() -> str:
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()  # noqa: E731
    head = git("rev-parse", "HEAD")  # the device's copy of the tree may have no .git
    return head + ("+dirty" if git("status", "--porcelain") else "") if head else "unknown"


def table(rows: list[dict]) -> str:
    f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        "| arch | batch | context | eager ms/token | graph ms/token | graph tokens/s | state MB | floor eager ms | "
        "floor graph ms | pse slots |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        g = r["ms_per_token_graph"]
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['context']} | {f(r['ms_per_token_eager'])} | {f(g)} | "
            f"{'-' if g is None else format(r['batch'] * 1000 / g, ',.0f')} | {r['state_bytes'] / 1e6:,.1f} | "
            f"{f(r['floor_ms_eager'])} | {f(r['floor_ms_graph'])} | {r['pse_slots'] or ''} |"
        )
    return "\n".join(lines)


def measure_arch(model: tg.GPT, args, known: dict[int, int], contexts: list[int], batches: list[int]) -> list[dict]:
    """Eager and CUDA-graph rows of one model at every batch and context, each with its batch's floor."""
    slots = lambda L: known.get(L, min(L, model.h.vocab_size))  # noqa: E731
    eager = lambda B, L: measure(model, B, L, slots(L), args.groups, args.warmup)  # noqa: E731
    graph = lambda B, L: measure_graph(model, B, L, slots(L), args.groups, args.warmup, args.static_sdpa)  # noqa: E731
    rows = []
    for B in batches:
        floor_e, floor_g = eager(B, FLOOR_CONTEXT), graph(B, FLOOR_CONTEXT)
        floor = dict(
            floor_ms_eager=floor_e["ms_per_token_eager"],
            floor_ms_graph=floor_g["ms_per_token_graph"],
            floor_graph_error=floor_g["graph_error"],
        )
        for L in contexts:
            rows.append({**eager(B, L), **graph(B, L), **floor})
            print(table(rows[-1:]).splitlines()[-1], rows[-1]["graph_error"] or "", file=sys.stderr, flush=True)
            if model.tok_emb.weight.is_cuda:
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", default="1024,4096,16384")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--archs", default="gpt,worker,pse")
    ap.add_argument("--pse-slots", default=PSE_SLOTS, help="L:slots,... (other L: min(L, vocab))")
    ap.add_argument("--groups", type=int, default=20, help="timed groups of WORKER_INTERVAL steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed groups first")
    ap.add_argument("--static-sdpa", choices=sorted(STATIC_SDPA), default="efficient", help="graph mode's attention")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    contexts, batches = [int(c) for c in args.contexts.split(",")], [int(b) for b in args.batch.split(",")]
    known = {int(a): int(b) for a, b in (p.split(":") for p in args.pse_slots.split(",") if p)}
    rows = []
    torch.manual_seed(0)
    for arch in args.archs.split(","):
        rows += measure_arch(record_model(arch, dev), args, known, contexts, batches)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    command = " ".join(["python", *(sys.argv if argv is None else ["bench/latency.py", *argv])])
    out = dict(
        command=command,
        git_commit=git_commit(),
        torch=torch.__version__,
        device=name,
        dtype="bfloat16",
        static_sdpa=args.static_sdpa,
        rows=rows,
        state="RANDOM contents of the size L tokens leave: times the step, not quality",
    )
    print(
        f"decode latency, {name}, torch {torch.__version__}, bf16; eager step vs static step in a CUDA graph "
        f"({args.static_sdpa} attention); state: random (step time, not quality)"
    )
    print(table(rows))
    for err in sorted({e for r in rows for e in (r["graph_error"], r["floor_graph_error"]) if e}):
        print(f"graph: {err}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
