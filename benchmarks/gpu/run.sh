#!/usr/bin/env bash
# FocuSFT on one CUDA GPU, run as is from anywhere in the repository, in under 8 minutes:
#   1. installs what the GPU's Python lacks from a local wheelhouse (benchmarks/gpu/build_wheelhouse.sh);
#   2. CUDA-only tests: BlockMask training = dense-mask training (fp32, bf16), FlexAttention
#      forward/backward = SDPA, no recompilation per length, the recipe with device=cuda
#      dtype=bf16 through NCCL with and without compile; with 2+ GPUs visible also Ulysses sequence
#      parallelism (sp=2, BlockMask over NCCL) = one GPU (skipped on one GPU);
#   3. the step benchmark (five variants) on the Qwen2.5-1.5B and -7B architectures;
#   4. the longest sequence at which FocuSFT trains each with FSDP2 + activation checkpointing, then
#      with activation offloading and the tiled FFN too; at the first length that trains, the
#      fake-tensor estimate beside torch.cuda.max_memory_allocated (issue 17).
#
#   benchmarks/gpu/run.sh             # on the GPU machine
#   benchmarks/gpu/run.sh --dry-run   # every stage on the CPU with the tiny preset (checks the script)
#
# Environment: PYTHON (default python3), WHEELHOUSE (default .whl), OUT (results folder,
# default benchmarks/gpu/results), FORCE_INSTALL=1 installs the wheelhouse even if nothing is missing.
# Every stage has its own time limit, so one that hangs or runs long cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-.whl}
RESULTS=${OUT:-benchmarks/gpu/results}
SITE=${SITE:-/tmp/focusft-site}
DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
STATUS=0

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$RESULTS/run.log"; }
stage() {  # stage NAME SECONDS OUTFILE COMMAND...: run with a time limit, keep going on failure
  local name=$1 limit=$2 out=$3; shift 3
  log "$name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RESULTS/$out"
  local rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    log "$name: exit status $rc$([[ $rc -eq 124 ]] && echo ' (time limit)')"
    STATUS=1
  fi
}

# 1. Dependencies: install only when something is missing (never torch: --no-deps).
missing=$("$PY" -c "
import importlib.util
print(' '.join(n for n in ('torchtune', 'torchao', 'torchdata', 'omegaconf', 'datasets')
               if importlib.util.find_spec(n) is None))")
if [[ -n "$missing" || "${FORCE_INSTALL:-0}" == 1 ]]; then
  log "installing from $WHEELHOUSE (missing: ${missing:-none, FORCE_INSTALL=1})"
  if ! compgen -G "$WHEELHOUSE/*.whl" >/dev/null; then
    log "no wheels in $WHEELHOUSE: build them with benchmarks/gpu/build_wheelhouse.sh $WHEELHOUSE on a machine with PyPI"
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELHOUSE"/*.whl || { log "pip install from $WHEELHOUSE failed"; exit 1; }
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "
import torch, torchtune, recipes.focusft_distributed, benchmarks.step_benchmark
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
print(f'torch {torch.__version__}, torchtune {torchtune.__version__}, {gpu}')" 2>&1 | grep -v "Skipping import" \
  | tee -a "$RESULTS/run.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || { log "the project does not import; see above"; exit 1; }

if [[ $DRY_RUN -eq 1 ]]; then
  BIG=(--preset cpu --seq-lens 128 --repeats 1 --warmup 0)
  SMALL=(--preset cpu --seq-lens 128 --repeats 1 --warmup 0)
  SEARCH_BIG=(--preset cpu --start 128 --stop 256)
  SEARCH_SMALL=(--preset cpu --start 128 --stop 128)
  SEARCH_BIG_OPT=(--preset cpu --start 128 --stop 256)
  TILE=(--ffn-tile-tokens 64)
else
  if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    log "no CUDA GPU visible; use --dry-run to check this script on a CPU"
    exit 1
  fi
  SMALL=(--preset qwen2.5-1.5b --seq-lens 4096 16384 --repeats 2)
  BIG=(--preset qwen2.5-7b --seq-lens 4096 --repeats 2)
  # Start at the goals (64K for 1.5B, 32K for 7B on an H200): one doubling above them fits the time.
  SEARCH_SMALL=(--preset qwen2.5-1.5b --start 65536 --stop 131072)
  SEARCH_BIG=(--preset qwen2.5-7b --start 32768 --stop 65536)
  # 7B with offloading and FFN tiles: one doubling above the plain search's lengths (the estimates'
  # targets, 512K for 1.5B and 256K for 7B, take minutes per step: run them with a longer budget).
  SEARCH_BIG_OPT=(--preset qwen2.5-7b --start 65536 --stop 131072)
  TILE=(--ffn-tile-tokens 8192)
fi

# 2. CUDA-only tests (skipped on a CPU) and the CPU tests of the pieces they rely on.
stage "CUDA tests" 150 tests.log "$PY" -m pytest -q -x -p no:cacheprovider \
  tests/test_cuda.py tests/test_loss.py tests/test_step_cost.py

# 3. Step benchmark, activation checkpointing on (the paper's setting): markdown tables.
stage "step benchmark, small model" 75 step_small.md "$PY" -m benchmarks.step_benchmark "${SMALL[@]}" --ac on
stage "step benchmark, large model" 60 step_large.md "$PY" -m benchmarks.step_benchmark "${BIG[@]}" --ac on

# 4. Longest sequence that trains, FSDP2 + activation checkpointing (one JSON line per length tried),
#    plain, and for 7B also with offloading + FFN tiles; each prints the estimate beside the measured peak
#    once. Stage limits add up to 440 s, under the 8 minutes a lent GPU session can spend on this script.
#    (The full no-GPU estimate tables are CPU work: python -m benchmarks.max_seq_len --estimate.)
stage "longest sequence, small model" 45 max_len_small.txt "$PY" -m benchmarks.max_seq_len "${SEARCH_SMALL[@]}" \
  --budget-s 30 --compare-estimate
stage "longest sequence, large model" 50 max_len_large.txt "$PY" -m benchmarks.max_seq_len "${SEARCH_BIG[@]}" \
  --budget-s 30 --compare-estimate
stage "longest sequence, large model, offload + FFN tiles" 60 max_len_large_offload_tiles.txt \
  "$PY" -m benchmarks.max_seq_len "${SEARCH_BIG_OPT[@]}" --offload --tiled "${TILE[@]}" --budget-s 30 \
  --compare-estimate

log "done in $(( $(date +%s) - START ))s; results in $RESULTS (status $STATUS)"
exit $STATUS
