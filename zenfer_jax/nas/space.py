"""Search spaces and the mutation step of the reference evolutionary search.

Two spaces exist, named as the reference scripts name their files:

- ``IDW`` (search_space_IDW_fixfc): residual blocks become SuperResIDWE{1,2,4,6}K{3,5,7};
  the final 1x1 SuperConv keeps its width.
- ``XXBL`` (search_space_XXBL): residual blocks become SuperResK1K{3,5,7}K1 or
  SuperResK{3,5,7}K{3,5,7}; every SuperConv may change width; widths are capped at 2048.

One mutation picks a block (1, or 2 picks once the population exceeds 10; a
repeated pick is skipped) and replaces it by a random candidate: widths x
{2.5, 2, 1.5, 1.25, 1, 1/1.25, 1/1.5, 1/2, 1/2.5} smart-rounded to base 8
(at least 8), sub_layers + {0, 1, 2, -1, -2} (at least 1), stride kept;
SuperConv candidates have one sub-layer. Input widths are then re-chained and
any block with sub_layers >= 6 is split in two.

The reference draws uniformly from a list in which, because of how it is
built, every block type after the second of its group appears fewer times
(a group of n types holds type j in n - j + 1 copies, j >= 1, and type 0 in
n). That skew is reproduced through `Candidates.weights`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from zenfer_jax.model.structure import Block, Structure, smart_round

__all__ = [
  'SPACES',
  'SearchSpace',
  'Candidates',
  'get_space',
  'block_candidates',
  'sample_candidate',
  'mutate',
  'split',
  'efficient_score',
  'SPLIT_THRESHOLD',
]

SPLIT_THRESHOLD = 6
WIDTH_FACTORS = (2.5, 2, 1.5, 1.25, 1, 1 / 1.25, 1 / 1.5, 1 / 2, 1 / 2.5)
SUB_LAYER_DELTAS = (0, 1, 2, -1, -2)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  name: str
  groups: tuple[tuple[str, ...], ...]  # residual block types, in the reference's order
  max_channels: int | None  # widths are clipped to this before rounding (XXBL: 2048)
  fixed_final_conv: bool  # a SuperConvK1BNRELU keeps its width (IDW "fixfc")


SPACES = {
  'IDW': SearchSpace(
    name='IDW',
    groups=(tuple(f'SuperResIDWE{e}K{k}' for k in (3, 5, 7) for e in (1, 2, 4, 6)),),
    max_channels=None,
    fixed_final_conv=True,
  ),
  'XXBL': SearchSpace(
    name='XXBL',
    groups=(
      tuple(f'SuperResK1K{k}K1' for k in (3, 5, 7)),
      tuple(f'SuperResK{k}K{k}' for k in (3, 5, 7)),
    ),
    max_channels=2048,
    fixed_final_conv=False,
  ),
}


def get_space(name: str) -> SearchSpace:
  if name not in SPACES:
    raise ValueError(f'unknown search space {name!r}; expected one of {sorted(SPACES)}')
  return SPACES[name]


def width_choices(channels: int, space: SearchSpace) -> list[int]:
  """The widths a block of `channels` may move to, largest first (no duplicates)."""
  out = set()
  for f in WIDTH_FACTORS:
    x = max(8, channels * f)
    if space.max_channels is not None:
      x = min(space.max_channels, x)
    out.add(smart_round(x, 8))
  return sorted(out, reverse=True)


def sub_layer_choices(sub_layers: int) -> list[int]:
  return sorted(
    {max(0, sub_layers + d) for d in SUB_LAYER_DELTAS if sub_layers + d > 0}, reverse=True
  )


@dataclasses.dataclass(frozen=True)
class Candidates:
  blocks: tuple[Block, ...]
  weights: tuple[int, ...]  # copies of each block in the reference's sampling list

  def sample(self, rng: np.random.Generator) -> Block:
    w = np.asarray(self.weights, dtype=np.float64)
    return self.blocks[int(rng.choice(len(self.blocks), p=w / w.sum()))]


def block_candidates(block: Block, space: SearchSpace) -> Candidates:
  """Every replacement the space offers for `block`, with the reference's sampling weights."""
  if not block.is_residual:
    if space.fixed_final_conv and block.kernel_size == 1:
      widths = [block.out_channels]
    else:
      widths = width_choices(block.out_channels, space)
    blocks = tuple(Block(block.type_name, block.in_channels, w, block.stride, 1) for w in widths)
    return Candidates(blocks, (1,) * len(blocks))
  outs = width_choices(block.out_channels, space)
  subs = sub_layer_choices(block.sub_layers)
  btls = width_choices(block.bottleneck, space)
  blocks, weights = [], []
  for group in space.groups:
    n = len(group)
    for j, type_name in enumerate(group):
      copies = n if j == 0 else n - j + 1
      for out, sub, btl in itertools.product(outs, subs, btls):
        blocks.append(Block(type_name, block.in_channels, out, block.stride, sub, btl))
        weights.append(copies)
  return Candidates(tuple(blocks), tuple(weights))


def sample_candidate(block: Block, space: SearchSpace, rng: np.random.Generator) -> Block:
  """One draw from `block_candidates(block, space)` without listing them all.

  The weights depend on the block type only and every type offers the same
  (width, sub_layers, bottleneck) product, so drawing the type by weight and
  then each coordinate uniformly is the same distribution.
  """
  if not block.is_residual:
    return block_candidates(block, space).sample(rng)
  types, weights = [], []
  for group in space.groups:
    n = len(group)
    for j, type_name in enumerate(group):
      types.append(type_name)
      weights.append(n if j == 0 else n - j + 1)
  w = np.asarray(weights, dtype=np.float64)
  type_name = types[int(rng.choice(len(types), p=w / w.sum()))]
  outs = width_choices(block.out_channels, space)
  subs = sub_layer_choices(block.sub_layers)
  btls = width_choices(block.bottleneck, space)
  out = outs[int(rng.integers(0, len(outs)))]
  sub = subs[int(rng.integers(0, len(subs)))]
  btl = btls[int(rng.integers(0, len(btls)))]
  return Block(type_name, block.in_channels, out, block.stride, sub, btl)


def _rechain(blocks: Sequence[Block]) -> Structure:
  chained = [dataclasses.replace(blocks[0], name=None)]
  for b in blocks[1:]:
    chained.append(dataclasses.replace(b, in_channels=chained[-1].out_channels, name=None))
  return Structure(tuple(chained))


def split(structure: Structure, threshold: int = SPLIT_THRESHOLD) -> Structure:
  """Split every residual block with sub_layers >= threshold into threshold // 2 and the rest."""
  out = []
  for b in structure:
    if b.is_residual and b.sub_layers >= threshold:
      first = threshold // 2
      out.append(dataclasses.replace(b, sub_layers=first, name=None))
      out.append(
        dataclasses.replace(
          b, in_channels=b.out_channels, stride=1, sub_layers=b.sub_layers - first, name=None
        )
      )
    else:
      out.append(dataclasses.replace(b, name=None))
  return Structure(tuple(out))


def mutate(
  structure: Structure, space: SearchSpace, rng: np.random.Generator, num_replaces: int = 1
) -> Structure:
  """One reference mutation: replace `num_replaces` random blocks, re-chain widths, split deep blocks.

  Like the reference, the result is split twice (once inside the mutation and
  once more by the search loop), which matters only for blocks of 9 or more
  sub-layers.
  """
  blocks = list(structure.blocks)
  picked = set()
  for _ in range(num_replaces):
    i = int(rng.integers(0, len(blocks)))
    if i in picked:
      continue
    picked.add(i)
    new = sample_candidate(blocks[i], space, rng)
    if i > 0:
      new = dataclasses.replace(new, in_channels=blocks[i - 1].out_channels)
    blocks[i] = new
  return split(split(_rechain(blocks)))


def efficient_score(structure: Structure, resolution: int = 224) -> float:
  """The fork's optional "efficient score" filter (MasterNet.get_efficient_score).

  Per stage end (before every stride-2 block after the first, and at the
  last block) with L conv layers so far and layer "widths" w_i (the product
  of in_channels * k^2 / groups over the convs of each residual layer or
  conv sub-layer, counted from the network's start): L / exp(sum log w_i / L).
  The maximum over stages is returned. ZenNet-M scores 0.90, ZenNet-R 0.62.
  """
  widths: list[float] = []
  stages: list[tuple[int, int]] = []  # (number of width entries, conv layers) at each stage end
  entries = layers = 0
  for idx, b in enumerate(structure):
    if b.stride == 2 and 0 < idx:
      stages.append((entries, layers))
    k2 = b.kernel_size**2
    if not b.is_residual:
      cin = b.in_channels
      for _ in range(b.sub_layers):
        widths.append(cin * k2)
        cin = b.out_channels
      entries += b.sub_layers
      layers += b.sub_layers
    elif b.family == 'kxkx':
      cin = b.in_channels
      for _ in range(b.sub_layers):
        widths.append(cin * k2 * b.bottleneck * k2)
        cin = b.out_channels
      entries += b.sub_layers
      layers += 2 * b.sub_layers
    elif b.family == 'k1kxk1':
      cin = b.in_channels
      for _ in range(b.sub_layers):
        for c in (cin, b.out_channels):
          widths.append(c * b.bottleneck * k2 * b.bottleneck)
        cin = b.out_channels
      entries += 2 * b.sub_layers
      layers += 6 * b.sub_layers
    else:  # idw
      e = b.expansion
      dw1 = smart_round(b.bottleneck * e, 8)
      dw2 = smart_round(b.out_channels * e, 8)
      cin = b.in_channels
      for _ in range(b.sub_layers):
        widths.append(cin * k2 * dw1)
        widths.append(b.bottleneck * k2 * dw2)
        cin = b.out_channels
      entries += 2 * b.sub_layers
      layers += 6 * b.sub_layers
    if idx == len(structure) - 1:
      stages.append((entries, layers))
  logs = np.log(np.asarray(widths, dtype=np.float64))
  best = -math.inf
  for n, depth in stages:
    rho = float(np.sum(logs[:n]))
    best = max(best, math.exp(math.log(depth) - rho / depth))
  return float(best)
