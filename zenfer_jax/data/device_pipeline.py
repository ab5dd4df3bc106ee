"""The training input when augmentation runs on the accelerator (`config.data.augment_on='device'`).

`train_batches` yields the same {'image', 'label'} batches as `pipeline.train_dataset` (shaped
[local_devices, per_device_batch, ...]), already on the devices, augmented by
`device_augment` there. Two ways to feed it:

  * resident: when this process's share of the train split decodes to images of one shape
    within `RESIDENT_MAX_BYTES` (RAF-DB: 12,271 aligned 100x100 faces, 368 MB as uint8), the
    share is decoded once and kept in device memory, one copy per local device. Each step the
    host only computes which examples to take (NumPy, microseconds) and sends their indices and
    example numbers; nothing waits on a CPU pipeline.
  * streamed: otherwise (AffectNet: 287k images of many sizes) the tf.data stream of the host
    path reads, decodes and resizes to the shorter side onto a fixed canvas (the long side is
    cut to its middle `device_augment.CANVAS_MAX_ASPECT` times the short one); the crop and
    everything after it run on the device.

Sampling. Resident: each epoch of this process's share is a fresh permutation seeded by
(seed, process, epoch), the order the host path's full shuffle buffer gives (RAF-DB's default);
class-balanced recipes (AffectNet) draw the class uniformly and an image of it uniformly, with
replacement, as the reference's weighted sampler does. Both are functions of the step, so a
resumed run takes the very examples an uninterrupted one takes. Streamed: the host path's own
sampling. Either way each example's augmentation key is derived from (seed, process, example
number), so the augmentations repeat exactly on resume too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf
from absl import logging

from zenfer_jax.data import augment, device_augment, registry, samplers, tf_stream
from zenfer_jax.data.recipes import Recipe
from zenfer_jax.data.samplers import ExampleSampler
from zenfer_jax.data.spec import DataSpec

__all__ = ['ExampleSampler', 'load_resident', 'train_batches']

RESIDENT_MAX_BYTES = 4 << 30


def _decoded(builder, split: str, ranges) -> tf.data.Dataset:
  return tf_stream.read_ranges(builder, split, ranges).map(
    lambda ex: (tf_stream.decode(ex['image']), tf.cast(ex['label'], tf.int32)),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


def load_resident(builder, split: str, ranges, max_bytes: int = RESIDENT_MAX_BYTES):
  """(images uint8 [N, H, W, 3], labels int32 [N]) of the ranges, or None when they do not all
  share one shape or would take more than `max_bytes`."""
  total = sum(b - a for a, b in ranges)
  first, _ = next(iter(_decoded(builder, split, ranges[:1]).take(1).as_numpy_iterator()))
  if total * first.nbytes > max_bytes:
    return None
  images = np.empty((total, *first.shape), np.uint8)
  labels = np.empty(total, np.int32)
  for i, (image, label) in enumerate(_decoded(builder, split, ranges).as_numpy_iterator()):
    if image.shape != first.shape:
      return None
    images[i], labels[i] = image, label
  return images, labels


def _replicate(x: np.ndarray, devices) -> jax.Array:
  """One copy per device, stacked on a leading device axis as `jax.pmap` takes its inputs
  (put device by device: no host-side stack of copies)."""
  mesh = jax.sharding.Mesh(np.array(devices), ('devices',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('devices'))
  shards = [jax.device_put(x[None], d) for d in devices]
  return jax.make_array_from_single_device_arrays((len(devices), *x.shape), sharding, shards)


# One mapped function per (seed, recipe, size), so a second stream in the same process (a
# rerun, a test) reuses the compiled program.
@functools.lru_cache(maxsize=8)
def _resident_step(aug_seed: int, params: device_augment.RecipeParams, image_size: int):
  def take_and_augment(all_images, all_labels, index, numbers):
    image = device_augment.train_batch(all_images[index], numbers, aug_seed, params, image_size)
    return {'image': image, 'label': all_labels[index]}

  return jax.pmap(take_and_augment)


def _streamed_example(image, image_size: int, r: Recipe, canvas: int):
  """Decode-side host work: resize (to the shorter side when augmenting) onto a fixed canvas."""
  if not r.augment:
    image = augment.resize(image, image_size)
    return image, tf.constant([image_size, image_size], tf.int32)
  image = augment.resize_shorter(image, round(image_size / r.resize_ratio))
  shape = tf.shape(image)  # A long side beyond the canvas, if any, keeps its middle.
  top, left = tf.maximum(shape[0] - canvas, 0) // 2, tf.maximum(shape[1] - canvas, 0) // 2
  image = image[top : top + canvas, left : left + canvas]
  shape = tf.shape(image)
  size = tf.stack([shape[0], shape[1]])
  image = tf.pad(image, [[0, canvas - shape[0]], [0, canvas - shape[1]], [0, 0]])
  return tf.ensure_shape(image, [canvas, canvas, 3]), size


def train_batches(
  spec: DataSpec, *, start_step: int = 0, resident_max_bytes: int = RESIDENT_MAX_BYTES
) -> Iterator[dict]:
  """The infinite training stream of `spec`, augmented on the devices (as `pipeline.train_dataset`).

  process_split='batches' with several processes: every process samples the whole split as one
  process would and augments its slice of each global batch, so the global batches do not
  depend on the number of processes (resident: each process holds the whole split).
  """
  tf_stream.hide_gpus_from_tf()
  params = device_augment.RecipeParams.of(spec.resolved_recipe)
  builder, info = registry.load(spec.name, spec.data_dir, spec.classes)
  plan = samplers.sampling(spec, info)
  devices = jax.local_devices()[: spec.num_local_devices]
  resident = load_resident(builder, spec.train_split, plan.ranges, resident_max_bytes)
  if resident is not None:
    return _resident_batches(spec, plan, params, devices, resident, start_step)
  return _streamed_batches(spec, plan, params, builder, start_step, resident_max_bytes)


def _resident_batches(spec: DataSpec, plan, params, devices, resident, start_step: int):
  """The resident mode: the split is sent to every device once, so each step sends only the
  indices and example numbers its examples are taken and augmented by."""
  images, labels = resident
  per_device = spec.per_device
  logging.info(
    'Device augmentation: %d training images (%s, %.0f MB) resident on %d device(s).',
    len(images),
    'x'.join(map(str, images.shape[1:])),
    images.nbytes / 2**20,
    len(devices),
  )
  stored, stored_labels = _replicate(images, devices), _replicate(labels, devices)
  sampler = plan.example_sampler(spec.resolved_recipe.balanced, spec.seed)
  take_and_augment = _resident_step(plan.aug_seed, params, spec.image_size)

  def resident_stream():
    step = start_step
    mine = slice(plan.first, plan.first + plan.local_batch)
    stream_batch = plan.stream_batch
    while True:
      index = per_device(sampler.indices(step, stream_batch)[mine])
      numbers = step * stream_batch + np.arange(stream_batch, dtype=np.int64)[mine]
      yield take_and_augment(stored, stored_labels, index, per_device(numbers.astype(np.uint32)))
      step += 1

  return resident_stream()


def _streamed_batches(
  spec: DataSpec, plan, params, builder, start_step: int, resident_max_bytes: int
):
  """The streamed mode: tf.data does only the host part (read, decode, resize onto a fixed
  canvas, so that batches have one shape), and the devices do the rest as for Grain's batches."""
  r, image_size = spec.resolved_recipe, spec.image_size
  canvas = params.canvas_size(image_size)
  logging.info(
    'Device augmentation: streaming (the train split is not one shape within %.0f MB); the host '
    'decodes and resizes onto a %dx%d canvas.',
    resident_max_bytes / 2**20,
    canvas,
    canvas,
  )
  ds = tf_stream.training_examples(builder, spec, plan, start_step)

  def _map(number, ex):
    image, size = _streamed_example(tf_stream.decode(ex['image']), image_size, r, canvas)
    return {
      'image': image,
      'size': size,
      'number': tf.cast(number, tf.uint32),
      'label': tf.cast(ex['label'], tf.int32),
    }

  ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(plan.local_batch, drop_remainder=True).prefetch(spec.prefetch)
  ds = ds.with_options(tf_stream.options())

  def streamed():
    for b in ds.as_numpy_iterator():
      yield device_augment.augment_local_batch(
        b, spec.per_device, plan.aug_seed, params, image_size
      )

  return streamed()
