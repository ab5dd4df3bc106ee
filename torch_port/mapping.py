"""The one table between PyTorch state_dict keys and Flax variable paths.

`entries` walks the layer plan (`zenfer_jax.model.plan`) and yields, in the
original's state_dict order, every key with its PyTorch shape, the Flax
collection and path it becomes, and how the array is laid out on each side:

| kind    | PyTorch                          | Flax                        |
| ------- | -------------------------------- | --------------------------- |
| conv    | (out, in/groups, k, k)  OIHW     | (k, k, in/groups, out) HWIO |
| dense   | (out, in)                        | (in, out)                   |
| gate    | (1, C, 1, 1)  SA scalars         | (C,)                        |
| vector  | (C,)                             | (C,)                        |
| counter | num_batches_tracked, int64 ()    | (not kept)                  |

Both directions (`to_flax`, `to_torch`) are exact reshapes and transposes, so
a round trip is bit-for-bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from zenfer_jax.model import plan as plan_lib
from zenfer_jax.model.structure import resolve

__all__ = ['Entry', 'entries', 'to_flax', 'to_torch', 'CLASSIFIER_PREFIX', 'LW_ATT_PREFIX']

CLASSIFIER_PREFIX = 'fc_linear.'
LW_ATT_PREFIX = 'lw_att.'


@dataclasses.dataclass(frozen=True)
class Entry:
  torch_key: str
  torch_shape: tuple[int, ...]
  kind: str  # conv | dense | gate | vector | counter
  collection: str | None  # 'params' | 'batch_stats' | None for counters
  path: tuple[str, ...]

  @property
  def flax_path(self) -> str:
    return '/'.join((self.collection or '-',) + self.path)

  @property
  def flax_shape(self) -> tuple[int, ...]:
    if self.kind == 'conv':
      o, i, kh, kw = self.torch_shape
      return (kh, kw, i, o)
    if self.kind == 'dense':
      return self.torch_shape[::-1]
    if self.kind == 'gate':
      return (self.torch_shape[1],)
    return self.torch_shape


def to_flax(arr: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'conv':
    return np.ascontiguousarray(np.transpose(arr, (2, 3, 1, 0)))
  if kind == 'dense':
    return np.ascontiguousarray(arr.T)
  if kind == 'gate':
    return np.ascontiguousarray(arr.reshape(-1))
  return np.ascontiguousarray(arr)


def to_torch(arr: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'conv':
    return np.ascontiguousarray(np.transpose(arr, (3, 2, 0, 1)))
  if kind == 'dense':
    return np.ascontiguousarray(arr.T)
  if kind == 'gate':
    return np.ascontiguousarray(arr.reshape(1, -1, 1, 1))
  return np.ascontiguousarray(arr)


def _bn_entries(prefix: str, path: tuple[str, ...], c: int) -> Iterator[Entry]:
  yield Entry(prefix + 'weight', (c,), 'vector', 'params', path + ('scale',))
  yield Entry(prefix + 'bias', (c,), 'vector', 'params', path + ('bias',))
  yield Entry(prefix + 'running_mean', (c,), 'vector', 'batch_stats', path + ('mean',))
  yield Entry(prefix + 'running_var', (c,), 'vector', 'batch_stats', path + ('var',))
  yield Entry(prefix + 'num_batches_tracked', (), 'counter', None, path + ('num_batches_tracked',))


def _sa_entries(prefix: str, path: tuple[str, ...], half: int) -> Iterator[Entry]:
  for name in ('cweight', 'cbias', 'sweight', 'sbias'):
    yield Entry(prefix + name, (1, half, 1, 1), 'gate', 'params', path + (name,))
  yield Entry(prefix + 'gn.weight', (half,), 'vector', 'params', path + ('gn_scale',))
  yield Entry(prefix + 'gn.bias', (half,), 'vector', 'params', path + ('gn_bias',))


def _op_entries(ops, tprefix: str, fpath: tuple[str, ...]) -> Iterator[Entry]:
  for op in ops:
    k = f'{tprefix}module_list.{op.index}.'
    if isinstance(op, plan_lib.ConvOp):
      shape = (op.out_channels, op.in_channels // op.groups, op.kernel_size, op.kernel_size)
      yield Entry(
        k + 'netblock.weight', shape, 'conv', 'params', fpath + (f'conv{op.index}', 'kernel')
      )
    elif isinstance(op, plan_lib.BNOp):
      yield from _bn_entries(k + 'netblock.', fpath + (f'bn{op.index}',), op.channels)
    elif isinstance(op, plan_lib.SAOp):
      yield from _sa_entries(
        k + 'netblock.', fpath + (f'sa{op.index}',), op.channels // (2 * op.groups)
      )
    elif isinstance(op, plan_lib.ResidualOp):
      lpath = fpath + (f'layer{op.index}',)
      yield from _op_entries(op.ops, k, lpath)
      if op.projection:
        yield Entry(
          k + 'proj.0.weight',
          (op.out_channels, op.in_channels, 1, 1),
          'conv',
          'params',
          lpath + ('proj_conv', 'kernel'),
        )
        yield Entry(
          k + 'proj.0.bias', (op.out_channels,), 'vector', 'params', lpath + ('proj_conv', 'bias')
        )
        yield from _bn_entries(k + 'proj.1.', lpath + ('proj_bn',), op.out_channels)
    elif isinstance(op, plan_lib.ReLUOp):
      continue
    else:  # pragma: no cover
      raise TypeError(op)


def entries(
  structure, num_classes: int, *, use_sa: bool = False, use_lw_att: bool = False
) -> list[Entry]:
  """Every state_dict key of the original model, in order, with its Flax counterpart."""
  s = resolve(structure)
  out: list[Entry] = []
  for bp in plan_lib.expand(s, use_sa=use_sa):
    out.extend(_op_entries(bp.ops, f'module_list.{bp.index}.', ('backbone', f'block{bp.index}')))
  last = s.out_channels
  out.append(
    Entry(
      CLASSIFIER_PREFIX + 'netblock.weight',
      (num_classes, last),
      'dense',
      'params',
      ('fc', 'kernel'),
    )
  )
  out.append(
    Entry(CLASSIFIER_PREFIX + 'netblock.bias', (num_classes,), 'vector', 'params', ('fc', 'bias'))
  )
  if use_lw_att:
    out.append(
      Entry(LW_ATT_PREFIX + 'res_scale.scale', (1,), 'vector', 'params', ('lw_att', 'res_scale'))
    )
    out.append(
      Entry(LW_ATT_PREFIX + 'x_scale.scale', (1,), 'vector', 'params', ('lw_att', 'x_scale'))
    )
    out.extend(_sa_entries(LW_ATT_PREFIX + 'SAlayer.', ('lw_att', 'sa'), last // 16))
  return out
