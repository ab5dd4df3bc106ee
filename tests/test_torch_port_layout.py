"""Key layout: the reference model's state_dict and the Flax tree a checkpoint converts to."""

import json
import pathlib

import jax
import numpy as np
import pytest
import torch

from torch_port import export_state_dict, load_torch_checkpoint, mapping
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax.model.zennet import build_model, init_variables

torch.set_num_threads(1)

REF_DIR = pathlib.Path(__file__).parent / 'reference'
FACTS = json.loads((REF_DIR / 'model_facts.json').read_text())
CONFIGS = sorted(FACTS)
# state_dict_<file>.json -> model_facts entry it was measured on
STATE_DICT_FILES = {
  'ZenNet-M-SA': 'ZenNet-M-SA',
  'ZenNet-R-SA': 'ZenNet-R-SA',
  'ZenNet-R-SA_lw_att': 'ZenNet-R-SA+lw_att',
  'mixed-families-SA': 'mixed-families-SA',
}


def _build(name, **kw):
  f = FACTS[name]
  return build_reference_model(
    f['structure'], f['num_classes'], use_sa=f['use_sa'], use_lw_att=f['use_lw_att'], **kw
  )


def _flags(name):
  f = FACTS[name]
  return f['structure'], f['num_classes'], dict(use_sa=f['use_sa'], use_lw_att=f['use_lw_att'])


@pytest.mark.parametrize('file_name', sorted(STATE_DICT_FILES))
def test_state_dict_keys_order_and_shapes_equal_the_original(file_name):
  want = json.loads((REF_DIR / f'state_dict_{file_name}.json').read_text())
  got = [(k, list(v.shape)) for k, v in _build(STATE_DICT_FILES[file_name]).state_dict().items()]
  assert got == [(k, v) for k, v in want.items()]


@pytest.mark.parametrize('name', CONFIGS)
def test_parameter_count_and_mapping_table(name):
  model = _build(name)
  assert sum(p.numel() for p in model.parameters()) == FACTS[name]['trainable_params']
  structure, classes, flags = _flags(name)
  table = mapping.entries(structure, classes, **flags)
  assert [(e.torch_key, e.torch_shape) for e in table] == [
    (k, tuple(v.shape)) for k, v in model.state_dict().items()
  ]


# Flax's apply ignores unused variables, so the tree must be checked whole. These
# four cover every block family with and without SA and lw_att.
@pytest.mark.parametrize(
  'name', ['ZenNet-M-SA+lw_att', 'ZenNet-R', 'mixed-families-SA', 'mixed-families']
)
def test_converted_tree_is_exactly_the_flax_models_tree(name):
  structure, classes, flags = _flags(name)
  model = _build(name)
  variables = load_torch_checkpoint(model.state_dict(), structure, classes, **flags)
  flax_model = build_model(structure, classes, conv_impl='xla', **flags)
  shapes = jax.eval_shape(lambda: init_variables(flax_model, jax.random.PRNGKey(0), 32))
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(dict(shapes))
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves(shapes)
  ):
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32, path


@pytest.mark.parametrize('name', CONFIGS)
def test_round_trips_are_exact(name):
  structure, classes, flags = _flags(name)
  model = randomize_(_build(name), seed=CONFIGS.index(name))
  sd = model.state_dict()
  variables = load_torch_checkpoint(sd, structure, classes, **flags)
  exported = export_state_dict(variables, structure, classes, **flags)
  assert list(exported) == list(sd)
  for k, v in sd.items():
    if k.endswith('num_batches_tracked'):
      assert exported[k].dtype == torch.long and exported[k].shape == ()
    else:
      assert exported[k].dtype == v.dtype and torch.equal(exported[k], v), k
  # export -> load -> export is bit-for-bit.
  again = export_state_dict(
    load_torch_checkpoint(exported, structure, classes, **flags), structure, classes, **flags
  )
  assert all(torch.equal(again[k], exported[k]) for k in exported)
  # And the original's strict load accepts it.
  fresh = _build(name)
  fresh.load_state_dict(exported, strict=True)


def test_depthwise_and_dense_layouts():
  """A depthwise (C,1,k,k) kernel becomes (k,k,1,C); the classifier (out,in) becomes (in,out)."""
  structure = 'SuperConvK3BNRELU(3,8,2,1)SuperResIDWE1K5(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
  model = randomize_(build_reference_model(structure, 5), seed=1)
  variables = load_torch_checkpoint(model.state_dict(), structure, 5)
  dw = model.module_list[1].module_list[0].module_list[3].netblock.weight.detach().numpy()
  assert dw.shape == (8, 1, 5, 5)
  flax_dw = variables['params']['backbone']['block1']['layer0']['conv3']['kernel']
  assert flax_dw.shape == (5, 5, 1, 8)
  assert flax_dw[1, 3, 0, 6] == dw[6, 0, 1, 3]
  fc = model.fc_linear.netblock.weight.detach().numpy()
  assert variables['params']['fc']['kernel'][4, 2] == fc[2, 4]


def test_export_is_strict_about_the_variables_tree():
  from zenfer_jax.rundir.model_directory import MergeError

  structure, classes, flags = _flags('mixed-families-SA')
  variables = load_torch_checkpoint(
    _build('mixed-families-SA').state_dict(), structure, classes, **flags
  )
  params = dict(variables['params'])
  params['fc'] = {'kernel': np.zeros((256, 8), np.float32)}  # wrong head, bias missing
  params['extra'] = {'w': np.zeros(3, np.float32)}
  with pytest.raises(MergeError) as e:
    export_state_dict(
      {'params': params, 'batch_stats': variables['batch_stats']}, structure, classes, **flags
    )
  assert e.value.missing == ['params/fc/bias'] and e.value.unexpected == ['params/extra/w']
  assert e.value.misshaped == [('params/fc/kernel', (256, 8), (256, 7))]
  with pytest.raises(MergeError, match='variables tree has these'):
    export_state_dict(variables, structure, classes, use_sa=False)
