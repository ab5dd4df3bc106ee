"""The accelerator recipe against the tf.data one: every op equal on equal parameters (to the
tolerance stated per op), the draws equally distributed, the chain keyed by example number."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from zenfer_jax.data import augment as A
from zenfer_jax.data import augment_spec as S
from zenfer_jax.data import device_augment as D
from zenfer_jax.data import pipeline

RNG = np.random.default_rng(0)
RAFDB = D.RecipeParams.of(pipeline.RECIPES['rafdb'])
DIGITS = D.RecipeParams.of(pipeline.RECIPES['digits'])


def textured(h: int, w: int, seed: int) -> np.ndarray:
  """Smooth structure plus noise: resizes see both edges and flat areas."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  base = 128 + 70 * np.sin(yy / 3.0 + seed)[..., None] * np.cos(xx / 4.0)[..., None]
  return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


IMAGES = [textured(20, 28, 1), RNG.integers(0, 256, (20, 28, 3), dtype=np.uint8)]


def tf_seed(i: int) -> tf.Tensor:
  return tf.constant([7, i], tf.int64)


def assert_within_one_grey_level(ours, ref, max_fraction: float):
  """Resizes: at most 1 grey level apart (float summation order, then rounding)."""
  diff = np.abs(np.asarray(ours).astype(int) - np.asarray(ref).astype(int))
  assert diff.max() <= 1, diff.max()
  assert (diff > 0).mean() <= max_fraction, (diff > 0).mean()


# ---- resizes: within 1 grey level on at most 0.5% of pixels -------------------------------


def test_resize_to_shorter_side_and_to_a_size_match_tf():
  h, w = D.shorter_side_shape(20, 28, 43)
  assert (h, w) == A.resize_shorter(IMAGES[0], 43).shape[:2] == (43, 60)

  @jax.jit
  def resizes(batch):
    return (
      D.resize_static(batch, h, w),  # ResizeBicubic (table-quantised)
      D.resize_static(batch, 13, 17),  # ScaleAndTranslate (antialiased)
      D.resize_static(batch, 25, 17),  # one side shrinks: antialiased on both
    )

  enlarged, shrunk, mixed = resizes(jnp.asarray(np.stack(IMAGES)))
  for i, im in enumerate(IMAGES):
    assert_within_one_grey_level(enlarged[i], A.resize_shorter(im, 43), 0.005)
    assert_within_one_grey_level(shrunk[i], A.resize(im, (13, 17)), 0.005)
    assert_within_one_grey_level(mixed[i], A.resize(im, (25, 17)), 0.005)


def test_crop_windows_match_tf_crop_then_resize():
  canvas = np.stack([A.resize_shorter(im, 43).numpy() for im in IMAGES])  # [2, 43, 60, 3]
  windows = np.array(
    [[0, 0, 43, 60], [3, 5, 30, 40], [10, 20, 12, 14], [2, 1, 40, 15], [0, 30, 20, 30]], np.int32
  )
  images = np.repeat(canvas, len(windows), 0)
  all_windows = np.tile(windows, (len(IMAGES), 1))
  out = jax.jit(D.resize_windows, static_argnums=2)(images, all_windows, 24)
  for k, got in enumerate(np.asarray(out)):
    top, left, h, w = all_windows[k]
    ref = A.resize(images[k, top : top + h, left : left + w], (24, 24))
    assert_within_one_grey_level(got, ref, 0.005)


# ---- exact ops -----------------------------------------------------------------------------


def test_flip_and_shift_match_tf():
  batch = jnp.asarray(np.stack(IMAGES))
  np.testing.assert_array_equal(
    jax.jit(D.flip)(batch, jnp.array([True, False])), [IMAGES[0][:, ::-1], IMAGES[1]]
  )
  offsets = np.array([[0, 6], [3, 2]], np.int32)
  got = np.asarray(jax.jit(D.shift, static_argnums=2)(batch, offsets, 3))
  for im, (oy, ox), g in zip(IMAGES, offsets, got):
    padded = np.pad(im, [(3, 3), (3, 3), (0, 0)])
    np.testing.assert_array_equal(g, padded[oy : oy + 20, ox : ox + 28])


BLENDS = D.BLENDS


IMPLS = ('batched', 'per_example')  # Accelerators' default, the CPU's default.


@pytest.mark.parametrize('impl', IMPLS)
def test_every_autoaugment_op_equals_tf_at_every_magnitude(impl):
  """All ten ops, both signs of every magnitude bin, and op -1 (none): exact, except that the
  blends (color, contrast, sharpness) may round a few pixels the other way (at most 1 grey level
  on at most 1% of pixels: compilers fuse their multiply-adds differently)."""
  cases = [(-1, 0.7)]
  for name, mags, signed in S.AUTOAUGMENT_OPS:
    for m in np.unique(np.concatenate([mags, -mags]) if signed else mags):
      cases.append((S.OP_INDEX[name], float(m)))
  ops = np.array([c[0] for c in cases for _ in IMAGES], np.int32)
  mags = np.array([c[1] for c in cases for _ in IMAGES], np.float32)
  batch = np.stack([im for _ in cases for im in IMAGES])
  got = np.asarray(jax.jit(D.autoaugment_op, static_argnums=3)(batch, ops, mags, impl))
  for k, g in enumerate(got):
    if ops[k] < 0:
      name, ref = 'none', batch[k]
    else:
      name = S.AUTOAUGMENT_OPS[ops[k]][0]
      ref = np.asarray(A.apply_autoaugment_op(tf.constant(batch[k]), ops[k], tf.constant(mags[k])))
    if name in BLENDS:
      assert_within_one_grey_level(g, ref, 0.01)
    else:
      np.testing.assert_array_equal(g, ref, err_msg=f'{name} magnitude {mags[k]}')


@pytest.mark.parametrize('impl', IMPLS)
def test_sub_policies_drawn_by_tf_match_tf(impl):
  n, im = 40, IMAGES[0]
  choices = [A.autoaugment_choice(tf_seed(i)) for i in range(n)]
  ops, mags, applied = (np.stack([c[j].numpy() for c in choices]) for j in range(3))
  got = jax.jit(D.autoaugment, static_argnums=4)(
    np.repeat(im[None], n, 0), ops, mags, applied, impl
  )
  got = np.asarray(got)
  for i, g in enumerate(got):
    ref = np.asarray(A.autoaugment_imagenet(im, tf_seed(i)))
    if set(S.AUTOAUGMENT_OPS[o][0] for o in ops[i][applied[i]]) & set(BLENDS):
      assert_within_one_grey_level(g, ref, 0.01)
    else:
      np.testing.assert_array_equal(g, ref)
  assert len({g.tobytes() for g in got}) > 10


def test_lighting_normalisation_and_erasing_match_tf():
  """Within 1e-6 (float32 division order)."""
  batch = np.stack(IMAGES)
  lighting = np.array([[0.01, -0.02, 0.03], [0.0, 0.0, 0.0]], np.float32)
  boxes = np.array([[2, 3, 5, 7], [0, 0, 0, 0]], np.int32)
  ref = pipeline.finish_train_batch(batch, lighting, boxes).numpy()
  got = np.asarray(jax.jit(D.finish)(batch, lighting, boxes))
  np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
  assert (got[0, 2:7, 3:10] == 0).all() and (got[1] != 0).all()
  alpha = np.array([[0.1, -0.2, 0.05]], np.float32)
  np.testing.assert_allclose(
    jax.jit(D.lighting_offsets)(alpha)[0],
    np.array(S.IMAGENET_EIGVEC) @ (alpha[0] * np.array(S.IMAGENET_EIGVAL)),
    atol=1e-7,
  )


# ---- draws: the shared mapping, then the distributions -------------------------------------


def test_shared_mapping_gives_tf_parameters_from_tf_draws():
  ratio = (3 / 4, 4 / 3)
  tables = tuple(jnp.asarray(t) for t in S.policy_tables(S.IMAGENET_POLICY))
  crop = jax.jit(lambda h, w, *d: S.crop_window(D.JAX_OPS, h, w, *d, ratio))
  erase = jax.jit(lambda *d: S.erasing_box(D.JAX_OPS, 32, 40, *d, 0.5))
  choice = jax.jit(lambda *d: S.autoaugment_choice(D.JAX_OPS, tables, *d))
  for i in range(30):
    for h, w, scale in ((299, 360, (0.8, 1.0)), (10, 200, (0.9, 1.0)), (50, 50, (0.08, 1.0))):
      draws = [d.numpy() for d in A.crop_window_draws(tf_seed(i), scale, ratio, S.ATTEMPTS)]
      ref = A.random_resized_crop_window(h, w, tf_seed(i), scale, ratio)
      assert [int(v) for v in crop(h, w, *draws)] == [int(v) for v in ref]
    draws = [d.numpy() for d in A.erasing_draws(tf_seed(i), (0.02, 0.33), (0.3, 3.3), S.ATTEMPTS)]
    np.testing.assert_array_equal(np.array(erase(*draws)), A.erasing_box(32, 40, tf_seed(i)))
    # The sub-policy draw as autoaugment_choice makes it: pick, apply and sign seeds.
    s_pick, s_apply, s_sign = A._split(tf_seed(i), 3)
    k = tf.random.stateless_uniform([], s_pick, 0, len(S.IMAGENET_POLICY), dtype=tf.int32)
    ours = choice(int(k), A._uniform(s_apply, [2]).numpy(), A._uniform(s_sign, [2]).numpy())
    for a, b in zip(ours, A.autoaugment_choice(tf_seed(i))):
      np.testing.assert_array_equal(np.asarray(a), b.numpy())


N_DRAWS = 3000
CANVAS = (299, 360)


def _tf_draws(n: int, crop_scale=None) -> dict:
  r = pipeline.RECIPES['rafdb']
  crop_scale = crop_scale or r.crop_scale
  strip = tf.constant([[[0, 0, 0], [255, 255, 255]]], tf.uint8)

  def one(i):
    seed = tf.stack([tf.constant(7, tf.int64), i])
    return {
      'window': tf.stack(A.random_resized_crop_window(*CANVAS, seed, crop_scale)),
      'flip': A.random_flip(strip, seed)[0, 0, 0] == 255,
      'aa': tf.stack([tf.cast(x, tf.float32) for x in A.autoaugment_choice(seed)]),
      'lighting': A.lighting_offset(seed, r.lighting_std),
      'erase': A.erasing_box(224, 224, seed, r.erasing_p, r.erasing_scale, r.erasing_ratio),
    }

  ds = tf.data.Dataset.range(n).map(one, num_parallel_calls=2).batch(n)
  out = next(iter(ds.as_numpy_iterator()))
  aa = out.pop('aa')
  out.update(aa_ops=aa[:, 0].astype(int), aa_magnitudes=aa[:, 1], aa_applied=aa[:, 2] > 0)
  return out


def _jax_draws(n: int) -> dict:
  keys = D.example_keys(11, jnp.arange(n))
  sizes = jnp.broadcast_to(jnp.asarray(CANVAS, jnp.int32), (n, 2))
  draw = jax.jit(D.draw_params, static_argnums=(2, 3))
  return jax.tree_util.tree_map(np.asarray, draw(keys, sizes, RAFDB, 224))


def _same_continuous(a, b, what):
  p = stats.ks_2samp(a, b).pvalue
  assert p > 1e-3, f'{what}: two-sample KS p={p:.2g}'


def _same_discrete(a, b, what):
  values = np.union1d(np.unique(a), np.unique(b))
  table = np.array([[np.sum(x == v) for v in values] for x in (a, b)])
  p = stats.chi2_contingency(table).pvalue
  assert p > 1e-3, f'{what}: chi-square p={p:.2g}'


def test_device_draws_have_the_tf_distributions():
  """Both sides' seeds are fixed, so the verdict is deterministic."""
  t, j = _tf_draws(N_DRAWS), _jax_draws(N_DRAWS)
  for name, d in (('tf', t), ('jax', j)):  # Every window lies inside the canvas.
    top, left, h, w = d['window'].T
    assert (top >= 0).all() and (left >= 0).all(), name
    assert (top + h <= CANVAS[0]).all() and (left + w <= CANVAS[1]).all(), name
  for what, f in (
    ('crop area', lambda w: w[:, 2] * w[:, 3] / (CANVAS[0] * CANVAS[1])),
    ('crop aspect', lambda w: w[:, 3] / w[:, 2]),
    ('crop top', lambda w: (w[:, 0] + 0.5) / (CANVAS[0] - w[:, 2] + 1)),
    ('crop left', lambda w: (w[:, 1] + 0.5) / (CANVAS[1] - w[:, 3] + 1)),
  ):
    _same_continuous(f(t['window']), f(j['window']), what)
  _same_discrete(t['flip'], j['flip'], 'flip')
  for c in range(3):
    _same_continuous(t['lighting'][:, c], j['lighting'][:, c], f'lighting channel {c}')
  for step in range(2):
    _same_discrete(t['aa_applied'][:, step], j['aa_applied'][:, step], f'aa step {step} applied')
    t_op, j_op = (
      d['aa_ops'][:, step] * 1000 + np.round(d['aa_magnitudes'][:, step], 3) for d in (t, j)
    )
    _same_discrete(t_op, j_op, f'aa step {step} op and signed magnitude')
  t_on, j_on = t['erase'][:, 2] > 0, j['erase'][:, 2] > 0
  _same_discrete(t_on, j_on, 'erasing applied')
  for what, f in (
    ('erase area', lambda b: b[:, 2] * b[:, 3] / 224**2),
    ('erase aspect', lambda b: b[:, 2] / b[:, 3]),
    ('erase top', lambda b: (b[:, 0] + 0.5) / (224 - b[:, 2] + 1)),
  ):
    _same_continuous(f(t['erase'][t_on]), f(j['erase'][j_on]), what)
  # And the test can tell distributions apart: windows of scale (0.5, 1.0) fail it.
  wide = _tf_draws(N_DRAWS, crop_scale=(0.5, 1.0))['window']
  area = lambda w: w[:, 2] * w[:, 3]  # noqa: E731
  assert stats.ks_2samp(area(wide), area(j['window'])).pvalue < 1e-6


# ---- the whole chain -----------------------------------------------------------------------


@functools.lru_cache
def _chain(recipe: D.RecipeParams, size: int, impl: str = 'auto'):
  return jax.jit(
    functools.partial(
      D.train_batch, aug_seed=5, r=recipe, image_size=size, with_params=True, impl=impl
    )
  )


def test_chain_is_keyed_by_example_number():
  batch = np.stack([IMAGES[0]] * 6)
  f = _chain(RAFDB, 16)
  a = np.asarray(f(batch, np.arange(100, 106))[0])
  assert a.shape == (6, 16, 16, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, f(batch, np.arange(100, 106))[0])
  b = np.asarray(f(batch, np.array([100, 101, 102, 103, 104, 9]))[0])
  np.testing.assert_array_equal(a[:5], b[:5])  # Each example's draws depend on its number only.
  assert not np.array_equal(a[5], b[5])
  assert len({x.tobytes() for x in a}) == 6  # Same image, six numbers: six augmentations.


@pytest.mark.parametrize('impl', IMPLS)
def test_chain_equals_tf_ops_on_the_device_parameters(impl):
  """Resize to the shorter side, crop, flip, AutoAugment, lighting, erasing: the tf.data ops on
  the device's parameters give the device's images within one grey level (1/255/std)."""
  n, size, im = 12, 16, IMAGES[0]
  out, p = _chain(RAFDB, size, impl)(np.stack([im] * n), np.arange(100, 100 + n))
  out, p = np.asarray(out), jax.tree_util.tree_map(np.asarray, p)
  source = A.resize_shorter(im, RAFDB.shorter_side(size)).numpy()
  for i in range(n):
    top, left, ch, cw = p['window'][i]
    x = A.resize(source[top : top + ch, left : left + cw], (size, size)).numpy()
    x = x[:, ::-1] if p['flip'][i] else x
    for s in range(2):
      if p['aa_applied'][i, s]:
        x = A.apply_autoaugment_op(tf.constant(x), p['aa_ops'][i, s], p['aa_magnitudes'][i, s])
    ref = pipeline.finish_train_batch(
      np.asarray(x)[None], p['lighting'][i : i + 1], p['erase'][i : i + 1]
    )
    np.testing.assert_allclose(out[i], ref.numpy()[0], atol=1.0 / 255 / 0.224 + 1e-5)


def test_chain_without_augmentation_is_resize_then_shift():
  digits = RNG.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  out, p = _chain(DIGITS, 16)(digits, np.arange(3))
  shifts, m = np.asarray(p['shift']), DIGITS.max_shift(16)
  assert m == 2 and (shifts >= 0).all() and (shifts <= 2 * m).all()
  for im, (oy, ox), got in zip(digits, shifts, np.asarray(out)):
    padded = np.pad(A.resize(im, 16).numpy(), [(m, m), (m, m), (0, 0)])
    ref = pipeline.finish_train_batch(
      padded[None, oy : oy + 16, ox : ox + 16],
      np.zeros((1, 3), np.float32),
      np.zeros((1, 4), np.int32),
    )
    np.testing.assert_allclose(got, ref.numpy()[0], atol=1.0 / 255 / 0.224 + 1e-5)


# ---- the FER2013 recipe: its own rotation, no AutoAugment, no lighting ---------------------

FER2013 = D.RecipeParams.of(pipeline.RECIPES['fer2013'])
ANGLES = np.array([10.0, -7.3, 3.25, -0.4, 45.0, 90.0], np.float32)


def _tf_rotated(image, degrees) -> np.ndarray:
  """`augment.random_rotate`'s warp at a given angle."""
  return A.rotate(
    tf.constant(image), degrees, interpolation='BILINEAR', fill_mode='NEAREST'
  ).numpy()


def test_rotation_equals_tf_bilinear_warp_with_edges_repeated():
  """Float images: TensorFlow's kernel to float32 rounding, corners included (the repeated
  edge); uint8 images: its truncating cast, at most one grey level apart."""
  image = textured(20, 28, 3).astype(np.float32) + RNG.uniform(0, 1, (20, 28, 3)).astype(np.float32)
  ours = np.asarray(jax.jit(D.rotate)(np.stack([image] * len(ANGLES)), ANGLES))
  for got, degrees in zip(ours, ANGLES):
    np.testing.assert_allclose(got, _tf_rotated(image, degrees), atol=1e-3, err_msg=str(degrees))
  grey = IMAGES[1]
  ours = np.asarray(jax.jit(D.rotate)(np.stack([grey] * len(ANGLES)), ANGLES))
  assert ours.dtype == np.uint8
  ref = np.stack([_tf_rotated(grey, d) for d in ANGLES])
  assert_within_one_grey_level(ours, ref, max_fraction=0.01)


def test_rotation_turns_about_the_pixel_grid_centre_and_repeats_edges():
  """Without TensorFlow: 90 degrees is np.rot90 (centre ((w - 1) / 2, (h - 1) / 2), counter-
  clockwise), a flat image stays flat (no black corners), and a 45-degree turn of a 9x9 image
  fills each corner with the middle of an edge: the corner samples 1.66 px outside that edge,
  and the clamp moves it onto the edge's pixel (a black fill would give 0 there)."""
  image = RNG.uniform(10, 255, (1, 9, 9, 1)).astype(np.float32)
  quarter = np.asarray(D.rotate(image, np.float32([90.0])))
  np.testing.assert_allclose(quarter[0], np.rot90(image[0]), atol=1e-3)
  flat = np.asarray(D.rotate(np.full((1, 12, 16, 3), 200.0, np.float32), np.float32([30.0])))
  np.testing.assert_allclose(flat, 200.0, atol=1e-3)
  turned = np.asarray(D.rotate(image, np.float32([45.0])))[0, ..., 0]
  im = image[0, ..., 0]
  corners = [turned[0, 0], turned[0, 8], turned[8, 8], turned[8, 0]]
  np.testing.assert_allclose(corners, [im[0, 4], im[4, 8], im[8, 4], im[4, 0]], atol=1e-3)
  np.testing.assert_allclose(turned[4, 4], im[4, 4], atol=1e-3)


def test_rotation_of_a_canvas_is_that_of_its_valid_corner():
  """Host-resized canvases: the centre and the clamp are those of each image's valid extent."""
  canvas = np.zeros((2, 30, 30, 3), np.uint8)
  canvas[0, :20, :28], canvas[1, :28, :20] = IMAGES[0], IMAGES[0].transpose(1, 0, 2)
  sizes = np.array([[20, 28], [28, 20]], np.int32)
  degrees = np.float32([8.5, -6.0])
  out = np.asarray(D.rotate(canvas, degrees, sizes))
  np.testing.assert_array_equal(out[0, :20, :28], D.rotate(IMAGES[0][None], degrees[:1])[0])
  np.testing.assert_array_equal(
    out[1, :28, :20], D.rotate(IMAGES[0].transpose(1, 0, 2)[None], degrees[1:])[0]
  )


def _fer_draws(n: int) -> dict:
  keys = D.example_keys(13, jnp.arange(n))
  sizes = jnp.broadcast_to(jnp.asarray([48, 48], jnp.int32), (n, 2))
  draw = jax.jit(D.draw_params, static_argnums=(2, 3))
  return jax.tree_util.tree_map(np.asarray, draw(keys, sizes, FER2013, 48))


def _tf_fer_draws(n: int) -> dict:
  r = pipeline.RECIPES['fer2013']

  def one(i):
    seed = tf.stack([tf.constant(7, tf.int64), i])
    return {
      'rotate': A._uniform(seed, (), -r.rotate_degrees, r.rotate_degrees),  # random_rotate's
      'window': tf.stack(A.random_resized_crop_window(48, 48, seed, r.crop_scale)),
      'erase': A.erasing_box(48, 48, seed, r.erasing_p, r.erasing_scale, r.erasing_ratio),
    }

  ds = tf.data.Dataset.range(n).map(one, num_parallel_calls=2).batch(n)
  return next(iter(ds.as_numpy_iterator()))


def test_fer2013_draws_follow_the_recipe():
  """Angles uniform in +-10 degrees, the crop and erasing as tf.data draws them, no AutoAugment
  and no lighting. Seeds fixed: the verdict is deterministic."""
  assert (FER2013.autoaugment, FER2013.lighting_std, FER2013.rotate_degrees) == (False, 0.0, 10.0)
  j, t = _fer_draws(N_DRAWS), _tf_fer_draws(N_DRAWS)
  assert not any(k.startswith('aa_') for k in j)
  np.testing.assert_array_equal(j['lighting'], 0.0)
  angles = j['rotate']
  assert angles.shape == (N_DRAWS,) and -10.0 <= angles.min() and angles.max() <= 10.0
  assert angles.min() < -9.9 and angles.max() > 9.9
  assert stats.kstest(angles, stats.uniform(-10, 20).cdf).pvalue > 1e-3
  counts = np.histogram(angles, bins=10, range=(-10, 10))[0]
  assert stats.chisquare(counts).pvalue > 1e-3, counts
  _same_continuous(t['rotate'], angles, 'rotation')
  area = lambda w: w[:, 2] * w[:, 3] / 48**2  # noqa: E731
  assert 0.6 < area(j['window']).min() and area(j['window']).max() <= 1.0
  _same_continuous(area(t['window']), area(j['window']), 'crop area')
  _same_continuous(
    t['window'][:, 3] / t['window'][:, 2], j['window'][:, 3] / j['window'][:, 2], 'crop aspect'
  )
  t_on, j_on = t['erase'][:, 2] > 0, j['erase'][:, 2] > 0
  _same_discrete(t_on, j_on, 'erasing applied')
  erased = lambda b: b[:, 2] * b[:, 3] / 48**2  # noqa: E731
  _same_continuous(erased(t['erase'][t_on]), erased(j['erase'][j_on]), 'erase area')
  # And the test can tell: half the range is rejected.
  assert stats.kstest(angles, stats.uniform(-5, 10).cdf).pvalue < 1e-6


def test_fer2013_chain_equals_tf_ops_on_the_device_parameters():
  """Rotation, crop, flip, erasing on a grey face: the tf.data ops (rotation as
  `augment.random_rotate` warps) on the device's parameters give the device's images; the
  rotation's truncation may move a grey level, which the bicubic crop can spread to two."""
  n, size = 12, 48
  face = np.repeat(textured(48, 48, 5)[..., :1], 3, axis=-1)
  out, p = _chain(FER2013, size)(np.stack([face] * n), np.arange(200, 200 + n))
  out, p = np.asarray(out), jax.tree_util.tree_map(np.asarray, p)
  assert len({round(float(a), 4) for a in p['rotate']}) == n
  worst = 0.0
  for i in range(n):
    x = _tf_rotated(face, p['rotate'][i])
    top, left, ch, cw = p['window'][i]
    x = A.resize(x[top : top + ch, left : left + cw], (size, size)).numpy()
    x = x[:, ::-1] if p['flip'][i] else x
    ref = pipeline.finish_train_batch(x[None], np.zeros((1, 3), np.float32), p['erase'][i : i + 1])
    diff = np.abs(out[i] - ref.numpy()[0])
    worst = max(worst, float(diff.max()))
    assert np.mean(diff > 1.0 / 255 / 0.225 + 1e-5) < 0.01
  assert worst <= 2.0 / 255 / 0.224 + 1e-5, worst
