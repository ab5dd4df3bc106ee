"""The weights' moving average (config.ema_decay): its update in the step, its checkpoint, the
resume check, and a real run whose evaluation and export are the average."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from train_fixtures import flat, latest_state, mapped_train_step, step_inputs, tiny_config

from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import loop, parallel
from zenfer_jax.training import train_state as ts

STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperConvK3BNRELU(8,16,2,1)'
NUM_CLASSES = 10


@pytest.fixture(scope='module')
def setup():
  return step_inputs(STRUCTURE, NUM_CLASSES, ema_decay=0.9)


def _step(ema_decay):
  return mapped_train_step(NUM_CLASSES, 0.1, ema_decay=ema_decay)


def test_the_average_moves_by_one_minus_decay_and_training_is_unchanged(setup):
  config, model, variables, batch = setup
  state = ts.create_train_state(config, model, variables, lambda s: 0.1)
  assert flat(state.ema) == flat(variables)  # It starts at the first weights.
  rng = jax.random.PRNGKey(3)
  with_ema, _ = parallel.unreplicate_to_host(_step(0.9)(parallel.replicate(state), batch, rng))
  plain = ts.create_train_state(
    tiny_config('/unused', **{'model.structure': STRUCTURE}), model, variables, lambda s: 0.1
  )
  assert plain.ema is None
  without, _ = parallel.unreplicate_to_host(_step(0.0)(parallel.replicate(plain), batch, rng))
  for k, v in flat(without.params).items():
    np.testing.assert_array_equal(flat(with_ema.params)[k], v, err_msg=k)
  new = flat({'params': with_ema.params, 'batch_stats': with_ema.batch_stats})
  for k, old in flat(variables).items():
    np.testing.assert_allclose(
      flat(with_ema.ema)[k], 0.9 * old + 0.1 * new[k], rtol=1e-6, atol=1e-7, err_msg=k
    )
  moved = [k for k in new if not np.allclose(new[k], flat(variables)[k])]
  assert any(k.startswith('params/') for k in moved) and any(
    k.startswith('batch_stats/') for k in moved
  )
  assert flat(ts.eval_variables(with_ema)) == flat(with_ema.ema)
  assert set(flat(ts.eval_variables(without))) == set(flat(variables))


def test_the_average_is_checkpointed_and_a_mismatched_resume_is_named(setup, tmp_path):
  config, model, variables, _ = setup
  state = ts.create_train_state(config, model, variables, lambda s: 0.1)
  tree = ts.to_state_dict(state)
  assert set(tree) == {'step', 'params', 'opt_state', 'batch_stats', 'ema'}
  doubled = jax.tree_util.tree_map(lambda v: np.asarray(v) * 2, tree)
  back = ts.from_state_dict(state, doubled)
  for k, v in flat(state.ema).items():
    np.testing.assert_allclose(flat(back.ema)[k], 2 * np.asarray(v), err_msg=k)
  plain_cfg = tiny_config('/unused', **{'model.structure': STRUCTURE})
  plain = ts.create_train_state(plain_cfg, model, variables, lambda s: 0.1)
  card = {}
  with pytest.raises(ts.ResumeMismatchError, match='saved without the weight average'):
    ts.check_resumable(state, ts.to_state_dict(plain), card, workdir=str(tmp_path), checkpoint='c')
  with pytest.raises(ts.ResumeMismatchError, match='saved with the weight average'):
    ts.check_resumable(plain, tree, card, workdir=str(tmp_path), checkpoint='c')
  ts.check_resumable(state, tree, card, workdir=str(tmp_path), checkpoint='c')  # Fits.


@pytest.mark.parametrize('value', [1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(value):
  from zenfer_jax.config.validation import ConfigError, validate_config

  with pytest.raises(ConfigError, match='ema_decay'):
    validate_config(tiny_config('/unused', ema_decay=value))


@pytest.mark.slow
def test_a_run_evaluates_and_exports_the_average(tmp_path, digits_dir):
  overrides = {'ema_decay': 0.5, 'num_epochs': 2, 'eval_every_epochs': 2}
  workdir = tmp_path / 'run'
  loop.train_and_evaluate(tiny_config(digits_dir, **overrides), str(workdir))
  state, _ = latest_state(workdir)
  assert int(state['step']) == 6
  best, _ = model_directory.load_model_dir(str(workdir / workdir_lib.MODEL_BEST))
  # One evaluation, at the last step: the export is the average, not the trained weights.
  for k, v in flat(state['ema']).items():
    np.testing.assert_array_equal(flat(best)[k], v, err_msg=k)
  assert any(
    not np.allclose(flat(best)[f'params/{k}'], v) for k, v in flat(state['params']).items()
  )
  records = workdir_lib.read_metrics(str(workdir))
  loop.train_and_evaluate(tiny_config(digits_dir, **overrides), str(workdir))  # Resumes: done.
  assert workdir_lib.read_metrics(str(workdir)) == records
