"""Trained models that ship inside the package, loadable by name (`--checkpoint fer2013_r`).

Each is a model directory (`zenfer_jax.rundir.model_directory`: the weights and a card with the
classes, input size, recipe, accuracy and the command that trained it) in a folder of this
package named after it, so a fresh clone or a pip install has them with nothing downloaded.
Wherever a model dir or workdir path is taken, a path that exists wins over a name.
"""

from __future__ import annotations

import os

from zenfer_jax.rundir import model_directory

ROOT = os.path.dirname(os.path.abspath(__file__))


def names() -> tuple[str, ...]:
  """The shipped models' names."""
  return tuple(
    sorted(
      entry
      for entry in os.listdir(ROOT)
      if os.path.isfile(os.path.join(ROOT, entry, model_directory.CARD_NAME))
    )
  )


def resolve(path_or_name: str | os.PathLike) -> str:
  """`path_or_name` if it exists, else the shipped model of that name; else unchanged, so the
  caller's own error for a missing path names what was asked for."""
  path = os.fspath(path_or_name)
  if os.path.exists(path) or os.sep in path:
    return path
  candidate = os.path.join(ROOT, path)
  if os.path.isfile(os.path.join(candidate, model_directory.CARD_NAME)):
    return candidate
  return path
