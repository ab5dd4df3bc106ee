"""Which examples each process reads and in what order: pure NumPy, shared by every loader.

The tf.data path (`pipeline`), the device path (`device_pipeline`) and the Grain path
(`grain_pipeline`) split a dataset between processes and seed their orders the same way
(`sampling` sets it up once for all three); the Grain path must not import TensorFlow, so the
arithmetic lives here, apart from tf.data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def host_range(start: int, end: int, process_index: int, process_count: int) -> tuple[int, int]:
  """This process's contiguous share of [start, end): sizes differ by at most one."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is outside [0, {process_count}).')
  n = end - start
  return (
    start + process_index * n // process_count,
    start + (process_index + 1) * n // process_count,
  )


def seeds(seed: int, process_index: int, n: int) -> list[int]:
  """`n` 32-bit seeds from (seed, process): the streams of one process differ from another's."""
  state = np.random.SeedSequence([int(seed), int(process_index)]).generate_state(n, np.uint32)
  return [int(s) for s in state]


def class_ranges(info, split: str) -> list[list[int]]:
  """Each class's [start, end) in `split` of a prepared dataset (`registry.DatasetInfo`)."""
  if split not in info.split_sizes:
    raise ValueError(f'{info.name} has no split {split!r}; it has {sorted(info.split_sizes)}.')
  ranges = info.class_ranges.get(split)
  if not ranges:  # Not class-grouped (should not happen with our builders): one stream.
    ranges = [[0, info.split_sizes[split]]]
  return ranges


PROCESS_SPLITS = ('examples', 'batches')


def process_stream(
  process_split: str, process_index: int, process_count: int
) -> tuple[int, int, bool]:
  """(stream index, stream count, keep a slice of each global batch) for `process_split`."""
  if process_split not in PROCESS_SPLITS:
    raise ValueError(f'process_split={process_split!r}: expected one of {PROCESS_SPLITS}.')
  if process_split == 'batches' and process_count > 1:
    return 0, 1, True
  return process_index, process_count, False


def augment_seed(seed: int, stream: int) -> int:
  """The 31-bit seed of a stream's per-example augmentation keys."""
  return seeds(seed, stream, 1)[0] & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How one process walks a training split (`sampling`).

  stream, streams: the sample stream this process draws (process_split='batches' with several
    processes: every process draws stream 0 of 1, the one-process order).
  ranges: the stream's share [start, end) of every class, empty ones left out.
  stream_batch, first, local_batch: each step the stream yields `stream_batch` examples, of
    which this process keeps [first, first + local_batch).
  aug_seed: the seed of the stream's per-example augmentation keys.
  """

  stream: int
  streams: int
  ranges: tuple[tuple[int, int], ...]
  stream_batch: int
  first: int
  local_batch: int
  aug_seed: int

  @property
  def by_batch(self) -> bool:
    """Whether this process keeps a slice of every stream batch (rather than all of it)."""
    return self.stream_batch != self.local_batch

  @property
  def class_sizes(self) -> list[int]:
    return [b - a for a, b in self.ranges]

  def records(self) -> np.ndarray:
    """The record indices of the share, class after class."""
    return np.concatenate([np.arange(a, b) for a, b in self.ranges])

  def example_sampler(self, balanced: bool, seed: int) -> ExampleSampler:
    return ExampleSampler(self.class_sizes, balanced, seed, self.stream)


def sampling(spec, info) -> Sampling:
  """The `Sampling` of `spec.train_split` (a `spec.DataSpec`) of a prepared dataset's `info`."""
  split = spec.train_split
  stream, streams, by_batch = process_stream(
    spec.process_split, spec.process_index, spec.process_count
  )
  ranges = [host_range(a, b, stream, streams) for a, b in class_ranges(info, split)]
  ranges = tuple((a, b) for a, b in ranges if b > a)
  if not ranges:
    raise ValueError(f'{info.name}/{split} has no examples for process {stream} of {streams}.')
  local_batch = spec.local_batch
  return Sampling(
    stream=stream,
    streams=streams,
    ranges=ranges,
    stream_batch=local_batch * spec.process_count if by_batch else local_batch,
    first=spec.process_index * local_batch if by_batch else 0,
    local_batch=local_batch,
    aug_seed=augment_seed(spec.seed, stream),
  )


def eval_num_batches(num_examples: int, local_batch: int, process_count: int) -> int:
  """Batches every process runs: enough for the largest per-process share."""
  largest = -(-num_examples // process_count)
  return -(-largest // local_batch)


class ExampleSampler:
  """Which examples of a resident share each step takes: a pure function of the step."""

  def __init__(self, class_sizes: Sequence[int], balanced: bool, seed: int, process_index: int):
    self.sizes = np.asarray(class_sizes, np.int64)
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
    self.total = int(self.sizes.sum())
    self.balanced = balanced
    self.seed = (int(seed), int(process_index))
    self._perms: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    # Safe from several threads (Grain's readers): the cache is replaced, never changed in place.
    perms = self._perms
    perm = perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([*self.seed, 0, epoch]).permutation(self.total)
      self._perms = {**{e: p for e, p in perms.items() if e >= epoch - 1}, epoch: perm}
    return perm

  def indices(self, step: int, batch: int) -> np.ndarray:
    """Indices (into the resident share) of step `step`'s `batch` examples."""
    if self.balanced:
      rng = np.random.default_rng([*self.seed, 1, step])
      cls = rng.integers(len(self.sizes), size=batch)
      within = np.minimum(
        (rng.random(batch) * self.sizes[cls]).astype(np.int64), self.sizes[cls] - 1
      )
      return (self.offsets[cls] + within).astype(np.int32)
    numbers = step * batch + np.arange(batch, dtype=np.int64)
    epochs, positions = numbers // self.total, numbers % self.total
    out = np.empty(batch, np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._permutation(int(e))[positions[sel]]
    return out.astype(np.int32)
