"""TFDS builders for the datasets zenfer-jax trains on; importing this package registers them."""

from zenfer_jax.data.builders.affectnet import Affectnet
from zenfer_jax.data.builders.digits import Digits
from zenfer_jax.data.builders.folders import Folders, FoldersConfig
from zenfer_jax.data.builders.rafdb import Rafdb

__all__ = ['Affectnet', 'Digits', 'Folders', 'FoldersConfig', 'Rafdb']
