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

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from zenfer_jax.data import augment, registry, samplers
from zenfer_jax.data.recipes import DEFAULT_RECIPE, RECIPES, Recipe, default_recipe
from zenfer_jax.data.samplers import PROCESS_SPLITS, eval_num_batches, host_range
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.data.tf_stream import (
  decode,
  hide_gpus_from_tf,
  options,
  read,
  to_devices,
  training_examples,
)

__all__ = [
  'DEFAULT_RECIPE',
  'PROCESS_SPLITS',
  'RECIPES',
  'DataSpec',
  'Recipe',
  'default_recipe',
  'eval_dataset',
  'eval_num_batches',
  'host_range',
  'preprocess_for_eval',
  'statistics_dataset',
  'train_dataset',
]


# --------------------------------------------------------------------------------------------
# Per-example preprocessing


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
# Public pipelines


def _training_examples(spec: DataSpec, start_step: int = 0):
  """(this process's (index, example) pairs from `start_step` on, the sampling plan), before
  decoding (`tf_stream.training_examples`)."""
  builder, info = registry.load(spec.name, spec.data_dir, spec.classes)
  plan = samplers.sampling(spec, info)
  return training_examples(builder, spec, plan, start_step), plan


def train_tf_dataset(spec: DataSpec, *, start_step: int = 0) -> tf.data.Dataset:
  """The infinite training stream of `spec` as a tf.data.Dataset of {'image', 'label'} batches.

  'image': float32 [num_local_devices, per_device_batch, image_size, image_size, 3];
  'label': int32 [num_local_devices, per_device_batch]. `start_step` skips the batches a resumed
  run has seen. process_split='batches' (see the module docstring) assumes every process has
  `num_local_devices` devices.
  """
  hide_gpus_from_tf()
  r = spec.resolved_recipe
  ds, plan = _training_examples(spec, start_step)
  image_size = spec.image_size

  def _map(index, ex):
    example_seed = tf.stack([tf.constant(plan.aug_seed, tf.int64), index])
    out = train_example(decode(ex['image']), image_size, r, example_seed)
    out['label'] = tf.cast(ex['label'], tf.int32)
    return out

  def _finish(batch):
    image = finish_train_batch(batch['image'], batch['lighting'], batch['erase'])
    return to_devices(
      {'image': image, 'label': batch['label']}, spec.num_local_devices, spec.per_device_batch
    )

  ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(plan.local_batch, drop_remainder=True)
  ds = ds.map(_finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(spec.prefetch).with_options(options())


def train_dataset(spec: DataSpec, *, start_step: int = 0):
  """`train_tf_dataset` as an infinite iterator of NumPy batches."""
  return iter(tfds.as_numpy(train_tf_dataset(spec, start_step=start_step)))


def statistics_dataset(spec: DataSpec, num_batches: int):
  """`num_batches` training batches for recomputing BatchNorm statistics, as NumPy {'image'}.

  Sampled as training samples (shuffled, class-balanced where the recipe is) but preprocessed
  as evaluation preprocesses (no augmentation), so the statistics describe the images the model
  is evaluated on. A fresh pipeline with the same seed yields the same batches, so the result
  does not depend on when it is called (a resumed run recomputes the same statistics).
  """
  hide_gpus_from_tf()
  r = spec.resolved_recipe
  ds, plan = _training_examples(spec)
  ds = ds.map(
    lambda _, ex: {'image': _eval_chain(decode(ex['image']), spec.image_size, r)},
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(plan.local_batch, drop_remainder=True).take(num_batches)
  ds = ds.map(lambda b: to_devices(b, spec.num_local_devices, spec.per_device_batch))
  return tfds.as_numpy(ds.prefetch(2).with_options(options()))


def eval_tf_dataset(spec: DataSpec) -> tf.data.Dataset:
  """Every example of `spec.eval_split` exactly once, padded to whole batches, with a mask.

  Batches of `spec.eval_per_device_batch` per device. All processes yield the same number of
  batches (pmap needs it); padding examples are zero images with label 0 and mask False. Never
  drops a remainder.
  """
  hide_gpus_from_tf()
  r = spec.resolved_recipe
  split, image_size = spec.eval_split, spec.image_size
  builder, info = registry.load(spec.name, spec.data_dir, spec.classes)
  if split not in info.split_sizes:
    raise ValueError(f'{spec.name} has no split {split!r}; it has {sorted(info.split_sizes)}.')
  n = info.split_sizes[split]
  lo, hi = host_range(0, n, spec.process_index, spec.process_count)
  local_batch = spec.eval_local_batch
  total = eval_num_batches(n, local_batch, spec.process_count) * local_batch

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
      read(builder, split, lo, hi)
      .map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      .concatenate(pad)
    )
  else:
    ds = pad
  ds = ds.batch(local_batch)  # `total` is a multiple of local_batch: nothing is dropped.
  ds = ds.map(lambda b: to_devices(b, spec.num_local_devices, spec.eval_per_device_batch))
  return ds.prefetch(spec.prefetch).with_options(options())


def eval_dataset(spec: DataSpec):
  """`eval_tf_dataset` as a re-iterable of NumPy batches."""
  return tfds.as_numpy(eval_tf_dataset(spec))
