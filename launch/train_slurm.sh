#!/usr/bin/env bash
# Multi-node training under SLURM: one process per node, each driving all of its node's GPUs.
#
#   sbatch --nodes=2 launch/train_slurm.sh configs/affectnet8_m.py /shared/runs/affectnet8_m \
#       --config.data.manual_dir=/shared/AffectNet --config.data.data_dir=/shared/tfds
#
# Every process calls jax.distributed.initialize(), which reads the SLURM environment
# (coordinator = first node); pmap then spans all GPUs of all nodes and the gradient and
# metric reductions cover the whole job. Each process reads its own share of the data.
# WORKDIR and data_dir must be on a file system all nodes share (checkpoints are written
# there by the job as a whole, metrics by process 0). If a node dies, the other processes stop
# within --peer_timeout_s (default 60 s; exit status 75, naming the lost process) instead of
# waiting in a collective. Resubmit the same command to resume. launch/train_local.sh runs the
# same code path with N processes on one machine.
#
#SBATCH --job-name=zenfer-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=zenfer-train-%j.out
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: sbatch $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

# The project's environment: the repository's .venv (what `make install` makes) when there is one,
# else $PYTHON, else python3. A bare `python` may be any interpreter, one without the project.
# sbatch runs a copy of this script: the repository is where the job was submitted from.
REPO=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [[ -x "${REPO}/.venv/bin/python" ]]; then
  PYTHON=${REPO}/.venv/bin/python
else
  PYTHON=${PYTHON:-python3}
fi
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-64}
GPUS_PER_NODE=${SLURM_GPUS_PER_NODE:-8}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "a100:8" -> "8"
TOTAL_GPUS=$((SLURM_JOB_NUM_NODES * GPUS_PER_NODE))
echo "Training ${CONFIG} on ${SLURM_JOB_NUM_NODES} node(s) x ${GPUS_PER_NODE} GPU(s), global batch $((PER_DEVICE_BATCH * TOTAL_GPUS))"

srun --ntasks-per-node=1 "${PYTHON}" -m zenfer_jax.main --distributed \
  --config="${CONFIG}" --workdir="${WORKDIR}" \
  --config.batch_size=$((PER_DEVICE_BATCH * TOTAL_GPUS)) "$@"
