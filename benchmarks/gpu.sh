#!/usr/bin/env bash
# The GPU benchmark on a lent accelerator machine: benchmarks/gpu_driver.py's stages (search,
# steps, end to end with Grain), each sized for one 600 s call and writing its JSON as each of its
# parts ends. The docstring of benchmarks/gpu_driver.py says what each stage measures.
#
# Here, before the tree is sent (the machine downloads nothing; .whl/ is git-ignored):
#   bash benchmarks/fetch_gpu_wheels.sh      # the wheels of benchmarks/gpu_wheels.txt, ~10 MiB
# There, one call per stage, most important first:
#   STAGES=search OUT_DIR="$OUT" bash benchmarks/gpu.sh
#   STAGES=steps  OUT_DIR="$OUT" bash benchmarks/gpu.sh
#   STAGES=e2e    OUT_DIR="$OUT" bash benchmarks/gpu.sh
# Without STAGES all three run in turn (about 3 x 9 minutes: longer than one call). Arguments
# after the script go to the driver (e.g. --tiny, --torch off).
#
# The wheels in .whl/ are installed without dependencies or an index into $SITE (default
# /tmp/site), put on PYTHONPATH, once per machine. $PYTHON: the image's Python with CUDA builds of
# JAX and PyTorch (default: python3). Nothing here imports TensorFlow.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT_DIR:-benchmarks/results}"
STAGES="${STAGES:-search,steps,e2e}"
BUDGET_S="${BUDGET_S:-540}"
SITE="${SITE:-/tmp/site}"

command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if compgen -G '.whl/*.whl' >/dev/null; then
  stamp="$SITE/.zenfer_wheels"
  listing=$(cd .whl && ls -l -- *.whl)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$listing" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl
    echo "$listing" >"$stamp"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

stages=()
IFS=, read -ra names <<<"$STAGES"
for s in "${names[@]}"; do stages+=(--stage "$s"); done
exec "$PYTHON" -m benchmarks.gpu_driver "${stages[@]}" --out "$OUT_DIR" --budget_s "$BUDGET_S" "$@"
