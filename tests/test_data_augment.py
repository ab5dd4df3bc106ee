"""Every augmentation op, eagerly and inside tf.data: shapes, dtypes, values, frequencies, seeds."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from zenfer_jax.data import augment as A

RNG = np.random.default_rng(0)
IMG = RNG.integers(40, 210, (24, 32, 3), dtype=np.uint8)  # Not spanning 0..255 on purpose.


def seed(i: int) -> tf.Tensor:
  return tf.constant([7, i], tf.int64)


def in_tf_data(fn, image: np.ndarray, n: int) -> np.ndarray:
  """fn(image, seed) mapped over n seeds inside a tf.data pipeline (graph mode, parallel)."""
  ds = tf.data.Dataset.range(n).map(
    lambda i: fn(tf.constant(image), tf.stack([tf.constant(7, tf.int64), i])), num_parallel_calls=2
  )
  return np.stack(list(ds.as_numpy_iterator()))


def eager(fn, image: np.ndarray, n: int) -> np.ndarray:
  return np.stack([fn(tf.constant(image), seed(i)).numpy() for i in range(n)])


OPS = {
  'resize': lambda im, s: A.resize(im, (16, 20)),
  'resize_shorter': lambda im, s: A.resize_shorter(im, 18),
  'center_crop': lambda im, s: A.center_crop(im, 20),
  'random_resized_crop': lambda im, s: A.random_resized_crop(im, 16, s, scale=(0.8, 1.0)),
  'random_flip': A.random_flip,
  'random_shift': lambda im, s: A.random_shift(im, s, 3),
  'random_rotate': lambda im, s: A.random_rotate(im, s, 10.0),
  'autoaugment_imagenet': A.autoaugment_imagenet,
  'pca_lighting': lambda im, s: A.pca_lighting(A.to_unit(im), s),
  'normalize': lambda im, s: A.normalize(A.to_unit(im)),
  'random_erasing': lambda im, s: A.random_erasing(A.to_unit(im), s, p=0.5, scale=(0.02, 0.1)),
}
SHAPES = {
  'resize': (16, 20, 3),
  'resize_shorter': (18, 24, 3),
  'center_crop': (20, 20, 3),
  'random_resized_crop': (16, 16, 3),
}
FLOAT_OPS = {'pca_lighting', 'normalize', 'random_erasing'}


@pytest.mark.parametrize('name', sorted(OPS))
def test_op_eager_equals_tf_data_and_is_seeded(name):
  fn, n = OPS[name], 12
  a, b = eager(fn, IMG, n), in_tf_data(fn, IMG, n)
  np.testing.assert_array_equal(a, b)  # Stateless: the same seed gives the same image anywhere.
  assert a.shape[1:] == SHAPES.get(name, IMG.shape)
  assert a.dtype == (np.float32 if name in FLOAT_OPS else np.uint8)
  np.testing.assert_array_equal(fn(tf.constant(IMG), seed(3)).numpy(), a[3])
  if name in ('random_resized_crop', 'random_shift', 'pca_lighting', 'autoaugment_imagenet'):
    assert len({x.tobytes() for x in a}) > n // 4  # Different seeds, different draws.


def test_resize_constant_image_stays_constant_and_shorter_side_is_exact():
  flat = np.full((30, 50, 3), 77, np.uint8)
  out = A.resize_shorter(flat, 43).numpy()
  assert out.shape == (43, 71, 3)  # 50 * 43 / 30 = 71.67 -> 71, as torchvision.
  assert (out == 77).all()
  assert A.resize_shorter(np.zeros((80, 40, 3), np.uint8), 20).shape == (40, 20, 3)
  big = A.resize(IMG, (48, 64)).numpy()
  assert abs(big.astype(float).mean() - IMG.mean()) < 2.0


def test_center_crop_is_the_middle():
  np.testing.assert_array_equal(A.center_crop(IMG, 20).numpy(), IMG[2:22, 6:26])


def test_random_resized_crop_window_statistics():
  n = 400
  wins = in_tf_data(
    lambda im, s: tf.stack(A.random_resized_crop_window(90, 120, s, (0.8, 1.0))), IMG, n
  )
  top, left, h, w = wins.T
  assert (
    (top >= 0).all() and (left >= 0).all() and (top + h <= 90).all() and (left + w <= 120).all()
  )
  frac = h * w / (90 * 120)
  assert frac.min() > 0.78 and frac.max() <= 1.0
  # Draws that had to fit inside the image skew the mean slightly below the uniform 0.9.
  assert 0.85 < frac.mean() < 0.91
  ratio = w / h
  assert ratio.min() > 0.75 - 0.03 and ratio.max() < 4 / 3 + 0.03
  assert len(set(map(tuple, wins))) > n // 2


def test_random_resized_crop_falls_back_to_clamped_centre_crop():
  top, left, h, w = (int(v) for v in A.random_resized_crop_window(10, 200, seed(0), (0.9, 1.0)))
  assert (h, w) == (10, 13) and top == 0 and left == (200 - 13) // 2


def test_random_flip_frequency_and_content():
  outs = in_tf_data(A.random_flip, IMG, 400)
  flipped = np.array([np.array_equal(o, IMG[:, ::-1]) for o in outs])
  same = np.array([np.array_equal(o, IMG) for o in outs])
  assert (flipped | same).all()
  assert abs(flipped.mean() - 0.5) < 0.08


def test_random_shift_moves_content_within_bounds():
  dot = np.zeros((16, 16, 3), np.uint8)
  dot[8, 8] = 255
  for i in range(30):
    out = A.random_shift(dot, seed(i), 2).numpy()
    ys, xs = np.nonzero(out[..., 0])
    assert len(ys) == 1 and abs(ys[0] - 8) <= 2 and abs(xs[0] - 8) <= 2


# ---- AutoAugment ops against PIL, the reference's implementation ----


def pil(img):
  return Image.fromarray(img)


@pytest.mark.parametrize('bits', [4, 5, 6, 8])
def test_posterize_matches_pil(bits):
  np.testing.assert_array_equal(
    A.posterize(IMG, bits).numpy(), np.asarray(ImageOps.posterize(pil(IMG), bits))
  )


@pytest.mark.parametrize('threshold', [0, 85, 170, 255])
def test_solarize_and_invert_match_pil(threshold):
  np.testing.assert_array_equal(
    A.solarize(IMG, float(threshold)).numpy(), np.asarray(ImageOps.solarize(pil(IMG), threshold))
  )
  np.testing.assert_array_equal(A.invert(IMG).numpy(), 255 - IMG)


def test_autocontrast_and_equalize_match_pil():
  ac = A.autocontrast(IMG).numpy()
  assert np.abs(ac.astype(int) - np.asarray(ImageOps.autocontrast(pil(IMG)))).max() <= 1
  assert ac.min() == 0 and ac.max() == 255
  np.testing.assert_array_equal(A.equalize(IMG).numpy(), np.asarray(ImageOps.equalize(pil(IMG))))
  flat = np.full((8, 8, 3), 9, np.uint8)
  np.testing.assert_array_equal(A.equalize(flat).numpy(), flat)
  np.testing.assert_array_equal(A.autocontrast(flat).numpy(), flat)


@pytest.mark.parametrize('factor', [0.1, 1.0, 1.9])
@pytest.mark.parametrize(
  'op,enhancer',
  [
    (A.color, ImageEnhance.Color),
    (A.contrast, ImageEnhance.Contrast),
    (A.sharpness, ImageEnhance.Sharpness),
  ],
)
def test_enhancers_close_to_pil(op, enhancer, factor):
  ours = op(IMG, factor).numpy().astype(int)
  ref = np.asarray(enhancer(pil(IMG)).enhance(factor)).astype(int)
  assert np.abs(ours - ref).max() <= 2
  if factor == 1.0:
    np.testing.assert_array_equal(ours, IMG)


def test_rotate_and_shear_geometry():
  sq = RNG.integers(1, 255, (9, 9, 3), dtype=np.uint8)
  np.testing.assert_array_equal(A.rotate(sq, 90.0).numpy(), np.rot90(sq, 1))  # Counter-clockwise.
  np.testing.assert_array_equal(A.rotate(sq, -90.0).numpy(), np.rot90(sq, -1))
  np.testing.assert_array_equal(A.rotate(sq, 0.0).numpy(), sq)
  r30 = A.rotate(sq, 30.0).numpy()
  assert (r30[0, 0] == 0).all() and (r30[4, 4] == sq[4, 4]).all()  # Black corners, fixed centre.
  sheared = A.shear_x(sq, 1.0).numpy()
  for y in range(9):  # Row y samples the input shifted by y pixels.
    np.testing.assert_array_equal(sheared[y, : 9 - y], sq[y, y:])
    assert (sheared[y, 9 - y :] == 0).all()


def test_random_rotate_is_bilinear_within_its_range_and_fills_from_the_edges():
  """FER2013's rotation: a smooth ramp stays a ramp (bilinear), no black corners, |angle| <= max."""
  ramp = np.repeat(np.repeat(np.arange(40, 200, 4, dtype=np.uint8)[None, :, None], 40, 0), 3, 2)
  outs = eager(lambda im, s: A.random_rotate(im, s, 10.0), ramp, 40)
  assert outs.dtype == np.uint8 and outs.shape == (40, *ramp.shape)
  assert outs.min() >= ramp.min() and outs.max() <= ramp.max()  # Edge fill, no black.
  # Every output equals a fixed rotation of the input by an angle in [-10, 10] degrees: find it.
  angles = np.linspace(-10, 10, 201)
  exact = [A.rotate(ramp, a, 'BILINEAR', 'NEAREST').numpy().astype(int) for a in angles]
  found = [angles[int(np.argmin([np.abs(o.astype(int) - e).mean() for e in exact]))] for o in outs]
  errors = [
    np.abs(o.astype(int) - exact[int(np.argmin(np.abs(angles - a)))]).max()
    for o, a in zip(outs, found)
  ]
  assert max(errors) <= 1, errors
  assert min(found) < -5 and max(found) > 5  # Both directions, spread over the range.
  assert len(set(np.round(found, 1))) > 30
  # Bilinear: the middle row of a horizontal ramp rotated by a small angle stays monotone.
  mid = A.rotate(ramp, 7.0, 'BILINEAR', 'NEAREST').numpy()[20, 5:35, 0].astype(int)
  assert (np.diff(mid) >= 0).all()


def _policy_unchanged_probability(policy):
  """P(image unchanged) when the only identity step is colour at bin 0 (factor 1)."""
  total = 0.0
  for sub in policy:
    p = 1.0
    for name, prob, mag in sub:
      if not (name == 'color' and mag == 0):
        p *= 1 - prob
    total += p
  return total / len(policy)


def test_autoaugment_imagenet_frequency_in_tf_data():
  n = 600
  outs = in_tf_data(A.autoaugment_imagenet, IMG, n)
  assert outs.dtype == np.uint8 and outs.shape == (n, *IMG.shape)
  unchanged = np.mean([np.array_equal(o, IMG) for o in outs])
  expected = _policy_unchanged_probability(A.IMAGENET_POLICY)
  assert abs(unchanged - expected) < 0.06, (unchanged, expected)
  assert len({o.tobytes() for o in outs}) > 40


def test_autoaugment_sub_policy_and_step_probabilities():
  policy = ((('invert', 0.3, 0), ('equalize', 0.0, 0)), (('posterize', 1.0, 8), ('invert', 0.0, 0)))
  n = 800
  outs = in_tf_data(lambda im, s: A.autoaugment(im, s, policy), IMG, n)
  inverted = np.mean([np.array_equal(o, 255 - IMG) for o in outs])
  posterized = np.mean([np.array_equal(o, A.posterize(IMG, 4).numpy()) for o in outs])
  assert abs(posterized - 0.5) < 0.06  # Sub-policies drawn uniformly.
  assert abs(inverted - 0.15) < 0.05  # 0.5 x 0.3.


def test_autoaugment_signed_magnitudes_use_both_signs():
  policy = ((('rotate', 1.0, 9), ('rotate', 0.0, 0)),)
  sq = RNG.integers(1, 255, (9, 9, 3), dtype=np.uint8)
  outs = [A.autoaugment(sq, seed(i), policy).numpy() for i in range(40)]
  plus, minus = A.rotate(sq, 30.0).numpy(), A.rotate(sq, -30.0).numpy()
  n_plus = sum(np.array_equal(o, plus) for o in outs)
  n_minus = sum(np.array_equal(o, minus) for o in outs)
  assert n_plus + n_minus == 40 and 8 <= n_plus <= 32


# ---- float ops ----


def test_to_unit_and_normalize_values():
  x = A.to_unit(np.array([[[0, 255, 51]]], np.uint8)).numpy()
  np.testing.assert_allclose(x, [[[0.0, 1.0, 0.2]]], atol=1e-7)
  y = A.normalize(tf.constant(x)).numpy()
  np.testing.assert_allclose(
    y, [[[-0.485 / 0.229, (1 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]]], rtol=1e-6
  )


def test_pca_lighting_offset_is_constant_per_channel_with_analytic_spread():
  x = A.to_unit(IMG)
  offsets = in_tf_data(lambda im, s: A.pca_lighting(A.to_unit(im), s) - A.to_unit(im), IMG, 800)
  # Every pixel of an image moves by the same RGB offset.
  np.testing.assert_allclose(offsets, offsets[:, :1, :1, :] + 0 * offsets, atol=1e-6)
  per_image = offsets[:, 0, 0, :]
  vec, val = np.array(A.IMAGENET_EIGVEC), np.array(A.IMAGENET_EIGVAL)
  want_std = 0.1 * np.sqrt(((vec * val) ** 2).sum(1))
  np.testing.assert_allclose(per_image.std(0), want_std, rtol=0.12)
  assert np.all(np.abs(per_image.mean(0)) < 0.25 * want_std)
  np.testing.assert_array_equal(A.pca_lighting(x, seed(0), alphastd=0.0).numpy(), x.numpy())


def _erased_boxes(outs):
  boxes = []
  for o in outs:
    zero = np.all(o == 0, axis=-1)
    if not zero.any():
      boxes.append(None)
      continue
    ys, xs = np.nonzero(zero)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert zero.sum() == h * w  # One solid rectangle.
    boxes.append((h, w))
  return boxes


def test_random_erasing_frequency_area_and_ratio():
  ones = np.ones((40, 50, 3), np.float32)
  outs = in_tf_data(lambda im, s: A.random_erasing(im, s, p=0.5, scale=(0.02, 0.1)), ones, 500)
  boxes = _erased_boxes(outs)
  applied = [b for b in boxes if b is not None]
  assert abs(len(applied) / len(boxes) - 0.5) < 0.07
  area = np.array([h * w for h, w in applied]) / (40 * 50)
  assert area.min() > 0.02 * 0.7 and area.max() < 0.1 * 1.3
  assert abs(area.mean() - 0.06) < 0.01
  ratio = np.array([h / w for h, w in applied])
  assert ratio.min() > 0.3 * 0.6 and ratio.max() < 3.3 * 1.6
  assert all(set(np.unique(o)) <= {0.0, 1.0} for o in outs)


def test_random_erasing_affectnet_scale():
  ones = np.ones((32, 32, 3), np.float32)
  outs = [A.random_erasing(ones, seed(i), p=1.0, scale=(0.4, 0.4)).numpy() for i in range(60)]
  boxes = [b for b in _erased_boxes(outs) if b is not None]
  assert len(boxes) > 50  # A 0.4 area rectangle fits within 10 attempts nearly always.
  area = np.array([h * w for h, w in boxes]) / (32 * 32)
  assert np.all(np.abs(area - 0.4) < 0.08)


def test_batched_erase_matches_single_images():
  imgs = np.ones((3, 10, 12, 3), np.float32)
  boxes = np.array([[1, 2, 3, 4], [0, 0, 0, 0], [5, 6, 5, 6]], np.int32)
  batched = A.erase(imgs, boxes).numpy()
  for img, box, out in zip(imgs, boxes, batched):
    np.testing.assert_array_equal(A.erase(img, box).numpy(), out)
    top, left, h, w = box
    assert (out == 0).sum() == 3 * h * w and (out[top : top + h, left : left + w] == 0).all()
