"""The ZenNet structure language: parsing, validation and printing.

A structure is a chain of super-blocks such as
``SuperConvK3BNRELU(3,64,2,1)SuperResIDWE2K7(64,48,2,48,1)...``. Every search
budget, checkpoint converter and model in this package starts from a parsed
`Structure`, so all validation happens here, before any array is allocated:
a bad string fails with a `StructureError` naming the character position and
what was expected there.

Limits. A structure names sizes that allocate memory and time in every consumer (model
building, counters, the search), so sizes far beyond any network this package can train are
refused here, in time linear in the text, before anything is built:
  * at most `MAX_BLOCKS` (256) blocks and `MAX_LAYERS` (1,024) sub-layers in all;
  * `sub_layers` at most `MAX_SUB_LAYERS` (128) per block;
  * channels and bottlenecks at most `MAX_CHANNELS` (65,536: mutations of wide IDW blocks reach 16,800);
  * a structure string at most `MAX_TEXT_CHARS` (65,536 characters), a structure file at most
    `MAX_FILE_BYTES` (1 MiB).
ZenNet-M and ZenNet-R use 8 and 7 blocks, at most 2,048 channels and 14 sub-layers in all.
An input must be at least `min_resolution` pixels square (`check_resolution`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from importlib import resources

from zenfer_jax.errors import UserError

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
  'MAX_BLOCKS',
  'MAX_LAYERS',
  'MAX_SUB_LAYERS',
  'MAX_CHANNELS',
  'MAX_TEXT_CHARS',
  'MAX_FILE_BYTES',
  'min_resolution',
  'check_resolution',
]

MAX_BLOCKS = 256
MAX_LAYERS = 1_024
MAX_SUB_LAYERS = 128
MAX_CHANNELS = 65_536
MAX_TEXT_CHARS = 65_536
MAX_FILE_BYTES = 1 << 20


class StructureError(ValueError, UserError):
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


def _validate_chain(blocks: Sequence[Block]) -> None:
  if not blocks:
    raise StructureError(
      'empty structure: expected at least one block such as SuperConvK3BNRELU(3,8,2,1)'
    )
  layers = 0
  for i, b in enumerate(blocks):
    _validate_block(i, b, blocks[i - 1] if i else None)
    layers = _check_totals(i, b, layers)


def _check_totals(i: int, b: Block, layers_before: int, pos=None, text=None) -> int:
  """The running limits on the whole chain; returns the sub-layers so far."""
  if i >= MAX_BLOCKS:
    raise StructureError(
      f'more than {MAX_BLOCKS} blocks (the limit on a structure); networks this package trains '
      'have about ten',
      pos,
      text,
    )
  layers = layers_before + b.sub_layers
  if layers > MAX_LAYERS:
    raise StructureError(
      f'block {i} ({b.type_name}) brings the sub-layers to {layers}, above the limit of '
      f'{MAX_LAYERS} in all',
      pos,
      text,
    )
  return layers


def _validate_block(
  i: int, b: Block, prev: Block | None, pos: int | None = None, text: str | None = None
) -> None:
  """One block against its predecessor: constant work, so a chain is checked in linear time."""
  where = f'block {i} ({b.type_name})'
  if b.type_name not in BLOCK_TYPES:
    raise StructureError(f'{where}: unknown block type', pos, text)
  for field in ('in_channels', 'out_channels', 'sub_layers') + (
    ('bottleneck',) if b.is_residual else ()
  ):
    value = getattr(b, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise StructureError(f'{where}: {field} must be a positive integer, got {value!r}', pos, text)
    limit = MAX_SUB_LAYERS if field == 'sub_layers' else MAX_CHANNELS
    if value > limit:
      raise StructureError(
        f'{where}: {field} {value} exceeds the limit of {limit} '
        f'(zenfer_jax.model.structure.MAX_{"SUB_LAYERS" if field == "sub_layers" else "CHANNELS"})',
        pos,
        text,
      )
  if b.stride not in (1, 2):
    raise StructureError(f'{where}: stride must be 1 or 2, got {b.stride!r}', pos, text)
  if b.is_residual == (b.bottleneck is None):
    raise StructureError(f'{where}: bottleneck is required exactly for residual blocks', pos, text)
  if prev is None and b.in_channels != 3:
    raise StructureError(
      f'{where}: the first block takes RGB input, so in_channels must be 3, got {b.in_channels}',
      pos,
      text,
    )
  if prev is not None and b.in_channels != prev.out_channels:
    raise StructureError(
      f"{where}: in_channels {b.in_channels} differs from the previous block's out_channels "
      f'{prev.out_channels}',
      pos,
      text,
    )


def min_resolution(structure: Structure) -> int:
  """The smallest input side for which every feature map keeps at least one pixel.

  The reference counters (and so every FLOPs budget) shrink a resolution by integer division at
  each stride-2 layer; below the product of the strides the deepest maps count as 0 pixels and
  their FLOPs as 0, so a budget would stop constraining them.
  """
  return 2 ** sum(1 for b in structure if b.stride == 2)


def check_resolution(structure: Structure, resolution, what: str = 'resolution') -> int:
  """`resolution` as an int, or a StructureError saying what the network needs."""
  if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
    raise StructureError(f'{what} must be a positive integer number of pixels, got {resolution!r}')
  need = min_resolution(structure)
  if resolution < need:
    raise StructureError(
      f'{what} {resolution} is below the {need} pixels this structure needs (its stride-2 '
      f'layers divide the input by {need}); use at least {need}'
    )
  return resolution


_NAME_RE = re.compile(r'[A-Za-z0-9]+')
_INT_RE = re.compile(r'[+-]?[0-9]{1,12}')  # Longer numbers are far above every limit.
_BLOCKNAME_RE = re.compile(r'[^|(),]*')


def parse(text: str) -> Structure:
  """Parse a structure string; leading/trailing white space (a file's newline) is ignored."""
  if not isinstance(text, str):
    raise StructureError(f'expected a structure string, got {type(text).__name__}')
  if len(text) > MAX_TEXT_CHARS:
    raise StructureError(
      f'a structure string of {len(text):,} characters exceeds the limit of {MAX_TEXT_CHARS:,}'
    )
  lead = len(text) - len(text.lstrip())
  body = text.strip()
  if not body:
    raise StructureError(
      'empty structure: expected at least one block such as SuperConvK3BNRELU(3,8,2,1)'
    )
  blocks = []
  layers = 0
  pos = 0

  def err(msg: str, at: int):
    raise StructureError(msg, lead + at, text)

  while pos < len(body):
    start = pos
    block, pos = _parse_block(body, pos, err)
    # Validate as we go so the error points at the first bad block, and so a huge string stops
    # at the first block past a limit; each check is constant work (the parse is linear).
    _validate_block(len(blocks), block, blocks[-1] if blocks else None, lead + start, text)
    layers = _check_totals(len(blocks), block, layers, lead + start, text)
    blocks.append(block)
  return Structure(tuple(blocks))


def _parse_block(body: str, pos: int, err) -> tuple[Block, int]:
  """(the block at `pos`, the position after it). One block at a time, so `parse` can check
  each block before reading the next; `err(message, position)` raises with the position."""
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
  if pos >= len(body) or body[pos] != '(':
    err(f"expected '(' after {type_name}", pos)
  pos += 1
  close = body.find(')', pos)
  if close < 0:
    err(f"expected ')' to close {type_name}(", pos)
  block_name, inner, pos = _block_label(body[pos:close], pos, err)
  values = _block_args(inner, pos, type_name, spec, err)
  if spec.family == _CONV:
    c_in, c_out, stride, subl = values
    btl = None
  else:
    c_in, c_out, stride, btl, subl = values
  return Block(type_name, c_in, c_out, stride, subl, btl, block_name), close + 1


def _block_label(inner: str, pos: int, err):
  """(block name or None, the arguments after it, their position). The optional 'name|' prefix
  is split off before the arguments so that their error positions stay exact."""
  if '|' not in inner:
    return None, inner, pos
  bar = inner.index('|')
  block_name = inner[:bar]
  if not block_name or not _BLOCKNAME_RE.fullmatch(block_name) or '(' in block_name:
    err("expected a block name before '|'", pos)
  return block_name, inner[bar + 1 :], pos + bar + 1


def _block_args(inner: str, pos: int, type_name: str, spec, err) -> list[int]:
  """The block's integer arguments; each error points at the argument at fault, which a long
  structure string needs to be fixable by hand."""
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
  return values


PRESETS = {'zennet_m': 'zennet_m.txt', 'zennet_r': 'zennet_r.txt'}


def load(path: str | os.PathLike) -> Structure:
  """Load a structure file (one structure on its first non-empty line).

  At most `MAX_FILE_BYTES` are read, so a wrong path (a device such as /dev/zero, a dataset
  archive) fails at once instead of filling the memory.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read(MAX_FILE_BYTES + 1)
  except OSError as e:
    raise StructureError(
      f'{os.fspath(path)}: cannot read the structure file: {e.strerror or e}'
    ) from None
  if len(raw) > MAX_FILE_BYTES:
    raise StructureError(
      f'{os.fspath(path)}: larger than the {MAX_FILE_BYTES:,} bytes a structure file may have; '
      'expected a text file with the structure on its first line'
    )
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise StructureError(
      f'{os.fspath(path)}: not UTF-8 text (byte {e.start}); expected a text file with the '
      'structure on its first line'
    ) from None
  lines = [line for line in text.splitlines() if line.strip()]
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
  return resources.files('zenfer_jax.model.presets').joinpath(PRESETS[name]).read_text().strip()


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
