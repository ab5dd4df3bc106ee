"""Classifies images with a trained model: the top-k classes and their probabilities.

  python -m zenfer_jax.deploy.predict --checkpoint DIR face1.jpg face2.png [--top_k 3] [--json]

  python -m zenfer_jax.deploy.predict --checkpoint DIR --detect_faces photo.jpg
      [--annotate out.png] [--json]
  python -m zenfer_jax.deploy.predict --checkpoint DIR --video in.mp4
      [--annotate out.mp4] [--json]

DIR is a model dir (torch_port.convert output, WORKDIR/model_best), a training workdir (its
best checkpoint) or an exported file (model.onnx, model.tflite, model.stablehlo from
zenfer_jax.deploy.export), which runs in its own runtime (onnxruntime, LiteRT: no JAX involved) with
the card it carries. Images are decoded and preprocessed exactly as evaluation does
(TensorFlow's decoder, the card's recipe and image size); a card that records no recipe or size
is refused unless --recipe / --image_size say which. A file that cannot be read or decoded gets
an error of its own; the others are still classified, and the exit status is 1.

--detect_faces treats each image as a photo: every face is found (MTCNN, weights inside the
mtcnn package), aligned onto a five-landmark template as RAF-DB's faces were (see
zenfer_jax.deploy.faces), and classified; --annotate writes the photo with boxes and labels. --video
does the same frame by frame, with the frames per second processed shown on each frame.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from zenfer_jax import cli, errors
from zenfer_jax.data import images as images_lib
from zenfer_jax.deploy import faces as faces_lib
from zenfer_jax.deploy import runtimes
from zenfer_jax.deploy import tta as tta_lib


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.deploy.predict',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    '--checkpoint',
    required=True,
    help='a model dir, a training workdir, or an exported .onnx/.tflite/.stablehlo file',
  )
  p.add_argument('images', nargs='*', metavar='IMAGE')
  p.add_argument('--top_k', type=cli.positive_int, default=3, help='classes shown per image')
  p.add_argument('--json', action='store_true', help='print one JSON document')
  p.add_argument('--batch_size', type=cli.positive_int, default=32, help='images per forward pass')
  p.add_argument(
    '--tta',
    choices=tta_lib.MODES,
    default='none',
    help='test-time augmentation (JAX models): the mean logits over each face and its mirror '
    '(flip), or also its corner and centre crops and their mirrors (ten_crop)',
  )
  p.add_argument(
    '--tta_crop_fraction',
    type=float,
    default=tta_lib.DEFAULT_CROP_FRACTION,
    help="ten_crop's crop side as a fraction of the input side",
  )
  p.add_argument(
    '--recipe', help='eval preprocessing (rafdb, affectnet, ...) when the card records none'
  )
  p.add_argument(
    '--image_size', type=cli.positive_int, help='input size when the card records none'
  )
  p.add_argument(
    '--detect_faces', action='store_true', help='find, align and classify every face in photos'
  )
  faces_lib.add_options(p, help_prefix='--detect_faces: ')
  p.add_argument('--video', help='a video file: faces found and classified frame by frame')
  p.add_argument(
    '--annotate',
    help='write the picture (a directory for several images) or the video with boxes and labels',
  )
  args = p.parse_args(argv)
  if args.video and args.images:
    p.error('give images or --video, not both')
  if not args.video and not args.images:
    p.error('give at least one IMAGE, or --video')
  if args.annotate and not (args.detect_faces or args.video):
    p.error('--annotate draws detected faces: add --detect_faces (or use --video)')
  if args.video and args.annotate and not args.annotate.lower().endswith(('.mp4', '.m4v', '.mov')):
    p.error(f'--annotate {args.annotate}: a video is written as MPEG-4, name it .mp4')
  return args


def load_image(path: str, image_size: int, recipe: str) -> np.ndarray:
  """float32 [size, size, 3] as the eval pipeline makes it; raises ValueError if unreadable.

  The file goes through `zenfer_jax.data.images.read_image`, the reader `prepare` uses, then
  through the eval pipeline's decoder: the pixels equal those of the same file prepared and
  evaluated (16-bit images included), and the same limits apply (an image above
  `images.MAX_IMAGE_PIXELS` is refused before it is decoded).
  """
  import tensorflow as tf

  from zenfer_jax.data import pipeline  # Here: TensorFlow, kept out of --help.

  try:
    encoded = images_lib.read_image(path)
    image = pipeline.decode(tf.constant(encoded)).numpy()
    return np.asarray(pipeline.preprocess_for_eval(image, image_size, recipe), np.float32)
  except images_lib.BadImage as e:
    raise ValueError(f'cannot read image: {e}') from None
  except (OSError, tf.errors.OpError, ValueError, MemoryError) as e:
    raise ValueError(f'cannot read image: {_short(e)}') from None


def _short(e: Exception) -> str:
  """The readable part of an OS or TensorFlow error."""
  msg = (getattr(e, 'message', None) or str(e) or type(e).__name__).strip().splitlines()[0]
  msg = re.sub(r'\{\{.*?\}\}\s*', '', msg)
  return re.sub(r'\s*\[Op:.*$', '', msg)


class Predictor:
  """A loaded model and its card; `__call__` maps float32 images to class probabilities.

  A model dir or workdir runs in JAX; an exported file in its own runtime (`runtime` says
  which). The preprocessing comes from the card, or from `recipe` / `image_size` where the card
  records none; a card that records one and an argument that says otherwise is refused, since
  one of the two is wrong about how the model was trained.
  """

  def __init__(
    self,
    path: str,
    recipe: str | None = None,
    image_size: int | None = None,
    tta: str = 'none',
    tta_crop_fraction: float = tta_lib.DEFAULT_CROP_FRACTION,
  ):
    tta_lib.check(tta, tta_crop_fraction)
    self.tta = tta
    if runtimes.is_exported(path) and tta != 'none':
      # An exported file's runtime gives probabilities of one view; the views are JAX's.
      raise errors.InvalidInput(
        f'--tta {tta} runs with a model dir or workdir, not an exported file ({path})'
      )
    if runtimes.is_exported(path):
      self.exported = runtimes.load(path)
      self.card = self.exported.card
      self.runtime = self.exported.runtime
      self._probs = self.exported.probabilities
      fixed = self.exported.card.get('export', {}).get('input', {}).get('shape', [None, None])[1]
      if image_size and fixed and image_size != fixed:
        raise errors.InvalidInput(
          f'{path} takes {fixed}x{fixed} inputs; --image_size {image_size} differs'
        )
    else:
      import jax

      # Here: JAX, Flax and Orbax (~2 s), kept out of --help.
      from zenfer_jax.rundir import model_directory
      from zenfer_jax.rundir import workdir as workdir_lib

      self.exported = None
      self.variables, self.card = workdir_lib.load_inference(path)
      self.model = model_directory.build_from_card(self.card)
      self.runtime = f'JAX {jax.__version__}'
      apply = tta_lib.wrap(self.model.apply, tta, tta_crop_fraction)
      fn = jax.jit(lambda v, x: jax.nn.softmax(apply(v, x, train=False), -1))
      self._probs = lambda x: fn(self.variables, x)
    self.image_size = _from_card(self.card, 'image_size', image_size, path)
    self.recipe = _from_card(self.card, 'recipe', recipe, path)
    self.class_names = self.card['class_names'] or [str(i) for i in range(self.card['num_classes'])]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._probs(images))


_FLAG_HELP = {
  'recipe': '--recipe (rafdb: the whole image resized; affectnet: shorter side resized, centre crop)',
  'image_size': '--image_size (the size the model was trained at)',
}


def _from_card(card: dict, field: str, given, path: str):
  """The card's value, or the one given where the card has none; never a silent default."""
  recorded = card.get(field)
  if recorded is None and given is None:
    raise errors.InvalidInput(
      f'the model card of {path} records no {field}, and predicting with the wrong one gives '
      f'wrong answers: pass {_FLAG_HELP[field]}'
    )
  if recorded is not None and given is not None and recorded != given:
    raise errors.InvalidInput(
      f'the model card of {path} records {field} {recorded!r}; --{field} {given!r} contradicts it'
    )
  return recorded if recorded is not None else given


def predict(
  path: str | Predictor,
  images: Sequence[str],
  top_k: int = 3,
  batch_size: int = 32,
  recipe: str | None = None,
  image_size: int | None = None,
) -> list[dict[str, Any]]:
  """One result per image, in order: {'image', 'predictions': [{'class', 'probability'}]} or
  {'image', 'error'}."""
  predictor = path if isinstance(path, Predictor) else Predictor(path, recipe, image_size)
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


# --------------------------------------------------------------------------------------------
# Faces in photos and videos


def _top(predictor: Predictor, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
  order = np.argsort(-probs, kind='stable')[: min(k, len(predictor.class_names))]
  return [{'class': predictor.class_names[j], 'probability': float(probs[j])} for j in order]


def _label(prediction: dict[str, Any]) -> str:
  return f'{prediction["class"]} {100 * prediction["probability"]:.0f}%'


class FaceClassifier:
  """Detector + alignment + model: an RGB picture -> its faces with their top-k classes."""

  def __init__(
    self,
    predictor: Predictor,
    align: str = 'landmarks',
    top_k: int = 3,
    min_confidence: float = 0.9,
    pad_to: int = 8,
  ):
    self.predictor = predictor
    self.detector = faces_lib.FaceDetector(min_confidence=min_confidence)
    self.align = align
    self.top_k = top_k
    # JAX compiles once per batch shape: faces are classified in padded batches of one size.
    self.pad_to = pad_to if predictor.exported is None else None

  def __call__(self, rgb: np.ndarray) -> tuple[list, list[dict[str, Any]]]:
    """(faces, one JSON-ready dict per face: box, confidence, landmarks, predictions)."""
    from zenfer_jax.data import pipeline  # Here: TensorFlow, kept out of --help.

    found = self.detector.detect(rgb)
    if not found:
      return [], []
    crops = []
    for f in found:
      crop = (
        faces_lib.align(rgb, f) if self.align == 'landmarks' else faces_lib.box_crop(rgb, f.box)
      )
      crops.append(
        np.asarray(
          pipeline.preprocess_for_eval(crop, self.predictor.image_size, self.predictor.recipe),
          np.float32,
        )
      )
    probs = []
    step = self.pad_to or len(crops)
    for start in range(0, len(crops), step):
      batch = np.stack(crops[start : start + step])
      n = len(batch)
      if self.pad_to and n < self.pad_to:
        batch = np.concatenate([batch, np.zeros((self.pad_to - n, *batch.shape[1:]), batch.dtype)])
      probs.extend(self.predictor(batch)[:n])
    out = []
    for f, p in zip(found, probs):
      entry = f.to_json()
      entry['predictions'] = _top(self.predictor, p, self.top_k)
      out.append(entry)
    return found, out


def _read_rgb(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] with the same reader and decoder as `load_image`."""
  import tensorflow as tf

  from zenfer_jax.data import pipeline  # Here: TensorFlow, kept out of --help.

  try:
    return pipeline.decode(tf.constant(images_lib.read_image(path))).numpy()
  except images_lib.BadImage as e:
    raise ValueError(f'cannot read image: {e}') from None
  except (OSError, tf.errors.OpError, ValueError, MemoryError) as e:
    raise ValueError(f'cannot read image: {_short(e)}') from None


def _annotated_path(annotate: str, image: str, several: bool) -> str:
  import os

  if not several:
    return annotate
  stem = os.path.splitext(os.path.basename(image))[0]
  return os.path.join(annotate, f'{stem}.png')


def _save_picture(rgb: np.ndarray, path: str) -> None:
  """Written beside the destination and renamed: no half-written picture is ever left."""
  import os

  from PIL import Image

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  base, ext = os.path.splitext(path)
  tmp = f'{base}.partial{ext or ".png"}'
  try:
    Image.fromarray(rgb).save(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def predict_faces(
  classifier: FaceClassifier, images: Sequence[str], annotate: str | None = None
) -> list[dict[str, Any]]:
  """One result per photo: {'image', 'faces': [...]} (+ 'message' when none, 'annotated'),
  or {'image', 'error'}."""
  several = len(images) > 1
  results = []
  for path in images:
    result: dict[str, Any] = {'image': path}
    try:
      rgb = _read_rgb(path)
    except ValueError as e:
      result['error'] = str(e)
      results.append(result)
      continue
    found, entries = classifier(rgb)
    result['faces'] = entries
    if not entries:
      result['message'] = 'no face found'
    if annotate:
      out = _annotated_path(annotate, path, several)
      labels = [_label(e['predictions'][0]) for e in entries]
      _save_picture(faces_lib.annotate(rgb, found, labels), out)
      result['annotated'] = out
    results.append(result)
  return results


def predict_video(
  classifier: FaceClassifier, video: str, annotate: str | None = None
) -> dict[str, Any]:
  """{'video', 'frames', 'fps', 'processed_fps', 'per_frame': [{'frame', 'time_s', 'faces'}]}.

  The frames per second drawn on each frame are those processed (detection, alignment and
  classification), averaged over the last second of frames.
  """
  import collections
  import time

  frames, fps, size = faces_lib.read_video(video)
  writer = faces_lib.VideoWriter(annotate, fps, size) if annotate else None
  per_frame = []
  recent: collections.deque = collections.deque(maxlen=max(1, round(fps)))
  start = time.perf_counter()
  ok = False
  try:
    for i, rgb in enumerate(frames):
      t0 = time.perf_counter()
      found, entries = classifier(rgb)
      recent.append(time.perf_counter() - t0)
      per_frame.append({'frame': i, 'time_s': round(i / fps, 3), 'faces': entries})
      if writer:
        rate = len(recent) / sum(recent)
        labels = [_label(e['predictions'][0]) for e in entries]
        writer.write(faces_lib.annotate(rgb, found, labels, banner=f'{rate:.1f} frames/s'))
    ok = True
  finally:
    if writer:
      writer.close(keep=ok)
  elapsed = time.perf_counter() - start
  out = {
    'video': video,
    'frames': len(per_frame),
    'fps': fps,
    'processed_fps': round(len(per_frame) / elapsed, 2) if per_frame else 0.0,
    'per_frame': per_frame,
  }
  if annotate:
    out['annotated'] = annotate
  return out


def _print_faces(results: list[dict[str, Any]]) -> None:
  for r in results:
    if 'error' in r:
      print(f'{r["image"]}: ERROR {r["error"]}')
    elif not r['faces']:
      print(f'{r["image"]}: no face found')
    else:
      for j, f in enumerate(r['faces']):
        box = ', '.join(f'{v:.0f}' for v in f['box'])
        shown = ', '.join(f'{p["class"]} {100 * p["probability"]:.1f}%' for p in f['predictions'])
        print(f'{r["image"]}: face {j} at [{box}]: {shown}')


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  from zenfer_jax.data.pipeline import hide_gpus_from_tf  # TensorFlow: after setup_logging.

  hide_gpus_from_tf()
  from zenfer_jax.rundir import model_directory  # JAX: kept out of --help.

  try:
    predictor = Predictor(
      args.checkpoint, args.recipe, args.image_size, args.tta, args.tta_crop_fraction
    )
    if args.detect_faces or args.video:
      classifier = FaceClassifier(
        predictor, args.align, args.top_k, args.min_face_confidence, min(args.batch_size, 8)
      )
    if args.video:
      video = predict_video(classifier, args.video, args.annotate)
  except (
    ValueError,
    FileNotFoundError,
    ImportError,
    model_directory.ModelDirError,
    runtimes.ExportedFileError,
  ) as e:
    return cli.report(e)
  if args.video:
    if args.json:
      print(json.dumps(video, indent=2))
    else:
      for fr in video['per_frame']:
        shown = '; '.join(_label(f['predictions'][0]) for f in fr['faces']) or 'no face'
        print(f'frame {fr["frame"]} ({fr["time_s"]:.2f} s): {shown}')
      print(f'{video["frames"]} frames, {video["processed_fps"]} frames/s processed')
    return 0
  if args.detect_faces:
    results = predict_faces(classifier, args.images, args.annotate)
    if args.json:
      print(json.dumps(results, indent=2))
    else:
      _print_faces(results)
    return 1 if any('error' in r for r in results) else 0
  results = predict(predictor, args.images, args.top_k, args.batch_size)
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
