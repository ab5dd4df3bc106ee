"""Where a training run's wall time goes: input wait, evaluation, checkpoints, and the rest (steps).

The training loop wraps its phases in `LoopTimer.phase` and marks the first metrics fetch, which
blocks until the device has finished every step so far: everything before that mark is warm-up
(compilation and the first steps), everything after it is the sustained rate. The totals go to
WORKDIR/timing.json; `benchmarks.train_end_to_end` reads them.

Steps are dispatched asynchronously, so "input wait" is only the time the loop sat in
`next(batches)`: with a fast enough input it is near zero even while the device is busy, and the
device's time shows up where the loop next blocks (a metrics fetch, evaluation, a checkpoint).
"""

from __future__ import annotations

import collections
import contextlib
import time

PHASES = ('input_wait', 'eval', 'checkpoint')


class LoopTimer:
  def __init__(self, start_step: int = 0):
    self.start = time.perf_counter()
    self.start_step = start_step
    self.totals: dict[str, float] = collections.defaultdict(float)
    self.counts: dict[str, int] = collections.defaultdict(int)
    self.last: dict[str, float] = {}
    self.warm: dict | None = None

  @contextlib.contextmanager
  def phase(self, name: str):
    begin = time.perf_counter()
    try:
      yield
    finally:
      seconds = time.perf_counter() - begin
      self.totals[name] += seconds
      self.counts[name] += 1
      self.last[name] = seconds

  def _snapshot(self, step: int) -> dict:
    out = {'step': step, 'seconds': time.perf_counter() - self.start}
    out.update({f'{p}_seconds': self.totals[p] for p in PHASES})
    return out

  def mark(self, step: int) -> None:
    """Call right after a blocking metrics fetch; the first call ends the warm-up."""
    if self.warm is None:
      self.warm = self._snapshot(step)

  def summary(self, step: int, global_batch: int) -> dict:
    """Totals, the warm-up, and the sustained rate after it (None without a mark before the end)."""
    end = self._snapshot(step)
    out = {
      'start_step': self.start_step,
      'end': end,
      'warmup': self.warm,
      'counts': {p: self.counts[p] for p in PHASES},
      'last_seconds': {p: self.last.get(p) for p in PHASES},
      'global_batch': global_batch,
      'sustained': None,
    }
    if self.warm is not None and end['step'] > self.warm['step']:
      d = {k: end[k] - self.warm[k] for k in end}
      train = d['seconds'] - d['eval_seconds'] - d['checkpoint_seconds']
      out['sustained'] = {
        'steps': d['step'],
        'train_seconds': train,
        'images_per_second': d['step'] * global_batch / train if train > 0 else None,
        'input_wait_fraction': d['input_wait_seconds'] / train if train > 0 else None,
        'eval_seconds': d['eval_seconds'],
        'checkpoint_seconds': d['checkpoint_seconds'],
      }
    return out
