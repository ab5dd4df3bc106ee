"""Precise BatchNorm: population statistics recomputed over training batches before evaluation.

Evaluation normalises with BatchNorm's running averages. With the reference's momentum (PyTorch
0.01, 0.99 here) they forget their initial values (mean 0, variance 1) and the statistics of the
early, long-gone weights only after several hundred steps: 0.99^80 = 0.45, so after 80 steps
almost half of every running value is still the initialisation. A small dataset trained for
a few epochs then evaluates at chance level although its weights have learnt the task. The
remedy (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) is to recompute each layer's
statistics with the final weights over a number of training batches, in training mode (each
layer sees its input normalised by the batch, exactly as during training), and to pool them.

Pooling is exact for equal batches: the population mean is the mean of the batch means, the
population variance the mean of the batch variances plus the variance of the batch means.
The recomputed statistics are used for evaluation and for the exported best model; the training
state keeps its running averages, so training and resumption are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax import lax

from zenfer_jax import data
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.model.layers.batchnorm import BatchNorm
from zenfer_jax.training import parallel

__all__ = ['pmap_batch_moments', 'recompute_batch_stats']


def batch_moments(variables: dict, images: jax.Array, *, apply_fn: Callable) -> dict:
  """Per BatchNorm layer (by module path): the batch's mean, variance and squared mean.

  Runs the model in training mode on this device's batch and records each BatchNorm's input as
  it arrives; averaged over devices (equal shards), so every device returns the same values.
  """
  found: dict[tuple[str, ...], tuple[jax.Array, jax.Array]] = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm) and context.method_name == '__call__':
      x = args[0].astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      found[context.module.path] = (mean, jnp.mean(jnp.square(x - mean), axes))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    apply_fn(variables, images, train=True, mutable=['batch_stats'])
  return {
    '/'.join(path): {
      'mean': lax.pmean(m, parallel.AXIS_NAME),
      'var': lax.pmean(v, parallel.AXIS_NAME),
      'mean_sq': lax.pmean(m * m, parallel.AXIS_NAME),
    }
    for path, (m, v) in found.items()
  }


def pmap_batch_moments(apply_fn: Callable) -> Callable:
  """`batch_moments` mapped over the local devices: (replicated variables, [devices, b, ...])."""
  return parallel.pmap_eval_step(lambda v, x: batch_moments(v, x, apply_fn=apply_fn))


def recompute_batch_stats(
  p_moments: Callable, variables: dict, batches: Iterable[dict], batch_stats: dict
) -> tuple[dict, int]:
  """Population statistics of every BatchNorm layer over `batches`, as a host `batch_stats` tree.

  `variables` are replicated (as the train loop holds them); `batch_stats` (host, same tree) says
  which layers to fill. Returns the new tree and the number of batches used. Sums run in float64
  on the host: a few hundred vectors of at most a few thousand channels.
  """
  sums: dict[str, dict[str, np.ndarray]] | None = None
  count = 0
  for batch in batches:
    moments = parallel.unreplicate_to_host(p_moments(variables, batch['image']))
    if sums is None:
      sums = {
        k: {s: np.zeros(np.shape(a), np.float64) for s, a in v.items()} for k, v in moments.items()
      }
    for k, v in moments.items():
      for s, a in v.items():
        sums[k][s] += np.asarray(a, np.float64)
    count += 1
  if not count:
    raise ValueError('precise BatchNorm got no training batches to recompute statistics from')
  flat = traverse_util.flatten_dict(jax.device_get(batch_stats), sep='/')
  layers = {k.rsplit('/', 1)[0] for k in flat}
  missing = sorted(layers - set(sums))
  if missing:
    raise ValueError(f'precise BatchNorm saw no input for the BatchNorm layers {missing}')
  out: dict[str, Any] = {}
  for layer in layers:
    mean = sums[layer]['mean'] / count
    var = sums[layer]['var'] / count + np.maximum(sums[layer]['mean_sq'] / count - mean**2, 0.0)
    out[f'{layer}/mean'] = mean.astype(np.float32)
    out[f'{layer}/var'] = var.astype(np.float32)
  return traverse_util.unflatten_dict(out, sep='/'), count


def for_training(
  config, apply_fn: Callable, num_train: int, spec: DataSpec
) -> Callable[[dict], dict] | None:
  """The train loop's hook: replicated eval variables -> the same with recomputed statistics.

  None when `config.precise_bn_batches` is 0. Uses the training batch size per device (batch
  statistics depend on it) and at most one pass over the training split; `spec` is the train
  loop's `DataSpec`.
  """
  wanted = int(config.get('precise_bn_batches', 0))
  if wanted <= 0:
    return None
  num_batches = max(1, min(wanted, num_train // config.batch_size))
  p_moments = pmap_batch_moments(apply_fn)

  if config.data.get('loader', 'tf.data') == 'grain':
    from zenfer_jax.data import grain_pipeline  # Only a Grain run pays for importing Grain.

    statistics = functools.partial(
      grain_pipeline.statistics_batches, threads=config.data.grain_threads
    )
  else:
    statistics = data.pipeline.statistics_dataset

  def recompute(variables: dict) -> dict:
    batches = statistics(spec, num_batches)
    stats, used = recompute_batch_stats(
      p_moments, variables, batches, parallel.unreplicate_to_host(variables['batch_stats'])
    )
    logging.info(
      'Precise BN: BatchNorm statistics recomputed over %d training batches of %d images '
      '(config.precise_bn_batches=%d) for evaluation and the exported model; training keeps its '
      'running averages.',
      used,
      config.batch_size,
      wanted,
    )
    return {'params': variables['params'], 'batch_stats': parallel.replicate(stats)}

  return recompute
