"""Subprocesses that run as on a machine without TensorFlow installed.

A `sitecustomize` module on PYTHONPATH (imported by every Python process at start-up, Grain's
worker processes included) puts a finder first on `sys.meta_path` that fails every import of
`tensorflow` or a submodule with ModuleNotFoundError, and makes `importlib.util.find_spec` say
it is absent, as libraries that probe for it first (etils, TFDS) expect of an uninstalled
package. Each blocked import is appended to the file named by $NO_TF_LOG, so a test can tell a
library that tried and fell back from one that never tried.
"""

from __future__ import annotations

import os
import pathlib

SITECUSTOMIZE = """
import importlib.util
import os
import sys


def _blocked(name):
  return name == 'tensorflow' or name.startswith('tensorflow.')


def _note(name):
  log = os.environ.get('NO_TF_LOG')
  if log:
    with open(log, 'a') as f:
      f.write(name + '\\n')


class _NoTensorFlow:
  def find_spec(self, name, path=None, target=None):
    if _blocked(name):
      _note(name)
      raise ModuleNotFoundError(f'No module named {name!r}', name=name)
    return None


_find_spec = importlib.util.find_spec


def _find_spec_without_tf(name, package=None):
  if _blocked(name):
    _note(name)
    return None
  return _find_spec(name, package)


importlib.util.find_spec = _find_spec_without_tf
sys.meta_path.insert(0, _NoTensorFlow())
"""


def environment(directory: pathlib.Path, env: dict, log: pathlib.Path | None = None) -> dict:
  """`env` with TensorFlow made unimportable (the sitecustomize is written to `directory`)."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  out = dict(env)
  out['PYTHONPATH'] = str(directory) + os.pathsep + env.get('PYTHONPATH', '')
  if log is not None:
    out['NO_TF_LOG'] = str(log)
  return out
