"""The tf.data pieces both TensorFlow input paths build on (`pipeline`, `device_pipeline`).

Reading a class range of prepared records, sampling a process's share of them (`sampling`'s
plan: shuffled, class-balanced or in proportion to class size), keeping this process's slice of
every batch, and the options and reshapes every stream ends with. The order of work and the
sampling rules are described in `pipeline`'s module docstring.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zenfer_jax.data.samplers import Sampling, seeds

__all__ = [
  'decode',
  'hide_gpus_from_tf',
  'options',
  'own_slice',
  'read',
  'read_ranges',
  'sampled_examples',
  'to_devices',
  'training_examples',
]


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow (input pipeline only) off the accelerators JAX uses."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Already initialised: it was hidden before, or cannot be changed now.
    pass


def decode(encoded: tf.Tensor) -> tf.Tensor:
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def read(builder, split: str, start: int, end: int) -> tf.data.Dataset:
  """Records [start, end) of `split`, images still encoded, in order."""
  return builder.as_dataset(
    split=f'{split}[{start}:{end}]',
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False),
  )


def read_ranges(builder, split: str, ranges) -> tf.data.Dataset:
  """The records of every [start, end) range, one after the other."""
  parts = [read(builder, split, a, b) for a, b in ranges]
  ds = parts[0]
  for p in parts[1:]:
    ds = ds.concatenate(p)
  return ds


def sampled_examples(
  builder, split: str, plan: Sampling, *, balanced: bool, seed: int, shuffle_buffer: int
) -> tf.data.Dataset:
  """The infinite stream of `plan`'s share of `split`, sampled (see `pipeline`)."""
  ranges = plan.ranges
  total = sum(b - a for a, b in ranges)
  stream_seeds = seeds(seed, plan.stream, len(ranges) + 2)
  if not balanced and shuffle_buffer >= total:
    merged = []  # Adjacent class ranges (all of them, with one process) are read at once.
    for a, b in ranges:
      if merged and merged[-1][1] == a:
        merged[-1] = (merged[-1][0], b)
      else:
        merged.append((a, b))
    ds = read_ranges(builder, split, merged)
    return ds.shuffle(total, seed=stream_seeds[0], reshuffle_each_iteration=True).repeat()
  per_class_buffer = max(1, shuffle_buffer // len(ranges))
  streams = [
    read(builder, split, a, b)
    .shuffle(min(b - a, per_class_buffer), seed=stream_seeds[2 + i], reshuffle_each_iteration=True)
    .repeat()
    for i, (a, b) in enumerate(ranges)
  ]
  sizes = np.array([b - a for a, b in ranges], np.float64)
  weights = np.full(len(ranges), 1.0 / len(ranges)) if balanced else sizes / sizes.sum()
  return tf.data.Dataset.sample_from_datasets(streams, weights=list(weights), seed=stream_seeds[1])


def training_examples(builder, spec, plan: Sampling, start_step: int = 0) -> tf.data.Dataset:
  """This process's (example number, example) pairs of `spec`'s train split from `start_step`
  on, images still encoded. Both TensorFlow paths (and precise BN's batches) number and slice the
  stream here, so that they agree on which example, with which number, a step takes."""
  ds = sampled_examples(
    builder,
    spec.train_split,
    plan,
    balanced=spec.resolved_recipe.balanced,
    seed=spec.seed,
    shuffle_buffer=spec.shuffle_buffer,
  ).enumerate()
  if start_step:
    ds = ds.skip(int(start_step) * plan.stream_batch)
  if plan.by_batch:
    ds = own_slice(ds, plan)
  return ds


def own_slice(ds: tf.data.Dataset, plan: Sampling) -> tf.data.Dataset:
  """(index, example) pairs of this process's slice of every stream batch of `plan`."""
  lo, n, stream_batch = plan.first, plan.local_batch, plan.stream_batch

  def mine(index, _):
    offset = index % stream_batch
    return tf.logical_and(offset >= lo, offset < lo + n)

  return ds.filter(mine)


def options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  opts.experimental_optimization.map_parallelization = True
  return opts


def to_devices(batch: dict, devices: int, per_device: int) -> dict:
  """Every [devices * per_device, ...] tensor of `batch` as [devices, per_device, ...]."""
  return {k: tf.reshape(v, [devices, per_device, *v.shape[1:]]) for k, v in batch.items()}
