"""Reading PyTorch checkpoints safely: .pth / .pth.tar (zip or legacy pickle) and .safetensors.

Nothing in a file is ever executed: pickles are read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers, and a pickle that needs anything else is refused with the name
of what it asked for. The format is recognised from the file's first bytes,
not its name, so a renamed file still reads and a non-checkpoint fails
early with a clear message.

"Would run code" is said only of a pickle that really asks for a callable
beyond tensors and plain containers: the pickle's opcodes are read (never
run) to tell such a file from random bytes, a truncated file or something
that is not a pickle at all, which are "not a checkpoint: <file>: <why>".
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from zenfer_jax.errors import UserError

__all__ = ['CheckpointFormatError', 'read_checkpoint', 'extract_state_dict', 'describe_source']


class CheckpointFormatError(ValueError, UserError):
  """A file or object that is not a readable PyTorch checkpoint."""


_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = 0x80


def _sniff(path: str) -> str:
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(9)
  if size == 0:
    raise CheckpointFormatError(f'not a checkpoint: {path}: the file is empty')
  if head.startswith(_ZIP_MAGIC):
    return 'torch-zip'
  if len(head) == 9:
    (n,) = struct.unpack('<Q', head[:8])
    if head[8:9] == b'{' and 0 < n <= size - 8:
      return 'safetensors'
  if head[0] == _PICKLE_PROTO:
    return 'torch-legacy'
  raise CheckpointFormatError(
    f'not a checkpoint: {path}: expected a PyTorch checkpoint (a torch.save zip archive, a legacy '
    f'pickle or a .safetensors file); the file starts with {head[:8]!r}'
  )


def _numpy_data_globals() -> list:
  """numpy scalars, dtypes and arrays: data-only constructors the weights_only unpickler may use.

  The original's wrapper can hold numpy floats (accuracies, timings); these
  build plain values and call nothing else, so they are safe to allow. Pickles
  written under numpy 1 name the same objects numpy.core.*, hence the aliases.
  """
  import numpy as np

  multiarray = np._core.multiarray
  allowed = [np.dtype, np.ndarray, multiarray.scalar, multiarray._reconstruct]
  allowed += [
    type(np.dtype(t))
    for t in (
      np.float16,
      np.float32,
      np.float64,
      np.int8,
      np.int16,
      np.int32,
      np.int64,
      np.uint8,
      np.bool_,
    )
  ]
  allowed += [
    (multiarray.scalar, 'numpy.core.multiarray.scalar'),
    (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
  ]
  return allowed


def _load_torch(path: str, fmt: str) -> Any:
  import torch

  if fmt == 'torch-zip':
    try:
      with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    except zipfile.BadZipFile as e:
      raise CheckpointFormatError(
        f'not a checkpoint: {path}: truncated or damaged (the zip archive is unreadable: {e})'
      ) from None
    if bad is not None:
      raise CheckpointFormatError(
        f'not a checkpoint: {path}: damaged (member {bad!r} fails its CRC check)'
      )
  try:
    with torch.serialization.safe_globals(_numpy_data_globals()):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    msg = str(e)
    damage, refused = _inspect_pickle(path, fmt)
    if damage is None and refused:
      named = [n for n in refused if n in msg.replace(' ', '.')]
      raise CheckpointFormatError(
        f'{path}: refused: this pickle calls {(named or refused)[0]}, which is not a tensor or a '
        'plain container. Loading it would run code from the file, which is never done here. '
        "Re-save it in PyTorch as torch.save(model.state_dict(), 'weights.pth') or as "
        '.safetensors.'
      ) from None
    first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    raise CheckpointFormatError(
      f'not a checkpoint: {path}: {damage or f"torch.load cannot read it ({first})"}'
    ) from None
  except (RuntimeError, EOFError, OSError, ValueError, KeyError, struct.error) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    why = (
      'a pickle, but not a torch.save file (it does not start with the magic number torch.save '
      'writes)'
      if 'magic number' in first.lower()
      else f'truncated or damaged: {first}'
    )
    raise CheckpointFormatError(f'not a checkpoint: {path}: {why}') from None


# Pickle opcodes that push a string, which STACK_GLOBAL then takes as a module or a name.
_STRING_OPS = {
  'SHORT_BINUNICODE',
  'BINUNICODE',
  'BINUNICODE8',
  'UNICODE',
  'SHORT_BINSTRING',
  'BINSTRING',
  'STRING',
}
# A legacy torch.save file: magic number, protocol, system info, the object, its storage keys.
_LEGACY_PICKLES = 5


def _pickle_globals(stream: io.BufferedIOBase) -> list[str]:
  """'module.name' of every callable one pickle refers to, read from its opcodes, never run.

  Raises ValueError (from pickletools) where the stream is not a whole pickle: an unknown
  opcode, or the end of the data before the STOP opcode.
  """
  names: list[str] = []
  pushed: list = []  # What the recent opcodes pushed (strings only matter), for STACK_GLOBAL.
  memo: dict = {}
  for op, arg, _ in pickletools.genops(stream):
    if op.name in ('GLOBAL', 'INST'):
      names.append('.'.join(str(arg).split(' ', 1)))
      pushed.append(None)
    elif op.name == 'STACK_GLOBAL':
      module, name = pushed[-2:] if len(pushed) >= 2 else [None, None]
      names.append(f'{module}.{name}' if module and name else '<a computed name>')
      pushed.append(None)
    elif op.name in _STRING_OPS:
      pushed.append(arg)
    elif op.name == 'MEMOIZE':
      memo[len(memo)] = pushed[-1] if pushed else None
    elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
      memo[arg] = pushed[-1] if pushed else None
    elif op.name in ('GET', 'BINGET', 'LONG_BINGET'):
      pushed.append(memo.get(arg))
    elif op.name not in ('FRAME', 'PROTO'):
      pushed.append(None)
    del pushed[:-2]
  return names


def _allowed_globals() -> set[str]:
  """What torch.load(weights_only=True) rebuilds, plus the numpy data types allowed here."""
  import torch

  allowed: set[str] = set()
  try:
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed.update(_get_allowed_globals())
  except ImportError:  # Another torch version: its storages and rebuild functions still count.
    pass
  for g in [*_numpy_data_globals(), *torch.serialization.get_safe_globals()]:
    if isinstance(g, tuple):
      allowed.add(g[1])
    else:
      allowed.add(f'{getattr(g, "__module__", "")}.{getattr(g, "__qualname__", g)}')
  return allowed


def _inspect_pickle(path: str, fmt: str) -> tuple[str | None, list[str]]:
  """(why the file is not a whole pickle or None, the callables it asks for beyond the allowed).

  For when torch.load refused a file: a pickle that is whole and names a callable that is not
  allowed would run code; anything else (random bytes, a truncated file) is not a checkpoint.
  """
  try:
    if fmt == 'torch-zip':
      with zipfile.ZipFile(path) as zf:
        member = next((n for n in zf.namelist() if n.endswith('data.pkl')), None)
        if member is None:
          return 'the zip archive holds no data.pkl: not a torch.save file', []
        streams = [io.BytesIO(zf.read(member))]
    else:
      with open(path, 'rb') as f:
        data = f.read()
      streams = [io.BytesIO(data)] * _LEGACY_PICKLES  # One stream, read pickle after pickle.
    names: list[str] = []
    for i, stream in enumerate(streams):
      if fmt != 'torch-zip' and stream.tell() >= len(stream.getbuffer()) and i:
        break  # A plain pickle, not a legacy torch.save file: it was the only one.
      names += _pickle_globals(stream)
  except (ValueError, EOFError, zipfile.BadZipFile, OSError) as e:
    why = str(e) or type(e).__name__
    return f'truncated or damaged, or not a pickle at all (reading its opcodes: {why})', []
  allowed = _allowed_globals()
  refused = [n for n in names if n not in allowed and not _is_torch_storage(n)]
  return None, list(dict.fromkeys(refused))


def _is_torch_storage(name: str) -> bool:
  """torch.FloatStorage and the like: persistent ids name them, weights_only loads them."""
  module, _, attr = name.rpartition('.')
  return module in ('torch', 'torch.cuda') and attr.endswith('Storage')


def _load_safetensors(path: str) -> Mapping:
  from safetensors import SafetensorError
  from safetensors.torch import load_file

  try:
    return load_file(path, device='cpu')
  except (SafetensorError, OSError, ValueError, RuntimeError) as e:
    raise CheckpointFormatError(
      f'not a checkpoint: {path}: truncated or damaged .safetensors file: {e}'
    ) from None


def read_checkpoint(path: str | os.PathLike) -> Any:
  """The object stored in a checkpoint file (a dict for every format we accept)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint {path!r} does not exist')
  if os.path.isdir(path):
    raise CheckpointFormatError(
      f'{path}: is a directory; expected a .pth/.pth.tar/.safetensors file (a zenfer_jax model directory is '
      'read with zenfer_jax.rundir.model_directory.load_model_dir)'
    )
  fmt = _sniff(path)
  if fmt == 'safetensors':
    return _load_safetensors(path)
  return _load_torch(path, fmt)


def _is_tensor(x) -> bool:
  import torch

  return isinstance(x, torch.Tensor)


def extract_state_dict(
  obj: Any, where: str = 'checkpoint'
) -> collections.OrderedDict[str, np.ndarray]:
  """A flat {key: numpy array} from a state_dict, a {'state_dict': ...} wrapper or either with 'module.' prefixes.

  Floating tensors become float32 (the Flax model's parameter dtype); the
  int64 num_batches_tracked counters stay integers.
  """
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(
      f'{where}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}'
    )
  sd = obj
  if 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    sd = obj['state_dict']
  elif not obj:
    raise CheckpointFormatError(f'{where}: the state_dict is empty')
  non_tensors = [k for k, v in sd.items() if not (_is_tensor(v) or isinstance(v, np.ndarray))]
  if non_tensors:
    shown = ', '.join(repr(k) for k in non_tensors[:8])
    more = f' and {len(non_tensors) - 8} more' if len(non_tensors) > 8 else ''
    raise CheckpointFormatError(
      f'{where}: not a model state_dict: entries {shown}{more} are not tensors '
      f"(top-level keys: {sorted(map(str, obj))[:12]}); expected a bare state_dict or {{'state_dict': ...}}"
    )
  keys = [str(k) for k in sd]
  # DataParallel / DistributedDataParallel prefix every key with 'module.'.
  strip = 0
  while keys and all(k.startswith('module.' * (strip + 1)) for k in keys):
    strip += 1
  out = collections.OrderedDict()
  for k, v in sd.items():
    k = str(k)[len('module.') * strip :]
    if _is_tensor(v):
      v = v.detach().cpu()
      if v.is_floating_point():
        v = v.float()
      v = v.numpy()
    else:
      v = np.asarray(v)
      if np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float32)
    out[k] = v
  return out


def describe_source(obj: Any) -> str:
  """A short note on the training metadata the original's wrapper carries (epoch, accuracies)."""
  if not isinstance(obj, Mapping) or 'state_dict' not in obj:
    return ''
  parts = []
  for key in ('epoch', 'top1_acc', 'top5_acc'):
    v = obj.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
      parts.append(f'{key} {v:g}' if isinstance(v, float) else f'{key} {v}')
  return ', '.join(parts)
