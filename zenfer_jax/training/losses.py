"""Training targets and loss: label smoothing, then mixup, then soft-target cross-entropy.

The reference builds smoothed one-hot targets first and mixes them afterwards, so a mixed
target is lam * smooth(y) + (1 - lam) * smooth(y[perm]); the loss is the cross-entropy against
that soft distribution, averaged over the batch. With a teacher (`config.distill_from`) a share
of the loss is the distillation term below instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smooth_one_hot(labels: jax.Array, num_classes: int, eps: float) -> jax.Array:
  """One-hot targets with label smoothing: on-class 1 - eps + eps/K, off-class eps/K."""
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), eps)


def mixup(
  lam_key: jax.Array, perm_key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
  """Mixes each example with a partner from a random permutation of the batch.

  One lambda ~ Beta(alpha, alpha) for the whole batch (`lam_key`); the permutation comes from
  `perm_key`, so under pmap the lambda can be shared while each device permutes its own shard.
  """
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, images.shape[0])
  mixed_images = lam * images + (1.0 - lam) * images[perm]
  mixed_targets = lam * targets + (1.0 - lam) * targets[perm]
  return mixed_images.astype(images.dtype), mixed_targets


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_k targets_k * log_softmax(logits)_k."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def distillation(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
  """Hinton et al.'s knowledge-distillation loss: T^2 * KL(teacher_T || student_T), batch mean.

  Both distributions are softened by the temperature T so that the teacher's ranking of the
  wrong classes (which faces a fear looks like) carries signal; the T^2 keeps the gradient's
  scale independent of T (its gradient is T * (softmax(s/T) - softmax(t/T)) / batch).
  """
  t = temperature
  target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / t)
  log_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
  return t * t * jnp.mean(optax.losses.kl_divergence(log_student, target))
