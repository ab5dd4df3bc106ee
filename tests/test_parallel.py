"""zenfer_jax.training.parallel: the one place per-device steps become pmaps, and its host side."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import REPO, subprocess_env

from zenfer_jax.training import parallel


def _step(state, batch, rng):
  """A per-device step: uses the axis name, returns a new state, a reduced metric and the rng."""
  new = jax.tree_util.tree_map(lambda x: x + jnp.sum(batch), state)
  return new, {'total': jax.lax.psum(jnp.sum(batch), parallel.AXIS_NAME), 'rng': rng}


def test_replicate_places_one_copy_per_device_as_the_steps_place_their_outputs():
  n = jax.local_device_count()
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': np.int32(4)}
  replicated = parallel.replicate(tree)
  assert replicated['w'].shape == (n, 2, 3) and replicated['step'].shape == (n,)
  for i in range(n):
    np.testing.assert_array_equal(np.asarray(replicated['w'])[i], tree['w'])

  new, _ = parallel.pmap_train_step(_step)(
    parallel.replicate(tree), np.ones((n, 2), np.float32), jax.random.PRNGKey(0)
  )
  # Same sharding in and out: the second call of a mapped step does not compile again.
  assert new['w'].sharding == replicated['w'].sharding


def test_train_step_donates_the_state_and_shares_the_rng():
  n = jax.local_device_count()
  state = parallel.replicate({'w': np.zeros(3, np.float32)})
  batch = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  rng = jax.random.PRNGKey(5)
  new, metrics = parallel.pmap_train_step(_step)(state, batch, rng)
  assert state['w'].is_deleted()  # Donated: the old state's memory is reused.
  host = parallel.unreplicate_to_host((new, metrics))
  np.testing.assert_array_equal(host[0]['w'], np.full(3, batch[0].sum()))
  assert host[1]['total'] == batch.sum()  # psum over every device.
  np.testing.assert_array_equal(host[1]['rng'], np.asarray(rng))  # in_axes None: not split.


def test_eval_step_keeps_its_inputs():
  n = jax.local_device_count()
  variables = parallel.replicate({'w': np.ones(3, np.float32)})
  p_eval = parallel.pmap_eval_step(
    lambda v, b: jax.lax.psum(jnp.sum(v['w']) * jnp.sum(b), parallel.AXIS_NAME)
  )
  out = p_eval(variables, np.ones((n, 4), np.float32))
  assert not variables['w'].is_deleted()  # The model lives on for the next batch.
  assert parallel.unreplicate_to_host(out) == 3 * 4 * n


def test_unreplicate_to_host_gives_numpy_of_the_first_replica():
  host = parallel.unreplicate_to_host({'a': parallel.replicate(np.float32(2.5)), 'b': np.arange(3)})
  assert isinstance(host['a'], (np.ndarray, np.generic)) and not isinstance(host['a'], jax.Array)
  assert host['a'] == 2.5
  assert host['b'] == 0  # A host array: its first row.


MULTI_DEVICE = textwrap.dedent(
  """
  import jax, numpy as np
  from zenfer_jax.training import parallel
  assert jax.local_device_count() == 4
  state = parallel.replicate({'w': np.zeros(2, np.float32)})
  def step(s, b, r):
    i = jax.lax.axis_index(parallel.AXIS_NAME)
    per_device = jax.tree_util.tree_map(lambda x: x + i, s)  # Replicas differ on purpose.
    return per_device, {'mean': jax.lax.pmean(b.sum(), parallel.AXIS_NAME)}
  batch = np.arange(8, dtype=np.float32).reshape(4, 2)
  new, m = parallel.pmap_train_step(step)(state, batch, jax.random.PRNGKey(0))
  host = parallel.unreplicate_to_host((new, m))
  print('first', host[0]['w'].tolist(), 'mean', float(host[1]['mean']), 'shape', new['w'].shape)
  """
)


@pytest.mark.slow
def test_four_devices_reduce_over_all_and_the_host_reads_the_first():
  proc = subprocess.run(
    [sys.executable, '-c', MULTI_DEVICE],
    cwd=REPO,
    env=subprocess_env(devices=4),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Device 0 added 0; the pmean of per-device sums 1, 5, 9, 13 is 7.
  assert 'first [0.0, 0.0] mean 7.0 shape (4, 2)' in proc.stdout
