"""Model directories: a JSON model card beside an orbax checkpoint of the variables.

A model directory is what conversion from PyTorch writes and what evaluation,
prediction and training-as-initialisation read::

    DIR/model_card.json   {"structure", "num_classes", "use_sa", "use_lw_att",
                           "class_names", "image_size", "recipe", "source"}
    DIR/variables/        orbax checkpoint of {"params": ..., "batch_stats": ...}

The card holds everything needed to rebuild the model with
`zenfer_jax.model.zennet.build_model`, so a directory is self-describing. Writes go
to a temporary sibling that is renamed into place at the end: a failure leaves
nothing at the destination. `strict_merge` is the one way loaded weights enter
a freshly initialised tree: every missing, unexpected and mis-shaped path is
reported in a single error, so a wrong checkpoint is diagnosed in one run.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from zenfer_jax import atomic_write
from zenfer_jax.dataset_names import RECIPE_NAMES
from zenfer_jax.errors import UserError
from zenfer_jax.model.structure import Structure, StructureError, parse, resolve
from zenfer_jax.model.zennet import build_model

__all__ = [
  'CARD_NAME',
  'VARIABLES_NAME',
  'CARD_FIELDS',
  'MergeError',
  'ModelDirError',
  'make_card',
  'validate_card',
  'check_replaceable',
  'save_model_dir',
  'load_model_dir',
  'load_card',
  'strict_merge',
  'build_from_card',
]

CARD_NAME = 'model_card.json'
VARIABLES_NAME = 'variables'
COLLECTIONS = ('params', 'batch_stats')

# field -> (accepted types, required)
CARD_FIELDS = {
  'structure': ((str,), True),
  'num_classes': ((int,), True),
  'use_sa': ((bool,), True),
  'use_lw_att': ((bool,), True),
  'class_names': ((list, type(None)), False),
  'image_size': ((int, type(None)), False),
  'recipe': ((str, type(None)), False),
  'source': ((str,), False),
}


class ModelDirError(ValueError, UserError):
  """A model directory or model card that cannot be used."""


class MergeError(ValueError, UserError):
  """Loaded variables that do not fit the model; lists every offending path."""

  def __init__(
    self,
    missing: Sequence[str],
    unexpected: Sequence[str],
    misshaped: Sequence[tuple[str, tuple, tuple]],
    what: str = 'loaded variables',
    source: str = 'loaded tree',
  ):
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.misshaped = list(misshaped)
    lines = [f'{what} do not match the model:']
    if self.missing:
      lines.append(f'  missing ({len(self.missing)}): the model has these, the {source} does not')
      lines += [f'    {p}' for p in self.missing]
    if self.unexpected:
      lines.append(
        f'  unexpected ({len(self.unexpected)}): the {source} has these, the model does not'
      )
      lines += [f'    {p}' for p in self.unexpected]
    if self.misshaped:
      lines.append(f'  mis-shaped ({len(self.misshaped)}): name, {source} shape, model shape')
      lines += [f'    {p}: {tuple(a)} vs {tuple(b)}' for p, a, b in self.misshaped]
    super().__init__('\n'.join(lines))


# ---------------------------------------------------------------------------
# Merging


def _shape(x) -> tuple:
  return tuple(np.shape(x))


def _matches(path: str, patterns: Iterable[str]) -> bool:
  # A pattern may name the collection ('params/fc/*') or not ('fc/*').
  bare = path.split('/', 1)[1] if '/' in path else path
  return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def strict_merge(
  fresh_variables: Mapping,
  loaded_variables: Mapping,
  skip_patterns: Sequence[str] = (),
  *,
  what: str = 'loaded variables',
) -> dict:
  """Loaded values placed into the structure of a freshly initialised tree.

  Every leaf of `fresh_variables` must be present in `loaded_variables` with
  the same shape, and `loaded_variables` may hold nothing else, except paths
  matching a `skip_patterns` glob (matched against 'collection/path' and
  against 'path' alone): those keep their fresh value and any loaded value
  there is ignored. Otherwise one `MergeError` lists every missing,
  unexpected and mis-shaped path. Loaded values are cast to the fresh dtype.
  """
  if isinstance(skip_patterns, str):
    skip_patterns = (skip_patterns,)
  # 'collection/module/name' paths: what skip patterns match and errors name.
  fresh = traverse_util.flatten_dict(dict(fresh_variables), sep='/')
  loaded = traverse_util.flatten_dict(dict(loaded_variables), sep='/')
  missing, unexpected, misshaped = [], [], []
  merged = {}
  for path, fv in fresh.items():
    if _matches(path, skip_patterns):
      merged[path] = fv
      continue
    if path not in loaded:
      missing.append(path)
      continue
    lv = loaded[path]
    if _shape(lv) != _shape(fv):
      misshaped.append((path, _shape(lv), _shape(fv)))
      continue
    dtype = getattr(fv, 'dtype', None)
    merged[path] = np.asarray(lv, dtype=dtype) if dtype is not None else np.asarray(lv)
  for path in loaded:
    if path not in fresh and not _matches(path, skip_patterns):
      unexpected.append(path)
  if missing or unexpected or misshaped:
    raise MergeError(missing, unexpected, misshaped, what=what)
  return traverse_util.unflatten_dict(merged, sep='/')


# ---------------------------------------------------------------------------
# Model cards


def make_card(
  structure: str | os.PathLike | Structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  class_names: Sequence[str] | None = None,
  image_size: int | None = None,
  recipe: str | None = None,
  source: str = '',
) -> dict:
  """A validated card; `structure` is anything `build_model` takes (string, preset name such
  as 'zennet_m', file path, Structure), stored as the full structure string so the card alone
  rebuilds the model."""
  try:
    structure = resolve(structure)
  except (StructureError, OSError) as e:
    raise ModelDirError(f"model card: field 'structure' is not a valid structure: {e}") from None
  card = {
    'structure': str(structure),
    'num_classes': int(num_classes),
    'use_sa': bool(use_sa),
    'use_lw_att': bool(use_lw_att),
    'class_names': list(class_names) if class_names is not None else None,
    'image_size': int(image_size) if image_size is not None else None,
    'recipe': recipe,
    'source': source,
  }
  return validate_card(card)


def validate_card(card: Mapping, where: str = 'model card') -> dict:
  """The card with optional fields filled in; ModelDirError naming every bad field."""
  if not isinstance(card, Mapping):
    raise ModelDirError(f'{where}: expected a JSON object, got {type(card).__name__}')
  problems = []
  out = dict(card)
  for field, (types, required) in CARD_FIELDS.items():
    if field not in out:
      if required:
        problems.append(f'missing required field {field!r}')
      else:
        out[field] = '' if field == 'source' else None
      continue
    value = out[field]
    # bool is an int subclass: keep them apart.
    ok = isinstance(value, types) and not (bool not in types and isinstance(value, bool))
    if not ok:
      names = ' or '.join('null' if t is type(None) else t.__name__ for t in types)
      problems.append(f'field {field!r} must be {names}, got {value!r}')
  if not problems:
    if out['num_classes'] < 1:
      problems.append(f"field 'num_classes' must be positive, got {out['num_classes']}")
    names = out.get('class_names')
    if names is not None:
      if not all(isinstance(n, str) for n in names):
        problems.append("field 'class_names' must be a list of strings")
      elif len(names) != out['num_classes']:
        problems.append(
          f"field 'class_names' has {len(names)} names for {out['num_classes']} classes"
        )
    if out.get('image_size') is not None and out['image_size'] < 1:
      problems.append(f"field 'image_size' must be positive, got {out['image_size']}")
    if out.get('recipe') is not None and out['recipe'] not in RECIPE_NAMES:
      problems.append(
        f"field 'recipe' must be one of {list(RECIPE_NAMES)} or null, got {out['recipe']!r}"
      )
    try:
      out['structure'] = str(parse(out['structure']))
    except ValueError as e:
      problems.append(f"field 'structure' is not a valid structure: {e}")
  if problems:
    raise ModelDirError(f'{where}: ' + '; '.join(problems))
  return out


def load_card(directory: str | os.PathLike) -> dict:
  path = os.path.join(os.fspath(directory), CARD_NAME)
  if not os.path.isfile(path):
    raise ModelDirError(f'{os.fspath(directory)!r} is not a model directory: {CARD_NAME} not found')
  try:
    with open(path, encoding='utf-8') as f:
      card = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ModelDirError(f'{path}: cannot read the model card: {e}') from None
  return validate_card(card, where=path)


# ---------------------------------------------------------------------------
# Directories


def _to_numpy_tree(variables: Mapping) -> dict:
  out = {}
  for c in COLLECTIONS:
    tree = variables.get(c, {}) if isinstance(variables, Mapping) else {}
    flat = traverse_util.flatten_dict(dict(tree))
    out[c] = traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()})
  extra = set(variables) - set(COLLECTIONS)
  if extra:
    raise ModelDirError(
      f'variables hold collections {sorted(extra)}; a model directory stores only {COLLECTIONS}'
    )
  return out


def check_replaceable(directory: str | os.PathLike, *, overwrite: bool) -> None:
  """Refuses a destination that writing a model directory would destroy.

  Absent or empty is fine. Otherwise only `overwrite` of a model directory (a model card and a
  variables/ checkpoint, nothing else) is allowed: replacing renames the old directory away and
  deletes it, so anything else (`--output .`, a home directory, a training workdir) would be
  lost with it.
  """
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.lexists(directory):
    return
  if not os.path.isdir(directory):
    raise ModelDirError(
      f'{directory} exists and is not a directory; a model directory is written there only '
      'where nothing or an earlier model directory is'
    )
  entries = sorted(os.listdir(directory))
  if not entries:
    return
  if not overwrite:
    raise ModelDirError(
      f'{directory} exists and is not empty; choose another output or pass overwrite'
    )
  foreign = [e for e in entries if e not in (CARD_NAME, VARIABLES_NAME)]
  cwd = os.path.abspath(os.getcwd())
  inside = cwd == directory or cwd.startswith(directory.rstrip(os.sep) + os.sep)
  if (
    foreign
    or inside
    or not os.path.isfile(os.path.join(directory, CARD_NAME))
    or not os.path.isdir(os.path.join(directory, VARIABLES_NAME))
  ):
    held = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more' if len(foreign) > 5 else '')
    why = '; '.join(
      reason
      for reason, applies in (
        (f'it holds {held}', foreign),
        ('it is the current directory or contains it', inside),
        (f'it lacks {CARD_NAME} or {VARIABLES_NAME}/', not foreign and not inside),
      )
      if applies
    )
    raise ModelDirError(
      f'{directory} is not a model directory this tool wrote ({why}): overwrite replaces only a '
      f'directory holding just {CARD_NAME} and {VARIABLES_NAME}/. Choose another output, or move '
      'its contents away yourself'
    )


def _this_process_checkpointer():
  """An orbax checkpointer that coordinates with no other process.

  A model directory is written by one process of a multi-process job (process 0 exports) and may
  be read by any subset of them; orbax's default barriers would wait for all processes.
  """
  import jax
  import orbax.checkpoint as ocp

  if jax.process_count() == 1:
    return ocp.StandardCheckpointer()
  me = jax.process_index()
  return ocp.StandardCheckpointer(
    multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'model_dir_{me}'
    )
  )


def save_model_dir(
  directory: str | os.PathLike, variables: Mapping, card: Mapping, *, overwrite: bool = False
) -> str:
  """Write `card` and `variables` to `directory` atomically; returns the directory.

  Everything is written into a temporary sibling first and renamed into place
  at the end, so an error leaves `directory` untouched (absent if it was).
  An existing non-empty `directory` is refused unless `overwrite`, and even then unless it is
  a model directory (see `check_replaceable`).
  """
  directory = os.path.abspath(os.fspath(directory))
  card = validate_card(card)
  tree = _to_numpy_tree(variables)
  check_replaceable(directory, overwrite=overwrite)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = atomic_write.make_temporary_dir(directory)  # os.mkdir: the user's umask applies.
  try:
    with _this_process_checkpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_NAME), tree)
    with open(os.path.join(tmp, CARD_NAME), 'w', encoding='utf-8') as f:
      json.dump(card, f, indent=2)
      f.write('\n')
    if os.path.exists(directory):
      old = atomic_write.temporary_name(directory, 'old')
      os.rename(directory, old)
      os.rename(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def load_model_dir(directory: str | os.PathLike) -> tuple[dict, dict]:
  """(variables, card) of a model directory; variables are numpy trees {'params', 'batch_stats'}."""
  directory = os.path.abspath(os.fspath(directory))
  card = load_card(directory)
  vpath = os.path.join(directory, VARIABLES_NAME)
  if not os.path.isdir(vpath):
    raise ModelDirError(f'{directory}: no {VARIABLES_NAME}/ checkpoint beside the model card')
  try:
    with _this_process_checkpointer() as ckptr:
      restored = ckptr.restore(vpath)
  except Exception as e:  # orbax raises many types for a damaged checkpoint
    raise ModelDirError(f'{vpath}: cannot restore the checkpoint: {type(e).__name__}: {e}') from e
  variables = {c: dict(restored.get(c, {})) for c in COLLECTIONS}
  extra = set(restored) - set(COLLECTIONS)
  if extra:
    raise ModelDirError(f'{vpath}: unexpected collections {sorted(extra)}')
  return variables, card


def build_from_card(card: Mapping, **model_kwargs: Any):
  """The Flax model a card describes (extra keyword arguments go to build_model)."""
  return build_model(
    card['structure'],
    card['num_classes'],
    use_sa=card['use_sa'],
    use_lw_att=card['use_lw_att'],
    **model_kwargs,
  )
