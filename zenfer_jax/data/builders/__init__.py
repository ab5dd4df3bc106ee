"""TFDS builders for the datasets zenfer-jax trains on; importing this package registers them."""

from zenfer_jax.data.builders.affectnet import Affectnet
from zenfer_jax.data.builders.digits import Digits
from zenfer_jax.data.builders.fer2013 import Fer2013
from zenfer_jax.data.builders.folders import Folders, FoldersConfig
from zenfer_jax.data.builders.rafdb import Rafdb

__all__ = ['Affectnet', 'Digits', 'Fer2013', 'Folders', 'FoldersConfig', 'Rafdb']
