"""The seed architectures (ARCH=worker|pse|scan): blocks from the project's seed papers that plug into
train_gpt.py's GPT in place of Block, on the same embeddings, MLP, optimizer, EMA, export and eval.

train_gpt.py imports this module only when ARCH names one of them (`make pack ARCH=...` bundles it into the
shipped file, and a run's log embeds it). Each block subclasses train_gpt.Lanes, declares its own knobs
(validated and logged like the rest, and stored in the artifact) and builds the ArchMask it reads; this module
registers them in train_gpt.BLOCKS. All are causal and, with DOC_MASK=1, no token reads an earlier document.
Block knobs that apply: X0_MIX, LN_SCALE, MLP_MULT, LEAKY_SLOPE, and for the worker/scan attention
QK_GAIN_INIT, ROPE_*, XSA, ATTN_GATE; PARALLEL_FROM does not (attention then MLP, always in sequence).
Measured against gpt: bench/results/2026-12-05_arch.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train_gpt import BLOCKS, BOS_ID, AttnMask, CastedLinear, Hyperparameters, Lanes, rms_norm


def _run_starts(first: Tensor) -> Tensor:
    """Token ids that are BOS exactly where `first` is true: AttnMask reads nothing else from its ids,
    so this builds a mask whose 'documents' are arbitrary runs (worker docs, chunk x doc segments)."""
    return torch.where(first, BOS_ID, BOS_ID + 1)


class ArchMask(AttnMask):
    """AttnMask plus what the alternative blocks need, built once per forward and shared by all
    layers: the ids (PSE slots, document starts), and the masks of the sub-sequences they attend."""

    def __init__(self, ids: Tensor, doc_mask: bool, impl: str, h: Hyperparameters, cu=None):
        super().__init__(ids, doc_mask, impl, cu)
        self.ids = ids
        bos = ids == BOS_ID
        if h.arch == "worker" and ids.size(1) >= h.worker_interval:  # attention over the worker positions only
            k = h.worker_interval
            docs = bos.cumsum(1)[:, k - 1 :: k]
            first = torch.cat((torch.ones_like(docs[:, :1], dtype=torch.bool), docs[:, 1:] != docs[:, :-1]), 1)
            self.workers = AttnMask(_run_starts(first), doc_mask, impl)
        if h.arch == "scan":  # causal attention inside each chunk (and document): a chunk start opens a run
            chunk_start = (torch.arange(ids.size(1), device=ids.device) % h.scan_chunk == 0).expand_as(bos)
            self.chunks = AttnMask(_run_starts(chunk_start | bos if doc_mask else chunk_start), True, impl)
            self.chunks.max_len = min(ids.size(1), h.scan_chunk)  # varlen launches its grid for max_len: C, not T


class SeedBlock(Lanes):
    """The seed architectures' blocks read an ArchMask."""

    @staticmethod
    @torch.compiler.disable  # built eagerly, like AttnMask: the blocks stay compiled
    def make_mask(ids: Tensor, doc_mask: bool, impl: str, h: Hyperparameters, cu=None) -> ArchMask:
        return ArchMask(ids, doc_mask, impl, h, cu)


def doc_ids(mask: ArchMask) -> Tensor | None:
    """Document index of each position (a BOS opens one); None when attention may cross documents."""
    return None if mask.impl == "causal" else (mask.ids == BOS_ID).cumsum(1)


def blelloch_scan(a: Tensor, b: Tensor) -> Tensor:
    """Exclusive scan along dim 1 of the affine maps s -> a_i * s + b_i (a, b of one shape): entry i is
    the state after elements 0..i-1 starting from s = 0 (entry 0 is 0). Composition is associative, so
    Blelloch's work-efficient tree equals the sequential recurrence in 2*log2(n) vectorised steps."""
    n = a.size(1)
    pad = (1 << (n - 1).bit_length()) - n  # identity maps (1, 0) up to a power of two
    a = torch.cat((a, a.new_ones(a.size(0), pad, *a.shape[2:])), 1)
    b = torch.cat((b, b.new_zeros(b.size(0), pad, *b.shape[2:])), 1)
    lefts = []
    while a.size(1) > 1:  # up-sweep: each parent is (right child) o (left child)
        lefts.append((a[:, 0::2], b[:, 0::2]))  # the way down needs only the left children
        a, b = a[:, 1::2] * a[:, 0::2], a[:, 1::2] * b[:, 0::2] + b[:, 1::2]
    s = torch.zeros_like(b)  # the root has nothing to its left
    for la, lb in reversed(lefts):  # down-sweep: a left child inherits its parent's state; a right child
        s = torch.stack((s, la * s + lb), 2).flatten(1, 2)  # gets it with its left sibling applied
    return s[:, :n]


# --- WorkerTransformer: sparse workers, conv-only memory ------------------------------------------


def causal_dwconv(x: Tensor, w: Tensor, docs: Tensor | None) -> Tensor:
    """Depthwise causal conv y_t = sum_j w[:, j] * x_{t-j} over j < K; taps reaching into an earlier
    document are dropped. K shifted copies (a few taps), not a loop over T."""
    y = x * w[:, 0].to(x.dtype)
    for j in range(1, min(w.size(1), x.size(1))):
        prev = F.pad(x[:, :-j], (0, 0, j, 0))
        if docs is not None:
            prev = prev * F.pad((docs[:, j:] == docs[:, :-j]).to(x.dtype), (j, 0)).unsqueeze(-1)
        y = y + prev * w[:, j].to(x.dtype)
    return y


class WorkerBlock(SeedBlock):
    """Positions t with t % k == k-1 (k = WORKER_INTERVAL) are workers, each after k-1 memory tokens.
    Every position gets a causal depthwise conv (WORKER_KERNEL taps): how a worker gathers its memory and
    memory reads the previous worker (a kernel >= k reaches it from every memory position). Only workers
    then run attention, over the workers alone (causal, document-masked; RoPE positions count workers),
    and the MLP, in place: T is unchanged while attention cost falls by k^2, MLP cost and the KV cache by
    k. The output gate is Attention's sigmoid gate (ATTN_GATE=1), credited for stable sparse updates."""

    knobs = dict(WORKER_INTERVAL=4, WORKER_KERNEL=4)

    def __init__(self, h: Hyperparameters, layer: int):
        super().__init__(h, layer)
        self.k = h.worker_interval
        self.conv = nn.Parameter(torch.zeros(h.model_dim, h.worker_kernel))  # zero: starts as the identity, like proj

    def forward(self, x: Tensor, x0: Tensor, mask: ArchMask) -> Tensor:
        x = self.mix(x, x0)
        x = x + causal_dwconv(self.norm(x), self.conv, doc_ids(mask))
        k, T = self.k, x.size(1)
        if T < k:  # no worker yet
            return x
        w = x[:, k - 1 :: k]
        w = self.branches(w, self.attn(self.norm(w), mask.workers))
        return x.index_copy(1, torch.arange(k - 1, T, k, device=x.device), w)


# --- Per-Slot-EMA: attention over the distinct tokens seen so far -------------------------------------

PSE_QUERY_CHUNK = 256  # queries per step of the PSE score loop: caps memory, never changes results


@torch.no_grad()
def pse_slots(ids: Tensor, docs: Tensor | None, vocab: int, log2_decay: Tensor) -> tuple[Tensor, Tensor]:
    """For each position tau: the next position of its slot (T if none), and its slot's EMA bank just
    after tau, sum over occurrences o <= tau of decay^(tau - o), times (1 - decay) so it lies in (0, 1].
    A slot is a token id within a document. Sort + one linear-recurrence scan: O(T log T), no T^2."""
    T = ids.size(1)
    slot = ids if docs is None else docs * vocab + ids
    slot, order = torch.sort(slot, dim=1, stable=True)  # a slot's occurrences become adjacent, in time order
    cont = slot[:, 1:] == slot[:, :-1]  # occurrence i continues occurrence i-1's slot
    nxt = F.pad(torch.where(cont, order[:, 1:], T), (0, 1), value=T)
    gap = (order[:, 1:] - order[:, :-1]).unsqueeze(-1).float()
    a = F.pad(torch.where(cont.unsqueeze(-1), torch.exp2(gap * log2_decay), 0.0), (0, 0, 1, 0))
    bank = a * blelloch_scan(a, torch.ones_like(a)) + 1  # EMA_i = decay^gap * EMA_{i-1} + 1 (inclusive)
    nxt = torch.empty_like(nxt).scatter(1, order, nxt)  # back to time order
    bank = torch.empty_like(bank).scatter(1, order.unsqueeze(-1).expand_as(bank), bank)
    return nxt, bank * (1 - torch.exp2(log2_decay))


class PSEAttention(nn.Module):
    """The query at t attends over the slots active at t: the ids seen at positions <= t (itself included)
    in its document. A slot's key/value is the block input at its last occurrence plus its EMA bank of
    occurrences at PSE_SCALES half-lives geometric from 1 to PSE_MAX_HALFLIFE: the bank enters the score
    through per-head, per-scale weights read from the query token (c_u) and the value through ema_v. No
    RoPE: recency and frequency come only from the banks. Attention over slots == attention over positions
    tau <= t that are their id's latest occurrence at t, so it runs as masked dense attention:
    O(T^2 (D + H*S)) compute (no fused kernel), memory O(B*H*PSE_QUERY_CHUNK*T) (chunks are recomputed in
    backward). Decoding state: per distinct id, its k, v, bank and last time: O(distinct ids) per step, not O(T)."""

    def __init__(self, h: Hyperparameters):
        super().__init__()
        D, H = h.model_dim, h.num_heads
        self.heads, self.kv_heads, self.head_dim, self.vocab = H, h.num_kv_heads, D // H, h.vocab_size
        kv = h.num_kv_heads * self.head_dim
        self.c_q, self.c_k, self.c_v = CastedLinear(D, D), CastedLinear(D, kv), CastedLinear(D, kv)
        self.proj = CastedLinear(D, D)
        self.proj.zero_init = True
        self.q_gain = nn.Parameter(torch.full((H,), h.qk_gain_init))
        self.c_u = CastedLinear(D, H * h.pse_scales)  # how much each head weighs each EMA scale of a slot
        self.ema_v = nn.Parameter(torch.zeros(H, h.pse_scales, self.head_dim))  # what an attended bank adds
        halflife = torch.logspace(0, math.log2(h.pse_max_halflife), h.pse_scales, base=2)
        self.register_buffer("log2_decay", -1 / halflife, persistent=False)

    def forward(self, x: Tensor, ids: Tensor, docs: Tensor | None) -> Tensor:
        B, T, D = x.shape
        H, rep = self.heads, self.heads // self.kv_heads
        q = (rms_norm(self.c_q(x).view(B, T, H, -1)) * self.q_gain.to(x.dtype)[:, None]).transpose(1, 2)
        k = rms_norm(self.c_k(x).view(B, T, self.kv_heads, -1)).repeat_interleave(rep, 2).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.kv_heads, -1).repeat_interleave(rep, 2).transpose(1, 2)
        u = self.c_u(x).view(B, T, H, -1).transpose(1, 2)
        nxt, bank = pse_slots(ids, docs, self.vocab, self.log2_decay)
        ys = []
        for a in range(0, T, PSE_QUERY_CHUNK):  # keys: everything before the chunk's end
            b = min(a + PSE_QUERY_CHUNK, T)
            ys.append(
                torch.utils.checkpoint.checkpoint(
                    self._chunk,
                    a,
                    q[:, :, a:b],
                    k[:, :, :b],
                    v[:, :, :b],
                    u[:, :, a:b],
                    nxt[:, :b],
                    bank[:, :b],
                    None if docs is None else docs[:, :b],
                    use_reentrant=False,
                )
            )
        return self.proj(torch.cat(ys, 2).transpose(1, 2).reshape(B, T, D))

    def _chunk(
        self, t0: int, q: Tensor, k: Tensor, v: Tensor, u: Tensor, nxt: Tensor, bank: Tensor, docs: Tensor | None
    ) -> Tensor:
        t = torch.arange(t0, t0 + q.size(2), device=q.device)[:, None]
        tau = torch.arange(k.size(2), device=q.device)
        live = (tau <= t) & (nxt[:, None] > t)  # (B, C, n): tau holds its slot's latest occurrence at t
        if docs is not None:
            live = live & (docs[:, t0:, None] == docs[:, None])
        # the slot's bank at t: no occurrence since tau, so it has only decayed by (t - tau) steps
        ema = bank[:, None] * torch.exp2((t - tau).clamp(min=0)[..., None] * self.log2_decay) * live[..., None]
        score = q @ k.mT / math.sqrt(self.head_dim) + torch.einsum("bhcs,bcns->bhcn", u, ema.to(u.dtype))
        p = torch.softmax(score.float().masked_fill(~live[:, None], float("-inf")), -1).to(v.dtype)
        banks = torch.einsum("bhcn,bcns->bhcs", p, ema.to(p.dtype))  # attended EMA bank per head
        return p @ v + torch.einsum("bhcs,hsd->bhcd", banks, self.ema_v.to(p.dtype))


class PSEBlock(SeedBlock):
    """Block with PSEAttention in place of Attention (ATTN_GATE, XSA and RoPE do not apply)."""

    knobs = dict(PSE_SCALES=4, PSE_MAX_HALFLIFE=256.0)

    attention = PSEAttention

    def forward(self, x: Tensor, x0: Tensor, mask: ArchMask) -> Tensor:
        x = self.mix(x, x0)
        return self.branches(x, self.attn(self.norm(x), mask.ids, doc_ids(mask)))


# --- TransformerScanModel as a block: chunk summaries, prefix scan, chunk-local attention ---------------


class ScanBlock(SeedBlock):
    """Chunks of SCAN_CHUNK tokens. T1: each chunk is attention-pooled (non-causally: only later chunks
    read it) into (forget gate, contribution) = summ(pool). Scan: an exclusive Blelloch scan of the
    gated combine s -> gate * s + contribution gives chunk c the aggregate of chunks < c only, never
    its own; it is RMS-normed and added, scaled by `inject`, to the chunk's residual stream (so later
    layers' summaries carry it on). T2: causal attention inside the chunk, then the MLP. Documents: a
    chunk pools only its last document's tokens and a chunk holding a BOS forgets what came before it;
    a token reads the aggregate only if its document began before its chunk. Cost: attention O(T*C),
    scan O((T/C)*D) in 2*log2(T/C) steps; decoding state: the running aggregate + one chunk's KV."""

    knobs = dict(SCAN_CHUNK=64)

    def __init__(self, h: Hyperparameters, layer: int):
        super().__init__(h, layer)
        self.chunk = h.scan_chunk
        self.pool = nn.Parameter(torch.zeros(h.model_dim))  # T1 attention-pool query; zero: mean pool at init
        self.summ = CastedLinear(h.model_dim, 2 * h.model_dim)  # pooled chunk -> (gate logits, contribution)
        self.inject = nn.Parameter(torch.zeros(h.model_dim))  # zero: starts as a chunk-local Block

    def forward(self, x: Tensor, x0: Tensor, mask: ArchMask) -> Tensor:
        x = self.mix(x, x0)
        B, T, D = x.shape
        C, docs = self.chunk, doc_ids(mask)
        n = -(-T // C)
        pad = n * C - T
        xs = F.pad(self.norm(x), (0, 0, 0, pad)).view(B, n, C, D)
        pos = torch.arange(n * C, device=x.device).view(n, C)
        keep = (pos < T).expand(B, n, C)  # padding never enters a summary
        keep_state = torch.ones(B, n, 1, dtype=x.dtype, device=x.device)
        if docs is not None:
            last_doc = docs[:, pos[:, -1].clamp(max=T - 1)]  # the document that runs into the next chunk
            keep = keep & (F.pad(docs, (0, pad), value=-1).view(B, n, C) == last_doc[..., None])
            keep_state = (~F.pad(mask.ids == BOS_ID, (0, pad)).view(B, n, C).any(-1, keepdim=True)).to(x.dtype)
        w = (xs @ self.pool.to(x.dtype)).masked_fill(~keep, float("-inf")).softmax(-1)
        gate, contrib = self.summ((w.unsqueeze(-1) * xs).sum(2)).chunk(2, -1)
        state = blelloch_scan(torch.sigmoid(gate) * keep_state, contrib)  # chunk c: chunks < c only
        agg = rms_norm(state).repeat_interleave(C, 1)[:, :T]  # chunk 0 gets rms_norm(0) = 0
        if docs is not None:  # the aggregate is of the document open at the chunk's start
            open_doc = docs[:, (pos[:, 0] - 1).clamp(min=0)].repeat_interleave(C, 1)[:, :T]
            agg = agg * (docs == open_doc).unsqueeze(-1).to(x.dtype)
        x = x + self.inject.to(x.dtype) * agg
        return self.branches(x, self.attn(self.norm(x), mask.chunks))


BLOCKS.update(worker=WorkerBlock, pse=PSEBlock, scan=ScanBlock)
