"""Robust reading of user-supplied images for the dataset builders.

Manual-download datasets arrive with the occasional broken file. A builder must neither crash on
one nor silently drop it: `read_image` says why a file is unusable, and `SkipLog` keeps the count
and the list, which the builders store in the prepared dataset's metadata and `prepare` writes as
a report file beside the records.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence

from absl import logging
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')

# Pillow must never paper over a truncated file: it would hand us half a grey face.
Image.LOAD_TRUNCATED_IMAGES = False


class BadImage(Exception):
  """A file that cannot be used as a training image; the message says why."""


def read_image(path: str, crop_box: Sequence[int] | None = None) -> bytes:
  """Returns encoded RGB JPEG/PNG bytes for `path`, fully decoded once to prove it is intact.

  The original bytes are kept whenever they already are an RGB JPEG or PNG (no re-encoding
  loss); other formats and modes are re-encoded as PNG. With `crop_box` (x, y, width, height,
  clipped to the image) the crop is re-encoded as JPEG quality 95.

  Raises:
    BadImage: the file is missing, not an image, truncated or otherwise undecodable.
  """
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise BadImage('missing file') from None
  except OSError as e:
    raise BadImage(f'unreadable file: {e}') from None
  if not raw:
    raise BadImage('empty file')
  try:
    with Image.open(io.BytesIO(raw)) as img:
      fmt = img.format
      img.load()  # Decodes every byte: raises on truncation and on corrupt entropy data.
      if crop_box is not None:
        x, y, w, h = (int(round(float(v))) for v in crop_box)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(img.width, x + w), min(img.height, y + h)
        if x1 - x0 < 2 or y1 - y0 < 2:
          raise BadImage(
            f'face box {tuple(crop_box)} lies outside the {img.width}x{img.height} image'
          )
        return _encode(img.convert('RGB').crop((x0, y0, x1, y1)), 'JPEG')
      if fmt in ('JPEG', 'PNG') and img.mode == 'RGB':
        return raw
      return _encode(img.convert('RGB'), 'PNG')
  except UnidentifiedImageError:
    raise BadImage('not an image') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise BadImage(f'corrupt or truncated image: {e}') from None


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
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(tmp, path)
