"""Builds a dataset's TFDS records once, before training.

  python -m zenfer_jax.data.prepare --dataset=rafdb --manual_dir=~/datasets/RAF-DB --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=affectnet/8cls --manual_dir=~/AffectNet --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=fer2013 --manual_dir=~/fer2013 --data_dir=~/tfds
      # manual_dir: fer2013.csv, or Kaggle's train/<class>/*.jpg + test/<class>/*.jpg
  python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=angry,happy,sad \
      --manual_dir=~/fer_folders --data_dir=~/tfds
  python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=auto \
      --manual_dir=~/VGGFace2 --data_dir=~/tfds      # classes: the sorted folders of train/
  python -m zenfer_jax.data.prepare --dataset=digits --data_dir=~/tfds

--file_format=both also writes ArrayRecord files beside the TFRecords (array_record: only them),
which the TensorFlow-free Grain loader reads (config.data.loader='grain'); rerun on prepared
records it adds the ArrayRecord copy.

--beam prepares through TFDS's Apache Beam path (folders only): Beam's DirectRunner with
--beam_workers processes here, or any Beam runner given in --beam_pipeline_options (Beam's own
flags, e.g. "--runner=FlinkRunner --flink_master=host:8081"); same records and report.

Broken or oversized images and unusable label lines are skipped and listed in prepare_report.txt
beside the records. Records already in data_dir are reused only for the manual_dir contents they
were prepared from; another source is refused, naming both.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from absl import logging

from zenfer_jax import cli
from zenfer_jax.dataset_names import class_summary


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.data.prepare', description=__doc__.split('\n')[0]
  )
  p.add_argument('--dataset', required=True, help='dataset to prepare: rafdb, affectnet/8cls, ...')
  p.add_argument('--data_dir', required=True, help='where the TFDS records are written')
  p.add_argument(
    '--manual_dir', help='the dataset as downloaded (official layout, or <split>/<class>/ folders)'
  )
  p.add_argument(
    '--folders.classes',
    dest='classes',
    help="folders only: class names in label order, comma-separated, or 'auto' (the sorted "
    'sub-folders of train/, e.g. the identities of VGGFace2)',
  )
  p.add_argument(
    '--file_format',
    default='tfrecord',
    choices=('tfrecord', 'array_record', 'both'),
    help='record files to write: TFRecord (tf.data), ArrayRecord (Grain, no TensorFlow) or both',
  )
  p.add_argument(
    '--beam',
    action='store_true',
    help="prepare with Apache Beam (TFDS's Beam path; folders only): the DirectRunner here",
  )
  p.add_argument(
    '--beam_workers',
    type=cli.positive_int,
    help='with --beam: DirectRunner worker processes (default: one per CPU)',
  )
  p.add_argument(
    '--beam_pipeline_options',
    default='',
    help='with --beam: Beam pipeline flags, space-separated, e.g. "--runner=FlinkRunner ..."',
  )
  return p


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.classes and args.dataset != 'folders':
    parser.error('--folders.classes applies to --dataset=folders only.')
  if (args.beam_workers or args.beam_pipeline_options) and not args.beam:
    parser.error('--beam_workers and --beam_pipeline_options apply with --beam only.')
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  from zenfer_jax.data import registry  # After setup_logging: it imports TensorFlow.

  if args.dataset not in registry.ALL_DATASETS:
    parser.error(f'--dataset {args.dataset!r}: expected one of {list(registry.ALL_DATASETS)}')
  if args.beam and not registry.supports_beam(args.dataset):
    parser.error(f'--beam: {args.dataset} has no Beam preparation (folders has); leave out --beam.')
  classes = [c for c in (args.classes or '').split(',') if c] or None
  try:
    info = registry.prepare(
      args.dataset,
      args.data_dir,
      manual_dir=args.manual_dir,
      classes=classes,
      beam=args.beam,
      beam_workers=args.beam_workers,
      beam_pipeline_options=shlex.split(args.beam_pipeline_options),
      file_format=args.file_format,
    )
  except (FileNotFoundError, ValueError) as e:  # The message says what to fix.
    return cli.report(e)
  logging.info('Prepared %s', info)
  print(
    f'{info.name}: {info.num_classes} classes {class_summary(info.class_names)}; split sizes '
    f'{info.split_sizes}; {info.skipped} skipped; report {info.report_path}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
