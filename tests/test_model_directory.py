"""Model directories (card + orbax variables) and strict merging."""

import json
import os

import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from zenfer_jax.rundir import model_directory

STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


def _variables(seed=0):
  r = np.random.RandomState(seed)
  return {
    'params': {
      'backbone': {
        'block0': {
          'conv0': {'kernel': r.randn(3, 3, 3, 8).astype(np.float32)},
          'bn1': {'scale': r.rand(8).astype(np.float32), 'bias': r.randn(8).astype(np.float32)},
        }
      },
      'fc': {'kernel': r.randn(32, 7).astype(np.float32), 'bias': r.randn(7).astype(np.float32)},
    },
    'batch_stats': {
      'backbone': {
        'block0': {
          'bn1': {'mean': r.randn(8).astype(np.float32), 'var': r.rand(8).astype(np.float32)}
        }
      }
    },
  }


def _card(**kw):
  return model_directory.make_card(STRUCTURE, 7, use_sa=False, use_lw_att=False, **kw)


def _same(a, b):
  fa, fb = flatten_dict(a), flatten_dict(b)
  return fa.keys() == fb.keys() and all(
    np.array_equal(fa[k], fb[k]) and fa[k].dtype == fb[k].dtype for k in fa
  )


def test_save_and_load_round_trip(tmp_path):
  v = _variables()
  card = _card(class_names=list('abcdefg'), image_size=112, recipe='rafdb', source='unit test')
  out = model_directory.save_model_dir(tmp_path / 'm', v, card)
  assert sorted(os.listdir(out)) == [model_directory.CARD_NAME, model_directory.VARIABLES_NAME]
  loaded, card2 = model_directory.load_model_dir(tmp_path / 'm')
  assert _same(loaded, v) and card2 == card
  on_disk = json.loads((tmp_path / 'm' / model_directory.CARD_NAME).read_text())
  assert set(on_disk) == set(model_directory.CARD_FIELDS)
  assert os.listdir(tmp_path) == ['m']  # no temporary directories left
  model = model_directory.build_from_card(card2)
  assert model.structure_text == STRUCTURE and model.num_classes == 7


def test_existing_directory_is_refused_unless_overwrite(tmp_path):
  model_directory.save_model_dir(tmp_path / 'm', _variables(0), _card())
  with pytest.raises(model_directory.ModelDirError, match='not empty'):
    model_directory.save_model_dir(tmp_path / 'm', _variables(1), _card())
  assert _same(model_directory.load_model_dir(tmp_path / 'm')[0], _variables(0))
  model_directory.save_model_dir(tmp_path / 'm', _variables(1), _card(), overwrite=True)
  assert _same(model_directory.load_model_dir(tmp_path / 'm')[0], _variables(1))
  assert os.listdir(tmp_path) == ['m']
  (tmp_path / 'empty').mkdir()
  model_directory.save_model_dir(tmp_path / 'empty', _variables(2), _card())


def test_a_failed_save_leaves_nothing(tmp_path, monkeypatch):
  def boom(*a, **k):
    raise OSError('disk full')

  monkeypatch.setattr(model_directory.json, 'dump', boom)
  with pytest.raises(OSError, match='disk full'):
    model_directory.save_model_dir(tmp_path / 'm', _variables(), _card())
  assert os.listdir(tmp_path) == []


def test_card_validation_names_every_bad_field():
  with pytest.raises(model_directory.ModelDirError) as e:
    model_directory.validate_card(
      {'structure': STRUCTURE, 'num_classes': '7', 'use_sa': 1, 'image_size': True}
    )
  msg = str(e.value)
  assert "'num_classes' must be int" in msg and "'use_sa' must be bool" in msg
  assert "missing required field 'use_lw_att'" in msg and "'image_size' must be int or null" in msg
  with pytest.raises(model_directory.ModelDirError, match='3 names for 7 classes'):
    _card(class_names=['a', 'b', 'c'])
  with pytest.raises(model_directory.ModelDirError, match='not a valid structure'):
    model_directory.make_card('SuperConvK3BNRELU(3,8', 7)
  # Optional fields default; the structure is canonicalised.
  card = model_directory.validate_card(
    {'structure': ' ' + STRUCTURE + '\n', 'num_classes': 7, 'use_sa': False, 'use_lw_att': False}
  )
  assert card['structure'] == STRUCTURE and card['class_names'] is None and card['source'] == ''


def test_loading_something_that_is_not_a_model_dir(tmp_path):
  with pytest.raises(model_directory.ModelDirError, match='not a model directory'):
    model_directory.load_model_dir(tmp_path)
  (tmp_path / model_directory.CARD_NAME).write_text('{not json')
  with pytest.raises(model_directory.ModelDirError, match='cannot read the model card'):
    model_directory.load_model_dir(tmp_path)
  (tmp_path / model_directory.CARD_NAME).write_text(json.dumps(_card()))
  with pytest.raises(model_directory.ModelDirError, match='no variables/ checkpoint'):
    model_directory.load_model_dir(tmp_path)


def test_strict_merge_reports_everything_at_once():
  fresh = _variables(0)
  loaded = _variables(1)
  del loaded['params']['fc']['bias']
  del loaded['batch_stats']['backbone']['block0']['bn1']['var']
  loaded['params']['fc']['kernel'] = np.zeros((32, 3), np.float32)
  loaded['params']['extra'] = {'w': np.zeros(2, np.float32)}
  with pytest.raises(model_directory.MergeError) as e:
    model_directory.strict_merge(fresh, loaded)
  err = e.value
  assert err.missing == ['params/fc/bias', 'batch_stats/backbone/block0/bn1/var']
  assert err.unexpected == ['params/extra/w']
  assert err.misshaped == [('params/fc/kernel', (32, 3), (32, 7))]
  for p in ('params/fc/bias', 'params/extra/w', 'params/fc/kernel: (32, 3) vs (32, 7)'):
    assert p in str(err)


def test_strict_merge_skip_patterns_keep_fresh_values():
  fresh = _variables(0)
  loaded = _variables(1)
  loaded['params']['fc'] = {'kernel': np.zeros((32, 3), np.float32)}  # another head: ignored
  merged = model_directory.strict_merge(fresh, loaded, skip_patterns=('fc/*',))
  assert np.array_equal(merged['params']['fc']['kernel'], fresh['params']['fc']['kernel'])
  assert np.array_equal(
    merged['params']['backbone']['block0']['conv0']['kernel'],
    loaded['params']['backbone']['block0']['conv0']['kernel'],
  )
  # Collection-qualified patterns work too; loaded values are cast to the fresh dtype.
  loaded = _variables(1)
  loaded['batch_stats']['backbone']['block0']['bn1']['mean'] = np.ones(8, np.float64)
  merged = model_directory.strict_merge(fresh, loaded, skip_patterns=['params/fc/*'])
  assert merged['batch_stats']['backbone']['block0']['bn1']['mean'].dtype == np.float32
  assert _same(model_directory.strict_merge(fresh, fresh), fresh)
