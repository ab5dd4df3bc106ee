"""Faces in real photos: found, aligned as the training faces were, and drawn with their labels.

Detector: MTCNN from the `mtcnn` package (MIT licence), whose three small networks ship inside
the package (nothing is downloaded at run time) and run on TensorFlow, already a dependency.
It returns a box, a confidence and five landmarks per face: the two eye centres, the nose tip
and the two mouth corners ("left"/"right" as seen in the image).

Alignment: RAF-DB's aligned set was made by a similarity transform (rotation, uniform scale,
translation) of five landmarks onto a fixed template, giving 100x100 faces. The dataset does
not publish its template; `TEMPLATE` is ours, placing the eyes 36% of the width apart at 42%
of the height and the mouth corners at 73%, so a whole face from brow to chin fills the crop
as in the aligned images. The transform is fitted by least squares (Umeyama) to the five
points and applied with bilinear interpolation; the 100x100 crop then goes through the card's
eval recipe exactly as a dataset image would. Without landmarks (`align='box'`) the crop is the
detector's box made square around its centre and grown by `BOX_MARGIN` of its side on every
side, resized to 100x100.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from zenfer_jax import cli

__all__ = [
  'ALIGNED_SIZE',
  'BOX_MARGIN',
  'LANDMARK_NAMES',
  'TEMPLATE',
  'ALIGNMENTS',
  'Face',
  'FaceDetector',
  'add_options',
  'align',
  'annotate',
  'box_crop',
  'similarity_transform',
  'read_video',
  'VideoWriter',
]

ALIGNED_SIZE = 100  # RAF-DB's aligned faces are 100x100
LANDMARK_NAMES = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
# (x, y) in units of the aligned crop's side, in LANDMARK_NAMES order.
TEMPLATE = np.array(
  [[0.32, 0.42], [0.68, 0.42], [0.50, 0.58], [0.355, 0.73], [0.645, 0.73]], np.float64
)
BOX_MARGIN = 0.15
MIN_CONFIDENCE = 0.9
ALIGNMENTS = ('landmarks', 'box')


def add_options(parser, *, help_prefix: str = '', align_note: str = '') -> None:
  """Adds --align and --min_face_confidence to a command's parser. Every command that finds
  faces (predict, zenfer-serve) takes them; one definition keeps their names, choices, defaults
  and checks the same. `help_prefix` / `align_note` frame the help for each command.
  """
  parser.add_argument(
    '--align',
    choices=ALIGNMENTS,
    default='landmarks',
    help=f'{help_prefix}five-landmark similarity transform, or the box with a margin{align_note}',
  )
  parser.add_argument(
    '--min_face_confidence',
    type=cli.probability,
    default=MIN_CONFIDENCE,
    help=f'{help_prefix}detector threshold',
  )


@dataclasses.dataclass
class Face:
  """One detected face in image pixel coordinates."""

  box: tuple[float, float, float, float]  # x0, y0, x1, y1
  confidence: float
  landmarks: np.ndarray | None = None  # [5, 2] (x, y) in LANDMARK_NAMES order

  def to_json(self) -> dict:
    out = {
      'box': [round(float(v), 1) for v in self.box],
      'confidence': round(float(self.confidence), 4),
      'landmarks': None,
    }
    if self.landmarks is not None:
      out['landmarks'] = {
        n: [round(float(x), 1), round(float(y), 1)]
        for n, (x, y) in zip(LANDMARK_NAMES, self.landmarks)
      }
    return out


class FaceDetector:
  """MTCNN with its packaged weights; `detect(rgb_uint8)` -> faces, most confident first."""

  def __init__(self, min_confidence: float = MIN_CONFIDENCE, min_face_size: int = 20):
    try:
      from mtcnn import MTCNN
    except ImportError:
      raise ImportError(
        'face detection needs the mtcnn package (pip install mtcnn; its weights ship inside it)'
      ) from None
    self.min_confidence = min_confidence
    self._mtcnn = MTCNN(device='CPU:0')
    self._min_face_size = min_face_size

  def detect(self, image: np.ndarray) -> list[Face]:
    image = _rgb_uint8(image)
    found = self._mtcnn.detect_faces(
      image, min_face_size=self._min_face_size, threshold_onet=self.min_confidence
    )
    faces = []
    for f in found:
      if f['confidence'] < self.min_confidence:
        continue
      x, y, w, h = (float(v) for v in f['box'])
      kp = f['keypoints']
      marks = np.array([kp[n] for n in LANDMARK_NAMES], np.float64)
      faces.append(Face((x, y, x + w, y + h), float(f['confidence']), marks))
    return sorted(faces, key=lambda f: -f.confidence)


def _rgb_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, -1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f'expected an RGB image [H, W, 3], got shape {image.shape}')
  image = image[..., :3]
  if image.dtype != np.uint8:
    if np.issubdtype(image.dtype, np.floating) and image.max() <= 1.0:
      image = image * 255.0
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return np.ascontiguousarray(image)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The 2x3 matrix of the least-squares similarity mapping src points onto dst (Umeyama)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.ones(2)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[-1] = -1
  rot = u @ np.diag(sign) @ vt
  var = (s**2).sum() / len(src)
  scale = (sig * sign).sum() / var
  t = mu_d - scale * rot @ mu_s
  return np.hstack([scale * rot, t[:, None]])


def align(image: np.ndarray, face: Face, size: int = ALIGNED_SIZE) -> np.ndarray:
  """The face warped onto TEMPLATE: uint8 [size, size, 3]; box crop if it has no landmarks."""
  import cv2

  if face.landmarks is None:
    return box_crop(image, face.box, size)
  matrix = similarity_transform(face.landmarks, TEMPLATE * size)
  return cv2.warpAffine(
    _rgb_uint8(image),
    matrix,
    (size, size),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=(0, 0, 0),
  )


def box_crop(
  image: np.ndarray, box: Sequence[float], size: int = ALIGNED_SIZE, margin: float = BOX_MARGIN
) -> np.ndarray:
  """A square crop around the box's centre, side max(w, h) * (1 + 2 * margin), resized."""
  import cv2

  x0, y0, x1, y1 = box
  side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
  cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
  scale = size / side
  matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
  return cv2.warpAffine(
    _rgb_uint8(image), matrix, (size, size), flags=cv2.INTER_AREA, borderValue=(0, 0, 0)
  )


# --------------------------------------------------------------------------------------------
# Drawing


_BOX_COLOUR = (255, 200, 0)  # RGB amber: visible on skin, sky and dark backgrounds
_TEXT_COLOUR = (0, 0, 0)


def annotate(
  image: np.ndarray,
  faces: Sequence[Face],
  labels: Sequence[str],
  banner: str | None = None,
) -> np.ndarray:
  """A copy of the RGB image with each face's box, landmarks and label (and a top-left banner)."""
  import cv2

  out = _rgb_uint8(image).copy()
  h, w = out.shape[:2]
  thick = max(1, round(max(h, w) / 400))
  font_scale = max(0.4, max(h, w) / 1000)
  for face, label in zip(faces, labels):
    x0, y0, x1, y1 = (round(v) for v in face.box)
    cv2.rectangle(out, (x0, y0), (x1, y1), _BOX_COLOUR, thick, cv2.LINE_AA)
    if face.landmarks is not None:
      for x, y in face.landmarks:
        cv2.circle(out, (round(x), round(y)), thick + 1, _BOX_COLOUR, -1, cv2.LINE_AA)
    _label(out, label, x0, y0, font_scale, thick, cv2)
  if banner:
    _label(out, banner, 0, 0, font_scale, thick, cv2, below=True)
  return out


def _label(out, text, x, y, font_scale, thick, cv2, below=False):
  """Text on a filled box above (x, y), or below it when there is no room above."""
  (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
  pad = thick + 2
  top = y - th - base - 2 * pad
  if below or top < 0:
    top = y
  x = min(max(0, x), max(0, out.shape[1] - tw - 2 * pad))
  cv2.rectangle(out, (x, top), (x + tw + 2 * pad, top + th + base + 2 * pad), _BOX_COLOUR, -1)
  cv2.putText(
    out,
    text,
    (x + pad, top + pad + th),
    cv2.FONT_HERSHEY_SIMPLEX,
    font_scale,
    _TEXT_COLOUR,
    thick,
    cv2.LINE_AA,
  )


# --------------------------------------------------------------------------------------------
# Video


def read_video(path: str) -> tuple[Iterator[np.ndarray], float, tuple[int, int]]:
  """(RGB uint8 frames, frames per second, (width, height)) of a video file, via OpenCV."""
  import cv2

  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise ValueError(f'{path}: cannot open the video (OpenCV/FFmpeg could not read it)')
  fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
  size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

  def frames():
    try:
      while True:
        ok, bgr = cap.read()
        if not ok:
          return
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
      cap.release()

  return frames(), float(fps), size


class VideoWriter:
  """RGB frames -> an MPEG-4 file, written to PATH's temporary sibling and renamed on close."""

  def __init__(self, path: str, fps: float, size: tuple[int, int]):
    import os

    import cv2

    self.path = path
    base, ext = os.path.splitext(path)
    self._tmp = f'{base}.partial{ext or ".mp4"}'
    self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*'mp4v'), fps, size)
    if not self._writer.isOpened():
      raise ValueError(f'{path}: OpenCV cannot write an MPEG-4 video there')
    self.frames = 0

  def write(self, rgb: np.ndarray) -> None:
    import cv2

    self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    self.frames += 1

  def close(self, keep: bool = True) -> None:
    import os

    self._writer.release()
    if keep:
      os.replace(self._tmp, self.path)
    elif os.path.exists(self._tmp):
      os.remove(self._tmp)
