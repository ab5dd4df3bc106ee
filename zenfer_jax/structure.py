"""The ZenNet structure language: parsing, validation and printing.

A structure is a chain of super-blocks such as
``SuperConvK3BNRELU(3,64,2,1)SuperResIDWE2K7(64,48,2,48,1)...``. Every search
budget, checkpoint converter and model in this package starts from a parsed
`Structure`, so all validation happens here, before any array is allocated:
a bad string fails with a `StructureError` naming the character position and
what was expected there.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources

__all__ = [
  'Block',
  'Structure',
  'StructureError',
  'parse',
  'load',
  'resolve',
  'smart_round',
  'PRESETS',
  'BLOCK_TYPES',
]


class StructureError(ValueError):
  """A structure string that is not valid ZenNet structure language."""

  def __init__(self, message: str, position: int | None = None, text: str | None = None):
    self.position = position
    self.text = text
    where = f'at position {position}: ' if position is not None else ''
    context = ''
    if text is not None and position is not None:
      start = max(0, position - 20)
      snippet = text[start : position + 20]
      context = f'\n  ...{snippet}...\n     {" " * (position - start)}^'
    super().__init__(f'{where}{message}{context}')


def smart_round(x: float, base: int = 8) -> int:
  """Round to a multiple of `base`, never below `base` (the reference's width rule)."""
  return max(base, int(round(x / base)) * base)


# family -> (kernel sizes, expansions); the block names are generated from these.
_CONV = 'conv'
_KXKX = 'kxkx'
_K1KXK1 = 'k1kxk1'
_IDW = 'idw'


@dataclasses.dataclass(frozen=True)
class _BlockType:
  name: str
  family: str
  kernel_size: int
  expansion: int | None = None

  @property
  def num_args(self) -> int:
    return 4 if self.family == _CONV else 5


def _block_types() -> dict:
  types = {}
  for k in (1, 3, 5, 7):
    types[f'SuperConvK{k}BNRELU'] = _BlockType(f'SuperConvK{k}BNRELU', _CONV, k)
  for k in (3, 5, 7):
    types[f'SuperResK{k}K{k}'] = _BlockType(f'SuperResK{k}K{k}', _KXKX, k)
    types[f'SuperResK1K{k}K1'] = _BlockType(f'SuperResK1K{k}K1', _K1KXK1, k)
    for e in (1, 2, 4, 6):
      types[f'SuperResIDWE{e}K{k}'] = _BlockType(f'SuperResIDWE{e}K{k}', _IDW, k, e)
  return types


BLOCK_TYPES = _block_types()


@dataclasses.dataclass(frozen=True)
class Block:
  """One super-block. `bottleneck` is None for SuperConv blocks."""

  type_name: str
  in_channels: int
  out_channels: int
  stride: int
  sub_layers: int
  bottleneck: int | None = None
  name: str | None = None

  @property
  def spec(self) -> _BlockType:
    return BLOCK_TYPES[self.type_name]

  @property
  def family(self) -> str:
    return self.spec.family

  @property
  def kernel_size(self) -> int:
    return self.spec.kernel_size

  @property
  def expansion(self) -> int | None:
    return self.spec.expansion

  @property
  def is_residual(self) -> bool:
    return self.family != _CONV

  @property
  def num_residual_layers(self) -> int:
    """Residual layers the block expands to (two per sub-layer for K1KXK1 and IDW)."""
    if self.family == _CONV:
      return 0
    if self.family == _KXKX:
      return self.sub_layers
    return 2 * self.sub_layers

  def __str__(self) -> str:
    args = [self.in_channels, self.out_channels, self.stride]
    if self.bottleneck is not None:
      args.append(self.bottleneck)
    args.append(self.sub_layers)
    prefix = f'{self.name}|' if self.name else ''
    return f'{self.type_name}({prefix}{",".join(str(a) for a in args)})'

  def replace(self, **changes) -> Block:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Structure:
  """A validated chain of super-blocks; `str()` gives the canonical string."""

  blocks: tuple

  def __post_init__(self):
    object.__setattr__(self, 'blocks', tuple(self.blocks))
    _validate_chain(self.blocks)

  def __str__(self) -> str:
    return ''.join(str(b) for b in self.blocks)

  def __iter__(self) -> Iterator[Block]:
    return iter(self.blocks)

  def __len__(self) -> int:
    return len(self.blocks)

  def __getitem__(self, i):
    return self.blocks[i]

  @property
  def out_channels(self) -> int:
    return self.blocks[-1].out_channels


def _validate_chain(blocks: Sequence[Block], text: str | None = None, positions=None) -> None:
  if not blocks:
    raise StructureError(
      'empty structure: expected at least one block such as SuperConvK3BNRELU(3,8,2,1)'
    )
  for i, b in enumerate(blocks):
    pos = positions[i] if positions else None
    where = f'block {i} ({b.type_name})'
    if b.type_name not in BLOCK_TYPES:
      raise StructureError(f'{where}: unknown block type', pos, text)
    for field in ('in_channels', 'out_channels', 'sub_layers') + (
      ('bottleneck',) if b.is_residual else ()
    ):
      value = getattr(b, field)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise StructureError(
          f'{where}: {field} must be a positive integer, got {value!r}', pos, text
        )
    if b.stride not in (1, 2):
      raise StructureError(f'{where}: stride must be 1 or 2, got {b.stride!r}', pos, text)
    if b.is_residual == (b.bottleneck is None):
      raise StructureError(
        f'{where}: bottleneck is required exactly for residual blocks', pos, text
      )
    if i == 0 and b.in_channels != 3:
      raise StructureError(
        f'{where}: the first block takes RGB input, so in_channels must be 3, got {b.in_channels}',
        pos,
        text,
      )
    if i > 0 and b.in_channels != blocks[i - 1].out_channels:
      raise StructureError(
        f"{where}: in_channels {b.in_channels} differs from the previous block's out_channels "
        f'{blocks[i - 1].out_channels}',
        pos,
        text,
      )


_NAME_RE = re.compile(r'[A-Za-z0-9]+')
_INT_RE = re.compile(r'[+-]?[0-9]+')
_BLOCKNAME_RE = re.compile(r'[^|(),]*')


def parse(text: str) -> Structure:
  """Parse a structure string; leading/trailing white space (a file's newline) is ignored."""
  if not isinstance(text, str):
    raise StructureError(f'expected a structure string, got {type(text).__name__}')
  lead = len(text) - len(text.lstrip())
  body = text.strip()
  if not body:
    raise StructureError(
      'empty structure: expected at least one block such as SuperConvK3BNRELU(3,8,2,1)'
    )
  blocks, positions = [], []
  pos = 0
  n = len(body)

  def err(msg: str, at: int):
    raise StructureError(msg, lead + at, text)

  while pos < n:
    start = pos
    m = _NAME_RE.match(body, pos)
    if not m:
      err(f'expected a block name, found {body[pos]!r}', pos)
    type_name = m.group(0)
    if type_name not in BLOCK_TYPES:
      err(
        f'unknown block {type_name!r}; expected one of SuperConvK{{1,3,5,7}}BNRELU, SuperResK{{3,5,7}}K{{3,5,7}} '
        f'(same kernel twice), SuperResK1K{{3,5,7}}K1, SuperResIDWE{{1,2,4,6}}K{{3,5,7}}',
        pos,
      )
    spec = BLOCK_TYPES[type_name]
    pos = m.end()
    if pos >= n or body[pos] != '(':
      err(f"expected '(' after {type_name}", pos)
    pos += 1
    close = body.find(')', pos)
    if close < 0:
      err(f"expected ')' to close {type_name}(", pos)
    inner = body[pos:close]
    block_name = None
    if '|' in inner:
      bar = inner.index('|')
      block_name = inner[:bar]
      if not block_name or not _BLOCKNAME_RE.fullmatch(block_name) or '(' in block_name:
        err("expected a block name before '|'", pos)
      pos += bar + 1
      inner = inner[bar + 1 :]
    if '(' in inner:
      err("expected ')' before a nested '('", pos + inner.index('('))
    parts = inner.split(',')
    if len(parts) != spec.num_args:
      expected = (
        '(in,out,stride,sub_layers)'
        if spec.family == _CONV
        else '(in,out,stride,bottleneck,sub_layers)'
      )
      err(f'{type_name} takes {spec.num_args} arguments {expected}, got {len(parts)}', pos)
    values = []
    arg_pos = pos
    for part in parts:
      if not _INT_RE.fullmatch(part):
        err(f'expected an integer argument, got {part!r}', arg_pos)
      values.append(int(part))
      arg_pos += len(part) + 1
    if spec.family == _CONV:
      c_in, c_out, stride, subl = values
      btl = None
    else:
      c_in, c_out, stride, btl, subl = values
    block = Block(type_name, c_in, c_out, stride, subl, btl, block_name)
    blocks.append(block)
    positions.append(lead + start)
    # Validate as we go so the error points at the first bad block.
    _validate_chain(blocks, text, positions)
    pos = close + 1
  return Structure(tuple(blocks))


PRESETS = {'zennet_m': 'zennet_m.txt', 'zennet_r': 'zennet_r.txt'}


def load(path: str | os.PathLike) -> Structure:
  """Load a structure file (one structure on its first non-empty line)."""
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  if not lines:
    raise StructureError(f'{os.fspath(path)}: empty structure file')
  # Like the reference, only the first line is the structure (later lines may hold notes).
  try:
    return parse(lines[0])
  except StructureError as e:
    raise StructureError(f'{os.fspath(path)}: {e}') from None


def preset_text(name: str) -> str:
  if name not in PRESETS:
    raise StructureError(f'unknown preset {name!r}; expected one of {sorted(PRESETS)}')
  return resources.files('zenfer_jax.presets').joinpath(PRESETS[name]).read_text().strip()


def resolve(spec: str | os.PathLike | Structure) -> Structure:
  """A Structure from a Structure, a preset name, a file path or a structure string."""
  if isinstance(spec, Structure):
    return spec
  if isinstance(spec, os.PathLike):
    return load(spec)
  if not isinstance(spec, str):
    raise StructureError(f'expected a structure, preset name or path, got {type(spec).__name__}')
  if spec in PRESETS:
    return parse(preset_text(spec))
  if '(' not in spec and os.path.exists(spec):
    return load(spec)
  if '(' not in spec:
    raise StructureError(
      f'{spec!r} is neither a preset ({", ".join(sorted(PRESETS))}), an existing file, nor a structure string'
    )
  return parse(spec)
