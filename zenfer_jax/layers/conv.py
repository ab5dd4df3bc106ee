"""Convolutions with the reference's padding and two depthwise formulations.

The reference pads k//2 on every side; Flax's 'SAME' pads asymmetrically at
stride 2, so the padding is always explicit here. XLA's CPU depthwise
convolution is several times slower than PyTorch's for 7x7 kernels, so a
depthwise conv can also run as k*k strided slices multiplied and summed
(`impl='shift'`): the same arithmetic, fused by XLA into one loop. Its
backward pass is written out by hand (see `depthwise_shift`): autodiff of the
slices gives k*k pads and k*k full-size reductions, which made a ZenNet-M
training step's depthwise gradients several times slower than needed. Both
formulations read the same (k, k, 1, C) kernel.

Thin dense convs (ZenNet-R: 3-16 channels at 28-224px) have two more CPU-only
formulations, each used only where it was measured faster: a strided conv whose
input gradient runs through the stride phases (`conv_strided`), and a stride-1
forward that computes 2x2 output pixels per position (`conv_blocked`). Both keep
the (k, k, cin, cout) kernel and XLA's arithmetic up to float32 summation order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  'Conv',
  'conv_blocked',
  'conv_strided',
  'use_output_blocked',
  'depthwise_shift',
  'default_depthwise_impl',
]


def default_depthwise_impl() -> str:
  """'shift' on CPU, where it is measured faster; XLA's native op elsewhere."""
  return 'shift' if jax.default_backend() == 'cpu' else 'xla'


def _taps_sum(xp: jax.Array, kernel: jax.Array, stride: int, ho: int, wo: int) -> jax.Array:
  """sum over taps (dy, dx) of xp[:, dy + i*stride, dx + j*stride, :] * kernel[dy, dx, 0], i < ho, j < wo."""
  k = kernel.shape[0]
  n, _, _, c = xp.shape
  out = None
  for dy in range(k):
    for dx in range(k):
      patch = lax.slice(
        xp,
        (0, dy, dx, 0),
        (n, dy + (ho - 1) * stride + 1, dx + (wo - 1) * stride + 1, c),
        (1, stride, stride, 1),
      )
      term = patch * kernel[dy, dx, 0]
      out = term if out is None else out + term
  return out


def _fft_len(n: int) -> int:
  """Smallest 2^a 3^b 5^c >= n (the lengths the FFT handles fastest)."""
  m = n
  while True:
    r = m
    for p in (2, 3, 5):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


def _depthwise_kernel_grad(x: jax.Array, g: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
  """dK[dy, dx, 0, c] = sum_{n,i,j} xpad[n, dy + i*s, dx + j*s, c] * g[n, i, j, c], by FFT.

  Written directly this is k*k full-size multiply-reduces, each re-reading both tensors (about
  40x the forward's time on CPU). Instead each stride-phase of the padded input is
  cross-correlated with the cotangent through a 2-D real FFT, summed over the batch in frequency
  space; only the k*k lags that exist are read back. float32 throughout.
  """
  n, h, w, c = x.shape
  _, ho, wo, _ = g.shape
  s = stride
  o = (k - 1) // s  # largest tap offset inside one phase
  hq, wq = ho + o, wo + o  # phase extent that any tap reads; no circular wrap below
  fh, fw = _fft_len(hq), _fft_len(wq)
  x = x.astype(jnp.float32)
  g = g.astype(jnp.float32)
  xp = lax.pad(
    x,
    jnp.zeros((), x.dtype),
    ((0, 0, 0), (pad, s * hq - h - pad, 0), (pad, s * wq - w - pad, 0), (0, 0, 0)),
  )
  xq = jnp.transpose(xp.reshape(n, hq, s, wq, s, c), (2, 4, 0, 5, 1, 3))  # (s, s, n, c, hq, wq)
  xf = jnp.fft.rfft2(xq, s=(fh, fw))
  gf = jnp.fft.rfft2(jnp.transpose(g, (0, 3, 1, 2)), s=(fh, fw))  # (n, c, ...)
  spec = jnp.sum(xf * jnp.conj(gf), axis=2)  # (s, s, c, fh, fw//2+1)
  corr = jnp.fft.irfft2(spec, s=(fh, fw))[..., : o + 1, : o + 1]  # (s, s, c, o+1, o+1)
  d = np.arange(k)
  # tap (dy, dx) lives in phase (dy % s, dx % s) at offset (dy // s, dx // s)
  dk = corr[
    (d % s)[:, None], (d % s)[None, :], :, (d // s)[:, None], (d // s)[None, :]
  ]  # (k, k, c)
  return dk[:, :, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """Depthwise conv as a sum of k*k shifted, strided slices (NHWC, kernel (k, k, 1, C)).

  The backward pass is written out (autodiff of the slices is slow on CPU): the input
  gradient is the same shifted-slice sum over the stride-dilated cotangent with the flipped
  kernel (a transposed convolution), the kernel gradient an FFT cross-correlation.
  """
  k = kernel.shape[0]
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - k) // stride + 1
  wo = (w + 2 * pad - k) // stride + 1
  return _materialized(lambda: _taps_sum(xp, kernel, stride, ho, wo), kernel)


def _materialized(fn, probe):
  """fn() behind a conditional, so XLA cannot fuse its k*k-tap loop into the consumers.

  Left fusible, XLA copies the loop into every consumer (in eval mode: BN, ReLU, each of SA's
  reductions and its channel shuffle) and recomputes it several times over; ZenNet-M-SA's
  batch-1 latency on CPU was ~3x PyTorch's because of that. `optimization_barrier` does not
  stop it (the CPU compiler drops barriers before fusion). The predicate is a runtime value
  (false only for a NaN kernel entry, where the taps sum would be NaN anyway), so the
  conditional is not folded away; its cost is a few microseconds.
  """
  out = jax.eval_shape(fn)
  p = probe.reshape(-1)[0]
  return lax.cond(p == p, fn, lambda: jnp.full(out.shape, jnp.nan, out.dtype))


def _depthwise_shift_fwd(x, kernel, stride, pad):
  return depthwise_shift(x, kernel, stride, pad), (x, kernel)


def _depthwise_shift_bwd(stride, pad, res, g):
  x, kernel = res
  k = kernel.shape[0]
  _, h, w, _ = x.shape
  _, ho, wo, _ = g.shape
  lo = k - 1 - pad
  # dx[t] = sum_d gdil[t + pad - d] * kernel[d]: a stride-1 shifted sum over the dilated,
  # padded cotangent with the flipped kernel, cut to the input's extent.
  gp = lax.pad(
    g,
    jnp.zeros((), g.dtype),
    (
      (0, 0, 0),
      (lo, h + k - 1 - ((ho - 1) * stride + 1) - lo, stride - 1),
      (lo, w + k - 1 - ((wo - 1) * stride + 1) - lo, stride - 1),
      (0, 0, 0),
    ),
  )
  dx = _taps_sum(gp, kernel[::-1, ::-1], 1, h, w).astype(x.dtype)
  dk = _depthwise_kernel_grad(x, g, k, stride, pad).astype(kernel.dtype)
  return dx, dk


depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def _space_to_depth_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """The same strided conv as a stride-1 valid conv over the input's s*s stride phases.

  Tap (dy, dx) of the strided conv reads phase (dy % s, dx % s) at offset (dy // s, dx // s),
  so folding the phases into channels (s*s*C of them) and the kernel into a ceil(k/s)-tap
  kernel (zero where k is not a multiple of s) gives identical sums. Only its transpose is
  used (see `conv_strided`).
  """
  k = kernel.shape[0]
  n, h, w, c = x.shape
  co = kernel.shape[-1]
  s = stride
  ho = (h + 2 * pad - k) // s + 1
  wo = (w + 2 * pad - k) // s + 1
  kq = -(-k // s)
  hp, wp = s * (ho + kq - 1), s * (wo + kq - 1)
  # rows/columns past hp/wp are never read by any tap; a negative high pad drops them
  xp = lax.pad(
    x,
    jnp.zeros((), x.dtype),
    ((0, 0, 0), (pad, hp - h - pad, 0), (pad, wp - w - pad, 0), (0, 0, 0)),
  )
  xq = (
    xp.reshape(n, hp // s, s, wp // s, s, c)
    .transpose(0, 1, 3, 2, 4, 5)
    .reshape(n, hp // s, wp // s, s * s * c)
  )
  kp = jnp.pad(kernel, ((0, s * kq - k), (0, s * kq - k), (0, 0), (0, 0)))
  kq_ = kp.reshape(kq, s, kq, s, c, co).transpose(0, 2, 1, 3, 4, 5).reshape(kq, kq, s * s * c, co)
  return lax.conv_general_dilated(
    xq, kq_, (1, 1), ((0, 0), (0, 0)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_strided(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
  """Dense strided conv (groups 1) whose input gradient goes through the stride phases.

  XLA on CPU computes a strided conv's input gradient as an input-dilated convolution, which
  runs over the zero-stuffed cotangent: 4-7x slower than the forward for ZenNet-R's thin
  stride-2 convs (k=5/7, 8-16 channels); a 224px batch-16 ZenNet-R-SA training step went from
  4.23 to 3.70 s (median, one core) with this path. The
  transpose of the space-to-depth form is a stride-1 conv followed by a depth-to-space
  reshuffle and is several times faster. The forward and the kernel gradient stay XLA's:
  measured, both are faster than their space-to-depth counterparts.
  """
  return _xla_conv(x, kernel, stride, pad)


def _conv_strided_fwd(x, kernel, stride, pad):
  return conv_strided(x, kernel, stride, pad), (x, kernel)


def _conv_strided_bwd(stride, pad, res, g):
  x, kernel = res
  _, dk_fn = jax.vjp(lambda kk: _xla_conv(x, kk, stride, pad), kernel)
  _, dx_fn = jax.vjp(lambda xx: _space_to_depth_conv(xx, kernel, stride, pad), x)
  return dx_fn(g)[0], dk_fn(g)[0]


conv_strided.defvjp(_conv_strided_fwd, _conv_strided_bwd)


def _output_blocked_conv(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """A stride-1 conv computing each 2x2 block of output pixels as one output position.

  For 3-8 channels XLA's CPU convolution is a GEMM with only `cout` (8) columns, which runs
  far below the machine's rate. Here the input's 2x2 phases are folded into channels (4*cin),
  the kernel is re-laid so that one tap of the folded input feeds all four output phases
  (4*cout = 32 columns; zero where the original tap does not exist), and the output is
  unfolded again. ~1.3-1.8x the multiply-adds, but faster at batch 1: in ZenNet-R's
  forward the 224px RGB stem went from 3.4 to 0.9 ms, the 112px 5x5 from 1.2 to 0.9 ms.
  """
  b = 2
  k = kernel.shape[0]
  n, h, w, c = x.shape
  co = kernel.shape[-1]
  kq = -(-(b + k - 1) // b)  # folded taps covering the b + k - 1 input rows of a block
  hb, wb = h // b, w // b
  hp, wp = b * (hb + kq - 1), b * (wb + kq - 1)
  xp = lax.pad(
    x,
    jnp.zeros((), x.dtype),
    ((0, 0, 0), (pad, hp - h - pad, 0), (pad, wp - w - pad, 0), (0, 0, 0)),
  )
  xq = (
    xp.reshape(n, hp // b, b, wp // b, b, c)
    .transpose(0, 1, 3, 2, 4, 5)
    .reshape(n, hp // b, wp // b, b * b * c)
  )
  # folded kernel [q, r, a]: original tap b*q + r - a (input phase r, output phase a), if in range
  d = b * np.arange(kq)[:, None, None] + np.arange(b)[None, :, None] - np.arange(b)[None, None, :]
  valid = (d >= 0) & (d < k)
  d = np.where(valid, d, 0)
  kb = kernel[
    d[:, None, :, None, :, None], d[None, :, None, :, None, :]
  ]  # (qy, qx, ry, rx, ay, ax, c, co)
  mask = valid[:, None, :, None, :, None] & valid[None, :, None, :, None, :]
  kb = jnp.where(mask[..., None, None], kb, jnp.zeros((), kb.dtype))
  kb = kb.transpose(0, 1, 2, 3, 6, 4, 5, 7).reshape(kq, kq, b * b * c, b * b * co)
  y = lax.conv_general_dilated(
    xq, kb, (1, 1), ((0, 0), (0, 0)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  y = y[:, :hb, :wb]
  return y.reshape(n, hb, wb, b, b, co).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, co)


def use_output_blocked(shape: tuple, kernel_shape: tuple, stride: int, groups: int) -> bool:
  """Where the 2x2 output-blocked forward was measured faster than XLA's conv on CPU.

  Thin (<= 8 channel) stride-1 convs on a small activation (<= 2^19 elements: ZenNet-R at
  batch 1, e.g. 3.5 -> 0.9 ms for its 224px stem, 4.8 -> 3.1 ms for 224px 8->8 3x3). On
  batch-16 training activations at 112-224px the extra transposes of the folded copies
  cost more than the wider GEMM saves (42 -> 158 ms at 224px 8->8 3x3), so XLA keeps those;
  at 16 channels (28px, 7x7) it was no faster.
  """
  k, _, cin, cout = kernel_shape
  n, h, w, _ = shape
  return (
    jax.default_backend() == 'cpu'
    and stride == 1
    and groups == 1
    and k > 1
    and cin <= 8
    and cout <= 8
    and h % 2 == 0
    and w % 2 == 0
    and n * h * w * cin <= 2**19
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_blocked(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """Stride-1 dense conv, forward output-blocked; the gradients are XLA's (faster there)."""
  return _output_blocked_conv(x, kernel, pad)


def _conv_blocked_fwd(x, kernel, pad):
  return conv_blocked(x, kernel, pad), (x, kernel)


def _conv_blocked_bwd(pad, res, g):
  x, kernel = res
  _, fn = jax.vjp(lambda a, b: _xla_conv(a, b, 1, pad), x, kernel)
  return fn(g)


conv_blocked.defvjp(_conv_blocked_fwd, _conv_blocked_bwd)


class Conv(nn.Module):
  """Bias-optional conv with symmetric k//2 padding; depthwise when groups == features."""

  features: int
  kernel_size: int
  stride: int = 1
  groups: int = 1
  use_bias: bool = False
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  depthwise_impl: str = 'auto'  # 'auto' | 'xla' | 'shift'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    k = self.kernel_size
    if cin % self.groups:
      raise ValueError(
        f'{self.name}: {cin} input channels are not divisible by groups={self.groups}'
      )
    kernel = self.param(
      'kernel', self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32
    )
    dtype = self.dtype or x.dtype
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    pad = k // 2
    impl = default_depthwise_impl() if self.depthwise_impl == 'auto' else self.depthwise_impl
    depthwise = self.groups > 1 and self.groups == cin == self.features
    if depthwise and impl == 'shift':
      y = depthwise_shift(x, kernel, self.stride, pad)
    elif k == 1 and self.groups == 1 and jax.default_backend() == 'cpu':
      # A 1x1 conv as one 2-D matmul: on CPU XLA lowers the conv's weight gradient with
      # transposed copies of both activations (about 6x slower than this GEMM).
      xs = x[:, :: self.stride, :: self.stride, :] if self.stride > 1 else x
      n, h, w, _ = xs.shape
      y = (xs.reshape(n * h * w, cin) @ kernel.reshape(cin, self.features)).reshape(
        n, h, w, self.features
      )
    elif use_output_blocked(x.shape, kernel.shape, self.stride, self.groups):
      y = conv_blocked(x, kernel, pad)
    elif (
      self.groups == 1 and self.stride > 1 and k > 1 and cin >= 8 and jax.default_backend() == 'cpu'
    ):
      # Not for an RGB stem (ZenNet-M's 3->64): its input gradient is never needed in
      # training, and measured alone it is slower through the phases (30 vs 23 ms).
      y = conv_strided(x, kernel, self.stride, pad)
    else:
      y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.groups,
      )
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(dtype)
    return y
