"""What the tests of the page and its measurement share: a server in a thread, a browser, inputs.

Like `tfds.testing`, this is for tests and benchmarks, not for serving: `benchmarks/serve_page.py`
and `tests/test_serve*.py` drive the same server, the same headless Chromium with the same fake
webcam, so the numbers in docs/serve.md come from what the tests check.

The browser is Debian's `chromium` with its `chromedriver` (`make browser` installs both), or
any Chromium and matching driver named by ZENFER_CHROMIUM and ZENFER_CHROMEDRIVER. The driver's
path is given to Selenium, so Selenium Manager is never run and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence

import numpy as np

from zenfer_jax.serve import server as server_lib

# Debian's paths; elsewhere, point these variables at a Chromium and its matching chromedriver.
CHROMIUM = os.environ.get('ZENFER_CHROMIUM', '/usr/bin/chromium')
CHROMEDRIVER = os.environ.get('ZENFER_CHROMEDRIVER', '/usr/bin/chromedriver')

# Headless Chromium on a machine without a display, GPU or network: no sandbox (root, in a
# container), nothing that phones home, a fresh profile each time.
CHROMIUM_FLAGS = (
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-extensions',
  '--mute-audio',
)


def browser_missing() -> str | None:
  """Why the browser tests cannot run here, or None when Chromium and its driver are installed."""
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
  if missing:
    return (
      f"{', '.join(missing)} missing: `make browser` installs Debian's chromium and its "
      'driver (or set ZENFER_CHROMIUM and ZENFER_CHROMEDRIVER)'
    )
  return None


class ServerThread:
  """A Starlette app served by uvicorn on 127.0.0.1 (a free port) in a thread of this process.

  The same uvicorn and the same socket handling as `zenfer-serve`, without loading a model per
  test: the tests pass a service loaded once.
  """

  def __init__(self, app, port: int = 0):
    import uvicorn

    self.socket = server_lib.bind('127.0.0.1', port)
    self.url = server_lib.url(self.socket).rstrip('/')
    self.port = self.socket.getsockname()[1]
    self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan='off'))
    self._thread = threading.Thread(
      target=self._server.run, kwargs={'sockets': [self.socket]}, daemon=True
    )

  def __enter__(self) -> ServerThread:
    self._thread.start()
    deadline = time.monotonic() + 30
    while not self._server.started:
      if time.monotonic() > deadline or not self._thread.is_alive():
        raise RuntimeError('the test server did not start')
      time.sleep(0.01)
    return self

  def __exit__(self, *exc) -> None:
    self._server.should_exit = True
    self._thread.join(10)
    self.socket.close()


def chromium(
  fake_video: str | None = None, window: tuple[int, int] = (1280, 900), extra: Sequence[str] = ()
):
  """A Selenium WebDriver for Debian's headless Chromium, with a fresh profile.

  `fake_video` (a .y4m or .mjpeg file) becomes the webcam, allowed without asking. The caller
  quits the driver; the profile is removed when it does.
  """
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  profile = tempfile.mkdtemp(prefix='zenfer-chromium-')
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in (
    *CHROMIUM_FLAGS,
    f'--user-data-dir={profile}',
    f'--window-size={window[0]},{window[1]}',
  ):
    options.add_argument(flag)
  if fake_video:
    options.add_argument('--use-fake-device-for-media-stream')
    options.add_argument('--use-fake-ui-for-media-stream')
    options.add_argument(f'--use-file-for-fake-video-capture={fake_video}')
  for flag in extra:
    options.add_argument(flag)
  driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
  quit_driver = driver.quit

  def quit_and_clean() -> None:
    try:
      quit_driver()
    finally:
      shutil.rmtree(profile, ignore_errors=True)

  driver.quit = quit_and_clean
  return driver


# --------------------------------------------------------------------------------------------
# Inputs


def astronaut() -> np.ndarray:
  """scikit-image's astronaut (Eileen Collins, NASA, public domain): uint8 [512, 512, 3]."""
  import skimage.data

  return skimage.data.astronaut()


def save_jpeg(rgb: np.ndarray, path: str, quality: int = 92) -> str:
  from PIL import Image

  Image.fromarray(rgb).save(path, quality=quality)
  return path


def webcam_frames(n: int = 8, size: tuple[int, int] = (480, 360)) -> list[np.ndarray]:
  """`n` frames of a slow pan across the astronaut, her face in each: a camera's view of her."""
  image = astronaut()
  w, h = size
  frames = []
  for i in range(n):
    x = 10 + round(20 * i / max(1, n - 1))
    y = 0 + round(10 * i / max(1, n - 1))
    frames.append(np.ascontiguousarray(image[y : y + h, x : x + w]))
  return frames


def write_y4m(path: str, frames: Sequence[np.ndarray], fps: int = 10) -> str:
  """RGB frames as a YUV4MPEG2 file (4:2:0, full-range BT.601), which Chromium's fake webcam
  plays in a loop. Width and height must be even (the chroma planes are half size)."""
  h, w = frames[0].shape[:2]
  if h % 2 or w % 2:
    raise ValueError(f'Y4M 4:2:0 needs an even width and height, got {w}x{h}')
  with open(path, 'wb') as f:
    f.write(f'YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n'.encode())
    for frame in frames:
      rgb = frame.astype(np.float64)
      r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
      y = 0.299 * r + 0.587 * g + 0.114 * b
      u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
      v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
      planes = [y] + [c.reshape(h // 2, 2, w // 2, 2).mean((1, 3)) for c in (u, v)]
      f.write(b'FRAME\n')
      for plane in planes:
        f.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
  return path


def bad_files(directory: str, max_pixels: int, max_upload_bytes: int) -> dict[str, str]:
  """Inputs a server with these limits must refuse, by what is wrong with them: {kind: path}."""
  from PIL import Image

  paths = {}
  paths['empty'] = os.path.join(directory, 'empty.jpg')
  open(paths['empty'], 'wb').close()
  paths['not_an_image'] = os.path.join(directory, 'notes.txt')
  with open(paths['not_an_image'], 'w') as f:
    f.write('this is not a photo\n' * 20)
  good = save_jpeg(astronaut(), os.path.join(directory, 'whole.jpg'))
  with open(good, 'rb') as f:
    data = f.read()
  paths['truncated'] = os.path.join(directory, 'truncated.jpg')
  with open(paths['truncated'], 'wb') as f:
    f.write(data[: len(data) // 3])
  # Above the pixel limit yet a few kilobytes: one colour compresses to almost nothing.
  side = int(np.sqrt(max_pixels)) + 16
  paths['too_many_pixels'] = os.path.join(directory, 'huge.png')
  Image.new('RGB', (side, side), (90, 120, 150)).save(paths['too_many_pixels'])
  # A real photo padded to 3x the upload limit (JPEG readers ignore bytes after the end marker):
  # well past it, so the browser is still sending when the server has seen enough.
  paths['too_large_upload'] = os.path.join(directory, 'large.jpg')
  with open(paths['too_large_upload'], 'wb') as f:
    f.write(data + b'\0' * (3 * max_upload_bytes - len(data)))
  return paths
