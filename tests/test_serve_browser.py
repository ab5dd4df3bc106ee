"""The demo page in a real browser: Debian's headless Chromium driven by Selenium 4 (driver path
given, so Selenium Manager downloads nothing). A photo is picked through the page's own file
input; the webcam is Chromium's fake camera playing a Y4M of the astronaut. Everything asserted
is read from the page's DOM: the boxes, their labels and place, and the seven bars' values.

`make test` installs the browser where it is missing (`make browser`); without it these tests
skip, except under CI=true, where they fail: CI must never pass them unrun.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests import serve_fixtures as fx
from zenfer_jax.serve import app as app_lib
from zenfer_jax.serve import testing

_MISSING = testing.browser_missing()
pytestmark = pytest.mark.skipif(
  bool(_MISSING) and os.environ.get('CI') != 'true', reason=_MISSING or ''
)
FER2013_CLASSES = ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']
LABEL = re.compile(r'^(\d+) · (' + '|'.join(FER2013_CLASSES) + r') (\d+)%$')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
  """(server, browser, input files): one of each for the module."""
  import skimage.data

  d = tmp_path_factory.mktemp('serve_page')
  files = testing.bad_files(str(d), fx.LIMITS.max_pixels, fx.LIMITS.max_upload_bytes)
  files['astronaut'] = testing.save_jpeg(testing.astronaut(), str(d / 'astronaut.jpg'))
  files['coffee'] = testing.save_jpeg(skimage.data.coffee(), str(d / 'coffee.jpg'))
  camera = testing.write_y4m(str(d / 'camera.y4m'), testing.webcam_frames(6), fps=10)
  with testing.ServerThread(app_lib.create_app(fx.service(), fx.LIMITS)) as server:
    driver = testing.chromium(fake_video=camera)
    try:
      yield server, driver, files
    finally:
      driver.quit()


def wait_for(driver, condition, timeout: float = 60, what: str = 'the page'):
  """condition(driver)'s first truthy value, polled; fails naming what never came."""
  deadline = time.monotonic() + timeout
  while True:
    value = condition(driver)
    if value:
      return value
    if time.monotonic() > deadline:
      status = driver.find_element('id', 'status').text
      pytest.fail(f'{what} did not happen within {timeout} s (status line: {status!r})')
    time.sleep(0.05)


def open_page(site):
  server, driver, _ = site
  driver.get(server.url + '/')
  wait_for(driver, lambda d: d.find_element('id', 'model').get_attribute('data-ready'))
  return driver


def pick(driver, path: str) -> None:
  """What a person does with the file chooser (or by dropping the file on the page)."""
  driver.find_element('id', 'file').send_keys(path)


def bars(driver) -> list[dict]:
  """Each face card's bars, read from the page: [{class: probability}] in face order."""
  faces = []
  for card in driver.find_elements('css selector', '#faces .face'):
    rows = card.find_elements('css selector', '.bar')
    faces.append(
      {r.get_attribute('data-class'): float(r.get_attribute('data-probability')) for r in rows}
    )
  return faces


def boxes(driver) -> list[dict]:
  """Each drawn box: its face box in image pixels, its label and its rectangle on screen."""
  return driver.execute_script(
    """
    return [...document.querySelectorAll('#boxes .box')].map((b) => {
      const r = b.getBoundingClientRect();
      return {box: b.dataset.box.split(',').map(Number), label: b.textContent,
              rect: [r.left, r.top, r.right, r.bottom]};
    });
    """
  )


def test_photo_of_the_astronaut_gets_one_box_on_her_face_and_seven_bars(site):
  driver = open_page(site)
  pick(driver, site[2]['astronaut'])
  wait_for(driver, lambda d: d.find_elements('css selector', '#faces .face'), what='a face card')
  (box,) = boxes(driver)
  assert fx.overlap(box['box'], fx.ASTRONAUT_FACE) > 0.9
  label = LABEL.match(box['label'])
  assert label and label.group(1) == '1' and label.group(2) == 'happy'
  # Drawn where the face is: the box's screen rectangle is its pixel box scaled onto the photo.
  photo = driver.execute_script(
    "const r = document.getElementById('photo').getBoundingClientRect();"
    'return [r.left, r.top, r.width / 512, r.height / 512];'
  )
  expected = [
    photo[0] + box['box'][0] * photo[2],
    photo[1] + box['box'][1] * photo[3],
    photo[0] + box['box'][2] * photo[2],
    photo[1] + box['box'][3] * photo[3],
  ]
  assert box['rect'] == pytest.approx(expected, abs=1.5)
  (probs,) = bars(driver)
  assert list(probs) == FER2013_CLASSES  # the model's order, every class shown
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  assert max(probs, key=probs.get) == 'happy' == label.group(2)
  assert driver.find_element('id', 'status').text == '1 face'
  assert float(driver.find_element('id', 'timing').get_attribute('data-ms')) > 0


def test_a_photo_dropped_on_the_page_is_read(site):
  """Drag and drop: a File in a DataTransfer, dropped on the drop zone as a browser drops one."""
  import base64

  driver = open_page(site)
  with open(site[2]['astronaut'], 'rb') as f:
    data = base64.b64encode(f.read()).decode()
  driver.execute_script(
    """
    const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));
    const zone = document.getElementById('drop');
    zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
    zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    """,
    data,
  )
  wait_for(driver, lambda d: len(boxes(d)) == 1, what='the dropped photo read')
  (probs,) = bars(driver)
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  assert fx.overlap(boxes(driver)[0]['box'], fx.ASTRONAUT_FACE) > 0.9


def test_photo_without_a_face_says_no_face_found(site):
  driver = open_page(site)
  pick(driver, site[2]['coffee'])
  wait_for(
    driver, lambda d: d.find_element('id', 'status').text == 'no face found', what='no face found'
  )
  assert boxes(driver) == [] and bars(driver) == []
  assert driver.find_element('id', 'photo').is_displayed()


@pytest.mark.parametrize(
  'kind, code, message',
  [
    ('empty', 400, 'empty file: the upload holds no bytes'),
    ('not_an_image', 415, 'not an image: send a JPEG, PNG, WebP, BMP or GIF file'),
    ('truncated', 422, 'cannot read image: corrupt or truncated image'),
    ('too_many_pixels', 413, 'is above the limit of 2,000,000 pixels'),
    ('too_large_upload', 413, 'upload above the limit of 1,048,576 bytes (1 MiB)'),
  ],
)
def test_bad_file_gets_a_clear_message_and_the_page_goes_on(site, kind, code, message):
  driver = open_page(site)
  pick(driver, site[2][kind])
  status = wait_for(
    driver,
    lambda d: (s := d.find_element('id', 'status')).get_attribute('class') == 'error' and s,
    what=f'the error for {kind}',
  )
  assert status.get_attribute('data-code') == str(code)
  assert message in status.text
  assert boxes(driver) == [] and bars(driver) == []
  # The server and the page go on: the next photo is read.
  pick(driver, site[2]['astronaut'])
  wait_for(driver, lambda d: len(boxes(d)) == 1, what='the next photo')
  assert driver.find_element('id', 'status').get_attribute('data-code') is None


def test_webcam_shows_labelled_boxes_on_live_frames_and_the_frame_rate(site):
  driver = open_page(site)
  driver.find_element('id', 'camera-toggle').click()
  fps = driver.find_element('id', 'fps')
  wait_for(driver, lambda d: int(fps.get_attribute('data-frames') or 0) >= 3, what='3 frames')
  seen = int(fps.get_attribute('data-frames'))
  found = boxes(driver)
  assert found and all(LABEL.match(b['label']) for b in found)
  assert any(fx.overlap(b['box'], (161, 60, 245, 167)) > 0.5 for b in found)  # her face, panned
  for probs in bars(driver):
    assert list(probs) == FER2013_CLASSES
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
  assert driver.find_element('id', 'camera').is_displayed()
  # Live: more frames are answered, and the rate shown is theirs.
  wait_for(driver, lambda d: int(fps.get_attribute('data-frames')) > seen + 1, what='more frames')
  assert re.fullmatch(r'\d+\.\d frames/s', fps.text)
  assert float(fps.get_attribute('data-fps')) == pytest.approx(float(fps.text.split()[0]), abs=0.06)
  assert float(fps.get_attribute('data-fps')) > 0
  driver.find_element('id', 'camera-toggle').click()
  assert driver.find_element('id', 'camera-toggle').text == 'Start the webcam'
