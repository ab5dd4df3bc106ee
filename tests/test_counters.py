"""The reference counters must match the original code's own values exactly."""

import pytest

from zenfer_jax.model import counters, describe
from zenfer_jax.model.structure import parse

CONFIGS = [
  'ZenNet-M',
  'ZenNet-M+lw_att',
  'ZenNet-M-SA',
  'ZenNet-M-SA+lw_att',
  'ZenNet-R',
  'ZenNet-R+lw_att',
  'ZenNet-R-SA',
  'ZenNet-R-SA+lw_att',
  'mixed-families',
  'mixed-families-SA',
  'mixed-families-SA+lw_att',
]


def test_every_listed_configuration_is_covered(model_facts):
  assert sorted(model_facts) == sorted(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_counters_equal_reference(model_facts, name):
  f = model_facts[name]
  s = parse(f['structure'])
  kw = dict(num_classes=f['num_classes'], use_sa=f['use_sa'])
  assert counters.flops(s, 224, **kw) == f['reference_flops_counter_224']
  assert counters.flops(s, 112, **kw) == f['reference_flops_counter_112']
  assert counters.model_size(s, **kw) == f['reference_model_size_counter']
  assert counters.num_layers(s) == f['num_layers']


def test_counters_refuse_unparsed_text():
  with pytest.raises(TypeError, match='parsed Structure'):
    counters.flops('SuperConvK1BNRELU(3,8,1,1)', 10)


def test_classifier_terms():
  s = parse('SuperConvK1BNRELU(3,8,1,1)')
  # conv 3*8*1*1*r^2 + BN r^2*8 + fc 8*K; size 24 + 8 + 8*K + 1 (the reference's single bias term).
  assert counters.flops(s, 10, num_classes=5) == 3 * 8 * 100 + 100 * 8 + 8 * 5
  assert counters.model_size(s, num_classes=5) == 24 + 8 + 40 + 1


def test_projection_quirk_counts_stride2_shortcut_at_quarter_size():
  # One KXKX layer with stride 2 at r=8 -> output 4; the shortcut is counted at (4/2)^2.
  s = parse('SuperResK3K3(3,8,2,4,1)')
  f = counters.flops(s, 8, num_classes=1)
  body = 3 * 4 * 9 * 64 // 4 + 16 * 4 + 4 * 8 * 9 * 16 + 16 * 8
  shortcut = 3 * 8 * 2.0**2 + 2.0**2 * 8
  assert f == body + shortcut + 8


def test_describe_totals_match_counters(model_facts):
  f = model_facts['ZenNet-R-SA']
  info = describe.describe('zennet_r', resolution=224, use_sa=True)
  assert info['total_params'] == f['trainable_params']
  assert info['reference_flops'] == f['reference_flops_counter_224']
  assert [r['output_shape'] for r in info['rows']][-1] == (28, 28, 192)
  assert (
    sum(r['reference_flops'] for r in info['rows']) + 192 * 7 == f['reference_flops_counter_224']
  )
  text = describe.format_table(info)
  assert '327,339' in text and 'SuperResK1K7K1' in text


def test_describe_cli_rejects_bad_structure(capsys):
  rc = describe.main(['--structure', 'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,3,8,1)'])
  assert rc == 2
  assert 'stride must be 1 or 2, got 3' in capsys.readouterr().err
