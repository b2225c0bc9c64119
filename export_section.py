# EXPORT: GPTQ quantization of a trained state_dict and a compact, checksummed artifact format.
# HessianCollector (calibration passes) -> quantize_state -> encode_artifact -> bytes on disk;
# decode_artifact -> dequantize_state -> load_state_dict. Model-agnostic: tensors are addressed by
# state_dict names.
import importlib
import json
import lzma
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

# -----------------------------------------------------------------------------
# HESSIANS
# -----------------------------------------------------------------------------

class HessianCollector:
    """Accumulates H = sum x^T x (fp32, on the activations' device) over calibration forward passes.

    Keys are state_dict weight names. Modules chosen by `select(name, module)` (default: every
    nn.Linear) record their input; `head_inputs` maps a weight name to a module whose *output* feeds
    that weight as a head; where the head input is computed functionally (the tied embedding fed by
    a final rms_norm), call add("tok_emb.weight", hidden) yourself. Hook the uncompiled, unwrapped
    model so names match its state_dict. Sums, not means: GPTQ does not care about the scale of H,
    so ranks can all-reduce these as they are.
    """

    def __init__(self, model: nn.Module, select: Callable[[str, nn.Module], bool] | None = None,
                 head_inputs: dict[str, nn.Module] | None = None):
        select = select or (lambda name, m: isinstance(m, nn.Linear))
        self.h: dict[str, Tensor] = {}
        self.handles = [m.register_forward_pre_hook(lambda m, args, n=f"{name}.weight": self.add(n, args[0]))
                        for name, m in model.named_modules() if select(name, m)]
        self.handles += [m.register_forward_hook(lambda m, args, out, n=wname: self.add(n, out))
                         for wname, m in (head_inputs or {}).items()]

    @torch.no_grad()
    def add(self, name: str, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if name not in self.h:
            self.h[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.h[name].addmm_(x.T, x)

    def hessians(self) -> dict[str, Tensor]:
        return self.h

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

# -----------------------------------------------------------------------------
# QUANTIZERS
# -----------------------------------------------------------------------------
# Per-row symmetric scales with SDClip: step = clip_k * row_std / qmax. With k ~ 12 the grid spans
# +-k sigma, so almost nothing is clipped: k is really a step-size knob trading artifact bytes
# (entropy ~ log2(sigma/step) bits per weight) against error. Codes are clamped to [-qmax, qmax], not
# [-qmax-1, qmax]: the extra negative code would only serve weights below -k sigma (next to none), and a
# symmetric grid keeps rounding unbiased for sign-symmetric weights. Same choice as the records.

def row_scales(W: Tensor, bits: int, clip_k: float) -> Tensor:
    qmax = 2 ** (bits - 1) - 1
    # floor at fp16's smallest normal so a constant row cannot give a zero (or subnormal) scale
    return (clip_k * W.float().std(dim=1) / qmax).clamp_min(2.0 ** -14).half()


def rtn_quantize(W: Tensor, bits: int, clip_k: float) -> tuple[Tensor, Tensor]:
    """Round-to-nearest baseline with GPTQ's scales: (int8 codes (out,in), fp16 scales (out,))."""
    scale, qmax = row_scales(W, bits, clip_k), 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(W.float() / scale.float()[:, None]), -qmax, qmax).to(torch.int8), scale


@torch.no_grad()
def gptq_quantize(W: Tensor, H: Tensor, bits: int, clip_k: float, block: int = 128, damp: float = 0.01,
                  act_order: bool = True) -> tuple[Tensor, Tensor]:
    """GPTQ (Frantar et al. 2023): quantize columns one at a time, pushing each column's error onto the
    not-yet-quantized columns through the upper Cholesky factor of H^-1; lazy batch updates per block.
    Minimizes ||W X - Q X||_F for H = X^T X. Runs on H's device; returns (int8 (out,in), fp16 (out,))."""
    W = W.detach().to(H.device, torch.float32).clone()
    H = H.detach().float().clone()
    rows, cols = W.shape
    scale, qmax = row_scales(W, bits, clip_k), 2 ** (bits - 1) - 1
    s = scale.float()
    dead = H.diagonal() == 0  # inputs never active in calibration: weight is irrelevant, zero it
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(cols, device=H.device)
    W, H = W[:, perm], H[perm][:, perm]  # act-order: big-activation columns first, while many remain to absorb error
    eye, mean_diag = torch.eye(cols, device=H.device), H.diagonal().mean()
    for _ in range(4):  # damping regularizes an ill-conditioned H; grow it if Cholesky still fails
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if info == 0:
            break
        damp *= 10
    else:
        raise RuntimeError("gptq: Hessian is not positive definite even with damping")
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.empty(rows, cols, dtype=torch.int8, device=H.device)
    for i in range(0, cols, block):
        j = min(i + block, cols)
        Wb, Ub, Eb = W[:, i:j].clone(), U[i:j, i:j], torch.empty(rows, j - i, device=H.device)
        for c in range(j - i):
            q = torch.clamp(torch.round(Wb[:, c] / s), -qmax, qmax)
            Q[:, i + c] = q.to(torch.int8)
            Eb[:, c] = (Wb[:, c] - q * s) / Ub[c, c]
            Wb[:, c:] -= Eb[:, c:c + 1] * Ub[c:c + 1, c:]
        W[:, j:] -= Eb @ U[i:j, j:]  # one matmul per block instead of one rank-1 update per column
    return Q[:, torch.argsort(perm)].contiguous(), scale


@dataclass
class QuantConfig:
    # (class, regex searched in the tensor name, bits, clip_k): first match wins, the last catches all.
    # Defaults are the merged record's (PR #1855): int6 matrices, attn k=13, MLP k=11.5, int7 tied
    # embedding k=14; 12.85 is the single matrix k used before per-class clips.
    classes: tuple[tuple[str, str, int, float], ...] = (
        ("embed", r"emb", 7, 14.0), ("attn", r"attn", 6, 13.0), ("mlp", r"mlp", 6, 11.5), ("matrix", r"", 6, 12.85))
    small_numel: int = 65_536  # float tensors this small, and all non-matrices, are stored fp16
    lqer_top: int = 0  # LQER: low-rank error correction on this many tensors (3 in the record)
    lqer_rank: int = 4


def quantize_state(state: dict[str, Tensor], hessians: dict[str, Tensor], cfg: QuantConfig = QuantConfig()) -> dict:
    """state_dict -> {name: entry}. Large float matrices get GPTQ (RTN where no Hessian saw them):
    entry = {dtype, cls, bits, q int8, scale fp16 [, lqer]}; everything else {dtype, t} in fp16
    (floats) or as is (ints, bools). All tensors come back on the CPU."""
    out = {}
    for name, t in state.items():
        t, e = t.detach(), {"dtype": str(t.dtype).removeprefix("torch.")}
        if t.is_floating_point() and t.ndim == 2 and t.numel() > cfg.small_numel:
            cls, _, bits, k = next(c for c in cfg.classes if re.search(c[1], name))
            H = hessians.get(name)  # a Hessian with no active input at all would zero the matrix: use RTN
            use_gptq = H is not None and bool((H.diagonal() > 0).any())
            q, s = gptq_quantize(t, H, bits, k) if use_gptq else rtn_quantize(t, bits, k)
            e.update(cls=cls, bits=bits, q=q.cpu(), scale=s.cpu())
        else:
            e["t"] = (t.half() if t.is_floating_point() else t).cpu()
        out[name] = e
    # LQER (Zhang et al. 2024): E = W - deq(Q) ~ A B with A = U_r S_r, B = V_r^T from a rank-r SVD, on the
    # tensors with the largest relative error ||E||/||W||. A^T and B are stored int8 with one fp16 scale
    # per row (per rank component), a few KB per tensor. Records used int2/int4 group-64 factors instead.
    quantized = [n for n, e in out.items() if "q" in e and cfg.lqer_top]
    errs = {n: state[n].detach().float().cpu() - _deq(out[n]["q"], out[n]["scale"]) for n in quantized}
    rel = {n: float(errs[n].norm()) / max(float(state[n].detach().float().norm()), 1e-12) for n in quantized}
    for name in sorted(rel, key=rel.get, reverse=True)[:cfg.lqer_top]:
        U, S, Vh = torch.linalg.svd(errs[name], full_matrices=False)
        r = min(cfg.lqer_rank, S.numel())
        out[name]["lqer"] = [*_int8_rows((U[:, :r] * S[:r]).T), *_int8_rows(Vh[:r])]
    return out


def _int8_rows(x: Tensor) -> list[Tensor]:
    x = x.contiguous()  # decoded factors are contiguous; same layout keeps the LQER matmul bitwise reproducible
    scale = (x.abs().amax(dim=1) / 127).clamp_min(2.0 ** -14).half()
    return [torch.round(x / scale.float()[:, None]).clamp(-127, 127).to(torch.int8), scale]


def _deq(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale.float()[:, None]


def dequantize_state(qstate: dict) -> dict[str, Tensor]:
    """Entries -> tensors in their original dtypes (deterministic: same qstate, same bits)."""
    out = {}
    for name, e in qstate.items():
        dtype = getattr(torch, e["dtype"])
        if "t" in e:
            out[name] = e["t"].to(dtype)
            continue
        w = _deq(e["q"], e["scale"])
        if "lqer" in e:
            qa, sa, qb, sb = e["lqer"]
            w = w + _deq(qa, sa).T @ _deq(qb, sb)
        out[name] = w.to(dtype)
    return out

# -----------------------------------------------------------------------------
# BIT PACKING
# -----------------------------------------------------------------------------
# Dense big-endian packing of two's-complement codes: n values take ceil(n*bits/8) bytes (6 bits:
# four values in three bytes). It is the smallest fixed-rate layout, but byte-oriented codecs model it
# badly: on SDClip int6 codes brotli-11 lands within ~1% of the order-0 entropy with one byte per
# value and ~20% above it on packed bits. So the artifact keeps one byte per value unless `pack` wins.

def pack_bits(q: Tensor, bits: int) -> bytes:
    a = q.detach().cpu().numpy().astype(np.int8).reshape(-1)
    if a.size and (a.min() < -(1 << (bits - 1)) or a.max() >= 1 << (bits - 1)):
        raise ValueError(f"pack_bits: values outside the signed {bits}-bit range")
    return np.packbits(np.unpackbits(a.view(np.uint8)[:, None], axis=1)[:, 8 - bits:]).tobytes()


def unpack_bits(buf: bytes, bits: int, n: int) -> Tensor:
    b = np.unpackbits(np.frombuffer(buf, np.uint8), count=n * bits).reshape(n, bits)
    # packbits left-aligns each value in its byte; an arithmetic shift back sign-extends it
    return torch.from_numpy(np.packbits(b, axis=1).reshape(n).view(np.int8) >> (8 - bits))

# -----------------------------------------------------------------------------
# ARTIFACT
# -----------------------------------------------------------------------------
# bytes = prefix (magic, version, codec id, body length, CRC32 of body), uncompressed,
#       + body = codec(u32 header length | JSON header | payload).
# The header holds the caller's meta and, per tensor, dtype/class/bits and each array's (offset,
# nbytes, dtype, shape) in the payload. Arrays are grouped by kind (codes by bit width, LQER factors,
# then fp16) so the codec sees homogeneous runs. `shuffle` byte-transposes multi-byte arrays (fp16
# scales and small tensors: ~2-3% smaller); `pack` bit-packs the codes.

class ArtifactError(ValueError):
    """A model artifact that cannot be decoded; the message says which check failed."""


MAGIC, VERSION, PREFIX = b"PGQ1", 1, struct.Struct("<4sBBII")
CODECS = {"zstd": 1, "brotli": 2, "lzma": 3}


def _codec(name: str) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]] | None:
    """(compress, decompress) at maximum effort, or None when the module is not installed."""
    if name == "lzma":
        return lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress
    try:
        mod = importlib.import_module({"zstd": "zstandard", "brotli": "brotli"}[name])
    except ImportError:
        return None
    if name == "zstd":
        return lambda b: mod.ZstdCompressor(level=22).compress(b), lambda b: mod.ZstdDecompressor().decompress(b)
    return lambda b: mod.compress(b, quality=11), mod.decompress


def _arrays(e: dict) -> list[tuple[str, Tensor, int]]:
    """(role, tensor, bits or 0) of one entry; bits > 0 marks low-bit codes that `pack` may pack."""
    if "t" in e:
        return [("t", e["t"], 0)]
    lq = list(zip(("lqa", "lqa_s", "lqb", "lqb_s"), e.get("lqer", [])))
    return [("q", e["q"], e["bits"]), ("scale", e["scale"], 0)] + [(r, t, 0) for r, t in lq]


def _serialize(qstate: dict, meta: dict, shuffle: bool, pack: bool) -> bytes:
    items = [(n, role, t, bits) for n, e in qstate.items() for role, t, bits in _arrays(e)]
    items.sort(key=lambda it: (it[3] == 0, -it[3], it[2].element_size()))  # codes by width, int8, then wider
    table = {n: {k: e[k] for k in ("dtype", "cls", "bits") if k in e} | {"arrays": {}} for n, e in qstate.items()}
    chunks, offset = [], 0
    for name, role, t, bits in items:
        a = t.contiguous().numpy()
        if pack and bits:
            b = pack_bits(t, bits)
        elif shuffle and a.itemsize > 1:
            b = a.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T.tobytes()
        else:
            b = a.tobytes()
        table[name]["arrays"][role] = [offset, len(b), str(a.dtype), list(a.shape)]
        chunks.append(b)
        offset += len(b)
    header = json.dumps({"meta": meta, "shuffle": shuffle, "pack": pack, "tensors": table}, separators=(",", ":"))
    header += " " * (-(len(header) + 4) % 16)  # payload starts 16-aligned whatever the flags: lzma's size depends on it
    return struct.pack("<I", len(header)) + header.encode() + b"".join(chunks)


def _wrap(raw: bytes, codec: str) -> bytes:
    body = _codec(codec)[0](raw)
    return PREFIX.pack(MAGIC, VERSION, CODECS[codec], len(body), zlib.crc32(body)) + body


def encode_artifact(qstate: dict, meta: dict, codecs: tuple[str, ...] = tuple(CODECS),
                    log: Callable[[str], None] = print) -> tuple[bytes, list[tuple[str, bool, bool, int]]]:
    """Compress every (codec, shuffle, pack) combination in parallel; return the smallest artifact and
    all candidates as (codec, shuffle, pack, bytes). A codec whose module is missing is logged, skipped."""
    available = [c for c in codecs if _codec(c) is not None]
    for c in set(codecs) - set(available):
        log(f"export: codec {c} not installed, skipped")
    if not available:
        raise RuntimeError(f"export: none of the codecs {codecs} is installed")
    raws = {(s, p): _serialize(qstate, meta, s, p) for s in (False, True) for p in (False, True)}
    combos = [(c, s, p) for c in available for (s, p) in raws]
    with ThreadPoolExecutor(len(combos)) as pool:  # the codecs release the GIL while compressing
        blobs = list(pool.map(lambda csp: _wrap(raws[csp[1:]], csp[0]), combos))
    best = min(range(len(blobs)), key=lambda i: len(blobs[i]))
    return blobs[best], [(*csp, len(b)) for csp, b in zip(combos, blobs)]


def decode_artifact(buf: bytes) -> tuple[dict, dict]:
    """Inverse of encode_artifact: (qstate, meta). Raises ArtifactError naming the failed check."""
    if len(buf) < PREFIX.size:
        raise ArtifactError(f"artifact truncated: {len(buf)} bytes, shorter than its {PREFIX.size}-byte prefix")
    magic, version, codec_id, n, crc = PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise ArtifactError(f"artifact has bad magic {magic!r} (expected {MAGIC!r}): not a model artifact")
    if version != VERSION:
        raise ArtifactError(f"artifact format version {version} is not supported (expected {VERSION})")
    codec = next((c for c, i in CODECS.items() if i == codec_id), None)
    if codec is None:
        raise ArtifactError(f"artifact names unknown codec id {codec_id}")
    body = buf[PREFIX.size:]
    if len(body) != n:
        raise ArtifactError(f"artifact truncated or padded: prefix says {n} body bytes, found {len(body)}")
    if zlib.crc32(body) != crc:
        raise ArtifactError(f"artifact corrupted: CRC32 of the body is {zlib.crc32(body):08x}, prefix says {crc:08x}")
    if _codec(codec) is None:
        raise ArtifactError(f"artifact needs codec {codec}, whose module is not installed")
    try:
        raw = _codec(codec)[1](body)
        (hlen,) = struct.unpack_from("<I", raw)
        header = json.loads(raw[4:4 + hlen])
    except Exception as e:  # after a good CRC this means an encoder/decoder mismatch
        raise ArtifactError(f"artifact body does not decode with {codec}: {e!r}") from None
    payload, qstate = memoryview(raw)[4 + hlen:], {}
    for name, info in header["tensors"].items():
        e = {k: v for k, v in info.items() if k != "arrays"}
        for role, (off, nbytes, dtype, shape) in info["arrays"].items():
            if off + nbytes > len(payload):
                raise ArtifactError(f"artifact payload ends before tensor {name}.{role}")
            b, dt, count = payload[off:off + nbytes], np.dtype(dtype), int(np.prod(shape))
            if header["pack"] and role == "q":
                t = unpack_bits(b, info["bits"], count)
            else:
                a = np.frombuffer(b, np.uint8)
                if header["shuffle"] and dt.itemsize > 1:
                    a = a.reshape(dt.itemsize, -1).T
                t = torch.from_numpy(np.ascontiguousarray(a).view(dt).copy())
            e[role] = t.reshape(shape)
        if "lqa" in e:
            e["lqer"] = [e.pop(r) for r in ("lqa", "lqa_s", "lqb", "lqb_s")]
        qstate[name] = e
    return qstate, header["meta"]


def artifact_report(buf: bytes, codecs: tuple[str, ...] = tuple(CODECS)) -> list[dict]:
    """Where the bytes go. One row per tensor class (count, params, bits, fixed-rate bytes of codes,
    their order-0 entropy in bytes, bytes of scales and LQER factors), then one row per codec candidate
    (re-encoded: this recompresses everything, so it takes as long as an export)."""
    qstate, meta = decode_artifact(buf)
    rows: dict[str, dict] = {}
    for e in qstate.values():
        cls, t = e.get("cls", "fp16" if "t" in e and e["t"].is_floating_point() else "raw"), e.get("q", e.get("t"))
        r = rows.setdefault(cls, {"class": cls, "count": 0, "params": 0, "bits": e.get("bits", 8 * t.element_size()),
                                  "value_bytes": 0, "entropy_bytes": 0, "scale_bytes": 0, "lqer_bytes": 0})
        r["count"], r["params"] = r["count"] + 1, r["params"] + t.numel()
        r["value_bytes"] += -(-t.numel() * r["bits"] // 8)
        if "q" in e:
            p = np.bincount(t.numpy().reshape(-1).astype(np.int64) + 128) / t.numel()
            r["entropy_bytes"] += int(-(p[p > 0] * np.log2(p[p > 0])).sum() * t.numel() / 8)
            r["scale_bytes"] += e["scale"].numel() * 2
            r["lqer_bytes"] += sum(x.numel() * x.element_size() for x in e.get("lqer", []))
    cands = encode_artifact(qstate, meta, codecs, log=lambda s: None)[1] if codecs else []
    return list(rows.values()) + [{"codec": c, "shuffle": s, "pack": p, "bytes": n} for c, s, p, n in cands]
