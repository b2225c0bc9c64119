"""Training kernels on CUDA, a plug-in of train_gpt.py: the MLP's up-projection and activation fused (FUSED_MLP=1),
or the MLP's GEMMs in float8 (FP8_MLP=1); attention's XSA and sparse gate in one pass each way (FUSED_XSA=1).

Eager, h = x W1^T is written, an elementwise kernel reads it and writes a = LeakyReLU(h)^2, and the backward reads
h and da again to make dh. Here one GEMM writes h (kept for the backward) and a from its epilogue, and the
backward's GEMM da = dy W2 multiplies by a'(h) in its epilogue, so da is never written. Both are one Triton
kernel (`gemm_act`) behind custom ops, which the compiled blocks (COMPILE=1/2) call as opaque nodes. It runs on
the CPU under TRITON_INTERPRET=1, which is how the tests check it against the eager MLP.

FP8_MLP=1 runs both linears' GEMMs (forward, dx, dW) through torch._scaled_mm (cuBLASLt) with one dynamic scale per
tensor: e4m3 for activations and weights, e5m2 (more range, less precision) for gradients, as torchao's tensorwise
recipe does. The activation stays torch code between them, so the compiled blocks fuse it with the float8 casts.
At the record's width the scale, cast and transpose passes cost more than the faster GEMMs save, so it trains slower
than bf16 there (bench/results/2026-12-06_train_h200.md); it is for wider MLPs, measured with bench/mlp_kernel.py.

FUSED_XSA=1: Attention.out removes from each head's output its component along its kv head's normalised value
(XSA), then scales the head by 2 sigmoid of a few input dims (the sparse gate). Here one Triton kernel reads y, v
and the gate's inputs once and writes the output; the backward reads them and the output's gradient once and writes
dy, dv and the gate logits' gradient, from which two tiny GEMMs make the gate's input and weight gradients. It
replaces five of Inductor's kernels and takes 3.3 ms off a sustained H100 step
(bench/results/2026-12-07_train_xsa_h100.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

# (BM, BN, BK, stages, warps, split) of the forward and of the backward's GEMM on CUDA, fixed so that every run compiles
# the same kernel (an autotuner timing at the first call picked differently on different calls); the interpreter (the
# tests) takes one small tile. One persistent program per SM walks the tiles through TMA descriptors, so a tile's
# epilogue stores overlap the next tile's loads. On an H100 this beat e2deeb2's launch per tile by 1.7 ms a step with
# FA3. split: the epilogue stores its tile in two halves of BN/2 columns, which halves its shared-memory buffers (so
# 128x256x64 tiles fit in 3 stages; the fastest of bench/mlp_kernel.py's sweep, 2026-12-07_train_staged.md). A tile
# over the H100's 227 KiB builds but fails at its first launch: bench/kernel_resources.py compiles tiles for sm90 on
# the CPU, and a test checks CUDA_TILES fit.
CUDA_TILES = dict.fromkeys((True, False), (128, 256, 64, 3, 8, True))
TILES = dict(CUDA_TILES) if torch.cuda.is_available() else dict.fromkeys((True, False), (32, 32, 32, 1, 4, False))


@triton.jit
def gemm_act(a, b, c, aux, M, N, K, slope, FORWARD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
             BK: tl.constexpr, GROUP: tl.constexpr, PROGRAMS: tl.constexpr, SPLIT: tl.constexpr):  # fmt: skip
    """c = act(a @ b) with aux = a @ b (FORWARD), or c = (a @ b) * act'(aux); all TMA descriptors. a: (M, K);
    b: (N, K) if FORWARD (W1) else (K, N) (W2); act = LeakyReLU(slope)^2. Tiles go GROUP row-blocks at a time, so
    b stays in L2; the loads past an edge read zeros and the stores past it are dropped."""
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), n_m * n_n, PROGRAMS, flatten=True):
        first = tile // (GROUP * n_n) * GROUP
        size = min(n_m - first, GROUP)
        m, n = (first + tile % (GROUP * n_n) % size) * BM, tile % (GROUP * n_n) // size * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BK)):
            w = b.load([n, k * BK]).T if FORWARD else b.load([k * BK, n])
            acc = tl.dot(a.load([m, k * BK]), w, acc)
        if SPLIT:
            left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            epilogue(left, c, aux, m, n, slope, FORWARD)
            epilogue(right, c, aux, m, n + BN // 2, slope, FORWARD)
        else:
            epilogue(acc, c, aux, m, n, slope, FORWARD)


@triton.jit
def epilogue(acc, c, aux, m, n, slope, FORWARD: tl.constexpr):
    """gemm_act's stores of one (sub)tile of a @ b at (m, n)."""
    if FORWARD:
        h = acc.to(c.dtype)
        aux.store([m, n], h)
        h = h.to(tl.float32)  # the activation of the rounded h, as eager computes it
        h = tl.where(h > 0, h, slope * h)
        c.store([m, n], (h * h).to(c.dtype))
    else:
        h = aux.load([m, n]).to(tl.float32)
        c.store([m, n], (acc * tl.where(h > 0, 2.0 * h, 2.0 * slope * slope * h)).to(c.dtype))


def _launch(a: Tensor, b: Tensor, n: int, aux: Tensor | None, slope: float) -> tuple[Tensor, Tensor]:
    (m, k), forward = a.shape, aux is None
    c, aux = a.new_empty(m, n), a.new_empty(m, n) if forward else aux
    bm, bn, bk, stages, warps, split = TILES[forward]
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 4
    programs = min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn))
    desc = lambda t, block: TensorDescriptor.from_tensor(t.contiguous(), block)
    b_desc, out = desc(b, [bn, bk] if forward else [bk, bn]), [bm, bn // 2 if split else bn]
    meta = dict(BM=bm, BN=bn, BK=bk, GROUP=8, PROGRAMS=programs, SPLIT=split, num_stages=stages, num_warps=warps)
    gemm_act[(programs,)](desc(a, [bm, bk]), b_desc, desc(c, out), desc(aux, out), m, n, k, slope, forward, **meta)
    return c, aux


@torch.library.custom_op("kernels::mlp_up", mutates_args=())
def mlp_up(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    """(act(x W1^T), x W1^T) for x (M, d), W1 (hidden, d)."""
    return _launch(x, w1, w1.size(0), None, slope)


@mlp_up.register_fake
def _(x: Tensor, w1: Tensor, slope: float) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.size(0), w1.size(0)), x.new_empty(x.size(0), w1.size(0))


@torch.library.custom_op("kernels::mlp_down_grad", mutates_args=())
def mlp_down_grad(dy: Tensor, w2: Tensor, h: Tensor, slope: float) -> Tensor:
    """dh = (dy W2) * act'(h) for dy (M, d), W2 (d, hidden), h (M, hidden)."""
    return _launch(dy, w2, w2.size(1), h, slope)[0]


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


def to_fp8(t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """t in float8 `dtype`, scaled so that its largest magnitude is dtype's largest, and the inverse scale."""
    top = torch.finfo(dtype).max
    scale = top / t.detach().abs().amax().float().clamp(min=1e-12)
    return (t.float() * scale).clamp(-top, top).to(dtype), scale.reciprocal()


class FP8Linear(torch.autograd.Function):
    """x W^T for x (M, K) and W (N, K) of one dtype, in that dtype: the forward, dx and dW GEMMs in float8.
    _scaled_mm wants its first operand row-major and its second column-major, hence the transposed copies."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        (x8, sx), (w8, sw) = to_fp8(x, torch.float8_e4m3fn), to_fp8(w, torch.float8_e4m3fn)
        ctx.save_for_backward(x8, sx, w8, sw)
        return torch._scaled_mm(x8, w8.T, scale_a=sx, scale_b=sw, out_dtype=x.dtype, use_fast_accum=True)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor]:
        x8, sx, w8, sw = ctx.saved_tensors
        g8, sg = to_fp8(dy.contiguous(), torch.float8_e5m2)
        dx = torch._scaled_mm(g8, w8.T.contiguous().T, scale_a=sg, scale_b=sw, out_dtype=dy.dtype)
        return dx, torch._scaled_mm(g8.T.contiguous(), x8.T.contiguous().T, scale_a=sg, scale_b=sx, out_dtype=dy.dtype)


def fp8_mlp(x: Tensor, w1: Tensor, w2: Tensor, slope: float) -> Tensor:
    """fused_mlp's MLP with float8 GEMMs (FP8_MLP=1)."""
    a = F.leaky_relu(FP8Linear.apply(x.reshape(-1, x.size(-1)), w1), slope).square()
    return FP8Linear.apply(a, w2).view(*x.shape[:-1], w2.size(0))


@triton.jit
def xsa_gate_kernel(y, v, x, w, dout, o, dv, dl, N, sx, sv, H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr,
                    GD: tl.constexpr, GP: tl.constexpr, BN: tl.constexpr, FORWARD: tl.constexpr):  # fmt: skip
    """BN rows, the heads of kv head program_id(1). FORWARD: o = (y - (y.vn) vn) * gate. Else, from dout: o = dy,
    dv (normalize's backward: the part along vn dropped unless the norm was clamped) and dl, the gate logits'."""
    rows, j, d = tl.program_id(0) * BN + tl.arange(0, BN), tl.program_id(1), tl.arange(0, D)
    ok = rows < N
    at_v = (rows[:, None] * KV + j) * D + d[None, :]  # dv's; v's rows are sv apart (FUSED_QKV: a view of q, k, v)
    val = tl.load(v + rows[:, None] * sv + j * D + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(val * val, 1))
    vn = val / tl.maximum(norm, 1e-12)[:, None]  # F.normalize's eps
    k = tl.arange(0, GP)  # the gate's inputs, x[rows, :GD], read once for the group's heads
    xg = tl.load(x + rows[:, None] * sx + k[None, :], mask=ok[:, None] & (k[None, :] < GD), other=0.0).to(tl.float32)
    dvn = tl.zeros((BN, D), dtype=tl.float32)
    for i in tl.static_range(H // KV):
        h = j * (H // KV) + i
        at = (rows[:, None] * H + h) * D + d[None, :]
        yh = tl.load(y + at, mask=ok[:, None], other=0.0).to(tl.float32)
        wh = tl.load(w + h * GD + k, mask=k < GD, other=0.0).to(tl.float32)
        yv, s = tl.sum(yh * vn, 1), 2.0 * tl.sigmoid(tl.sum(xg * wh[None, :], 1))
        if FORWARD:
            tl.store(o + at, ((yh - yv[:, None] * vn) * s[:, None]).to(o.dtype.element_ty), mask=ok[:, None])
        else:
            g = tl.load(dout + at, mask=ok[:, None], other=0.0).to(tl.float32)
            tl.store(dl + rows * H + h, tl.sum(g * (yh - yv[:, None] * vn), 1) * s * (1 - s / 2), mask=ok)
            g *= s[:, None]
            gv = tl.sum(g * vn, 1)
            tl.store(o + at, (g - gv[:, None] * vn).to(o.dtype.element_ty), mask=ok[:, None])
            dvn -= gv[:, None] * yh + yv[:, None] * g
    if not FORWARD:
        along = tl.where(norm > 1e-12, tl.sum(dvn * vn, 1), 0.0)
        dvn = (dvn - along[:, None] * vn) / tl.maximum(norm, 1e-12)[:, None]
        tl.store(dv + at_v, dvn.to(dv.dtype.element_ty), mask=ok[:, None])


# (rows a program, warps): 8 values of a row per thread, 16-byte loads. Compiled for sm90 (bench/kernel_resources.py)
# the backward takes 128 registers a thread with 8 warps and none spilled; with 4 it took 255 (fewer blocks an SM).
XSA_BLOCK = (32, 8)


def _xsa_launch(y: Tensor, v: Tensor, x: Tensor, w: Tensor, dout: Tensor | None) -> tuple[Tensor, ...]:
    (n, heads, d), kv, gd, (bn, warps) = y.shape, v.size(1), w.size(1), XSA_BLOCK
    o = torch.empty_like(y)
    grads = () if dout is None else (v.new_empty(v.shape), y.new_empty(n, heads, dtype=torch.float32))
    args = (y, v, x, w, dout, o, *(grads or (None, None)), n, x.stride(0), v.stride(0), heads, kv, d, gd)
    args += (triton.next_power_of_2(gd),)
    xsa_gate_kernel[(triton.cdiv(n, bn), kv)](*args, BN=bn, FORWARD=dout is None, num_warps=warps)
    return (o, *grads)


@torch.library.custom_op("kernels::xsa_gate", mutates_args=())
def xsa_gate(y: Tensor, v: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """y (N, H, D) contiguous, v (N, KV, D) with contiguous rows, x (N, C) whose first GD columns feed the gate and
    w (H, GD) -> (N, H, D): each head's y without its component along its kv head's normalised v, times
    2 sigmoid(x[:, :GD] w^T)."""
    return _xsa_launch(y, v, x, w, None)[0]


@xsa_gate.register_fake
def _(y: Tensor, v: Tensor, x: Tensor, w: Tensor) -> Tensor:
    return torch.empty_like(y)


@torch.library.custom_op("kernels::xsa_gate_grad", mutates_args=())
def xsa_gate_grad(dout: Tensor, y: Tensor, v: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dy, dv, d gate logits (N, H) fp32) of xsa_gate for its output's gradient dout."""
    return _xsa_launch(y, v, x, w, dout)


@xsa_gate_grad.register_fake
def _(dout: Tensor, y: Tensor, v: Tensor, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(y), v.new_empty(v.shape), y.new_empty(y.shape[:2], dtype=torch.float32)


def _xsa_backward(ctx, dout: Tensor) -> tuple[Tensor, ...]:
    y, v, x, w = ctx.saved_tensors
    dy, dv, dl = xsa_gate_grad(dout.contiguous(), y, v, x, w)
    gd = w.size(1)  # the gate's input gradient lands in x's first gd columns (compiled, a fused add downstream)
    dx = F.pad((dl @ w.float()).to(x.dtype), (0, x.size(1) - gd))
    return dy, dv, dx, (dl.T @ x[:, :gd].float()).to(w.dtype)


xsa_gate.register_autograd(_xsa_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


def fused_xsa(y: Tensor, v: Tensor, x: Tensor, w: Tensor) -> Tensor:
    """Attention.out's XSA + gate (FUSED_XSA=1) for y (B, T, H, D), v (B, T, KV, D), its input x (B, T, C) and the gate
    weight w (H, GD) -> (B, T, H * D), the projection's input."""
    (B, T), v = x.shape[:2], v.flatten(0, 1)
    v = v if v.stride()[1:] == (v.size(2), 1) else v.contiguous()  # rows apart is fine: FUSED_QKV's v is a view
    return xsa_gate(y.flatten(0, 1).contiguous(), v, x.flatten(0, 1), w).view(B, T, -1)
