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
    self._rate_mark: dict | None = None  # The snapshot of rate_since_last's previous call.

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

  def _snapshot(self, step: int, now: float | None = None) -> dict:
    now = time.perf_counter() if now is None else now
    out = {'step': step, 'seconds': now - self.start}
    out.update({f'{p}_seconds': self.totals[p] for p in PHASES})
    return out

  def mark(self, step: int) -> None:
    """Call right after a blocking metrics fetch; the first call ends the warm-up."""
    if self.warm is None:
      self.warm = self._snapshot(step)

  def rate_since_last(self, step: int, global_batch: int, now: float | None = None) -> float | None:
    """Training images/s since the previous call (the first: since the start), evaluation and
    checkpoint time in between left out.

    The training log shows this, the current speed: an average since the process started
    (compilation, every evaluation and pause included) moves ever more slowly, so it hid for
    half an hour that a run was back at full speed. Call right after a blocking metrics fetch.
    """
    start = self._rate_mark or {'step': self.start_step, 'seconds': 0.0}
    self._rate_mark = end = self._snapshot(step, now)
    d = _between(start, end)
    if d['step'] <= 0 or d['train_seconds'] <= 0:
      return None
    return d['step'] * global_batch / d['train_seconds']

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
      d = _between(self.warm, end)
      train = d['train_seconds']
      out['sustained'] = {
        'steps': d['step'],
        'train_seconds': train,
        'images_per_second': d['step'] * global_batch / train if train > 0 else None,
        'input_wait_fraction': d['input_wait_seconds'] / train if train > 0 else None,
        'eval_seconds': d['eval_seconds'],
        'checkpoint_seconds': d['checkpoint_seconds'],
      }
    return out


def _between(start: dict, end: dict) -> dict:
  """`end` - `start` (snapshots; a phase missing from `start` counts from 0), with the training
  time in between: the wall time less evaluation and checkpoints."""
  d = {k: end[k] - start.get(k, 0.0) for k in end}
  d['train_seconds'] = d['seconds'] - d['eval_seconds'] - d['checkpoint_seconds']
  return d
