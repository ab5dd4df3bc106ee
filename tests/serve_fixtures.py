"""Shared by tests/test_serve*.py: the shipped model loaded once per test process, small limits,
and a plain HTTP client (urllib: the tests need no client library of their own)."""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.request

from zenfer_jax.serve import app as app_lib
from zenfer_jax.serve import model

# Small enough that the refused inputs are quick to make, large enough for the astronaut.
LIMITS = app_lib.Limits(max_upload_bytes=1 << 20, max_pixels=2_000_000, max_pending=4)
# Her face in skimage's 512x512 astronaut: what MTCNN finds, with a margin (x0, y0, x1, y1).
ASTRONAUT_FACE = (181.0, 65.0, 265.0, 172.0)


@functools.cache
def service() -> model.FaceService:
  """fer2013_r with MTCNN, compiled: about 10 s, paid once by each pytest worker."""
  loaded = model.FaceService()
  loaded.warm_up()
  return loaded


def request(
  url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60
) -> tuple[int, dict, object]:
  """(status, headers, parsed JSON body or text) of a GET (no data) or a POST."""
  req = urllib.request.Request(url, data=data, headers=headers or {})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      status, head, body = r.status, dict(r.headers), r.read()
  except urllib.error.HTTPError as e:
    status, head, body = e.code, dict(e.headers), e.read()
  try:
    return status, {k.lower(): v for k, v in head.items()}, json.loads(body)
  except ValueError:
    return status, {k.lower(): v for k, v in head.items()}, body.decode(errors='replace')


def post_file(base: str, path: str, query: str = '') -> tuple[int, dict, object]:
  with open(path, 'rb') as f:
    data = f.read()
  return request(f'{base}/predict{"?" + query if query else ""}', data)


def overlap(box, reference) -> float:
  """Intersection over union of two (x0, y0, x1, y1) boxes."""
  ix = max(0.0, min(box[2], reference[2]) - max(box[0], reference[0]))
  iy = max(0.0, min(box[3], reference[3]) - max(box[1], reference[1]))
  inter = ix * iy
  area = (box[2] - box[0]) * (box[3] - box[1]) + (reference[2] - reference[0]) * (
    reference[3] - reference[1]
  )
  return inter / (area - inter)
