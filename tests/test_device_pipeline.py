"""Training input with augmentation on the device: sampling, resident and streamed feeding, and a
tiny training run that is deterministic and resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import flat, latest_state, tiny_config

from zenfer_jax.data import device_pipeline, pipeline
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import loop


def test_plain_sampler_visits_every_example_once_per_epoch_as_a_function_of_the_step():
  sampler = device_pipeline.ExampleSampler([5, 7, 4], balanced=False, seed=3, process_index=0)
  stream = np.concatenate([sampler.indices(step, 6) for step in range(8)])  # 48 = 3 epochs
  for epoch in range(3):
    assert sorted(stream[16 * epoch : 16 * (epoch + 1)]) == list(range(16))
  assert not np.array_equal(stream[:16], stream[16:32])  # A fresh order each epoch.
  fresh = device_pipeline.ExampleSampler([5, 7, 4], balanced=False, seed=3, process_index=0)
  np.testing.assert_array_equal(fresh.indices(5, 6), stream[30:36])  # Resuming at step 5.
  other = device_pipeline.ExampleSampler([5, 7, 4], balanced=False, seed=4, process_index=0)
  assert not np.array_equal(other.indices(0, 16), stream[:16])


def test_balanced_sampler_draws_classes_uniformly():
  sizes = [50, 5, 500]
  sampler = device_pipeline.ExampleSampler(sizes, balanced=True, seed=0, process_index=0)
  index = np.concatenate([sampler.indices(step, 64) for step in range(100)])
  cls = np.searchsorted(np.cumsum(sizes), index, side='right')
  assert (index >= 0).all() and (index < sum(sizes)).all()
  np.testing.assert_allclose(np.bincount(cls) / len(cls), [1 / 3] * 3, atol=0.03)
  np.testing.assert_array_equal(sampler.indices(7, 64), index[7 * 64 : 8 * 64])


def _spec(digits_dir, recipe):
  return DataSpec(
    'digits', str(digits_dir), image_size=16, per_device_batch=8, seed=1, recipe=recipe
  )


def _batches(digits_dir, recipe, start_step=0, resident_max_bytes=0):
  it = device_pipeline.train_batches(
    _spec(digits_dir, recipe), start_step=start_step, resident_max_bytes=resident_max_bytes
  )
  return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(3)]


@pytest.mark.parametrize('resident', [True, False])
@pytest.mark.parametrize('recipe', ['digits', 'rafdb'])
def test_device_batches_are_shaped_like_host_batches_and_resume_at_a_step(
  digits_dir, resident, recipe
):
  limit = device_pipeline.RESIDENT_MAX_BYTES if resident else 0
  run = _batches(digits_dir, recipe=recipe, resident_max_bytes=limit)
  host = pipeline.train_dataset(_spec(digits_dir, recipe))
  ref = next(host)
  for b in run:
    assert b['image'].shape == ref['image'].shape == (1, 8, 16, 16, 3)
    assert b['image'].dtype == ref['image'].dtype and b['label'].dtype == ref['label'].dtype
    assert b['label'].shape == (1, 8) and ((b['label'] >= 0) & (b['label'] < 10)).all()
    # Normalised like the host batches: similar value ranges.
    assert abs(b['image'].mean() - ref['image'].mean()) < 0.5
  resumed = _batches(digits_dir, start_step=1, recipe=recipe, resident_max_bytes=limit)
  for a, b in zip(run[1:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert not np.array_equal(run[0]['image'], run[1]['image'])


def test_resident_loader_refuses_what_does_not_fit(digits_dir):
  from zenfer_jax.data import registry, samplers

  builder, info = registry.load('digits', str(digits_dir))
  ranges = samplers.sampling(_spec(digits_dir, 'digits'), info).ranges
  images, labels = device_pipeline.load_resident(builder, 'train', ranges)
  assert images.dtype == np.uint8 and images.shape == (info.split_sizes['train'], 8, 8, 3)
  assert sorted(set(labels.tolist())) == list(range(10))
  assert device_pipeline.load_resident(builder, 'train', ranges, images.nbytes - 1) is None


@pytest.mark.slow
def test_training_with_device_augmentation_is_deterministic_and_resumes_exactly(
  tmp_path, digits_dir, monkeypatch
):
  """The full recipe (rafdb) on digits: two runs agree bit for bit, and a run stopped after its
  first epoch's checkpoint and rerun ends where they do."""
  config = lambda: tiny_config(  # noqa: E731
    digits_dir, **{'data.augment_on': 'device', 'data.recipe': 'rafdb'}
  )
  loop.train_and_evaluate(config(), str(tmp_path / 'a'))
  loop.train_and_evaluate(config(), str(tmp_path / 'b'))

  real_save = workdir_lib.Checkpoints.save_latest

  def save_then_stop(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    raise KeyboardInterrupt(f'stopped after saving step {step}')

  monkeypatch.setattr(workdir_lib.Checkpoints, 'save_latest', save_then_stop)
  with pytest.raises(KeyboardInterrupt, match='step 3'):
    loop.train_and_evaluate(config(), str(tmp_path / 'c'))
  monkeypatch.setattr(workdir_lib.Checkpoints, 'save_latest', real_save)
  loop.train_and_evaluate(config(), str(tmp_path / 'c'))

  ref, ref_meta = latest_state(tmp_path / 'a')
  assert int(ref['step']) == 6
  timing = json.loads((tmp_path / 'a' / 'timing.json').read_text())
  assert timing['warmup']['step'] == 2 and timing['sustained']['steps'] == 4  # log every 2 steps
  counts = timing['counts']
  assert (counts['input_wait'], counts['eval']) == (6, 2)
  assert counts['checkpoint'] in (3, 4)  # Each epoch's latest, and the best when it improved.
  assert timing['sustained']['images_per_second'] > 0
  for other in ('b', 'c'):
    state, meta = latest_state(tmp_path / other)
    got = flat(state)
    for k, v in flat(ref).items():
      np.testing.assert_array_equal(got[k], v, err_msg=f'{other}: {k}')
    assert meta == ref_meta
    assert workdir_lib.read_metrics(str(tmp_path / other)) == workdir_lib.read_metrics(
      str(tmp_path / 'a')
    )


def test_streamed_canvas_keeps_the_middle_of_a_long_side():
  from zenfer_jax.data import augment

  wide = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (10, 1, 3))
  r = pipeline.RECIPES['rafdb']
  canvas, size = device_pipeline._streamed_example(wide, 16, r, 32)
  full = augment.resize_shorter(wide, 21).numpy()  # 21 x 84
  assert canvas.shape == (32, 32, 3) and list(size.numpy()) == [21, 32]
  np.testing.assert_array_equal(canvas[:21], full[:, 26:58])
  assert (canvas.numpy()[21:] == 0).all()  # Padding below the 21 valid rows.
