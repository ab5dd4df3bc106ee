"""Shared pieces of the training tests: a tiny ZenNet on 16x16 digits, and subprocess runs."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
TINY_OVERRIDES = {
  'model.structure': TINY,
  'data.image_size': 16,
  'batch_size': 16,
  'eval_batch_size': 64,
  'steps_per_epoch': 3,
  'num_epochs': 2,
  'warmup_epochs': 1,
  'progress_bar': False,
  'log_every_steps': 2,
  # Not the home directory's cache: tests use the session's (conftest) or one of their own.
  'compilation_cache_dir': '',
}


def tiny_config(data_dir, **overrides):
  """The demo config shrunk to seconds: tiny model, 16x16 digits, a few steps."""
  sys.path.insert(0, str(REPO))
  from configs import demo

  config = demo.get_config()
  for key, value in {**TINY_OVERRIDES, 'data.data_dir': str(data_dir), **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


# The tiny model and its first variables, for tests of the training modules (init, train_state).
# A test module imports the three fixtures below to use them; each module builds its own.
TINY_NUM_CLASSES = 10


@pytest.fixture(scope='module', name='config')
def tiny_config_fixture():
  return tiny_config('/unused/data_dir')


@pytest.fixture(scope='module', name='model')
def tiny_model_fixture(config):
  from zenfer_jax.training import init

  return init.build_model(config, TINY_NUM_CLASSES)


@pytest.fixture(scope='module', name='fresh')
def tiny_variables_fixture(config, model):
  import jax

  from zenfer_jax.training import init

  return init.initial_variables(config, model, jax.random.PRNGKey(0))


def step_inputs(structure: str, num_classes: int = TINY_NUM_CLASSES, seed: int = 0, **overrides):
  """(config, model, first variables, one random batch per local device, 8 images of 16x16 each):
  what the train-step tests feed `steps.train_step` under pmap."""
  import jax

  from zenfer_jax.training import init

  config = tiny_config(
    '/unused', **{'model.structure': structure, 'model.use_sa': False, **overrides}
  )
  model = init.build_model(config, num_classes)
  variables = init.initial_variables(config, model, jax.random.PRNGKey(seed))
  n = jax.local_device_count()
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.normal(size=(n, 8, 16, 16, 3)).astype(np.float32),
    'label': rng.integers(0, num_classes, (n, 8)).astype(np.int32),
  }
  return config, model, variables, batch


def mapped_train_step(num_classes: int = TINY_NUM_CLASSES, lr: float = 0.05, **step_kwargs):
  """`steps.train_step` pmapped with label smoothing 0.1, no mixup and a constant rate, and
  `step_kwargs` (distillation, the weight average) bound."""
  import functools

  from zenfer_jax.training import parallel, steps

  return parallel.pmap_train_step(
    functools.partial(
      steps.train_step,
      num_classes=num_classes,
      label_smoothing=0.1,
      mixup_alpha=0.0,
      learning_rate_fn=lambda s: lr,
      **step_kwargs,
    )
  )


def main_command(workdir, data_dir, **overrides) -> list[str]:
  """`python -m zenfer_jax.main --config=configs/demo.py ...` with the tiny overrides."""
  args = [
    sys.executable,
    '-m',
    'zenfer_jax.main',
    f'--config={REPO / "configs" / "demo.py"}',
    f'--workdir={workdir}',
  ]
  for key, value in {**TINY_OVERRIDES, 'data.data_dir': str(data_dir), **overrides}.items():
    args.append(f'--config.{key}={str(value).lower() if isinstance(value, bool) else value}')
  return args


def subprocess_env(devices: int | None = None, cache_dir=None) -> dict:
  """Environment of a training subprocess; `cache_dir` shares compiled steps between runs."""
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  # The parent's flags minus its device count (conftest's compile-speed flag stays).
  flags = [
    f
    for f in env.pop('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  if devices:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  if flags:
    env['XLA_FLAGS'] = ' '.join(flags)
  if cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = str(cache_dir)
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def run_main(
  workdir, data_dir, devices: int | None = None, timeout: int = 400, cache_dir=None, **overrides
):
  proc = subprocess.run(
    main_command(workdir, data_dir, **overrides),
    cwd=REPO,
    env=subprocess_env(devices, cache_dir),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if proc.returncode != 0:
    raise AssertionError(f'training failed ({proc.returncode}):\n{proc.stderr[-6000:]}')
  return proc


def latest_state(workdir) -> tuple[dict, dict]:
  from zenfer_jax.rundir import workdir as workdir_lib

  ckpts = workdir_lib.Checkpoints(str(workdir))
  try:
    return ckpts.restore('latest')
  finally:
    ckpts.close()


def flat(tree: dict) -> dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}


def assert_same_latest_checkpoint(run_dir, ref_dir, step: int) -> dict:
  """Both workdirs' latest checkpoints are at `step` and equal array for array, with equal
  metadata; returns that metadata (a resumed run against an uninterrupted one)."""
  ref_state, ref_meta = latest_state(ref_dir)
  state, meta = latest_state(run_dir)
  assert int(state['step']) == int(ref_state['step']) == step
  ref_flat, got = flat(ref_state), flat(state)
  assert sorted(got) == sorted(ref_flat)
  for k in ref_flat:
    np.testing.assert_array_equal(got[k], ref_flat[k], err_msg=k)
  assert meta == ref_meta
  return meta
