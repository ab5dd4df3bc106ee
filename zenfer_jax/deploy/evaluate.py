"""Evaluates a trained model on a dataset split: metrics.json and confusion_matrix.png.

  python -m zenfer_jax.deploy.evaluate --workdir runs/rafdb_m [--split test] [--which best]
  python -m zenfer_jax.deploy.evaluate --checkpoint MODEL_DIR --dataset rafdb --data_dir DIR

A workdir brings its dataset, data_dir and preprocessing from its config.json; a model dir
(torch_port.convert output or WORKDIR/model_best) brings the preprocessing from its card and
needs --dataset/--data_dir. Evaluation is the training loop's own: every example once, padded
batches masked, preprocessed by the card's recipe at the card's image size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from zenfer_jax import atomic_write, cli, data, errors
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.deploy import tta as tta_lib

LOADERS = ('tf.data', 'grain')


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.deploy.evaluate',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--workdir', help='a training workdir')
  src.add_argument('--checkpoint', help='a model dir, or a training workdir')
  p.add_argument(
    '--split', default=None, help="split to evaluate (default: the run's eval split, else test)"
  )
  p.add_argument(
    '--which',
    choices=('best', 'latest'),
    default='best',
    help='for a workdir: its best (default) or latest checkpoint',
  )
  p.add_argument('--dataset', default=None, help='dataset name (default: the workdir config)')
  p.add_argument('--data_dir', default=None, help='TFDS data dir (default: the workdir config)')
  p.add_argument('--manual_dir', default=None, help='raw files, to prepare a missing dataset')
  p.add_argument('--classes', default=None, help='folders only: class names in label order, a,b')
  p.add_argument('--batch_size', type=cli.positive_int, default=128, help='global eval batch size')
  p.add_argument(
    '--loader',
    choices=LOADERS,
    default=None,
    help='tf.data (TFRecords) or grain (ArrayRecord files, added if missing; TensorFlow is never '
    "imported); default: the workdir config's, else tf.data",
  )
  p.add_argument(
    '--tta',
    choices=tta_lib.MODES,
    default='none',
    help='test-time augmentation: average the logits over each image and its mirror (flip), '
    'or also over its four corner and centre crops and their mirrors (ten_crop)',
  )
  p.add_argument(
    '--tta_crop_fraction',
    type=float,
    default=tta_lib.DEFAULT_CROP_FRACTION,
    help="ten_crop's crop side as a fraction of the input side",
  )
  p.add_argument('--flip_tta', action='store_true', help='the same as --tta flip')
  p.add_argument(
    '--output_dir',
    default=None,
    help='where metrics.json and confusion_matrix.png go (default: DIR/eval_<split>)',
  )
  return p.parse_args(argv)


def _dataset_args(args, path: str) -> dict[str, Any]:
  from zenfer_jax.rundir import workdir as workdir_lib  # JAX and Orbax: kept out of --help.

  cfg = workdir_lib.read_config(path) if workdir_lib.is_workdir(path) else None
  name = args.dataset or (cfg.data.name if cfg else None)
  data_dir = args.data_dir or (cfg.data.data_dir if cfg else None)
  if not name or not data_dir:
    raise errors.InvalidInput(
      f'{path} is a model dir: say which data to evaluate on with --dataset and --data_dir.'
    )
  classes = args.classes or (cfg.data.classes if cfg and name == cfg.data.name else '')
  split = args.split or (cfg.data.eval_split if cfg else 'test')
  loader = args.loader or (cfg.data.get('loader', 'tf.data') if cfg else 'tf.data')
  return {
    'loader': loader,
    'name': name,
    'data_dir': os.path.expanduser(data_dir),
    'split': split,
    'classes': [c for c in classes.split(',') if c] or None,
  }


def evaluate(
  path: str,
  *,
  which: str = 'best',
  name: str,
  data_dir: str,
  split: str,
  classes: list[str] | None = None,
  manual_dir: str | None = None,
  batch_size: int = 128,
  flip_tta: bool = False,
  tta: str = 'none',
  tta_crop_fraction: float = tta_lib.DEFAULT_CROP_FRACTION,
  loader: str = 'tf.data',
) -> dict[str, Any]:
  """Metrics of the model at `path` (workdir or model dir) on `name`/`split`.

  tta: test-time augmentation (zenfer_jax.deploy.tta): 'none', 'flip' (each image and its
  mirror: faces are close to mirror-symmetric, and the train recipes flip them) or 'ten_crop'
  (also the corner and centre crops of side tta_crop_fraction, and their mirrors).
  flip_tta: the same as tta='flip'.
  loader: 'tf.data', or 'grain' for a machine without TensorFlow (a bare accelerator image):
  the same examples, each once, with the same preprocessing (tested equal).
  """
  tta = _checked_tta(flip_tta, tta, tta_crop_fraction)
  if loader not in LOADERS:
    raise errors.InvalidInput(f'loader {loader!r}: expected one of {", ".join(LOADERS)}.')
  import jax

  # Here: JAX, Flax and Orbax (~2 s), kept out of --help.
  from zenfer_jax.rundir import model_directory
  from zenfer_jax.rundir import workdir as workdir_lib
  from zenfer_jax.training import metrics, parallel, steps

  variables, card = workdir_lib.load_inference(path, which)
  grain = loader == 'grain'
  formats = {'file_format': 'array_record'} if grain else {}  # Grain reads ArrayRecord files.
  info = data.prepare_dataset(name, data_dir, manual_dir=manual_dir, classes=classes, **formats)
  _check_classes(card, info, name)
  if batch_size % jax.device_count():
    raise errors.InvalidInput(
      f'--batch_size {batch_size} is not a multiple of {jax.device_count()} devices.'
    )
  model = model_directory.build_from_card(card)
  image_size = card['image_size'] or 224
  spec = DataSpec(
    name,
    data_dir,
    image_size=image_size,
    per_device_batch=batch_size // jax.device_count(),
    num_local_devices=jax.local_device_count(),
    recipe=card['recipe'],
    classes=classes,
    eval_split=split,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  if grain:  # Imported here: only a Grain evaluation pays for importing Grain.
    from zenfer_jax.data import grain_pipeline

    batches = grain_pipeline.eval_batches(spec)
  else:
    batches = data.pipeline.eval_dataset(spec)
  apply_fn = tta_lib.wrap(model.apply, tta, tta_crop_fraction)
  p_eval = parallel.pmap_eval_step(
    functools.partial(steps.eval_step, apply_fn=apply_fn, num_classes=card['num_classes'])
  )
  cm = steps.evaluate_split(p_eval, parallel.replicate(variables), batches, card['num_classes'])
  result = metrics.summarize(cm, info.class_names)
  result.update(
    {
      'confusion_matrix': cm.tolist(),
      'class_names': list(info.class_names),
      'dataset': name,
      'split': split,
      'checkpoint': os.path.abspath(path),
      'image_size': image_size,
      'recipe': card['recipe'],
      'loader': loader,
      'flip_tta': tta == 'flip',
      'tta': tta,
      'tta_crop_fraction': tta_crop_fraction if tta == 'ten_crop' else None,
    }
  )
  return result


def _checked_tta(flip_tta: bool, tta: str, tta_crop_fraction: float) -> str:
  """The one test-time augmentation asked for, checked before JAX or the data are loaded, so a
  wrong option fails at once; `flip_tta` is kept as the older spelling of tta='flip'."""
  if flip_tta:
    if tta not in ('none', 'flip'):
      raise errors.InvalidInput(f'flip_tta and tta={tta!r} name two test-time augmentations.')
    tta = 'flip'
  try:
    tta_lib.check(tta, tta_crop_fraction)
  except ValueError as e:
    raise errors.InvalidInput(str(e)) from None
  return tta


def _check_classes(card: dict, info, name: str) -> None:
  """A model evaluated on other classes (or the same in another order) would give metrics that
  look plausible and mean nothing, so the mismatch is refused."""
  if info.num_classes != card['num_classes']:
    raise errors.InvalidInput(
      f'The model has {card["num_classes"]} classes, {name} has {info.num_classes} '
      f'({info.class_names}).'
    )
  if card['class_names'] and list(card['class_names']) != list(info.class_names):
    raise errors.InvalidInput(
      f'The model was trained on the classes {card["class_names"]}, {name} has '
      f'{info.class_names} (same order required).'
    )


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str) -> None:
  """Counts in each cell, colour by the row's fraction (per-class recall)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cm = np.asarray(cm)
  k = len(class_names)
  frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  size = max(4.0, 0.6 * k + 2.0)
  fig, ax = plt.subplots(figsize=(size + 1, size))
  im = ax.imshow(frac, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
  ax.set_xticks(range(k), labels=class_names, rotation=45, ha='right')
  ax.set_yticks(range(k), labels=class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  for i in range(k):
    for j in range(k):
      ax.text(
        j,
        i,
        str(int(cm[i, j])),
        ha='center',
        va='center',
        fontsize=8,
        color='white' if frac[i, j] > 0.5 else 'black',
      )
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


OUTPUT_FILES = ('metrics.json', 'confusion_matrix.png')


def _check_output_dir(out: str) -> None:
  """Replaces an earlier evaluation's files, never a user's files of the same names."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.InvalidInput(f'--output_dir {out} exists and is not a directory.')
  present = [n for n in OUTPUT_FILES if os.path.lexists(os.path.join(out, n))]
  if not present:
    return
  try:
    with open(os.path.join(out, 'metrics.json'), encoding='utf-8') as f:
      previous = json.load(f)
  except (OSError, ValueError):
    previous = None
  if not (isinstance(previous, dict) and {'top1', 'confusion_matrix'} <= set(previous)):
    raise errors.InvalidInput(
      f'--output_dir {out} holds {" and ".join(present)} that an evaluation did not write; '
      'they are not replaced. Choose another --output_dir.'
    )


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from zenfer_jax.rundir import pretrained  # JAX: kept out of --help.

  given = args.workdir or args.checkpoint
  path = pretrained.resolve(given)
  if not os.path.isdir(path):
    raise errors.InvalidInput(
      f'{path} is not a directory: give a training workdir or a model directory (WORKDIR/'
      'model_best, torch_port.convert output), or the name of a shipped model '
      f'({", ".join(pretrained.names())}).'
    )
  ds = _dataset_args(args, path)
  cli.setup_logging(args.verbosity, uses_tensorflow=ds['loader'] != 'grain')
  if ds['loader'] != 'grain':  # TensorFlow: after setup_logging, and only for tf.data.
    from zenfer_jax.data.pipeline import hide_gpus_from_tf

    hide_gpus_from_tf()
  tta = 'flip' if args.flip_tta else args.tta
  folder = f'eval_{ds["split"]}' + ('' if tta == 'none' else f'_{tta}_tta')
  # A shipped model's folder is the package's: its evaluation goes to the working directory.
  out = args.output_dir or (os.path.join(path, folder) if path == given else f'{given}_{folder}')
  _check_output_dir(out)
  result = evaluate(
    path,
    which=args.which,
    manual_dir=args.manual_dir,
    batch_size=args.batch_size,
    tta=tta,
    tta_crop_fraction=args.tta_crop_fraction,
    **ds,
  )
  os.makedirs(out, exist_ok=True)
  atomic_write.write_json(os.path.join(out, 'metrics.json'), result)
  title = (
    f'{ds["name"]}/{ds["split"]}{"" if tta == "none" else f" ({tta} TTA)"}: '
    f'top-1 {100 * result["top1"]:.2f}%, '
    f'mean class {100 * result["mean_class_accuracy"]:.2f}%'
  )
  plot_confusion(
    np.array(result['confusion_matrix']),
    result['class_names'],
    os.path.join(out, 'confusion_matrix.png'),
    title,
  )
  print(f'{title} ({result["num_examples"]} images)')
  for name, acc in result['per_class_accuracy'].items():
    print(f'  {name:>16s}: ' + ('n/a' if acc is None else f'{100 * acc:.2f}%'))
  print(f'Wrote {out}/metrics.json and {out}/confusion_matrix.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
