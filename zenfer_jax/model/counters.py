"""The reference code's own FLOP, model-size and layer counters, reproduced exactly.

These are not true FLOP or parameter counts: the search budgets of the
published models were set with them, so a search here must count the same way.
The quirks kept on purpose:
- resolutions shrink by integer division (res // stride), even where the real
  convolution output is larger (odd inputs);
- conv FLOPs are floored integer products; BN counts res^2 * C FLOPs and C
  parameters (its shift is not counted);
- a projection shortcut counts in*out*(r/s)^2 + (r/s)^2*out FLOPs where r is
  the layer's *output* resolution (so a stride-2 shortcut is counted at a
  quarter of its real size), and in*out + out parameters (its BN is not counted);
- SA counts 4*C^2/(2g)^2 FLOPs and 4*C/(2g) parameters (floats);
- the classifier counts in*out FLOPs and in*out + 1 parameters (one bias term).
"""

from __future__ import annotations

from collections.abc import Iterable

from zenfer_jax.model import plan as plan_lib
from zenfer_jax.model.structure import Structure, StructureError

__all__ = ['flops', 'model_size', 'num_layers', 'block_counts']


def _op_counts(op, res: int) -> tuple[float, float, int]:
  """(flops, model size, output resolution) of one plan op at input resolution `res`."""
  if isinstance(op, plan_lib.ConvOp):
    out_res = res // op.stride
    if op.depthwise:
      f = op.out_channels * op.kernel_size**2 * res**2 // op.stride**2
      size = op.out_channels * op.kernel_size**2
    else:
      f = op.in_channels * op.out_channels * op.kernel_size**2 * res**2 // op.stride**2 // op.groups
      size = op.in_channels * op.out_channels * op.kernel_size**2 // op.groups
    return f, size, out_res
  if isinstance(op, plan_lib.BNOp):
    return res**2 * op.channels, op.channels, res
  if isinstance(op, plan_lib.ReLUOp):
    return 0, 0, res
  if isinstance(op, plan_lib.SAOp):
    return (
      4 * op.channels * op.channels / (2 * op.groups) ** 2,
      4 * op.channels / (2 * op.groups),
      res,
    )
  if isinstance(op, plan_lib.ResidualOp):
    f, size, r = _ops_counts(op.ops, res)
    if op.projection:
      side = r / op.stride
      f += op.in_channels * op.out_channels * side**2 + side**2 * op.out_channels
      size += op.in_channels * op.out_channels + op.out_channels
    return f, size, r
  raise TypeError(f'unknown plan op {op!r}')


def _ops_counts(ops: Iterable, res: int) -> tuple[float, float, int]:
  total_f, total_size = 0, 0
  for op in ops:
    f, size, res = _op_counts(op, res)
    total_f += f
    total_size += size
  return total_f, total_size, res


def _require_structure(structure) -> Structure:
  # The search counts every candidate three times; parsing its text again at each call was
  # most of that cost, so the counters take the parsed form and leave parsing to the caller.
  if not isinstance(structure, Structure):
    raise TypeError(
      'expected a parsed Structure (zenfer_jax.model.structure.resolve(...)), got '
      f'{type(structure).__name__}'
    )
  return structure


def block_counts(structure: Structure, resolution: int = 224, *, use_sa: bool = False):
  """Per-block (flops, model_size, output_resolution) in the reference's arithmetic."""
  structure = _require_structure(structure)
  if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
    raise StructureError(
      f'resolution must be a positive integer number of pixels, got {resolution!r}'
    )
  rows = []
  res = resolution
  for bp in plan_lib.expand(structure, use_sa=use_sa):
    f, size, res = _ops_counts(bp.ops, res)
    rows.append((f, size, res))
  return rows


def flops(
  structure: Structure, resolution: int = 224, *, num_classes: int = 7, use_sa: bool = False
) -> float:
  """FLOPs as the reference's `get_FLOPs` counts them, classifier included."""
  rows = block_counts(structure, resolution, use_sa=use_sa)
  return float(sum(r[0] for r in rows) + structure.out_channels * num_classes)


def model_size(structure: Structure, *, num_classes: int = 7, use_sa: bool = False) -> float:
  """Parameters as the reference's `get_model_size` counts them, classifier included."""
  rows = block_counts(structure, 224, use_sa=use_sa)
  return float(sum(r[1] for r in rows) + structure.out_channels * num_classes + 1)


def num_layers(structure: Structure) -> int:
  """The reference's layer count: the sum of every block's sub_layers."""
  _require_structure(structure)
  return sum(b.sub_layers for b in structure)
