"""PyTorch interoperability: load ZenNet-SA-FER checkpoints into zenfer_jax and export back.

`load_torch_checkpoint` and `export_state_dict` are the Python API;
`python -m torch_port.convert` and `python -m torch_port.export` the command
lines. `torch_port.reference_model` is our own PyTorch ZenNet whose
state_dict matches the original repository's key for key (the parity oracle).
Importing this package does not import torch; the functions do when called.
"""

from __future__ import annotations

__all__ = [
  'load_torch_checkpoint',
  'export_state_dict',
  'convert_state_dict',
  'CheckpointMismatchError',
  'CheckpointFormatError',
]


def __getattr__(name):
  if name in ('load_torch_checkpoint', 'convert_state_dict', 'CheckpointMismatchError'):
    from torch_port import convert

    return getattr(convert, name)
  if name == 'export_state_dict':
    from torch_port.export import export_state_dict

    return export_state_dict
  if name == 'CheckpointFormatError':
    from torch_port.checkpoint_file import CheckpointFormatError

    return CheckpointFormatError
  raise AttributeError(f"module 'torch_port' has no attribute {name!r}")
