"""A model directory -> one deployable file: ONNX, LiteRT (TFLite) or serialised StableHLO.

  python -m zenfer_jax.deploy.export --checkpoint MODEL_DIR --format onnx|tflite|stablehlo \
      --output PATH [--batch N] [--quantize int8 --data_dir DIR --dataset NAME]

The exported graph computes `model.apply(variables, x, train=False)`: float32 NHWC images of the
card's size, already normalised the way evaluation normalises them, in; logits out. Without
`--batch` the batch dimension is dynamic in ONNX and StableHLO; a LiteRT file always has a fixed
batch (1 unless `--batch`): the LiteRT converter cannot lower the gathers a symbolic batch
dimension puts in the shuffle-attention slices.

Routes, each chosen by measurement (docs/deploy.md, "Why these routes", has the figures):
  * onnx: torch_port's reference PyTorch model (key-for-key the original network, checked against
    the Flax model by the parity tests) with the variables loaded strictly, exported by
    `torch.onnx.export(dynamo=True)` with an NHWC -> NCHW transpose in front. It gives
    onnxruntime plain Conv/BatchNorm/ReLU graphs that it fuses, faster at batch 1 than the
    jax2onnx graph of the same model (which follows the CPU-specialised JAX formulation:
    1x1 convs as reshapes and matmuls, unfused normalisation), and jax2onnx's current releases
    pin orbax-checkpoint below the version this project needs. Needs the `torch` extra. The
    writer is torch_port.onnx_export, found through the 'zenfer_jax.exporters' entry point,
    since zenfer_jax itself never imports torch_port.
  * tflite: jax2tf (StableHLO inside an XlaCallModule op) -> SavedModel -> the TFLite
    converter, which lowers the StableHLO to builtin ops; checked with the LiteRT interpreter.
    `--quantize int8` calibrates on a representative set from a prepared dataset's train split
    and keeps float32 input and output.
  * stablehlo: `jax.export` serialised bytes, reloaded with `jax.export.deserialize`.

Every export is checked before it is moved into place: the file is loaded in its own runtime and
its logits compared with the Flax model's on random inputs; a float export further than
`--tolerance` (1e-4 relative to the largest logit) fails. Files are written to a temporary
sibling and renamed, so a failure leaves nothing at PATH. The model card (the directory's card
plus the input contract) is written beside the file as PATH.json and, for ONNX (metadata_props)
and LiteRT (a 'model_card' metadata buffer), inside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from zenfer_jax import atomic_write, cli, errors
from zenfer_jax.data.augment_spec import IMAGENET_MEAN, IMAGENET_STD
from zenfer_jax.data.recipes import RECIPES
from zenfer_jax.deploy import runtimes

__all__ = [
  'FORMATS',
  'ExportError',
  'export',
  'export_card',
  'card_path',
  'relative_error',
  'main',
]

FORMATS = {'onnx': '.onnx', 'tflite': '.tflite', 'stablehlo': '.stablehlo'}
CARD_KEY = 'model_card'  # ONNX metadata_props key and LiteRT metadata name
# Writers that live outside zenfer_jax (which never imports torch_port) register here.
EXPORTERS_GROUP = 'zenfer_jax.exporters'
INPUT_NAME = 'images'
OUTPUT_NAME = 'logits'
DEFAULT_TOLERANCE = 1e-4


class ExportError(ValueError, errors.UserError):
  """An export that cannot be made as asked; the message says what to change."""


def card_path(path: str) -> str:
  """Where the JSON card of an exported file lives: beside it, PATH + '.json'."""
  return os.fspath(path) + '.json'


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """max |got - want| / max |want|: the parity measure used throughout the project."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def export_card(
  card: dict, fmt: str, batch: int | None, image_size: int, quantize: str | None
) -> dict:
  """The model directory's card plus what a runtime needs to feed the exported graph."""
  out = dict(card)
  out['image_size'] = image_size
  out['export'] = {
    'format': fmt,
    'input': {
      'name': INPUT_NAME,
      'shape': [batch, image_size, image_size, 3],
      'dtype': 'float32',
      'layout': 'NHWC',
      'normalisation': '(pixel / 255 - mean) / std per RGB channel, after the recipe resize',
      'mean': list(IMAGENET_MEAN),
      'std': list(IMAGENET_STD),
    },
    'output': {'name': OUTPUT_NAME, 'shape': [batch, card['num_classes']], 'meaning': 'logits'},
    'quantize': quantize,
  }
  return out


# --------------------------------------------------------------------------------------------
# Writers: each writes `tmp` (a path inside a temporary directory).


def _write_stablehlo(model, variables, tmp: str, batch: int | None, size: int, _card) -> None:
  import jax
  import jax.numpy as jnp

  def forward(x):
    return model.apply(variables, x, train=False)

  b = batch if batch is not None else jax.export.symbolic_shape('b')[0]
  spec = jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32)
  exported = jax.export.export(jax.jit(forward), platforms=('cpu', 'cuda', 'tpu'))(spec)
  with open(tmp, 'wb') as f:
    f.write(exported.serialize())


def _write_tflite(
  model,
  variables,
  tmp: str,
  batch: int | None,
  size: int,
  card: dict,
  representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
) -> None:
  import tensorflow as tf
  from jax.experimental import jax2tf

  def forward(x):
    return model.apply(variables, x, train=False)

  shape = [batch or 1, size, size, 3]
  module = tf.Module()
  module.serve = tf.function(
    jax2tf.convert(forward, with_gradient=False),
    autograph=False,
    input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)],
  )
  saved = os.path.join(os.path.dirname(tmp), 'saved_model')  # Inside export()'s own directory.
  tf.saved_model.save(module, saved, signatures=module.serve.get_concrete_function())
  converter = tf.lite.TFLiteConverter.from_saved_model(saved)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if representative is not None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.float32
    converter.inference_output_type = tf.float32
  flat = converter.convert()
  with open(tmp, 'wb') as f:
    f.write(_with_tflite_metadata(flat, json.dumps(card).encode()))


def _with_tflite_metadata(flatbuffer: bytes, payload: bytes) -> bytes:
  """The model with a 'model_card' metadata entry (the schema's own key/buffer mechanism)."""
  import flatbuffers
  from tensorflow.lite.python import schema_py_generated as schema

  model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
  buf = schema.BufferT()
  buf.data = np.frombuffer(payload, np.uint8)
  model.buffers.append(buf)
  meta = schema.MetadataT()
  meta.name = CARD_KEY
  meta.buffer = len(model.buffers) - 1
  model.metadata = [m for m in (model.metadata or []) if m.name != CARD_KEY.encode()] + [meta]
  builder = flatbuffers.Builder(1024)
  builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def _write_onnx(model_unused, variables, tmp: str, batch: int | None, size: int, card) -> None:
  """torch_port's writer (the reference PyTorch model through torch.onnx), via its entry point."""
  from importlib.metadata import entry_points

  found = list(entry_points(group=EXPORTERS_GROUP, name='onnx'))
  if not found:
    raise ExportError(
      f'no ONNX writer is registered (entry point group {EXPORTERS_GROUP!r}): reinstall the '
      "package (pip install -e '.[torch]') so that torch_port's writer is found"
    )
  try:
    write = found[0].load()
    write(variables, card, tmp, batch=batch, image_size=size)
  except ImportError as e:
    raise ExportError(str(e)) from None


WRITERS = {'onnx': _write_onnx, 'tflite': _write_tflite, 'stablehlo': _write_stablehlo}


# --------------------------------------------------------------------------------------------
# Representative data for int8 calibration


def representative_images(
  dataset: str, data_dir: str, image_size: int, recipe: str, count: int, seed: int = 0
) -> list[np.ndarray]:
  """`count` train-split images preprocessed as evaluation does (no augmentation), shuffled."""
  import tensorflow_datasets as tfds

  from zenfer_jax.data import pipeline, registry  # Here: TensorFlow, kept out of --help.

  try:
    builder, _ = registry.load(dataset, data_dir)
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise ExportError(f'--dataset {dataset} in --data_dir {data_dir}: {e}') from None
  ds = builder.as_dataset(split='train', decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.shuffle(10 * count, seed=seed).take(count)
  out = []
  for ex in ds:
    image = pipeline.decode(ex['image'])
    out.append(np.asarray(pipeline.preprocess_for_eval(image, image_size, recipe), np.float32))
  if not out:
    raise ExportError(f'--dataset {dataset}: the train split in {data_dir} is empty')
  return out


# --------------------------------------------------------------------------------------------
# The export itself


def _check_output(path: str, fmt: str, overwrite: bool) -> str:
  path = os.path.abspath(os.fspath(path))
  if not path.endswith(FORMATS[fmt]):
    raise ExportError(f'--output {path}: a {fmt} file must end with {FORMATS[fmt]}')
  if os.path.isdir(path):
    raise ExportError(f'--output {path} is a directory; give a file name')
  for p in (path, card_path(path)):
    if os.path.exists(p) and not overwrite:
      raise ExportError(f'{p} already exists; choose another --output or pass --overwrite')
  if overwrite and (os.path.exists(path) or os.path.exists(card_path(path))):
    if _written_by_export(path) != fmt:
      raise ExportError(
        f'{path}: --overwrite replaces only an earlier {fmt} export (a file with its card '
        f'{os.path.basename(card_path(path))} beside it); this is not one, so it is left alone: '
        'remove it yourself or choose another --output'
      )
  return path


def _written_by_export(path: str) -> str | None:
  """The format named by the card beside `path` when this module wrote it, else None."""
  try:
    with open(card_path(path), encoding='utf-8') as f:
      card = json.load(f)
    return card['export']['format']
  except (OSError, ValueError, KeyError, TypeError):
    return None


def export(
  checkpoint: str,
  fmt: str,
  output: str,
  *,
  batch: int | None = None,
  image_size: int | None = None,
  recipe: str | None = None,
  quantize: str | None = None,
  representative: Sequence[np.ndarray] | None = None,
  tolerance: float = DEFAULT_TOLERANCE,
  verify: bool = True,
  overwrite: bool = False,
  seed: int = 0,
) -> dict:
  """Export the model of `checkpoint` (a model dir or training workdir) to `output`.

  Returns a report: {'path', 'card_path', 'card', 'relative_error', 'runtime'}. Every option is
  checked before any work starts; the file and its card appear together at the end or not at all.
  """
  _check_options(fmt, batch, quantize, representative, recipe)
  output = _check_output(output, fmt, overwrite)
  model, variables, card, size = _load_model(checkpoint, image_size, recipe)
  full_card = export_card(card, fmt, batch, size, quantize)

  directory = os.path.dirname(output)
  os.makedirs(directory, exist_ok=True)
  tmpdir = atomic_write.make_temporary_dir(output)
  try:
    tmp = os.path.join(tmpdir, os.path.basename(output))
    if quantize:
      reps = [np.asarray(r, np.float32)[None] for r in representative]

      def gen():
        for r in reps:
          yield [np.repeat(r, batch or 1, axis=0)]

      _write_tflite(model, variables, tmp, batch, size, full_card, representative=gen)
    else:
      WRITERS[fmt](model, variables, tmp, batch, size, full_card)
    report = {'path': output, 'card_path': card_path(output), 'card': full_card}
    if verify:
      report.update(_verify(tmp, model, variables, batch, size, tolerance, quantize, seed))
    tmp_card = tmp + '.json'
    with open(tmp_card, 'w', encoding='utf-8') as f:
      json.dump(full_card, f, indent=2)
      f.write('\n')
    os.replace(tmp, output)
    os.replace(tmp_card, card_path(output))
  finally:
    shutil.rmtree(tmpdir, ignore_errors=True)
  return report


def _check_options(fmt: str, batch, quantize, representative, recipe) -> None:
  """The options that need no file are checked first, so a wrong flag fails in a moment rather
  than after the checkpoint is loaded."""
  if fmt not in FORMATS:
    raise ExportError(f'--format {fmt!r}: expected one of {", ".join(FORMATS)}')
  if batch is not None and batch < 1:
    raise ExportError(f'--batch must be a positive integer, got {batch}')
  if quantize not in (None, 'int8'):
    raise ExportError(f'--quantize {quantize!r}: only int8 is supported')
  if quantize and fmt != 'tflite':
    raise ExportError(f'--quantize applies to --format tflite only, not {fmt}')
  if quantize and not representative:
    raise ExportError('--quantize int8 needs a representative set: pass --dataset and --data_dir')
  if recipe is not None and recipe not in RECIPES:
    raise ExportError(f'--recipe {recipe!r}: expected one of {", ".join(RECIPES)}')


def _load_model(checkpoint: str, image_size: int | None, recipe: str | None):
  """(model, variables, card, image size) of `checkpoint`, with the loaders' errors turned into
  ExportErrors that name the flag to fix, since the command line shows only those."""
  # Here: they import JAX, Flax and Orbax (~2 s), kept out of --help.
  from zenfer_jax.rundir import model_directory, pretrained
  from zenfer_jax.rundir import workdir as workdir_lib

  checkpoint = pretrained.resolve(checkpoint)
  if not os.path.isdir(checkpoint):
    raise ExportError(
      f'--checkpoint {checkpoint!r} is not a directory: give a model directory '
      '(torch_port.convert output, WORKDIR/model_best) or a training workdir'
    )
  try:
    variables, card = workdir_lib.load_inference(checkpoint)
  except (model_directory.ModelDirError, FileNotFoundError, ValueError) as e:
    raise ExportError(f'--checkpoint {checkpoint}: {e}') from None
  size = image_size or card.get('image_size')
  if not size:
    raise ExportError(
      f'the card of {checkpoint} has no image_size; pass --image_size (the size it was trained at)'
    )
  if recipe is not None:
    card = dict(card, recipe=recipe)
  variables = {c: variables[c] for c in ('params', 'batch_stats') if c in variables}
  # XLA's plain ops, never the CPU backend's formulations: native (depthwise) convolutions
  # become CONV_2D / DEPTHWISE_CONV_2D / grouped Conv in the files, and every runtime reads them.
  model = model_directory.build_from_card(card, conv_impl='xla', bn_impl='xla')
  return model, variables, card, size


def _verify(path, model, variables, batch, size, tolerance, quantize, seed) -> dict:
  """Run the written file in its own runtime beside the Flax model; fail past `tolerance`."""
  import jax

  n = batch or 2
  x = np.random.default_rng(seed).standard_normal((n, size, size, 3), np.float32)
  want = np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, x))
  loaded = runtimes.load(path, card=False)
  got = loaded.logits(x)
  err = relative_error(got, want)
  if not quantize and not err <= tolerance:
    raise ExportError(
      f'the exported {loaded.runtime} graph gives logits {err:.3g} relative from the Flax '
      f'model (tolerance {tolerance:g}); nothing was written. Please report this with the model card.'
    )
  agree = float(np.mean(np.argmax(got, -1) == np.argmax(want, -1)))
  return {'relative_error': err, 'runtime': loaded.runtime, 'top1_agreement': agree, 'checked': n}


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.deploy.export',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--checkpoint', required=True, help='model directory or training workdir')
  p.add_argument('--format', required=True, choices=tuple(FORMATS), dest='fmt')
  p.add_argument('--output', required=True, help='file to write (.onnx, .tflite, .stablehlo)')
  p.add_argument(
    '--batch',
    type=cli.positive_int,
    help='fixed batch size (default: dynamic for onnx/stablehlo, 1 for tflite)',
  )
  p.add_argument(
    '--image_size', type=cli.positive_int, help="input size (default: the card's image_size)"
  )
  p.add_argument('--recipe', help="eval preprocessing recorded in the card (default: the card's)")
  p.add_argument('--quantize', choices=('int8',), help='tflite only: int8 weights and activations')
  p.add_argument('--dataset', help='--quantize: prepared dataset whose train split calibrates')
  p.add_argument('--data_dir', help='--quantize: the TFDS data_dir holding --dataset')
  p.add_argument(
    '--calibration_images', type=cli.positive_int, default=200, help='--quantize: how many'
  )
  p.add_argument('--tolerance', type=cli.positive_float, default=DEFAULT_TOLERANCE)
  p.add_argument('--no_verify', action='store_true', help='skip the parity check of the file')
  p.add_argument('--overwrite', action='store_true', help='replace an existing --output')
  return p


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  from zenfer_jax.data.pipeline import hide_gpus_from_tf  # TensorFlow: after setup_logging.

  hide_gpus_from_tf()
  try:
    representative = None
    if args.quantize:
      if not (args.dataset and args.data_dir):
        raise ExportError('--quantize int8 needs --dataset and --data_dir (the calibration set)')
      from zenfer_jax.rundir import model_directory  # JAX: kept out of --help.

      card = model_directory.load_card(args.checkpoint)
      recipe = args.recipe or card.get('recipe')
      if not recipe:
        raise ExportError(f'the card of {args.checkpoint} has no recipe; pass --recipe')
      representative = representative_images(
        args.dataset,
        args.data_dir,
        args.image_size or card['image_size'],
        recipe,
        args.calibration_images,
      )
    elif args.dataset or args.data_dir:
      raise ExportError('--dataset and --data_dir are the calibration set of --quantize int8')
    report = export(
      args.checkpoint,
      args.fmt,
      args.output,
      batch=args.batch,
      image_size=args.image_size,
      recipe=args.recipe,
      quantize=args.quantize,
      representative=representative,
      tolerance=args.tolerance,
      verify=not args.no_verify,
      overwrite=args.overwrite,
    )
  except (ExportError, ValueError, FileNotFoundError) as e:
    return cli.report(e)
  line = f'wrote {report["path"]} and {report["card_path"]}'
  if 'relative_error' in report:
    line += (
      f'; checked in {report["runtime"]}: logits {report["relative_error"]:.2g} relative from '
      f'the Flax model on {report["checked"]} random inputs'
    )
    if args.quantize:
      line += f', top-1 agreement {100 * report["top1_agreement"]:.0f}%'
  print(line)
  return 0


if __name__ == '__main__':
  sys.exit(main())
