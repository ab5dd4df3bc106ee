#!/usr/bin/env bash
# The GPU benchmark: the search, the training and inference steps, and training end to end,
# each a stage with its own time limit and its own JSON, written as the stage ends, so a run cut
# short still leaves every finished stage on disk. One device window of about 10 minutes holds
# all three; a lease that allows at most 10 minutes a command runs them in two calls:
#
#   bash benchmarks/gpu.sh                          # every stage, into benchmarks/results/
#   STAGES=search bash benchmarks/gpu.sh            # then: STAGES=steps,e2e bash benchmarks/gpu.sh
#   PYTHON=/path/to/python OUT_DIR=/tmp/gpu bash benchmarks/gpu.sh
#
# Stages, most important first:
#   search  benchmarks.search_throughput --long: 2,000 iterations at 224 px, batch 16, from
#           init_m (configs/search_m.py); JAX cold (empty compilation cache), JAX warm (the same
#           search in a new process), PyTorch eager scoring the same algorithm; each side stops
#           after SEARCH_SIDE_S seconds (default 75) with the iterations it reached.
#           -> gpu_search.json (+ .md), the three search directories under gpu_search/
#   steps   benchmarks.run --device gpu: train step and batch-1 inference of both models, JAX
#           (fp32, bf16 in a later pass) against PyTorch eager. -> gpu.json (+ gpu.md)
#   e2e     benchmarks.train_end_to_end --device gpu: the real `zenfer_jax.main` on a RAF-DB-sized
#           generated dataset, device augmentation, fp32 and bf16. -> e2e_gpu.json (+ .md)
#
# JAX's persistent compilation cache (under OUT_DIR/jax_cache) is shared by the steps and e2e
# stages so a model's step compiles once; the search's cold side uses an empty cache of its own
# (that is the point of its figure) and its warm side reuses it.
#
# Needs a Python with CUDA builds of JAX (jax[cuda12]) and PyTorch next to this project's
# dependencies; the CPU-only .venv of `make install` cannot run it. Nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${OUT_DIR:-benchmarks/results}"
STAGES="${STAGES:-search,steps,e2e}"
SEARCH_SIDE_S="${SEARCH_SIDE_S:-75}"
START=$(date +%s)
mkdir -p "$OUT_DIR"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PYTHON" - <<'EOF'
import sys
import jax, torch
ok = jax.default_backend() == "gpu" and torch.cuda.is_available()
print(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}")
print(f"torch {torch.__version__} cuda={torch.cuda.is_available()}")
if not ok:
    sys.exit("gpu.sh needs CUDA builds of both JAX and PyTorch (see the header of this script)")
EOF

# Both frameworks share the GPU in one process; JAX must not preallocate 75% of its memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR="$OUT_DIR/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

# stage NAME LIMIT_S COMMAND...: runs one stage under its limit and goes on whatever happens.
stage() {
  local name=$1 limit=$2
  shift 2
  case ",$STAGES," in *",$name,"*) ;; *) return 0 ;; esac
  echo "== $name (limit ${limit} s, $(( $(date +%s) - START )) s so far)"
  timeout "$limit" "$@" || echo "gpu.sh: stage $name exited with $? (124: cut at ${limit} s)" >&2
}

stage search 300 env -u JAX_COMPILATION_CACHE_DIR "$PYTHON" -m benchmarks.search_throughput --long \
  --max_seconds "$SEARCH_SIDE_S" --torch_device cuda \
  --json "$OUT_DIR/gpu_search.json" --keep "$OUT_DIR/gpu_search"

stage steps 240 "$PYTHON" -m benchmarks.run --device gpu --budget_s 200 \
  --sections train,infer_b1 --out "$OUT_DIR/gpu.json"

stage e2e 280 "$PYTHON" -m benchmarks.train_end_to_end --device gpu \
  --augment_on device --dtypes float32,bfloat16 --timeout 120 \
  --cache_dir "$OUT_DIR/e2e_cache" --out "$OUT_DIR/e2e_gpu.json"

for f in gpu_search gpu e2e_gpu; do
  [ -f "$OUT_DIR/$f.md" ] && { echo; cat "$OUT_DIR/$f.md"; }
done
echo "gpu.sh: $(( $(date +%s) - START )) s in all"
