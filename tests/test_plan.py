"""zenfer_jax.model.plan: a structure expanded into the reference network's exact layer plan."""

from __future__ import annotations

import re

import jax
import pytest
from flax import traverse_util

from zenfer_jax.model import plan as P
from zenfer_jax.model import zennet
from zenfer_jax.model.structure import Block, StructureError, parse


def _parse_block(text: str) -> Block:
  """One block, even one that could not open a network (its input is not RGB)."""
  cin = int(re.search(r'\((\d+),', text).group(1))
  stem = f'SuperConvK3BNRELU(3,{cin},1,1)' if cin != 3 else ''
  return parse(stem + text)[-1]


def _block(text: str, **kw) -> P.BlockPlan:
  return P.expand_block(0, _parse_block(text), **kw)


def test_conv_block_numbers_conv_bn_relu_and_strides_only_its_first_sub_layer():
  bp = _block('SuperConvK3BNRELU(3,8,2,2)')
  assert bp.ops == (
    P.ConvOp(0, 3, 8, 3, 2),
    P.BNOp(1, 8),
    P.ReLUOp(2),
    P.ConvOp(3, 8, 8, 3, 1),
    P.BNOp(4, 8),
    P.ReLUOp(5),
  )
  no_bn = _block('SuperConvK3BNRELU(3,8,2,2)', no_bn=True)
  assert no_bn.ops == (P.ConvOp(0, 3, 8, 3, 2), P.ReLUOp(1), P.ConvOp(2, 8, 8, 3, 1), P.ReLUOp(3))


def test_k1kxk1_sub_layer_is_two_residual_layers_each_followed_by_a_relu():
  bp = _block('SuperResK1K3K1(8,16,2,8,1)', use_sa=True)
  first, relu0, second, relu1 = bp.ops
  assert (relu0, relu1) == (P.ReLUOp(1), P.ReLUOp(3))
  assert (first.index, first.in_channels, first.out_channels, first.stride) == (0, 8, 16, 2)
  assert (second.index, second.in_channels, second.out_channels, second.stride) == (2, 16, 16, 1)
  assert first.projection and not second.projection  # Stride 2 and 8 -> 16; then neither.
  assert first.ops == (
    P.ConvOp(0, 8, 8, 1, 1),
    P.BNOp(1, 8),
    P.ReLUOp(2),
    P.ConvOp(3, 8, 8, 3, 2),  # The stride sits on the KxK conv.
    P.BNOp(4, 8),
    P.ReLUOp(5),
    P.SAOp(6, 8, 4),
    P.ConvOp(7, 8, 16, 1, 1),
    P.BNOp(8, 16, last_in_residual=True),  # Only the branch's last BN: `custom` init zeroes it.
  )
  assert second.ops[0] == P.ConvOp(0, 16, 8, 1, 1)
  assert second.ops[3] == P.ConvOp(3, 8, 8, 3, 1)


def test_without_sa_the_indices_close_up():
  (first, *_) = _block('SuperResK1K3K1(8,16,2,8,1)').ops
  assert [type(op).__name__ for op in first.ops].count('SAOp') == 0
  assert first.ops[-2:] == (P.ConvOp(6, 8, 16, 1, 1), P.BNOp(7, 16, last_in_residual=True))


def test_kxkx_first_layer_always_projects():
  bp = _block('SuperResK3K3(8,8,1,8,2)')
  layers = [op for op in bp.ops if isinstance(op, P.ResidualOp)]
  assert len(layers) == 2  # One residual layer per sub-layer in this family.
  assert layers[0].projection  # Stride 1 and 8 -> 8, yet projected, as the reference does.
  assert not layers[1].projection
  assert [op.kernel_size for op in layers[0].ops if isinstance(op, P.ConvOp)] == [3, 3]


def test_idw_expands_with_rounded_depthwise_widths():
  bp = _block('SuperResIDWE2K3(8,16,2,8,1)')
  first, _, second, _ = bp.ops
  convs = [op for op in first.ops if isinstance(op, P.ConvOp)]
  # 8 x 2 = 16 expanded channels, depthwise at stride 2, back to the bottleneck of 8.
  assert convs == [
    P.ConvOp(0, 8, 16, 1, 1),
    P.ConvOp(3, 16, 16, 3, 2, 16),
    P.ConvOp(6, 16, 8, 1, 1),
  ]
  assert [c.depthwise for c in convs] == [False, True, False]
  convs = [op for op in second.ops if isinstance(op, P.ConvOp)]
  assert convs == [
    P.ConvOp(0, 8, 32, 1, 1),
    P.ConvOp(3, 32, 32, 3, 1, 32),
    P.ConvOp(6, 32, 16, 1, 1),
  ]
  assert first.projection and second.projection  # Stride 2; then 8 -> 16.


def test_no_reslink_drops_projections_and_the_last_bn_flag():
  bp = _block('SuperResK1K3K1(8,16,2,8,1)', no_reslink=True)
  for layer in (op for op in bp.ops if isinstance(op, P.ResidualOp)):
    assert not layer.projection
    assert not any(getattr(op, 'last_in_residual', False) for op in layer.ops)


def test_sa_groups_and_the_widths_sa_runs_on():
  assert {P.sa_groups(c) for c in (8, 16, 32, 64, 256, 1024)} == {4}
  assert [P.sa_width_ok(c, 4) for c in (8, 12, 16, 20, 6)] == [True, True, True, False, False]
  with pytest.raises(
    StructureError, match=r'block 3 \(SuperResK3K3\(8,20,1,20,1\)\).*multiple of 8'
  ):
    P.expand_block(3, _parse_block('SuperResK3K3(8,20,1,20,1)'), use_sa=True)
  P.expand_block(3, _parse_block('SuperResK3K3(8,20,1,20,1)'), use_sa=False)  # No SA, no rule.


def test_expand_numbers_blocks_in_order():
  structure = parse(
    'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
  )
  assert [bp.index for bp in P.expand(structure)] == [0, 1, 2]
  assert [bp.block for bp in P.expand(structure)] == list(structure)


def test_the_flax_model_names_its_parameters_by_plan_index():
  text = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)'
  model = zennet.build_model(text, 10, use_sa=True)
  shapes = jax.eval_shape(lambda r: zennet.init_variables(model, r, 16), jax.random.PRNGKey(0))
  params = traverse_util.flatten_dict(shapes['params'], sep='/')
  expected = set()
  for bp in P.expand(parse(text), use_sa=True):
    for op in bp.ops:
      if isinstance(op, P.ConvOp):
        expected.add(
          (
            f'backbone/block{bp.index}/conv{op.index}/kernel',
            (op.kernel_size, op.kernel_size, op.in_channels // op.groups, op.out_channels),
          )
        )
      elif isinstance(op, P.ResidualOp):
        for inner in op.ops:
          if isinstance(inner, P.ConvOp):
            name = f'backbone/block{bp.index}/layer{op.index}/conv{inner.index}/kernel'
            shape = (
              inner.kernel_size,
              inner.kernel_size,
              inner.in_channels // inner.groups,
              inner.out_channels,
            )
            expected.add((name, shape))
  conv_kernels = {(k, v.shape) for k, v in params.items() if '/conv' in k and k.endswith('/kernel')}
  assert conv_kernels == expected
