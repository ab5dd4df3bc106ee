"""benchmarks.step_profile: op times summed from a real jax.profiler trace, grouped by kind and
traced back to the layers that made them."""

import json
import os

import pytest

from benchmarks import step_profile

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


def test_kind_strips_only_the_numeric_suffix():
  assert step_profile.op_kind('ynn_fusion.40') == 'ynn_fusion'
  assert step_profile.op_kind('transpose_copy_fusion') == 'transpose_copy_fusion'
  assert step_profile.op_kind('cond.98.clone') == 'cond.98.clone'


def test_op_times_sum_complete_events_and_skip_the_executor():
  events = [
    {'ph': 'X', 'name': 'ynn_fusion.1', 'dur': 10},
    {'ph': 'X', 'name': 'ynn_fusion.1', 'dur': 5},
    {'ph': 'X', 'name': 'ynn_fusion.2', 'dur': 7},
    {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'dur': 100},
    {'ph': 'X', 'name': '$api.py:2479 block_until_ready', 'dur': 100},
    {'ph': 'B', 'name': 'copy.3'},
  ]
  total, calls = step_profile.op_times(events)
  assert total == {'ynn_fusion.1': 15.0, 'ynn_fusion.2': 7.0}
  assert calls['ynn_fusion.1'] == 2
  (row,) = step_profile.by_kind(total, calls, steps=2)
  assert row == {'kind': 'ynn_fusion', 'ms_per_step': pytest.approx(0.011), 'calls_per_step': 1.5}


def test_layer_names_the_block_and_the_direction():
  name = 'jit(step)/transpose(jvp(ZenNet))/ZenNet.features/backbone/block1/layer0/bn4/div'
  assert step_profile._layer(name) == 'backward block1/layer0/bn4'
  assert (
    step_profile._layer(
      'jit(step)/jvp(ZenNet)/ZenNet.features/backbone/block2/layer0/conv0/dot_general'
    )
    == 'block2/layer0/conv0'
  )


@pytest.mark.slow
def test_profile_of_a_real_step(tmp_path, monkeypatch):
  # main() pins threads through the environment; restore it for the tests after this one.
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'TF_CPP_MIN_LOG_LEVEL'):
    monkeypatch.setenv(var, os.environ.get(var, ''))
  out = tmp_path / 'p.json'
  # Every op, not the slowest few: at a 2 ms step which ops are slowest is noise, and the
  # check below needs one that a block made.
  args = [
    '--structure',
    TINY,
    '--resolution',
    '16',
    '--batch',
    '2',
    '--steps',
    '2',
    '--top',
    '1000',
  ]
  assert step_profile.main([*args, '--out', str(out)]) == 0
  rep = json.loads(out.read_text(encoding='utf-8'))
  kinds = rep['by_kind']
  assert kinds and all(r['ms_per_step'] > 0 for r in kinds)
  assert sum(r['ms_per_step'] for r in kinds) == pytest.approx(rep['ops_ms_per_step'], rel=1e-6)
  assert [r['ms_per_step'] for r in kinds] == sorted(
    (r['ms_per_step'] for r in kinds), reverse=True
  )
  # The ops run inside the step: their sum cannot exceed the traced steps' wall time by much.
  assert rep['ops_ms_per_step'] < 3 * rep['step_ms_untraced'] + 50
  assert len(kinds) <= len(rep['top_ops']) < 1000  # each kind has an op; none cut off
  top_ms = [o['ms_per_step'] for o in rep['top_ops']]
  assert top_ms == sorted(top_ms, reverse=True)
  assert sum(top_ms) == pytest.approx(rep['ops_ms_per_step'], rel=1e-6)
  assert all(o['shape'] for o in rep['top_ops'])
  assert any(
    layer.split(' ')[-1].startswith('block') for o in rep['top_ops'] for layer in o['layers']
  )
  assert (tmp_path / 'p.md').read_text(encoding='utf-8').count('\n| `') == min(12, len(kinds))
