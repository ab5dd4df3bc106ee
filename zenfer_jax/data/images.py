"""Robust reading of user-supplied images: the one decoder of dataset builders and `predict`.

Manual-download datasets arrive with the occasional broken file. A builder must neither crash on
one nor silently drop it: `read_image` says why a file is unusable, and `SkipLog` keeps the count
and the list, which the builders store in the prepared dataset's metadata and `prepare` writes as
a report file beside the records. `predict` reads its images through `read_image` too, so an
image is turned into 8-bit RGB the same way whether it is prepared for training or classified.

Limits (refused before decoding, like any other bad file): files above `MAX_IMAGE_BYTES`
(256 MiB), images above `MAX_IMAGE_PIXELS` (64 megapixels, 8192 x 8192), and anything that is
not a regular file (a device, a FIFO).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import stat
import warnings
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from zenfer_jax import atomic_write

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
MAX_IMAGE_BYTES = 256 << 20
MAX_IMAGE_PIXELS = 8192 * 8192

# Pillow must never paper over a truncated file: it would hand us half a grey face.
Image.LOAD_TRUNCATED_IMAGES = False

# Greyscale with 16-bit samples; 'I' is how older Pillow versions open such PNGs.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


class BadImage(Exception):
  """A file that cannot be used as a training image; the message says why."""


def to_rgb8(img: Image.Image) -> Image.Image:
  """The image as 8-bit RGB, 16-bit samples scaled as TensorFlow's decoder scales them.

  TensorFlow keeps the high byte of a 16-bit sample (65535 -> 255), and so does Pillow for
  16-bit colour PNGs; but Pillow's own conversion of 16-bit greyscale clips every value above
  255 to white. Alpha is dropped, as `tf.io.decode_image(channels=3)` drops it.
  """
  if img.mode in _SIXTEEN_BIT_MODES:
    grey = np.asarray(img).astype(np.int64)
    return Image.fromarray((np.clip(grey, 0, 65535) >> 8).astype(np.uint8), 'L').convert('RGB')
  if img.mode == 'F':
    return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), 'L').convert(
      'RGB'
    )
  return img if img.mode == 'RGB' else img.convert('RGB')


def _read_bytes(path: str) -> bytes:
  try:
    st = os.stat(path)
  except FileNotFoundError as e:
    raise BadImage(f'missing file: {e.strerror}') from None
  except OSError as e:
    raise BadImage(f'unreadable file: {e.strerror or e}') from None
  if not stat.S_ISREG(st.st_mode):
    raise BadImage('not a regular file (a directory, device or pipe)')
  if st.st_size > MAX_IMAGE_BYTES:
    raise BadImage(f'file of {st.st_size:,} bytes is above the limit of {MAX_IMAGE_BYTES:,}')
  try:
    with open(path, 'rb') as f:
      raw = f.read(MAX_IMAGE_BYTES + 1)
  except OSError as e:
    raise BadImage(f'unreadable file: {e.strerror or e}') from None
  if len(raw) > MAX_IMAGE_BYTES:  # It grew since the stat.
    raise BadImage(f'file is above the limit of {MAX_IMAGE_BYTES:,} bytes')
  if not raw:
    raise BadImage('empty file')
  return raw


def _too_large(width: int, height: int) -> BadImage:
  return BadImage(
    f'{width}x{height} image ({width * height:,} pixels) is above the limit of '
    f'{MAX_IMAGE_PIXELS:,} pixels (8192x8192); refused before decoding'
  )


def read_image(path: str, crop_box: Sequence[float] | None = None) -> bytes:
  """Returns encoded RGB JPEG/PNG bytes for `path`, fully decoded once to prove it is intact.

  The original bytes are kept whenever they already are an 8-bit RGB JPEG or PNG (no
  re-encoding loss); other formats and modes are converted by `to_rgb8` and re-encoded as PNG.
  With `crop_box` (x, y, width, height, clipped to the image) the crop is re-encoded as JPEG
  quality 95.

  Raises:
    BadImage: the file is missing, not an image, truncated, above the size limits or otherwise
      undecodable.
  """
  raw = _read_bytes(path)
  try:
    with warnings.catch_warnings():
      # Pillow warns about, or refuses, very large images at open; our limit is lower and says so.
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(raw))
    with img:
      if img.width * img.height > MAX_IMAGE_PIXELS:
        raise _too_large(img.width, img.height)
      fmt = img.format
      # A 16-bit colour PNG opens as mode RGB (high bytes); re-encoded, it holds 8-bit samples
      # like every other record. Byte 24 of a PNG is the IHDR bit depth.
      sixteen = fmt == 'PNG' and len(raw) > 24 and raw[24] == 16
      img.load()  # Decodes every byte: raises on truncation and on corrupt entropy data.
      if crop_box is not None:
        x, y, w, h = _box(crop_box)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(img.width, x + w), min(img.height, y + h)
        if x1 - x0 < 2 or y1 - y0 < 2:
          raise BadImage(
            f'face box {tuple(crop_box)} lies outside the {img.width}x{img.height} image'
          )
        return _encode(to_rgb8(img).crop((x0, y0, x1, y1)), 'JPEG')
      if fmt in ('JPEG', 'PNG') and img.mode == 'RGB' and not sixteen:
        return raw
      return _encode(to_rgb8(img), 'PNG')
  except Image.DecompressionBombError as e:  # Pillow's own, higher limit, checked at open.
    found = re.search(r'\((\d+) pixels\)', str(e))
    size = f' of {int(found.group(1)):,} pixels' if found else ''
    raise BadImage(
      f'image{size} is above the limit of {MAX_IMAGE_PIXELS:,} pixels (8192x8192); refused '
      'before decoding'
    ) from None
  except UnidentifiedImageError:
    raise BadImage('not an image') from None
  except MemoryError:
    raise BadImage('too large to decode in the available memory') from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise BadImage(f'corrupt or truncated image: {e}') from None


def _box(crop_box: Sequence[float]) -> tuple[int, int, int, int]:
  try:
    values = [float(v) for v in crop_box]
  except (TypeError, ValueError):
    raise BadImage(f'face box {tuple(crop_box)} is not four numbers') from None
  if len(values) != 4 or not all(np.isfinite(values)):
    raise BadImage(f'face box {tuple(crop_box)} is not four finite numbers')
  x, y, w, h = (int(round(v)) for v in values)
  return x, y, w, h


def _encode(img: Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
  return buf.getvalue()


@dataclasses.dataclass
class SkipLog:
  """Collects the items a builder skipped, logging each one as it happens."""

  dataset: str
  entries: list[dict[str, str]] = dataclasses.field(default_factory=list)

  def add(self, split: str, item: str, reason: str) -> None:
    logging.warning('%s: skipping %s item %s: %s', self.dataset, split, item, reason)
    self.entries.append({'split': split, 'item': item, 'reason': reason})


def write_report(path: str, dataset: str, metadata: dict) -> None:
  """Writes the human-readable preparation report (skipped items, count notes, drops)."""
  skipped = metadata.get('skipped', [])
  lines = [f'# Preparation report for {dataset}', '']
  lines.append(f'split sizes: {metadata.get("split_sizes", {})}')
  for note in metadata.get('count_notes', []):
    lines.append(f'count note: {note}')
  for reason, n in sorted(metadata.get('dropped', {}).items()):
    lines.append(f'dropped (not bad data, outside this config): {reason}: {n}')
  lines.append(f'skipped: {len(skipped)}')
  for e in skipped:
    lines.append(f'  [{e["split"]}] {e["item"]}: {e["reason"]}')
  atomic_write.write_text(path, '\n'.join(lines) + '\n')
