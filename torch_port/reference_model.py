"""A PyTorch ZenNet whose state_dict is key-for-key the original repository's.

This is our own implementation, built from the same layer plan as the Flax
model (`zenfer_jax.model.plan`), so the two can never disagree about a width, a
stride or where a projection sits. It is the oracle of the parity tests and
the PyTorch side of the benchmarks. Module names reproduce the original's
nesting exactly: every leaf layer hangs under a ``netblock`` attribute, every
super-block and residual layer keeps its children in ``module_list`` (ReLUs
take a slot, so indices match), projection shortcuts are ``proj.0`` (1x1 conv
with bias) and ``proj.1`` (BatchNorm), the classifier is ``fc_linear.netblock``
and the WIRW head is ``lw_att`` with ``res_scale.scale``, ``x_scale.scale`` and
``SAlayer``.

Semantics that matter for parity: BatchNorm eps 1e-3 everywhere (projections
included), GroupNorm eps 1e-5 inside SA, convolutions padded k//2 on every
side, global average pooling then (optionally) WIRW then the linear layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from zenfer_jax.model import plan as plan_lib
from zenfer_jax.model.structure import Structure, resolve

__all__ = ['ReferenceZenNet', 'ShuffleAttentionTorch', 'build_reference_model', 'randomize_']

BN_EPS = 1e-3
GN_EPS = 1e-5


class _Leaf(nn.Module):
  """Holds one layer as ``netblock`` (the original's naming for every leaf)."""

  def __init__(self, netblock: nn.Module):
    super().__init__()
    self.netblock = netblock

  def forward(self, x):
    return self.netblock(x)


class _ReLU(nn.Module):
  """A parameter-free slot in a module_list (not in-place: the input may be a residual)."""

  def forward(self, x):
    return F.relu(x)


class ShuffleAttentionTorch(nn.Module):
  """Shuffle attention in NCHW with the original's parameter names and shapes.

  Channels are viewed as (groups, C/groups); the first half of every group
  gets a channel gate from its spatial mean, the second half a spatial gate
  from a one-channel-per-group GroupNorm; the halves are re-joined and the
  whole map is shuffled with 2 groups.
  """

  def __init__(self, channels: int, groups: int):
    super().__init__()
    half = channels // (2 * groups)
    self.groups = groups
    self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
    self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
    self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
    self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
    self.gn = nn.GroupNorm(half, half, eps=GN_EPS)

  def forward(self, x):
    b, c, h, w = x.shape
    xg = x.reshape(b * self.groups, c // self.groups, h, w)
    first = (
      xg.shape[1] - xg.shape[1] // 2
    )  # torch.chunk's split: the first part takes the odd channel
    x0, x1 = xg[:, :first], xg[:, first:]
    gate_c = torch.sigmoid(self.cweight * x0.mean(dim=(2, 3), keepdim=True) + self.cbias)
    gate_s = torch.sigmoid(self.sweight * self.gn(x1) + self.sbias)
    out = torch.cat([x0 * gate_c, x1 * gate_s], dim=1).reshape(b, c, h, w)
    # 2-group channel shuffle: channel g*(C/2)+i moves to 2*i+g.
    return out.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _Scale(nn.Module):
  def __init__(self, value: float = 1.0):
    super().__init__()
    self.scale = nn.Parameter(torch.tensor([float(value)]))

  def forward(self, x):
    return x * self.scale


class _WIRW(nn.Module):
  """lw_att: res_scale * SA(x) + x_scale * x on the pooled map."""

  def __init__(self, channels: int, groups: int = 8):
    super().__init__()
    self.res_scale = _Scale(1.0)
    self.x_scale = _Scale(1.0)
    self.SAlayer = ShuffleAttentionTorch(channels, groups)

  def forward(self, x):
    return self.res_scale(self.SAlayer(x)) + self.x_scale(x)


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


def _make_ops(ops, momentum: float, reslink: bool = True) -> nn.ModuleList:
  mods = []
  for op in ops:
    if len(mods) != op.index:  # pragma: no cover - plan invariant
      raise AssertionError(f'plan index {op.index} at list position {len(mods)}')
    if isinstance(op, plan_lib.ConvOp):
      mods.append(
        _Leaf(
          nn.Conv2d(
            op.in_channels,
            op.out_channels,
            op.kernel_size,
            op.stride,
            padding=op.kernel_size // 2,
            groups=op.groups,
            bias=False,
          )
        )
      )
    elif isinstance(op, plan_lib.BNOp):
      mods.append(_Leaf(_bn(op.channels, momentum)))
    elif isinstance(op, plan_lib.ReLUOp):
      mods.append(_ReLU())
    elif isinstance(op, plan_lib.SAOp):
      mods.append(_Leaf(ShuffleAttentionTorch(op.channels, op.groups)))
    elif isinstance(op, plan_lib.ResidualOp):
      mods.append(_ResidualLayer(op, momentum, reslink))
    else:  # pragma: no cover
      raise TypeError(op)
  return nn.ModuleList(mods)


class _ResidualLayer(nn.Module):
  def __init__(self, op: plan_lib.ResidualOp, momentum: float, reslink: bool = True):
    super().__init__()
    self.reslink = reslink
    self.module_list = _make_ops(op.ops, momentum)
    if op.projection:
      self.proj = nn.Sequential(
        nn.Conv2d(op.in_channels, op.out_channels, 1, op.stride, bias=True),
        _bn(op.out_channels, momentum),
      )
    else:
      self.proj = None

  def forward(self, x):
    y = x
    for m in self.module_list:
      y = m(y)
    if not self.reslink:  # the Zen-score network (the original's no_reslink)
      return y
    return y + (self.proj(x) if self.proj is not None else x)


class _SuperBlock(nn.Module):
  def __init__(self, bp: plan_lib.BlockPlan, momentum: float, reslink: bool = True):
    super().__init__()
    self.module_list = _make_ops(bp.ops, momentum, reslink)

  def forward(self, x):
    for m in self.module_list:
      x = m(x)
    return x


class ReferenceZenNet(nn.Module):
  """ZenNet in PyTorch (NCHW input), state_dict-compatible with the original MasterNet.

  bn_momentum is PyTorch's convention (weight of the new batch statistic):
  the original builds its BatchNorms with 0.1 and its training scripts set 0.01.
  """

  def __init__(
    self,
    structure: str | os.PathLike | Structure,
    num_classes: int,
    *,
    use_sa: bool = False,
    use_lw_att: bool = False,
    bn_momentum: float = 0.1,
    no_reslink: bool = False,
  ):
    super().__init__()
    s = resolve(structure)
    self.structure = s
    self.num_classes = num_classes
    self.use_sa = use_sa
    self.use_lw_att = use_lw_att
    self.no_reslink = no_reslink
    plan = plan_lib.expand(s, use_sa=use_sa, no_reslink=no_reslink)
    self.module_list = nn.ModuleList([_SuperBlock(bp, bn_momentum, not no_reslink) for bp in plan])
    last = s.out_channels
    self.fc_linear = _Leaf(nn.Linear(last, num_classes, bias=True))
    if use_lw_att:
      if not plan_lib.sa_width_ok(last, 8):
        raise ValueError(
          f'lw_att applies SA with 8 groups to {last} channels; need a multiple of 16 (or 24)'
        )
      self.lw_att = _WIRW(last, groups=8)

  def forward_pre_gap(self, x):
    for block in self.module_list:
      x = block(x)
    return x

  def forward(self, x):
    x = F.adaptive_avg_pool2d(self.forward_pre_gap(x), 1)
    if self.use_lw_att:
      x = self.lw_att(x)
    return self.fc_linear(torch.flatten(x, 1))


def build_reference_model(
  structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  bn_momentum: float = 0.1,
  no_reslink: bool = False,
) -> ReferenceZenNet:
  return ReferenceZenNet(
    structure,
    num_classes,
    use_sa=use_sa,
    use_lw_att=use_lw_att,
    bn_momentum=bn_momentum,
    no_reslink=no_reslink,
  )


@torch.no_grad()
def randomize_(
  model: nn.Module, seed: int = 0, calibration_batch: torch.Tensor | None = None
) -> nn.Module:
  """Fill every parameter and BN running statistic with random values.

  BN/GN affine parameters, running means and variances, SA gates and the
  WIRW scales all move away from their init values so a mis-mapped tensor
  cannot hide behind a default.

  Without `calibration_batch` the running statistics are drawn blindly, so
  activations can grow to O(100) through the depth. With it, they are first
  measured on that batch (one train-mode pass) and then perturbed (mean
  shifted by up to 0.3 standard deviations, variance scaled by 0.7-1.4),
  which keeps activations O(1) as in a trained network. The distinction
  matters for lw_att: its GroupNorm normalises single elements, where the
  reference's float32 result is rounding noise amplified by 1/sqrt(eps)
  and proportional to the activation's magnitude.
  """
  g = torch.Generator().manual_seed(seed)

  def rand(shape, lo, hi):
    return torch.rand(shape, generator=g) * (hi - lo) + lo

  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      if m.bias is not None:
        m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
    elif isinstance(m, nn.Linear):
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.0 / m.weight.shape[1]) ** 0.5)
      m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
      m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
      m.running_mean.copy_(rand(m.running_mean.shape, -0.3, 0.3))
      m.running_var.copy_(rand(m.running_var.shape, 0.5, 2.0))
      m.num_batches_tracked.fill_(int(torch.randint(0, 1000, (1,), generator=g)))
    elif isinstance(m, nn.GroupNorm):
      m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
      m.bias.copy_(rand(m.bias.shape, -0.3, 0.3))
    elif isinstance(m, ShuffleAttentionTorch):
      for name in ('cweight', 'sweight'):
        getattr(m, name).copy_(rand(getattr(m, name).shape, -1.0, 1.0))
      for name in ('cbias', 'sbias'):
        getattr(m, name).copy_(rand(getattr(m, name).shape, 0.0, 2.0))
    elif isinstance(m, _Scale):
      m.scale.copy_(rand(m.scale.shape, 0.5, 1.5))
  if calibration_batch is not None:
    # As the recipe's zero-init of each branch's last BN does, keep residual
    # branches small next to the identity path, so depth does not compound.
    for m in model.modules():
      if isinstance(m, _ResidualLayer):
        last_bn = [
          x.netblock
          for x in m.module_list
          if isinstance(x, _Leaf) and isinstance(x.netblock, nn.BatchNorm2d)
        ][-1]
        last_bn.weight.copy_(rand(last_bn.weight.shape, 0.1, 0.4))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    was_training = model.training
    for m in bns:
      m.momentum = 1.0
    model.train()
    model(calibration_batch)
    model.train(was_training)
    for m, (momentum, nbt) in zip(bns, saved):
      m.momentum = momentum
      m.num_batches_tracked.copy_(nbt)
      std = m.running_var.clamp_min(0).sqrt()
      m.running_mean.add_(rand(std.shape, -0.3, 0.3) * std)
      m.running_var.mul_(rand(std.shape, 0.7, 1.4))
  return model
