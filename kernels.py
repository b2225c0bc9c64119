"""The MLP's up-projection and activation fused for training on CUDA (FUSED_MLP=1), a plug-in of train_gpt.py.

Eager, h = x W1^T is written, an elementwise kernel reads it and writes a = LeakyReLU(h)^2, and the backward reads
h and da again to make dh. Here one GEMM writes h (kept for the backward) and a from its epilogue, and the
backward's GEMM da = dy W2 multiplies by a'(h) in its epilogue, so da is never written. Both are one Triton
kernel (`gemm_act`) behind custom ops, which the compiled blocks (COMPILE=1/2) call as opaque nodes. It runs on
the CPU under TRITON_INTERPRET=1, which is how the tests check it against the eager MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

# Tile shapes: on CUDA the fastest of these for each shape, timed at its first call (a few seconds, in the compile
# warm-up); the CPU interpreter (the tests) takes one small tile. A persistent launch (a flattened loop over tiles,
# one program per SM) was 8-10 ms a step slower on an H100 (2026-12-06_train_kernels.md): one program per tile.
TILES = [(128, 128, 64, 4, 8), (128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 3, 4), (64, 128, 64, 4, 4)]
CONFIGS = [triton.Config(dict(BM=m, BN=n, BK=k, GROUP=8), num_stages=s, num_warps=w) for m, n, k, s, w in TILES]
CONFIGS = CONFIGS if torch.cuda.is_available() else [triton.Config(dict(BM=32, BN=32, BK=32, GROUP=2))]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "FORWARD"])
@triton.jit
def gemm_act(a, b, c, aux, M, N, K, sbk, sbn, slope, FORWARD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """c = act(a @ b) with aux = a @ b (FORWARD), or c = (a @ b) * act'(aux). a: (M, K) row-major; b: (K, N) with
    strides sbk, sbn; act = LeakyReLU(slope)^2. Tiles are visited GROUP row-blocks at a time, so b stays in L2."""
    pid, n_m, n_n = tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN)
    first = pid // (GROUP * n_n) * GROUP
    size = min(n_m - first, GROUP)
    pm, pn = first + pid % (GROUP * n_n) % size, pid % (GROUP * n_n) // size
    rm, rn, rk = (pm * BM + tl.arange(0, BM)).to(tl.int64), pn * BN + tl.arange(0, BN), tl.arange(0, BK)
    pa, pb = a + rm[:, None] * K + rk[None, :], b + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        kin = rk < K - k * BK
        acc = tl.dot(
            tl.load(pa, (rm[:, None] < M) & kin[None, :], 0.0), tl.load(pb, kin[:, None] & (rn[None, :] < N), 0.0), acc
        )
        pa, pb = pa + BK, pb + BK * sbk
    at, inside = rm[:, None] * N + rn[None, :], (rm[:, None] < M) & (rn[None, :] < N)
    if FORWARD:
        h = acc.to(c.dtype.element_ty)
        tl.store(aux + at, h, inside)
        h = h.to(tl.float32)  # the activation of the rounded h, as eager computes it
        h = tl.where(h > 0, h, slope * h)
        tl.store(c + at, (h * h).to(c.dtype.element_ty), inside)
    else:
        h = tl.load(aux + at, inside, 0.0).to(tl.float32)
        tl.store(c + at, (acc * tl.where(h > 0, 2.0 * h, 2.0 * slope * slope * h)).to(c.dtype.element_ty), inside)


def _launch(
    a: Tensor, b: Tensor, sbk: int, sbn: int, n: int, aux: Tensor | None, slope: float
) -> tuple[Tensor, Tensor]:
    m, k = a.shape
    c, forward = a.new_empty(m, n), aux is None
    aux = a.new_empty(m, n) if forward else aux
    grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)
    gemm_act[grid](a, b, c, aux, m, n, k, sbk, sbn, slope, FORWARD=forward)
    return c, aux


@torch.library.custom_op("kernels::mlp_up", mutates_args=())
def mlp_up(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """(act(x W1^T), x W1^T) for x (M, d), W1 (hidden, d)."""
    return _launch(x, w1, w1.stride(1), w1.stride(0), w1.size(0), None, slope)


@mlp_up.register_fake
def _(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.size(0), w1.size(0)), x.new_empty(x.size(0), w1.size(0))


@torch.library.custom_op("kernels::mlp_down_grad", mutates_args=())
def mlp_down_grad(dy: Tensor, w2: Tensor, h: Tensor, slope: float) -> Tensor:
    """dh = (dy W2) * act'(h) for dy (M, d), W2 (d, hidden), h (M, hidden)."""
    return _launch(dy, w2, w2.stride(0), w2.stride(1), w2.size(1), h, slope)[0]


@mlp_down_grad.register_fake
def _(dy: Tensor, w2: Tensor, h: Tensor, slope: float) -> Tensor:
    return torch.empty_like(h)


@torch.library.custom_op("kernels::mlp", mutates_args=())
def mlp(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(act(x W1^T) W2^T, act(x W1^T), x W1^T) for x (M, d): the MLP, and what its backward keeps."""
    a, h = mlp_up(x, w1, slope)
    return F.linear(a, w2), a, h


@mlp.register_fake
def _(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return x.new_empty(x.size(0), w2.size(0)), x.new_empty(x.size(0), w1.size(0)), x.new_empty(x.size(0), w1.size(0))


def _setup(ctx, inputs: tuple, output: tuple) -> None:
    x, w1, w2, ctx.slope = inputs
    ctx.save_for_backward(x, w1, w2, *output[1:])
    ctx.set_materialize_grads(False)  # a and h are outputs only to be kept: no zero gradients for them


def _backward(ctx, dy: Tensor, _da: Tensor | None, _dh: Tensor | None) -> tuple[Tensor | None, ...]:
    x, w1, w2, a, h = ctx.saved_tensors
    dh = mlp_down_grad(dy.contiguous(), w2, h, ctx.slope)
    return dh @ w1, dh.T @ x, dy.T @ a, None


mlp.register_autograd(_backward, setup_context=_setup)


def fused_mlp(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> Tensor:
    """The MLP of x (..., d) in x's dtype: proj(LeakyReLU(fc(x), slope)^2) with the weights W1, W2 as given."""
    return mlp(x.reshape(-1, x.size(-1)).contiguous(), w1, w2, slope)[0].view(*x.shape[:-1], w2.size(0))
