"""Where a record training step's time goes on one GPU: compiled forward+backward vs the optimizer step.

Usage (device): python bench/step_profile.py [KEY=VALUE ...]  -> one JSON line on stdout.
     or: torchrun --standalone --nproc_per_node=N bench/step_profile.py [KEY=VALUE ...]  (rank 0 prints; the
         global batch is split over the ranks as train_gpt.py splits it, and comm_ms / comm_share give the NCCL
         kernels' device time in the optimizer step: gradient reduce-scatter, all-reduce, all-gather).
Random tokens with a BOS every ~1000 (documents for the varlen mask), the preset's per-GPU batch, split
into micro-batches and compiled as train_gpt.py trains (an eager pass over the whole
98,304-token batch needs more than the H100's 80 GB). Depth recurrence on: the slower, later phase.
Prints the step split and the top CUDA kernels of each half from one profiled step.
Compilation is train_gpt's COMPILE: 1 (default) each block on its own, the glue between blocks eager; 2 GPT.hidden
as one graph in which each block is a nested compile region (run_block), built once and reused. Rows of
2026-12-05_train.json: STEP_COMPILE=blocks is COMPILE=1, STEP_COMPILE=regions is COMPILE=2; STEP_COMPILE=hidden
compiled GPT.hidden whole without regions (since removed: as fast as regions at twice the warm-up).
The residual stream's dtype is train_gpt's own switch: BF16_RESID=0 gives the fp32 stream (before 2026-12-05
the only one; the rows of 2026-12-05_train.json named STEP_DTYPE=bf16res ran the same cast as a hook).
STEP_DTYPE=bf16 (bench-only): all weights in bf16 as well, a speed bound for dropping fp32 master weights (the
numerics differ, quality unmeasured).
STEP_AUTOTUNE=1 (bench-only): inductor's max_autotune (Triton GEMM templates that can fuse their neighbours'
pointwise work, e.g. LeakyReLU^2 into the MLP's first GEMM; no CUDA graphs); warmup_s shows its compile cost.
It also autotunes every pointwise and reduction kernel: on an H100 it had not finished compiling after 208 s.
STEP_AUTOTUNE=gemm: GEMM autotuning only (cuBLAS against Triton templates, the persistent TMA ones included,
with epilogue fusion), the pointwise kernels as by default: the fused-MLP question at a smaller compile cost.
STEP_INDUCTOR=name=value,...: set Inductor config values (bools and ints; dotted names reach sub-configs, e.g.
coordinate_descent_tuning=1: its own pointwise and reduction kernels' block sizes tuned by timing them), what the
glue between the GEMMs and attention gains from Inductor alone; an unknown name is an error. COMPILE=2 passes its own
options (no buffer reuse; combo_kernels since 2026-12-07_combo_h100, after STEP_INDUCTOR=combo_kernels=1 won here),
and those win over STEP_INDUCTOR's.
STEP_PATCH=gqa,rope (at 25be12f, rows of 2026-12-05_train.json; both now in train_gpt): gqa gave torch's varlen
kernel the k/v heads unrepeated, rope read RoPE's cos/sin from a table built once.
STEP_DATA=glob: time real training windows (the first batch TokenLoader gives at the seed) instead of random
tokens with a BOS every 1,000: the documents set the attention work (bench/doc_share.py). STEP_LOADER=1 (with
STEP_DATA): every step takes the loader's next batch instead, built in its background thread as training's is, so
the batches vary and the loader thread runs beside the timed steps, as in a run.
The varlen offsets come as training gives them: built on the CPU (train_gpt.staged) and copied with the batch each
step. STEP_MASK=device: AttnMask builds them on the GPU instead, by torch.nonzero, which waits for the GPU's queue
(a host sync a step: the training path before 2026-12-07). STEP_MASK=once: each batch's attention mask is built once,
before the timed steps (the same mask object after): no mask work at all, a bound for both.
STEP_MASK=static (FA3/FA4): the offsets by torch.nonzero_static, padded with empty sequences to B*T/64 of them: no
host sync, for what the padding costs the kernels. STEP_KV=repeat (FA4, torch varlen): the k/v heads repeated to the
query heads before the kernel, as train_gpt does for FA3 since 8168631 (FA3's GQA backward sums each group's dk/dv into
float32 buffers and converts them after; torch varlen's sums them with an ATen reduction, 3.8 ms a step on an H100,
2026-12-07_varlen_h100.md; rows of 2026-12-07_train_staged.json with STEP_KV=repeat ran FA3 before that).
STEP_TILES=BM,BN,BK,STAGES,WARPS,SPLIT/...: kernels.py's fused-MLP tiles, forward/backward (mlp_kernel.py --sweep).
Each top kernel of Inductor's carries `origins`: the FX nodes (named after the model code's variables) and ATen ops
that Inductor fused into it, read from the output code under its cache dir (TORCHINDUCTOR_CACHE_DIR, else its default).
STEP_SUSTAIN=N: also time N steps in a row (the clock of a real run: heat and power limits) and read the SM
clock and power from nvidia-smi right after. STEP_ARTIFACT=path: start from a trained artifact's (dequantized)
weights instead of the initial ones, whose zero projections draw less power than a run's weights (on an H100: 612-618
against 685 W, 1,975 against 1,860 MHz, 125.0 against 129.7 ms; 2026-12-07_qkv_h100.md). STEP_REUSE=1: compile with
Inductor's buffer reuse, which train_gpt turns off for COMPILE=2 since 8145046 (bench/grad_check.py): what that costs.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config  # STEP_AUTOTUNE
from torch._inductor.runtime.cache_dir_utils import cache_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proxy_run import head_commit, with_buffer_reuse  # noqa: E402  (bench/ is this script's folder)

import train_gpt as tg  # noqa: E402


def inductor_settings(spec: str) -> dict[str, int]:
    """Apply STEP_INDUCTOR's name=value items to torch._inductor.config; returns them for the JSON row."""
    done = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        *path, key = name.split(".")
        cfg = torch._inductor.config
        for part in path:
            cfg = getattr(cfg, part, None)
        current = getattr(cfg, key, None) if cfg is not None else None
        if type(current) not in (bool, int) or not value.lstrip("-").isdigit():
            sys.exit(f"STEP_INDUCTOR={item!r}: expected name=integer for one of Inductor's bool or int settings")
        setattr(cfg, key, bool(int(value)) if isinstance(current, bool) else int(value))
        done[name] = getattr(cfg, key)
    return done


def timed(fn, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000


# Inductor's output code writes this comment above each Triton kernel it defines (torch/_inductor/utils.py,
# get_kernel_metadata), after a "# kernel path:" line and before the node mapping and the graph fragment, whose
# lines are not all comments: the first definition after it is its kernel's.
ORIGIN = re.compile(
    r"^# (?:Topologically Sorted|Unsorted) Source Nodes: \[([^\n]*)\], Original ATen: \[([^\n]*)\]\n.*?"
    r"^(\w+) = async_compile\.triton\(",
    re.M | re.S,
)


def kernel_origins(root: str, names: set[str]) -> dict[str, list[str]]:
    """'source nodes | ATen ops' of each of Inductor's kernels among `names`, from every output-code file under
    root; a name that kernels of several graphs share lists each of them."""
    found: dict[str, set[str]] = {}
    for f in Path(root).rglob("*.py"):
        for m in ORIGIN.finditer(f.read_text(errors="replace")):
            if m.group(3) in names:
                found.setdefault(m.group(3), set()).add(f"{m.group(1)} | {m.group(2)}")
    return {k: sorted(v) for k, v in found.items()}


def gpu_state() -> str:
    q = "clocks.sm,clocks.max.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"
    return subprocess.run(
        ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True
    ).stdout.strip()


def main() -> None:
    ranks = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    env = {"PRESET": "record", "TRAIN_BATCH_TOKENS": "98304", **ranks, **dict(a.split("=", 1) for a in sys.argv[1:])}
    dtype = env.pop("STEP_DTYPE", "fp32")
    n_top = int(env.pop("STEP_TOP", "12"))  # kernels listed per half
    autotune = env.pop("STEP_AUTOTUNE", "0")
    if autotune not in ("0", "1", "gemm"):
        sys.exit(f"STEP_AUTOTUNE={autotune}: expected 1 or gemm (default: 0)")
    inductor = torch._inductor.config
    inductor.max_autotune = autotune == "1"
    inductor.max_autotune_gemm = inductor.triton.enable_persistent_tma_matmul = autotune == "gemm"
    inductor_set = inductor_settings(env.pop("STEP_INDUCTOR", ""))
    sustain = int(env.pop("STEP_SUSTAIN", "0"))
    data = env.pop("STEP_DATA", "")
    loader_on = env.pop("STEP_LOADER", "0") == "1"
    mask_build = env.pop("STEP_MASK", "staged")
    if mask_build not in ("staged", "device", "once", "static"):
        sys.exit(f"STEP_MASK={mask_build}: expected device, once or static (default: staged)")
    kv = env.pop("STEP_KV", "gqa")
    if kv not in ("gqa", "repeat"):
        sys.exit(f"STEP_KV={kv}: expected repeat (default: gqa)")
    tiles = env.pop("STEP_TILES", "")
    weights = env.pop("STEP_ARTIFACT", "")
    reuse = env.pop("STEP_REUSE", "0") == "1"
    if reuse:
        with_buffer_reuse()
    if weights and not os.path.isfile(weights):
        sys.exit(f"STEP_ARTIFACT={weights}: no such file (a .pgq artifact a run wrote)")
    if tiles:  # kernels.py's fused-MLP tiles, forward/backward: BM,BN,BK,stages,warps,split each
        pair = [tuple(int(v) for v in t.split(",")) for t in tiles.split("/")]
        if len(pair) != 2 or any(len(t) != 6 for t in pair):
            sys.exit(f"STEP_TILES={tiles}: expected BM,BN,BK,STAGES,WARPS,SPLIT/BM,BN,BK,STAGES,WARPS,SPLIT")
        kernels = tg.load_plugin("kernels")
        kernels.TILES.update({True: (*pair[0][:5], bool(pair[0][5])), False: (*pair[1][:5], bool(pair[1][5]))})
    if kv == "repeat":  # FA4 or torch varlen on the k/v heads repeated to the query heads (no GQA inside the kernel)
        attend = tg.attend

        def repeated(q, k, v, mask):  # the attention kind is checked once the model is built (below)
            g = q.size(2) // k.size(2)
            return attend(q, k.repeat_interleave(g, 2), v.repeat_interleave(g, 2), mask)

        tg.attend = repeated
    if mask_build == "static":  # FA3/FA4's offsets by nonzero_static: no host sync, padded with empty sequences

        def static(ids, doc_mask, impl, h, cu=None):
            mask, (B, T) = tg.AttnMask.__new__(tg.AttnMask), ids.shape  # the fields AttnMask.__init__ would set
            starts = ids == tg.BOS_ID
            starts[:, 0] = True
            n = B * T // 64  # a document per 64 tokens at most: far more than real text has (bench/doc_share.py)
            cu = torch.nonzero_static(starts.flatten(), size=n, fill_value=B * T).flatten()
            mask.impl, mask.cu, mask.max_len = impl, tg.F.pad(cu, (0, 1), value=B * T).int(), T
            return mask

        tg.Lanes.make_mask = staticmethod(torch.compiler.disable(static))
    if mask_build == "once":
        masks, build = {}, tg.Lanes.make_mask

        def once(ids, doc_mask, impl, h, cu=None):
            key = (ids.data_ptr(), *ids.shape, doc_mask, impl)  # the profile's batches are fixed tensors
            if key not in masks:
                masks[key] = build(ids, doc_mask, impl, h, cu)
            return masks[key]

        tg.Lanes.make_mask = staticmethod(torch.compiler.disable(once))
    h, dev = tg.Hyperparameters(env), torch.device("cuda", int(ranks.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(dev)
    if h.world_size > 1:
        tg.dist.init_process_group("nccl", device_id=dev)
    torch.backends.cuda.matmul.allow_tf32 = True
    model = tg.GPT(h).to(dev)
    if mask_build == "static" and model.attn_impl not in ("fa3", "fa4"):
        sys.exit(f"STEP_MASK=static is for ATTN_IMPL fa3 and fa4, not {model.attn_impl}")
    if kv == "repeat" and model.attn_impl not in ("fa4", "varlen"):
        sys.exit(f"STEP_KV=repeat is for ATTN_IMPL fa4 and varlen (train_gpt repeats FA3's k/v), not {model.attn_impl}")
    if weights:  # a trained model's operands: tensor-core power depends on their bits (2026-12-07_train_xsa_h100.md)
        model.load_state_dict(tg.load_artifact(weights, h, dev)[0].state_dict())
    if dtype == "bf16":  # speed bound only: bf16 weights (numerics differ)
        model = model.bfloat16()
    if h.compile:
        model.compile_parts(whole=h.compile == 2)
    opt = tg.Optimizers(model, h)
    seqs = h.train_batch_tokens // h.train_seq_len // h.world_size  # this rank's share of the global batch
    micro = max(1, min(seqs, h.micro_batch_tokens // h.train_seq_len))
    if data:
        loader = tg.TokenLoader(data, h.train_seq_len, h.seed, h.rank, h.world_size, dev)
        x = loader.next_batch(seqs * h.world_size, micro)[0].cpu()
    else:
        x = torch.randint(4, h.vocab_size, (seqs, h.train_seq_len + 1))
        x[:, ::1000] = tg.BOS_ID
    parts = tg.staged(x, micro, dev)  # pinned, as TokenLoader stages each batch in its background thread
    fixed = tg.on_device(parts, dev) if mask_build == "once" else None  # once: the same tensors, the same masks
    if loader_on and (not data or fixed):
        sys.exit("STEP_LOADER=1 needs STEP_DATA, and builds a mask a batch (not STEP_MASK=once)")

    def fwd_bwd():
        if loader_on:  # the next batch of the loader, built in its background thread while this one trains
            x, cus = loader.next_batch(seqs * h.world_size, micro)
        else:
            x, cus = fixed or tg.on_device(parts, dev)  # the step's copies, as in training
        for xb, cu in zip(x.split(micro), cus if mask_build == "staged" else [None] * len(cus)):
            with torch.autocast("cuda", torch.bfloat16):
                loss = model(xb[:, :-1], xb[:, 1:], doc_mask=True, recur=True, cu=cu).mean()
            loss.backward()

    def step():
        opt.step(0.0, h.muon_momentum)  # lr 0: same work, weights unchanged

    t0 = time.perf_counter()
    for _ in range(3):  # compile, autotune, optimizer state
        fwd_bwd(), step()
    warm = time.perf_counter() - t0
    full = timed(lambda: (fwd_bwd(), step()), 5)  # step() needs fresh grads (it clears them)
    fb = timed(fwd_bwd, 5)
    model.zero_grad(set_to_none=True)
    sustained = {}
    if sustain:
        idle = gpu_state()
        ms = timed(lambda: (fwd_bwd(), step()), sustain)
        sustained = dict(
            sustained_steps=sustain, sustained_step_ms=round(ms, 1), gpu_before=idle, gpu_after=gpu_state()
        )

    def top(fn, n=n_top):
        if h.world_size > 1:  # start together: else a collective's kernel time is mostly waiting for the late rank
            tg.dist.barrier()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        ev = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)
        comm = sum(e.device_time_total for e in ev if "nccl" in e.key.lower()) / 1000
        return dict(
            total_cuda_ms=round(sum(e.device_time_total for e in ev) / 1000, 2),
            comm_ms=round(comm, 3),
            top=[dict(name=e.key, cuda_ms=round(e.device_time_total / 1000, 3), calls=e.count) for e in ev[:n]],
        )

    fb_k, opt_k = top(fwd_bwd), top(step)  # every rank profiles: the collectives need all of them
    tops = fb_k["top"] + opt_k["top"]
    origins = kernel_origins(cache_dir(), {t["name"] for t in tops if t["name"].startswith("triton_")})
    for t in tops:
        t |= dict(origins=origins[t["name"]]) if t["name"] in origins else {}
    kernel_ms = fb_k["total_cuda_ms"] + opt_k["total_cuda_ms"]  # one profiled step's; the rest of a step is GPU idle
    if h.rank == 0:
        print(
            json.dumps(
                dict(
                    commit=head_commit(),  # the .devdata/COMMIT stamp first: a device's copy may carry a stale .git
                    gpu=torch.cuda.get_device_name(),
                    data=data or "random, a BOS every 1000",
                    loader=loader_on,
                    mask=mask_build,
                    kv=kv,
                    attention=model.attn_impl,
                    kernels=",".join(sorted({m.fused.__name__ for m in model.modules() if getattr(m, "fused", None)}))
                    or "eager",  # every kernels.py function training (fused_mlp, fused_xsa, fp8_mlp)
                    fused_qkv=h.fused_qkv,
                    weights_from=weights or "init",
                    buffer_reuse=reuse,
                    mlp_tiles=tiles or "kernels.py's",
                    compile=h.compile,
                    weights=dtype,
                    autotune=autotune,
                    inductor=inductor_set,
                    bf16_resid=h.bf16_resid,
                    world_size=h.world_size,
                    seqs=seqs,
                    micro=micro,
                    warmup_s=round(warm, 1),
                    step_ms=round(full, 1),
                    fwd_bwd_ms=round(fb, 1),
                    optimizer_step_ms=round(full - fb, 1),
                    kernel_ms=round(kernel_ms, 2),
                    gpu_idle_ms=round(full - kernel_ms, 1),  # the GPU waiting on the host: launches, syncs
                    comm_ms=opt_k["comm_ms"],
                    comm_share=round(opt_k["comm_ms"] / full, 4),  # NCCL kernel time incl. rank skew
                    peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                    muon_matrices=len(opt.muon.param_groups[0]["params"]),
                    **sustained,
                    fwd_bwd_kernels=fb_k,
                    optimizer_kernels=opt_k,
                )
            )
        )
    if h.world_size > 1:
        tg.dist.destroy_process_group()


if __name__ == "__main__":
    main()
