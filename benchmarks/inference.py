"""Inference cases (eval mode, running BatchNorm statistics): JAX jit vs PyTorch eager/compile.

Batch 1 measures latency (seconds per image); a large batch measures throughput. Each case
exposes `compile_seconds` (first call, reported on its own) and `run()`, which does
`calls_per_rep` forward passes and blocks until the logits exist.
"""

from __future__ import annotations

import time

from benchmarks.train_throughput import NUM_CLASSES, initial_variables, synthetic_batch

__all__ = ['JaxInferCase', 'TorchInferCase']


class JaxInferCase:
  def __init__(
    self,
    structure: str,
    *,
    use_sa: bool,
    batch: int,
    resolution: int,
    dtype: str = 'float32',
    conv_impl: str = 'auto',
    bn_impl: str = 'auto',
    seed: int = 0,
  ):
    import jax

    from zenfer_jax.model import zennet
    from zenfer_jax.model.zennet import DTYPES

    self.name = f'jax_{dtype}'
    model = zennet.build_model(
      structure,
      NUM_CLASSES,
      use_sa=use_sa,
      conv_impl=conv_impl,
      bn_impl=bn_impl,
      dtype=DTYPES[dtype],
    )
    variables = jax.device_put(initial_variables(structure, use_sa, seed))
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    images, _ = synthetic_batch(batch, resolution, seed)
    self._x = jax.device_put(images)
    self._v = variables
    self._jax = jax
    t0 = time.perf_counter()
    self._fn = fwd.lower(self._v, self._x).compile()
    jax.block_until_ready(self._fn(self._v, self._x))
    self.compile_seconds = time.perf_counter() - t0

  def run(self):
    out = self._fn(self._v, self._x)
    self._jax.block_until_ready(out)
    return out


class TorchInferCase:
  def __init__(
    self,
    structure: str,
    *,
    use_sa: bool,
    batch: int,
    resolution: int,
    compile: bool = False,
    device: str = 'cpu',
    channels_last: bool = False,
    seed: int = 0,
  ):
    import torch

    from torch_port.reference_model import build_reference_model

    self.name = 'torch_compile' if compile else 'torch_eager'
    self._torch = torch
    self._device = torch.device(device)
    torch.manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_reference_model(structure, NUM_CLASSES, use_sa=use_sa, use_lw_att=False)
    model = model.to(self._device).to(memory_format=fmt).eval()
    self._model = torch.compile(model) if compile else model
    images, _ = synthetic_batch(batch, resolution, seed)
    self._x = (
      torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt).to(self._device)
    )
    t0 = time.perf_counter()
    self.run()
    self.compile_seconds = time.perf_counter() - t0

  def run(self):
    with self._torch.inference_mode():
      out = self._model(self._x)
    if self._device.type == 'cuda':
      self._torch.cuda.synchronize()
    return out
