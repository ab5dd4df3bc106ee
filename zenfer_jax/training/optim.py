"""The reference optimizer: Nesterov SGD, masked weight decay, per-sample warmup + cosine.

The reference's learning rate is a function of the number of training samples seen (it steps
its scheduler by the batch size before every update, and restarts each epoch's count at
epoch * num_train_samples). `learning_rate_fn` is that same function evaluated at each step's
sample count, so the two agree step for step; `reference_lr` is the formula itself, in plain
Python, for tests and for reading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import flax
import jax.numpy as jnp
import ml_collections
import optax

# Parameters that get weight decay: conv and linear kernels (the reference decays the `weight`
# of nn.Conv2d and nn.Linear only; biases, BatchNorm, SA and lw_att scalars get none).
DECAYED_LEAF = 'kernel'
# With freeze_backbone only the classifier trains (the reference leaves only fc_linear with
# requires_grad); BatchNorm running statistics still update, as in its train mode.
TRAINABLE_WHEN_FROZEN = re.compile(r'^fc/')


def reference_lr(
  samples_seen: int,
  *,
  lr: float,
  target_lr: float,
  num_train: int,
  num_epochs: int,
  warmup_epochs: int,
) -> float:
  """The reference scheduler's rate after `samples_seen` samples (cosine mode)."""
  stop = num_train * num_epochs
  warmup = num_train * warmup_epochs
  if samples_seen < warmup:
    return (samples_seen + 1) / warmup * lr
  ratio = (samples_seen - warmup + 1) / (stop - warmup)
  return lr + (target_lr - lr) * (1.0 - math.cos(math.pi * ratio)) / 2.0


def samples_seen(step, *, steps_per_epoch: int, global_batch: int, num_train: int):
  """Samples the reference's scheduler has counted when it sets the rate for `step` (0-based)."""
  epoch = step // steps_per_epoch
  return epoch * num_train + (step - epoch * steps_per_epoch + 1) * global_batch


def learning_rate_fn(
  *,
  lr: float,
  target_lr: float,
  num_train: int,
  num_epochs: int,
  warmup_epochs: int,
  steps_per_epoch: int,
  global_batch: int,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """An optax schedule (step -> rate) equal to `reference_lr` at every step's sample count."""
  stop = float(num_train * num_epochs)
  warmup = float(num_train * warmup_epochs)

  def schedule(step):
    n = samples_seen(
      jnp.asarray(step, jnp.int32),
      steps_per_epoch=steps_per_epoch,
      global_batch=global_batch,
      num_train=num_train,
    ).astype(jnp.float32)
    warm = (n + 1.0) / max(warmup, 1.0) * lr
    ratio = (n - warmup + 1.0) / (stop - warmup)
    # The reference's lr + (target - lr) * (1 - cos) / 2, written so float32 keeps its
    # precision near the end, where the rate approaches the target.
    cosine = target_lr + (lr - target_lr) * (1.0 + jnp.cos(jnp.pi * ratio)) / 2.0
    return jnp.where(n < warmup, warm, cosine)

  return schedule


def _paths(params) -> dict:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  return flat


def weight_decay_mask(params):
  """True for conv and linear kernels, False for everything else (same tree as `params`)."""
  flat = {k: k.rsplit('/', 1)[-1] == DECAYED_LEAF for k in _paths(params)}
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def trainable_labels(params, freeze_backbone: bool):
  """'train' or 'frozen' per leaf, for optax.multi_transform."""
  flat = {
    k: 'train' if not freeze_backbone or TRAINABLE_WHEN_FROZEN.match(k) else 'frozen'
    for k in _paths(params)
  }
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def make_optimizer(
  config: ml_collections.ConfigDict, params, schedule
) -> optax.GradientTransformation:
  """SGD as torch.optim.SGD does it: decay added to the gradient, then (Nesterov) momentum."""
  tx = optax.chain(
    optax.masked(optax.add_decayed_weights(config.weight_decay), weight_decay_mask(params)),
    optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
  )
  if config.freeze_backbone:
    tx = optax.multi_transform(
      {'train': tx, 'frozen': optax.set_to_zero()}, trainable_labels(params, True)
    )
  return tx


def steps_per_epoch(num_train: int, global_batch: int, override: int = -1) -> int:
  """Whole batches per epoch (the stream drops nothing; an epoch is a count of steps)."""
  if override > 0:
    return override
  steps = num_train // global_batch
  if steps < 1:
    raise ValueError(
      f'The training split has {num_train} examples, fewer than one global batch '
      f'of {global_batch}; lower batch_size.'
    )
  return steps
