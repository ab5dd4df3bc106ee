"""The serve package's one door into the prediction code: a loaded model and face detector.

Every import of the package's prediction modules made by `zenfer_jax.serve` is in this file, so
that moving them (predict.py into a role folder) is a change of one import here. A photo is
classified by `predict.predict_faces` itself, the function behind `predict --detect_faces
--json`: the same detector, alignment, preprocessing, padding and output, so the page shows what
the command line prints for the same file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from zenfer_jax.deploy import predict as predict_lib
from zenfer_jax.deploy import runtimes
from zenfer_jax.rundir import model_directory

# The FER2013 model that ships inside the package (zenfer_jax.rundir.pretrained), loaded by name.
DEFAULT_MODEL = 'fer2013_r'
# What loading a model can raise that is the user's to fix (as `predict` reports them).
LOAD_ERRORS = (
  ValueError,
  FileNotFoundError,
  ImportError,
  model_directory.ModelDirError,
  runtimes.ExportedFileError,
)


class FaceService:
  """A model and MTCNN, ready to classify every face of a photo.

  Not thread-safe (TensorFlow's detector, the per-call `top_k`): the app runs every call on one
  worker thread, which also keeps the two CPU-heavy runtimes from fighting over the cores.
  """

  def __init__(
    self,
    checkpoint: str = DEFAULT_MODEL,
    recipe: str | None = None,
    image_size: int | None = None,
    align: str = 'landmarks',
    min_face_confidence: float = 0.9,
  ):
    self.checkpoint = checkpoint
    self.predictor = predict_lib.Predictor(checkpoint, recipe, image_size)
    self.classes = list(self.predictor.class_names)
    # pad_to 8: `predict`'s own batch of faces (min(--batch_size, 8)), so one compiled shape.
    self.classifier = predict_lib.FaceClassifier(
      self.predictor, align, len(self.classes), min_face_confidence, 8
    )

  def info(self) -> dict[str, Any]:
    """What the page needs to know about the model: its name, classes and input."""
    return {
      'model': os.path.basename(os.path.normpath(self.checkpoint)),
      'classes': self.classes,
      'image_size': self.predictor.image_size,
      'recipe': self.predictor.recipe,
      'runtime': self.predictor.runtime,
      'align': self.classifier.align,
      'min_face_confidence': self.classifier.detector.min_confidence,
    }

  def warm_up(self) -> None:
    """Compiles the model's batch shape and starts the detector now, so the first visitor's photo
    does not wait for them (about 8 s of XLA compilation on two cores)."""
    size = self.predictor.image_size
    self.predictor(np.zeros((self.classifier.pad_to or 1, size, size, 3), np.float32))
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    self.classifier.detector.detect(noise)

  def predict_file(self, path: str, top_k: int) -> dict[str, Any]:
    """The one result `predict --detect_faces --json --top_k K PATH` prints for the file:
    {'image', 'faces': [...]} (+ 'message': 'no face found'), or {'image', 'error'}."""
    self.classifier.top_k = top_k
    return predict_lib.predict_faces(self.classifier, [path])[0]
