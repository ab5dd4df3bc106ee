"""benchmarks.layer_compare: the model's own conv and BatchNorm shapes, each timed on every side
with gradients that agree, adding up to per-step totals."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from benchmarks import layer_compare
from zenfer_jax.model import zennet

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


def _param_layers(structure: str, resolution: int) -> tuple[int, int]:
  """Convs and BatchNorms counted from the initialised parameters, independently of the
  interception: 4-D kernels are convs, `scale` vectors beside a running mean are BatchNorms."""
  model = zennet.build_model(structure, 7, use_sa=True)
  variables = zennet.init_variables(model, jax.random.PRNGKey(0), resolution)
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  stats = traverse_util.flatten_dict(variables['batch_stats'], sep='/')
  convs = sum(1 for k, v in flat.items() if k.endswith('kernel') and np.ndim(v) == 4)
  bns = sum(1 for k in stats if k.endswith('/mean'))
  return convs, bns


def test_shapes_are_the_models_own_layers():
  rows = layer_compare.layer_shapes(TINY, 16, 2)
  convs, bns = _param_layers(TINY, 16)
  assert sum(r['count'] for r in rows if r['kind'] == 'conv') == convs
  assert sum(r['count'] for r in rows if r['kind'] == 'batchnorm') == bns
  stem = rows[0]
  assert (stem['kind'], stem['input'], stem['cout'], stem['kernel'], stem['stride']) == (
    'conv',
    [2, 16, 16, 3],
    8,
    3,
    2,
  )
  assert not stem['input_grad']
  assert all(r['input_grad'] for r in rows[1:])
  # The stride-2 3x3 of the residual block reads the stem's 8x8 output; its shortcut is a
  # stride-2 1x1 projection 8->16; the last layer is the 1x1 16->32 head conv.
  keys = {(r['kind'], tuple(r['input']), r['cout'], r['kernel'], r['stride']) for r in rows}
  assert ('conv', (2, 8, 8, 8), 8, 3, 2) in keys
  assert ('conv', (2, 8, 8, 8), 16, 1, 2) in keys
  assert ('conv', (2, 4, 4, 16), 32, 1, 1) in keys
  assert len(keys) == len(rows)  # one row per distinct shape


def test_zennet_r_at_48_px_has_nine_7x7_convs_at_6x6():
  rows = layer_compare.layer_shapes('zennet_r', 48, 64)
  convs, bns = _param_layers('zennet_r', 48)
  assert sum(r['count'] for r in rows if r['kind'] == 'conv') == convs
  assert sum(r['count'] for r in rows if r['kind'] == 'batchnorm') == bns
  (row,) = [
    r for r in rows if r['kind'] == 'conv' and r['kernel'] == 7 and r['input'][1:3] == [6, 6]
  ]
  assert (row['cin'], row['cout'], row['stride'], row['count']) == (16, 16, 1, 9)


def test_per_step_totals_weight_rows_by_count():
  rows = [
    {'kind': 'conv', 'count': 2, 'ms': dict.fromkeys(layer_compare.SIDES, 1.5)},
    {'kind': 'batchnorm', 'count': 3, 'ms': dict.fromkeys(layer_compare.SIDES, 0.5)},
  ]
  rows[0]['ms']['jax_auto'] = 4.0
  tot = layer_compare.summarize_rows(rows)
  assert tot['conv']['jax_auto'] == pytest.approx(8.0)
  assert tot['conv']['torch_nchw'] == pytest.approx(3.0)
  assert tot['batchnorm']['jax_xla'] == pytest.approx(1.5)
  assert tot['all']['jax_auto'] == pytest.approx(9.5)


@pytest.mark.slow
def test_a_real_comparison(tmp_path):
  out = tmp_path / 'lc.json'
  args = ['--structure', TINY, '--resolution', '16', '--batch', '2', '--reps', '1']
  assert layer_compare.main([*args, '--min_rep_ms', '1', '--out', str(out)]) == 0
  rep = json.loads(out.read_text(encoding='utf-8'))
  assert len(rep['rows']) == len(layer_compare.layer_shapes(TINY, 16, 2))
  for r in rep['rows']:
    assert set(r['ms']) == set(layer_compare.SIDES)
    assert all(v > 0 for v in r['ms'].values())
    # Same weights, same cotangent: every side's gradient is the model kernel's.
    assert max(r['grad_rel_diff'].values()) < 1e-4, r
    best = min(r['ms']['torch_nchw'], r['ms']['torch_channels_last'])
    assert r['torch_best_over_jax_auto'] == pytest.approx(best / r['ms']['jax_auto'])
  for kind, tot in layer_compare.summarize_rows(rep['rows']).items():
    assert rep['per_step_ms'][kind] == pytest.approx(tot)
  md = (tmp_path / 'lc.md').read_text(encoding='utf-8')
  assert '(stem)' in md and '**all, per step**' in md
