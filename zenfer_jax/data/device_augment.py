"""The train recipe on the accelerator: jitted batch ops equal to the tf.data ops in `augment`.

A CPU core runs the tf.data recipe far slower than one GPU trains (docs/performance.md, "End to
end"), so with `config.data.augment_on='device'` the same chain runs here, over whole batches, as
part of the device's work: resize to the shorter side, the recipe's own rotation (FER2013's:
bilinear, edges repeated), RandomResizedCrop, horizontal flip, the AutoAugment ImageNet policy,
PCA lighting, ImageNet normalisation and random erasing, each step where the recipe has it (or,
for the recipes without augmentation, the resize and the random shift).

Equal on equal parameters. Every op reproduces its TensorFlow counterpart: resizes build the
exact weight matrices of TensorFlow's bicubic kernels (ResizeBicubic's table-quantised Keys
cubic when enlarging, ScaleAndTranslate's antialiased Keys cubic when a side shrinks, both with
out-of-image taps dropped and renormalised) and apply them as two matrix products at full
float32 precision; each image is rounded back to uint8 where the tf.data chain rounds it. The
tests state each op's tolerance (most are exact; resizes and the enhancers differ by at most one
grey level on a few pixels, from float summation order).

Same distributions. The random numbers come from JAX (threefry) instead of TensorFlow's Philox,
so the two recipes draw different but identically distributed parameters: both turn their raw
draws into crop windows, AutoAugment choices and erasing boxes with `augment_spec`'s shared
functions. Each example's key is derived from (run seed, example number), like the tf.data
seeds, so a resumed run repeats the very augmentations an uninterrupted one makes.

AutoAugment over a batch. One sub-policy step is one of ten ops per image. On accelerators
('batched') the ops are grouped by what they do: a nearest-neighbour warp (rotate, shear;
identity otherwise), a per-channel lookup table (posterize, solarize, invert, autocontrast,
equalize; identity otherwise) and a blend with a degenerate image (color, contrast, sharpness;
factor 1 otherwise); every image goes through the three, of which at most one changes it. On a
CPU ('per_example') each image runs only its own op in a loop, about 45x less work there
(0.5 -> 0.011 CPU-s for 32 images at 112 px). `resolve_impl('auto')` picks by backend.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from zenfer_jax.data import augment_spec as spec
from zenfer_jax.model.layers import cpu_kernels

HIGHEST = jax.lax.Precision.HIGHEST
# Host-resized train images travel on a square canvas; a long side beyond this many times the
# short one keeps its middle (see `RecipeParams.canvas_size`).
CANVAS_MAX_ASPECT = 1.5
_OP = spec.OP_INDEX


class _JaxOps:
  """The array operations `augment_spec`'s shared draw-to-parameter functions use."""

  where = staticmethod(jnp.where)
  exp = staticmethod(jnp.exp)
  sqrt = staticmethod(jnp.sqrt)
  round = staticmethod(jnp.round)
  floor = staticmethod(jnp.floor)
  minimum = staticmethod(jnp.minimum)
  argmax = staticmethod(jnp.argmax)
  any = staticmethod(jnp.any)

  @staticmethod
  def int32(x):
    return jnp.asarray(x).astype(jnp.int32)

  @staticmethod
  def float32(x):
    return jnp.asarray(x).astype(jnp.float32)


JAX_OPS = _JaxOps()


@dataclasses.dataclass(frozen=True)
class RecipeParams:
  """What the device chain needs of a `pipeline.Recipe` (kept free of TensorFlow)."""

  augment: bool
  resize_ratio: float = 0.75
  crop_scale: tuple[float, float] = (0.8, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  erasing_scale: tuple[float, float] = (0.02, 0.1)
  erasing_ratio: tuple[float, float] = (0.3, 3.3)
  erasing_p: float = 0.5
  lighting_std: float = 0.1
  shift_fraction: float = 0.0
  autoaugment: bool = True
  rotate_degrees: float = 0.0

  @classmethod
  def of(cls, recipe) -> RecipeParams:
    """From a `pipeline.Recipe` (any object with the same fields)."""
    return cls(
      augment=recipe.augment,
      resize_ratio=recipe.resize_ratio,
      crop_scale=tuple(recipe.crop_scale),
      erasing_scale=tuple(recipe.erasing_scale),
      erasing_ratio=tuple(recipe.erasing_ratio),
      erasing_p=recipe.erasing_p,
      lighting_std=recipe.lighting_std,
      shift_fraction=recipe.shift_fraction,
      autoaugment=getattr(recipe, 'autoaugment', True),
      rotate_degrees=float(getattr(recipe, 'rotate_degrees', 0.0)),
    )

  def shorter_side(self, image_size: int) -> int:
    return round(image_size / self.resize_ratio)

  def canvas_size(self, image_size: int) -> int:
    """The side of the canvas that images of many sizes are resized onto on the host (Grain, and
    the streamed device path), so that every batch has one shape; the cap on the long side keeps
    one panorama from sizing every batch."""
    if not self.augment:
      return image_size
    return max(image_size, int(np.ceil(self.shorter_side(image_size) * CANVAS_MAX_ASPECT)))

  def max_shift(self, image_size: int) -> int:
    return max(1, round(image_size * self.shift_fraction)) if self.shift_fraction > 0 else 0


# --------------------------------------------------------------------------------------------
# Resizing: TensorFlow's bicubic kernels as dense [out, in] weight matrices


def _keys_cubic(x):
  """Keys' cubic convolution kernel with a = -0.5 (TensorFlow's 'keyscubic')."""
  x = jnp.abs(x)
  far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  near = ((1.5 * x - 2.5) * x) * x + 1.0
  return jnp.where(x >= 2.0, 0.0, jnp.where(x >= 1.0, far, near))


def _bicubic_table() -> np.ndarray:
  """ResizeBicubic's 1025-entry coefficient table (computed in double, stored as float)."""
  a = -0.5
  x = np.arange(1025, dtype=np.float64) / 1024
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  x1 = x + 1.0
  far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
  return np.stack([near, far], axis=1).astype(np.float32)


_TABLE = _bicubic_table()


def _normalise_rows(w):
  total = jnp.sum(w, axis=-1, keepdims=True)
  significant = jnp.abs(total) >= 1000.0 * np.finfo(np.float32).tiny
  return jnp.where(significant, w * (1.0 / jnp.where(significant, total, 1.0)), w)


def _scale_and_translate_weights(in_size: int, out_size: int, start, length):
  """[out, in]: ScaleAndTranslate's antialiased Keys cubic for input window [start, start+length)."""
  length_f = jnp.asarray(length, jnp.float32)
  scale = jnp.float32(out_size) / length_f
  inv_scale = 1.0 / scale
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale
  radius = 2.0 * kernel_scale
  length_i = jnp.asarray(length, jnp.int32)
  span_start = jnp.clip(jnp.ceil(sample - radius - 0.5).astype(jnp.int32), 0, length_i - 1)
  span_end = jnp.clip(jnp.floor(sample + radius - 0.5).astype(jnp.int32), 0, length_i - 1) + 1
  source = jnp.arange(in_size, dtype=jnp.int32) - jnp.asarray(start, jnp.int32)
  pos = (source.astype(jnp.float32)[None, :] + 0.5 - sample[:, None]) * (1.0 / kernel_scale)
  valid = (source[None, :] >= span_start[:, None]) & (source[None, :] < span_end[:, None])
  return _normalise_rows(jnp.where(valid, _keys_cubic(pos), 0.0))


def _resize_bicubic_weights(in_size: int, out_size: int, start, length):
  """[out, in]: ResizeBicubic (half-pixel centres, table-quantised Keys cubic) of the window."""
  length_i = jnp.asarray(length, jnp.int32)
  scale = length_i.astype(jnp.float32) / jnp.float32(out_size)
  loc = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  base = jnp.floor(loc)
  offset = jnp.round((loc - base) * 1024.0).astype(jnp.int32)  # lrintf: half to even
  table = jnp.asarray(_TABLE)
  taps = jnp.stack(
    [table[offset, 1], table[offset, 0], table[1024 - offset, 0], table[1024 - offset, 1]], -1
  )
  index = base.astype(jnp.int32)[:, None] + jnp.arange(-1, 3, dtype=jnp.int32)[None, :]
  taps = jnp.where((index >= 0) & (index < length_i), taps, 0.0)
  taps = _normalise_rows(taps)
  source = jnp.arange(in_size, dtype=jnp.int32) - jnp.asarray(start, jnp.int32)
  hit = index[:, :, None] == source[None, None, :]  # [out, 4, in]
  return jnp.sum(jnp.where(hit, taps[:, :, None], 0.0), axis=1)


def resize_weights(in_size: int, out_size: int, start, length, antialias):
  """[out, in] weights resizing input[start:start+length] to out_size as `augment` resizes.

  `antialias` picks ScaleAndTranslate (TensorFlow's path when a side shrinks) over
  ResizeBicubic (when both sides keep or grow); it may be traced.
  """
  return jnp.where(
    antialias,
    _scale_and_translate_weights(in_size, out_size, start, length),
    _resize_bicubic_weights(in_size, out_size, start, length),
  )


def to_uint8(x):
  return jnp.clip(jnp.round(x), 0.0, 255.0).astype(jnp.uint8)


def resize_windows(images, windows, size: int):
  """Cuts windows [B, 4] (top, left, height, width) from uint8 [B, H, W, C], resized to size^2.

  As `augment.resize` after a crop: antialiased when either side of the window shrinks, rounded
  to uint8.
  """
  _, in_h, in_w, _ = images.shape
  top, left, h, w = (windows[:, i] for i in range(4))
  shrinks = (h > size) | (w > size)
  wy = jax.vmap(lambda s, n, a: resize_weights(in_h, size, s, n, a))(top, h, shrinks)
  wx = jax.vmap(lambda s, n, a: resize_weights(in_w, size, s, n, a))(left, w, shrinks)
  x = images.astype(jnp.float32)
  x = jnp.einsum('boh,bhwc->bowc', wy, x, precision=HIGHEST)
  return to_uint8(jnp.einsum('bpw,bowc->bopc', wx, x, precision=HIGHEST))


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """`augment.resize_shorter`'s output shape (float32 arithmetic, as TensorFlow computes it)."""
  h, w, s = np.float32(height), np.float32(width), np.float32(size)
  scale = s / np.minimum(h, w)
  if h <= w:
    return size, int(np.floor(w * scale))
  return int(np.floor(h * scale)), size


def resize_static(images, out_h: int, out_w: int):
  """uint8 [B, H, W, C] (one shape for all) resized to (out_h, out_w) as `augment.resize`."""
  _, in_h, in_w, _ = images.shape
  antialias = out_h < in_h or out_w < in_w
  wy = resize_weights(in_h, out_h, 0, in_h, antialias)
  wx = resize_weights(in_w, out_w, 0, in_w, antialias)
  x = jnp.einsum('oh,bhwc->bowc', wy, images.astype(jnp.float32), precision=HIGHEST)
  return to_uint8(jnp.einsum('pw,bowc->bopc', wx, x, precision=HIGHEST))


def flip(images, flips):
  """Mirrors left-right the images whose `flips` entry is True."""
  return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


def shift(images, offsets, max_shift: int):
  """`augment.random_shift` with its drawn offsets [B, 2] in [0, 2 * max_shift]."""
  _, h, w, c = images.shape
  padded = jnp.pad(images, [(0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)])
  return jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
    padded, offsets
  )


def rotate(images, degrees, sizes=None):
  """`augment.random_rotate`'s warp with its drawn angles [B]: bilinear, edges repeated.

  TensorFlow's ImageProjectiveTransform (BILINEAR, fill_mode NEAREST) step for step, so equal
  angles give the host's images: output pixel (x, y) samples the input at integer-indexed
  coordinates (no half-pixel offset) rotated about ((w - 1) / 2, (h - 1) / 2), clamped into
  [0, w - 1] x [0, h - 1] (the edge repeated into the corners), bilinear over the four
  neighbours in the kernel's float32 order, and a uint8 result truncated as its cast truncates.
  XLA's sin and cos may differ from TensorFlow's in the last bit: float images agree within
  1e-3, uint8 ones within a grey level on a few pixels (tests). `sizes` [B, 2]:
  each image's valid top-left extent on a host-resized canvas (None: the whole image); the
  centre and the clamp are those of that extent, as the host rotates the image before padding.
  """
  b, h, w, c = images.shape
  if sizes is None:
    sizes = jnp.broadcast_to(jnp.asarray([h, w], jnp.int32), (b, 2))
  vh = sizes[:, 0].astype(jnp.float32)[:, None, None]
  vw = sizes[:, 1].astype(jnp.float32)[:, None, None]
  theta = jnp.asarray(degrees, jnp.float32) * jnp.float32(math.pi / 180.0)
  cos, sin = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
  cy, cx = (vh - 1.0) / 2.0, (vw - 1.0) / 2.0
  ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  # augment.rotate's transform [c, -s, cx - c cx + s cy, s, c, cy - s cx - c cy], evaluated as
  # the kernel does: (t0 x + t1 y) + t2.
  in_x = cos * xs + (-sin) * ys + (cx - cos * cx + sin * cy)
  in_y = sin * xs + cos * ys + (cy - sin * cx - cos * cy)
  x = jnp.clip(in_x, 0.0, vw - 1.0)
  y = jnp.clip(in_y, 0.0, vh - 1.0)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  x1, y1 = x0 + 1.0, y0 + 1.0
  flat = images.reshape(b, h * w, c)

  def read(yy, xx):
    """The pixels at integer (yy, xx) [B, H, W] as float32, 0 outside the array (TF's fill;
    such a tap only occurs with weight 0, on the clamped last row or column)."""
    yi, xi = yy.astype(jnp.int32), xx.astype(jnp.int32)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).reshape(b, h * w, 1)
    value = jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w, c).astype(jnp.float32)
    return jnp.where(inside[..., None], value, 0.0)

  wx0, wx1 = (x1 - x)[..., None], (x - x0)[..., None]
  wy0, wy1 = (y1 - y)[..., None], (y - y0)[..., None]
  top = wx0 * read(y0, x0) + wx1 * read(y0, x1)
  bottom = wx0 * read(y1, x0) + wx1 * read(y1, x1)
  out = wy0 * top + wy1 * bottom
  if images.dtype == jnp.uint8:
    return jnp.clip(jnp.floor(out), 0.0, 255.0).astype(jnp.uint8)
  return out.astype(images.dtype)


# --------------------------------------------------------------------------------------------
# AutoAugment (uint8 -> uint8), one sub-policy step for a batch


def _round_half_away(x):
  """std::round, which TensorFlow's nearest-neighbour warp uses (jnp.round rounds half to even)."""
  trunc = jnp.trunc(x)
  return jnp.where(jnp.abs(x - trunc) == 0.5, trunc + jnp.sign(x), jnp.round(x))


WARPS = ('rotate', 'shear_x')
LOOKUPS = ('posterize', 'solarize', 'invert', 'autocontrast', 'equalize')
BLENDS = ('color', 'contrast', 'sharpness')


def _pick(op, candidates: dict, fallback):
  """candidates[name] where op is that op's index, else fallback (op [B], broadcast right)."""
  out = fallback
  for name, value in candidates.items():
    out = jnp.where(op == _OP[name], value, out)
  return out


def _warp(images, op, magnitude, ops=WARPS):
  """Rotate (degrees, counter-clockwise about the centre) and shear_x; identity for other ops."""
  b, h, w, c = images.shape
  one, zero = jnp.ones_like(magnitude), jnp.zeros_like(magnitude)
  candidates = {}
  if 'rotate' in ops:
    theta = magnitude * jnp.float32(math.pi / 180.0)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cy, cx = jnp.float32((h - 1) / 2.0), jnp.float32((w - 1) / 2.0)
    candidates['rotate'] = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
  if 'shear_x' in ops:
    candidates['shear_x'] = [one, magnitude, zero, zero, one, zero]
  identity = [one, zero, zero, zero, one, zero]
  t = [_pick(op, {k: v[i] for k, v in candidates.items()}, identity[i]) for i in range(6)]
  t = [v[:, None, None] for v in t]
  ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
  src_x = _round_half_away(t[0] * xs + t[1] * ys + t[2]).astype(jnp.int32)
  src_y = _round_half_away(t[3] * xs + t[4] * ys + t[5]).astype(jnp.int32)
  valid = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
  flat = jnp.clip(src_y, 0, h - 1) * w + jnp.clip(src_x, 0, w - 1)
  gathered = jnp.take_along_axis(images.reshape(b, h * w, c), flat.reshape(b, h * w, 1), axis=1)
  return jnp.where(valid[..., None], gathered.reshape(b, h, w, c), 0).astype(images.dtype)


def _histograms(images):
  """[B, 3, 256] per-channel value counts."""
  b, h, w, c = images.shape
  ids = images.astype(jnp.int32) + 256 * jnp.arange(c, dtype=jnp.int32)
  ids = ids.reshape(b, -1) + (c * 256) * jnp.arange(b, dtype=jnp.int32)[:, None]
  counts = jnp.zeros(b * c * 256, jnp.int32).at[ids.reshape(-1)].add(1)
  return counts.reshape(b, c, 256)


def _equalize_lut(hist):
  """PIL ImageOps.equalize's table from per-channel histograms [..., 256]."""
  top = 255 - jnp.argmax(hist[..., ::-1] > 0, axis=-1)
  last = jnp.take_along_axis(hist, top[..., None], axis=-1)[..., 0]
  step = (jnp.sum(hist, axis=-1) - last) // 255
  safe = jnp.maximum(step, 1)[..., None]
  exclusive = jnp.cumsum(hist, axis=-1) - hist
  lut = jnp.clip((exclusive + safe // 2) // safe, 0, 255)
  return jnp.where((step > 0)[..., None], lut, jnp.arange(256, dtype=jnp.int32))


def _lookup(images, op, magnitude, ops=LOOKUPS):
  """Posterize, solarize, invert, autocontrast, equalize as per-channel tables; identity else.

  Only the tables of `ops` are built (equalize's needs a histogram of every image).
  """
  b, h, w, c = images.shape
  v = jnp.arange(256, dtype=jnp.int32)[None, None, :]  # [1, 1, 256]
  m = magnitude[:, None, None]
  tables = {}
  if 'posterize' in ops:
    tables['posterize'] = v & ((255 << (8 - m.astype(jnp.int32))) & 255)
  if 'solarize' in ops:
    tables['solarize'] = jnp.where(v.astype(jnp.float32) >= m, 255 - v, v)
  if 'invert' in ops:
    tables['invert'] = 255 - v
  if 'autocontrast' in ops:
    lo = jnp.min(images, axis=(1, 2)).astype(jnp.float32)[:, :, None]  # [B, C, 1]
    hi = jnp.max(images, axis=(1, 2)).astype(jnp.float32)[:, :, None]
    scale = 255.0 / jnp.maximum(hi - lo, 1.0)
    vf = v.astype(jnp.float32)
    stretched = jnp.where(hi > lo, jnp.clip((vf - lo) * scale, 0.0, 255.0), vf)
    tables['autocontrast'] = jnp.floor(stretched).astype(jnp.int32)
  if 'equalize' in ops:
    tables['equalize'] = _equalize_lut(_histograms(images))
  lut = jnp.broadcast_to(_pick(op[:, None, None], tables, v), (b, c, 256))
  ids = images.astype(jnp.int32) + 256 * jnp.arange(c, dtype=jnp.int32)
  out = jnp.take_along_axis(lut.reshape(b, c * 256), ids.reshape(b, -1), axis=1)
  return out.reshape(b, h, w, c).astype(jnp.uint8)


def _grey(x):
  return 0.299 * x[..., 0:1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]


def _smooth(x):
  """PIL's SMOOTH filter (3x3, centre 5, others 1, over 13) on the interior, rounded; edges kept."""
  _, h, w, _ = x.shape
  k1, k5 = jnp.float32(1.0 / 13.0), jnp.float32(5.0 / 13.0)
  acc = jnp.zeros_like(x[:, 1:-1, 1:-1])
  for dy in range(3):
    for dx in range(3):
      weight = k5 if (dy, dx) == (1, 1) else k1
      acc = acc + weight * x[:, dy : h - 2 + dy, dx : w - 2 + dx]
  return x.at[:, 1:-1, 1:-1].set(jnp.round(acc))


def _blend(images, op, magnitude, ops=BLENDS):
  """Color, contrast, sharpness: a blend with a degenerate image; identity for other ops."""
  x = images.astype(jnp.float32)
  o = op[:, None, None, None]
  degenerates = {}
  if 'color' in ops:
    degenerates['color'] = jnp.round(_grey(x))
  if 'contrast' in ops:
    degenerates['contrast'] = jnp.mean(_grey(x), axis=(1, 2, 3), keepdims=True)
  if 'sharpness' in ops:
    degenerates['sharpness'] = _smooth(x)
  degenerate = _pick(o, degenerates, x)
  is_blend = functools.reduce(jnp.logical_or, [o == _OP[name] for name in ops])
  factor = jnp.where(is_blend, 1.0 + magnitude[:, None, None, None], 1.0)
  return to_uint8(degenerate + factor * (x - degenerate))


def _batched_op(images, op, magnitude):
  # At most one of the three changes an image.
  return _blend(_lookup(_warp(images, op, magnitude), op, magnitude), op, magnitude)


def _per_example_op(images, op, magnitude):
  """Each image through only its own op (lax.switch in a loop): on a CPU, where a select over
  every op's result costs each op for every image, about 10x less work."""
  branches = [lambda x, m: x]
  for name, _, _ in spec.AUTOAUGMENT_OPS:
    group = _warp if name in WARPS else _lookup if name in LOOKUPS else _blend
    branches.append(
      lambda x, m, group=group, name=name: group(x, jnp.full((1,), _OP[name]), m, ops=(name,))
    )

  def one(args):
    x, o, m = args
    return jax.lax.switch(o + 1, branches, x[None], m[None])[0]

  return jax.lax.map(one, (images, op, magnitude))


def resolve_impl(impl: str) -> str:
  """'auto': 'per_example' on the CPU backend, 'batched' on accelerators."""
  if impl == 'auto':
    # The backend is read in one place (cpu_kernels.resolve_impl); 'cpu' there means per example.
    return 'per_example' if cpu_kernels.resolve_impl('auto') == 'cpu' else 'batched'
  if impl not in ('batched', 'per_example'):
    raise ValueError(f"impl={impl!r}: expected 'auto', 'batched' or 'per_example'.")
  return impl


def autoaugment_op(images, op, magnitude, impl: str = 'auto'):
  """Op number `op` [B] of `spec.AUTOAUGMENT_OPS` with signed `magnitude` [B]; -1: none."""
  if resolve_impl(impl) == 'per_example':
    return _per_example_op(images, op, magnitude)
  return _batched_op(images, op, magnitude)


def autoaugment(images, ops, magnitudes, applied, impl: str = 'auto'):
  """Both steps of each image's sub-policy: ops, magnitudes, applied all [B, 2]."""

  def one_step(step, x):
    op = jnp.where(applied[:, step], ops[:, step], -1)
    return autoaugment_op(x, op, magnitudes[:, step], impl)

  # A loop rather than two copies: the step compiles once.
  return jax.lax.fori_loop(0, 2, one_step, images)


# --------------------------------------------------------------------------------------------
# Float ops


def finish(images, lighting, boxes):
  """uint8 [B, H, W, 3] -> [0, 1] + lighting [B, 3] -> ImageNet normalisation -> erase boxes."""
  x = images.astype(jnp.float32) / 255.0 + lighting[:, None, None, :]
  x = (x - jnp.asarray(spec.IMAGENET_MEAN, jnp.float32)) / jnp.asarray(
    spec.IMAGENET_STD, jnp.float32
  )
  _, h, w, _ = x.shape
  top, left, bh, bw = (boxes[:, i, None] for i in range(4))
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  in_rows = (rows >= top) & (rows < top + bh)
  in_cols = (cols >= left) & (cols < left + bw)
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(inside, 0.0, x)


def lighting_offsets(alpha):
  """eigvec @ (alpha * eigval) per image, alpha [B, 3] ~ N(0, std) (AlexNet lighting)."""
  vec = jnp.asarray(spec.IMAGENET_EIGVEC, jnp.float32)
  val = jnp.asarray(spec.IMAGENET_EIGVAL, jnp.float32)
  return jnp.einsum('ij,bj->bi', vec, alpha * val, precision=HIGHEST)


# --------------------------------------------------------------------------------------------
# Parameter draws and the whole chain


def example_keys(aug_seed: int, numbers):
  """One key per example from (run seed, example number), as the tf.data seeds are derived."""
  base = jax.random.PRNGKey(aug_seed)
  return jax.vmap(lambda n: jax.random.fold_in(base, n))(jnp.asarray(numbers, jnp.uint32))


_POLICY_TABLES = spec.policy_tables(spec.IMAGENET_POLICY)


class _Uniforms:
  """Consecutive slices of one vector of uniforms: one threefry call per example, not twenty
  (each random call is a separate piece of the compiled program)."""

  def __init__(self, values):
    self.values, self.used = values, 0

  def take(self, n: int | None = None, lo: float = 0.0, hi: float = 1.0):
    k = 1 if n is None else n
    u = self.values[self.used : self.used + k]
    self.used += k
    u = lo + u * (hi - lo)
    return u[0] if n is None else u


def _uniform_count(r: RecipeParams) -> int:
  n = spec.ATTEMPTS
  if not r.augment:
    return 2  # The shift's two offsets.
  # Crop 2n + 2, flip 1, erasing 1 + 2n + 2; AutoAugment 1 + 2 + 2; the rotation's angle 1.
  # (A recipe's count fixes all its draws: threefry's numbers change with the vector's length.)
  return 4 * n + 6 + (5 if r.autoaugment else 0) + (1 if r.rotate_degrees else 0)


def _draw_one(key, height, width, r: RecipeParams, image_size: int) -> dict:
  k_uniform, k_normal = jax.random.split(key)
  u = _Uniforms(jax.random.uniform(k_uniform, (_uniform_count(r),)))
  n = spec.ATTEMPTS
  if not r.augment:
    m = r.max_shift(image_size)
    return {'shift': jnp.minimum(jnp.floor(u.take(2) * (2 * m + 1)), 2 * m).astype(jnp.int32)}
  out = {}
  window = spec.crop_window(
    JAX_OPS,
    height,
    width,
    u.take(n, *r.crop_scale),
    u.take(n, *spec.log_range(r.crop_ratio)),
    u.take(),
    u.take(),
    r.crop_ratio,
  )
  out['window'] = jnp.stack(window).astype(jnp.int32)
  out['flip'] = u.take() < 0.5
  if r.autoaugment:
    subpolicies = len(spec.IMAGENET_POLICY)
    k = jnp.minimum(jnp.floor(u.take() * subpolicies), subpolicies - 1).astype(jnp.int32)
    tables = tuple(jnp.asarray(t) for t in _POLICY_TABLES)
    ops, mags, applied = spec.autoaugment_choice(JAX_OPS, tables, k, u.take(2), u.take(2))
    out.update(aa_ops=ops, aa_magnitudes=mags, aa_applied=applied)
  if r.lighting_std:
    alpha = r.lighting_std * jax.random.normal(k_normal, (3,))
    out['lighting'] = lighting_offsets(alpha[None])[0]
  else:  # As `pipeline.train_example`: no draw, no offset.
    out['lighting'] = jnp.zeros((3,), jnp.float32)
  box = spec.erasing_box(
    JAX_OPS,
    image_size,
    image_size,
    u.take(),
    u.take(n, *r.erasing_scale),
    u.take(n, *spec.log_range(r.erasing_ratio)),
    u.take(),
    u.take(),
    r.erasing_p,
  )
  out['erase'] = jnp.stack(box).astype(jnp.int32)
  if r.rotate_degrees:  # Uniform in [-degrees, degrees), as `augment.random_rotate` draws it.
    out['rotate'] = u.take(None, -r.rotate_degrees, r.rotate_degrees)
  assert u.used == _uniform_count(r), (u.used, _uniform_count(r))
  return out


def draw_params(keys, sizes, r: RecipeParams, image_size: int) -> dict:
  """Every random parameter of each example: keys [B, 2], sizes [B, 2] (the crop source's h, w)."""
  return jax.vmap(lambda k, s: _draw_one(k, s[0], s[1], r, image_size))(keys, sizes)


def apply_params(
  images, params: dict, r: RecipeParams, image_size: int, impl: str = 'auto', sizes=None
):
  """The chain on uint8 [B, H, W, 3] with drawn `params`; float32 [B, size, size, 3] out.

  With the augmenting recipe `images` are the crop source, already resized to the shorter side
  (the windows in `params` lie inside each image's valid extent, `sizes` [B, 2] on a canvas,
  else the whole image); otherwise they are already image_size square and only the shift is
  applied. The recipe's rotation turns the crop source first, as `pipeline.train_example` does.
  """
  b = images.shape[0]
  if r.augment:
    if r.rotate_degrees:
      images = rotate(images, params['rotate'], sizes)
    x = resize_windows(images, params['window'], image_size)
    x = flip(x, params['flip'])
    if r.autoaugment:
      x = autoaugment(x, params['aa_ops'], params['aa_magnitudes'], params['aa_applied'], impl)
    return finish(x, params['lighting'], params['erase'])
  x = images
  m = r.max_shift(image_size)
  if m:
    x = shift(x, params['shift'], m)
  return finish(x, jnp.zeros((b, 3), jnp.float32), jnp.zeros((b, 4), jnp.int32))


def train_batch(
  images,
  numbers,
  aug_seed: int,
  r: RecipeParams,
  image_size: int,
  sizes=None,
  with_params=False,
  impl: str = 'auto',
):
  """The whole train chain for one batch, from decoded or host-resized uint8 images.

  sizes None: `images` [B, H, W, 3] are decoded images of one shape; the augmenting recipe
  resizes them to the shorter side first, the others to image_size. sizes [B, 2]: `images` are
  canvases the host already resized (to the shorter side, or to image_size without
  augmentation), each valid in its top-left sizes[i] corner. with_params: also returns the
  drawn parameters (`draw_params`). impl: AutoAugment's strategy (`resolve_impl`).
  """
  b = images.shape[0]
  if sizes is None:
    _, h, w, _ = images.shape
    if r.augment:
      out_h, out_w = shorter_side_shape(h, w, r.shorter_side(image_size))
    else:
      out_h, out_w = image_size, image_size
    if (out_h, out_w) != (h, w):
      images = resize_static(images, out_h, out_w)
    sizes = jnp.broadcast_to(jnp.asarray([out_h, out_w], jnp.int32), (b, 2))
  params = draw_params(example_keys(aug_seed, numbers), sizes, r, image_size)
  out = apply_params(images, params, r, image_size, impl, sizes)
  return (out, params) if with_params else out


def augment_local_batch(batch: dict, per_device, aug_seed: int, r: RecipeParams, image_size: int):
  """A host batch {'image' uint8 [local_batch, H, W, 3], 'number', 'label', and 'size' [.., 2]
  when the images are host-resized canvases} -> {'image', 'label'} over the local devices, the
  images augmented there. The Grain loader and the streamed device path hand over the same host
  batches; one function keeps their device side the same. `per_device`: `DataSpec.per_device`.
  """
  numbers = per_device(batch['number'])
  if 'size' in batch:
    step = _mapped_train_batch(aug_seed, r, image_size, canvas=True)
    image = step(per_device(batch['image']), numbers, per_device(batch['size']))
  else:
    image = _mapped_train_batch(aug_seed, r, image_size, canvas=False)(
      per_device(batch['image']), numbers
    )
  return {'image': image, 'label': per_device(batch['label'])}


@functools.lru_cache(maxsize=16)
def _mapped_train_batch(aug_seed: int, r: RecipeParams, image_size: int, canvas: bool):
  """`train_batch` mapped over the local devices, one per (seed, recipe, size, kind of input:
  decoded images of one shape, or canvases), cached so that a second stream in the same process
  (a rerun, a test) reuses the compiled program."""
  if canvas:

    def augment_canvas(images, numbers, sizes):
      return train_batch(images, numbers, aug_seed, r, image_size, sizes=sizes)

    return jax.pmap(augment_canvas)

  def augment(images, numbers):
    return train_batch(images, numbers, aug_seed, r, image_size)

  return jax.pmap(augment)
