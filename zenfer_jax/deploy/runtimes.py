"""Exported model files run in their own runtimes, with the card they carry.

  model = runtimes.load('model.onnx')     # or .tflite, .stablehlo
  logits = model.logits(images)           # float32 [N, S, S, 3] normalised, any N
  model.card['class_names'], model.card['image_size'], model.card['recipe']

ONNX runs in onnxruntime and LiteRT files in the LiteRT interpreter (`ai_edge_litert`, else
TensorFlow's `tf.lite.Interpreter`): neither imports JAX, so an export can be checked, and used,
without it. StableHLO needs JAX (`jax.export.deserialize`). A file with a fixed batch size is fed
in chunks of that size, the last one padded, so callers never see the difference.

The card is read from inside the file where the format has metadata (ONNX metadata_props,
a LiteRT 'model_card' metadata buffer) and otherwise from PATH.json beside it; when both exist
they must agree on the model (structure, classes, flags), or loading fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from zenfer_jax.errors import UserError

__all__ = ['EXTENSIONS', 'ExportedModel', 'ExportedFileError', 'is_exported', 'load', 'read_card']

EXTENSIONS = {'.onnx': 'onnx', '.tflite': 'tflite', '.stablehlo': 'stablehlo'}
CARD_KEY = 'model_card'
_MODEL_FIELDS = ('structure', 'num_classes', 'use_sa', 'use_lw_att')


class ExportedFileError(ValueError, UserError):
  """An exported file that cannot be loaded or run; the message says why."""


def is_exported(path: str) -> bool:
  """True for a path whose extension names an exported format."""
  return os.path.splitext(os.fspath(path))[1].lower() in EXTENSIONS


class ExportedModel:
  """One exported file: `logits(x)` for any batch size, its `card`, the `runtime` it runs in."""

  def __init__(
    self,
    path: str,
    fmt: str,
    runtime: str,
    run: Callable[[np.ndarray], np.ndarray],
    batch: int | None,
    card: dict | None,
  ):
    self.path = path
    self.format = fmt
    self.runtime = runtime
    self.batch = batch
    self.card = card
    self._run = run

  def logits(self, images: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ExportedFileError(f'{self.path}: expected NHWC images [N, S, S, 3], got {x.shape}')
    if self.batch is None:
      return np.asarray(self._run(x))
    out = []
    for start in range(0, len(x), self.batch):
      chunk = x[start : start + self.batch]
      n = len(chunk)
      if n < self.batch:
        chunk = np.concatenate([chunk, np.zeros((self.batch - n, *x.shape[1:]), np.float32)])
      out.append(np.asarray(self._run(chunk))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    z = self.logits(images).astype(np.float64)
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Formats


def _onnx(path: str, threads: int | None):
  try:
    import onnxruntime as ort
  except ImportError:
    raise ExportedFileError(
      f'{path}: running ONNX files needs onnxruntime (pip install onnxruntime)'
    ) from None
  options = ort.SessionOptions()
  if threads:
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
  try:
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  except Exception as e:  # onnxruntime raises its own exception types for a bad file
    raise ExportedFileError(f'{path}: onnxruntime cannot load it: {e}') from None
  inp = session.get_inputs()[0]
  batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
  meta = session.get_modelmeta().custom_metadata_map
  card = json.loads(meta[CARD_KEY]) if CARD_KEY in meta else None

  def run(x):
    return session.run(None, {inp.name: x})[0]

  return 'onnxruntime', run, batch, card


def _tflite(path: str, threads: int | None):
  try:
    from ai_edge_litert.interpreter import Interpreter

    runtime = 'LiteRT'
  except ImportError:
    import tensorflow as tf

    Interpreter = tf.lite.Interpreter
    runtime = 'TFLite (TensorFlow)'
  with open(path, 'rb') as f:
    data = f.read()
  try:
    interp = Interpreter(model_content=data, num_threads=threads or None)
    interp.allocate_tensors()
  except (ValueError, RuntimeError) as e:
    raise ExportedFileError(f'{path}: the LiteRT interpreter cannot load it: {e}') from None
  inp = interp.get_input_details()[0]
  out = interp.get_output_details()[0]
  batch = int(inp['shape'][0])

  def run(x):
    interp.set_tensor(inp['index'], x)
    interp.invoke()
    return interp.get_tensor(out['index']).copy()

  return runtime, run, batch, _tflite_card(data)


def _tflite_card(data: bytes) -> dict | None:
  """The 'model_card' metadata buffer, read with the flatbuffer schema (no TensorFlow needed)."""
  try:
    from ai_edge_litert import schema_py_generated as schema
  except ImportError:
    try:
      from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:  # pragma: no cover - neither package installed
      return None
  model = schema.Model.GetRootAs(data, 0)
  for i in range(model.MetadataLength()):
    meta = model.Metadata(i)
    if meta.Name() == CARD_KEY.encode():
      return json.loads(model.Buffers(meta.Buffer()).DataAsNumpy().tobytes())
  return None


def _stablehlo(path: str, threads: int | None):
  import jax

  with open(path, 'rb') as f:
    data = f.read()
  try:
    exported = jax.export.deserialize(bytearray(data))
  except Exception as e:  # flatbuffer or version errors
    raise ExportedFileError(f'{path}: jax.export cannot deserialize it: {e}') from None
  dim = exported.in_avals[0].shape[0]
  batch = dim if isinstance(dim, int) else None
  call = jax.jit(exported.call)
  return f'JAX {jax.__version__} (StableHLO)', call, batch, None


_LOADERS = {'onnx': _onnx, 'tflite': _tflite, 'stablehlo': _stablehlo}


def read_card(path: str) -> dict | None:
  """The JSON card beside an exported file (PATH.json), or None."""
  beside = os.fspath(path) + '.json'
  if not os.path.isfile(beside):
    return None
  try:
    with open(beside, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExportedFileError(f'{beside}: cannot read the model card: {e}') from None


def load(path: str, *, card: bool = True, threads: int | None = None) -> ExportedModel:
  """An exported file ready to run. With `card`, a file without any card is refused."""
  path = os.fspath(path)
  fmt = EXTENSIONS.get(os.path.splitext(path)[1].lower())
  if fmt is None:
    raise ExportedFileError(
      f'{path}: not an exported model (expected one of {", ".join(EXTENSIONS)})'
    )
  if not os.path.isfile(path):
    raise ExportedFileError(f'{path}: no such file')
  runtime, run, batch, inside = _LOADERS[fmt](path, threads)
  beside = read_card(path) if card else None
  if inside and beside:
    differ = [k for k in _MODEL_FIELDS if inside.get(k) != beside.get(k)]
    if differ:
      raise ExportedFileError(
        f'{path}: the card inside the file and {path}.json describe different models '
        f'({", ".join(differ)} differ); re-export or remove the stale {path}.json'
      )
  found = inside or beside
  if card and found is None:
    raise ExportedFileError(
      f'{path}: no model card inside the file and no {path}.json beside it; '
      'export it with python -m zenfer_jax.deploy.export, which writes both'
    )
  return ExportedModel(path, fmt, runtime, run, batch, found)
