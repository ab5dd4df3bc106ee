"""The train recipe's random draws, written once for both places augmentation can run.

The tf.data ops (`augment`) and the accelerator ops (`device_augment`) draw their random numbers
with their own generators (TensorFlow's stateless Philox, JAX's threefry), but turn those raw
draws into crop windows, AutoAugment choices and erasing boxes with the functions here, over
the same constants. So the two recipes can differ only in the raw uniform/normal numbers, never
in how a distribution is shaped; the tests check both the shared mapping on equal draws and the
resulting distributions on many draws.

The functions take `xp`, a namespace with the handful of array operations they need
(`where exp sqrt round floor minimum argmax any int32 float32`); `augment.TF_OPS` and
`device_augment.JAX_OPS` provide it. Nothing here imports TensorFlow or JAX.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PCA of ImageNet RGB pixels (AlexNet lighting noise), columns are eigenvectors.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
  (-0.5675, 0.7192, 0.4009),
  (-0.5808, -0.0045, -0.8140),
  (-0.5836, -0.6948, 0.4203),
)

# torchvision's RandomResizedCrop and RandomErasing try this many random windows.
ATTEMPTS = 10

# AutoAugment ops in their table order: (name, magnitudes for bins 0..9, signed).
_BINS = np.arange(10)
AUTOAUGMENT_OPS = (
  ('posterize', 8 - np.round(_BINS / (9 / 4)), False),
  ('rotate', np.linspace(0.0, 30.0, 10), True),
  ('solarize', np.linspace(255.0, 0.0, 10), False),
  ('autocontrast', np.zeros(10), False),
  ('equalize', np.zeros(10), False),
  ('color', np.linspace(0.0, 0.9, 10), True),
  ('contrast', np.linspace(0.0, 0.9, 10), True),
  ('invert', np.zeros(10), False),
  ('sharpness', np.linspace(0.0, 0.9, 10), True),
  ('shear_x', np.linspace(0.0, 0.3, 10), True),
)
OP_INDEX = {name: i for i, (name, _, _) in enumerate(AUTOAUGMENT_OPS)}

# The ImageNet policy of AutoAugment (Cubuk et al. 2019): 25 sub-policies of two
# (op, probability, magnitude bin) steps; one sub-policy is drawn per image.
IMAGENET_POLICY = (
  (('posterize', 0.4, 8), ('rotate', 0.6, 9)),
  (('solarize', 0.6, 5), ('autocontrast', 0.6, 0)),
  (('equalize', 0.8, 0), ('equalize', 0.6, 0)),
  (('posterize', 0.6, 7), ('posterize', 0.6, 6)),
  (('equalize', 0.4, 0), ('solarize', 0.2, 4)),
  (('equalize', 0.4, 0), ('rotate', 0.8, 8)),
  (('solarize', 0.6, 3), ('equalize', 0.6, 0)),
  (('posterize', 0.8, 5), ('equalize', 1.0, 0)),
  (('rotate', 0.2, 3), ('solarize', 0.6, 8)),
  (('equalize', 0.6, 0), ('posterize', 0.4, 6)),
  (('rotate', 0.8, 8), ('color', 0.4, 0)),
  (('rotate', 0.4, 9), ('equalize', 0.6, 0)),
  (('equalize', 0.0, 0), ('equalize', 0.8, 0)),
  (('invert', 0.6, 0), ('equalize', 1.0, 0)),
  (('color', 0.6, 4), ('contrast', 1.0, 8)),
  (('rotate', 0.8, 8), ('color', 1.0, 2)),
  (('color', 0.8, 8), ('solarize', 0.8, 7)),
  (('sharpness', 0.4, 7), ('invert', 0.6, 0)),
  (('shear_x', 0.6, 5), ('equalize', 1.0, 0)),
  (('color', 0.4, 0), ('equalize', 0.6, 0)),
  (('equalize', 0.4, 0), ('solarize', 0.2, 4)),
  (('solarize', 0.6, 5), ('autocontrast', 0.6, 0)),
  (('invert', 0.6, 0), ('equalize', 1.0, 0)),
  (('color', 0.6, 4), ('contrast', 1.0, 8)),
  (('equalize', 0.8, 0), ('equalize', 0.6, 0)),
)


def policy_tables(policy) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(op index, probability, magnitude, signed), each [sub-policies, 2]."""
  ops = np.array([[OP_INDEX[name] for name, _, _ in sub] for sub in policy], np.int32)
  probs = np.array([[p for _, p, _ in sub] for sub in policy], np.float32)
  mags = np.array(
    [[AUTOAUGMENT_OPS[OP_INDEX[name]][1][b] for name, _, b in sub] for sub in policy], np.float32
  )
  signed = np.array([[AUTOAUGMENT_OPS[OP_INDEX[name]][2] for name, _, _ in sub] for sub in policy])
  return ops, probs, mags, signed


def log_range(r: tuple[float, float]) -> tuple[float, float]:
  """Aspect ratios are drawn log-uniformly: the bounds of the uniform draw."""
  return math.log(r[0]), math.log(r[1])


def crop_window(xp, height, width, area, log_aspect, u_top, u_left, ratio: tuple[float, float]):
  """The (top, left, height, width) window torchvision's RandomResizedCrop would cut.

  area: [ATTEMPTS] target area fractions (uniform in the recipe's scale range); log_aspect:
  [ATTEMPTS] uniform in `log_range(ratio)`; u_top, u_left: uniform in [0, 1). The first attempt
  that fits is used; if none does, the centre crop with the aspect ratio clamped into `ratio`.
  """
  h, w = xp.int32(height), xp.int32(width)
  hf, wf = xp.float32(h), xp.float32(w)
  target = hf * wf * area
  aspect = xp.exp(log_aspect)
  cw = xp.int32(xp.round(xp.sqrt(target * aspect)))
  ch = xp.int32(xp.round(xp.sqrt(target / aspect)))
  ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
  first = xp.argmax(xp.int32(ok))
  any_ok = xp.any(ok)

  in_ratio = wf / hf
  fb_w = xp.where(in_ratio > ratio[1], xp.int32(xp.round(hf * ratio[1])), w)
  fb_h = xp.where(in_ratio < ratio[0], xp.int32(xp.round(wf / ratio[0])), h)
  crop_w = xp.where(any_ok, cw[first], fb_w)
  crop_h = xp.where(any_ok, ch[first], fb_h)
  top_rand = xp.int32(xp.floor(u_top * xp.float32(h - crop_h + 1)))
  left_rand = xp.int32(xp.floor(u_left * xp.float32(w - crop_w + 1)))
  top = xp.where(any_ok, xp.minimum(top_rand, h - crop_h), (h - crop_h) // 2)
  left = xp.where(any_ok, xp.minimum(left_rand, w - crop_w), (w - crop_w) // 2)
  return top, left, crop_h, crop_w


def erasing_box(xp, height, width, u_apply, area, log_aspect, u_top, u_left, p: float) -> Any:
  """torchvision RandomErasing's rectangle as [top, left, height, width]; all 0: none.

  With probability p (u_apply < p), the area is a uniform fraction of the image (`area`,
  [ATTEMPTS]) and the aspect log-uniform (`log_aspect`); the first attempt that fits strictly
  inside is used, and if none fits nothing is erased. Returns the four int32 values.
  """
  h, w = xp.int32(height), xp.int32(width)
  target = xp.float32(h * w) * area
  aspect = xp.exp(log_aspect)
  eh = xp.int32(xp.round(xp.sqrt(target * aspect)))
  ew = xp.int32(xp.round(xp.sqrt(target / aspect)))
  ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
  first = xp.argmax(xp.int32(ok))
  do = (u_apply < p) & xp.any(ok)
  eh, ew = eh[first], ew[first]
  top = xp.int32(xp.floor(u_top * xp.float32(h - eh + 1)))
  left = xp.int32(xp.floor(u_left * xp.float32(w - ew + 1)))
  zero = xp.int32(0)
  return (
    xp.where(do, top, zero),
    xp.where(do, left, zero),
    xp.where(do, eh, zero),
    xp.where(do, ew, zero),
  )


def autoaugment_choice(xp, tables, k, u_apply, u_sign):
  """Sub-policy `k`'s two steps: (op indices [2], signed magnitudes [2], applied [2]).

  `tables` are `policy_tables` as the backend's arrays; k is uniform over the sub-policies,
  u_apply and u_sign uniform [2]: each step runs with its probability, and a signed op's
  magnitude is negated with probability 1/2.
  """
  ops, probs, mags, signed = tables
  apply = u_apply < probs[k]
  negate = (u_sign < 0.5) & signed[k]
  return ops[k], xp.where(negate, -mags[k], mags[k]), apply
