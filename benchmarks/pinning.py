"""One CPU set and one thread count for every framework a benchmark times.

It must run before JAX, TensorFlow or PyTorch is imported: XLA sizes its intra-op pool from the
process's CPU affinity when it starts, and OpenMP and MKL read their variables once. Child
processes inherit both, so a benchmark that runs its sides in subprocesses pins once.
"""

from __future__ import annotations

import os

METHOD = (
  'process affinity set to these CPUs before import (XLA sizes its intra-op pool from it); '
  'torch.set_num_threads(threads); OMP/MKL_NUM_THREADS=threads'
)


def pin_threads(threads: int | None) -> dict:
  """Pin this process to its first `threads` CPUs (all of them for None or 0).

  Returns the record benchmarks keep in their JSON: the CPUs, the thread count and how.
  Asking for more CPUs than the process may use is refused rather than silently capped, so
  that a figure is never labelled with a thread count it did not run at.
  """
  avail = (
    sorted(os.sched_getaffinity(0))
    if hasattr(os, 'sched_getaffinity')
    else list(range(os.cpu_count() or 1))
  )
  n = threads or len(avail)
  if n > len(avail):
    raise SystemExit(f'--threads {n} > {len(avail)} CPUs available')
  if hasattr(os, 'sched_setaffinity') and n < len(avail):
    os.sched_setaffinity(0, avail[:n])
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = str(n)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return {'cpus': avail[:n], 'threads': n, 'method': METHOD}
