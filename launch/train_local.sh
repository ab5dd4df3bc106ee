#!/usr/bin/env bash
# Several training processes on this machine, joined into one job as a multi-host run would be:
# the way to try the multi-process path (per-process data, cross-process collectives, one writer,
# orbax's multi-process checkpoints, a lost process) before a cluster.
#
#   launch/train_local.sh N CONFIG WORKDIR [--config.x=y ...] [--peer_timeout_s=S]
#   DEVICES_PER_PROCESS=2 launch/train_local.sh 2 configs/demo.py runs/demo_2x2
#
# Process 0 hosts JAX's coordinator on 127.0.0.1:PORT (PORT: a free port unless set). With GPUs
# (nvidia-smi lists some) each process gets its share of them through CUDA_VISIBLE_DEVICES (the
# GPU count must divide by N); without, each gets DEVICES_PER_PROCESS host CPU devices
# (default 1) and the processes talk through gloo over TCP; JAX_PLATFORMS=cpu asks for that
# where GPUs are too. The config's batch_size is the global batch of the whole job, as in every
# other launch. Needs bash 5.1 or newer.
#
# Process 0 prints to this terminal; process i > 0 has its lines prefixed with [i]. Each process
# writes its own log (WORKDIR/log.txt, WORKDIR/log.process<i>.txt). When a process dies, the
# others stop within --peer_timeout_s (default 60 s) saying which one was lost; this script then
# exits with the first failing process's status. Rerun the same command to resume.
set -euo pipefail

if [[ $# -lt 3 ]] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
NUM=$1
CONFIG=$2
WORKDIR=$3
shift 3

# The project's environment: the repository's .venv (what `make install` makes) when there is one,
# else $PYTHON, else python3. A bare `python` may be any interpreter, one without the project.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x "${REPO}/.venv/bin/python" ]]; then
  PYTHON=${REPO}/.venv/bin/python
else
  PYTHON=${PYTHON:-python3}
fi
if [[ -z "${PORT:-}" ]]; then
  PORT=$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

GPUS=()
if [[ "${JAX_PLATFORMS:-}" == cpu ]]; then
  :  # CPU devices asked for, even where GPUs are.
elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a GPUS <<<"${CUDA_VISIBLE_DEVICES}"
elif command -v nvidia-smi >/dev/null 2>&1; then
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
if [[ ${#GPUS[@]} -gt 0 ]]; then
  if ((${#GPUS[@]} % NUM != 0)); then
    echo "error: ${#GPUS[@]} GPU(s) do not divide among ${NUM} processes" >&2
    exit 2
  fi
  PER=$((${#GPUS[@]} / NUM))
  echo "Training ${CONFIG} in ${NUM} processes x ${PER} GPU(s), coordinator 127.0.0.1:${PORT}, workdir ${WORKDIR}"
else
  PER=${DEVICES_PER_PROCESS:-1}
  echo "Training ${CONFIG} in ${NUM} processes x ${PER} CPU device(s), coordinator 127.0.0.1:${PORT}, workdir ${WORKDIR}"
fi

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do
    kill -TERM "${pid}" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM

for ((i = 0; i < NUM; i++)); do
  env_args=(JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="${NUM}" JAX_PROCESS_ID="${i}")
  if [[ ${#GPUS[@]} -gt 0 ]]; then
    mine=$(IFS=,; echo "${GPUS[*]:$((i * PER)):${PER}}")
    env_args+=(CUDA_VISIBLE_DEVICES="${mine}")
  else
    env_args+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${PER}")
  fi
  if ((i == 0)); then
    env "${env_args[@]}" "${PYTHON}" -m zenfer_jax.main --distributed \
      --config="${CONFIG}" --workdir="${WORKDIR}" "$@" &
  else
    env "${env_args[@]}" "${PYTHON}" -m zenfer_jax.main --distributed \
      --config="${CONFIG}" --workdir="${WORKDIR}" "$@" \
      > >(sed -u "s/^/[${i}] /") 2> >(sed -u "s/^/[${i}] /" >&2) &
  fi
  PIDS+=($!)
  echo "process ${i}: pid $!"
done

# Wait for all; report each process that failed, and exit with the first failure's status.
status=0
declare -A RUNNING=()
for ((i = 0; i < NUM; i++)); do RUNNING[${PIDS[$i]}]=$i; done
while ((${#RUNNING[@]} > 0)); do
  set +e
  wait -n -p done_pid "${!RUNNING[@]}"
  code=$?
  set -e
  i=${RUNNING[${done_pid}]}
  unset "RUNNING[${done_pid}]"
  if ((code > 128)); then
    echo "process ${i} (pid ${done_pid}) was killed by signal $((code - 128)) (SIG$(kill -l $((code - 128)) 2>/dev/null || echo '?'))" >&2
  elif ((code == 75)); then
    echo "process ${i} (pid ${done_pid}) exited with status 75: it stopped after losing another process" >&2
  elif ((code != 0)); then
    echo "process ${i} (pid ${done_pid}) exited with status ${code}" >&2
  fi
  if ((code != 0 && status == 0)); then status=${code}; fi
done
wait  # The output prefixers.
if ((status != 0)); then
  echo "The job failed; rerun the same command to resume from the last checkpoint in ${WORKDIR}." >&2
fi
exit "${status}"
