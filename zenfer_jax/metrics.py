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


def summarize(confusion: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """top1, mean_class_accuracy and per_class_accuracy (fractions in [0, 1]) of a confusion matrix.

  A class with no examples has no accuracy (NaN in `per_class_accuracy` is avoided: it is
  reported as None) and is left out of the mean, as scikit-learn's balanced accuracy does.
  """
  cm = np.asarray(confusion, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'Expected a square confusion matrix, got shape {cm.shape}.')
  support = cm.sum(axis=1)
  total = int(support.sum())
  correct = np.diag(cm)
  per_class = [float(c) / float(s) if s else None for c, s in zip(correct, support)]
  present = [p for p in per_class if p is not None]
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
  if len(names) != len(cm):
    raise ValueError(f'{len(names)} class names for a {len(cm)}-class confusion matrix.')
  return {
    'top1': float(correct.sum()) / total if total else 0.0,
    'mean_class_accuracy': float(np.mean(present)) if present else 0.0,
    'per_class_accuracy': dict(zip(names, per_class)),
    'num_examples': total,
  }
