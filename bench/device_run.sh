#!/usr/bin/env bash
# One device call of the proxy-300 protocol (../shared/docs/proxy.md), from the repo root:
#   [NAME=run_name] [RUN_TIMEOUT=560] [PACKED=1] bash bench/device_run.sh PRESET SEED [NPROC] [KEY=VALUE ...]
# Needs carried .devdata/shared/data (proxy, proxy_val, fineweb_dev, tokenizers), .whl (brotli, constriction,
# zstandard) and .devdata/COMMIT (git rev-parse HEAD, written before the call). Builds the devset for
# the preset's tokenizer with 16 workers, then runs train + export + every eval via bench/proxy_run.py,
# writing NAME.json and NAME.log to $OUT. Per-GPU faithful batch: the preset's 8-GPU global batch x NPROC/8.
# PACKED=1 runs packed/train_gpt.py (`make pack` with the same KEY=VALUEs), the copy a submission ships: its bytes are
# the counted code, and it carries the plug-ins the run imports (Hyperparameters.plugins: the record's kernels.py, ...).
# KEEP_ARTIFACT=1 also copies artifacts/NAME.pgq to $OUT (under 16 MiB: it comes back; e.g. for bench/codec_levels.py).
# A call returns at most 8 files from $OUT: batch no more runs than that into one call.
# The record's default EVAL_PATHS=ttt (compile + both val sets, about 115 s on an H100 with the leader's adapter
# optimizer, 2026-12-06_ttt_optim.md) makes a full run about 85 s longer than sliding (540 s at 4aceceb): pass
# PRE_EXPORT_PATHS= and, to be sure of one 10-minute call, EVAL_PATHS=sliding (then score TTT with EVAL_ONLY).
# TOKENIZER=path/to/MODEL.model [CASEOPS=1] (record only) trains on a devset built with that tokenizer instead of the
# preset's (data.devset --tokenizer: proxy, proxy_val and the FineWeb dev docs tokenized with it; CaseOps with sidecars).
# RUN_TIMEOUT counts from the start of this script, devset build included: proxy_run.py gets what is left, so a
# run it stops still writes its JSON and partial log (a device call's own limit returns nothing of them).
set -uo pipefail
preset=$1 seed=$2 nproc=${3:-1}; shift 3 2>/dev/null || shift $#
export PYTHONUNBUFFERED=1 OUT=${OUT:-bench/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # the caller's PYTHONPATH stays (e.g. $PWD/.fa3: FA3)
case $preset in
  record)   variant=sp8192 batch=$((786432 * nproc / 8)) ;;
  baseline) variant=sp1024 batch=$((524288 * nproc / 8)) ;;
  *) echo "error: PRESET must be record or baseline" >&2; exit 2 ;;
esac
tokenizer=data/tokenizers/fineweb_${variant#sp}_bpe.model
if [ -n "${TOKENIZER:-}" ]; then
  [ $preset = record ] || { echo "error: TOKENIZER= is for the record preset (sp8192)" >&2; exit 2; }
  variant=$(basename "$TOKENIZER" .model) tokenizer=data/tokenizers/$(basename "$TOKENIZER")
  python3 -m data.devset --shared .devdata/shared --workers 16 --tokenizer "$TOKENIZER" ${CASEOPS:+--caseops} | tail -1 || exit 1
else
  python3 -m data.devset --shared .devdata/shared --workers 16 --variants $variant | tail -1 || exit 1
fi
name=${NAME:-${preset}_proxy300_n${nproc}_s${seed}}
script=train_gpt.py
if [ "${PACKED:-0}" = 1 ]; then
  env PRESET=$preset "$@" python3 -m quant.pack train_gpt.py --auto --out packed/train_gpt.py || exit 1; script=packed/train_gpt.py
fi
python3 bench/proxy_run.py "$name" --nproc "$nproc" --out "$OUT" --timeout $(( ${RUN_TIMEOUT:-560} - SECONDS )) --script $script PRESET=$preset SEED=$seed \
  DATA_PATH=data/datasets/devset_$variant TOKENIZER_PATH=$tokenizer \
  DEV_VAL_FILES="data/datasets/devset_${variant}_fineweb_dev/fineweb_val_*.bin" \
  TRAIN_BATCH_TOKENS=$batch MAX_WALLCLOCK_SECONDS=300 "$@"
grep -E "^(train|compliance|artifact|eval)" "logs/$name.txt"
if [ "${KEEP_ARTIFACT:-0}" = 1 ]; then cp "artifacts/$name.pgq" "$OUT/"; fi
