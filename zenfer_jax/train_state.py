"""The training state and how it is first filled: from scratch or from another model.

Resume order: the workdir's own checkpoint wins (see `zenfer_jax.workdir`); else
`config.init_from` (a torch_port-converted model directory or another run's workdir); else the
model's `custom` initialisation.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from flax.training import train_state

from zenfer_jax import model_directory, models, optim
from zenfer_jax import workdir as workdir_lib
from zenfer_jax.errors import UserError
from zenfer_jax.parallel import AXIS_NAME
from zenfer_jax.structure import resolve

# config.model.dtype -> the compute dtype (parameters stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# With only_backbone, everything outside the backbone keeps its fresh initialisation.
HEAD_PATTERNS = ('fc/*', 'lw_att/*')


class TrainState(train_state.TrainState):
  batch_stats: Any


class ResumeMismatchError(ValueError, UserError):
  """A workdir's checkpoint holds another model or optimizer than the config builds."""


# Card fields that say which weights a checkpoint holds; any difference makes a resume wrong.
CARD_IDENTITY = ('structure', 'num_classes', 'use_sa', 'use_lw_att', 'class_names')


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ZenNet:
  m = config.model
  return models.build_model(
    m.structure,
    num_classes,
    use_sa=m.use_sa,
    use_lw_att=m.use_lw_att,
    bn_momentum=m.bn_momentum,
    bn_eps=m.bn_eps,
    bn_axis_name=AXIS_NAME if m.cross_device_bn else None,
    init=m.init,
    conv_impl=m.conv_impl,
    bn_impl=m.bn_impl,
    dtype=DTYPES[m.dtype],
  )


def initial_variables(
  config: ml_collections.ConfigDict, model: models.ZenNet, rng: jax.Array
) -> dict:
  """Fresh variables, then `config.init_from` merged in strictly when set."""
  init = jax.jit(lambda r: models.init_variables(model, r, config.data.image_size))
  variables = jax.device_get(init(rng))
  if config.init_from:
    loaded, card = workdir_lib.load_inference(config.init_from)
    if str(resolve(card['structure'])) != model.structure_text:
      logging.warning(
        'init_from %s was trained with structure %s; this run uses %s.',
        config.init_from,
        card['structure'],
        model.structure_text,
      )
    variables = merge_init(variables, loaded, only_backbone=config.only_backbone)
    logging.info(
      'Initialised from %s (%s).',
      config.init_from,
      'backbone only' if config.only_backbone else 'all parameters',
    )
  return variables


def placeholder_variables(config: ml_collections.ConfigDict, model: models.ZenNet) -> dict:
  """Zeros shaped like the model's variables: the skeleton a checkpoint is restored into.

  Shape inference only (no compilation), so resuming does not pay for an initialisation.
  """
  shapes = jax.eval_shape(
    lambda r: models.init_variables(model, r, config.data.image_size), jax.random.PRNGKey(0)
  )
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def merge_init(fresh: dict, loaded: dict, *, only_backbone: bool) -> dict:
  """`loaded` merged into `fresh`; every key must match unless outside the backbone and skipped."""
  skip = HEAD_PATTERNS if only_backbone else ()
  return model_directory.strict_merge(fresh, loaded, skip_patterns=skip)


def create_train_state(
  config: ml_collections.ConfigDict, model: models.ZenNet, variables: dict, schedule
) -> TrainState:
  params = variables['params']
  tx = optim.make_optimizer(config, params, schedule)
  return TrainState.create(
    apply_fn=model.apply, params=params, tx=tx, batch_stats=variables.get('batch_stats', {})
  )


def to_state_dict(state: TrainState) -> dict:
  """The checkpointed part of the state as nested dicts of arrays (no functions)."""
  return flax.serialization.to_state_dict(
    {
      'step': state.step,
      'params': state.params,
      'opt_state': state.opt_state,
      'batch_stats': state.batch_stats,
    }
  )


def from_state_dict(state: TrainState, restored: dict) -> TrainState:
  target = {
    'step': state.step,
    'params': state.params,
    'opt_state': state.opt_state,
    'batch_stats': state.batch_stats,
  }
  tree = flax.serialization.from_state_dict(target, restored)
  return state.replace(
    step=tree['step'],
    params=tree['params'],
    opt_state=tree['opt_state'],
    batch_stats=tree['batch_stats'],
  )


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
  if arrays:
    shown = '; '.join(arrays[:4]) + (f'; and {len(arrays) - 4} more' if len(arrays) > 4 else '')
    problems.append(f'{len(arrays)} arrays differ ({shown})')
  if problems:
    raise ResumeMismatchError(
      f'{workdir} holds a checkpoint ({checkpoint}) of another model than this config builds: '
      + '; '.join(problems)
      + f". Nothing was written. Resume with the run's own config ({workdir}/config.json), "
      'or give this run a new --workdir.'
    )
