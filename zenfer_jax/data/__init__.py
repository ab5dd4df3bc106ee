"""Datasets for zenfer-jax: TFDS builders (registered on import), preparation and input pipelines.

from zenfer_jax import data
info = data.prepare_dataset('rafdb', data_dir, manual_dir=...)
spec = data.pipeline.DataSpec('rafdb', data_dir, image_size=224, per_device_batch=64, ...)
train = data.pipeline.train_dataset(spec)

The names below are imported when first used, not with the package: they start TensorFlow, and
a program (`python -m zenfer_jax.data.prepare`, training) first sets up its logging with
`zenfer_jax.cli.setup_logging`, which keeps TensorFlow's C++ start-up lines off the terminal.
`from zenfer_jax.data import pipeline, prepare` works as usual. `prepare` is the command's module
(`prepare.main`); the function that prepares a dataset is `prepare_dataset` (`registry.prepare`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from zenfer_jax.dataset_names import ALL_DATASETS, DATASETS

_SUBMODULES = ('augment', 'builders', 'pipeline', 'prepare')
# Package name -> the registry's.
_FROM_REGISTRY = {
  'DatasetInfo': 'DatasetInfo',
  'builder': 'builder',
  'load': 'load',
  'prepare_dataset': 'prepare',
}

__all__ = [
  'ALL_DATASETS',
  'DATASETS',
  'DatasetInfo',
  'augment',
  'builder',
  'builders',
  'load',
  'pipeline',
  'prepare',
  'prepare_dataset',
]

if TYPE_CHECKING:
  from zenfer_jax.data import augment, builders, pipeline, prepare
  from zenfer_jax.data.registry import DatasetInfo, builder, load
  from zenfer_jax.data.registry import prepare as prepare_dataset


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f'{__name__}.{name}')
  if name in _FROM_REGISTRY:
    registry = importlib.import_module(f'{__name__}.registry')
    value = getattr(registry, _FROM_REGISTRY[name])
    globals()[name] = value  # Found directly from now on.
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
