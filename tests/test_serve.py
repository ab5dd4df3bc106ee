"""zenfer_jax.serve's API through a real uvicorn server on a free 127.0.0.1 port: the JSON of
`predict --detect_faces --json`, the refusals and their statuses, the queue limit, a bug's 500,
a busy port, and `zenfer-serve` itself. After every refusal the server is asked again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest

from tests import serve_fixtures as fx
from zenfer_jax.deploy import predict
from zenfer_jax.rundir import model_directory, pretrained
from zenfer_jax.serve import app as app_lib
from zenfer_jax.serve import testing

FER2013_CLASSES = ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']


@pytest.fixture(scope='module')
def server():
  with testing.ServerThread(app_lib.create_app(fx.service(), fx.LIMITS)) as running:
    yield running


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, str]:
  import skimage.data

  d = tmp_path_factory.mktemp('serve_inputs')
  paths = testing.bad_files(str(d), fx.LIMITS.max_pixels, fx.LIMITS.max_upload_bytes)
  paths['astronaut'] = testing.save_jpeg(testing.astronaut(), str(d / 'astronaut.jpg'))
  paths['coffee'] = testing.save_jpeg(skimage.data.coffee(), str(d / 'coffee.jpg'))
  return paths


def assert_still_serving(server, files) -> None:
  """The server answers the next request, a real one, correctly."""
  status, _, body = fx.post_file(server.url, files['astronaut'], 'top_k=1')
  assert status == 200
  assert body[0]['faces'][0]['predictions'][0]['class'] == 'happy'


def test_model_describes_the_shipped_model_and_the_limits(server):
  status, headers, info = fx.request(f'{server.url}/model')
  assert status == 200
  assert info['model'] == 'fer2013_r'
  assert info['classes'] == FER2013_CLASSES
  card = model_directory.load_card(pretrained.resolve('fer2013_r'))
  assert (info['image_size'], info['recipe']) == (card['image_size'], 'fer2013')
  assert info['limits'] == {'max_upload_bytes': 1 << 20, 'max_pixels': 2_000_000, 'max_pending': 4}
  assert "default-src 'self'" in headers['content-security-policy']


def test_page_and_its_static_files_are_served(server):
  status, headers, page = fx.request(f'{server.url}/')
  assert status == 200 and headers['content-type'].startswith('text/html')
  for asset in ('/static/app.js', '/static/style.css'):
    assert asset in page
    assert fx.request(f'{server.url}{asset}')[0] == 200
  # Nothing from the network: every script, style and fetch is this server's.
  script = fx.request(f'{server.url}/static/app.js')[2]
  assert 'http://' not in page + script and 'https://' not in page + script


def test_predict_returns_what_predict_json_prints(server, files, capsys, restore_logging):
  status, _, body = fx.post_file(server.url, files['astronaut'], 'top_k=7&name=astronaut.jpg')
  assert status == 200
  rc = predict.main(
    ['--checkpoint', 'fer2013_r', '--detect_faces', '--json', '--top_k', '7', files['astronaut']]
  )
  assert rc == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed[0].pop('image') == files['astronaut']
  assert body[0].pop('image') == 'astronaut.jpg'
  assert body == printed  # the same faces, boxes, landmarks and probabilities, to the bit


def test_astronaut_has_one_face_with_seven_probabilities(server, files):
  status, _, body = fx.post_file(server.url, files['astronaut'], 'top_k=7')
  assert status == 200
  (result,) = body
  assert result['image'] == 'upload' and 'message' not in result
  (face,) = result['faces']
  assert fx.overlap(face['box'], fx.ASTRONAUT_FACE) > 0.9
  probs = {p['class']: p['probability'] for p in face['predictions']}
  assert sorted(probs) == sorted(FER2013_CLASSES)
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  assert max(probs, key=probs.get) == 'happy'


def test_top_k_defaults_to_predicts_and_is_checked(server, files):
  status, _, body = fx.post_file(server.url, files['astronaut'])
  assert status == 200 and len(body[0]['faces'][0]['predictions']) == 3
  status, _, body = fx.post_file(server.url, files['astronaut'], 'top_k=99')
  assert status == 200 and len(body[0]['faces'][0]['predictions']) == 7
  status, _, body = fx.post_file(server.url, files['astronaut'], 'top_k=zero')
  assert status == 400 and "top_k='zero'" in body['error']


@pytest.mark.parametrize('name', ['..', '../../etc/passwd', 'a\\b.jpg', ''])
def test_the_uploads_name_is_only_reported(server, files, name):
  """A name is the file's own, no directories, and is never a path on the server."""
  status, _, body = fx.post_file(server.url, files['coffee'], f'name={urllib.parse.quote(name)}')
  assert status == 200
  assert body[0]['image'] == {'..': '..', '../../etc/passwd': 'passwd', 'a\\b.jpg': 'b.jpg'}.get(
    name, 'upload'
  )


def test_a_photo_without_a_face_says_so(server, files):
  status, _, body = fx.post_file(server.url, files['coffee'], 'name=coffee.jpg')
  assert status == 200
  assert body == [{'image': 'coffee.jpg', 'faces': [], 'message': 'no face found'}]


@pytest.mark.parametrize(
  'kind, status, reason',
  [
    ('empty', 400, 'empty file: the upload holds no bytes'),
    ('not_an_image', 415, 'not an image'),
    ('truncated', 422, 'cannot read image: corrupt or truncated image'),
    ('too_many_pixels', 413, '1430x1430 image (2,044,900 pixels) is above the limit of 2,000,000'),
    ('too_large_upload', 413, 'upload above the limit of 1,048,576 bytes'),
  ],
)
def test_bad_input_is_refused_with_its_reason(server, files, kind, status, reason):
  got, headers, body = fx.post_file(
    server.url, files[kind], f'name={os.path.basename(files[kind])}'
  )
  assert got == status
  assert headers['content-type'] == 'application/json'
  assert reason in body['error']
  assert_still_serving(server, files)


def test_a_streamed_upload_is_cut_off_at_the_limit(server, files):
  """No Content-Length (chunked): counted while it arrives, refused past the limit."""
  import http.client

  conn = http.client.HTTPConnection('127.0.0.1', server.port, timeout=30)
  chunks = (b'\xff' * 65536 for _ in range(20))  # 1.25 MiB against a 1 MiB limit
  conn.request('POST', '/predict', body=chunks, encode_chunked=True)
  response = conn.getresponse()
  assert response.status == 413
  assert 'upload above the limit' in json.loads(response.read())['error']
  conn.close()
  assert_still_serving(server, files)


class _SlowService:
  """Stands in for the model: each call waits until the test lets it go."""

  def __init__(self, fail: bool = False):
    self.release = threading.Event()
    self.started = threading.Semaphore(0)
    self.fail = fail

  def info(self):
    return {'model': 'slow', 'classes': FER2013_CLASSES}

  def predict_file(self, path, top_k):
    if self.fail:
      raise RuntimeError('a bug')
    self.started.release()
    assert self.release.wait(30)
    return {'image': path, 'faces': [], 'message': 'no face found'}


def test_requests_beyond_the_queue_get_503_and_the_rest_are_served(files):
  slow = _SlowService()
  limits = app_lib.Limits(max_pending=2)
  web_app = app_lib.create_app(slow, limits)
  with testing.ServerThread(web_app) as server:
    answers = []

    def send():
      answers.append(fx.post_file(server.url, files['astronaut']))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
      t.start()
    assert slow.started.acquire(timeout=30)  # one is being classified ...
    deadline = time.monotonic() + 30
    while web_app.state.queue.pending < 2:  # ... and the other waits behind it
      assert time.monotonic() < deadline
      time.sleep(0.01)
    status, headers, body = fx.post_file(server.url, files['astronaut'])
    assert status == 503
    assert headers['retry-after'] == '1'
    assert body['error'].startswith('busy: 2 requests are being served or waiting')
    slow.release.set()
    for t in threads:
      t.join(30)
    assert [a[0] for a in answers] == [200, 200]
    assert fx.post_file(server.url, files['astronaut'])[0] == 200


def test_a_bug_is_a_500_with_json_and_the_server_goes_on(files):
  with testing.ServerThread(app_lib.create_app(_SlowService(fail=True))) as server:
    status, _, body = fx.post_file(server.url, files['astronaut'])
    assert status == 500
    assert body == {'error': 'internal error (RuntimeError); see the server log'}
    assert fx.request(f'{server.url}/model')[0] == 200


def test_a_second_server_on_the_same_port_is_one_line(server, files):
  started = time.monotonic()
  proc = subprocess.run(
    [sys.executable, '-m', 'zenfer_jax.serve', '--port', str(server.port)],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [
    f'error: 127.0.0.1:{server.port} is already in use (another zenfer-serve?): stop it, or '
    'pass --port with another number (--port 0 picks a free one)'
  ]
  assert time.monotonic() - started < 20  # refused before any model is loaded
  assert_still_serving(server, files)


def test_binding_a_busy_port_raises_port_in_use(server):
  from zenfer_jax.serve import server as server_lib

  with pytest.raises(server_lib.PortInUse, match='already in use'):
    server_lib.bind('127.0.0.1', server.port)


def test_a_host_that_is_not_this_machines_is_a_user_error():
  from zenfer_jax import errors
  from zenfer_jax.serve import server as server_lib

  # 203.0.113.0/24 is reserved for documentation: no interface here has it, and bind() sends
  # nothing anywhere.
  with pytest.raises(errors.InvalidInput, match='--host 203.0.113.5: not an address of this'):
    server_lib.bind('203.0.113.5', 0)


def test_y4m_holds_the_frames_as_full_range_420(tmp_path):
  """The fake webcam's file: header, then per frame Y at full size and U, V at half."""
  white = np.full((4, 6, 3), 255, np.uint8)
  red = np.zeros((4, 6, 3), np.uint8)
  red[..., 0] = 255
  path = testing.write_y4m(str(tmp_path / 'two.y4m'), [white, red], fps=5)
  with open(path, 'rb') as f:
    raw = f.read()
  header, rest = raw.split(b'\n', 1)
  assert header == b'YUV4MPEG2 W6 H4 F5:1 Ip A1:1 C420jpeg'
  frame = 6 + 24 + 6 + 6  # 'FRAME\n', Y 6x4, U 3x2, V 3x2
  assert len(rest) == 2 * frame
  first, second = rest[:frame], rest[frame:]
  assert first[:6] == b'FRAME\n' and set(first[6:30]) == {255} and set(first[30:]) == {128}
  assert set(second[6:30]) == {76} and set(second[30:36]) == {85} and set(second[36:]) == {255}
  with pytest.raises(ValueError, match='even width and height'):
    testing.write_y4m(str(tmp_path / 'odd.y4m'), [np.zeros((3, 4, 3), np.uint8)])


@pytest.mark.slow
def test_zenfer_serve_command_serves_the_shipped_model_until_interrupted(files):
  """The console script, as README says to run it: a free port, the URL printed, Ctrl-C."""
  script = os.path.join(os.path.dirname(sys.executable), 'zenfer-serve')
  with subprocess.Popen(
    [script, '--port', '0', '--max_pending', '2'],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  ) as proc:
    try:
      line = proc.stdout.readline()  # printed once the model is loaded and compiled
      assert line.startswith('zenfer-serve: http://127.0.0.1:'), (line, proc.stderr.read())
      assert line.rstrip().endswith('(model fer2013_r); Ctrl-C stops it')
      url = line.split()[1].rstrip('/')
      status, _, info = fx.request(f'{url}/model')
      assert status == 200 and info['limits']['max_pending'] == 2
      status, _, body = fx.post_file(url, files['astronaut'], 'top_k=7')
      assert status == 200
      probs = [p['probability'] for p in body[0]['faces'][0]['predictions']]
      assert len(probs) == 7 and np.isclose(sum(probs), 1.0, atol=1e-5)
      proc.send_signal(signal.SIGINT)
      assert proc.wait(30) == 0
      assert proc.stderr.read().splitlines()[-1:] == ['zenfer-serve: stopped']  # no traceback
    finally:
      if proc.poll() is None:
        proc.kill()
