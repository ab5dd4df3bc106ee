"""The Grain loader (config.data.loader='grain'): order, evaluation, parity with tf.data, resume."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.data import array_records, device_augment, grain_pipeline
from zenfer_jax.data import augment_spec as spec
from zenfer_jax.data.spec import DataSpec

TRAIN, TEST = 1437, 360


@pytest.fixture(scope='module')
def both_dir(tmp_path_factory) -> str:
  """Digits with TFRecord and ArrayRecord files (this module's own: digits_dir is read-only)."""
  path = str(tmp_path_factory.mktemp('digits_both'))
  data.prepare_dataset('digits', path, file_format='both')
  return path


def _records(data_dir, split):
  """(uint8 images [N, 8, 8, 3], labels [N]) in record order, read without tf.data."""
  source = array_records.data_source(data.builder('digits', data_dir), split)
  examples = [source[i] for i in range(len(source))]
  return np.stack([e['image'] for e in examples]), np.array([e['label'] for e in examples])


def _normalised(images):
  return (images.astype(np.float32) / 255.0 - np.float32(spec.IMAGENET_MEAN)) / np.float32(
    spec.IMAGENET_STD
  )


def _train(data_dir, seed=0, start_step=0, per_device_batch=479, **loader_kw):
  train = DataSpec(
    'digits',
    data_dir,
    image_size=8,
    per_device_batch=per_device_batch,
    seed=seed,
    recipe='none',  # No draws: a batch is its examples, normalised.
  )
  return grain_pipeline.train_batches(train, start_step=start_step, **loader_kw)


def _order(name, data_dir, *, local_batch, steps, **spec_kw):
  """`train_order` of a one-device process whose batch is `local_batch`."""
  order = DataSpec(name, data_dir, image_size=8, per_device_batch=local_batch, **spec_kw)
  return grain_pipeline.train_order(order, steps)


def test_every_training_example_once_per_epoch_in_a_seed_fixed_order(both_dir):
  images, labels = _records(both_dir, 'train')
  it = _train(both_dir)
  batches = [next(it) for _ in range(6)]  # Two epochs of 3 x 479 = 1437.
  order = _order('digits', both_dir, seed=0, local_batch=479, steps=6)
  epochs = order.reshape(2, TRAIN)
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(TRAIN))  # Each once per epoch.
  assert not np.array_equal(epochs[0], epochs[1])  # A fresh permutation each epoch.
  for b, idx in zip(batches, order):
    assert b['image'].shape == (1, 479, 8, 8, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (1, 479) and b['label'].dtype == np.int32
    np.testing.assert_array_equal(b['label'][0], labels[idx])
    np.testing.assert_allclose(np.asarray(b['image'][0]), _normalised(images[idx]), atol=1e-6)
  again = _order('digits', both_dir, seed=0, local_batch=479, steps=6)
  other = _order('digits', both_dir, seed=1, local_batch=479, steps=6)
  np.testing.assert_array_equal(again, order)
  assert not np.array_equal(other, order)
  # Two processes: disjoint shares of every class that together make the split.
  shares = [
    _order(
      'digits', both_dir, seed=0, local_batch=100, steps=7, process_index=p, process_count=2
    ).ravel()[:700]
    for p in (0, 1)
  ]
  assert set(shares[0]).isdisjoint(shares[1])
  assert len(set(shares[0]) | set(shares[1])) == 1400


def test_resume_from_the_saved_state_gives_the_same_batches(both_dir):
  kw = dict(seed=3, per_device_batch=32, threads=2)
  it = grain_pipeline.train_batches(
    DataSpec('digits', both_dir, image_size=32, per_device_batch=32, num_local_devices=1, seed=3),
    threads=2,
  )  # The demo's recipe: a random shift per example, from (seed, example number).
  first = [jax.device_get(next(it)) for _ in range(5)]
  it = grain_pipeline.train_batches(
    DataSpec('digits', both_dir, image_size=32, per_device_batch=32, num_local_devices=1, seed=3)
  )
  next(it), next(it)
  state = it.get_state()
  assert state['next_step'] == 2 and state['seed'] == 3 and state['share_size'] == TRAIN
  resumed = grain_pipeline.train_batches(
    DataSpec('digits', both_dir, image_size=32, per_device_batch=32, num_local_devices=1, seed=3)
  )
  resumed.set_state(state)
  for want in first[2:]:
    got = jax.device_get(next(resumed))
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])
  assert resumed.get_state()['next_step'] == 5
  other_seed = _train(both_dir, **{**kw, 'seed': 4})
  with pytest.raises(grain_pipeline.LoaderStateError, match="'seed': \\(3, 4\\)"):
    other_seed.set_state(state)


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_evaluation_counts_each_example_once(both_dir, process_count):
  _, labels = _records(both_dir, 'test')
  seen, batch_counts = [], set()
  for p in range(process_count):
    batches = list(
      grain_pipeline.eval_batches(
        DataSpec(
          'digits',
          both_dir,
          image_size=8,
          per_device_batch=50,
          num_local_devices=1,
          process_index=p,
          process_count=process_count,
        )
      )
    )
    batch_counts.add(len(batches))
    for b in batches:
      mask = np.asarray(b['mask'][0])
      assert not np.asarray(b['image'][0])[~mask].any()  # Padding is zeros.
      seen.extend(np.asarray(b['label'][0])[mask])
  assert len(batch_counts) == 1  # Every process runs as many batches (pmap needs it).
  assert len(seen) == TEST
  np.testing.assert_array_equal(seen, labels)  # Each example once, in record order.


def test_grain_eval_batches_match_tf_data_ones(both_dir):
  kw = dict(eval_split='test', image_size=32, per_device_batch=90, num_local_devices=1)
  grain = list(grain_pipeline.eval_batches(DataSpec('digits', both_dir, **kw)))
  tf_data = list(data.pipeline.eval_dataset(DataSpec('digits', both_dir, **kw)))
  assert len(grain) == len(tf_data) == 4
  for g, t in zip(grain, tf_data):
    np.testing.assert_array_equal(np.asarray(g['label']), t['label'])
    np.testing.assert_array_equal(np.asarray(g['mask']), t['mask'])
    # TensorFlow's bicubic 8 -> 32 and device_augment's: at most a grey level apart.
    np.testing.assert_allclose(np.asarray(g['image']), t['image'], atol=1.01 / 255 / 0.224)


def test_bad_inputs_are_named(both_dir, tmp_path):
  only_tfrecord = str(tmp_path / 'tfds')
  data.prepare_dataset('digits', only_tfrecord)
  with pytest.raises(array_records.MissingFormatError, match='file_format=both'):
    grain_pipeline.eval_batches(
      DataSpec('digits', only_tfrecord, image_size=8, per_device_batch=4, num_local_devices=1)
    )
  with pytest.raises(ValueError, match="no split 'validation'"):
    grain_pipeline.eval_batches(
      DataSpec(
        'digits',
        both_dir,
        eval_split='validation',
        image_size=8,
        per_device_batch=4,
        num_local_devices=1,
      )
    )


def test_the_device_chain_takes_every_recipe():
  # Grain augments with the device chain, so it trains every recipe tf.data does.
  from zenfer_jax.data import recipes

  for name, r in recipes.RECIPES.items():
    p = device_augment.RecipeParams.of(r)
    assert (p.autoaugment, p.rotate_degrees, p.lighting_std) == (
      r.autoaugment,
      r.rotate_degrees,
      r.lighting_std,
    ), name


def test_host_canvas_mode_matches_the_fixed_shape_mode_where_nothing_is_resized(both_dir):
  kw = dict(image_size=8, per_device_batch=64, num_local_devices=1, seed=5, recipe='digits')
  fixed = grain_pipeline.train_batches(DataSpec('digits', both_dir, **kw), fixed_shape=True)
  canvas = grain_pipeline.train_batches(DataSpec('digits', both_dir, **kw), fixed_shape=False)
  for _ in range(2):  # The same shifts from the same keys, whichever way the images arrive.
    a, b = jax.device_get(next(fixed)), jax.device_get(next(canvas))
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_datasets_of_other_image_sizes_are_resized_on_the_host(tmp_path):
  manual = str(tmp_path / 'manual')
  fx.make_folders(manual)  # 64x48 images: not a fixed-shape family, so the host resizes.
  data_dir = str(tmp_path / 'tfds')
  classes = ['sad', 'happy', 'angry']
  data.prepare_dataset('folders', data_dir, manual_dir=manual, classes=classes, file_format='both')
  kw = dict(image_size=32, per_device_batch=3, num_local_devices=1, classes=classes)
  grain = list(grain_pipeline.eval_batches(DataSpec('folders', data_dir, recipe='rafdb', **kw)))
  tf_data = list(data.pipeline.eval_dataset(DataSpec('folders', data_dir, recipe='rafdb', **kw)))
  assert len(grain) == len(tf_data) == 2
  for g, t in zip(grain, tf_data):
    np.testing.assert_array_equal(np.asarray(g['mask']), t['mask'])
    np.testing.assert_array_equal(np.asarray(g['label']), t['label'])
    # PIL's antialiased bicubic against TensorFlow's: a few grey levels on flat colours.
    np.testing.assert_allclose(np.asarray(g['image']), t['image'], atol=4 / 255 / 0.224)
  it = grain_pipeline.train_batches(DataSpec('folders', data_dir, seed=0, recipe='rafdb', **kw))
  batch = jax.device_get(next(it))
  assert batch['image'].shape == (1, 3, 32, 32, 3) and np.isfinite(batch['image']).all()
  order = _order(
    'folders', data_dir, seed=0, local_batch=3, steps=1, recipe='rafdb', classes=classes
  )
  _, labels = zip(*[(0, int(e['label'])) for e in _folder_records(data_dir, classes)])
  np.testing.assert_array_equal(batch['label'][0], np.asarray(labels)[order[0]])


def _folder_records(data_dir, classes):
  return list(array_records.data_source(data.builder('folders', data_dir, classes), 'train'))


def test_grain_batches_equal_the_device_paths_bit_for_bit(both_dir):
  """Grain and augment_on='device' share the sampler, the keys and the device chain: a Grain run
  trains on exactly the batches a tf.data run with device augmentation does."""
  from zenfer_jax.data import device_pipeline

  kw = dict(image_size=16, per_device_batch=64, num_local_devices=1, seed=0)
  grain = grain_pipeline.train_batches(DataSpec('digits', both_dir, **kw))
  device = device_pipeline.train_batches(DataSpec('digits', both_dir, **kw))
  for _ in range(3):
    a, b = jax.device_get(next(grain)), jax.device_get(next(device))
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])


@pytest.fixture(scope='module')
def fer2013_dir(tmp_path_factory) -> str:
  """The FER2013 fixture in Kaggle's folder layout, prepared with both file formats."""
  root = tmp_path_factory.mktemp('fer2013_both')
  fx.make_fer2013_folders(str(root / 'manual'))
  data.prepare_dataset(
    'fer2013', str(root / 'tfds'), manual_dir=str(root / 'manual'), file_format='both'
  )
  return str(root / 'tfds')


def test_fer2013_grain_batches_equal_the_device_paths_with_its_rotation(fer2013_dir):
  """The FER2013 recipe (rotation, no AutoAugment, no lighting) on both device-chain loaders:
  the same batches, and each face differently rotated."""
  from zenfer_jax.data import device_pipeline

  faces = DataSpec(
    'fer2013',
    fer2013_dir,
    image_size=48,
    per_device_batch=8,
    num_local_devices=1,
    seed=0,
    recipe='fer2013',
  )
  grain = grain_pipeline.train_batches(faces)
  device = device_pipeline.train_batches(faces)
  for _ in range(2):
    a, b = jax.device_get(next(grain)), jax.device_get(next(device))
    np.testing.assert_array_equal(a['label'], b['label'])
    np.testing.assert_array_equal(a['image'], b['image'])
    assert a['image'].shape == (1, 8, 48, 48, 3)
    # Grey faces stay grey (no colour lighting, no colour AutoAugment op) outside the erasing.
    x = a['image'] * np.float32(spec.IMAGENET_STD) + np.float32(spec.IMAGENET_MEAN)
    kept = ~(a['image'] == 0).all(-1)
    for c in (1, 2):
      np.testing.assert_allclose(x[..., c][kept], x[..., 0][kept], atol=1e-5)
