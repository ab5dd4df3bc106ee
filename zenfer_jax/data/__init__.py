"""Datasets for zenfer-jax: TFDS builders (registered on import), preparation and input pipelines.

from zenfer_jax import data
info = data.prepare('rafdb', data_dir, manual_dir=...)
train = data.pipeline.train_dataset('rafdb', data_dir, image_size=224, ...)
"""

from zenfer_jax.data import augment, builders, pipeline
from zenfer_jax.data.registry import DatasetInfo, builder, load, prepare
from zenfer_jax.dataset_names import ALL_DATASETS, DATASETS

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
]
