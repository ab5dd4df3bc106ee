"""Config files: found by path or by the name of a shipped one, and built on a sibling file.

`--config` takes a config file's path (`--config=configs/rafdb_m.py`, or a user's own copy
anywhere) or the name of a config shipped in the package (`--config=rafdb_m`, the file
`zenfer_jax/configs/rafdb_m.py`), so an installed package trains with no checkout around it. A
path that exists wins over a name, as for the shipped models.

A config loads its base beside itself, by path, not with `from configs import default` (which
needs the repository root on `sys.path`):

  from zenfer_jax.config.files import sibling

  default = sibling(__file__, 'default')

which works from any directory, for the shipped configs and for a user's own copies of them.
"""

from __future__ import annotations

import importlib.util
import os
import types

from absl import flags
from ml_collections import config_flags

__all__ = ['SHIPPED_DIR', 'define_config_flag', 'resolve', 'shipped_names', 'sibling']

# The configs that ship with the package (package `zenfer_jax.configs`; the repository's
# `configs/` is a link to it). Found by path: loading a config never imports that package.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def shipped_names() -> tuple[str, ...]:
  """The names `--config` accepts for the shipped configs."""
  return tuple(
    sorted(
      name[: -len('.py')]
      for name in os.listdir(SHIPPED_DIR)
      if name.endswith('.py') and name != '__init__.py'
    )
  )


def resolve(path_or_name: str) -> str:
  """`path_or_name` if it is a file, else the shipped config of that name (`rafdb_m` or
  `rafdb_m.py`); else unchanged, so the caller's error for a missing file names what was asked
  for."""
  if os.path.isfile(path_or_name) or os.path.dirname(path_or_name):
    return path_or_name
  name = path_or_name.removesuffix('.py')
  shipped = os.path.join(SHIPPED_DIR, f'{name}.py')
  if name and name != '__init__' and os.path.isfile(shipped):
    return shipped
  return path_or_name


class _PathOrNameParser(flags.ArgumentParser):
  """ml_collections' config file parser, which loads by path only, given the path a name means."""

  def __init__(self, by_path: flags.ArgumentParser):
    self._by_path = by_path

  def parse(self, argument):
    file, colon, arguments = argument.partition(':')  # `file.py:arguments` go to get_config.
    return self._by_path.parse(resolve(file) + colon + arguments)

  def flag_type(self) -> str:
    return self._by_path.flag_type()


def define_config_flag(what: str) -> flags.FlagHolder:
  """`--config` (with its `--config.key=value` overrides), a path or a shipped config's name."""
  holder = config_flags.DEFINE_config_file(
    'config',
    None,
    f'{what} config: a config file or the name of a shipped one ({", ".join(shipped_names())}).',
    lock_config=True,
  )
  flag = flags.FLAGS['config']
  flag.parser = _PathOrNameParser(flag.parser)
  return holder


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
