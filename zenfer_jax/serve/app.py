"""The web app: the demo page, its static files and the JSON API the page is built on.

API (the page uses nothing else; `curl` works the same):

  GET  /model                         {'model', 'classes', 'image_size', 'recipe', 'runtime',
                                       'align', 'min_face_confidence', 'limits': {...}}
  POST /predict?top_k=K&name=FILE     body: the image file itself (JPEG, PNG, ...), as
                                      `curl --data-binary @photo.jpg` sends it. 200: the JSON
                                      `predict --detect_faces --json --top_k K FILE` prints, a
                                      list with one result: {'image': FILE, 'faces': [{'box',
                                      'confidence', 'landmarks', 'predictions'}]}, plus
                                      'message': 'no face found' when there is none.

A request that cannot be served gets {'error': '<what is wrong>'} and a status saying whose
fault it is: 400 an empty body or a bad parameter, 413 an upload above the byte limit or an
image above the pixel limit (refused from its header, before decoding), 415 a body that is no
image, 422 an image that does not decode (truncated, corrupt), 503 when `max_pending` requests
are already being served or waiting (with Retry-After; the page waits and tries again), 500 a
bug (logged with its traceback). None of these stops the server.

Every classification runs on one worker thread, one at a time: the model and the detector each
use every core, so two photos at once would take as long as two in a row and answer later. The
queue in front of it is bounded by `max_pending`, so a burst of requests can neither pile up
memory nor wait for minutes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import os
import tempfile
import warnings
from typing import Any

from absl import logging
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')

# The page loads nothing from elsewhere, and this says so to the browser: no CDN, no network.
_HEADERS = {
  'content-security-policy': (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
  ),
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
}


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one request may ask of the server.

  20 MiB holds any phone photo; 40 megapixels is a 48 MP sensor's binned output and above what
  MTCNN finds faces in within seconds on two cores (it scans an image pyramid of every pixel).
  """

  max_upload_bytes: int = 20 << 20
  max_pixels: int = 40_000_000
  max_pending: int = 4  # requests being classified or queued; one more gets 503

  def to_json(self) -> dict[str, int]:
    return dataclasses.asdict(self)


class RequestError(Exception):
  """A request that cannot be served: its HTTP status and the reason shown to the user."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


def check_image(data: bytes, max_pixels: int) -> None:
  """Refuses what is no image, or too large an image, from its header alone (no decoding)."""
  if not data:
    raise RequestError(400, 'empty file: the upload holds no bytes')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
  except Image.DecompressionBombError:  # Pillow's own limit, higher than any max_pixels here.
    raise RequestError(
      413, f'image above the limit of {max_pixels:,} pixels; refused before decoding'
    ) from None
  except UnidentifiedImageError:
    raise RequestError(
      415,
      'not an image: send a JPEG, PNG, WebP, BMP or GIF file itself as the request body '
      '(curl --data-binary @photo.jpg), not a form',
    ) from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    raise RequestError(422, f'cannot read image: corrupt header: {e}') from None
  if width * height > max_pixels:
    raise RequestError(
      413,
      f'{width}x{height} image ({width * height:,} pixels) is above the limit of '
      f'{max_pixels:,} pixels; refused before decoding: send a smaller copy',
    )


# Past the limit, this much more of a body is still read (and dropped) before the 413 is sent:
# a browser that is still sending when the server closes the connection reports a network error
# instead of the answer, and the user would never see why.
DRAIN_BYTES = 64 << 20


async def read_body(request: Request, max_bytes: int) -> bytes:
  """The request body, refused once it is known to exceed `max_bytes` (from its Content-Length,
  or while it streams in): what is read past the limit is dropped, never kept in memory."""
  too_big = RequestError(
    413, f'upload above the limit of {max_bytes:,} bytes ({max_bytes / 2**20:.0f} MiB)'
  )
  declared = request.headers.get('content-length')
  over = declared is not None and declared.isdigit() and int(declared) > max_bytes
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes + DRAIN_BYTES:
      break
    if size > max_bytes:
      over = True
    if not over:
      chunks.append(chunk)
  if over:
    chunks.clear()
    raise too_big
  return b''.join(chunks)


def _top_k(text: str | None, num_classes: int) -> int:
  if text is None:
    return 3  # `predict`'s default
  if not text.isdigit() or int(text) < 1:
    raise RequestError(400, f'top_k={text!r}: expected a whole number from 1 to {num_classes}')
  return min(int(text), num_classes)


def _name(text: str | None) -> str:
  """The name the result reports for the upload: the file's own name, no directories."""
  name = os.path.basename((text or '').replace('\\', '/'))[:200]
  return name or 'upload'


class _Queue:
  """Counts the /predict requests in the server; refuses one above `limit`."""

  def __init__(self, limit: int):
    self.limit = limit
    self.pending = 0

  def enter(self) -> None:
    if self.pending >= self.limit:
      raise RequestError(
        503, f'busy: {self.pending} requests are being served or waiting; try again in a moment'
      )
    self.pending += 1

  def leave(self) -> None:
    self.pending -= 1


def _classify(service, data: bytes, name: str, top_k: int) -> dict[str, Any]:
  """On the worker thread: the upload as a file, through `predict`'s own reader and pipeline."""
  with tempfile.TemporaryDirectory(prefix='zenfer-serve-') as tmp:
    path = os.path.join(tmp, 'upload')  # never the client's name: '..' is one too
    with open(path, 'wb') as f:
      f.write(data)
    result = service.predict_file(path, top_k)
  result['image'] = name
  return result


def create_app(
  service, limits: Limits = Limits(), executor: concurrent.futures.Executor | None = None
) -> ASGIApp:
  """The app for a loaded `model.FaceService` (anything with its `info` and `predict_file`).

  `executor` runs the classifications; by default a thread of the app's own, one at a time.
  """
  executor = executor or concurrent.futures.ThreadPoolExecutor(1, 'zenfer-serve-model')
  queue = _Queue(limits.max_pending)
  info = {**service.info(), 'limits': limits.to_json()}

  async def index(request: Request) -> Response:
    return FileResponse(os.path.join(STATIC_DIR, 'index.html'))

  async def model(request: Request) -> Response:
    return JSONResponse(info)

  async def predict(request: Request) -> Response:
    try:
      top_k = _top_k(request.query_params.get('top_k'), len(info['classes']))
      name = _name(request.query_params.get('name'))
      queue.enter()
      try:
        data = await read_body(request, limits.max_upload_bytes)
        check_image(data, limits.max_pixels)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, _classify, service, data, name, top_k)
      finally:
        queue.leave()
    except RequestError as e:
      headers = {'retry-after': '1'} if e.status == 503 else None
      return JSONResponse({'error': e.message}, e.status, headers=headers)
    except ClientDisconnect:
      return Response(status_code=400)  # Nobody is there to read it.
    except Exception as e:  # A bug: said, logged, and the server goes on.
      logging.exception('POST /predict failed')
      return JSONResponse(
        {'error': f'internal error ({type(e).__name__}); see the server log'}, 500
      )
    if 'error' in result:
      return JSONResponse({'error': result['error']}, 422)
    return JSONResponse([result])

  app = Starlette(
    routes=[
      Route('/', index),
      Route('/model', model),
      Route('/predict', predict, methods=['POST']),
      Mount('/static', StaticFiles(directory=STATIC_DIR), name='static'),
    ],
  )
  app.state.executor = executor
  app.state.queue = queue
  return _with_headers(app)


def _with_headers(app: Starlette) -> ASGIApp:
  """Adds `_HEADERS` to every response (pure ASGI: nothing buffered, nothing re-ordered)."""

  async def wrapped(scope, receive, send):
    if scope['type'] != 'http':
      return await app(scope, receive, send)

    async def send_with_headers(message):
      if message['type'] == 'http.response.start':
        present = {k.lower() for k, _ in message.get('headers', [])}
        extra = [(k.encode(), v.encode()) for k, v in _HEADERS.items() if k.encode() not in present]
        message = {**message, 'headers': [*message.get('headers', []), *extra]}
      await send(message)

    return await app(scope, receive, send_with_headers)

  wrapped.state = app.state
  return wrapped
