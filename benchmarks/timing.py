"""Honest timing helpers shared by the benchmarks: alternation, medians, machine facts.

Rules every figure in `benchmarks.run` follows:
  * warm-up calls run first and are never timed; compile (or first-call) time is measured on
    its own and reported on its own line;
  * every timed call blocks until its result exists (`jax.block_until_ready`, a host copy of a
    scalar, or `torch.cuda.synchronize()`), so asynchronous dispatch cannot flatter a side;
  * the competing sides alternate rep by rep (A B, B A, A B, ...), so slow drift of a shared
    machine's load hits both sides equally;
  * each side's figure is the median of at least 5 repetitions, reported with min and max.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = [
  'summarize',
  'time_alternating',
  'loadavg',
  'cpu_model',
  'machine_info',
]

MIN_REPS = 5


def summarize(times: Sequence[float], items: float = 1.0) -> dict:
  """Median/min/max of per-rep seconds, and the matching rates (items per second).

  `rate_median` is items / median time; `rate_min`/`rate_max` come from the slowest and
  fastest reps (so rate_min <= rate_median <= rate_max).
  """
  if not times:
    raise ValueError('no repetitions')
  ts = sorted(float(t) for t in times)
  med = statistics.median(ts)
  return {
    'reps': len(ts),
    'seconds_median': med,
    'seconds_min': ts[0],
    'seconds_max': ts[-1],
    'items_per_rep': items,
    'rate_median': items / med,
    'rate_min': items / ts[-1],
    'rate_max': items / ts[0],
  }


def time_alternating(
  fns: Mapping[str, Callable[[], object]],
  *,
  reps: int,
  warmup: int = 1,
  calls_per_rep: int = 1,
  log: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
  """Seconds per rep for every side, sides interleaved and their order reversed each rep.

  Each `fn` must do one unit of work *and block until it is finished*. A rep is
  `calls_per_rep` back-to-back calls (to lift very short calls above timer noise); the
  returned figure is per rep, not per call.
  """
  if reps < 1:
    raise ValueError('reps must be >= 1')
  names = list(fns)
  for _ in range(warmup):
    for n in names:
      fns[n]()
  out: dict[str, list[float]] = {n: [] for n in names}
  for r in range(reps):
    order = names if r % 2 == 0 else names[::-1]
    for n in order:
      fn = fns[n]
      t0 = time.perf_counter()
      for _ in range(calls_per_rep):
        fn()
      out[n].append(time.perf_counter() - t0)
    if log:
      log(f'  rep {r}: ' + ', '.join(f'{n}={out[n][-1]:.3f}s' for n in names))
  return out


def loadavg() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:  # pragma: no cover
    return None


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:  # pragma: no cover
    pass
  return platform.processor() or 'unknown'


def _gpu_name() -> str | None:
  try:
    out = subprocess.run(
      ['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
      capture_output=True,
      text=True,
      timeout=20,
    )
    return (
      out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    )
  except (OSError, subprocess.SubprocessError):
    return None


def machine_info() -> dict:
  """Host facts that make a figure interpretable (no secrets, no environment dump)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  mem_gib = None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal'):
          mem_gib = round(int(line.split()[1]) / 2**20, 1)
  except OSError:  # pragma: no cover
    pass
  return {
    'platform': platform.platform(),
    'python': platform.python_version(),
    'cpu_model': cpu_model(),
    'cpu_count': os.cpu_count(),
    'cpus_available': cores,
    'memory_gib': mem_gib,
    'gpu': _gpu_name(),
  }
