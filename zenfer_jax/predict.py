"""Classifies images with a trained model: the top-k classes and their probabilities.

  python -m zenfer_jax.predict --checkpoint DIR face1.jpg face2.png [--top_k 3] [--json]

DIR is a model dir (torch_port.convert output, WORKDIR/model_best) or a training workdir (its
best checkpoint). Images are decoded and preprocessed exactly as evaluation does (TensorFlow's
decoder, the card's recipe and image size). A file that cannot be read or decoded gets an error
of its own; the others are still classified, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from zenfer_jax import cli


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.predict',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--checkpoint', required=True, help='a model dir or a training workdir')
  p.add_argument('images', nargs='+', metavar='IMAGE')
  p.add_argument('--top_k', type=int, default=3, help='classes shown per image')
  p.add_argument('--json', action='store_true', help='print one JSON document')
  p.add_argument('--batch_size', type=int, default=32, help='images per forward pass')
  args = p.parse_args(argv)
  if args.top_k < 1:
    p.error(f'--top_k must be at least 1, got {args.top_k}')
  return args


def load_image(path: str, image_size: int, recipe: str) -> np.ndarray:
  """float32 [size, size, 3] as the eval pipeline makes it; raises ValueError if unreadable.

  The file goes through `zenfer_jax.data.images.read_image`, the reader `prepare` uses, then
  through the eval pipeline's decoder: the pixels equal those of the same file prepared and
  evaluated (16-bit images included), and the same limits apply (an image above
  `images.MAX_IMAGE_PIXELS` is refused before it is decoded).
  """
  import tensorflow as tf

  from zenfer_jax.data import images, pipeline

  try:
    encoded = images.read_image(path)
    image = pipeline.decode(tf.constant(encoded)).numpy()
    return np.asarray(pipeline.preprocess_for_eval(image, image_size, recipe), np.float32)
  except images.BadImage as e:
    raise ValueError(f'cannot read image: {e}') from None
  except (OSError, tf.errors.OpError, ValueError, MemoryError) as e:
    raise ValueError(f'cannot read image: {_short(e)}') from None


def _short(e: Exception) -> str:
  """The readable part of an OS or TensorFlow error."""
  msg = (getattr(e, 'message', None) or str(e) or type(e).__name__).strip().splitlines()[0]
  msg = re.sub(r'\{\{.*?\}\}\s*', '', msg)
  return re.sub(r'\s*\[Op:.*$', '', msg)


class Predictor:
  """A loaded model and its card; `__call__` maps float32 images to class probabilities."""

  def __init__(self, path: str):
    import jax

    from zenfer_jax import model_directory
    from zenfer_jax import workdir as workdir_lib

    self.variables, self.card = workdir_lib.load_inference(path)
    self.model = model_directory.build_from_card(self.card)
    self.image_size = self.card['image_size'] or 224
    self.recipe = self.card['recipe'] or 'rafdb'
    self.class_names = self.card['class_names'] or [str(i) for i in range(self.card['num_classes'])]
    self._probs = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, x, train=False), -1))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._probs(self.variables, images))


def predict(
  path: str, images: Sequence[str], top_k: int = 3, batch_size: int = 32
) -> list[dict[str, Any]]:
  """One result per image, in order: {'image', 'predictions': [{'class', 'probability'}]} or
  {'image', 'error'}."""
  predictor = Predictor(path)
  results: list[dict[str, Any]] = [{'image': p} for p in images]
  ready = []
  for i, p in enumerate(images):
    try:
      ready.append((i, load_image(p, predictor.image_size, predictor.recipe)))
    except ValueError as e:
      results[i]['error'] = str(e)
  k = min(top_k, len(predictor.class_names))
  for start in range(0, len(ready), batch_size):
    chunk = ready[start : start + batch_size]
    batch = np.stack([x for _, x in chunk])
    pad = batch_size - len(chunk) if len(ready) > batch_size else 0  # One shape, one compile.
    if pad:
      batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
    probs = predictor(batch)[: len(chunk)]
    for (i, _), p in zip(chunk, probs):
      order = np.argsort(-p, kind='stable')[:k]
      results[i]['predictions'] = [
        {'class': predictor.class_names[j], 'probability': float(p[j])} for j in order
      ]
  return results


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  from zenfer_jax.data.pipeline import hide_gpus_from_tf

  hide_gpus_from_tf()
  results = predict(args.checkpoint, args.images, args.top_k, args.batch_size)
  if args.json:
    print(json.dumps(results, indent=2))
  else:
    for r in results:
      if 'error' in r:
        print(f'{r["image"]}: ERROR {r["error"]}')
      else:
        shown = ', '.join(f'{p["class"]} {100 * p["probability"]:.1f}%' for p in r['predictions'])
        print(f'{r["image"]}: {shown}')
  return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
  sys.exit(main())
