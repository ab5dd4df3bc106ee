"""Image augmentation ops for tf.data, one small op per transform of the reference recipe.

Every random op is stateless: it takes a `seed` (int tensor of shape [2]) and the same seed gives
the same result, eagerly or inside `tf.data`, whatever the parallelism. The pipeline derives one
seed per example from (run seed, example index), which is what makes a run reproducible and lets
a resumed run continue with the very batches it would have seen.

Conventions: geometric and AutoAugment ops take and return uint8 HWC images, as the reference's
PIL-based transforms do (each resize rounds back to 8 bits); `to_unit`, `pca_lighting`,
`normalize` and `random_erasing` work on float32. Semantics follow torchvision's transforms that
the reference used (RandomResizedCrop, RandomHorizontalFlip, AutoAugment(IMAGENET),
RandomErasing) and the reference's PCA `Lighting`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from zenfer_jax.data import augment_spec as spec
from zenfer_jax.data.augment_spec import (
  IMAGENET_EIGVAL,
  IMAGENET_EIGVEC,
  IMAGENET_MEAN,
  IMAGENET_POLICY,
  IMAGENET_STD,
)


class _TfOps:
  """The array operations `augment_spec`'s shared draw-to-parameter functions use."""

  where = staticmethod(tf.where)
  exp = staticmethod(tf.exp)
  sqrt = staticmethod(tf.sqrt)
  round = staticmethod(tf.round)
  floor = staticmethod(tf.floor)
  minimum = staticmethod(tf.minimum)
  argmax = staticmethod(tf.argmax)
  any = staticmethod(tf.reduce_any)

  @staticmethod
  def int32(x):
    return tf.cast(x, tf.int32)

  @staticmethod
  def float32(x):
    return tf.cast(x, tf.float32)


TF_OPS = _TfOps()


def _split(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)
  return [seeds[i] for i in range(num)]


def _uniform(seed, shape=(), minval=0.0, maxval=1.0) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=tf.float32)


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------------------------------------
# Resizing and cropping (uint8 -> uint8)


def _resize_float(image: tf.Tensor, size, method: str = 'bicubic') -> tf.Tensor:
  """Resizes a uint8/float HWC image to `size` (h, w) as float32, antialiased like PIL.

  Antialiasing only changes a shrink (when enlarging, both paths use the same Keys cubic kernel,
  equal within 0.2 grey levels) but costs about 4x, so it is used only when a side shrinks.
  """
  x = tf.cast(image, tf.float32)
  size = tf.convert_to_tensor(size, tf.int32)
  shrinks = tf.reduce_any(size < tf.shape(x)[:2])
  out = tf.cond(
    shrinks,
    lambda: tf.image.resize(x, size, method=method, antialias=True),
    lambda: tf.image.resize(x, size, method=method, antialias=False),
  )
  return tf.ensure_shape(out, [None, None, x.shape[-1]])


def resize(image: tf.Tensor, size: Sequence[int] | int, method: str = 'bicubic') -> tf.Tensor:
  """Resizes to exactly `size` (h, w)."""
  if isinstance(size, int):
    size = (size, size)
  out = _to_uint8(_resize_float(image, size, method))
  return tf.ensure_shape(out, [size[0], size[1], out.shape[-1]])


def resize_shorter(image: tf.Tensor, size: int | tf.Tensor, method: str = 'bicubic') -> tf.Tensor:
  """Resizes so the shorter side is `size`, keeping the aspect ratio (torchvision Resize(int))."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  size_f = tf.cast(size, tf.float32)
  scale = size_f / tf.minimum(h, w)
  # torchvision: the short side is exactly `size`, the long side int(size * long / short).
  new_h = tf.where(h <= w, size_f, tf.floor(h * scale))
  new_w = tf.where(h <= w, tf.floor(w * scale), size_f)
  return _to_uint8(_resize_float(image, tf.cast(tf.stack([new_h, new_w]), tf.int32), method))


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """Crops the central size x size window (the image must be at least that large)."""
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return image[top : top + size, left : left + size]


def crop_window_draws(
  seed: tf.Tensor, scale: tuple[float, float], ratio: tuple[float, float], attempts: int
) -> tuple[tf.Tensor, ...]:
  """The raw draws of `spec.crop_window`: area fractions, log aspects, top and left uniforms."""
  s_area, s_ratio, s_top, s_left = _split(seed, 4)
  return (
    _uniform(s_area, [attempts], scale[0], scale[1]),
    _uniform(s_ratio, [attempts], *spec.log_range(ratio)),
    _uniform(s_top),
    _uniform(s_left),
  )


def random_resized_crop_window(
  height: tf.Tensor,
  width: tf.Tensor,
  seed: tf.Tensor,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
  attempts: int = spec.ATTEMPTS,
) -> tuple[tf.Tensor, ...]:
  """The (top, left, height, width) window torchvision's RandomResizedCrop would cut.

  Tries `attempts` random area/aspect windows at once and keeps the first that fits; if none
  does, falls back to the centre crop with the aspect ratio clamped into `ratio`.
  """
  draws = crop_window_draws(seed, scale, ratio, attempts)
  return spec.crop_window(TF_OPS, height, width, *draws, ratio)


def random_resized_crop(
  image: tf.Tensor,
  size: int,
  seed: tf.Tensor,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
  """torchvision RandomResizedCrop: a random area/aspect window, resized (bicubic) to size x size."""
  shape = tf.shape(image)
  top, left, h, w = random_resized_crop_window(shape[0], shape[1], seed, scale, ratio)
  return resize(image[top : top + h, left : left + w], (size, size))


def random_flip(image: tf.Tensor, seed: tf.Tensor, p: float = 0.5) -> tf.Tensor:
  """Mirrors left-right with probability p."""
  return tf.cond(_uniform(seed) < p, lambda: image[:, ::-1], lambda: image)


def random_shift(image: tf.Tensor, seed: tf.Tensor, max_shift: int) -> tf.Tensor:
  """Translates by up to `max_shift` pixels each way, filling with 0 (the digits' background)."""
  shape = tf.shape(image)
  padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
  offs = tf.random.stateless_uniform([2], seed, 0, 2 * max_shift + 1, dtype=tf.int32)
  return padded[offs[0] : offs[0] + shape[0], offs[1] : offs[1] + shape[1]]


# --------------------------------------------------------------------------------------------
# AutoAugment, ImageNet policy (uint8 -> uint8)


def posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every channel value."""
  drop = 8 - tf.cast(bits, tf.int32)
  mask = tf.bitwise.left_shift(tf.constant(255, tf.int32), drop) & 255
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Inverts every value at or above `threshold`."""
  image = tf.convert_to_tensor(image)
  return tf.where(tf.cast(image, tf.float32) >= tf.cast(threshold, tf.float32), 255 - image, image)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - tf.convert_to_tensor(image)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel so its minimum becomes 0 and its maximum 255."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  out = tf.where(hi > lo, tf.clip_by_value((x - lo) * scale, 0.0, 255.0), x)
  return tf.cast(tf.floor(out), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """Histogram-equalises each channel (PIL ImageOps.equalize's lookup table).

  The three channel histograms come from one bincount over values offset by 256 * channel.
  """
  x = tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)
  hist = tf.reshape(tf.math.bincount(tf.reshape(x, [-1]), minlength=768, maxlength=768), [3, 256])
  # PIL: step = (pixels - count of the highest occupied level) // 255.
  top = 255 - tf.argmax(tf.cast(hist[:, ::-1] > 0, tf.int32), axis=1, output_type=tf.int32)
  last = tf.gather(hist, top, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last) // 255
  safe = tf.maximum(step, 1)[:, None]
  lut = tf.clip_by_value((tf.cumsum(hist, axis=1, exclusive=True) + safe // 2) // safe, 0, 255)
  lut = tf.where((step > 0)[:, None], lut, tf.range(256)[None, :])
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), x), tf.uint8)


def _grey(x: tf.Tensor) -> tf.Tensor:
  return 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  x = tf.cast(image, tf.float32)
  return _to_uint8(degenerate + tf.cast(factor, tf.float32) * (x - degenerate))


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Saturation: 0 gives grey, 1 the original."""
  return _blend(tf.round(_grey(tf.cast(image, tf.float32))), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Contrast around the mean grey level: 0 gives a flat grey image, 1 the original."""
  mean = tf.reduce_mean(_grey(tf.cast(image, tf.float32)))
  return _blend(mean, image, factor)


def sharpness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blends with PIL's SMOOTH-filtered image (border pixels unfiltered): 0 blurs, 1 is identity."""
  x = tf.cast(image, tf.float32)
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], 'VALID')[0])
  shape = tf.shape(x)
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  degenerate = tf.where(interior > 0, smooth, x)
  degenerate = tf.reshape(degenerate, shape)
  return _blend(degenerate, image, factor)


def _transform(
  image: tf.Tensor,
  transform: tf.Tensor,
  interpolation: str = 'NEAREST',
  fill_mode: str = 'CONSTANT',
) -> tf.Tensor:
  """Projective warp (nearest-neighbour and black fill, as PIL's AutoAugment ops by default);
  `transform` maps output (x, y) to input coordinates."""
  shape = tf.shape(image)
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=tf.cast(transform, tf.float32)[None],
    output_shape=shape[:2],
    fill_value=0.0,
    interpolation=interpolation,
    fill_mode=fill_mode,
  )
  return out[0]


def rotate(
  image: tf.Tensor, degrees: tf.Tensor, interpolation: str = 'NEAREST', fill_mode: str = 'CONSTANT'
) -> tf.Tensor:
  """Rotates counter-clockwise about the image centre, filling with black by default."""
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  shape = tf.shape(image)
  cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
  cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
  c, s = tf.cos(theta), tf.sin(theta)
  transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])
  return _transform(image, transform, interpolation, fill_mode)


def random_rotate(image: tf.Tensor, seed: tf.Tensor, max_degrees: float) -> tf.Tensor:
  """A uniform rotation in [-max_degrees, max_degrees], bilinear, edges repeated into the corners.

  For small face crops (FER2013's 48x48): nearest-neighbour sampling would make the small
  rotations jagged, and black corners would be a border no test face has.
  """
  degrees = _uniform(seed, (), -max_degrees, max_degrees)
  return rotate(image, degrees, interpolation='BILINEAR', fill_mode='NEAREST')


def shear_x(image: tf.Tensor, amount: tf.Tensor) -> tf.Tensor:
  """Horizontal shear about the top-left corner: output (x, y) samples input (x + amount*y, y)."""
  a = tf.cast(amount, tf.float32)
  return _transform(image, tf.stack([1.0, a, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


# The ops in `spec.AUTOAUGMENT_OPS` order, each as op(image, signed magnitude).
_OP_FUNCTIONS = {
  'posterize': posterize,
  'rotate': rotate,
  'solarize': solarize,
  'autocontrast': lambda im, m: autocontrast(im),
  'equalize': lambda im, m: equalize(im),
  'color': lambda im, m: color(im, 1.0 + m),
  'contrast': lambda im, m: contrast(im, 1.0 + m),
  'invert': lambda im, m: invert(im),
  'sharpness': lambda im, m: sharpness(im, 1.0 + m),
  'shear_x': shear_x,
}
_AUTOAUGMENT_OPS = tuple(_OP_FUNCTIONS[name] for name, _, _ in spec.AUTOAUGMENT_OPS)


def apply_autoaugment_op(image: tf.Tensor, op_index: tf.Tensor, magnitude: tf.Tensor) -> tf.Tensor:
  """Applies op number `op_index` of `spec.AUTOAUGMENT_OPS` with the given (signed) magnitude."""
  branches = [lambda op=op: op(image, magnitude) for op in _AUTOAUGMENT_OPS]
  out = tf.switch_case(tf.cast(op_index, tf.int32), branches)
  return tf.ensure_shape(out, image.shape)


def autoaugment_choice(seed: tf.Tensor, policy=IMAGENET_POLICY) -> tuple[tf.Tensor, ...]:
  """The sub-policy draw for one image: (op indices [2], signed magnitudes [2], applied [2])."""
  tables = tuple(tf.constant(t) for t in spec.policy_tables(policy))
  s_pick, s_apply, s_sign = _split(seed, 3)
  k = tf.random.stateless_uniform([], s_pick, 0, len(policy), dtype=tf.int32)
  return spec.autoaugment_choice(TF_OPS, tables, k, _uniform(s_apply, [2]), _uniform(s_sign, [2]))


def autoaugment(image: tf.Tensor, seed: tf.Tensor, policy=IMAGENET_POLICY) -> tf.Tensor:
  """Draws one sub-policy uniformly and applies each of its steps with the step's probability."""
  ops, magnitude, apply = autoaugment_choice(seed, policy)
  for step in range(2):
    image = tf.cond(
      apply[step],
      lambda step=step, image=image: apply_autoaugment_op(image, ops[step], magnitude[step]),
      lambda image=image: image,
    )
  return image


def autoaugment_imagenet(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  return autoaugment(image, seed, IMAGENET_POLICY)


# --------------------------------------------------------------------------------------------
# Float ops


def to_unit(image: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [0, 1] (torchvision ToTensor)."""
  return tf.cast(image, tf.float32) / 255.0


def lighting_offset(seed: tf.Tensor, alphastd: float = 0.1) -> tf.Tensor:
  """The RGB offset eigvec @ (alpha * eigval), alpha ~ N(0, alphastd) (AlexNet lighting)."""
  alpha = tf.random.stateless_normal([3], seed, stddev=alphastd, dtype=tf.float32)
  return tf.linalg.matvec(
    tf.constant(IMAGENET_EIGVEC, tf.float32), alpha * tf.constant(IMAGENET_EIGVAL, tf.float32)
  )


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, alphastd: float = 0.1) -> tf.Tensor:
  """Adds `lighting_offset` to every pixel of a [0, 1] image; like the reference, no clipping."""
  if alphastd == 0:
    return tf.convert_to_tensor(image)
  return image + lighting_offset(seed, alphastd)


def normalize(
  image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tf.Tensor:
  """(x - mean) / std per channel, x in [0, 1]."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def erasing_draws(
  seed: tf.Tensor, scale: tuple[float, float], ratio: tuple[float, float], attempts: int
) -> tuple[tf.Tensor, ...]:
  """The raw draws of `spec.erasing_box`: apply, area fractions, log aspects, top, left."""
  s_apply, s_area, s_ratio, s_top, s_left = _split(seed, 5)
  return (
    _uniform(s_apply),
    _uniform(s_area, [attempts], scale[0], scale[1]),
    _uniform(s_ratio, [attempts], *spec.log_range(ratio)),
    _uniform(s_top),
    _uniform(s_left),
  )


def erasing_box(
  height: tf.Tensor,
  width: tf.Tensor,
  seed: tf.Tensor,
  p: float = 0.5,
  scale: tuple[float, float] = (0.02, 0.33),
  ratio: tuple[float, float] = (0.3, 3.3),
  attempts: int = spec.ATTEMPTS,
) -> tf.Tensor:
  """torchvision RandomErasing's rectangle as int32 [top, left, height, width]; all 0: none.

  With probability p, the area is a uniform fraction `scale` of the image and the aspect
  log-uniform in `ratio`; the first of `attempts` draws that fits strictly inside is used, and if
  none fits nothing is erased.
  """
  draws = erasing_draws(seed, scale, ratio, attempts)
  return tf.stack(spec.erasing_box(TF_OPS, height, width, *draws, p))


def erase(images: tf.Tensor, boxes: tf.Tensor, value: float = 0.0) -> tf.Tensor:
  """Sets each box [top, left, height, width] to `value`; images [..., H, W, C], boxes [..., 4]."""
  shape = tf.shape(images)
  rows = tf.range(shape[-3])
  cols = tf.range(shape[-2])
  b = boxes[..., None]
  in_rows = (rows >= b[..., 0, :]) & (rows < b[..., 0, :] + b[..., 2, :])  # [..., H]
  in_cols = (cols >= b[..., 1, :]) & (cols < b[..., 1, :] + b[..., 3, :])  # [..., W]
  inside = in_rows[..., :, None, None] & in_cols[..., None, :, None]
  return tf.where(inside, tf.cast(value, images.dtype), images)


def random_erasing(
  image: tf.Tensor,
  seed: tf.Tensor,
  p: float = 0.5,
  scale: tuple[float, float] = (0.02, 0.33),
  ratio: tuple[float, float] = (0.3, 3.3),
  value: float = 0.0,
) -> tf.Tensor:
  """torchvision RandomErasing on one HWC image (see `erasing_box`)."""
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  return erase(image, erasing_box(shape[0], shape[1], seed, p, scale, ratio), value)
