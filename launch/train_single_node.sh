#!/usr/bin/env bash
# Trains on every GPU of one machine: one process, JAX maps the step over all local GPUs.
#
#   launch/train_single_node.sh configs/rafdb_m.py runs/rafdb_m [--config.x=y ...]
#
# The global batch is PER_DEVICE_BATCH (default 64, the reference's batch per GPU) times the
# number of GPUs, and the learning rate follows it (lr_per_256 x batch / 256), as the
# reference's multi-GPU runs did. Set PER_DEVICE_BATCH=... to change it, or pass
# --config.batch_size=N to fix the global batch instead (it must divide by the GPU count).
# Rerun the same command to resume.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

# The project's environment: the repository's .venv (what `make install` makes) when there is one,
# else $PYTHON, else python3. A bare `python` may be any interpreter, one without the project.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x "${REPO}/.venv/bin/python" ]]; then
  PYTHON=${REPO}/.venv/bin/python
else
  PYTHON=${PYTHON:-python3}
fi
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-64}
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  NUM_GPUS=$(awk -F, '{print NF}' <<<"${CUDA_VISIBLE_DEVICES}")
else
  NUM_GPUS=$(nvidia-smi -L | wc -l)
fi
if [[ "${NUM_GPUS}" -lt 1 ]]; then
  echo "no GPU found (nvidia-smi -L lists none)" >&2
  exit 1
fi
echo "Training ${CONFIG} on ${NUM_GPUS} GPU(s), global batch $((PER_DEVICE_BATCH * NUM_GPUS)), workdir ${WORKDIR}"

exec "${PYTHON}" -m zenfer_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" \
  --config.batch_size=$((PER_DEVICE_BATCH * NUM_GPUS)) "$@"
