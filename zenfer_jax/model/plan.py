"""Expansion of a Structure into the exact layer plan of the reference network.

The Flax model, the reference counters and the PyTorch port all walk this one
plan, so the three can never disagree about a width, a stride or where a
projection shortcut sits. Every op carries `index`, its position in the
reference's `module_list` (ReLUs occupy an index too), which is how parameter
names are formed on both sides: ``block{i}/layer{j}/conv{k}`` in Flax is
``module_list.{i}.module_list.{j}.module_list.{k}`` in PyTorch.
"""

from __future__ import annotations

import dataclasses

from zenfer_jax.model.structure import Block, Structure, StructureError, smart_round

__all__ = [
  'ConvOp',
  'BNOp',
  'ReLUOp',
  'SAOp',
  'ResidualOp',
  'BlockPlan',
  'expand_block',
  'expand',
  'sa_groups',
]


@dataclasses.dataclass(frozen=True)
class ConvOp:
  index: int
  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int
  groups: int = 1

  @property
  def depthwise(self) -> bool:
    return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclasses.dataclass(frozen=True)
class BNOp:
  index: int
  channels: int
  last_in_residual: bool = False  # the `custom` init zeroes its scale


@dataclasses.dataclass(frozen=True)
class ReLUOp:
  index: int


@dataclasses.dataclass(frozen=True)
class SAOp:
  index: int
  channels: int
  groups: int


@dataclasses.dataclass(frozen=True)
class ResidualOp:
  index: int
  ops: tuple
  in_channels: int
  out_channels: int
  stride: int
  projection: bool


Op = ConvOp | BNOp | ReLUOp | SAOp | ResidualOp


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  index: int
  block: Block
  ops: tuple


def sa_groups(channels: int) -> int:
  """Groups of the SA block. The reference's 8-group branch can never fire, so this is always 4."""
  if channels >= 32 and (channels / 8) // 2 == 0:  # unreachable, kept to mirror the reference rule
    return 8
  return 4


def sa_width_ok(channels: int, groups: int) -> bool:
  """Widths the reference's SA runs on: an even split per group, or 3 per group (its chunk gives 2 + 1
  and the single gate parameter broadcasts over the 2)."""
  if channels % groups:
    return False
  per_group = channels // groups
  return per_group % 2 == 0 or per_group == 3


def _inner_ops(specs, use_sa: bool, no_bn: bool, last_bn_flag: bool, where: str) -> tuple:
  """Build a residual branch from (kind, ...) tuples, numbering ops as the reference does."""
  ops = []
  idx = 0
  bn_positions = []
  for spec in specs:
    kind = spec[0]
    if kind == 'conv':
      _, cin, cout, k, s, g = spec
      ops.append(ConvOp(idx, cin, cout, k, s, g))
      idx += 1
      if not no_bn:
        bn_positions.append(len(ops))
        ops.append(BNOp(idx, cout))
        idx += 1
    elif kind == 'relu':
      ops.append(ReLUOp(idx))
      idx += 1
    elif kind == 'sa':
      if use_sa:
        groups = sa_groups(spec[1])
        if not sa_width_ok(spec[1], groups):
          raise StructureError(
            f'{where}: the SA block splits {spec[1]} channels into {groups} groups of two halves, '
            f'so the width must be a multiple of {2 * groups} (or exactly {3 * groups}, the one '
            f'uneven split the reference accepts)'
          )
        ops.append(SAOp(idx, spec[1], groups))
        idx += 1
    else:  # pragma: no cover - internal table
      raise AssertionError(kind)
  if bn_positions and last_bn_flag:
    last = ops[bn_positions[-1]]
    ops[bn_positions[-1]] = dataclasses.replace(last, last_in_residual=True)
  return tuple(ops)


def _layer_specs(block: Block):
  """The residual layers of a block as (in, out, stride, branch specs, always_project)."""
  k = block.kernel_size
  btl = block.bottleneck
  layers = []
  last = block.in_channels
  stride = block.stride
  for j in range(block.sub_layers):
    if block.family == 'kxkx':
      branch = [
        ('conv', last, btl, k, stride, 1),
        ('relu',),
        ('sa', btl),
        ('conv', btl, block.out_channels, k, 1, 1),
      ]
      # The first layer of a KXKX block always projects (ResBlockProj in the reference).
      layers.append((last, block.out_channels, stride, branch, j == 0))
    elif block.family == 'k1kxk1':
      for cin, s in ((last, stride), (block.out_channels, 1)):
        branch = [
          ('conv', cin, btl, 1, 1, 1),
          ('relu',),
          ('conv', btl, btl, k, s, 1),
          ('relu',),
          ('sa', btl),
          ('conv', btl, block.out_channels, 1, 1, 1),
        ]
        layers.append((cin, block.out_channels, s, branch, False))
    elif block.family == 'idw':
      e = block.expansion
      dw1 = smart_round(btl * e, 8)
      dw2 = smart_round(block.out_channels * e, 8)
      first = [
        ('conv', last, dw1, 1, 1, 1),
        ('relu',),
        ('conv', dw1, dw1, k, stride, dw1),
        ('relu',),
        ('sa', dw1),
        ('conv', dw1, btl, 1, 1, 1),
      ]
      second = [
        ('conv', btl, dw2, 1, 1, 1),
        ('relu',),
        ('conv', dw2, dw2, k, 1, dw2),
        ('relu',),
        ('sa', dw2),
        ('conv', dw2, block.out_channels, 1, 1, 1),
      ]
      layers.append((last, btl, stride, first, False))
      layers.append((btl, block.out_channels, 1, second, False))
    else:  # pragma: no cover
      raise AssertionError(block.family)
    last = block.out_channels
    stride = 1
  return layers


def expand_block(
  index: int, block: Block, *, use_sa: bool = False, no_bn: bool = False, no_reslink: bool = False
) -> BlockPlan:
  ops = []
  if block.family == 'conv':
    idx = 0
    cin, s = block.in_channels, block.stride
    for _ in range(block.sub_layers):
      ops.append(ConvOp(idx, cin, block.out_channels, block.kernel_size, s))
      idx += 1
      if not no_bn:
        ops.append(BNOp(idx, block.out_channels))
        idx += 1
      ops.append(ReLUOp(idx))
      idx += 1
      cin, s = block.out_channels, 1
    return BlockPlan(index, block, tuple(ops))

  idx = 0
  for cin, cout, s, branch, always_project in _layer_specs(block):
    inner = _inner_ops(branch, use_sa, no_bn, not no_reslink, f'block {index} ({block})')
    projection = (not no_reslink) and (always_project or s != 1 or cin != cout)
    ops.append(ResidualOp(idx, inner, cin, cout, s, projection))
    ops.append(ReLUOp(idx + 1))
    idx += 2
  return BlockPlan(index, block, tuple(ops))


def expand(
  structure: Structure, *, use_sa: bool = False, no_bn: bool = False, no_reslink: bool = False
) -> tuple[BlockPlan, ...]:
  return tuple(
    expand_block(i, b, use_sa=use_sa, no_bn=no_bn, no_reslink=no_reslink)
    for i, b in enumerate(structure)
  )
