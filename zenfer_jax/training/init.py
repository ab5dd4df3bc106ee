"""How a run's model and its first variables come from the config: from scratch or from another model.

Resume order: the workdir's own checkpoint wins (`zenfer_jax.training.train_state` checks it fits,
`zenfer_jax.rundir.workdir` reads it); else `config.init_from` (a torch_port-converted model
directory or another run's workdir); else the model's `custom` initialisation.

`config.only_backbone` follows the original training script's `load_model(..., only_backbone=True)`
(its `--load_parameters_from ... --only_backbone`, the paper's transfer from face-identity
pretraining): every array of the checkpoint whose name exists in this model with the same shape
is copied, parameters and BatchNorm statistics alike; everything else keeps its fresh value. So
the classifier is fresh when the class count differs (8,631 identities -> 7 expressions) and
copied when it matches; lw_att is copied when both models have it. Which arrays were copied and
which were left at init, and why, is logged and written to WORKDIR/init_from.json.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from zenfer_jax.model import zennet
from zenfer_jax.model.structure import resolve
from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training.parallel import AXIS_NAME


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> zennet.ZenNet:
  m = config.model
  return zennet.build_model(
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
    dtype=zennet.DTYPES[m.dtype],
  )


def initial_variables(
  config: ml_collections.ConfigDict,
  model: zennet.ZenNet,
  rng: jax.Array,
  report: dict | None = None,
) -> dict:
  """Fresh variables, then `config.init_from` merged in when set: strictly, or with
  `only_backbone` every same-named, same-shaped array (module docstring). `report`, when given,
  is filled with what was copied and what was left at init."""
  init = jax.jit(lambda r: zennet.init_variables(model, r, config.data.image_size))
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
    if config.only_backbone:
      variables, transfer = merge_matching(variables, loaded)
      logging.info('Initialised from %s (only_backbone): %s', config.init_from, transfer.summary())
      if transfer.fresh and len(transfer.fresh) > 2:  # More than a classifier's two arrays.
        logging.warning(
          'only_backbone: %d arrays of this model are not in %s with their shape and start '
          'fresh: %s',
          len(transfer.fresh),
          config.init_from,
          ', '.join(k for k, _ in transfer.fresh[:8]),
        )
      if report is not None:
        report.update(transfer.as_dict(config.init_from, card))
    else:
      variables = model_directory.strict_merge(variables, loaded)
      logging.info('Initialised from %s (all parameters).', config.init_from)
      if report is not None:
        copied = sorted(traverse_util.flatten_dict(variables, sep='/'))
        report.update(
          TransferReport(copied, [], []).as_dict(config.init_from, card, only_backbone=False)
        )
  return variables


@dataclasses.dataclass
class TransferReport:
  """What an `only_backbone` initialisation took from the checkpoint, by 'collection/path'."""

  copied: list[str]
  fresh: list[tuple[str, str]]  # (array of this model left at init, why)
  unused: list[str]  # Checkpoint arrays this model has no place for.

  def summary(self) -> str:
    fresh = ', '.join(f'{k} ({why})' for k, why in self.fresh[:4])
    more = f' and {len(self.fresh) - 4} more' if len(self.fresh) > 4 else ''
    return (
      f'{len(self.copied)} arrays copied, {len(self.fresh)} left at init'
      + (f' [{fresh}{more}]' if self.fresh else '')
      + f', {len(self.unused)} checkpoint arrays unused'
    )

  def as_dict(self, source: str, card: dict, only_backbone: bool = True) -> dict:
    return {
      'init_from': source,
      'only_backbone': only_backbone,
      'source_structure': card.get('structure'),
      'source_num_classes': card.get('num_classes'),
      'copied': self.copied,
      'left_at_init': [{'array': k, 'why': why} for k, why in self.fresh],
      'unused': self.unused,
    }


def merge_matching(fresh: dict, loaded: dict) -> tuple[dict, TransferReport]:
  """`fresh` with every `loaded` array of the same path and shape copied in (the reference's
  only_backbone rule); the rest keeps its fresh value."""
  flat_fresh = traverse_util.flatten_dict(dict(fresh), sep='/')
  flat_loaded = traverse_util.flatten_dict(dict(loaded), sep='/')
  merged, copied, left = {}, [], []
  for path, value in flat_fresh.items():
    if path not in flat_loaded:
      merged[path] = value
      left.append((path, 'not in the checkpoint'))
      continue
    source = flat_loaded[path]
    if np.shape(source) != np.shape(value):
      merged[path] = value
      left.append((path, f'shape {np.shape(source)} in the checkpoint, {np.shape(value)} here'))
      continue
    merged[path] = np.asarray(source, dtype=np.asarray(value).dtype)
    copied.append(path)
  unused = [p for p in flat_loaded if p not in flat_fresh]
  return traverse_util.unflatten_dict(merged, sep='/'), TransferReport(copied, left, unused)


def placeholder_variables(config: ml_collections.ConfigDict, model: zennet.ZenNet) -> dict:
  """Zeros shaped like the model's variables: the skeleton a checkpoint is restored into.

  Shape inference only (no compilation), so resuming does not pay for an initialisation.
  """
  shapes = jax.eval_shape(
    lambda r: zennet.init_variables(model, r, config.data.image_size), jax.random.PRNGKey(0)
  )
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
