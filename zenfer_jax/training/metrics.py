"""Classification metrics from a confusion matrix.

Evaluation accumulates one confusion matrix on device (padding masked out), so every number
reported (top-1, mean class accuracy, per-class accuracy) is exact over the split and comes
from a single host transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(
  labels: jax.Array, preds: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
  """int32 [K, K] counts; row = true class, column = predicted class; masked examples ignored."""
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  if mask is not None:
    true = true * mask.astype(jnp.int32)[:, None]
  pred = jax.nn.one_hot(preds, num_classes, dtype=jnp.int32)
  return jnp.einsum('ni,nj->ij', true, pred, preferred_element_type=jnp.int32)


def class_counts(
  labels: jax.Array, preds: jax.Array, num_classes: int, mask: jax.Array | None = None
) -> jax.Array:
  """int32 [K, 2]: per true class, (examples, correctly predicted); masked examples ignored.

  What `summarize_counts` needs, in K x 2 instead of K x K: with thousands of classes (face
  identities) a confusion matrix per batch would be hundreds of megabytes to reduce.
  """
  true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
  if mask is not None:
    true = true * mask.astype(jnp.int32)[:, None]
  hit = (preds == labels).astype(jnp.int32)[:, None]
  return jnp.stack([true.sum(0), (true * hit).sum(0)], axis=-1)


def summarize(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """top1, mean_class_accuracy and per_class_accuracy (fractions in [0, 1]) of a confusion matrix.

  A class with no examples has no accuracy (NaN in `per_class_accuracy` is avoided: it is
  reported as None) and is left out of the mean, as scikit-learn's balanced accuracy does.
  """
  cm = np.asarray(confusion, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'Expected a square confusion matrix, got shape {cm.shape}.')
  return _summary(cm.sum(axis=1), np.diag(cm), class_names)


def summarize_counts(counts: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
  """`summarize` from `class_counts` ([K, 2]: examples, correct per class); the same numbers."""
  counts = np.asarray(counts, np.int64)
  if counts.ndim != 2 or counts.shape[1] != 2:
    raise ValueError(f'Expected per-class counts of shape [K, 2], got {counts.shape}.')
  return _summary(counts[:, 0], counts[:, 1], class_names)


def _summary(support: np.ndarray, correct: np.ndarray, class_names) -> dict[str, Any]:
  total = int(support.sum())
  per_class = [float(c) / float(s) if s else None for c, s in zip(correct, support)]
  present = [p for p in per_class if p is not None]
  k = len(support)
  names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f'{len(names)} class names for a {k}-class confusion matrix.')
  return {
    'top1': float(correct.sum()) / total if total else 0.0,
    'mean_class_accuracy': float(np.mean(present)) if present else 0.0,
    'per_class_accuracy': dict(zip(names, per_class)),
    'num_examples': total,
  }
