"""zenfer_jax.training.train_state: the optimizer's state and the checkpointed dict round trip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from train_fixtures import flat

# The shared fixtures config, model and fresh (imported as themselves: pytest finds them here).
from train_fixtures import tiny_config_fixture as tiny_config_fixture
from train_fixtures import tiny_model_fixture as tiny_model_fixture
from train_fixtures import tiny_variables_fixture as tiny_variables_fixture

from zenfer_jax.training import train_state as ts


def test_state_dict_round_trip_after_a_step(config, model, fresh):
  schedule = optax.constant_schedule(0.1)
  state = ts.create_train_state(config, model, fresh, schedule)
  assert int(state.step) == 0 and state.apply_fn == model.apply
  assert jax.tree_util.tree_structure(state.batch_stats) == jax.tree_util.tree_structure(
    fresh['batch_stats']
  )
  grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
  step = jax.jit(lambda s: s.apply_gradients(grads=grads))  # One compile, not one per leaf op.
  stepped = step(state)
  saved = ts.to_state_dict(stepped)
  assert set(saved) == {'step', 'params', 'opt_state', 'batch_stats'}

  restored = ts.from_state_dict(ts.create_train_state(config, model, fresh, schedule), saved)
  assert int(restored.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(stepped)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The momentum buffers came back too: a second step from the restored state is the same step.
  again, ref = step(restored), step(stepped)
  for k, v in flat(jax.device_get(ref.params)).items():
    np.testing.assert_array_equal(flat(jax.device_get(again.params))[k], v, err_msg=k)
