"""The residual-free network of a structure as a chain of conv -> BatchNorm (-> ReLU) units.

The one weight layout of the Zen-score: each unit's kernel sits at a fixed offset of a flat
per-draw buffer, in the unpadded order. The compiled stage programs (`programs`) read their
kernels from it and the tests load the same kernels into the Flax model, so both must agree on
it; it lives here, below both, so neither imports the other for it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zenfer_jax.model import plan as plan_lib
from zenfer_jax.model.structure import Structure, resolve

__all__ = ['Unit', 'network_units']


@dataclasses.dataclass(frozen=True)
class Unit:
  """One conv -> BatchNorm (-> ReLU) of the residual-free network.

  `offset` is where its kernel starts in the flat weight buffer; `conv_path`
  and `bn_path` name the same layers in the Flax model's parameter tree.
  """

  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int
  depthwise: bool
  relu: bool
  offset: int
  conv_path: tuple[str, ...]
  bn_path: tuple[str, ...]

  @property
  def kernel_shape(self) -> tuple[int, int, int, int]:
    k = self.kernel_size
    return (k, k, 1 if self.depthwise else self.in_channels, self.out_channels)

  @property
  def num_weights(self) -> int:
    return int(np.prod(self.kernel_shape))


def network_units(structure: str | Structure) -> tuple[Unit, ...]:
  """The residual-free network of `structure` as a chain of units, in forward order."""
  s = resolve(structure)
  flat = []

  def walk(ops, prefix):
    for op in ops:
      if isinstance(op, plan_lib.ResidualOp):
        walk(op.ops, prefix + (f'layer{op.index}',))
      else:
        flat.append((op, prefix))

  for bp in plan_lib.expand(s, no_reslink=True):
    walk(bp.ops, ('backbone', f'block{bp.index}'))

  units, offset, i = [], 0, 0
  while i < len(flat):
    conv, prefix = flat[i]
    if (
      not isinstance(conv, plan_lib.ConvOp)
      or i + 1 >= len(flat)
      or not isinstance(flat[i + 1][0], plan_lib.BNOp)
    ):
      raise AssertionError(
        f'residual-free plan of {s} is not a chain of conv -> BN units at op {i}: {conv}'
      )
    bn, bn_prefix = flat[i + 1]
    relu = i + 2 < len(flat) and isinstance(flat[i + 2][0], plan_lib.ReLUOp)
    if conv.groups != 1 and not conv.depthwise:
      raise AssertionError(f'grouped (non-depthwise) conv is not in the structure language: {conv}')
    u = Unit(
      in_channels=conv.in_channels,
      out_channels=conv.out_channels,
      kernel_size=conv.kernel_size,
      stride=conv.stride,
      depthwise=conv.depthwise,
      relu=relu,
      offset=offset,
      conv_path=prefix + (f'conv{conv.index}',),
      bn_path=bn_prefix + (f'bn{bn.index}',),
    )
    units.append(u)
    offset += u.num_weights
    i += 3 if relu else 2
  return tuple(units)
