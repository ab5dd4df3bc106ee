"""Confusion matrix and the metrics read from it, on fixed predictions with exact answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from zenfer_jax.training import metrics


def test_confusion_matrix_counts_and_mask():
  labels = jnp.array([0, 0, 1, 2, 2, 2, 1])
  preds = jnp.array([0, 1, 1, 2, 0, 2, 2])
  mask = jnp.array([True, True, True, True, True, True, False])
  cm = np.asarray(metrics.confusion_matrix(labels, preds, 3, mask))
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
  assert cm.dtype == np.int32


def test_summary_exact_values_from_fixed_logits():
  logits = jnp.array([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0], [0, 0, 5.0]])
  labels = jnp.array([0, 1, 0, 2, 2, 2])
  cm = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), 3)
  s = metrics.summarize(np.asarray(cm), ['a', 'b', 'c'])
  assert s['top1'] == pytest.approx(4 / 6)
  assert s['per_class_accuracy'] == pytest.approx({'a': 1 / 2, 'b': 1.0, 'c': 2 / 3})
  assert s['mean_class_accuracy'] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
  assert s['num_examples'] == 6


def test_class_without_examples_is_left_out_of_the_mean():
  cm = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 2]])
  s = metrics.summarize(cm)
  assert s['per_class_accuracy'] == {'0': 0.75, '1': None, '2': 1.0}
  assert s['mean_class_accuracy'] == pytest.approx((0.75 + 1.0) / 2)


def test_summary_agrees_with_sklearn():
  sk = pytest.importorskip('sklearn.metrics')
  rng = np.random.default_rng(1)
  y, p = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
  s = metrics.summarize(np.asarray(metrics.confusion_matrix(jnp.array(y), jnp.array(p), 5)))
  assert s['top1'] == pytest.approx(sk.accuracy_score(y, p))
  assert s['mean_class_accuracy'] == pytest.approx(sk.balanced_accuracy_score(y, p))
  np.testing.assert_array_equal(
    metrics.confusion_matrix(jnp.array(y), jnp.array(p), 5),
    sk.confusion_matrix(y, p, labels=range(5)),
  )


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match='square'):
    metrics.summarize(np.zeros((2, 3)))
  with pytest.raises(ValueError, match='2 class names'):
    metrics.summarize(np.eye(3), ['a', 'b'])


def test_class_counts_give_the_confusion_matrix_summary():
  """Thousands of classes are evaluated with per-class (examples, correct) counts: the same
  summary as the confusion matrix, masked examples ignored, from a K x 2 array."""
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, 40, 300))
  preds = jnp.where(
    jnp.asarray(rng.random(300) < 0.6), labels, jnp.asarray(rng.integers(0, 40, 300))
  )
  mask = jnp.asarray(rng.random(300) < 0.9)
  counts = np.asarray(metrics.class_counts(labels, preds, 40, mask))
  assert counts.shape == (40, 2) and counts.dtype == np.int32
  assert counts[:, 0].sum() == int(mask.sum())
  names = [f'n{i:06d}' for i in range(40)]
  expected = metrics.summarize(np.asarray(metrics.confusion_matrix(labels, preds, 40, mask)), names)
  assert metrics.summarize_counts(counts, names) == expected
  with pytest.raises(ValueError, match=r'\[K, 2\]'):
    metrics.summarize_counts(np.zeros((40, 40)), names)
