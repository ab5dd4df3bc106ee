"""Config files that build on each other by file path, so they work from any directory.

`--config=/anywhere/configs/rafdb_m.py` loads the file by its path; nothing puts its directory on
`sys.path`, so `from configs import default` inside it fails unless the current directory is the
repository root. A config instead loads its base beside itself:

  from zenfer_jax.config.files import sibling

  default = sibling(__file__, 'default')

which works from any directory, for the shipped configs and for a user's own copies of them.
"""

from __future__ import annotations

import importlib.util
import os
import types

__all__ = ['sibling']


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config module `<name>.py` in the directory of `config_file`, loaded by path."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{config_file} builds on the config {name}.py, expected beside it at {path}; copy it there '
      'too'
    )
  spec = importlib.util.spec_from_file_location(f'zenfer_jax_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
