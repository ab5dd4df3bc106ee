"""benchmarks.train_parity: the PyTorch side reads the JAX side's schedule and recipe, and a
one-epoch run of both sides on a tiny FER2013 writes a sound report."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import train_parity as tp
from tests.data_fixtures import make_fer2013_folders
from tests.train_fixtures import REPO, TINY, subprocess_env
from zenfer_jax.data.pipeline import RECIPES, Recipe

# Every random op of the recipe off: what is left is the resize (and the 50% flip, which no
# recipe field turns off).
PLAIN = Recipe(
  'plain',
  augment=True,
  resize_ratio=1.0,
  crop_scale=(1.0, 1.0),
  erasing_p=0.0,
  lighting_std=0.0,
  autoaugment=False,
  rotate_degrees=0.0,
)


def _face(size=48, seed=0) -> np.ndarray:
  """A smooth grey face-sized image as three equal channels (FER2013's records)."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  grey = Image.fromarray(rng.integers(0, 256, (6, 6), np.uint8)).resize((size, size), 3)
  return np.repeat(np.asarray(grey)[..., None], 3, -1)


def _recipe(r: Recipe, size=16) -> tp.TorchRecipe:
  return tp.TorchRecipe.from_fields(dataclasses.asdict(r), size)


def _config(**fields):
  config = tp.load_config(str(REPO / 'configs' / 'fer2013_r.py'))
  for key, value in fields.items():
    tp.set_field(config, key, value)
  return config


@pytest.mark.parametrize(
  'fields, num_train',
  [
    ({}, 28_709),  # fer2013_r as configured.
    ({'num_epochs': 4, 'warmup_epochs': 1, 'batch_size': 32}, 1000),
    ({'num_epochs': 3, 'warmup_epochs': 0, 'target_lr_per_256': 0.01}, 700),
    ({'num_epochs': 3, 'steps_per_epoch': 5, 'batch_size': 16}, 500),
  ],
)
def test_torch_schedule_is_the_jax_schedule(fields, num_train):
  from zenfer_jax.training import loop

  config = _config(**fields)
  jax_lr = loop.Schedule.from_config(config, num_train).lr_fn(config)
  torch_lr = tp.torch_schedule(config, num_train)
  spe = tp.steps_per_epoch(config, num_train)
  total = spe * config.num_epochs
  steps = sorted(
    {0, 1, spe - 1, spe, spe + 1, 2 * spe - 1, total // 3, total // 2, total - 2, total - 1}
  )
  want = np.array([float(jax_lr(s)) for s in steps])
  got = np.array([torch_lr(s) for s in steps])
  # The JAX rate is float32: near the schedule's end, where the rate approaches its target, it
  # holds the peak rate's precision (~1e-7 of it), not the tiny value's own.
  peak = config.lr_per_256 * config.batch_size / 256
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7 * peak)
  assert got.max() <= config.lr_per_256 * config.batch_size / 256 * (1 + 1e-6)


def test_recipe_fields_are_the_pipelines():
  fer = RECIPES['fer2013']
  r = _recipe(fer, 48)
  assert r.fields == dataclasses.asdict(fer)
  assert (r.rotate_degrees, tuple(r.crop_scale), r.erasing_p) == (10.0, (0.64, 1.0), 0.5)
  with pytest.raises(NotImplementedError, match='AutoAugment'):
    _recipe(RECIPES['rafdb'])


def test_plain_recipe_gives_the_resized_image():
  image = _face(48)
  r = _recipe(PLAIN, 16)
  plain = r.eval(image)
  flips = []
  for seed in range(16):
    out = r.train(image, np.random.default_rng(seed))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    flipped = np.array_equal(out, plain[:, ::-1])
    assert flipped or np.array_equal(out, plain)
    flips.append(flipped)
  assert 0 < sum(flips) < len(flips)  # The flip is drawn, with both outcomes.


def test_eval_transform_is_the_jax_eval_transform():
  from zenfer_jax.data import pipeline

  image = _face(48, seed=3)
  want = pipeline.preprocess_for_eval(image, 16, 'fer2013')
  got = _recipe(RECIPES['fer2013'], 16).eval(image)
  # PIL's and TensorFlow's antialiased bicubic resizes: within one grey level.
  np.testing.assert_allclose(got, want, atol=1.5 / 255 / 0.224)


def test_train_draws_use_the_recipe_numbers(monkeypatch):
  seen = {'angles': [], 'scales': []}
  rotate, crop = tp.rotate, tp.crop_window

  def spy_rotate(image, degrees):
    seen['angles'].append(degrees)
    return rotate(image, degrees)

  def spy_crop(h, w, rng, scale, ratio=tp.CROP_RATIO):
    seen['scales'].append((scale, ratio))
    return crop(h, w, rng, scale, ratio)

  monkeypatch.setattr(tp, 'rotate', spy_rotate)
  monkeypatch.setattr(tp, 'crop_window', spy_crop)
  recipe = dataclasses.replace(RECIPES['fer2013'], rotate_degrees=7.0, crop_scale=(0.5, 0.7))
  r = _recipe(recipe, 16)
  for seed in range(30):
    r.train(_face(48), np.random.default_rng(seed))
  assert all(-7.0 <= a <= 7.0 for a in seen['angles']) and max(map(abs, seen['angles'])) > 3.0
  assert set(seen['scales']) == {((0.5, 0.7), (3 / 4, 4 / 3))}
  seen['angles'].clear()
  _recipe(dataclasses.replace(recipe, rotate_degrees=0.0)).train(_face(), np.random.default_rng(0))
  assert seen['angles'] == []


def test_erasing_follows_the_recipe():
  square = dataclasses.replace(
    PLAIN, erasing_p=1.0, erasing_scale=(0.25, 0.25), erasing_ratio=(1, 1)
  )
  r = _recipe(square, 16)
  for seed in range(5):
    out = r.train(_face(48), np.random.default_rng(seed))
    erased = (out == 0).all(-1)
    rows, cols = np.nonzero(erased)
    assert erased.sum() == 64 and np.ptp(rows) == 7 and np.ptp(cols) == 7  # One 8x8 square.


def test_rotate_is_the_recipes_rotation():
  """The recipe's rotation (augment.random_rotate: TensorFlow's bilinear warp, edges repeated)
  casts its uint8 result by truncation, as docs/datasets.md records; rounding instead (PIL's
  way) made every rotated PyTorch-side face half a grey level brighter on average."""
  import tensorflow as tf

  from zenfer_jax.data import augment

  face = _face(48, seed=5)
  for degrees in (-9.0, -2.5, 0.7, 6.0):
    want = augment.rotate(tf.constant(face), degrees, 'BILINEAR', 'NEAREST').numpy()
    diff = tp.rotate(face, degrees).astype(np.int64) - want
    assert np.abs(diff).max() <= 1  # float64 here, float32 there: a rare 1 at a boundary.
    assert np.mean(diff != 0) < 0.01 and abs(diff.mean()) < 0.01, (degrees, diff.mean())


def test_rotate_and_crop_window():
  image = _face(48)
  assert np.array_equal(tp.rotate(image, 0.0), image)
  assert np.array_equal(tp.rotate(image, 90.0), np.rot90(image))  # Counter-clockwise.
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = tp.crop_window(48, 40, rng, (0.3, 0.6))
    assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 40
    assert 0.25 <= h * w / (48 * 40) <= 0.65 and 0.7 <= w / h <= 1.4
  # No window fits (a whole-image area at an aspect the image lacks): the centre crop.
  assert tp.crop_window(10, 40, rng, (1.0, 1.0)) == (0, 13, 10, 13)


def test_config_overrides():
  config = _config(**{'batch_size': '8', 'mixup_alpha': '0.2', 'model.use_sa': 'false'})
  assert (config.batch_size, config.mixup_alpha, config.model.use_sa) == (8, 0.2, False)
  assert tp.config_flag('model.use_sa', False) == '--config.model.use_sa=false'
  with pytest.raises(KeyError, match='bacth_size'):
    _config(bacth_size='8')
  args = tp.parse_args(['--epochs', '2', '--config.data.image_size=16', '--sides=torch'])
  assert (args.epochs, args.overrides, args.sides) == (2, {'data.image_size': '16'}, ['torch'])


@pytest.mark.slow
def test_both_sides_one_epoch(tmp_path):
  make_fer2013_folders(str(tmp_path / 'raw'))
  out = tmp_path / 'results' / 'parity.json'
  command = [
    sys.executable,
    '-m',
    'benchmarks.train_parity',
    f'--data_dir={tmp_path / "tfds"}',
    f'--manual_dir={tmp_path / "raw"}',
    f'--workdir={tmp_path / "work"}',
    f'--out={out}',
    '--epochs=1',
    '--max_train_examples=8',  # Of the fixture's 10: the subset path too.
    '--torch_workers=0',
    '--config.data.image_size=16',
    '--config.batch_size=4',
    '--config.eval_batch_size=4',
    f'--config.model.structure={TINY}',
    '--config.compilation_cache_dir=',  # The session's cache (conftest), not the home's.
  ]
  proc = subprocess.run(
    command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads(out.read_text())
  check = report['initial_forward']
  assert check['relative_diff'] <= 1e-4 and check['same_predictions'] == 1.0
  assert report['data']['train_examples'] == 8 and report['data']['eval_examples'] == 4
  assert report['config']['num_epochs'] == 1 and report['config']['warmup_epochs'] == 0
  assert report['notes']  # fer2013_r's 2 warm-up epochs do not fit in 1.
  assert report['schedule']['steps_per_epoch'] == 2
  assert report['recipe'] == json.loads(json.dumps(dataclasses.asdict(RECIPES['fer2013'])))
  assert report['machine']['cpu_model'] and report['versions']['torch']
  for side in ('jax', 'torch'):
    rows = report['sides'][side]['rows']
    assert [r['epoch'] for r in rows] == [1]
    for r in rows:
      assert math.isfinite(r['train_loss']) and r['train_loss'] > 0
      assert 0.0 <= r['test_top1'] <= 1.0
      assert r['images_per_second'] > 0 and r['train_seconds'] > 0
    assert report['sides'][side]['summary']['images_per_second_epochs'] == [1, 1]
  assert report['comparison']['images_per_second_jax_over_torch'] > 0
  png = out.with_suffix('.png')
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert report['plot'] == png.name
