"""Top-1 of exported files on a prepared split, beside the model they were exported from.

  python -m benchmarks.export_accuracy --dataset digits --data_dir runs/tfds \
      runs/demo/model_best model.tflite model_int8.tflite [model.onnx model.stablehlo ...]

`zenfer_jax.deploy.export` checks a file against the Flax model on random inputs: that bounds a
float export's error but says nothing about what int8 quantisation costs on real images. Here every
example of --split is read once by the evaluation pipeline (the first model's recipe and image
size, padded batches masked out, as `zenfer_jax.deploy.evaluate` reads it) and each batch is fed to
every model: a model dir or training workdir through the Flax model, an exported file through
its own runtime (onnxruntime, LiteRT, jax.export). All models must agree on the classes, the
image size and the recipe, else their figures would not be comparable.

Per model: top-1 (correct / total), top-1 agreement with the first model, and the size on disk.
Prints a markdown table; --out also writes the report as JSON.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from zenfer_jax import atomic_write, cli, errors


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(prog='python -m benchmarks.export_accuracy', description=__doc__)
  p.add_argument('models', nargs='+', metavar='MODEL', help='model dirs, workdirs, exported files')
  p.add_argument('--dataset', required=True, help='a prepared dataset (digits, rafdb, ...)')
  p.add_argument('--data_dir', required=True, help='the TFDS data_dir holding --dataset')
  p.add_argument('--split', default='test')
  p.add_argument('--batch_size', type=cli.positive_int, default=64)
  p.add_argument('--out', help='also write the report here as JSON')
  return p


def _size(path: str) -> int:
  """Bytes on disk: the file, or every file under a model directory."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _load(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], dict, dict]:
  """(logits function, card, description) of a model dir, workdir or exported file."""
  from zenfer_jax.deploy import runtimes

  if runtimes.is_exported(path):
    m = runtimes.load(path)
    quantize = (m.card.get('export') or {}).get('quantize')
    return m.logits, m.card, {'format': m.format, 'runtime': m.runtime, 'quantize': quantize}
  import jax

  from zenfer_jax.rundir import model_directory
  from zenfer_jax.rundir import workdir as workdir_lib

  variables, card = workdir_lib.load_inference(path)
  variables = {c: variables[c] for c in ('params', 'batch_stats') if c in variables}
  model = model_directory.build_from_card(card)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return (
    lambda x: np.asarray(apply(variables, x)),
    card,
    {'format': 'flax', 'runtime': 'JAX', 'quantize': None},
  )


def measure(
  paths: Sequence[str], dataset: str, data_dir: str, split: str = 'test', batch_size: int = 64
) -> list[dict]:
  """One row per model: top-1 on `split`, agreement with the first model, size on disk."""
  from zenfer_jax.data import pipeline, registry

  if not paths:
    raise errors.InvalidInput('give at least one model')
  models = [(p, *_load(p)) for p in paths]
  first_path, _, first, _ = models[0]
  image_size, recipe = first.get('image_size'), first.get('recipe')
  if not image_size or not recipe:
    raise errors.InvalidInput(f'the card of {first_path} records no image_size or no recipe')
  _, info = registry.load(dataset, data_dir)
  for path, _, card, _ in models:
    for key, want in (('image_size', image_size), ('recipe', recipe)):
      if card.get(key) != want:
        raise errors.InvalidInput(
          f'{path}: {key} {card.get(key)!r}, but {first_path} has {want!r}; '
          'compare only exports of one model'
        )
    if list(card.get('class_names') or []) != list(info.class_names):
      raise errors.InvalidInput(
        f'{path} was trained on the classes {card.get("class_names")}, {dataset} has '
        f'{info.class_names} (same order required)'
      )
  batches = pipeline.eval_dataset(
    pipeline.DataSpec(
      dataset,
      data_dir,
      image_size=image_size,
      per_device_batch=batch_size,
      recipe=recipe,
      eval_split=split,
    )
  )
  labels, preds = [], [[] for _ in models]
  for batch in batches:
    keep = batch['mask'].reshape(-1)
    x = batch['image'].reshape(-1, *batch['image'].shape[-3:])[keep]
    labels.append(batch['label'].reshape(-1)[keep])
    for out, (_, logits, _, _) in zip(preds, models, strict=True):
      out.append(np.argmax(logits(x), -1))
  if not labels or not sum(len(v) for v in labels):
    raise errors.InvalidInput(
      f'{dataset} split {split!r} in {data_dir} holds no examples: nothing to compare the '
      'exports on'
    )
  labels = np.concatenate(labels)
  preds = [np.concatenate(p) for p in preds]
  rows = []
  for (path, _, _, desc), pred in zip(models, preds, strict=True):
    correct = int(np.sum(pred == labels))
    rows.append(
      {
        'model': path,
        **desc,
        'bytes': _size(path),
        'correct': correct,
        'total': len(labels),
        'top1': correct / len(labels),
        'agreement_with_first': float(np.mean(pred == preds[0])),
      }
    )
  return rows


def markdown(rows: Sequence[dict]) -> str:
  lines = [
    '| model | runtime | quantize | size (KiB) | top-1 | correct | agreement with first |',
    '|---|---|---|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(
      f'| {os.path.basename(os.path.normpath(r["model"]))} | {r["runtime"]} | '
      f'{r["quantize"] or "-"} | {r["bytes"] / 1024:.1f} | {100 * r["top1"]:.2f}% | '
      f'{r["correct"]}/{r["total"]} | {100 * r["agreement_with_first"]:.2f}% |'
    )
  return '\n'.join(lines)


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  try:
    rows = measure(args.models, args.dataset, args.data_dir, args.split, args.batch_size)
  except (errors.UserError, ValueError, FileNotFoundError) as e:
    return cli.report(e)
  print(markdown(rows))
  if args.out:
    report = {
      'command': 'python -m benchmarks.export_accuracy '
      + ' '.join(argv if argv is not None else sys.argv[1:]),
      'dataset': args.dataset,
      'split': args.split,
      'rows': rows,
    }
    atomic_write.write_json(args.out, report)
  return 0


if __name__ == '__main__':
  sys.exit(main())
