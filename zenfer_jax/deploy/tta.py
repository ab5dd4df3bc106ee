"""Test-time augmentation: classify each image by the mean logits of several views of it.

The train recipes mirror faces and crop 64-100% of their area before resizing the crop back to
the input size, so a model has learnt to read mirrored and zoomed-in faces as well as the whole
frame. Averaging its logits over such views at test time removes part of the noise one view
carries; on FER2013 the shipped model gains about a point from the mirror alone and about two
from ten crops (docs/training.md has the figures).

Views are taken on the device from the evaluation batch, after normalisation: cropping and
bicubic resizing are linear in the pixel values, so the order does not change what the model
sees (only the uint8 rounding of the host path is missing).

Modes:
  none      the image itself
  flip      the image and its left-right mirror (2 views)
  ten_crop  the image and its mirror, plus the four corner crops and the centre crop of side
            round(crop_fraction * size), each resized (bicubic) back to size x size, and their
            mirrors (12 views: the classic ten crops and the whole image)
"""

from __future__ import annotations

from collections.abc import Callable

# JAX is imported where views are made, so that the commands' --help and argument errors,
# which read MODES and the default here, stay instant.

MODES = ('none', 'flip', 'ten_crop')
DEFAULT_CROP_FRACTION = 0.875


def crop_side(size: int, crop_fraction: float) -> int:
  """The crops' side in pixels; an error (naming both numbers) when it leaves nothing to crop."""
  if not 0.0 < crop_fraction <= 1.0:
    raise ValueError(f'crop_fraction must be in (0, 1], got {crop_fraction}')
  side = round(crop_fraction * size)
  if side < 1:
    raise ValueError(f'crop_fraction {crop_fraction} of a {size}-pixel input is under one pixel')
  return side


def crop_offsets(size: int, side: int) -> tuple[tuple[int, int], ...]:
  """(top, left) of the four corner crops and the centre crop."""
  o = size - side
  return ((0, 0), (0, o), (o, 0), (o, o), (o // 2, o // 2))


def views(images, mode: str, crop_fraction: float = DEFAULT_CROP_FRACTION) -> list:
  """The views of a batch of NHWC images (square), each of the batch's shape."""
  import jax

  check(mode, crop_fraction)
  out = [images]
  if mode == 'none':
    return out
  out.append(images[:, :, ::-1])
  if mode == 'flip':
    return out
  n, h, w, c = images.shape
  if h != w:
    raise ValueError(f'ten_crop needs square images, got {h}x{w}')
  side = crop_side(h, crop_fraction)
  for top, left in crop_offsets(h, side):
    crop = images[:, top : top + side, left : left + side]
    if side != h:
      crop = jax.image.resize(crop, (n, h, w, c), 'bicubic')
    out += [crop, crop[:, :, ::-1]]
  return out


def check(mode: str, crop_fraction: float) -> None:
  """ValueError for an unknown mode or a crop fraction outside (0, 1]."""
  if mode not in MODES:
    raise ValueError(f'unknown test-time augmentation {mode!r}; expected one of {MODES}')
  crop_side(1_000, crop_fraction)


def wrap(apply_fn: Callable, mode: str, crop_fraction: float = DEFAULT_CROP_FRACTION) -> Callable:
  """`apply_fn(variables, x, train=False)` returning the mean logits over `views(x, ...)`."""
  check(mode, crop_fraction)  # Bad arguments fail here, not inside a trace.
  if mode == 'none':
    return apply_fn

  def tta_apply(variables, x, train=False):
    logits = [apply_fn(variables, v, train=train) for v in views(x, mode, crop_fraction)]
    return sum(logits) / len(logits)

  return tta_apply
