"""A model card says how its inputs are preprocessed, and nothing downstream guesses it.

A converted AffectNet checkpoint used to get `"recipe": null`, and predict then fell back to the
RAF-DB preprocessing (the whole image squashed to 224x224) where AffectNet's is the shorter side
resized and a centre crop: inputs off by up to 3.9 normalised units. Now the recipe follows the
dataset (or --recipe), and predict and export refuse a card without one unless told.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from torch_port import convert as convert_cli
from torch_port import export as export_cli
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax import dataset_names
from zenfer_jax.data import pipeline
from zenfer_jax.deploy import predict
from zenfer_jax.model.structure import preset_text
from zenfer_jax.rundir import model_directory

torch.set_num_threads(1)

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


@pytest.fixture(scope='module')
def pth(tmp_path_factory):
  path = tmp_path_factory.mktemp('ckpt') / 'model.pth'
  torch.save(randomize_(build_reference_model(TINY, 8), seed=1).state_dict(), path)
  return path


def _convert(pth, out, *extra) -> dict:
  argv = ['--checkpoint', str(pth), '--structure', TINY, '--num_classes', '8']
  argv += ['--image_size', '32', '--output', str(out), *extra]
  assert convert_cli.main(argv) == 0
  return json.loads((out / model_directory.CARD_NAME).read_text())


def test_the_recipe_follows_the_dataset_or_recipe(pth, tmp_path, capsys):
  assert _convert(pth, tmp_path / 'a', '--dataset', 'affectnet/8cls')['recipe'] == 'affectnet'
  card = _convert(pth, tmp_path / 'b', '--class_names', ','.join('abcdefgh'), '--recipe', 'rafdb')
  assert card['recipe'] == 'rafdb'
  # Explicit beats the dataset's own (said aloud on stderr).
  assert (
    _convert(pth, tmp_path / 'c', '--dataset', 'affectnet/8cls', '--recipe', 'rafdb')['recipe']
    == 'rafdb'
  )
  capsys.readouterr()
  assert _convert(pth, tmp_path / 'd')['recipe'] is None
  assert 'records no preprocessing recipe' in capsys.readouterr().err


def test_predict_uses_the_affectnet_recipe_of_a_converted_affectnet_model(pth, tmp_path):
  d = tmp_path / 'affectnet'
  _convert(pth, d, '--dataset', 'affectnet/8cls')
  p = predict.Predictor(str(d))
  assert p.recipe == 'affectnet' and p.image_size == 32
  wide = np.random.default_rng(0).integers(0, 256, (40, 80, 3), np.uint8)
  path = tmp_path / 'wide.png'
  Image.fromarray(wide).save(path)
  got = predict.load_image(str(path), p.image_size, p.recipe)
  np.testing.assert_allclose(got, pipeline.preprocess_for_eval(wide, 32, 'affectnet'), atol=1e-6)
  squashed = pipeline.preprocess_for_eval(wide, 32, 'rafdb')
  assert np.abs(got - squashed).max() > 0.5  # the two recipes really differ on such an image


def test_recipe_names_agree_with_the_pipeline():
  assert dataset_names.RECIPE_NAMES == tuple(pipeline.RECIPES)
  assert dataset_names.DEFAULT_RECIPES == pipeline.DEFAULT_RECIPE
  assert dataset_names.default_recipe('affectnet/7cls_crop') == 'affectnet'


def test_make_card_takes_what_build_model_takes():
  card = model_directory.make_card('zennet_m', 7, use_sa=True, recipe='rafdb')
  assert card['structure'] == model_directory.make_card(preset_text('zennet_m'), 7)['structure']
  with pytest.raises(model_directory.ModelDirError, match='structure'):
    model_directory.make_card('zennet_q', 7)
  with pytest.raises(model_directory.ModelDirError, match='recipe'):
    model_directory.make_card(TINY, 7, recipe='imagenet')


def test_wrapped_export_says_what_it_is_for(capsys):
  with pytest.raises(SystemExit):
    export_cli.main(['--help'])
  text = ' '.join(capsys.readouterr().out.split())
  assert '--load_parameters_from' in text and 'not its --resume' in text
