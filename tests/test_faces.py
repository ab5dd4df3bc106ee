"""Faces in real photos: detection, alignment, annotation, and predict --detect_faces / --video.

The pictures ship inside scikit-image: `data.astronaut()` (one face, Eileen Collins) and the
LFW subset (100 face crops, then 100 non-faces, 25x25). Nothing is downloaded.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data
from train_fixtures import TINY

from zenfer_jax.deploy import faces, predict
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory

# Her face in data.astronaut() (512x512), read off the picture: hairline to chin, ear to ear.
ASTRONAUT_FACE = (175, 60, 275, 180)
CLASSES = ['neutral', 'happy', 'sad']


@pytest.fixture(scope='module')
def detector():
  return faces.FaceDetector()


@pytest.fixture(scope='module')
def astronaut_png(tmp_path_factory):
  path = tmp_path_factory.mktemp('photos') / 'astronaut.png'
  Image.fromarray(data.astronaut()).save(path)
  return str(path)


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  model = zennet.build_model(TINY, len(CLASSES), use_sa=True)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(0), 32))
  card = model_directory.make_card(
    TINY, len(CLASSES), use_sa=True, class_names=CLASSES, image_size=32, recipe='rafdb'
  )
  path = tmp_path_factory.mktemp('models') / 'tiny'
  return model_directory.save_model_dir(str(path), variables, card)


def _inside(point, box) -> bool:
  return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_astronaut_has_exactly_one_face_where_her_face_is(detector):
  found = detector.detect(data.astronaut())
  assert len(found) == 1
  f = found[0]
  x0, y0, x1, y1 = f.box
  fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
  # The box lies on her face and covers most of it (not a patch of the suit or the flag).
  inter = max(0, min(x1, fx1) - max(x0, fx0)) * max(0, min(y1, fy1) - max(y0, fy0))
  assert inter >= 0.6 * (fx1 - fx0) * (fy1 - fy0) * 0.6
  assert inter >= 0.8 * (x1 - x0) * (y1 - y0)
  left_eye, right_eye, nose, mouth_l, mouth_r = f.landmarks
  assert all(_inside(p, f.box) for p in f.landmarks)
  assert left_eye[0] < nose[0] < right_eye[0] and left_eye[1] < nose[1] < mouth_l[1]
  assert mouth_l[0] < mouth_r[0]


def test_lfw_faces_found_and_non_faces_not(detector):
  import cv2

  lfw = data.lfw_subset()  # 0-99 faces, 100-199 non-faces

  def count(i):
    img = cv2.resize((lfw[i] * 255).astype(np.uint8), (100, 100), interpolation=cv2.INTER_CUBIC)
    return len(detector.detect(img))

  hits = [count(i) for i in range(0, 100, 10)]
  false = [count(i) for i in range(100, 200, 10)]
  assert sum(h >= 1 for h in hits) >= 8, hits
  assert sum(false) <= 1, false


def test_similarity_transform_recovers_a_known_one():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  dst = scale * src @ rot.T + shift
  m = faces.similarity_transform(src, dst)
  np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
  np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_align_puts_the_landmarks_on_the_template():
  """Five dots placed by a rotated, scaled template land on the template after alignment."""
  angle, scale, shift = -0.25, 2.3, np.array([140.0, 90.0])
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  marks = scale * (faces.TEMPLATE * 100) @ rot.T + shift
  image = np.zeros((480, 480, 3), np.uint8)
  for x, y in marks:
    image[round(y) - 2 : round(y) + 3, round(x) - 2 : round(x) + 3] = 255
  face = faces.Face((0, 0, 480, 480), 1.0, marks)
  crop = faces.align(image, face).astype(np.float64)[..., 0]
  assert crop.shape == (faces.ALIGNED_SIZE, faces.ALIGNED_SIZE)
  for tx, ty in faces.TEMPLATE * faces.ALIGNED_SIZE:
    patch = crop[round(ty) - 3 : round(ty) + 4, round(tx) - 3 : round(tx) + 4]
    assert patch.max() > 100, (tx, ty)
  assert crop.sum() < 5 * 49 * 255  # nothing else is bright


def test_box_crop_is_square_around_the_box_with_margin():
  image = np.zeros((200, 300, 3), np.uint8)
  image[50:150, 100:180] = 200  # an 80x100 "face"
  crop = faces.box_crop(image, (100, 50, 180, 150), size=100, margin=0.25)
  assert crop.shape == (100, 100, 3)
  # side = 100 * 1.5: the box's 100 rows take the middle two thirds of the crop.
  rows = np.nonzero(crop[:, 50, 0] > 100)[0]
  assert abs(rows[0] - 16.7) <= 1.5 and abs(rows[-1] - 83.3) <= 1.5


def test_annotate_draws_box_and_label_without_touching_the_input():
  image = np.full((300, 300, 3), 40, np.uint8)
  face = faces.Face((100, 120, 200, 240), 0.99, None)
  out = faces.annotate(image, [face], ['happy 97%'], banner='10.0 frames/s')
  assert (image == 40).all()
  assert out.shape == image.shape
  assert (out[180, 100] != 40).any() and (out[180, 150] == 40).all()  # edge drawn, inside not
  assert (out[100:120, 100:200] != 40).any()  # the label above the box
  assert (out[:15, :60] != 40).any()  # the banner


def test_predict_detect_faces_json_and_annotation(model_dir, astronaut_png, tmp_path, capsys):
  out = tmp_path / 'astronaut_annotated.png'
  blank = tmp_path / 'wall.png'
  Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(blank)
  rc = predict.main(
    ['--checkpoint', model_dir, '--detect_faces', astronaut_png, '--annotate', str(out), '--json']
  )
  assert rc == 0
  (result,) = json.loads(capsys.readouterr().out)
  (face,) = result['faces']
  assert set(face) >= {'box', 'landmarks', 'predictions', 'confidence'}
  assert _inside(
    ((face['box'][0] + face['box'][2]) / 2, (face['box'][1] + face['box'][3]) / 2), ASTRONAUT_FACE
  )
  assert set(face['landmarks']) == set(faces.LANDMARK_NAMES)
  probs = [p['probability'] for p in face['predictions']]
  assert [p['class'] for p in face['predictions']] != [] and set(
    p['class'] for p in face['predictions']
  ) <= set(CLASSES)
  assert probs == sorted(probs, reverse=True) and 0.99 < sum(probs) < 1.01  # top 3 of 3
  drawn = np.asarray(Image.open(out))
  original = data.astronaut()
  assert drawn.shape == original.shape
  x0, y0 = round(face['box'][0]), round(face['box'][1])
  assert (drawn[y0 + 20, x0] != original[y0 + 20, x0]).any()  # the box's left edge
  assert (drawn[400:, :100] == original[400:, :100]).all()  # far from the face: untouched

  rc = predict.main(['--checkpoint', model_dir, '--detect_faces', str(blank), '--json'])
  assert rc == 0
  (result,) = json.loads(capsys.readouterr().out)
  assert result['faces'] == [] and result['message'] == 'no face found'


def test_faces_are_classified_as_their_aligned_crops_are(model_dir, astronaut_png):
  """The probabilities of a face equal those of its aligned crop run through plain predict."""
  from zenfer_jax.data import pipeline

  predictor = predict.Predictor(model_dir)
  classifier = predict.FaceClassifier(predictor, top_k=3)
  rgb = data.astronaut()
  found, entries = classifier(rgb)
  crop = faces.align(rgb, found[0])
  x = np.asarray(pipeline.preprocess_for_eval(crop, 32, 'rafdb'), np.float32)[None]
  want = predictor(np.concatenate([x, np.zeros((7, 32, 32, 3), np.float32)]))[0]
  got = {p['class']: p['probability'] for p in entries[0]['predictions']}
  for j, name in enumerate(CLASSES):
    assert got[name] == pytest.approx(float(want[j]), abs=1e-6)


def test_predict_refuses_to_guess_the_preprocessing(tmp_path, capsys):
  model = zennet.build_model(TINY, 3)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(0), 32))
  card = model_directory.make_card(TINY, 3, image_size=32, recipe=None)
  d = model_directory.save_model_dir(str(tmp_path / 'm'), variables, card)
  img = tmp_path / 'x.png'
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
  assert predict.main(['--checkpoint', d, str(img)]) == 2  # A user error: one line, status 2.
  err = capsys.readouterr().err
  assert 'records no recipe' in err and '--recipe' in err
  assert predict.main(['--checkpoint', d, str(img), '--recipe', 'affectnet']) == 0
  model_dir_with = model_directory.save_model_dir(
    str(tmp_path / 'm2'), variables, dict(card, recipe='rafdb')
  )
  assert predict.main(['--checkpoint', model_dir_with, str(img), '--recipe', 'affectnet']) == 2
  assert 'contradicts' in capsys.readouterr().err


@pytest.mark.slow
def test_predict_video_frame_by_frame(model_dir, tmp_path, capsys):
  import cv2

  src = tmp_path / 'in.mp4'
  photo = data.astronaut()
  writer = faces.VideoWriter(str(src), 10.0, (256, 256))
  for shift in range(0, 24, 4):  # 6 frames, the face drifting right
    frame = cv2.resize(np.roll(photo, shift, axis=1), (256, 256), interpolation=cv2.INTER_AREA)
    writer.write(frame)
  writer.close()
  out = tmp_path / 'out.mp4'
  rc = predict.main(
    ['--checkpoint', model_dir, '--video', str(src), '--annotate', str(out), '--json']
  )
  assert rc == 0
  result = json.loads(capsys.readouterr().out)
  assert result['frames'] == 6 and result['processed_fps'] > 0
  assert [len(f['faces']) for f in result['per_frame']] == [1] * 6
  xs = [f['faces'][0]['box'][0] for f in result['per_frame']]
  assert xs[-1] > xs[0]  # the box follows the face
  frames, fps, size = faces.read_video(str(out))
  frames = list(frames)
  assert len(frames) == 6 and size == (256, 256) and fps == pytest.approx(10.0)
  assert not list(tmp_path.glob('*.partial*'))
