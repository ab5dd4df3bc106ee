"""The per-device train and eval steps: pure functions of (state, batch[, rng]).

They run under `zenfer_jax.training.parallel`'s pmap and use its `AXIS_NAME` for every collective.
Hyperparameters arrive as keyword arguments bound with functools.partial, so nothing here
reads a config and a recompilation can only come from a new shape. `evaluate_split` is the
host loop around the mapped eval step, shared by training and `zenfer_jax.deploy.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from zenfer_jax.training import losses, metrics
from zenfer_jax.training.parallel import AXIS_NAME, unreplicate_to_host
from zenfer_jax.training.train_state import TrainState


def train_step(
  state: TrainState,
  batch: dict,
  rng: jax.Array,
  *,
  num_classes: int,
  label_smoothing: float,
  mixup_alpha: float,
  learning_rate_fn,
  teacher_apply_fn=None,
  distill_weight: float = 0.0,
  distill_temperature: float = 1.0,
  ema_decay: float = 0.0,
) -> tuple[TrainState, dict]:
  """One SGD step on this device's shard; gradients averaged over all devices.

  rng is the same on every device: folded with the step it gives one mixup lambda for the whole
  global batch; folded further with the device index it gives each shard its own partners.
  With `distill_weight` > 0 the teacher (`state.teacher`, applied in inference mode to the same,
  mixed images) gives the distillation term, weighted `distill_weight` against the
  cross-entropy's 1 - `distill_weight`. With `ema_decay` > 0 the moving average of the weights
  and batch statistics (`state.ema`) moves towards the updated ones by 1 - `ema_decay`.
  """
  images, labels = batch['image'], batch['label']
  targets = losses.smooth_one_hot(labels, num_classes, label_smoothing)
  if mixup_alpha > 0:
    rng = jax.random.fold_in(rng, state.step)
    lam_key, perm_key = jax.random.split(rng)
    perm_key = jax.random.fold_in(perm_key, lax.axis_index(AXIS_NAME))
    images, targets = losses.mixup(lam_key, perm_key, images, targets, mixup_alpha)
  distill = distill_weight > 0
  if distill:
    teacher_logits = lax.stop_gradient(teacher_apply_fn(state.teacher, images, train=False))

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      images,
      train=True,
      mutable=['batch_stats'],
    )
    loss = losses.soft_cross_entropy(logits, targets)
    parts = {}
    if distill:
      parts['distill_loss'] = losses.distillation(logits, teacher_logits, distill_temperature)
      loss = (1.0 - distill_weight) * loss + distill_weight * parts['distill_loss']
    return loss, (logits, updates['batch_stats'], parts)

  (loss, (logits, batch_stats, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  grads = lax.pmean(grads, AXIS_NAME)
  # Running averages are linear in the batch statistics, so averaging them every step equals
  # averaging per-device running averages at the end; it keeps the replicas identical.
  batch_stats = lax.pmean(batch_stats, AXIS_NAME)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if ema_decay > 0:
    current = {'params': new_state.params, 'batch_stats': new_state.batch_stats}
    new_state = new_state.replace(
      ema=optax.incremental_update(current, state.ema, step_size=1.0 - ema_decay)
    )
  step_metrics = {
    'loss': lax.pmean(loss, AXIS_NAME),
    'accuracy': lax.pmean(jnp.mean(jnp.argmax(logits, -1) == labels), AXIS_NAME),
    'learning_rate': learning_rate_fn(state.step),
    'grad_norm': optax.global_norm(grads),
    **{k: lax.pmean(v, AXIS_NAME) for k, v in parts.items()},
  }
  return new_state, step_metrics


def eval_step(variables: dict, batch: dict, *, apply_fn, num_classes: int) -> jax.Array:
  """The confusion matrix of this global batch (padding masked out), summed over devices."""
  logits = apply_fn(variables, batch['image'], train=False)
  preds = jnp.argmax(logits, axis=-1)
  cm = metrics.confusion_matrix(batch['label'], preds, num_classes, batch['mask'])
  return lax.psum(cm, AXIS_NAME)


def eval_counts_step(variables: dict, batch: dict, *, apply_fn, num_classes: int) -> jax.Array:
  """Per-class (examples, correct) of this global batch, summed over devices: `eval_step` for
  thousands of classes, where a confusion matrix is too large to reduce every batch."""
  logits = apply_fn(variables, batch['image'], train=False)
  preds = jnp.argmax(logits, axis=-1)
  return lax.psum(
    metrics.class_counts(batch['label'], preds, num_classes, batch['mask']), AXIS_NAME
  )


def evaluate_split(
  p_eval: Callable, variables: dict, batches: Iterable[dict], num_classes: int
) -> np.ndarray:
  """The confusion matrix over every example of an eval dataset.

  `p_eval` is `eval_step` mapped by `zenfer_jax.training.parallel.pmap_eval_step`; `variables` are
  replicated. The sum stays on the devices and crosses to the host once, at the end.
  """
  total = None
  for batch in batches:
    cm = p_eval(variables, batch)
    total = cm if total is None else total + cm
  if total is None:
    return np.zeros((num_classes, num_classes), np.int64)
  return unreplicate_to_host(total).astype(np.int64)
