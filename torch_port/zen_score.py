"""The Zen-score computed the reference's way, in PyTorch, on torch_port's reference model.

This mirrors ZenNAS's compute_zen_score step by step (fresh residual-free
network, N(0, 1) conv and linear weights, BatchNorm 1/0 in training mode,
two passes under no_grad, log of the mean L1 difference plus the BN
running-variance terms). It is the yardstick for the JAX scorer in tests at
full resolution and the PyTorch side of benchmarks/search_throughput.py; the
search itself never uses it. Needs the `torch` extra.
"""

from __future__ import annotations

import numpy as np

from zenfer_jax.model.structure import Structure, resolve
from zenfer_jax.nas.zen_score import ZenScore

__all__ = ['torch_zen_score', 'TorchZenScorer']


class TorchZenScorer:
  """structure, seed -> ZenScore with the reference algorithm; one fresh network per draw."""

  def __init__(
    self,
    *,
    resolution: int = 224,
    batch_size: int = 16,
    repeats: int = 1,
    mixup_gamma: float = 1e-2,
    num_classes: int = 7,
    device: str = 'cpu',
  ):
    self.resolution = resolution
    self.batch_size = batch_size
    self.repeats = repeats
    self.mixup_gamma = mixup_gamma
    self.num_classes = num_classes
    self.device = device

  def __call__(self, structure: str | Structure, seed: int = 0) -> ZenScore:
    import torch
    from torch import nn

    from torch_port.reference_model import build_reference_model

    s = resolve(structure)
    gen = torch.Generator().manual_seed(int(seed))
    scores = []
    with torch.no_grad():
      for _ in range(self.repeats):
        model = build_reference_model(s, self.num_classes, no_reslink=True, bn_momentum=0.1)
        model.train().to(self.device)
        for m in model.modules():
          if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            if m.bias is not None:
              m.bias.zero_()
          elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.fill_(1.0)
            m.bias.zero_()
        shape = (self.batch_size, 3, self.resolution, self.resolution)
        x = torch.randn(shape, generator=gen).to(self.device)
        x2 = torch.randn(shape, generator=gen).to(self.device)
        out = model.forward_pre_gap(x)
        mixed = model.forward_pre_gap(x + self.mixup_gamma * x2)
        delta = torch.mean(torch.sum(torch.abs(out - mixed), dim=[1, 2, 3]))
        log_bn = 0.0
        for m in model.modules():
          if isinstance(m, nn.BatchNorm2d):
            log_bn += float(torch.log(torch.sqrt(torch.mean(m.running_var))))
        scores.append(float(torch.log(delta)) + log_bn)
    v = np.asarray(scores)
    return ZenScore(mean=float(v.mean()), std=float(v.std()), scores=tuple(scores))


def torch_zen_score(
  structure,
  *,
  resolution: int = 224,
  batch_size: int = 16,
  repeats: int = 1,
  mixup_gamma: float = 1e-2,
  seed: int = 0,
) -> ZenScore:
  return TorchZenScorer(
    resolution=resolution, batch_size=batch_size, repeats=repeats, mixup_gamma=mixup_gamma
  )(structure, seed)
