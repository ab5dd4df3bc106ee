"""What a training workdir holds, and loading a trained model from one or from a model dir.

    WORKDIR/config.json          the run's full config (read back by evaluate/predict)
    WORKDIR/model_card.json      the card of the model being trained (model_directory format)
    WORKDIR/checkpoints/<step>/  orbax: the two latest full train states + loop bookkeeping
    WORKDIR/checkpoints.damaged/ checkpoints found damaged on resuming, set aside
    WORKDIR/best/<step>/         orbax: variables of the best test top-1 so far
    WORKDIR/metrics.jsonl        one JSON object per evaluation
    WORKDIR/model_best/          model dir exported at the end (model_directory format)

Saves are synchronous and atomic (orbax writes a temporary directory and renames it), so a
process killed at any moment leaves the previous checkpoint intact. A checkpoint damaged later
(a truncated or deleted file, a full disk, a bad copy) is a different matter: that is why two are
kept, and restoring falls back from a damaged one to the one before it, saying which.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as std_logging
import os
import shutil

import ml_collections
import orbax.checkpoint as ocp
from absl import flags, logging

from zenfer_jax import atomic_write
from zenfer_jax.errors import UserError
from zenfer_jax.rundir import model_directory, pretrained

CONFIG = 'config.json'
LATEST = 'checkpoints'
BEST = 'best'
METRICS = 'metrics.jsonl'
MODEL_BEST = 'model_best'
DAMAGED = 'checkpoints.damaged'


class CheckpointDamagedError(RuntimeError, UserError):
  """Every checkpoint there was could not be restored; the message names each and why."""


@contextlib.contextmanager
def quiet():
  """Orbax logs every file it touches at INFO; keep the run's log readable.

  Afterwards everything is as it was: absl's verbosity flag and the levels of absl's logger and
  the root logger. Setting the old verbosity back would not do: while it was never set, absl's
  logger follows the root logger (a library user's `logging.basicConfig(level=logging.INFO)`),
  and setting it, even to its default, pins absl's logger to WARNING for the rest of the process.
  """
  flag = flags.FLAGS['verbosity']
  absl_logger, root = logging.get_absl_logger(), std_logging.getLogger()
  saved = (flag.value, flag.using_default_value, absl_logger.level, root.level)
  logging.set_verbosity(min(flag.value, logging.WARNING))
  try:
    yield
  finally:
    flag.value, flag.using_default_value = saved[:2]
    absl_logger.setLevel(saved[2])
    root.setLevel(saved[3])


def _quietly(method):
  @functools.wraps(method)
  def wrapper(*args, **kwargs):
    with quiet():
      return method(*args, **kwargs)

  return wrapper


def _manager(path: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
  )
  return ocp.CheckpointManager(path, options=options, item_names=('state', 'meta'))


def _short(error: BaseException, limit: int = 300) -> str:
  """One line of an orbax/tensorstore error (they run to many lines of internals)."""
  text = ' '.join(str(error).split())
  text = text if len(text) <= limit else text[: limit - 3] + '...'
  return f'{type(error).__name__}: {text}'


class Checkpoints:
  """The latest train states (for resuming) and the best variables (by test top-1).

  `keep` latest checkpoints stay on disk (at least two: with one, a damaged file would leave
  nothing to resume from). After `restore`, `damaged` lists the newer checkpoints that had to be
  skipped as (step, directory, error).
  """

  @_quietly
  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = os.path.abspath(workdir)
    self.latest = _manager(os.path.join(self.workdir, LATEST), max(keep, 2))
    self.best = _manager(os.path.join(self.workdir, BEST), 1)
    self.damaged: list[tuple[int, str, str]] = []

  @_quietly
  def restore(self, which: str = 'latest') -> tuple[dict, dict] | None:
    """(tree, meta) of the newest intact checkpoint of `which`, or None when there is none.

    'latest': the full train state and the loop's bookkeeping; 'best': the variables and the
    evaluation record that made them the best. A checkpoint that cannot be read is reported by
    name and the one before it is tried; CheckpointDamagedError when none can be read.
    """
    managers = {'latest': self.latest, 'best': self.best}
    if which not in managers:
      raise ValueError(f"which={which!r}: expected 'latest' or 'best'.")
    manager = managers[which]
    self.damaged = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
      except Exception as e:  # orbax and tensorstore raise many types for a damaged file.
        where = os.path.join(os.fspath(manager.directory), str(step))
        self.damaged.append((step, where, _short(e)))
        continue
      for _, where, error in self.damaged:  # When none is intact, the error names them instead.
        logging.warning('Checkpoint %s is damaged and cannot be restored (%s).', where, error)
      if self.damaged:
        logging.warning(
          'Using the intact checkpoint of step %d instead: training repeats the steps since.',
          step,
        )
      return out.state, out.meta
    if self.damaged:
      raise CheckpointDamagedError(
        f'No {which} checkpoint in {self.workdir} can be restored: '
        + '; '.join(f'{where}: {error}' for _, where, error in self.damaged)
        + '. '
        + (
          'Move them away to train this run again from the beginning.'
          if which == 'latest'
          else 'Move them away: the next evaluation saves a new best.'
        )
      )
    return None

  def set_aside_damaged(self, move: bool = True) -> None:
    """Moves the latest checkpoints `restore` skipped to WORKDIR/checkpoints.damaged/.

    Kept for inspection, not deleted; out of the way so the steps they held are saved afresh.
    `move=False` (processes other than the chief in a multi-host run) only rereads the list.
    """
    for step, where, _ in self.damaged if move else ():
      if not os.path.isdir(where):
        continue
      target = os.path.join(self.workdir, DAMAGED, str(step))
      n = 1
      while os.path.lexists(target):
        target = os.path.join(self.workdir, DAMAGED, f'{step}-{n}')
        n += 1
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(where, target)
      logging.warning('Moved the damaged checkpoint %s to %s.', where, target)
    self.latest.reload()

  @_quietly
  def save_latest(self, step: int, state: dict, meta: dict) -> None:
    if step in self.latest.all_steps():  # Re-reached after a resume: identical content.
      return
    self.latest.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    )
    self.latest.wait_until_finished()

  @_quietly
  def save_best(self, step: int, variables: dict, meta: dict) -> None:
    if step in self.best.all_steps():
      return
    self.best.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)),
    )
    self.best.wait_until_finished()

  @_quietly
  def close(self) -> None:
    self.latest.close()
    self.best.close()


def read_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, CONFIG), encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG)) and os.path.isdir(os.path.join(path, LATEST))


def append_metrics(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, METRICS), 'a', encoding='utf-8') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:  # A line cut short by a kill: it is after the checkpoint.
          break
  return records


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops records written after the checkpoint being resumed (they will be written again)."""
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return
  kept = [r for r in read_metrics(workdir) if r['step'] <= last_step]
  atomic_write.write_text(path, ''.join(json.dumps(r) + '\n' for r in kept))


def load_inference(path: str, which: str = 'best') -> tuple[dict, dict]:
  """(variables, model card) from a training workdir or a model directory.

  A workdir gives its best checkpoint (which='best'; the latest if no evaluation has run yet)
  or its latest one (which='latest'); anything else is read as a model_directory model dir.
  A name that is no path is a shipped model's (`zenfer_jax.rundir.pretrained`, e.g. 'fer2013_r').
  """
  path = pretrained.resolve(path)
  if not is_workdir(path):
    if which != 'best':
      raise ValueError(
        f'{path!r} is a model directory: it holds one set of weights, so '
        f'which={which!r} does not apply.'
      )
    with quiet():
      return model_directory.load_model_dir(path)
  card = model_directory.load_card(path)
  ckpts = Checkpoints(path)
  try:
    restored = ckpts.restore('best') if which == 'best' else None
    if restored is not None:
      variables = restored[0]
    else:
      latest = ckpts.restore('latest')
      if latest is None:
        raise FileNotFoundError(f'{path!r} has no checkpoint yet.')
      variables = {'params': latest[0]['params'], 'batch_stats': latest[0]['batch_stats']}
  finally:
    ckpts.close()
  return variables, card
