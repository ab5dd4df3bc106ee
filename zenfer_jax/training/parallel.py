"""Data parallelism: the one place where per-device step functions become `jax.pmap`s.

Step functions are written for one device and use `AXIS_NAME` for their collectives (gradient
pmean, cross-device BatchNorm, metric reductions); the wrappers here map them over every local
device. Under multi-host training `pmap` spans all processes' devices, so the same collectives
reduce over the whole job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from zenfer_jax.training import distributed

AXIS_NAME = 'batch'


def pmap_train_step(step_fn: Callable) -> Callable:
  """step_fn(state, batch, rng) -> (state, metrics), mapped; the state is donated."""
  mapped = jax.pmap(step_fn, axis_name=AXIS_NAME, in_axes=(0, 0, None), donate_argnums=(0,))
  return _aligned(mapped, 'train_step')


def pmap_eval_step(step_fn: Callable) -> Callable:
  """step_fn(state, batch) -> outputs, mapped (nothing donated: the state lives on)."""
  return _aligned(jax.pmap(step_fn, axis_name=AXIS_NAME), 'eval_step')


def _signature(args) -> tuple:
  leaves, tree = jax.tree_util.tree_flatten(args)
  return tree, tuple((np.shape(x), str(getattr(x, 'dtype', type(x)))) for x in leaves)


def _aligned(mapped: Callable, name: str) -> Callable:
  """`mapped`, whose first call per argument shapes in a multi-process job starts together.

  A new executable's first collective sets up a gloo (CPU) context, for which every process must
  arrive within 30 s. Processes that have drifted apart before it (unequal input start-up, files
  only process 0 writes, a loaded machine) first wait for each other at a barrier of the
  coordination service, which has no such limit. One process: `mapped` itself.
  """
  if jax.process_count() == 1:
    return mapped
  started: set = set()

  def call(*args):
    key = _signature(args)
    if key not in started:
      distributed.barrier(f'{name}_first_call')
      started.add(key)
    return mapped(*args)

  call.__wrapped__ = mapped
  return call


def _identity(x):
  return x


_p_identity = jax.pmap(_identity, axis_name=AXIS_NAME)


def replicate(tree: Any) -> Any:
  """One copy per local device, placed exactly as the mapped steps place their outputs.

  (flax.jax_utils.replicate gives a differently named sharding, which makes the first and the
  second call of a pmapped step compile separately.)
  """
  n = jax.local_device_count()
  stacked = jax.tree_util.tree_map(
    lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree
  )
  return _p_identity(stacked)


def _first_local(x) -> np.ndarray:
  if isinstance(x, jax.Array) and x.ndim >= 1:
    local = np.asarray(x.addressable_data(0))
    return local[0] if local.ndim == x.ndim else local
  return np.asarray(x)[0]


def unreplicate_to_host(tree: Any) -> Any:
  """This process's first replica of mapped values, as NumPy.

  For values whose replicas are identical: the state (gradients and batch statistics are
  averaged) and pmean'd or psum'd metrics. Under multi-host pmap an output spans devices of
  other processes, which cannot be read here, so every process reads its own first device.
  """
  return jax.tree_util.tree_map(_first_local, tree)
