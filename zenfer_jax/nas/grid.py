"""The widest widths a search's budgets allow, so its whole program grid is known up front.

Why: the stage programs (`programs`) are keyed by width levels, and a search meets a new level
whenever a candidate first grows a stage past the widest one so far, which can happen at any
point of a search. On an accelerator each such compile stalls scoring for seconds. Every
candidate passes the budgets, though, and the budgets bound every width: a width W somewhere in
a structure costs parameters and FLOPs that grow with W, on top of what the rest of the
structure costs at its narrowest. So the levels a search can ever use are known before its
first candidate, and the programs for all of them can be compiled in the warm-up.

The bound is a lower bound on cost, so it is safe (never below a width a candidate can have):

  * a mutation keeps every block of the initial structure in place, with its stride and its
    group of block types, and only inserts stride-1 copies (splits) after residual blocks; so a
    candidate holds every initial block at some type, widths >= 8 and >= 1 sub-layer, plus
    perhaps inserted blocks;
  * the reference counters add up per block, and each block's count grows with its widths and
    sub-layers; so a structure with width W in block j costs at least the sum over the other
    initial blocks of their cheapest type at width 8, plus block j's cheapest type with W;
  * W's other appearance (the next block's input) is left out: that only loosens the bound.
"""

from __future__ import annotations

import dataclasses
import functools

from zenfer_jax.model import counters
from zenfer_jax.model.structure import MAX_CHANNELS, Block, Structure
from zenfer_jax.nas import programs as prog
from zenfer_jax.nas import space as space_lib

__all__ = ['WidthBounds', 'width_bounds', 'layers_per_sub_layer', 'thin_roles']

MIN_WIDTH = 8  # smart_round's floor: no searched width is narrower
MAX_WIDTH = MAX_CHANNELS  # no structure is wider


@dataclasses.dataclass(frozen=True)
class WidthBounds:
  """first: the widest first-conv output; stages: per stage, the widest width between its layers
  (a layer's input or output: what the stage's level must hold); max_weights: the most conv
  weights a candidate can have; stage_layers: the most residual layers one stage can hold."""

  first: int
  stages: tuple[int, ...]
  max_weights: int
  stage_layers: int


def _layout_of(type_name: str):
  """The layout of one block of `type_name` (in 16, out 24, bottleneck 40, one sub-layer)."""
  block = Block(type_name, 16, 24, 1, 1, 40)
  stub = Block('SuperConvK1BNRELU', 3, 16, 1, 1)
  last = Block('SuperConvK1BNRELU', 24, MIN_WIDTH, 1, 1)
  return prog.network_layout(Structure((stub, block, last)))


def layers_per_sub_layer(type_name: str) -> int:
  """Residual layers (programs.Layer) per sub-layer of a block type: IDW and K1KXK1 sub-layers
  hold two residual units each, KXKX one. Read off the layout, so it cannot drift from it."""
  return sum(len(st) for st in _layout_of(type_name).stages)


def thin_roles(type_name: str) -> tuple[str, ...]:
  """Which of a block's widths ('out', 'btl') bound a layer of it, so a stage level must hold
  them (the others run in chunks); read off the layout like `layers_per_sub_layer`."""
  widths = {w for st in _layout_of(type_name).stages for layer in st for w in layer.thin_widths}
  return tuple(role for role, w in (('out', 24), ('btl', 40)) if w in widths)


def _stage_of_blocks(init: Structure) -> list[int | None]:
  """The stage (programs.network_layout's) of each block; None for the plain convs."""
  out, stage, started = [], 0, False
  for b in init:
    if not b.is_residual:
      out.append(None)
      continue
    if b.stride != 1 and started:
      stage += 1
    started = True
    out.append(stage)
  return out


def _types(space: space_lib.SearchSpace) -> tuple[str, ...]:
  return tuple(t for group in space.groups for t in group)


class _Costs:
  """Per-block (params, flops) on the reference counters, the cheapest over a block's types."""

  def __init__(self, init: Structure, space, resolution: int, num_classes: int):
    self.init, self.space, self.resolution = init, space, resolution
    self.num_classes = num_classes
    self.types = _types(space)
    self.last_width = init[-1].out_channels if space.fixed_final_conv else MIN_WIDTH
    if init[-1].kernel_size != 1 or init[-1].is_residual:
      self.last_width = MIN_WIDTH

  def narrowest(self) -> Structure:
    """The initial blocks at their narrowest: 8 wide, one sub-layer (the last conv as fixed)."""
    blocks, cin = [], self.init[0].in_channels
    for i, b in enumerate(self.init):
      if not b.is_residual:
        width = self.last_width if i == len(self.init) - 1 else MIN_WIDTH
        blocks.append(Block(b.type_name, cin, width, b.stride, 1))
      else:
        blocks.append(Block(b.type_name, cin, MIN_WIDTH, b.stride, 1, MIN_WIDTH))
      cin = blocks[-1].out_channels
    return Structure(tuple(blocks))

  @functools.cached_property
  def input_resolutions(self) -> list[int]:
    """The counters' input resolution of each initial block (strides never change)."""
    rows = counters.block_counts(self.narrowest(), self.resolution)
    return [self.resolution] + [r[2] for r in rows]

  @functools.cache  # noqa: B019 (one instance per call of width_bounds)
  def block(self, index: int, type_name: str, out: int, btl: int, inserted: bool) -> tuple:
    """(params, flops) of block `index` (or of a stride-1 block inserted after it), 8 channels
    wide at its input. Counted alone, behind a stub conv, at its input resolution: the counters
    add up per block, and a whole structure per call made the bound take seconds."""
    b = self.init[index]
    res = self.input_resolutions[index + 1 if inserted else index]
    if b.is_residual:
      new = Block(type_name, MIN_WIDTH, out, 1 if inserted else b.stride, 1, btl)
    else:
      new = Block(type_name, b.in_channels if index == 0 else MIN_WIDTH, out, b.stride, 1)
    if index == 0 and not inserted:
      return tuple(reversed(counters.block_counts(Structure((new,)), res)[0][:2]))
    stub = Block('SuperConvK1BNRELU', self.init[0].in_channels, MIN_WIDTH, 1, 1)
    row = counters.block_counts(Structure((stub, new)), res)[1]
    return row[1], row[0]

  def cheapest(self, index: int, out: int, btl: int, inserted: bool = False) -> tuple:
    """The lowest params and the lowest FLOPs over the block's types (each its own minimum)."""
    b = self.init[index]
    names = self.types if b.is_residual else (b.type_name,)
    costs = [self.block(index, t, out, btl, inserted) for t in names]
    return min(c[0] for c in costs), min(c[1] for c in costs)

  def base(self) -> tuple[float, float]:
    """(params, flops) of the cheapest structure: every block at its cheapest, classifier in."""
    params, flops = 0.0, 0.0
    for i, b in enumerate(self.init):
      width = self.last_width if i == len(self.init) - 1 else MIN_WIDTH
      p, f = self.cheapest(i, width if not b.is_residual else MIN_WIDTH, MIN_WIDTH)
      params, flops = params + p, flops + f
    out = self.last_width
    return params + out * self.num_classes + 1, flops + out * self.num_classes


def _widest(fits, cap: int) -> int:
  """The largest multiple of 8 up to `cap` for which fits(w) holds (fits is monotone)."""
  if not fits(MIN_WIDTH):
    return MIN_WIDTH
  lo, hi = MIN_WIDTH // 8, cap // 8
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(mid * 8):
      lo = mid
    else:
      hi = mid - 1
  return lo * 8


def width_bounds(
  init: Structure,
  space: space_lib.SearchSpace,
  *,
  resolution: int,
  num_classes: int,
  budget_model_size: float | None,
  budget_flops: float | None,
  max_layers: int | None,
) -> WidthBounds | None:
  """The widths, weights and layers no candidate of a search can exceed; None where nothing
  bounds them (no parameter or FLOP budget, or no layer budget)."""
  if max_layers is None or (budget_model_size is None and budget_flops is None):
    return None
  costs = _Costs(init, space, resolution, num_classes)
  base_p, base_f = costs.base()
  cap = min(space.max_channels or MAX_WIDTH, MAX_WIDTH)

  def fits_with(index: int, role: str, inserted: bool):
    p8, f8 = costs.cheapest(index, MIN_WIDTH, MIN_WIDTH)
    if inserted:
      p8 = f8 = 0.0  # an inserted block comes on top of every initial one

    def fits(w: int) -> bool:
      out, btl = (w, MIN_WIDTH) if role == 'out' else (MIN_WIDTH, w)
      p, f = costs.cheapest(index, out, btl, inserted)
      ok_p = budget_model_size is None or base_p - p8 + p <= budget_model_size
      ok_f = budget_flops is None or base_f - f8 + f <= budget_flops
      return ok_p and ok_f

    return fits

  stage_of = _stage_of_blocks(init)
  num_stages = max(s for s in stage_of if s is not None) + 1
  outs = [MIN_WIDTH] * num_stages  # widest output of any block of the stage
  inner = [MIN_WIDTH] * num_stages  # widest bottleneck that is a layer boundary (IDW)
  for index, stage in enumerate(stage_of):
    if stage is None:
      continue
    roles = sorted({r for t in costs.types for r in thin_roles(t)})
    for role in roles:
      for inserted in (False, True):
        w = _widest(fits_with(index, role, inserted), cap)
        if role == 'out':
          outs[stage] = max(outs[stage], w)
        else:
          inner[stage] = max(inner[stage], w)
  first = init[0]
  first_w = first.out_channels
  if not first.is_residual and not (space.fixed_final_conv and first.kernel_size == 1):
    first_w = _widest(fits_with(0, 'out', False), cap)
  stages = []
  for i in range(num_stages):
    entering = first_w if i == 0 else outs[i - 1]
    stages.append(max(outs[i], inner[i], entering))
  # Conv weights are parameters the counter counts; without a parameter budget, each weight
  # costs at least (the smallest output resolution)^2 FLOPs.
  if budget_model_size is not None:
    max_weights = int(budget_model_size)
  else:
    smallest = min(r[2] for r in counters.block_counts(costs.narrowest(), resolution))
    max_weights = int(budget_flops / max(smallest, 1) ** 2)
  residual_subs = max_layers - sum(1 for b in init if not b.is_residual)
  per = max(layers_per_sub_layer(t) for t in costs.types)
  return WidthBounds(
    first=first_w, stages=tuple(stages), max_weights=max_weights, stage_layers=residual_subs * per
  )
