"""benchmarks.parity_inputs: the geometry read back from a coordinate probe is the transform
applied, so its comparison of the two sides' augmentation measures what it claims to."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks import parity_inputs as pi
from benchmarks import train_parity as tp
from zenfer_jax.data.recipes import RECIPES

PLAIN = dataclasses.replace(
  RECIPES['fer2013'], crop_scale=(1.0, 1.0), erasing_p=0.0, rotate_degrees=0.0
)


def _normalized(image: np.ndarray) -> np.ndarray:
  return tp.TorchRecipe.from_fields(dataclasses.asdict(PLAIN), pi.SIZE)._normalize(
    image.astype(np.float32) / 255.0
  )


def test_identity_crop_flip_and_rotation_are_read_back():
  from PIL import Image

  probe = pi.coordinate_probe()
  same = pi.fit_geometry(_normalized(probe))
  assert same['area'] == pytest.approx(1.0, abs=0.01) and same['flip'] == 0.0
  assert abs(same['angle']) < 0.1 and same['shift'] < 0.1

  # The central 36 x 36 window, enlarged to 48 and mirrored: area (36/48)^2, flipped, centred.
  window = Image.fromarray(probe[6:42, 6:42]).resize((pi.SIZE, pi.SIZE), Image.BICUBIC)
  crop = pi.fit_geometry(_normalized(np.asarray(window)[:, ::-1]))
  assert crop['area'] == pytest.approx((36 / 48) ** 2, rel=0.02)
  assert crop['flip'] == 1.0 and crop['aspect'] == pytest.approx(1.0, abs=0.02)
  assert crop['shift'] < 0.3

  turned = pi.fit_geometry(_normalized(tp.rotate(probe, 6.0)))
  assert abs(turned['angle']) == pytest.approx(6.0, abs=0.2) and turned['area'] == pytest.approx(
    1.0, abs=0.02
  )


def test_erased_pixels_are_left_out_and_counted():
  x = _normalized(pi.coordinate_probe())
  x[10:20, 5:25] = 0.0
  assert pi.erased_mask(x).sum() == 200
  assert pi.fit_geometry(x)['area'] == pytest.approx(1.0, abs=0.01)


def test_ks_statistic():
  rng = np.random.default_rng(0)
  a, b = rng.uniform(size=2000), rng.uniform(size=2000)
  assert pi.ks_statistic(a, b) < pi.ks_critical(2000, 2000)
  assert pi.ks_statistic(a, b + 0.1) > pi.ks_critical(2000, 2000)
  assert pi.ks_statistic([0.0, 1.0], [2.0, 3.0]) == 1.0
