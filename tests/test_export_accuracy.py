"""benchmarks.export_accuracy: top-1 of a model and its exports on a prepared split.

A tiny random model on the prepared digits split (360 test images, 16 px): the model dir's
figure must equal `zenfer_jax.evaluate`'s on the same split, and its StableHLO export (the
quickest format to write) must predict the same classes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import export_accuracy
from zenfer_jax import data, evaluate, model_directory
from zenfer_jax import export as export_lib

STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
DIGITS = [str(i) for i in range(10)]
SIZE = 16


def _model_dir(path, class_names, seed=0) -> str:
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
  return model_directory.save_model_dir(str(path), dict(variables), card)


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('digits'))
  data.prepare('digits', d)
  return d


def test_model_dir_matches_evaluate_and_its_export_predicts_the_same(tmp_path, digits_dir):
  model = _model_dir(tmp_path / 'model', DIGITS, seed=3)
  hlo = str(tmp_path / 'model.stablehlo')
  export_lib.export(model, 'stablehlo', hlo)
  rows = export_accuracy.measure([model, hlo], 'digits', digits_dir, batch_size=50)

  want = evaluate.evaluate(model, name='digits', data_dir=digits_dir, split='test')
  cm = np.asarray(want['confusion_matrix'])
  assert rows[0]['total'] == cm.sum() == 360  # every test image once, padding left out
  assert rows[0]['correct'] == np.trace(cm)
  assert rows[0]['top1'] == pytest.approx(want['top1'])
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
