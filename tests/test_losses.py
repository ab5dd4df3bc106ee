"""Label smoothing, mixup and the soft-target loss against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zenfer_jax.training import losses


def test_smooth_one_hot_values():
  t = np.asarray(losses.smooth_one_hot(jnp.array([2, 0]), 4, 0.1))
  on, off = 1 - 0.1 + 0.1 / 4, 0.1 / 4
  np.testing.assert_allclose(t[0], [off, off, on, off], rtol=1e-6)
  np.testing.assert_allclose(t[1], [on, off, off, off], rtol=1e-6)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)


def test_no_smoothing_is_one_hot():
  t = np.asarray(losses.smooth_one_hot(jnp.array([1]), 3, 0.0))
  np.testing.assert_array_equal(t, [[0, 1, 0]])


def test_mixup_mixes_images_and_targets_with_one_lambda():
  lam_key, perm_key = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
  images = jnp.arange(4 * 2 * 2 * 3, dtype=jnp.float32).reshape(4, 2, 2, 3)
  targets = losses.smooth_one_hot(jnp.array([0, 1, 2, 3]), 4, 0.1)
  mixed_x, mixed_t = losses.mixup(lam_key, perm_key, images, targets, 0.2)
  lam = float(jax.random.beta(lam_key, 0.2, 0.2))
  perm = np.asarray(jax.random.permutation(perm_key, 4))
  np.testing.assert_allclose(
    mixed_x, lam * images + (1 - lam) * np.asarray(images)[perm], rtol=1e-5
  )
  np.testing.assert_allclose(
    mixed_t, lam * targets + (1 - lam) * np.asarray(targets)[perm], rtol=1e-5
  )
  np.testing.assert_allclose(np.asarray(mixed_t).sum(-1), 1.0, rtol=1e-5)
  assert 0.0 <= lam <= 1.0


def test_beta_lambda_is_mostly_near_the_ends():
  # Beta(0.2, 0.2) is U-shaped: most draws are close to 0 or 1, as mixup intends.
  lams = jax.random.beta(jax.random.PRNGKey(0), 0.2, 0.2, (2000,))
  near_ends = np.mean((np.asarray(lams) < 0.1) | (np.asarray(lams) > 0.9))
  assert near_ends > 0.5


def test_soft_cross_entropy_matches_hand_computation():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
  targets = jnp.array([[0.8, 0.1, 0.1], [0.0, 1.0, 0.0]])
  logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  expected = float(-(targets * logp).sum(-1).mean())
  assert float(losses.soft_cross_entropy(logits, targets)) == pytest.approx(expected, rel=1e-6)
  assert float(losses.soft_cross_entropy(logits[1:], targets[1:])) == pytest.approx(
    np.log(3), rel=1e-6
  )


def test_soft_cross_entropy_equals_torch_reference_formula():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32)
  targets = rng.dirichlet(np.ones(7), size=5).astype(np.float32)
  ref = -(torch.tensor(targets) * torch.log_softmax(torch.tensor(logits), 1)).sum(1).mean()
  assert float(losses.soft_cross_entropy(jnp.array(logits), jnp.array(targets))) == pytest.approx(
    float(ref), rel=1e-5
  )


def _hand_smooth_one_hot(labels, num_classes, eps):
  on, off = 1.0 - eps + eps / num_classes, eps / num_classes
  return np.where(np.eye(num_classes)[labels] > 0, on, off).astype(np.float32)


def _hand_soft_cross_entropy(logits, targets):
  shifted = np.asarray(logits, np.float64) - np.max(logits, -1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(-(targets * logp).sum(-1).mean())


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.3])
def test_optax_loss_equals_the_hand_written_one(eps):
  # smooth_one_hot and soft_cross_entropy are optax's; the formulas they replaced, within 1e-6.
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 7, size=16)
  logits = rng.normal(scale=3.0, size=(16, 7)).astype(np.float32)
  targets = np.asarray(losses.smooth_one_hot(jnp.asarray(labels), 7, eps))
  np.testing.assert_allclose(targets, _hand_smooth_one_hot(labels, 7, eps), atol=1e-6)
  got = float(losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
  assert got == pytest.approx(_hand_soft_cross_entropy(logits, targets), abs=1e-6)
