"""Builds a dataset's TFDS records once, before training.

  python -m zenfer_jax.data.prepare --dataset=rafdb --manual_dir=~/datasets/RAF-DB --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=affectnet/8cls --manual_dir=~/AffectNet --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=angry,happy,sad \
      --manual_dir=~/fer_folders --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=digits --data_dir=~/tfds

Broken images and label lines are skipped and listed in prepare_report.txt beside the records.
"""

from __future__ import annotations

from absl import app, flags, logging

from zenfer_jax.data import registry

_DATASET = flags.DEFINE_enum('dataset', None, list(registry.ALL_DATASETS), 'Dataset to prepare.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the TFDS records are written.')
_MANUAL_DIR = flags.DEFINE_string(
  'manual_dir', None, 'The dataset as downloaded (official layout, or <split>/<class>/ folders).'
)
_CLASSES = flags.DEFINE_list(
  'folders.classes', None, 'folders only: class names in label order, comma-separated.'
)
flags.mark_flags_as_required(['dataset', 'data_dir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CLASSES.value and _DATASET.value != 'folders':
    raise app.UsageError('--folders.classes applies to --dataset=folders only.')
  info = registry.prepare(
    _DATASET.value, _DATA_DIR.value, manual_dir=_MANUAL_DIR.value, classes=_CLASSES.value
  )
  logging.info('Prepared %s', info)
  print(
    f'{info.name}: {info.num_classes} classes {info.class_names}; split sizes '
    f'{info.split_sizes}; {info.skipped} skipped; report {info.report_path}'
  )


if __name__ == '__main__':
  app.run(main)
