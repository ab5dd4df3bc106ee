"""tf.data input pipelines: per-process split, recipe augmentation, padded + masked evaluation.

Order of work (big_vision / flax imagenet style): read encoded records -> sample (shuffle or
class-weighted) -> repeat -> number every example -> decode + augment in parallel -> batch ->
reshape to [local_devices, per_device_batch, ...] -> prefetch.

Sampling. The builders write examples grouped by class and record each class's range, so each
class can be read on its own (`train[a:b]`) without scanning the rest:
  * class-balanced (AffectNet recipe): every class stream is shuffled and repeated, and
    `tf.data.Dataset.sample_from_datasets` picks the class of each draw uniformly. That is the
    reference's weight 1/count per image (each class then carries equal total weight); within a
    class the draws are a reshuffled cycle rather than with replacement, which only lowers the
    variance. An "epoch" is as many draws as images.
  * plain shuffle (RAF-DB, digits, folders): when the shuffle buffer holds the host's whole
    split (the default for RAF-DB) each epoch is a fresh exact permutation; otherwise class
    streams are mixed with weights proportional to class size, so a buffer smaller than the
    dataset never sees a run of one class.
Determinism: shuffles and sampling are seeded from (seed, process_index), and every augmentation
is stateless, seeded by (seed, example number), so a given seed gives the same batches whatever
the number of local devices, and `start_step` skips the records (not the decoding) of the batches
already seen.

Several processes (`process_split`): by default ('examples') each process reads, shuffles and
decodes only its own contiguous share of every class, so reading scales out; the batches then
depend on the number of processes. With 'batches' every process walks the single-process record
stream (records only, which is cheap next to decoding) and decodes just its slice of each global
batch: the same global batches, augmentation included, for any number of processes and devices,
at the price of each process reading every record.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zenfer_jax.data import augment, registry
from zenfer_jax.data.recipes import DEFAULT_RECIPE, RECIPES, Recipe, default_recipe
from zenfer_jax.data.recipes import resolve as _recipe
from zenfer_jax.data.samplers import PROCESS_SPLITS, eval_num_batches, host_range
from zenfer_jax.data.samplers import class_ranges as _class_ranges
from zenfer_jax.data.samplers import process_stream as _process_stream
from zenfer_jax.data.samplers import seeds as _seeds

__all__ = [
  'DEFAULT_RECIPE',
  'PROCESS_SPLITS',
  'RECIPES',
  'Recipe',
  'default_recipe',
  'eval_dataset',
  'eval_num_batches',
  'host_range',
  'preprocess_for_eval',
  'statistics_dataset',
  'train_dataset',
]


def hide_gpus_from_tf() -> None:
  """Keeps TensorFlow (input pipeline only) off the accelerators JAX uses."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # Already initialised: it was hidden before, or cannot be changed now.
    pass


# --------------------------------------------------------------------------------------------
# Per-example preprocessing


def decode(encoded: tf.Tensor) -> tf.Tensor:
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.ensure_shape(image, [None, None, 3])


def _as_rgb(image: tf.Tensor) -> tf.Tensor:
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  channels = image.shape[-1]
  if channels == 1:
    image = tf.tile(image, [1, 1, 3])
  elif channels == 4:
    image = image[..., :3]
  elif channels != 3:
    raise ValueError(f'Expected an HWC image with 1, 3 or 4 channels, got shape {image.shape}.')
  if image.dtype != tf.uint8:
    raise ValueError(f'Expected a uint8 image, got {image.dtype}.')
  return image


def train_example(image: tf.Tensor, image_size: int, recipe: Recipe, seed: tf.Tensor) -> dict:
  """The per-example part of the train chain: uint8 geometry and AutoAugment, plus the draws
  (lighting offset, erasing box) that `finish_train_batch` applies after batching.

  Float work is left to the batch so the shuffle/prefetch buffers hold uint8 and the cheap
  elementwise ops run once per batch instead of once per image.
  """
  s_crop, s_flip, s_aa, s_light, s_erase, s_shift = [
    tf.random.experimental.stateless_split(seed, 6)[i] for i in range(6)
  ]
  lighting = tf.zeros([3], tf.float32)
  box = tf.zeros([4], tf.int32)
  if recipe.augment:
    image = augment.resize_shorter(image, round(image_size / recipe.resize_ratio))
    if recipe.rotate_degrees:
      # The rotation's draw comes from the AutoAugment seed: no recipe uses both, and adding a
      # seed would change every other recipe's draws.
      image = augment.random_rotate(image, s_aa, recipe.rotate_degrees)
    image = augment.random_resized_crop(image, image_size, s_crop, scale=recipe.crop_scale)
    image = augment.random_flip(image, s_flip)
    if recipe.autoaugment:
      image = augment.autoaugment_imagenet(image, s_aa)
    if recipe.lighting_std:
      lighting = augment.lighting_offset(s_light, recipe.lighting_std)
    box = augment.erasing_box(
      image_size,
      image_size,
      s_erase,
      p=recipe.erasing_p,
      scale=recipe.erasing_scale,
      ratio=recipe.erasing_ratio,
    )
  else:
    image = augment.resize(image, image_size)
    if recipe.shift_fraction > 0:
      image = augment.random_shift(
        image, s_shift, max(1, round(image_size * recipe.shift_fraction))
      )
  image = tf.ensure_shape(image, [image_size, image_size, 3])
  return {'image': image, 'lighting': lighting, 'erase': box}


def finish_train_batch(image: tf.Tensor, lighting: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> to [0, 1], PCA lighting, ImageNet normalisation, random erasing."""
  x = augment.to_unit(image) + lighting[..., None, None, :]
  return augment.erase(augment.normalize(x), box, 0.0)


def _eval_chain(image: tf.Tensor, image_size: int, recipe: Recipe) -> tf.Tensor:
  if recipe.eval_center_crop:
    image = augment.center_crop(augment.resize_shorter(image, image_size), image_size)
  else:
    image = augment.resize(image, image_size)
  x = augment.normalize(augment.to_unit(image))
  return tf.ensure_shape(x, [image_size, image_size, 3])


def preprocess_for_eval(image, image_size: int, recipe: str = 'rafdb'):
  """uint8 HWC (grey, RGB or RGBA) -> float32 [size, size, 3] normalised, as evaluation sees it.

  Returns a NumPy array when called eagerly on a NumPy array (single-image prediction), a
  tensor otherwise.
  """
  r = RECIPES[recipe] if isinstance(recipe, str) else recipe
  out = _eval_chain(_as_rgb(image), image_size, r)
  if isinstance(image, np.ndarray) and tf.executing_eagerly():
    return out.numpy()
  return out


# --------------------------------------------------------------------------------------------
# Splitting and sampling


def _read(builder, split: str, start: int, end: int) -> tf.data.Dataset:
  return builder.as_dataset(
    split=f'{split}[{start}:{end}]',
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False),
  )


def _sampled_examples(
  builder,
  info,
  split,
  recipe: Recipe,
  seed: int,
  process_index: int,
  process_count: int,
  shuffle_buffer: int,
) -> tf.data.Dataset:
  ranges = [host_range(a, b, process_index, process_count) for a, b in _class_ranges(info, split)]
  ranges = [(a, b) for a, b in ranges if b > a]
  total = sum(b - a for a, b in ranges)
  if total == 0:
    raise ValueError(
      f'{info.name}/{split} has no examples for process {process_index} of {process_count}.'
    )
  seeds = _seeds(seed, process_index, len(ranges) + 2)
  if not recipe.balanced and shuffle_buffer >= total:
    merged = []  # Adjacent class ranges (all of them, with one process) are read at once.
    for a, b in ranges:
      if merged and merged[-1][1] == a:
        merged[-1] = (merged[-1][0], b)
      else:
        merged.append((a, b))
    parts = [_read(builder, split, a, b) for a, b in merged]
    ds = parts[0]
    for p in parts[1:]:
      ds = ds.concatenate(p)
    return ds.shuffle(total, seed=seeds[0], reshuffle_each_iteration=True).repeat()
  per_class_buffer = max(1, shuffle_buffer // len(ranges))
  streams = [
    _read(builder, split, a, b)
    .shuffle(min(b - a, per_class_buffer), seed=seeds[2 + i], reshuffle_each_iteration=True)
    .repeat()
    for i, (a, b) in enumerate(ranges)
  ]
  sizes = np.array([b - a for a, b in ranges], np.float64)
  weights = np.full(len(ranges), 1.0 / len(ranges)) if recipe.balanced else sizes / sizes.sum()
  return tf.data.Dataset.sample_from_datasets(streams, weights=list(weights), seed=seeds[1])


def _own_slice(ds: tf.data.Dataset, process_index: int, local_batch: int, global_batch: int):
  """(index, example) pairs of this process's `local_batch` slice of every global batch."""
  lo = process_index * local_batch

  def mine(index, _):
    offset = index % global_batch
    return tf.logical_and(offset >= lo, offset < lo + local_batch)

  return ds.filter(mine)


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  opts.experimental_optimization.map_parallelization = True
  return opts


def _to_devices(batch: dict, devices: int, per_device: int) -> dict:
  return {k: tf.reshape(v, [devices, per_device, *v.shape[1:]]) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Public pipelines


def train_tf_dataset(
  name: str,
  data_dir: str,
  *,
  image_size: int,
  per_device_batch: int,
  num_local_devices: int,
  seed: int,
  recipe: str | Recipe | None = None,
  process_index: int = 0,
  process_count: int = 1,
  classes: Sequence[str] | None = None,
  shuffle_buffer: int = 16_384,
  start_step: int = 0,
  split: str = 'train',
  prefetch: int = 2,
  process_split: str = 'examples',
) -> tf.data.Dataset:
  """The infinite training stream as a tf.data.Dataset of {'image', 'label'} batches.

  'image': float32 [num_local_devices, per_device_batch, image_size, image_size, 3];
  'label': int32 [num_local_devices, per_device_batch]. `process_split`: see the module
  docstring ('batches' assumes every process has `num_local_devices` devices).
  """
  hide_gpus_from_tf()
  r = _recipe(recipe, name)
  builder, info = registry.load(name, data_dir, classes)
  local_batch = num_local_devices * per_device_batch
  stream, streams, by_batch = _process_stream(process_split, process_index, process_count)
  ds = _sampled_examples(builder, info, split, r, seed, stream, streams, shuffle_buffer)
  ds = ds.enumerate()
  stream_batch = local_batch * process_count if by_batch else local_batch
  if start_step:
    ds = ds.skip(int(start_step) * stream_batch)
  if by_batch:
    ds = _own_slice(ds, process_index, local_batch, stream_batch)
  aug_seed = _seeds(seed, stream, 1)[0] & 0x7FFFFFFF

  def _map(index, ex):
    example_seed = tf.stack([tf.constant(aug_seed, tf.int64), index])
    out = train_example(decode(ex['image']), image_size, r, example_seed)
    out['label'] = tf.cast(ex['label'], tf.int32)
    return out

  def _finish(batch):
    image = finish_train_batch(batch['image'], batch['lighting'], batch['erase'])
    return _to_devices(
      {'image': image, 'label': batch['label']}, num_local_devices, per_device_batch
    )

  ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.map(_finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(prefetch).with_options(_options())


def train_dataset(name: str, data_dir: str, **kwargs):
  """`train_tf_dataset` as an infinite iterator of NumPy batches (see there for arguments)."""
  return iter(tfds.as_numpy(train_tf_dataset(name, data_dir, **kwargs)))


def statistics_dataset(
  name: str,
  data_dir: str,
  *,
  image_size: int,
  per_device_batch: int,
  num_local_devices: int,
  num_batches: int,
  seed: int,
  recipe: str | Recipe | None = None,
  process_index: int = 0,
  process_count: int = 1,
  classes: Sequence[str] | None = None,
  shuffle_buffer: int = 16_384,
  split: str = 'train',
  process_split: str = 'examples',
):
  """`num_batches` training batches for recomputing BatchNorm statistics, as NumPy {'image'}.

  Sampled as training samples (shuffled, class-balanced where the recipe is) but preprocessed
  as evaluation preprocesses (no augmentation), so the statistics describe the images the model
  is evaluated on. A fresh pipeline with the same seed yields the same batches, so the result
  does not depend on when it is called (a resumed run recomputes the same statistics).
  """
  hide_gpus_from_tf()
  r = _recipe(recipe, name)
  builder, info = registry.load(name, data_dir, classes)
  stream, streams, by_batch = _process_stream(process_split, process_index, process_count)
  ds = _sampled_examples(builder, info, split, r, seed, stream, streams, shuffle_buffer)
  if by_batch:
    local_batch = num_local_devices * per_device_batch
    ds = _own_slice(ds.enumerate(), process_index, local_batch, local_batch * process_count)
    ds = ds.map(lambda _, ex: ex)
  ds = ds.map(
    lambda ex: {'image': _eval_chain(decode(ex['image']), image_size, r)},
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(num_local_devices * per_device_batch, drop_remainder=True).take(num_batches)
  ds = ds.map(lambda b: _to_devices(b, num_local_devices, per_device_batch))
  return tfds.as_numpy(ds.prefetch(2).with_options(_options()))


def eval_tf_dataset(
  name: str,
  data_dir: str,
  *,
  split: str = 'test',
  image_size: int,
  per_device_batch: int,
  num_local_devices: int,
  process_index: int = 0,
  process_count: int = 1,
  recipe: str | Recipe | None = None,
  classes: Sequence[str] | None = None,
  prefetch: int = 2,
) -> tf.data.Dataset:
  """Every example of `split` exactly once, padded to whole batches, with a validity mask.

  All processes yield the same number of batches (pmap needs it); padding examples are zero
  images with label 0 and mask False. Never drops a remainder.
  """
  hide_gpus_from_tf()
  r = _recipe(recipe, name)
  builder, info = registry.load(name, data_dir, classes)
  if split not in info.split_sizes:
    raise ValueError(f'{name} has no split {split!r}; it has {sorted(info.split_sizes)}.')
  n = info.split_sizes[split]
  lo, hi = host_range(0, n, process_index, process_count)
  local_batch = num_local_devices * per_device_batch
  total = eval_num_batches(n, local_batch, process_count) * local_batch

  def _map(ex):
    return {
      'image': _eval_chain(decode(ex['image']), image_size, r),
      'label': tf.cast(ex['label'], tf.int32),
      'mask': tf.constant(True),
    }

  pad = tf.data.Dataset.from_tensors(
    {
      'image': tf.zeros([image_size, image_size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False),
    }
  ).repeat(total - (hi - lo))
  if hi > lo:
    ds = (
      _read(builder, split, lo, hi)
      .map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      .concatenate(pad)
    )
  else:
    ds = pad
  ds = ds.batch(local_batch)  # `total` is a multiple of local_batch: nothing is dropped.
  ds = ds.map(lambda b: _to_devices(b, num_local_devices, per_device_batch))
  return ds.prefetch(prefetch).with_options(_options())


def eval_dataset(name: str, data_dir: str, **kwargs):
  """`eval_tf_dataset` as a re-iterable of NumPy batches (see there for arguments)."""
  return tfds.as_numpy(eval_tf_dataset(name, data_dir, **kwargs))
