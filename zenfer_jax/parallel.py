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

AXIS_NAME = 'batch'


def pmap_train_step(step_fn: Callable) -> Callable:
  """step_fn(state, batch, rng) -> (state, metrics), mapped; the state is donated."""
  return jax.pmap(step_fn, axis_name=AXIS_NAME, in_axes=(0, 0, None), donate_argnums=(0,))


def pmap_eval_step(step_fn: Callable) -> Callable:
  """step_fn(state, batch) -> outputs, mapped (nothing donated: the state lives on)."""
  return jax.pmap(step_fn, axis_name=AXIS_NAME)


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
