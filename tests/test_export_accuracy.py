"""benchmarks.export_accuracy: top-1 of a model and its exports on a prepared split.

A tiny model (random convolutions, least-squares head) on the prepared digits split (360 test images, 16 px): the model dir's
figure must equal `zenfer_jax.deploy.evaluate`'s on the same split, and its StableHLO export (the
quickest format to write) must predict the same classes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import export_accuracy
from zenfer_jax.data import pipeline
from zenfer_jax.data.spec import DataSpec
from zenfer_jax.deploy import evaluate
from zenfer_jax.deploy import export as export_lib
from zenfer_jax.rundir import model_directory

STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
DIGITS = [str(i) for i in range(10)]
SIZE = 16


def _model_dir(path, class_names, digits_dir=None, seed=0) -> str:
  """Random convolutions; with `digits_dir`, a least-squares classifier on their pooled features.

  A purely random model gives nearly every image the same class, so a label paired with the
  wrong image would go unnoticed; the fitted head makes each prediction depend on the image.
  """
  card = model_directory.make_card(
    STRUCTURE,
    len(class_names),
    use_sa=True,
    class_names=class_names,
    image_size=SIZE,
    recipe='digits',
  )
  model = model_directory.build_from_card(card)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  variables = jax.tree_util.tree_map(np.asarray, dict(variables))
  if digits_dir is not None:
    feats, labels = [], []
    for b in pipeline.eval_dataset(
      DataSpec(
        'digits',
        digits_dir,
        eval_split='train',
        image_size=SIZE,
        per_device_batch=500,
        num_local_devices=1,
        recipe='digits',
      )
    ):
      keep = b['mask'].reshape(-1)
      x = b['image'].reshape(-1, SIZE, SIZE, 3)[keep]
      f = model.apply(variables, x, train=False, method=model.features)
      feats.append(np.asarray(f).mean(axis=(1, 2)))
      labels.append(b['label'].reshape(-1)[keep])
    x = np.concatenate(feats)
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    y = np.eye(len(class_names), dtype=np.float32)[np.concatenate(labels)]
    w = np.linalg.lstsq(x, y, rcond=None)[0]
    variables['params']['fc'] = {'kernel': w[:-1], 'bias': w[-1]}
  return model_directory.save_model_dir(str(path), variables, card)


def test_model_dir_matches_evaluate_and_its_export_predicts_the_same(tmp_path, digits_dir):
  model = _model_dir(tmp_path / 'model', DIGITS, digits_dir)
  hlo = str(tmp_path / 'model.stablehlo')
  export_lib.export(model, 'stablehlo', hlo)
  rows = export_accuracy.measure([model, hlo], 'digits', digits_dir, batch_size=50)

  want = evaluate.evaluate(model, name='digits', data_dir=digits_dir, split='test')
  cm = np.asarray(want['confusion_matrix'])
  assert rows[0]['total'] == cm.sum() == 360  # every test image once, padding left out
  assert rows[0]['correct'] == np.trace(cm)
  assert rows[0]['top1'] == pytest.approx(want['top1'])
  # The predictions depend on the image (else a label paired with the wrong image would pass).
  assert rows[0]['top1'] > 0.5 and (cm.sum(axis=0) > 0).all()
  assert (rows[0]['format'], rows[1]['format']) == ('flax', 'stablehlo')
  assert rows[1]['correct'] == rows[0]['correct']
  assert rows[1]['agreement_with_first'] == 1.0
  assert rows[1]['bytes'] == (tmp_path / 'model.stablehlo').stat().st_size
  table = export_accuracy.markdown(rows)
  assert f'{rows[0]["correct"]}/360' in table and 'model.stablehlo' in table


def test_models_of_other_classes_are_refused(tmp_path, digits_dir, capsys):
  other = _model_dir(tmp_path / 'letters', ['a', 'b', 'c'])
  argv = ['--dataset', 'digits', '--data_dir', digits_dir, other]
  assert export_accuracy.main(argv) == 2
  err = capsys.readouterr().err
  assert "['a', 'b', 'c']" in err and 'same order required' in err
