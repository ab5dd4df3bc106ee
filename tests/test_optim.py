"""The learning-rate schedule, the weight-decay mask and the SGD update against the reference."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from zenfer_jax.model import zennet
from zenfer_jax.training import optim

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


def reference_rates(*, lr, target_lr, num_train, num_epochs, warmup_epochs, batch, steps_per_epoch):
  """The reference's loop: a scheduler per epoch started at epoch * N, stepped by the batch size
  before each update, then asked for the cosine rate (global_utils.LearningRateScheduler)."""
  stop, warm = num_train * num_epochs, num_train * warmup_epochs
  rates = []
  for epoch in range(num_epochs):
    seen = epoch * num_train
    for _ in range(steps_per_epoch):
      seen += batch
      if seen < warm:
        rates.append((seen + 1) / warm * lr)
      else:
        ratio = (seen - warm + 1) / (stop - warm)
        rates.append(lr + (target_lr - lr) * (1 - math.cos(math.pi * ratio)) / 2)
  return np.array(rates)


@pytest.mark.parametrize(
  'num_train,batch,epochs,warmup', [(1437, 64, 6, 2), (12271, 64, 4, 1), (100, 32, 3, 0)]
)
def test_schedule_equals_reference_per_sample_formula(num_train, batch, epochs, warmup):
  spe = optim.steps_per_epoch(num_train, batch)
  lr = 0.1 * batch / 256
  fn = optim.learning_rate_fn(
    lr=lr,
    target_lr=0.0,
    num_train=num_train,
    num_epochs=epochs,
    warmup_epochs=warmup,
    steps_per_epoch=spe,
    global_batch=batch,
  )
  ours = np.asarray(jax.vmap(fn)(jnp.arange(spe * epochs)))
  ref = reference_rates(
    lr=lr,
    target_lr=0.0,
    num_train=num_train,
    num_epochs=epochs,
    warmup_epochs=warmup,
    batch=batch,
    steps_per_epoch=spe,
  )
  np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-9)
  for s in (0, spe - 1, spe, spe * epochs - 1):
    n = optim.samples_seen(s, steps_per_epoch=spe, global_batch=batch, num_train=num_train)
    assert float(fn(s)) == pytest.approx(
      optim.reference_lr(
        n, lr=lr, target_lr=0.0, num_train=num_train, num_epochs=epochs, warmup_epochs=warmup
      ),
      rel=2e-5,
      abs=1e-9,
    )


def test_schedule_shape_warmup_peak_and_end():
  fn = optim.learning_rate_fn(
    lr=0.025,
    target_lr=0.0,
    num_train=640,
    num_epochs=10,
    warmup_epochs=2,
    steps_per_epoch=10,
    global_batch=64,
  )
  rates = np.asarray(jax.vmap(fn)(jnp.arange(100)))
  assert np.all(np.diff(rates[:19]) > 0)  # Linear warmup.
  assert rates[19] == pytest.approx(0.025, rel=1e-3)
  assert np.all(np.diff(rates[20:]) < 0)  # Cosine down to the target.
  assert rates[-1] < 1e-5


def _tiny_params():
  model = zennet.build_model(TINY, 3, use_sa=True, use_lw_att=False)
  return zennet.init_variables(model, jax.random.PRNGKey(0), 16)['params']


def test_weight_decay_mask_selects_conv_and_linear_kernels_only():
  params = _tiny_params()
  mask = jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(params))[0]
  decayed = sorted(jax.tree_util.keystr(p) for p, m in mask if m)
  kept = sorted(jax.tree_util.keystr(p) for p, m in mask if not m)
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert "['fc']['kernel']" in decayed
  assert any("['proj_conv']['kernel']" in k for k in decayed)
  assert not any(k.endswith("['kernel']") for k in kept)
  for name in ("['bias']", "['scale']", "['cweight']", "['gn_scale']"):
    assert any(k.endswith(name) for k in kept), name


def _config(**kw):
  c = ml_collections.ConfigDict(
    {'weight_decay': 5e-4, 'momentum': 0.9, 'nesterov': True, 'freeze_backbone': False}
  )
  c.update(kw)
  return c


def test_sgd_update_equals_torch_sgd_with_split_weight_decay():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  params = {
    'conv1': {'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32)},
    'bn1': {
      'scale': rng.normal(size=(4,)).astype(np.float32),
      'bias': rng.normal(size=(4,)).astype(np.float32),
    },
    'fc': {
      'kernel': rng.normal(size=(4, 3)).astype(np.float32),
      'bias': rng.normal(size=(3,)).astype(np.float32),
    },
  }
  grads = [
    jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
    for _ in range(4)
  ]
  rates = [0.01, 0.02, 0.03, 0.025]
  tx = optim.make_optimizer(_config(), params, lambda step: jnp.asarray(rates)[step])
  state, p = tx.init(params), jax.tree_util.tree_map(jnp.asarray, params)
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = jax.tree_util.tree_map(lambda a, u: a + u, p, updates)

  flat = {
    f'{m}/{n}': torch.tensor(v.copy(), requires_grad=True)
    for m, d in params.items()
    for n, v in d.items()
  }
  decay = [flat['conv1/kernel'], flat['fc/kernel']]
  no_decay = [t for k, t in flat.items() if not k.endswith('kernel')]
  opt = torch.optim.SGD(
    [dict(params=decay), dict(params=no_decay, weight_decay=0)],
    lr=rates[0],
    momentum=0.9,
    weight_decay=5e-4,
    nesterov=True,
  )
  for g, lr in zip(grads, rates):
    for group in opt.param_groups:
      group['lr'] = lr
    for k, t in flat.items():
      m, n = k.split('/')
      t.grad = torch.tensor(g[m][n])
    opt.step()
  for k, t in flat.items():
    m, n = k.split('/')
    np.testing.assert_allclose(np.asarray(p[m][n]), t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_freeze_backbone_trains_only_the_classifier():
  params = _tiny_params()
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  tx = optim.make_optimizer(_config(freeze_backbone=True), params, lambda s: 0.1)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  for path, u in flat:
    key = jax.tree_util.keystr(path)
    if key.startswith("['fc']"):
      assert np.any(np.asarray(u) != 0), key
    else:
      assert np.all(np.asarray(u) == 0), key


def test_steps_per_epoch_refuses_a_split_smaller_than_a_batch():
  assert optim.steps_per_epoch(1437, 64) == 22
  assert optim.steps_per_epoch(1437, 64, override=5) == 5
  with pytest.raises(ValueError, match='fewer than one global batch'):
    optim.steps_per_epoch(10, 64)
