"""Test-time augmentation views (zenfer_jax.deploy.tta) and their use in evaluate."""

import jax
import numpy as np
import pytest

from zenfer_jax import errors
from zenfer_jax.deploy import evaluate, tta
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
CLASSES = [str(i) for i in range(10)]


def _images(n=3, size=8, channels=2, seed=0):
  return np.random.default_rng(seed).standard_normal((n, size, size, channels)).astype(np.float32)


def test_none_and_flip_views():
  x = _images()
  (only,) = tta.views(x, 'none')
  np.testing.assert_array_equal(only, x)
  same, mirror = tta.views(x, 'flip')
  np.testing.assert_array_equal(same, x)
  np.testing.assert_array_equal(mirror, x[:, :, ::-1])


def test_crop_offsets_are_the_four_corners_and_the_centre():
  assert tta.crop_side(48, 0.875) == 42
  assert tta.crop_offsets(48, 42) == ((0, 0), (0, 6), (6, 0), (6, 6), (3, 3))


def test_ten_crop_views_are_resized_corner_and_centre_crops_and_their_mirrors():
  x = _images(size=8)
  v = tta.views(x, 'ten_crop', crop_fraction=0.75)
  assert len(v) == 12 and all(u.shape == x.shape for u in v)
  np.testing.assert_array_equal(v[0], x)
  np.testing.assert_array_equal(v[1], x[:, :, ::-1])
  for i, (top, left) in enumerate(((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))):
    want = jax.image.resize(x[:, top : top + 6, left : left + 6], x.shape, 'bicubic')
    np.testing.assert_allclose(v[2 + 2 * i], want, atol=1e-6)
    np.testing.assert_allclose(v[3 + 2 * i], np.asarray(want)[:, :, ::-1], atol=1e-6)
  # A crop differs from the whole image, so the checks above can tell them apart.
  assert np.abs(np.asarray(v[2]) - x).max() > 0.1


def test_a_whole_image_crop_gives_the_whole_image_and_its_mirror():
  x = _images()
  v = tta.views(x, 'ten_crop', crop_fraction=1.0)
  for i in range(6):
    np.testing.assert_array_equal(v[2 * i], x)
    np.testing.assert_array_equal(v[2 * i + 1], x[:, :, ::-1])


def test_wrap_averages_the_logits_over_the_views():
  x = _images(channels=3)
  w = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
  ramp = np.linspace(-1, 1, 8, dtype=np.float32)[None, None, :, None]

  def apply_fn(variables, images, train=False):
    # Position-dependent, so mirrors and crops change the answer.
    return (images * ramp).mean((1, 2)) @ variables

  got = tta.wrap(apply_fn, 'ten_crop', 0.75)(w, x)
  want = np.mean([apply_fn(w, u) for u in tta.views(x, 'ten_crop', 0.75)], axis=0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(got) - apply_fn(w, x)).max() > 1e-3
  assert tta.wrap(apply_fn, 'none') is apply_fn


@pytest.mark.parametrize(
  'mode, fraction, message',
  [('tencrop', 0.875, 'unknown test-time augmentation'), ('ten_crop', 0.0, 'crop_fraction')],
)
def test_bad_mode_or_fraction_is_a_value_error(mode, fraction, message):
  with pytest.raises(ValueError, match=message):
    tta.wrap(lambda v, x, train=False: x, mode, fraction)
  with pytest.raises(ValueError, match=message):
    tta.views(_images(), mode, fraction)


def _model_dir(tmp_path):
  model = zennet.build_model(TINY, 10, use_sa=True)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(2), 16))
  card = model_directory.make_card(
    TINY, 10, use_sa=True, class_names=CLASSES, image_size=16, recipe='digits', source='test'
  )
  return model_directory.save_model_dir(str(tmp_path / 'm'), variables, card)


def test_evaluate_ten_crop_of_the_whole_image_equals_flip(digits_dir, tmp_path):
  model_dir = _model_dir(tmp_path)
  kw = dict(name='digits', data_dir=str(digits_dir), split='test', batch_size=64)
  flip = evaluate.evaluate(model_dir, tta='flip', **kw)
  whole = evaluate.evaluate(model_dir, tta='ten_crop', tta_crop_fraction=1.0, **kw)
  crops = evaluate.evaluate(model_dir, tta='ten_crop', tta_crop_fraction=0.75, **kw)
  np.testing.assert_array_equal(whole['confusion_matrix'], flip['confusion_matrix'])
  assert flip['tta'] == 'flip' and flip['flip_tta'] and flip['tta_crop_fraction'] is None
  assert crops['tta'] == 'ten_crop' and not crops['flip_tta']
  assert crops['tta_crop_fraction'] == 0.75
  assert np.array(crops['confusion_matrix']).sum() == 360


def test_evaluate_refuses_two_augmentations_and_bad_fractions(digits_dir, tmp_path):
  model_dir = _model_dir(tmp_path)
  kw = dict(name='digits', data_dir=str(digits_dir), split='test')
  with pytest.raises(errors.InvalidInput, match='two test-time augmentations'):
    evaluate.evaluate(model_dir, flip_tta=True, tta='ten_crop', **kw)
  with pytest.raises(errors.InvalidInput, match='crop_fraction must be in'):
    evaluate.evaluate(model_dir, tta='ten_crop', tta_crop_fraction=1.5, **kw)


def test_predictor_with_tta_gives_the_softmax_of_the_mean_logits(tmp_path):
  from zenfer_jax.deploy import predict

  model_dir = _model_dir(tmp_path)
  plain = predict.Predictor(model_dir)
  crops = predict.Predictor(model_dir, tta='ten_crop', tta_crop_fraction=0.75)
  x = _images(n=4, size=16, channels=3, seed=5)
  logits = [
    plain.model.apply(plain.variables, u, train=False)
    for u in tta.views(x, 'ten_crop', crop_fraction=0.75)
  ]
  want = jax.nn.softmax(sum(logits) / len(logits), -1)
  np.testing.assert_allclose(crops(x), want, rtol=1e-5, atol=1e-6)
  assert np.abs(crops(x) - plain(x)).max() > 1e-4


def test_predictor_refuses_tta_for_an_exported_file(tmp_path):
  from zenfer_jax.deploy import predict

  path = tmp_path / 'model.onnx'
  path.write_bytes(b'not read: refused before loading')
  with pytest.raises(errors.InvalidInput, match='--tta flip runs with a model dir'):
    predict.Predictor(str(path), tta='flip')
