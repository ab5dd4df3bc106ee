"""The demo page's speed as a person sees it, and its two screenshots for docs/ and README.

  python -m benchmarks.serve_page          # writes benchmarks/results/serve_cpu.json and the PNGs

What runs is what the tests drive (`zenfer_jax.serve.testing`): the shipped fer2013_r model
behind a uvicorn server on 127.0.0.1, and Debian's headless Chromium showing the page.

  * photo: scikit-image's astronaut (512x512 JPEG) picked in the page; the time is the page's
    own, from the file being chosen to its box and bars painted (two animation frames after the
    DOM update), read from the page. The same file's API round trip alone (POST /predict from
    Python) is timed too, so the browser's share shows.
  * CPU time: this process's CPU seconds (the server and its model run in it; Chromium does
    not) per photo and per webcam frame: what each costs the machine, loaded or not.
  * webcam: Chromium's fake camera playing 480x360 frames of the astronaut; the page sends one
    frame at a time, the next when the last is answered, for --webcam_s seconds. The rate is
    frames answered per second over that time (the page shows the same, over 2 s).

The load average is recorded at the start and the end: on a shared machine it says how far the
numbers are the model's and how far the neighbours'.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

from zenfer_jax import cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_s() -> float:
  """This process's CPU seconds (every thread: the server's model included), user + system."""
  t = os.times()
  return t.user + t.system


def _load() -> list[float]:
  with open('/proc/loadavg') as f:
    return [float(v) for v in f.read().split()[:3]]


def _summary(values: list[float]) -> dict[str, float]:
  return {
    'median': round(statistics.median(values), 1),
    'min': round(min(values), 1),
    'max': round(max(values), 1),
    'n': len(values),
  }


def _wait(driver, condition, timeout: float = 120):
  deadline = time.monotonic() + timeout
  while not (value := condition(driver)):
    if time.monotonic() > deadline:
      raise TimeoutError(driver.find_element('id', 'status').text)
    time.sleep(0.02)
  return value


def _open(driver, url: str) -> None:
  driver.get(url + '/')
  _wait(driver, lambda d: d.find_element('id', 'model').get_attribute('data-ready'))


def measure(args: argparse.Namespace) -> dict:
  import urllib.request

  from zenfer_jax.serve import app as app_lib
  from zenfer_jax.serve import model, testing

  work = tempfile.mkdtemp(prefix='serve-bench-')
  photo = testing.save_jpeg(testing.astronaut(), os.path.join(work, 'astronaut.jpg'))
  camera = testing.write_y4m(os.path.join(work, 'camera.y4m'), testing.webcam_frames(8), fps=10)
  load_start = _load()
  service = model.FaceService(args.checkpoint)
  service.warm_up()
  out: dict = {
    'date': datetime.date.today().isoformat(),
    'model': service.info()['model'],
    'runtime': service.info()['runtime'],
    'cpus': os.cpu_count(),
    'load_average_start': load_start,
  }
  with testing.ServerThread(app_lib.create_app(service)) as server:
    with open(photo, 'rb') as f:
      data = f.read()
    api, cpu = [], 0.0
    for i in range(args.photos + 1):
      if i == 1:
        cpu = _cpu_s()
      t0 = time.perf_counter()
      with urllib.request.urlopen(
        urllib.request.Request(f'{server.url}/predict?top_k=7', data=data), timeout=60
      ) as r:
        r.read()
      if i:  # the first is a warm-up
        api.append(1000 * (time.perf_counter() - t0))
    out['photo_api_ms'] = _summary(api)
    # What a photo costs the machine, whatever else runs: on an idle machine with both cores to
    # itself the wall time approaches this divided by the cores the work spreads over.
    out['photo_api_cpu_ms'] = round(1000 * (_cpu_s() - cpu) / args.photos, 1)

    driver = testing.chromium(fake_video=camera, window=(1200, 960))
    try:
      _open(driver, server.url)
      page = []
      for i in range(args.photos + 1):
        driver.find_element('id', 'file').send_keys(photo)
        timing = _wait(
          driver,
          lambda d: (t := d.find_element('id', 'timing')).get_attribute('data-ms') and t,
        )
        if i:
          page.append(float(timing.get_attribute('data-ms')))
        driver.execute_script("delete document.getElementById('timing').dataset.ms;")
      out['photo_page_ms'] = _summary(page)
      if args.screenshots:
        time.sleep(0.3)
        driver.save_screenshot(os.path.join(args.screenshots, 'serve_photo.png'))

      _open(driver, server.url)
      driver.find_element('id', 'camera-toggle').click()
      fps = driver.find_element('id', 'fps')
      _wait(driver, lambda d: int(fps.get_attribute('data-frames') or 0) >= 2)
      first = int(fps.get_attribute('data-frames'))
      t0, cpu = time.perf_counter(), _cpu_s()
      time.sleep(args.webcam_s)
      frames = int(fps.get_attribute('data-frames')) - first
      elapsed = time.perf_counter() - t0
      cpu = _cpu_s() - cpu
      out['webcam'] = {
        'frame_size': list(testing.webcam_frames(1)[0].shape[1::-1]),
        'seconds': round(elapsed, 1),
        'frames': frames,
        'frames_per_s': round(frames / elapsed, 2),
        'server_cpu_ms_per_frame': round(1000 * cpu / max(frames, 1), 1),
        'shown_at_end': fps.text,
      }
      if args.screenshots:
        driver.save_screenshot(os.path.join(args.screenshots, 'serve_webcam.png'))
      driver.find_element('id', 'camera-toggle').click()
    finally:
      driver.quit()
  out['load_average_end'] = _load()
  return out


@cli.command
def main(argv: list[str] | None = None) -> int:
  p = cli.ArgumentParser(prog='python -m benchmarks.serve_page', description=__doc__)
  p.add_argument('--checkpoint', default='fer2013_r')
  p.add_argument('--photos', type=cli.positive_int, default=10, help='timed photo uploads')
  p.add_argument('--webcam_s', type=cli.positive_float, default=20.0, help='webcam seconds')
  p.add_argument('--out', default=os.path.join(_ROOT, 'benchmarks', 'results', 'serve_cpu.json'))
  p.add_argument(
    '--screenshots', default=os.path.join(_ROOT, 'docs'), help='folder for the two PNGs ("": none)'
  )
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  cli.setup_logging(args.verbosity, uses_tensorflow=True)
  result = measure(args)
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
