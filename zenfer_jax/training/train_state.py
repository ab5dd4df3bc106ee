"""The training state, its checkpointed form, and the check that a checkpoint fits this run.

The optimizer state lives here beside the weights; a checkpoint holds both as plain dicts of
arrays (no functions), and a resume first proves the checkpoint is this config's model
(`check_resumable`) so nothing is written over a workdir holding another one. The first
variables of a run come from `zenfer_jax.training.init`.
"""

from __future__ import annotations

from typing import Any

import flax
import ml_collections
import numpy as np
from flax import traverse_util
from flax.training import train_state

from zenfer_jax.errors import UserError
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory
from zenfer_jax.training import optim


class TrainState(train_state.TrainState):
  batch_stats: Any
  # A distillation teacher's variables (`zenfer_jax.training.distill`), fixed for the whole run:
  # replicated and carried through the mapped step with the state, never checkpointed (a
  # resumed run loads them again from `config.distill_from`).
  teacher: Any = None
  # The exponential moving average of {'params', 'batch_stats'} (`config.ema_decay` > 0), or
  # None: what evaluation, the best checkpoint and the export then use. Checkpointed.
  ema: Any = None


class ResumeMismatchError(ValueError, UserError):
  """A workdir's checkpoint holds another model or optimizer than the config builds."""


# Card fields that say which weights a checkpoint holds; any difference makes a resume wrong.
CARD_IDENTITY = ('structure', 'num_classes', 'use_sa', 'use_lw_att', 'class_names')


def create_train_state(
  config: ml_collections.ConfigDict,
  model: zennet.ZenNet,
  variables: dict,
  schedule,
  teacher: dict | None = None,
) -> TrainState:
  params = variables['params']
  tx = optim.make_optimizer(config, params, schedule)
  batch_stats = variables.get('batch_stats', {})
  ema = None
  if config.get('ema_decay', 0.0) > 0:  # The average starts at the first weights.
    ema = {'params': params, 'batch_stats': batch_stats}
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    batch_stats=batch_stats,
    teacher=teacher,
    ema=ema,
  )


def _checkpointed(state: TrainState) -> dict:
  tree = {
    'step': state.step,
    'params': state.params,
    'opt_state': state.opt_state,
    'batch_stats': state.batch_stats,
  }
  if state.ema is not None:
    tree['ema'] = state.ema
  return tree


def to_state_dict(state: TrainState) -> dict:
  """The checkpointed part of the state as nested dicts of arrays (no functions)."""
  return flax.serialization.to_state_dict(_checkpointed(state))


def from_state_dict(state: TrainState, restored: dict) -> TrainState:
  tree = flax.serialization.from_state_dict(_checkpointed(state), restored)
  return state.replace(
    step=tree['step'],
    params=tree['params'],
    opt_state=tree['opt_state'],
    batch_stats=tree['batch_stats'],
    ema=tree.get('ema'),
  )


def eval_variables(state: TrainState) -> dict:
  """The weights a run evaluates, keeps as its best and exports: the average when kept."""
  if state.ema is not None:
    return state.ema
  return {'params': state.params, 'batch_stats': state.batch_stats}


def _shapes(tree: dict) -> dict[str, tuple]:
  flat = traverse_util.flatten_dict(flax.serialization.to_state_dict(tree), sep='/')
  return {k: tuple(np.shape(v)) for k, v in flat.items() if v is not None}


def check_resumable(
  state: TrainState, restored: dict, card: dict, *, workdir: str, checkpoint: str
) -> None:
  """Raises ResumeMismatchError naming every difference between a checkpoint and this run.

  Called before anything is written: resuming another model's checkpoint would otherwise
  rewrite config.json and model_card.json to describe weights the workdir does not hold.
  `card` is this run's model card; the workdir's own card names what the checkpoint was.
  """
  problems = []
  try:
    old_card = model_directory.load_card(workdir)
  except model_directory.ModelDirError:
    old_card = None
  if old_card is not None:
    for field in CARD_IDENTITY:
      old, new = old_card.get(field), card.get(field)
      if old is not None and new is not None and old != new:
        problems.append(f'{field}: checkpoint {old!r}, this config {new!r}')
  want, have = _shapes(to_state_dict(state)), _shapes(restored)
  arrays = [f'{k} missing from the checkpoint' for k in want if k not in have]
  arrays += [f'{k} not in this model' for k in have if k not in want]
  arrays += [
    f'{k} {have[k]} in the checkpoint, {want[k]} here'
    for k in want
    if k in have and have[k] != want[k]
  ]
  only_ema = (
    arrays
    and all(k.startswith('ema/') for k in [*want, *have] if (k in want) != (k in have))
    and all(want[k] == have[k] for k in want if k in have)
  )
  if only_ema:
    saved = 'with' if any(k.startswith('ema/') for k in have) else 'without'
    problems.append(
      f'the checkpoint was saved {saved} the weight average (config.ema_decay); '
      'resume with the ema_decay it was trained with'
    )
  elif arrays:
    shown = '; '.join(arrays[:4]) + (f'; and {len(arrays) - 4} more' if len(arrays) > 4 else '')
    problems.append(f'{len(arrays)} arrays differ ({shown})')
  if problems:
    raise ResumeMismatchError(
      f'{workdir} holds a checkpoint ({checkpoint}) of another model than this config builds: '
      + '; '.join(problems)
      + f". Nothing was written. Resume with the run's own config ({workdir}/config.json), "
      'or give this run a new --workdir.'
    )
