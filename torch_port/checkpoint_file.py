"""Reading PyTorch checkpoints safely: .pth / .pth.tar (zip or legacy pickle) and .safetensors.

Nothing in a file is ever executed: pickles are read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain
containers, and a pickle that needs anything else is refused with the name
of what it asked for. The format is recognised from the file's first bytes,
not its name, so a renamed file still reads and a non-checkpoint fails
early with a clear message.
"""

from __future__ import annotations

import collections
import os
import pickle
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
    raise CheckpointFormatError(f'{path}: the file is empty')
  if head.startswith(_ZIP_MAGIC):
    return 'torch-zip'
  if len(head) == 9:
    (n,) = struct.unpack('<Q', head[:8])
    if head[8:9] == b'{' and 0 < n <= size - 8:
      return 'safetensors'
  if head[0] == _PICKLE_PROTO:
    return 'torch-legacy'
  raise CheckpointFormatError(
    f'{path}: not a PyTorch checkpoint (expected a torch.save zip archive, a legacy pickle or a '
    f'.safetensors file; the file starts with {head[:8]!r})'
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
        f'{path}: truncated or damaged checkpoint (the zip archive is unreadable: {e})'
      ) from None
    if bad is not None:
      raise CheckpointFormatError(
        f'{path}: damaged checkpoint (member {bad!r} fails its CRC check)'
      )
  try:
    with torch.serialization.safe_globals(_numpy_data_globals()):
      return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    msg = str(e)
    if (
      'weights_only' in msg.lower()
      or 'Unsupported global' in msg
      or 'Weights only load failed' in msg
    ):
      detail = ''
      for line in msg.splitlines():
        if 'Unsupported global' in line or 'GLOBAL' in line:
          detail = f' ({line.strip()})'
          break
      raise CheckpointFormatError(
        f'{path}: refused: this pickle needs more than tensors and plain containers to load{detail}. '
        'Loading it would run code from the file, which is never done here. Re-save it in PyTorch as '
        "torch.save(model.state_dict(), 'weights.pth') or as .safetensors."
      ) from None
    raise CheckpointFormatError(
      f'{path}: not a readable PyTorch checkpoint: {msg.splitlines()[0] if msg else e!r}'
    ) from None
  except (RuntimeError, EOFError, OSError, ValueError, KeyError, struct.error) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointFormatError(f'{path}: truncated or damaged checkpoint: {first}') from None


def _load_safetensors(path: str) -> Mapping:
  from safetensors import SafetensorError
  from safetensors.torch import load_file

  try:
    return load_file(path, device='cpu')
  except (SafetensorError, OSError, ValueError, RuntimeError) as e:
    raise CheckpointFormatError(f'{path}: truncated or damaged .safetensors file: {e}') from None


def read_checkpoint(path: str | os.PathLike) -> Any:
  """The object stored in a checkpoint file (a dict for every format we accept)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint {path!r} does not exist')
  if os.path.isdir(path):
    raise CheckpointFormatError(
      f'{path}: is a directory; expected a .pth/.pth.tar/.safetensors file (a zenfer_jax model directory is '
      'read with zenfer_jax.model_directory.load_model_dir)'
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
