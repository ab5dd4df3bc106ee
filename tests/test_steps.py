"""zenfer_jax.training.steps: the per-device train and eval steps under pmap, and the eval loop."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest
from train_fixtures import flat, tiny_config

from zenfer_jax.training import init, losses, parallel, steps
from zenfer_jax.training import train_state as ts

# Conv blocks only (each with BatchNorm): compiles in seconds, and has batch statistics to update.
STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperConvK3BNRELU(8,16,2,1)'
NUM_CLASSES = 10
SMOOTHING = 0.1
PER_DEVICE = 8


def lr_fn(step):
  return 0.05 * (step + 1)


@pytest.fixture(scope='module')
def setup():
  config = tiny_config('/unused', **{'model.structure': STRUCTURE, 'model.use_sa': False})
  model = init.build_model(config, NUM_CLASSES)
  variables = init.initial_variables(config, model, jax.random.PRNGKey(0))
  state = ts.create_train_state(config, model, variables, lr_fn)
  n = jax.local_device_count()
  rng = np.random.default_rng(0)
  batch = {
    'image': rng.normal(size=(n, PER_DEVICE, 16, 16, 3)).astype(np.float32),
    'label': rng.integers(0, NUM_CLASSES, (n, PER_DEVICE)).astype(np.int32),
  }
  return model, variables, state, batch


def _p_train(mixup_alpha: float):
  return parallel.pmap_train_step(
    functools.partial(
      steps.train_step,
      num_classes=NUM_CLASSES,
      label_smoothing=SMOOTHING,
      mixup_alpha=mixup_alpha,
      learning_rate_fn=lr_fn,
    )
  )


def test_train_step_is_one_sgd_step_on_the_global_batch(setup):
  """Without mixup: loss, gradients and batch statistics are the means over the device shards."""
  model, _, state, batch = setup
  new_state, m = _p_train(0.0)(parallel.replicate(state), batch, jax.random.PRNGKey(3))
  new_state, m = parallel.unreplicate_to_host((new_state, m))

  def loss_fn(params, images, labels):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      images,
      train=True,
      mutable=['batch_stats'],
    )
    targets = losses.smooth_one_hot(labels, NUM_CLASSES, SMOOTHING)
    return losses.soft_cross_entropy(logits, targets), (logits, updates['batch_stats'])

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  shards = [grad_fn(state.params, x, y) for x, y in zip(batch['image'], batch['label'])]
  mean = lambda *xs: sum(xs) / len(xs)  # noqa: E731
  loss = mean(*[s[0][0] for s in shards])
  grads = jax.tree_util.tree_map(mean, *[s[1] for s in shards])
  batch_stats = jax.tree_util.tree_map(mean, *[s[0][1][1] for s in shards])
  accuracy = np.mean(
    [np.argmax(s[0][1][0], -1) == y for s, y in zip(shards, batch['label'])], dtype=np.float64
  )
  expected = jax.jit(lambda s, g, b: s.apply_gradients(grads=g, batch_stats=b))(
    state, grads, batch_stats
  )

  assert float(m['loss']) == pytest.approx(float(loss), rel=1e-5)
  assert float(m['accuracy']) == pytest.approx(accuracy, abs=1e-6)
  assert float(m['learning_rate']) == pytest.approx(lr_fn(0))  # The rate of the step taken.
  assert float(m['grad_norm']) == pytest.approx(float(optax.global_norm(grads)), rel=1e-4)
  assert int(new_state.step) == 1
  for name, tree in (('params', expected.params), ('batch_stats', expected.batch_stats)):
    got = flat(getattr(new_state, name))
    for k, v in flat(jax.device_get(tree)).items():
      np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-6, err_msg=f'{name}/{k}')
  moved = flat(new_state.batch_stats)
  assert any(not np.allclose(v, moved[k]) for k, v in flat(state.batch_stats).items())


def test_mixup_is_drawn_from_the_rng_and_the_step(setup):
  _, _, state, batch = setup
  p_train = _p_train(0.2)
  rng = jax.random.PRNGKey(3)

  def loss(step: int) -> float:
    _, m = p_train(parallel.replicate(state.replace(step=step)), batch, rng)
    return float(parallel.unreplicate_to_host(m)['loss'])

  plain = _p_train(0.0)(parallel.replicate(state), batch, rng)[1]
  assert loss(0) == loss(0)  # Same rng, same step: the same mixup.
  assert loss(0) != loss(1)  # The step is folded into the rng: each step mixes anew.
  assert loss(0) != float(parallel.unreplicate_to_host(plain)['loss'])


def test_eval_step_counts_every_unmasked_example_once(setup):
  model, variables, _, batch = setup
  n = jax.local_device_count()
  mask = np.ones((n, PER_DEVICE), np.float32)
  mask[:, -3:] = 0  # Padding at the end of the split; its labels must not count.
  eval_batch = dict(batch, mask=mask, label=np.where(mask > 0, batch['label'], NUM_CLASSES - 1))
  p_eval = parallel.pmap_eval_step(
    functools.partial(steps.eval_step, apply_fn=model.apply, num_classes=NUM_CLASSES)
  )
  replicated = parallel.replicate(variables)
  cm = parallel.unreplicate_to_host(p_eval(replicated, eval_batch))

  logits = model.apply(variables, batch['image'].reshape(-1, 16, 16, 3), train=False)
  preds, labels = np.argmax(logits, -1), batch['label'].reshape(-1)
  expected = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  np.add.at(expected, (labels[mask.reshape(-1) > 0], preds[mask.reshape(-1) > 0]), 1)
  np.testing.assert_array_equal(cm, expected)
  assert cm.sum() == n * (PER_DEVICE - 3)

  # evaluate_split: the sum over batches, fetched once; an empty split is all zeros.
  total = steps.evaluate_split(p_eval, replicated, [eval_batch, eval_batch], NUM_CLASSES)
  assert total.dtype == np.int64
  np.testing.assert_array_equal(total, 2 * expected)
  empty = steps.evaluate_split(p_eval, replicated, [], NUM_CLASSES)
  np.testing.assert_array_equal(empty, np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
