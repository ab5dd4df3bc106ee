"""Input pipelines: shapes, exactly-once padded evaluation, per-process splits, sampling, seeds."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.data import augment, pipeline
from zenfer_jax.data.builders import digits as digits_lib
from zenfer_jax.data.spec import DataSpec

tfds.disable_progress_bar()
MEAN, STD = np.array(augment.IMAGENET_MEAN), np.array(augment.IMAGENET_STD)


def to_uint8(x):
  return np.round((x * STD + MEAN) * 255.0).astype(np.uint8)


@pytest.fixture(scope='module')
def digit_images():
  imgs, labels = digits_lib.digit_images()
  split = np.array([digits_lib.split_of(i) for i in range(len(labels))])
  return imgs, labels, split


def multiset(images):
  return collections.Counter(im.tobytes() for im in images)


def test_eval_pads_and_masks_every_example_exactly_once(digits_dir, digit_images):
  imgs, labels, split = digit_images
  batches = list(
    pipeline.eval_dataset(
      DataSpec(
        'digits', digits_dir, image_size=8, per_device_batch=7, num_local_devices=2, recipe='none'
      )
    )
  )
  assert len(batches) == 26  # ceil(360 / 14)
  for b in batches:
    assert b['image'].shape == (2, 7, 8, 8, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (2, 7) and b['label'].dtype == np.int32
    assert b['mask'].shape == (2, 7) and b['mask'].dtype == bool
  mask = np.concatenate([b['mask'].reshape(-1) for b in batches])
  image = np.concatenate([b['image'].reshape(-1, 8, 8, 3) for b in batches])
  label = np.concatenate([b['label'].reshape(-1) for b in batches])
  assert mask.sum() == 360 and not mask[-4:].any() and mask[:360].all()
  assert (image[~mask] == 0).all()
  got = to_uint8(image[mask])
  assert multiset(got) == multiset(imgs[split == 'test'])
  want_label = {
    im.tobytes(): lab for im, lab in zip(imgs[split == 'test'], labels[split == 'test'])
  }
  assert all(want_label[g.tobytes()] == lab for g, lab in zip(got, label[mask]))
  # Iterable twice, same content.
  again = list(
    pipeline.eval_dataset(
      DataSpec(
        'digits', digits_dir, image_size=8, per_device_batch=7, num_local_devices=2, recipe='none'
      )
    )
  )
  np.testing.assert_array_equal(again[3]['image'], batches[3]['image'])


def test_eval_multi_process_same_batch_count_and_exact_cover(digits_dir, digit_images):
  imgs, _, split = digit_images
  per_host = [
    list(
      pipeline.eval_dataset(
        DataSpec(
          'digits',
          digits_dir,
          image_size=8,
          per_device_batch=16,
          num_local_devices=1,
          recipe='none',
          process_index=k,
          process_count=3,
        )
      )
    )
    for k in range(3)
  ]
  assert len({len(h) for h in per_host}) == 1
  got = []
  for host in per_host:
    for b in host:
      got.extend(to_uint8(b['image'][b['mask']]))
  assert len(got) == 360 and multiset(got) == multiset(imgs[split == 'test'])


@pytest.mark.parametrize('n,count', [(0, 1), (7, 3), (360, 3), (1437, 2), (5, 8)])
def test_host_range_disjoint_and_covering(n, count):
  ranges = [pipeline.host_range(10, 10 + n, k, count) for k in range(count)]
  assert ranges[0][0] == 10 and ranges[-1][1] == 10 + n
  assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
  sizes = [b - a for a, b in ranges]
  assert max(sizes) - min(sizes) <= 1
  with pytest.raises(ValueError):
    pipeline.host_range(0, n, count, count)


def test_train_per_process_epochs_are_disjoint_and_cover_the_split(digits_dir, digit_images):
  imgs, labels, split = digit_images
  info = data.load('digits', digits_dir)[1]
  seen = collections.Counter()
  for k in range(2):
    size = sum(
      b - a for a, b in (pipeline.host_range(a, b, k, 2) for a, b in info.class_ranges['train'])
    )
    ds = pipeline.train_dataset(
      DataSpec(
        'digits',
        digits_dir,
        image_size=8,
        per_device_batch=size,
        num_local_devices=1,
        seed=3,
        recipe='none',
        process_index=k,
        process_count=2,
      )
    )
    batch = next(ds)  # One batch = this process's first epoch, an exact permutation.
    got = to_uint8(batch['image'][0])
    assert len(multiset(got) & seen) == 0 or sum((multiset(got) & seen).values()) <= 2
    seen.update(multiset(got))
    want_label = {im.tobytes(): lab for im, lab in zip(imgs, labels)}
    assert all(want_label[g.tobytes()] == lab for g, lab in zip(got, batch['label'][0]))
    assert len(set(batch['label'][0].tolist())) == 10
  assert seen == multiset(imgs[split == 'train'])


def test_process_split_batches_gives_every_process_count_the_same_global_batches(digits_dir):
  """process_split='batches': processes' local batches, side by side, are the single-process
  global batches, augmentation included, from the start and after a resume at step 2."""
  kwargs = dict(image_size=16, per_device_batch=4, seed=5, recipe='digits')
  for start in (0, 2):
    one = pipeline.train_dataset(
      DataSpec('digits', digits_dir, num_local_devices=4, **kwargs), start_step=start
    )
    shares = [
      pipeline.train_dataset(
        DataSpec(
          'digits',
          digits_dir,
          num_local_devices=2,
          process_index=k,
          process_count=2,
          process_split='batches',
          **kwargs,
        ),
        start_step=start,
      )
      for k in range(2)
    ]
    for _ in range(3):
      whole = next(one)
      parts = [next(s) for s in shares]
      for key in ('image', 'label'):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  default = pipeline.train_dataset(
    DataSpec('digits', digits_dir, num_local_devices=2, process_index=1, process_count=2, **kwargs)
  )
  assert not np.array_equal(next(default)['image'], next(shares[1])['image'])  # 'examples'.
  with pytest.raises(ValueError, match="process_split='rows'"):
    pipeline.train_dataset(
      DataSpec('digits', digits_dir, num_local_devices=1, process_split='rows', **kwargs)
    )


@pytest.fixture(scope='module')
def rafdb_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('rafdb_manual'))
  fx.make_rafdb(manual)
  d = str(tmp_path_factory.mktemp('rafdb_tfds'))
  data.prepare_dataset('rafdb', d, manual_dir=manual)
  return d


def _take(ds, n):
  return [next(ds) for _ in range(n)]


def test_rafdb_train_recipe_shapes_values_and_determinism(rafdb_dir):
  kw = dict(image_size=32, per_device_batch=3, num_local_devices=2, recipe='rafdb')
  a = _take(pipeline.train_dataset(DataSpec('rafdb', rafdb_dir, seed=5, **kw)), 3)
  # A second pipeline with the same seed, resumed at step 2, continues with a's third batch.
  resumed = _take(
    pipeline.train_dataset(DataSpec('rafdb', rafdb_dir, seed=5, **kw), start_step=2), 1
  )
  for x in a:
    assert x['image'].shape == (2, 3, 32, 32, 3) and x['image'].dtype == np.float32
    assert x['label'].shape == (2, 3) and x['label'].dtype == np.int32
    assert np.isfinite(x['image']).all()
    assert -2.6 < x['image'].min() and x['image'].max() < 3.0  # Normalised [0, 1] +- lighting.
    assert ((x['label'] >= 0) & (x['label'] < 7)).all()
  assert not np.array_equal(a[0]['image'][0, 0], a[0]['image'][0, 1])
  np.testing.assert_array_equal(resumed[0]['image'], a[2]['image'])
  np.testing.assert_array_equal(resumed[0]['label'], a[2]['label'])


def test_rafdb_eval_recipe_resizes_whole_image(rafdb_dir):
  batches = list(
    pipeline.eval_dataset(
      DataSpec('rafdb', rafdb_dir, image_size=24, per_device_batch=4, num_local_devices=1)
    )
  )
  mask = np.concatenate([b['mask'][0] for b in batches])
  assert mask.sum() == 7 and len(mask) == 8
  for b in batches:
    for img, label, m in zip(b['image'][0], b['label'][0], b['mask'][0]):
      if m:
        assert img.shape == (24, 24, 3)
        assert fx.colour_label(to_uint8(img)) == label


@pytest.fixture(scope='module')
def folders_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('folders_manual'))
  fx.make_folders(manual)  # train counts 6, 2, 3
  d = str(tmp_path_factory.mktemp('folders_tfds'))
  data.prepare_dataset('folders', d, manual_dir=manual, classes=['sad', 'happy', 'angry'])
  return d


def _label_freq(ds, batches):
  labels = np.concatenate([next(ds)['label'].reshape(-1) for _ in range(batches)])
  return np.bincount(labels, minlength=3) / len(labels)


def test_class_balanced_sampling(folders_dir):
  light = dataclasses.replace(pipeline.RECIPES['none'], balanced=True)
  spec = DataSpec(
    'folders',
    folders_dir,
    image_size=4,
    per_device_batch=600,
    num_local_devices=2,
    seed=0,
    recipe=light,
  )
  labels = next(pipeline.train_dataset(spec))['label']
  np.testing.assert_allclose(
    np.bincount(labels.ravel(), minlength=3) / labels.size, [1 / 3] * 3, atol=0.04
  )  # Class sizes are 6, 2, 3.
  # Seeded: the same seed draws the same sequence, another seed another one.
  same = next(pipeline.train_dataset(spec))['label']
  other = next(pipeline.train_dataset(dataclasses.replace(spec, seed=1)))['label']
  np.testing.assert_array_equal(labels, same)
  assert not np.array_equal(labels, other)


def test_affectnet_recipe_is_balanced_with_large_erasing(folders_dir):
  r = pipeline.RECIPES['affectnet']
  assert r.balanced and r.erasing_scale == (0.4, 0.4) and r.eval_center_crop
  x = next(
    pipeline.train_dataset(
      DataSpec(
        'folders',
        folders_dir,
        image_size=16,
        per_device_batch=8,
        num_local_devices=2,
        seed=0,
        recipe='affectnet',
      )
    )
  )
  assert x['image'].shape == (2, 8, 16, 16, 3) and np.isfinite(x['image']).all()
  assert ((x['label'] >= 0) & (x['label'] < 3)).all()


def test_plain_sampling_follows_class_sizes(folders_dir):
  # A buffer smaller than the split mixes class streams in proportion to their sizes.
  ds = pipeline.train_dataset(
    DataSpec(
      'folders',
      folders_dir,
      image_size=8,
      per_device_batch=100,
      num_local_devices=2,
      seed=0,
      recipe='none',
      shuffle_buffer=4,
    )
  )
  np.testing.assert_allclose(_label_freq(ds, 4), np.array([6, 2, 3]) / 11, atol=0.05)
  # A buffer holding the split gives exact epochs: every 11 draws are a permutation.
  ds = pipeline.train_dataset(
    DataSpec(
      'folders',
      folders_dir,
      image_size=8,
      per_device_batch=11,
      num_local_devices=1,
      seed=0,
      recipe='none',
    )
  )
  for _ in range(3):
    labels = next(ds)['label'][0]
    assert np.bincount(labels, minlength=3).tolist() == [6, 2, 3]


def test_folders_eval_and_images_match_labels(folders_dir):
  batches = list(
    pipeline.eval_dataset(
      DataSpec(
        'folders',
        folders_dir,
        image_size=16,
        per_device_batch=2,
        num_local_devices=2,
        recipe='none',
      )
    )
  )
  mask = np.concatenate([b['mask'].reshape(-1) for b in batches])
  assert mask.sum() == 5 and len(mask) == 8
  for b in batches:
    for img, label in zip(b['image'][b['mask']], b['label'][b['mask']]):
      assert fx.colour_label(to_uint8(img)) == label


def test_digits_recipe_is_light_and_seeded(digits_dir):
  kw = dict(image_size=32, per_device_batch=8, num_local_devices=1)
  x = next(pipeline.train_dataset(DataSpec('digits', digits_dir, seed=0, **kw)))['image']
  again = next(pipeline.train_dataset(DataSpec('digits', digits_dir, seed=0, **kw)))['image']
  other = next(pipeline.train_dataset(DataSpec('digits', digits_dir, seed=1, **kw)))['image']
  np.testing.assert_array_equal(x, again)
  assert not np.array_equal(x, other)
  assert x.shape == (1, 8, 32, 32, 3)
  # Grey digits stay grey: no colour or lighting noise in the digits recipe.
  u = to_uint8(x[0])
  assert (u[..., 0] == u[..., 1]).all() and (u[..., 1] == u[..., 2]).all()


def test_preprocess_for_eval_single_images():
  rgb = np.zeros((40, 80, 3), np.uint8)
  rgb[:, 20:60] = 255
  out = pipeline.preprocess_for_eval(rgb, 20, 'affectnet')  # Shorter side, then centre crop.
  assert isinstance(out, np.ndarray) and out.shape == (20, 20, 3) and out.dtype == np.float32
  inner = out[:, 2:-2]  # The outer columns hold the bicubic ringing of the black edges.
  np.testing.assert_allclose(inner, np.broadcast_to((1 - MEAN) / STD, inner.shape), atol=1e-3)
  squeezed = pipeline.preprocess_for_eval(rgb, 20, 'rafdb')  # Whole image squeezed.
  assert (to_uint8(squeezed)[:, 0] == 0).all()
  grey = rgb[..., 0]
  np.testing.assert_array_equal(pipeline.preprocess_for_eval(grey, 20, 'rafdb'), squeezed)
  rgba = np.concatenate([rgb, np.full((40, 80, 1), 9, np.uint8)], -1)
  np.testing.assert_array_equal(pipeline.preprocess_for_eval(rgba, 20, 'rafdb'), squeezed)


def test_errors_name_the_problem(tmp_path, digits_dir):
  with pytest.raises(FileNotFoundError, match='not prepared.*zenfer_jax.data.prepare'):
    pipeline.eval_dataset(
      DataSpec('rafdb', str(tmp_path), image_size=8, per_device_batch=1, num_local_devices=1)
    )
  with pytest.raises(ValueError, match="no split 'validation'"):
    pipeline.eval_dataset(
      DataSpec(
        'digits',
        digits_dir,
        eval_split='validation',
        image_size=8,
        per_device_batch=1,
        num_local_devices=1,
      )
    )
  with pytest.raises(ValueError, match='Unknown recipe'):
    pipeline.train_dataset(
      DataSpec(
        'digits',
        digits_dir,
        image_size=8,
        per_device_batch=1,
        num_local_devices=1,
        seed=0,
        recipe='imagenet',
      )
    )
