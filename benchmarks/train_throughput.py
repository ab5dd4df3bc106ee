"""Training-step throughput, JAX (Flax) and PyTorch (torch_port's reference model), same recipe.

One step on both sides is the full training step of the reference recipe:
label smoothing 0.1 -> mixup (alpha 0.2, one lambda per batch, a random permutation)
-> forward in train mode -> soft-target cross-entropy -> backward -> weight decay 5e-4 on
conv/linear kernels only -> SGD momentum 0.9 Nesterov update -> BatchNorm running statistics.

JAX: the step is one `jax.jit` with the state donated (`donate_argnums=0`); it reuses
`zenfer_jax.training.losses` and `zenfer_jax.training.optim.weight_decay_mask`. (The project's own
`zenfer_jax.training.steps.train_step` is written for `pmap` with collectives; on one device the
arithmetic is this same function.)
PyTorch: eager `torch.optim.SGD(nesterov=True)` with a parameter group for the decayed
weights, the same targets and loss; optionally `torch.compile(model)`.

A case object exposes `compile_seconds` (first call, reported on its own) and `run()` that
does `steps_per_rep` steps and blocks until they are finished.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

NUM_CLASSES = 7  # RAF-DB basic emotions
LABEL_SMOOTHING = 0.1
MIXUP_ALPHA = 0.2
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4

__all__ = ['synthetic_batch', 'JaxTrainCase', 'TorchTrainCase']


def synthetic_batch(batch: int, resolution: int, seed: int = 0):
  """Identical NHWC float32 images and int labels for both sides."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, resolution, resolution, 3), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, (batch,), dtype=np.int32)
  return images, labels


_INIT_CACHE: dict = {}


def initial_variables(structure: str, use_sa: bool, seed: int = 0):
  """Host (numpy) initial variables of a model, made once per (structure, use_sa, seed).

  Every JAX case of one model (train and inference, fp32 and bf16: parameters stay fp32)
  starts from these, so the model's init compiles once per run instead of once per case
  (on an H100 the ZenNet-M init compiled for about 40 s, per case). Shapes do not depend on
  the input size (global pooling), so a small input keeps the init's compile short. Each
  case puts its own copy on the device: the train step donates its state.
  """
  key = (structure, use_sa, seed)
  if key not in _INIT_CACHE:
    import jax

    from zenfer_jax.model import zennet

    model = zennet.build_model(structure, NUM_CLASSES, use_sa=use_sa)
    _INIT_CACHE[key] = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(seed), 64))
  return _INIT_CACHE[key]


class JaxTrainCase:
  def __init__(
    self,
    structure: str,
    *,
    use_sa: bool,
    batch: int,
    resolution: int,
    dtype: str = 'float32',
    steps_per_rep: int = 1,
    conv_impl: str = 'auto',
    bn_impl: str = 'auto',
    seed: int = 0,
  ):
    import jax
    import jax.numpy as jnp
    import optax

    from zenfer_jax.model import zennet
    from zenfer_jax.model.zennet import DTYPES
    from zenfer_jax.training import losses, optim

    self.name = f'jax_{dtype}'
    self.steps_per_rep = steps_per_rep
    self.batch = batch
    model = zennet.build_model(
      structure,
      NUM_CLASSES,
      use_sa=use_sa,
      conv_impl=conv_impl,
      bn_impl=bn_impl,
      dtype=DTYPES[dtype],
    )
    variables = jax.device_put(initial_variables(structure, use_sa, seed))
    params, batch_stats = variables['params'], variables['batch_stats']
    tx = optax.chain(
      optax.masked(optax.add_decayed_weights(WEIGHT_DECAY), optim.weight_decay_mask(params)),
      optax.sgd(LR, momentum=MOMENTUM, nesterov=True),
    )
    opt_state = tx.init(params)

    def step(state, images, labels, rng):
      params, batch_stats, opt_state, count = state
      targets = losses.smooth_one_hot(labels, NUM_CLASSES, LABEL_SMOOTHING)
      lam_key, perm_key = jax.random.split(jax.random.fold_in(rng, count))
      images, targets = losses.mixup(lam_key, perm_key, images, targets, MIXUP_ALPHA)

      def loss_fn(p):
        logits, upd = model.apply(
          {'params': p, 'batch_stats': batch_stats}, images, train=True, mutable=['batch_stats']
        )
        return losses.soft_cross_entropy(logits, targets), upd['batch_stats']

      (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, new_opt = tx.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      return (new_params, new_bs, new_opt, count + 1), loss

    self._jax = jax
    self._step = jax.jit(step, donate_argnums=0)
    images, labels = synthetic_batch(batch, resolution, seed)
    self._images = jax.device_put(images)
    self._labels = jax.device_put(labels)
    self._rng = jax.random.PRNGKey(seed + 1)
    self._state = (params, batch_stats, opt_state, jnp.zeros((), jnp.int32))
    jax.block_until_ready(self._state)
    t0 = time.perf_counter()
    self._compiled = self._step.lower(self._state, self._images, self._labels, self._rng).compile()
    self.compile_seconds = time.perf_counter() - t0
    self.loss = None

  def run(self):
    state, loss = self._state, None
    for _ in range(self.steps_per_rep):
      state, loss = self._compiled(state, self._images, self._labels, self._rng)
    self._jax.block_until_ready((state, loss))
    self._state, self.loss = state, loss
    return loss


class TorchTrainCase:
  def __init__(
    self,
    structure: str,
    *,
    use_sa: bool,
    batch: int,
    resolution: int,
    compile: bool = False,
    device: str = 'cpu',
    steps_per_rep: int = 1,
    channels_last: bool = False,
    seed: int = 0,
  ):
    import torch

    from torch_port.reference_model import build_reference_model

    self.name = 'torch_compile' if compile else 'torch_eager'
    self.steps_per_rep = steps_per_rep
    self.batch = batch
    self._torch = torch
    self._device = torch.device(device)
    torch.manual_seed(seed)
    model = build_reference_model(structure, NUM_CLASSES, use_sa=use_sa, use_lw_att=False).to(
      self._device
    )
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    decay, no_decay = [], []
    for mod in model.modules():
      for pname, p in mod.named_parameters(recurse=False):
        is_kernel = pname == 'weight' and isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
        (decay if is_kernel else no_decay).append(p)
    self._opt = torch.optim.SGD(
      [{'params': decay, 'weight_decay': WEIGHT_DECAY}, {'params': no_decay, 'weight_decay': 0.0}],
      lr=LR,
      momentum=MOMENTUM,
      nesterov=True,
    )
    self._model = torch.compile(model) if compile else model
    images, labels = synthetic_batch(batch, resolution, seed)
    self._images = (
      torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt).to(self._device)
    )
    self._labels = torch.from_numpy(labels.astype(np.int64)).to(self._device)
    self._beta = torch.distributions.Beta(torch.tensor(MIXUP_ALPHA), torch.tensor(MIXUP_ALPHA))
    self._gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    self._one_step()
    self._sync()
    self.compile_seconds = time.perf_counter() - t0
    self.loss = None

  def _sync(self):
    if self._device.type == 'cuda':
      self._torch.cuda.synchronize()

  def _one_step(self):
    torch = self._torch
    x, y = self._images, self._labels
    off = LABEL_SMOOTHING / NUM_CLASSES
    targets = torch.nn.functional.one_hot(y, NUM_CLASSES).float() * (1.0 - LABEL_SMOOTHING) + off
    lam = float(self._beta.sample())
    perm = torch.randperm(x.shape[0], generator=self._gen).to(self._device)
    x = lam * x + (1.0 - lam) * x[perm]
    targets = lam * targets + (1.0 - lam) * targets[perm]
    logits = self._model(x)
    loss = -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
    self._opt.zero_grad(set_to_none=True)
    loss.backward()
    self._opt.step()
    return loss

  def run(self):
    loss = None
    for _ in range(self.steps_per_rep):
      loss = self._one_step()
    self._sync()
    self.loss = loss.detach()
    return loss


def check_finite(case: Any) -> float | None:
  """The last loss as a float (NaN would mean the benchmark timed garbage)."""
  if case.loss is None:
    return None
  v = float(np.asarray(case.loss.cpu() if hasattr(case.loss, 'cpu') else case.loss))
  if not np.isfinite(v):
    raise FloatingPointError(f'{case.name}: non-finite loss {v}')
  return v
