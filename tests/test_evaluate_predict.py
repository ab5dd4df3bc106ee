"""evaluate and predict on a model dir: files written, numbers consistent, bad images isolated."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image
from train_fixtures import TINY

from zenfer_jax.data.spec import DataSpec
from zenfer_jax.deploy import evaluate, predict
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory

CLASSES = [str(d) for d in range(10)]


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """A freshly initialised tiny model, with a random classifier so predictions vary."""
  model = zennet.build_model(TINY, 10, use_sa=True)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(1), 16))
  variables['params']['fc']['kernel'] = (
    np.random.default_rng(0)
    .normal(size=variables['params']['fc']['kernel'].shape)
    .astype(np.float32)
  )
  card = model_directory.make_card(
    TINY, 10, use_sa=True, class_names=CLASSES, image_size=16, recipe='digits', source='test'
  )
  path = tmp_path_factory.mktemp('models') / 'tiny'
  model_directory.save_model_dir(str(path), variables, card)
  return path


@pytest.fixture(scope='module')
def test_images(tmp_path_factory):
  """The first 6 test-split digits as PNG files, in the order the eval pipeline reads them."""
  from zenfer_jax.data.builders import digits

  imgs, labels = digits.digit_images()
  idx = sorted(
    (i for i in range(len(labels)) if digits.split_of(i) == 'test'), key=lambda i: (labels[i], i)
  )[:6]
  out = tmp_path_factory.mktemp('images')
  paths = []
  for n, i in enumerate(idx):
    p = out / f'{n}.png'
    Image.fromarray(imgs[i]).save(p)
    paths.append(str(p))
  return paths


def test_evaluate_writes_metrics_and_confusion_matrix(model_dir, digits_dir, tmp_path):
  out = tmp_path / 'eval'
  assert (
    evaluate.main(
      [
        '--checkpoint',
        str(model_dir),
        '--dataset',
        'digits',
        '--data_dir',
        str(digits_dir),
        '--split',
        'test',
        '--output_dir',
        str(out),
      ]
    )
    == 0
  )
  m = json.loads((out / 'metrics.json').read_text())
  assert {
    'top1',
    'mean_class_accuracy',
    'per_class_accuracy',
    'confusion_matrix',
    'class_names',
  } <= set(m)
  cm = np.array(m['confusion_matrix'])
  assert cm.shape == (10, 10) and cm.sum() == 360 and m['class_names'] == CLASSES
  assert m['top1'] == pytest.approx(np.trace(cm) / 360)
  per_class = np.diag(cm) / cm.sum(1)
  assert m['mean_class_accuracy'] == pytest.approx(per_class.mean())
  assert list(m['per_class_accuracy']) == CLASSES
  png = out / 'confusion_matrix.png'
  assert png.stat().st_size > 1000
  assert Image.open(png).size[0] > 300


def test_flip_tta_classifies_by_the_mean_logits_of_image_and_mirror(digits_dir, tmp_path):
  from zenfer_jax import data

  # A classifier over standardised features (their mean and spread over the test images):
  # answers that vary from image to image and between an image and its mirror.
  model = zennet.build_model(TINY, 10, use_sa=True)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(2), 16))
  images = np.concatenate(
    [
      b['image'][0]
      for b in data.pipeline.eval_dataset(
        DataSpec(
          'digits',
          str(digits_dir),
          eval_split='test',
          image_size=16,
          per_device_batch=120,
          num_local_devices=1,
          recipe='digits',
        )
      )
    ]
  )
  feats = np.asarray(model.apply(variables, images, method=zennet.ZenNet.features)).mean((1, 2))
  mu, sigma = feats.mean(0), feats.std(0) + 1e-3
  r = np.random.default_rng(3).standard_normal((feats.shape[1], 10)).astype(np.float32)
  variables['params']['fc']['kernel'] = r / sigma[:, None]
  variables['params']['fc']['bias'] = -(mu / sigma) @ r
  card = model_directory.make_card(
    TINY, 10, use_sa=True, class_names=CLASSES, image_size=16, recipe='digits', source='test'
  )
  model_dir = model_directory.save_model_dir(str(tmp_path / 'm'), variables, card)
  kw = dict(name='digits', data_dir=str(digits_dir), split='test', batch_size=64)
  plain = evaluate.evaluate(model_dir, **kw)
  tta = evaluate.evaluate(model_dir, flip_tta=True, **kw)
  model = model_directory.build_from_card(card)
  want = np.zeros((10, 10), np.int64)
  batches = data.pipeline.eval_dataset(
    DataSpec(
      'digits',
      str(digits_dir),
      eval_split='test',
      image_size=16,
      per_device_batch=64,
      num_local_devices=1,
      recipe='digits',
    )
  )
  changed = 0
  for b in batches:
    x, mask = b['image'][0], b['mask'][0]
    one = model.apply(variables, x, train=False)
    logits = one + model.apply(variables, x[:, :, ::-1])
    for label, pred in zip(b['label'][0][mask], np.argmax(logits, -1)[mask]):
      want[label, pred] += 1
    changed += int(np.sum((np.argmax(logits, -1) != np.argmax(one, -1))[mask]))
  assert changed > 0  # The mirror changes some answers, so the comparison below can fail.
  np.testing.assert_array_equal(np.array(tta['confusion_matrix']), want)
  assert tta['flip_tta'] and not plain['flip_tta']


def test_evaluate_refuses_a_dataset_with_other_classes(model_dir, digits_dir, tmp_path, capsys):
  model = zennet.build_model(TINY, 3)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(0), 16))
  card = model_directory.make_card(TINY, 3, class_names=['a', 'b', 'c'], image_size=16)
  model_directory.save_model_dir(str(tmp_path / 'three'), variables, card)
  argv = ['--checkpoint', str(tmp_path / 'three'), '--dataset', 'digits']
  assert evaluate.main([*argv, '--data_dir', str(digits_dir)]) == 2
  assert capsys.readouterr().err.startswith('error: The model has 3 classes, digits has 10')
  assert evaluate.main(['--checkpoint', str(model_dir)]) == 2
  assert 'say which data to evaluate on with --dataset' in capsys.readouterr().err


def test_predict_preprocesses_as_evaluation_does(model_dir, digits_dir, test_images):
  from zenfer_jax import data

  batch = next(
    iter(
      data.pipeline.eval_dataset(
        DataSpec(
          'digits',
          str(digits_dir),
          eval_split='test',
          image_size=16,
          per_device_batch=6,
          num_local_devices=1,
          recipe='digits',
        )
      )
    )
  )
  variables, card = model_directory.load_model_dir(str(model_dir))
  model = model_directory.build_from_card(card)
  expected = np.asarray(jax.nn.softmax(model.apply(variables, batch['image'][0], train=False)))
  for path, image in zip(test_images, batch['image'][0]):
    np.testing.assert_allclose(predict.load_image(path, 16, 'digits'), image, atol=1e-6)
  results = predict.predict(str(model_dir), test_images, top_k=10)
  for r, probs in zip(results, expected):
    got = {p['class']: p['probability'] for p in r['predictions']}
    np.testing.assert_allclose([got[c] for c in CLASSES], probs, rtol=1e-4, atol=1e-6)


def test_predict_top_k_json_and_per_image_errors(model_dir, test_images, tmp_path, capsys):
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  missing = tmp_path / 'missing.png'
  images = [test_images[0], str(bad), str(missing), test_images[1]]
  rc = predict.main(['--checkpoint', str(model_dir), *images, '--top_k', '3', '--json'])
  assert rc == 1  # Some images failed; the others were still classified.
  results = json.loads(capsys.readouterr().out)
  assert [r['image'] for r in results] == images
  for r in (results[0], results[3]):
    probs = [p['probability'] for p in r['predictions']]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    assert all(p['class'] in CLASSES for p in r['predictions']) and sum(probs) <= 1 + 1e-6
  assert 'cannot read image' in results[1]['error'] and 'predictions' not in results[1]
  assert 'No such file' in results[2]['error']

  assert predict.main(['--checkpoint', str(model_dir), test_images[2], '--top_k', '2']) == 0
  line = capsys.readouterr().out.strip()
  assert line.startswith(test_images[2] + ': ') and line.count('%') == 2


@pytest.mark.slow  # A subprocess with TensorFlow blocked.
def test_evaluate_with_grain_runs_without_tensorflow_and_counts_as_tf_data(model_dir, tmp_path):
  """A bare accelerator image has no TensorFlow: `--loader grain` evaluates a model there, over
  the same examples with the same preprocessing, so its confusion matrix is tf.data's."""
  import os
  import subprocess
  import sys

  from train_fixtures import REPO

  from tests import no_tensorflow
  from zenfer_jax import data

  data_dir = str(tmp_path / 'tfds')
  data.prepare_dataset('digits', data_dir, file_format='both')
  want = evaluate.evaluate(
    str(model_dir), name='digits', data_dir=data_dir, split='test', batch_size=64
  )
  blocked = tmp_path / 'blocked_imports.txt'
  env = dict(os.environ)
  env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
  env = no_tensorflow.environment(tmp_path / 'no_tf', env, log=blocked)
  out = tmp_path / 'eval_grain'
  cmd = [sys.executable, '-m', 'zenfer_jax.deploy.evaluate', '--checkpoint', str(model_dir)]
  cmd += ['--dataset=digits', f'--data_dir={data_dir}', '--split=test', '--batch_size=64']
  cmd += ['--loader=grain', f'--output_dir={out}']
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = json.loads((out / 'metrics.json').read_text())
  assert got['loader'] == 'grain' and want['loader'] == 'tf.data'
  assert got['num_examples'] == want['num_examples'] == 360
  assert got['confusion_matrix'] == want['confusion_matrix']
  assert got['top1'] == pytest.approx(want['top1'])
  # Libraries probed for TensorFlow and went on without it.
  assert 'tensorflow' in blocked.read_text().split()


def test_evaluate_refuses_an_unknown_loader(model_dir, digits_dir):
  with pytest.raises(ValueError, match="loader 'torch': expected one of tf.data, grain"):
    evaluate.evaluate(
      str(model_dir), name='digits', data_dir=digits_dir, split='test', loader='torch'
    )
