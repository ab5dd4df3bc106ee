"""benchmarks.pinning: run in child processes, since pinning the test process would slow the suite."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = (
  'import json, os, sys; from benchmarks import pinning; '
  'rec = pinning.pin_threads(int(sys.argv[1])); '
  'print(json.dumps({"rec": rec, "affinity": sorted(os.sched_getaffinity(0)), '
  '"omp": os.environ["OMP_NUM_THREADS"], "mkl": os.environ["MKL_NUM_THREADS"]}))'
)
AVAIL = sorted(os.sched_getaffinity(0))


def _child(threads: int) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.endswith('_NUM_THREADS')}
  return subprocess.run(
    [sys.executable, '-c', CHILD, str(threads)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=60,
  )


def test_one_thread_pins_the_first_cpu_and_the_thread_variables():
  out = json.loads(_child(1).stdout)
  assert out['affinity'] == AVAIL[:1]
  assert out['rec']['cpus'] == AVAIL[:1] and out['rec']['threads'] == 1
  assert (out['omp'], out['mkl']) == ('1', '1')
  assert 'affinity' in out['rec']['method']


def test_zero_means_every_cpu_the_process_may_use():
  out = json.loads(_child(0).stdout)
  assert out['affinity'] == AVAIL
  assert out['rec']['threads'] == len(AVAIL) and out['omp'] == str(len(AVAIL))


def test_more_threads_than_cpus_is_refused_by_name():
  proc = _child(len(AVAIL) + 1)
  assert proc.returncode == 1
  assert f'--threads {len(AVAIL) + 1} > {len(AVAIL)} CPUs available' in proc.stderr
