"""ZenNet models in Flax Linen, built from the structure language.

`build_model` is the one entry point. Parameter paths mirror the reference's
module indices (see `zenfer_jax.model.plan`), e.g. ``backbone/block1/layer0/conv3``
is ``module_list.1.module_list.0.module_list.3`` in a PyTorch checkpoint, and
``backbone/block1/layer0/proj_conv`` is ``...module_list.0.proj.0``.

Pre-pooling features (for the Zen-score and distillation):
``model.apply(variables, x, train=False, method=ZenNet.features)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from zenfer_jax.model import plan as plan_lib
from zenfer_jax.model.layers.attention import LightweightAttention, ShuffleAttention
from zenfer_jax.model.layers.batchnorm import BatchNorm
from zenfer_jax.model.layers.conv import Conv
from zenfer_jax.model.layers.cpu_kernels import IMPLS, resolve_impl
from zenfer_jax.model.structure import Structure, resolve

__all__ = ['DTYPES', 'ZenNet', 'build_model', 'IMPLS', 'INIT_SCHEMES', 'XAVIER_GAIN']

# config.model.dtype -> the compute dtype (parameters stay float32).
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# The reference's training init scales Xavier by this gain (its "custom" init).
XAVIER_GAIN = 3.26033
# 'custom_open': the custom init with the last BatchNorm of each residual branch at scale 1,
# not 0. A zero scale blocks every gradient into its branch until the scale itself has grown:
# on FER2013 at 48 px a ZenNet-R-SA stayed at the class prior for two epochs, where the open
# branches learned from the first hundred steps. Fine for the reference's 400 epochs, costly in
# a few dozen.
INIT_SCHEMES = ('custom', 'custom_open', 'gaussian')


class RemovedOptionError(TypeError):
  """An option that was removed, with what to use instead."""


def _normal(std: float):
  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)

  return init


def conv_init(scheme: str, cin: int, cout: int, k: int, groups: int):
  if scheme == 'gaussian':
    return _normal(1.0)
  # PyTorch's fans for a (out, in/groups, k, k) weight.
  fan_in = (cin // groups) * k * k
  fan_out = cout * k * k
  return _normal(XAVIER_GAIN * math.sqrt(2.0 / (fan_in + fan_out)))


def dense_init(scheme: str, cin: int, cout: int):
  if scheme == 'gaussian':
    return _normal(1.0)
  return _normal(XAVIER_GAIN * math.sqrt(2.0 / (cin + cout)))


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  """What every layer needs to know about the model (hashable, so Flax can hold it)."""

  init_scheme: str
  no_reslink: bool
  bn_momentum: float
  bn_eps: float
  bn_unbiased_running_var: bool
  bn_axis_name: str | None
  conv_impl: str
  bn_impl: str
  dtype: Any


class _OpRunner:
  """Creates and applies the Flax module for each plan op inside the caller's compact scope."""

  def __init__(self, cfg: LayerConfig, train: bool):
    self.cfg = cfg
    self.train = train

  def conv(self, op: plan_lib.ConvOp, x, name: str):
    c = self.cfg
    return Conv(
      features=op.out_channels,
      kernel_size=op.kernel_size,
      stride=op.stride,
      groups=op.groups,
      kernel_init=conv_init(
        c.init_scheme, op.in_channels, op.out_channels, op.kernel_size, op.groups
      ),
      impl=c.conv_impl,
      dtype=c.dtype,
      name=name,
    )(x)

  def bn(self, op: plan_lib.BNOp, x, name: str):
    c = self.cfg
    zero = c.init_scheme == 'custom' and op.last_in_residual
    return BatchNorm(
      momentum=c.bn_momentum,
      epsilon=c.bn_eps,
      unbiased_running_var=c.bn_unbiased_running_var,
      axis_name=c.bn_axis_name,
      scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
      dtype=c.dtype,
      impl=c.bn_impl,
      name=name,
    )(x, use_running_average=not self.train)

  def run(self, ops, x):
    for op in ops:
      if isinstance(op, plan_lib.ConvOp):
        x = self.conv(op, x, f'conv{op.index}')
      elif isinstance(op, plan_lib.BNOp):
        x = self.bn(op, x, f'bn{op.index}')
      elif isinstance(op, plan_lib.ReLUOp):
        x = nn.relu(x)
      elif isinstance(op, plan_lib.SAOp):
        # SA's per-channel GroupNorm is a normalisation: it follows the BatchNorm choice.
        x = ShuffleAttention(groups=op.groups, impl=self.cfg.bn_impl, name=f'sa{op.index}')(x)
      elif isinstance(op, plan_lib.ResidualOp):
        x = ResidualLayer(op=op, cfg=self.cfg, name=f'layer{op.index}')(x, self.train)
      else:  # pragma: no cover
        raise TypeError(op)
    return x


class ResidualLayer(nn.Module):
  op: plan_lib.ResidualOp
  cfg: LayerConfig

  @nn.compact
  def __call__(self, x, train: bool):
    runner = _OpRunner(self.cfg, train)
    y = runner.run(self.op.ops, x)
    if self.cfg.no_reslink:
      return y
    if self.op.projection:
      c = self.cfg
      shortcut = Conv(
        features=self.op.out_channels,
        kernel_size=1,
        stride=self.op.stride,
        use_bias=True,
        kernel_init=conv_init(c.init_scheme, self.op.in_channels, self.op.out_channels, 1, 1),
        impl=c.conv_impl,
        dtype=c.dtype,
        name='proj_conv',
      )(x)
      shortcut = runner.bn(plan_lib.BNOp(-1, self.op.out_channels), shortcut, 'proj_bn')
    else:
      shortcut = x
    return y + shortcut.astype(y.dtype)


class SuperBlock(nn.Module):
  plan: plan_lib.BlockPlan
  cfg: LayerConfig

  @nn.compact
  def __call__(self, x, train: bool):
    return _OpRunner(self.cfg, train).run(self.plan.ops, x)


class Backbone(nn.Module):
  plan: tuple
  cfg: LayerConfig

  @nn.compact
  def __call__(self, x, train: bool):
    for bp in self.plan:
      x = SuperBlock(plan=bp, cfg=self.cfg, name=f'block{bp.index}')(x, train)
    return x


class ZenNet(nn.Module):
  """A ZenNet classifier: backbone, global average pooling, optional lw_att head, linear classifier.

  Build it with `build_model`; the fields are the model's whole configuration. `conv_impl` and
  `bn_impl` choose XLA's plain ops ('xla') or the CPU formulations ('cpu') for every layer;
  `build_model` records them resolved, so the model's arithmetic does not depend on where it
  runs.
  """

  structure_text: str
  num_classes: int
  use_sa: bool = False
  use_lw_att: bool = False
  no_reslink: bool = False
  no_bn: bool = False
  bn_momentum: float = 0.99
  bn_eps: float = 1e-3
  bn_unbiased_running_var: bool = True
  bn_axis_name: str | None = None
  init_scheme: str = 'custom'
  conv_impl: str = 'auto'
  bn_impl: str = 'auto'
  dtype: Any = jnp.float32

  def setup(self):
    structure = resolve(self.structure_text)
    plan = plan_lib.expand(
      structure, use_sa=self.use_sa, no_bn=self.no_bn, no_reslink=self.no_reslink
    )
    cfg = LayerConfig(
      init_scheme=self.init_scheme,
      no_reslink=self.no_reslink,
      bn_momentum=self.bn_momentum,
      bn_eps=self.bn_eps,
      bn_unbiased_running_var=self.bn_unbiased_running_var,
      bn_axis_name=self.bn_axis_name,
      conv_impl=resolve_impl(self.conv_impl, 'conv_impl'),
      bn_impl=resolve_impl(self.bn_impl, 'bn_impl'),
      dtype=self.dtype,
    )
    self.backbone = Backbone(plan=plan, cfg=cfg)
    last = structure.out_channels
    if self.use_lw_att:
      self.lw_att = LightweightAttention(groups=8)
    self.fc = nn.Dense(
      self.num_classes,
      kernel_init=dense_init(self.init_scheme, last, self.num_classes),
      bias_init=nn.initializers.zeros,
      param_dtype=jnp.float32,
      dtype=self.dtype,
    )

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """The pre-pooling feature map (N, H', W', C)."""
    return self.backbone(x.astype(self.dtype), train)

  def head(self, feats: jax.Array) -> jax.Array:
    pooled = jnp.mean(feats.astype(jnp.float32), axis=(1, 2), keepdims=True)
    if self.use_lw_att:
      pooled = self.lw_att(pooled)
    return self.fc(pooled.reshape(pooled.shape[0], -1)).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.head(self.features(x, train))


def build_model(
  structure: str | os.PathLike | Structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  no_reslink: bool = False,
  no_bn: bool = False,
  bn_momentum: float = 0.99,
  bn_eps: float = 1e-3,
  bn_unbiased_running_var: bool = True,
  bn_axis_name: str | None = None,
  init: str = 'custom',
  conv_impl: str = 'auto',
  bn_impl: str = 'auto',
  dtype: Any = jnp.float32,
  **removed: Any,
) -> ZenNet:
  """A Flax ZenNet for `structure` (a structure string, a file path, a preset name or a Structure).

  The structure is parsed and fully validated here, before any array exists:
  a bad string raises `StructureError`.

  conv_impl, bn_impl: 'auto' | 'xla' | 'cpu' (see `zenfer_jax.model.layers.cpu_kernels`); 'auto' is
  resolved here, once, and the model records the concrete choice.
  """
  if 'depthwise_impl' in removed:
    raise RemovedOptionError(
      f'build_model(depthwise_impl={removed["depthwise_impl"]!r}): depthwise_impl was removed '
      "after v0.1.0; pass conv_impl instead ('auto', 'xla', or 'cpu' for the old 'shift')."
    )
  if removed:
    raise TypeError(f'build_model() got unexpected keyword arguments {sorted(removed)}')
  s = resolve(structure)
  # Validate SA widths etc. now rather than at first trace.
  plan_lib.expand(s, use_sa=use_sa, no_bn=no_bn, no_reslink=no_reslink)
  if init not in INIT_SCHEMES:
    raise ValueError(f'init must be one of {INIT_SCHEMES}, got {init!r}')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
  conv_impl = resolve_impl(conv_impl, 'conv_impl')
  bn_impl = resolve_impl(bn_impl, 'bn_impl')
  if use_lw_att and not plan_lib.sa_width_ok(s.out_channels, 8):
    raise ValueError(
      f'lw_att applies SA with 8 groups to the {s.out_channels}-channel pooled map; the width must be a multiple of 16 (or 24)'
    )
  return ZenNet(
    structure_text=str(s),
    num_classes=num_classes,
    use_sa=use_sa,
    use_lw_att=use_lw_att,
    no_reslink=no_reslink,
    no_bn=no_bn,
    bn_momentum=bn_momentum,
    bn_eps=bn_eps,
    bn_unbiased_running_var=bn_unbiased_running_var,
    bn_axis_name=bn_axis_name,
    init_scheme=init,
    conv_impl=conv_impl,
    bn_impl=bn_impl,
    dtype=dtype,
  )


@functools.lru_cache(maxsize=32)
def _compiled_init(model: ZenNet, shape: tuple):
  return jax.jit(lambda r: model.init(r, jnp.zeros(shape, jnp.float32), train=False))


def init_variables(model: ZenNet, rng: jax.Array, resolution: int = 224, batch_size: int = 1):
  """Fresh variables for `model`, initialised in one compiled call (cached per model and shape)."""
  return _compiled_init(model, (batch_size, resolution, resolution, 3))(rng)


def count_params(params) -> int:
  return int(sum(int(p.size) for p in jax.tree_util.tree_leaves(params)))
