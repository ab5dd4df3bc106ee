"""The shipped FER2013 model: loadable by name from a fresh clone, with a card that says what it
is, and predictions equal to what evaluation computes for the same file."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests import data_fixtures as fx
from zenfer_jax import dataset_names
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.deploy import predict
from zenfer_jax.rundir import model_directory, pretrained
from zenfer_jax.rundir import workdir as workdir_lib

NAME = 'fer2013_r'


@pytest.fixture(scope='module')
def card():
  return model_directory.load_card(os.path.join(pretrained.ROOT, NAME))


def test_shipped_by_name_small_and_described(card):
  assert NAME in pretrained.names()
  path = pretrained.resolve(NAME)
  assert path == os.path.join(pretrained.ROOT, NAME)
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  assert size < 5 * 2**20, size
  assert card['class_names'] == list(dataset_names.FER2013_CLASSES)
  assert (card['recipe'], card['num_classes']) == ('fer2013', 7)
  # The input size is the last training stage's (the earlier stages trained at FER2013's 48 px).
  assert card['image_size'] == card['training']['stages'][-1].get('image_size', 48)
  for key in ('training', 'evaluation', 'data', 'licence'):
    assert card[key], key
  assert 'configs/fer2013_r.py' in card['training']['command']


def test_card_accuracy_is_its_own_confusion_matrix(card):
  """The card's figures are one evaluation's: top-1 and per-class accuracy follow from its
  confusion matrix over all of PublicTest's 3,589 faces."""
  ev = card['evaluation']
  cm = np.asarray(ev['confusion_matrix'])
  assert ev['split'] == 'publictest' and cm.shape == (7, 7) and cm.sum() == 3589
  assert ev['top1'] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
  per_class = np.diag(cm) / cm.sum(1)
  assert ev['mean_class_accuracy'] == pytest.approx(per_class.mean(), abs=1e-6)
  for name, acc in zip(dataset_names.FER2013_CLASSES, per_class):
    assert ev['per_class_accuracy'][name] == pytest.approx(acc, abs=1e-6)


def test_a_path_wins_over_a_name_and_unknown_names_pass_through(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / NAME).mkdir()
  assert pretrained.resolve(NAME) == NAME  # ./fer2013_r exists: the user's folder
  assert pretrained.resolve('no_such_model') == 'no_such_model'
  assert pretrained.resolve(os.path.join('sub', NAME)) == os.path.join('sub', NAME)


def test_predict_by_name_equals_evaluation_of_the_same_files(tmp_path, capsys):
  """`predict --checkpoint fer2013_r` on 48x48 grey JPEGs gives the probabilities the model
  gives those files' records in the evaluation pipeline (same decoder, same preprocessing)."""
  from zenfer_jax import data as data_lib

  root = tmp_path / 'fer2013'
  fx.make_fer2013_folders(str(root), usages=('Training', 'PublicTest'))
  files = sorted(str(p) for p in (root / 'test').rglob('*.jpg'))
  assert files
  data_dir = str(tmp_path / 'tfds')
  data_lib.prepare_dataset('fer2013', data_dir, manual_dir=str(root))
  rc = predict.main(['--checkpoint', NAME, '--top_k', '7', '--json', *files])
  assert rc == 0
  answers = {r['image']: r for r in json.loads(capsys.readouterr().out)}

  variables, card = workdir_lib.load_inference(NAME)
  model = model_directory.build_from_card(card)

  def records(image_size):
    spec = DataSpec(
      'fer2013',
      data_dir,
      eval_split='publictest',
      image_size=image_size,
      per_device_batch=len(files),
      num_local_devices=1,
      recipe='fer2013',
    )
    return next(iter(data_lib.pipeline.eval_dataset(spec)))

  batch = records(card['image_size'])
  probs = np.asarray(jax.nn.softmax(model.apply(variables, batch['image'][0], train=False), -1))
  labels = batch['label'][0]
  # Records and files meet through their labels and pixels (the same records at 48 px, in the
  # same order: evaluation is not shuffled): match each file to its record.
  native = records(48)
  np.testing.assert_array_equal(native['label'][0], labels)
  by_pixels = {np.asarray(Image.open(f).convert('L')).tobytes(): f for f in files}
  for image, label, p in zip(native['image'][0], labels, probs):
    grey = np.round(((image[..., 0] * 0.229) + 0.485) * 255).astype(np.uint8)
    path = by_pixels[grey.tobytes()]
    assert dataset_names.FER2013_CLASSES[label] == os.path.basename(os.path.dirname(path))
    got = {e['class']: e['probability'] for e in answers[path]['predictions']}
    assert answers[path]['predictions'][0]['class'] in dataset_names.FER2013_CLASSES
    for j, name in enumerate(dataset_names.FER2013_CLASSES):
      assert got[name] == pytest.approx(float(p[j]), abs=1e-5)
  assert len(by_pixels) == len(files)


def test_evaluate_and_init_from_take_the_name(tmp_path, monkeypatch, capsys):
  """`evaluate --checkpoint fer2013_r` writes beside the caller, never into the package; a
  training config may start from the shipped model by name."""
  from zenfer_jax.config import validation
  from zenfer_jax.config.files import sibling
  from zenfer_jax.deploy import evaluate

  root = tmp_path / 'fer2013'
  fx.make_fer2013_folders(str(root), usages=('Training', 'PublicTest'))
  monkeypatch.chdir(tmp_path)
  before = sorted(os.listdir(pretrained.resolve(NAME)))
  args = ['--checkpoint', NAME, '--dataset', 'fer2013', '--data_dir', str(tmp_path / 'tfds')]
  assert evaluate.main([*args, '--manual_dir', str(root), '--split', 'publictest']) == 0
  metrics = json.loads((tmp_path / f'{NAME}_eval_publictest' / 'metrics.json').read_text())
  assert metrics['class_names'] == list(dataset_names.FER2013_CLASSES)
  assert sorted(os.listdir(pretrained.resolve(NAME))) == before
  config = sibling(os.path.join(os.path.dirname(__file__), '..', 'configs', 'x.py'), 'fer2013_r')
  config = config.get_config()
  config.init_from = NAME
  validation.validate_config(config)
  config.init_from = 'no_such_model'
  with pytest.raises(validation.ConfigError, match=NAME):
    validation.validate_config(config)


def test_detect_faces_with_the_shipped_model(tmp_path, capsys):
  photo = tmp_path / 'astronaut.png'
  Image.fromarray(data.astronaut()).save(photo)
  rc = predict.main(['--checkpoint', NAME, '--detect_faces', str(photo), '--json'])
  assert rc == 0
  (result,) = json.loads(capsys.readouterr().out)
  (face,) = result['faces']
  classes = [p['class'] for p in face['predictions']]
  assert len(classes) == 3 and set(classes) <= set(dataset_names.FER2013_CLASSES)
