#!/usr/bin/env bash
# The GPU benchmark: everything in one run, within 8 minutes on one H100 or H200.
#
#   bash benchmarks/gpu.sh                 # writes benchmarks/results/gpu.json and gpu.md
#   PYTHON=/path/to/python JSON_OUT=/tmp/gpu.json bash benchmarks/gpu.sh
#
# Needs a Python with CUDA builds of JAX (jax[cuda12]) and PyTorch next to this project's
# dependencies; the CPU-only .venv of `make install` cannot run it. Nothing is downloaded here.
#
# Budget (8 min = 480 s): the run itself is cut at `timeout 470`; inside it, run.py starts no new
# section after --budget_s 400 s. Sections run by importance: fp32 training, batch-1 latency,
# the Zen-score search (each side stopped after 75 s), then a later pass for JAX bf16 and
# torch.compile training, batch-256 throughput, the input pipeline. The JSON and table are
# rewritten after every section, so a cut run still leaves every finished figure on disk.
# Measured on one H100 (2026-11-28): compiles dominate (JAX's ZenNet-M-SA train step 49 s in
# fp32, 93 s in bf16), so the tail does not fit; split runs merge with
# `python -m benchmarks.report --merge A.json B.json --out benchmarks/results/gpu.json`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
JSON_OUT="${JSON_OUT:-benchmarks/results/gpu.json}"
START=$(date +%s)

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

timeout 470 "$PYTHON" -m benchmarks.run --device gpu --budget_s 400 --out "$JSON_OUT" "$@" || {
  rc=$?
  echo "benchmarks.run exited with $rc (124: cut at 470 s); partial results are in $JSON_OUT" >&2
}

echo
cat "${JSON_OUT%.json}.md"
echo "gpu.sh: $(( $(date +%s) - START )) s in all"
