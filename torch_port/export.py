"""zenfer_jax variables -> a state_dict the original ZenNet-SA-FER code loads with strict=True.

Python::

    sd = torch_port.export_state_dict(variables, "zennet_m", 7, use_sa=True)
    master_net.load_state_dict(sd, strict=True)

Command line (reads a model directory written by conversion or training)::

    python -m torch_port.export --checkpoint DIR --output X.pth

The state_dict has the original's keys in the original's order, including the
BatchNorm ``num_batches_tracked`` counters (Flax keeps none; they are written
as 0, which PyTorch only reads when BatchNorm momentum is None, never the case
in the original). The output file is a bare state_dict, or the original's
training wrapper with ``--wrapped``, or .safetensors by extension; it is written
to a temporary file and renamed, so a failure leaves nothing behind.

Either .pth form is for the original script's ``--load_parameters_from`` (its
loader takes ``checkpoint['state_dict']`` when present, else the whole file).
Neither is for its ``--resume``: resuming also restores the SGD optimizer's
state (``checkpoint['optimizer']``, momentum buffers per parameter group), which
a model directory does not hold, so the wrapper carries no ``optimizer`` entry
and ``--resume`` would fail on it.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from flax import traverse_util

from torch_port import checkpoint_file, mapping
from zenfer_jax import atomic_write, cli
from zenfer_jax.model.structure import StructureError, resolve
from zenfer_jax.rundir import model_directory

__all__ = ['export_state_dict', 'save_state_dict', 'main']


def export_state_dict(
  variables: Mapping,
  structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  num_batches_tracked: int = 0,
) -> collections.OrderedDict:
  """An OrderedDict of torch tensors, key-for-key the original MasterNet's state_dict.

  Strict: a variables tree that does not fit the model (missing, unexpected
  or mis-shaped paths) fails with one MergeError listing all of them.
  """
  import torch

  s = resolve(structure)
  expected = mapping.entries(s, num_classes, use_sa=use_sa, use_lw_att=use_lw_att)
  flat = traverse_util.flatten_dict(dict(variables), sep='/')
  want = {e.flax_path: e for e in expected if e.collection is not None}
  missing = [p for p in want if p not in flat]
  unexpected = [p for p in flat if p not in want]
  misshaped = [
    (p, tuple(np.shape(flat[p])), e.flax_shape)
    for p, e in want.items()
    if p in flat and tuple(np.shape(flat[p])) != e.flax_shape
  ]
  if missing or unexpected or misshaped:
    raise model_directory.MergeError(
      missing,
      unexpected,
      misshaped,
      what=f'variables (for {s}, {num_classes} classes, use_sa={use_sa}, use_lw_att={use_lw_att})',
      source='variables tree',
    )

  out = collections.OrderedDict()
  for e in expected:
    if e.collection is None:
      out[e.torch_key] = torch.tensor(int(num_batches_tracked), dtype=torch.long)
      continue
    arr = np.asarray(flat[e.flax_path], dtype=np.float32)
    out[e.torch_key] = torch.from_numpy(mapping.to_torch(arr, e.kind).copy())
  return out


def _check_replaceable_file(path: str) -> None:
  """Overwrite replaces a checkpoint file, never a file of another kind given by mistake."""
  if not os.path.isfile(path):
    raise FileExistsError(f'{path} exists and is not a regular file; it is not replaced')
  try:
    checkpoint_file._sniff(path)  # The format from the first bytes, as reading does.
  except checkpoint_file.CheckpointFormatError as e:
    raise FileExistsError(
      f'{e}. --overwrite replaces only a PyTorch checkpoint file (.pth zip or pickle, '
      '.safetensors); choose another --output'
    ) from None


def save_state_dict(
  state_dict: Mapping, path: str, *, wrapped: bool = False, overwrite: bool = False
) -> str:
  """Write a state_dict atomically: .safetensors by extension, otherwise torch.save."""
  import torch

  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise FileExistsError(f'{path} is a directory; give a file name such as {path}/model.pth')
  if os.path.lexists(path):
    if not overwrite:
      raise FileExistsError(f'{path} already exists (pass --overwrite to replace it)')
    _check_replaceable_file(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with atomic_write.replacing(path) as tmp:
    if path.endswith('.safetensors'):
      from safetensors.torch import save_file

      save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp)
    else:
      obj = (
        {
          'epoch': 0,
          'state_dict': state_dict,
          'top1_acc': 0.0,
          'top5_acc': 0.0,
          'training_status_info': {},
        }
        if wrapped
        else state_dict
      )
      torch.save(obj, tmp)
  return path


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m torch_port.export',
    description='Export a zenfer_jax model directory as a PyTorch state_dict for the original ZenNet-SA-FER code.',
  )
  p.add_argument(
    '--checkpoint', required=True, help='model directory (model_card.json + variables/)'
  )
  p.add_argument('--output', required=True, help='X.pth, X.pth.tar or X.safetensors')
  p.add_argument(
    '--wrapped',
    action='store_true',
    help="save as the original's training checkpoint {'epoch', 'state_dict', ...} instead of a "
    "bare state_dict; either form is for the original's --load_parameters_from, not its --resume "
    '(which also needs optimizer state that a model directory does not hold)',
  )
  p.add_argument(
    '--overwrite',
    action='store_true',
    help='replace an existing --output that is a PyTorch checkpoint file; any other file is refused',
  )
  return p


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cli.setup_logging(args.verbosity)
  try:
    variables, card = model_directory.load_model_dir(args.checkpoint)
    sd = export_state_dict(
      variables,
      card['structure'],
      card['num_classes'],
      use_sa=card['use_sa'],
      use_lw_att=card['use_lw_att'],
    )
    if args.wrapped and args.output.endswith('.safetensors'):
      raise ValueError('--wrapped applies to .pth files; .safetensors holds tensors only')
    out = save_state_dict(sd, args.output, wrapped=args.wrapped, overwrite=args.overwrite)
  except (
    model_directory.ModelDirError,
    model_directory.MergeError,
    StructureError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
  ) as e:
    return cli.report(e)
  flags = ' --use_sa' if card['use_sa'] else ''
  flags += ' --use_lw_att' if card['use_lw_att'] else ''
  print(
    f'wrote {out} ({len(sd)} tensors). In the original code build it with '
    f"--plainnet_struct '{card['structure']}' --num_classes {card['num_classes']}{flags}"
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
