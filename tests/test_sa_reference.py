"""The SA block against a literal PyTorch transcription of the reference algorithm.

torch_port's parity tests cover whole networks; this pins the block itself, including the one
uneven split the reference accepts (3 channels per group: torch.chunk gives 2 + 1 and the single
gate parameter broadcasts over the 2).
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from zenfer_jax.model.layers.attention import ShuffleAttention
from zenfer_jax.model.structure import StructureError
from zenfer_jax.model.zennet import build_model


def _reference_sa(x, groups, cw, cb, sw, sb, gw, gb):
  """NCHW, step by step as the reference describes it (reshape, chunk, gates, cat, shuffle)."""
  b, c, h, w = x.shape
  x = x.reshape(b * groups, -1, h, w)
  x0, x1 = x.chunk(2, dim=1)
  xn = x0 * torch.sigmoid(cw * x0.mean(dim=(2, 3), keepdim=True) + cb)
  gn = torch.nn.functional.group_norm(x1, x1.shape[1], gw, gb, eps=1e-5)
  xs = x1 * torch.sigmoid(sw * gn + sb)
  out = torch.cat([xn, xs], dim=1).reshape(b, -1, h, w)
  return out.reshape(b, 2, -1, h, w).permute(0, 2, 1, 3, 4).reshape(b, -1, h, w)


@pytest.mark.parametrize('channels, groups', [(96, 4), (8, 4), (12, 4), (192, 8), (24, 8)])
def test_sa_block_matches_reference_algorithm(channels, groups):
  rng = np.random.default_rng(channels)
  x = rng.normal(size=(2, channels, 5, 6)).astype(np.float32)
  half = channels // groups // 2
  p = {
    k: rng.normal(size=(half,)).astype(np.float32)
    for k in ('cweight', 'cbias', 'sweight', 'sbias', 'gn_scale', 'gn_bias')
  }

  def t(k):
    return torch.from_numpy(p[k]).reshape(1, half, 1, 1)

  expected = _reference_sa(
    torch.from_numpy(x),
    groups,
    t('cweight'),
    t('cbias'),
    t('sweight'),
    t('sbias'),
    torch.from_numpy(p['gn_scale']),
    torch.from_numpy(p['gn_bias']),
  ).numpy()
  got = ShuffleAttention(groups=groups).apply({'params': p}, jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def test_uneven_width_builds_and_other_odd_widths_are_rejected():
  build_model('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,1,12,1)', 7, use_sa=True)
  with pytest.raises(StructureError, match='multiple of 8'):
    build_model('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,1,20,1)', 7, use_sa=True)


def test_uneven_sa_network_converts_from_pytorch_with_equal_logits():
  from torch_port import load_torch_checkpoint
  from torch_port.reference_model import build_reference_model, randomize_

  structure = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,24,2,12,1)SuperConvK1BNRELU(24,24,1,1)'
  torch.manual_seed(0)
  x = torch.randn(2, 3, 20, 20)
  ref = build_reference_model(structure, 5, use_sa=True, use_lw_att=True)
  randomize_(ref, seed=1, calibration_batch=x)
  ref.eval()
  with torch.no_grad():
    expected = ref(x).numpy()
  variables = load_torch_checkpoint(ref.state_dict(), structure, 5, use_sa=True, use_lw_att=True)
  model = build_model(structure, 5, use_sa=True, use_lw_att=True)
  got = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(
    np.asarray(got), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max()
  )
