"""Checks every config value before any data is read or any array is allocated.

Unknown keys never get this far: configs are locked, so `--config.x=y` with an unknown `x`
fails at flag parsing. Here each bad value raises `ConfigError` naming the key, the value and
what was expected.
"""

from __future__ import annotations

import os

import ml_collections

from zenfer_jax.data.recipes import RECIPES
from zenfer_jax.data.samplers import PROCESS_SPLITS
from zenfer_jax.dataset_names import ALL_DATASETS
from zenfer_jax.errors import UserError
from zenfer_jax.model import structure, zennet
from zenfer_jax.rundir import pretrained


class ConfigError(ValueError, UserError):
  """A config value that cannot work; the message names the key."""


def _fail(key: str, value, expected: str):
  raise ConfigError(f'config.{key}={value!r} is invalid: expected {expected}.')


def _check(ok: bool, key: str, value, expected: str) -> None:
  if not ok:
    _fail(key, value, expected)


def class_list(config: ml_collections.ConfigDict) -> list[str] | None:
  names = [c.strip() for c in config.data.classes.split(',') if c.strip()]
  return names or None


def check_search_iterations(config: ml_collections.ConfigDict) -> None:
  """Refuses a search with nothing to do (`config.search.max_iterations` below 1).

  The search's other values are checked by `zenfer_jax.nas.evolution.validate_config`; this
  module does not import TensorFlow at import time, so a search can call this.
  """
  n = config.search.max_iterations
  if not isinstance(n, int) or isinstance(n, bool) or n < 1:
    raise ConfigError(
      f'config.search.max_iterations={n!r}: nothing to do, the search scores that many '
      'candidates; set it to at least 1 (configs/search_m.py uses 480000; a quick look: 200).'
    )


def validate_config(config: ml_collections.ConfigDict, device_count: int = 1) -> None:
  """Raises ConfigError for the first bad value found."""
  # Over 80 lines on purpose: a flat list of independent checks in the config's own order, read
  # top to bottom beside configs/default.py; split up, it would only be harder to find a field.
  m, d = config.model, config.data
  try:
    structure.resolve(m.structure)
  except (ValueError, OSError) as e:
    raise ConfigError(f'config.model.structure={m.structure!r} is invalid: {e}') from None
  _check(m.init in zennet.INIT_SCHEMES, 'model.init', m.init, f'one of {zennet.INIT_SCHEMES}')
  _check(
    0.0 <= m.bn_momentum < 1.0,
    'model.bn_momentum',
    m.bn_momentum,
    'a Flax momentum in [0, 1) (PyTorch 0.01 is Flax 0.99)',
  )
  _check(m.bn_eps > 0, 'model.bn_eps', m.bn_eps, 'a positive number')
  for key in ('conv_impl', 'bn_impl'):
    _check(m[key] in zennet.IMPLS, f'model.{key}', m[key], f'one of {zennet.IMPLS}')
  _check(m.dtype in zennet.DTYPES, 'model.dtype', m.dtype, f'one of {tuple(zennet.DTYPES)}')
  try:  # Widths that SA or lw_att cannot split fail here, before any array exists.
    zennet.build_model(
      m.structure,
      2,
      use_sa=m.use_sa,
      use_lw_att=m.use_lw_att,
      init=m.init,
      conv_impl=m.conv_impl,
      bn_impl=m.bn_impl,
    )
  except ValueError as e:
    raise ConfigError(
      f'config.model.structure={m.structure!r} with use_sa={m.use_sa}, '
      f'use_lw_att={m.use_lw_att} cannot be built: {e}'
    ) from None

  _check(d.name in ALL_DATASETS, 'data.name', d.name, f'one of {list(ALL_DATASETS)}')
  _check(d.image_size >= 16, 'data.image_size', d.image_size, 'at least 16 pixels')
  _check(
    d.recipe == '' or d.recipe in RECIPES,
    'data.recipe',
    d.recipe,
    f"'' (the dataset's default) or one of {list(RECIPES)}",
  )
  _check(d.shuffle_buffer >= 1, 'data.shuffle_buffer', d.shuffle_buffer, 'a positive number')
  _check(bool(d.data_dir), 'data.data_dir', d.data_dir, 'a directory for the TFDS records')
  _check(
    bool(d.train_split) and bool(d.eval_split),
    'data.eval_split',
    d.eval_split,
    'split names such as train and test',
  )
  names = class_list(config)
  if d.name == 'folders':
    _check(
      names is not None and (len(names) >= 2 or names == ['auto']),
      'data.classes',
      d.classes,
      "at least two comma-separated class folder names, in label order, or 'auto' (the "
      'sorted sub-folders of train/)',
    )
    _check(len(set(names)) == len(names), 'data.classes', d.classes, 'distinct class names')
  else:
    _check(
      names is None,
      'data.classes',
      d.classes,
      f"'' ({d.name} has fixed classes; data.classes is for folders)",
    )
  split = d.get('process_split', 'examples')
  _check(split in PROCESS_SPLITS, 'data.process_split', split, f'one of {PROCESS_SPLITS}')
  where = d.get('augment_on', 'host')
  _check(where in ('host', 'device'), 'data.augment_on', where, "'host' or 'device'")
  loader = d.get('loader', 'tf.data')
  _check(loader in ('tf.data', 'grain'), 'data.loader', loader, "'tf.data' or 'grain'")
  if loader == 'grain':
    for key in ('grain_threads', 'grain_workers'):
      n = d.get(key, 0)
      low = 1 if key == 'grain_threads' else 0
      _check(
        isinstance(n, int) and not isinstance(n, bool) and n >= low,
        f'data.{key}',
        n,
        f'an integer >= {low}',
      )
  if d.manual_dir:
    _check(
      os.path.isdir(os.path.expanduser(d.manual_dir)),
      'data.manual_dir',
      d.manual_dir,
      'an existing directory holding the raw dataset',
    )

  for key in ('batch_size', 'eval_batch_size'):
    value = config[key]
    _check(
      value >= 1 and value % device_count == 0,
      key,
      value,
      f'a positive multiple of the {device_count} devices',
    )
  _check(config.num_epochs >= 1, 'num_epochs', config.num_epochs, 'at least 1')
  _check(
    0 <= config.warmup_epochs < config.num_epochs,
    'warmup_epochs',
    config.warmup_epochs,
    f'in [0, num_epochs={config.num_epochs})',
  )
  _check(
    config.steps_per_epoch == -1 or config.steps_per_epoch >= 1,
    'steps_per_epoch',
    config.steps_per_epoch,
    '-1 (from the dataset) or a positive number',
  )
  precise = config.get('precise_bn_batches', 0)
  _check(
    isinstance(precise, int) and precise >= 0,
    'precise_bn_batches',
    precise,
    '0 (off) or a number of training batches',
  )
  _check(config.lr_per_256 > 0, 'lr_per_256', config.lr_per_256, 'a positive rate')
  _check(config.target_lr_per_256 >= 0, 'target_lr_per_256', config.target_lr_per_256, '>= 0')
  _check(0 <= config.momentum < 1, 'momentum', config.momentum, 'in [0, 1)')
  _check(
    not config.nesterov or config.momentum > 0,
    'nesterov',
    config.nesterov,
    'False when momentum is 0',
  )
  _check(config.weight_decay >= 0, 'weight_decay', config.weight_decay, '>= 0')
  _check(0 <= config.label_smoothing < 1, 'label_smoothing', config.label_smoothing, 'in [0, 1)')
  _check(config.mixup_alpha >= 0, 'mixup_alpha', config.mixup_alpha, '>= 0 (0 turns mixup off)')

  shipped = ', '.join(pretrained.names())
  for key, expected in (
    (
      'init_from',
      'a model directory (torch_port.convert output), a training workdir or a shipped model '
      f'({shipped})',
    ),
    (
      'distill_from',
      f'a training workdir, a model directory or a shipped model ({shipped}) to learn from',
    ),
  ):
    source = config.get(key, '')
    if source:
      _check(os.path.isdir(pretrained.resolve(os.path.expanduser(source))), key, source, expected)
  _check(
    0 < config.get('distill_weight', 0.5) <= 1,
    'distill_weight',
    config.get('distill_weight', 0.5),
    "in (0, 1]: the teacher's share of the loss",
  )
  _check(
    config.get('distill_temperature', 2.0) > 0,
    'distill_temperature',
    config.get('distill_temperature', 2.0),
    'a positive temperature',
  )
  _check(
    0 <= config.get('ema_decay', 0.0) < 1,
    'ema_decay',
    config.get('ema_decay', 0.0),
    'in [0, 1) (0 turns the weight average off)',
  )
  for key in ('only_backbone', 'freeze_backbone'):
    _check(
      not config[key] or bool(config.init_from),
      key,
      config[key],
      'False unless init_from names the weights to start from',
    )
  _check(config.eval_every_epochs >= 1, 'eval_every_epochs', config.eval_every_epochs, 'at least 1')
  _check(
    config.checkpoint_every_steps >= 0,
    'checkpoint_every_steps',
    config.checkpoint_every_steps,
    '>= 0 (0: every epoch)',
  )
  _check(config.log_every_steps >= 1, 'log_every_steps', config.log_every_steps, 'at least 1')
