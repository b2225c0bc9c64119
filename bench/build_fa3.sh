#!/usr/bin/env bash
# A minimal FlashAttention-3 for the record model, so train_gpt.py's ATTN_IMPL=auto can pick FA3 varlen:
# sm90a, bf16, head dim 64, forward and backward, varlen and causal (GQA by head index); every other
# instantiation (fp16/fp8, other head dims, split/paged/append-KV, softcap, local, packed GQA, sm80) is
# compiled out, so three kernel files are built instead of hundreds. It uses torch's stable ABI (runtime
# torch >= 2.9) and Python's limited API (abi3), so it loads in the device image's torch 2.11 / Python 3.12.
# TORCH_DIR (default: the importable torch's folder) gives the headers and the libraries linked by name; best
# the runtime's own torch, e.g. torch/ unzipped from the torch==2.11.0 cu130 wheel (its lib/ and include/).
# Needs nvcc >= 12.3 (13.0 here and on the device). About 3 minutes on 2 cores.
#
# Usage: bash bench/build_fa3.sh FA_SRC CUTLASS_SRC OUT [JOBS]
#   FA_SRC: a flash-attention source tree (its hopper/ folder); CUTLASS_SRC: cutlass at the commit
#   flash-attention pins as csrc/cutlass; OUT: gets flash_attn_interface.py, flash_attn_config.py and
#   flash_attn_3/ (_C.abi3.so). Then `PYTHONPATH=OUT python -c "import flash_attn_interface"`.
# Objects are kept in OUT/obj and reused: a rerun only links. Built on 2026-12-05 from flash-attention 0251105a
# (hopper/) and cutlass 71275920 (its csrc/cutlass pin), against torch 2.11.0+cu130's headers and libraries.
set -euo pipefail
fa=$(realpath "$1")/hopper cutlass=$(realpath "$2") out=$(realpath -m "$3") jobs=${4:-$(nproc)}
torch=${TORCH_DIR:-$(python3 -c "import os, torch; print(os.path.dirname(torch.__file__))")}
py_inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cuda=${CUDA_HOME:-/usr/local/cuda}
[ -e "$cuda/include/cuda_runtime_api.h" ] || { echo "error: no CUDA toolkit at $cuda (set CUDA_HOME)" >&2; exit 1; }
mkdir -p "$out/obj" "$out/flash_attn_3"
off="SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 FP8 CLUSTER HDIM96 HDIM128 HDIM192 HDIM256 SM8x"
defs=$(for f in $off; do printf -- "-DFLASHATTENTION_DISABLE_%s " "$f"; done)
defs+="-DFLASHATTENTION_DISABLE_HDIMDIFF64 -DFLASHATTENTION_DISABLE_HDIMDIFF192"
abi="-DTORCH_TARGET_VERSION=0x0209000000000000 -DPy_LIMITED_API=0x03090000"
inc="-I$fa -I$cutlass/include -I$cuda/include/cccl -I$torch/include -I$torch/include/torch/csrc/api/include -I$py_inc"
nvflags="-O3 -std=c++17 --use_fast_math -gencode arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
  --expt-extended-lambda -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -DCUTLASS_ENABLE_GDC_FOR_SM90
  -DCUTLASS_DEBUG_TRACE_LEVEL=0 -DNDEBUG -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__
  -U__CUDA_NO_BFLOAT16_CONVERSIONS__ -U__CUDA_NO_HALF2_OPERATORS__ -Xcompiler -fPIC"
nvflags=$(echo $nvflags)  # one line: it goes into xargs' command
build() {  # source object compiler...
  local src=$1 obj=$out/obj/$2; shift 2
  [ -s "$obj" ] || { echo "compiling $(basename "$src")"; "$@" $defs $abi $inc -c "$src" -o "$obj"; }
}
export -f build; export out defs abi inc
printf '%s\n' "instantiations/flash_fwd_hdim64_bf16_sm90.cu fwd.o" "instantiations/flash_bwd_hdim64_bf16_sm90.cu bwd.o" \
  "flash_prepare_scheduler.cu prep.o" | xargs -P "$jobs" -L 1 bash -c \
  "build $fa/\$0 \$1 nvcc $nvflags"
build "$fa/flash_api_stable.cpp" api.o g++ -O3 -std=c++17 -fPIC -w -I"$cuda/include"
# The torch and CUDA libraries are named (DT_NEEDED) but not versioned: at import they resolve to the ones
# the running torch has loaded. libtorch_cuda/libc10_cuda may be missing from a CPU torch: a stub names them.
stubs=$out/obj/stubs && mkdir -p "$stubs"
for lib in torch_cuda c10_cuda; do
  [ -e "$torch/lib/lib$lib.so" ] || echo "" | g++ -shared -x c++ - -Wl,-soname,lib$lib.so -o "$stubs/lib$lib.so"
done
g++ -shared "$out"/obj/{api,fwd,bwd,prep}.o -o "$out/flash_attn_3/_C.abi3.so" -L"$torch/lib" -L"$stubs" \
  -L"$cuda/lib64" -Wl,--no-as-needed -lc10 -ltorch -ltorch_cpu -lc10_cuda -ltorch_cuda -lcudart
cp "$fa/flash_attn_interface.py" "$out/"
cp "$fa/flash_attn_3/__init__.py" "$out/flash_attn_3/"
python3 - "$out/flash_attn_config.py" "$off" <<'EOF'
import sys
off = set(sys.argv[2].split())
flags = {f"FLASHATTENTION_DISABLE_{f}": f in off for f in
         "BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 FP8 VARLEN CLUSTER HDIM64 HDIM96 HDIM128 HDIM192 HDIM256 SM8x".split()}
flags.update(FLASHATTENTION_ENABLE_VCOLMAJOR=False, FLASH_ATTENTION_DISABLE_HDIMDIFF64=True, FLASH_ATTENTION_DISABLE_HDIMDIFF192=True)
open(sys.argv[1], "w").write(f"# written by bench/build_fa3.sh (the build's feature flags)\nCONFIG = {{'build_flags': {flags!r}}}\n")
EOF
ls -la "$out/flash_attn_3/_C.abi3.so"
