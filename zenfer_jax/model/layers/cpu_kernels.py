"""CPU formulations of convolution, BatchNorm and the SA block, and the one place that chooses them.

XLA's CPU lowering of a few ops the ZenNets lean on (7x7 depthwise convs, the input gradient of
a strided conv, thin dense convs, 1x1 convs' weight gradients, BatchNorm's and the SA block's
autodiff backward) is several times slower than the arithmetic requires. Each function here computes the same
values as XLA's op (equal up to float32 summation order; the tests compare both, gradients
included) in a form the CPU runs faster, most with a hand-written backward pass. They are used
only where they were measured faster; docs/performance.md ("CPU kernels: what each one is for")
has the measurements.

A model picks between XLA's plain ops and these with `conv_impl` and `bn_impl`
('auto' | 'xla' | 'cpu'). `resolve_impl` turns 'auto' into a concrete choice by the default
backend, and no other layer or model code looks at the backend, so a model's arithmetic is fixed
when it is built (`build_model` records the resolved choice on it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
  'IMPLS',
  'resolve_impl',
  'default_depthwise_impl',
  'conv',
  'depthwise_shift',
  'pointwise_matmul',
  'conv_toeplitz',
  'use_toeplitz',
  'conv_strided',
  'conv_blocked',
  'use_output_blocked',
  'conv_wfold',
  'wfold_factors',
  'shuffle_attention',
  'use_shuffle_attention',
  'batch_norm_forward',
  'batch_norm_train',
  'global_count',
]

IMPLS = ('auto', 'xla', 'cpu')


def resolve_impl(impl: str, option: str = 'impl') -> str:
  """'xla' or 'cpu' for `impl`; 'auto' is 'cpu' on the CPU backend, where these were measured
  faster, and 'xla' elsewhere (on GPU XLA's own ops are the fast ones).

  The one place where layers and models read `jax.default_backend()`. `option` names the
  setting in the error message.
  """
  if impl not in IMPLS:
    raise ValueError(f'{option} must be one of {IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def default_depthwise_impl() -> str:
  """The Zen-score's older spelling of `resolve_impl('auto')`: 'shift' (that is 'cpu') or 'xla'."""
  return 'shift' if resolve_impl('auto') == 'cpu' else 'xla'


def conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int, groups: int) -> jax.Array | None:
  """The CPU formulation for this conv's shape, or None where XLA's own conv is the faster one.

  The shape rules are where each formulation was measured faster than XLA on CPU; the caller
  falls back to `lax.conv_general_dilated` on None.
  """
  k = kernel.shape[0]
  cin, cout = x.shape[-1], kernel.shape[-1]
  if groups > 1 and groups == cin == cout:
    return depthwise_shift(x, kernel, stride, pad)
  if groups != 1:
    return None
  if k == 1:
    return pointwise_matmul(x, kernel, stride)
  if use_toeplitz(x.shape, kernel.shape, stride, groups) and pad == k // 2:
    return conv_toeplitz(x, kernel, pad)
  if use_output_blocked(x.shape, kernel.shape, stride, groups):
    return conv_blocked(x, kernel, pad)
  folds = wfold_factors(x.shape, kernel.shape, stride, groups)
  if folds is not None and pad == k // 2:
    return conv_wfold(x, kernel, stride, pad, *folds)
  # Not for an RGB stem (ZenNet-M's 3->64): its input gradient is never needed in training,
  # and through the phases its forward alone is slower.
  if stride > 1 and cin >= 8:
    return conv_strided(x, kernel, stride, pad)
  return None


# --- depthwise: k*k shifted multiply-adds ------------------------------------------------------


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

  Written directly this is k*k full-size multiply-reduces, each re-reading both tensors (far
  slower than the forward on CPU). Instead each stride-phase of the padded input is
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

  XLA's CPU depthwise conv is several times slower than PyTorch's for 7x7 kernels; the same
  arithmetic as slices is fused by XLA into one loop. The backward pass is written out because
  autodiff of the slices gives k*k pads and k*k full-size reductions: the input gradient is the
  same shifted-slice sum over the stride-dilated cotangent with the flipped kernel (a transposed
  convolution), the kernel gradient an FFT cross-correlation.
  """
  k = kernel.shape[0]
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - k) // stride + 1
  wo = (w + 2 * pad - k) // stride + 1
  return _materialized(lambda: _taps_sum(xp, kernel, stride, ho, wo), kernel)


def _materialized(fn: Callable[[], jax.Array], probe: jax.Array) -> jax.Array:
  """fn() behind a conditional, so XLA cannot fuse its k*k-tap loop into the consumers.

  Left fusible, XLA copies the loop into every consumer (in eval mode: BN, ReLU, each of SA's
  reductions and its channel shuffle) and recomputes it several times over, which made batch-1
  inference several times slower. `optimization_barrier` does not stop it (the CPU compiler
  drops barriers before fusion). The predicate is a runtime value (false only for a NaN kernel
  entry, where the taps sum would be NaN anyway), so the conditional is not folded away; it
  costs microseconds.
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


# --- dense convs --------------------------------------------------------------------------------


def pointwise_matmul(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """A 1x1 conv (groups 1) as one 2-D matmul.

  On CPU XLA lowers a 1x1 conv's weight gradient with transposed copies of both activations;
  the matmul's gradients are plain GEMMs.
  """
  cin, cout = kernel.shape[-2:]
  xs = x[:, ::stride, ::stride, :] if stride > 1 else x
  n, h, w, _ = xs.shape
  return (xs.reshape(n * h * w, cin) @ kernel.reshape(cin, cout)).reshape(n, h, w, cout)


def _tap_map(h: int, w: int, k: int, pad: int) -> np.ndarray:
  """[(H*W) * (H*W), k*k] 0/1: which tap links input position p to output position q."""
  yi, xi, yo, xo = np.meshgrid(
    np.arange(h), np.arange(w), np.arange(h), np.arange(w), indexing='ij'
  )
  dy, dx = (yi - yo + pad).reshape(-1), (xi - xo + pad).reshape(-1)
  valid = (dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)
  taps = np.zeros((dy.size, k * k), np.float32)
  taps[np.flatnonzero(valid), (dy * k + dx)[valid]] = 1.0
  return taps


@functools.partial(jax.jit, static_argnums=(2,))  # Named in jaxprs: tests see the choice.
def conv_toeplitz(x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
  """A stride-1 dense conv as one matmul over whole images: [N, H*W*C] @ [H*W*C, H*W*C'].

  Where the kernel is larger than the activation (ZenNet-R's 7x7 convs at 6x6 when trained at
  48 px) every output position sees most of the image, so the conv's (block-Toeplitz) matrix
  is small and nearly dense: H*W*C = 576 at 6x6x16. XLA's CPU conv, and above all its kernel
  gradient (a conv whose window is the whole activation), run at a few hundred MFLOP/s on
  these shapes; here the forward and both gradients are plain GEMMs, and the kernel gradient
  folds the matrix's gradient back onto the taps with one more GEMM.
  """
  k, _, c, co = kernel.shape
  n, h, w, _ = x.shape
  taps = jnp.asarray(_tap_map(h, w, k, pad), kernel.dtype)  # 0/1: exact in bf16 too
  t = (taps @ kernel.reshape(k * k, c * co)).reshape(h * w, h * w, c, co)
  t = t.transpose(0, 2, 1, 3).reshape(h * w * c, h * w * co)
  return (x.reshape(n, h * w * c) @ t).reshape(n, h, w, co)


def use_toeplitz(shape: tuple, kernel_shape: tuple, stride: int, groups: int) -> bool:
  """Where `conv_toeplitz` was measured faster than XLA's conv and the other forms: stride-1
  dense convs whose kernel is larger than the activation (at most 1,024 values per image).

  Batch 64, forward + both gradients, one core, ms (XLA / W-folded -> Toeplitz): 6x6 16->16
  7x7 29 / 69 -> 2.5 (an im2col GEMM took 5.5); 3x3 16->16 7x7 6.3 -> 0.23. Where the kernel
  fits inside the activation the matrix is mostly zeros and XLA or the folded forms win.
  """
  k, _, cin, cout = kernel_shape
  _, h, w, _ = shape
  return groups == 1 and stride == 1 and (k > h or k > w) and max(h * w * cin, h * w * cout) <= 1024


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
  runs over the zero-stuffed cotangent: several times slower than the forward for ZenNet-R's
  thin stride-2 convs (k=5/7, 8-16 channels). The transpose of the space-to-depth form is a
  stride-1 conv followed by a depth-to-space reshuffle and is several times faster. The forward
  and the kernel gradient stay XLA's: measured, both are faster than their space-to-depth
  counterparts.
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
  unfolded again. More multiply-adds (1.3-1.8x), but a wider GEMM that is faster at batch 1.
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
  batch 1). On batch-16 training activations at 112-224px the extra transposes of the folded
  copies cost more than the wider GEMM saves, so XLA keeps those; at 16 channels (28px, 7x7)
  it was no faster.
  """
  k, _, cin, cout = kernel_shape
  n, h, w, _ = shape
  return (
    stride == 1
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


def _wfold_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int, fold: int) -> jax.Array:
  """The same conv with `fold` output columns (stride*fold input columns) folded into channels.

  In NHWC, viewing (N, H, W, C) as (N, H, W/B, B*C) is a free reshape, so unlike folding both
  spatial axes (`conv_blocked`) no transposed copy is made. Output column j = J*fold + a reads
  input column stride*j + d - pad = J*B + t with t = stride*a + d - pad, i.e. folded column
  J + t // B, phase t % B; the kernel is re-laid accordingly (zero where a folded tap has no
  original one). The GEMM gets B*cin rows and fold*cout columns instead of cin and cout, which
  XLA's CPU conv runs several times faster at 3-16 channels, for a few more multiply-adds.
  """
  n, h, w, c = x.shape
  k, co = kernel.shape[0], kernel.shape[-1]
  s, b = stride, stride * fold
  wo = (w + 2 * pad - k) // s + 1
  qmin, qmax = (-pad) // b, (s * (fold - 1) + k - 1 - pad) // b
  q = np.arange(qmin, qmax + 1)[:, None, None]
  d = q * b + np.arange(b)[None, :, None] - s * np.arange(fold)[None, None, :] + pad
  valid = (d >= 0) & (d < k)
  kf = kernel[:, np.where(valid, d, 0)]  # (k, nq, b, fold, c, co)
  kf = jnp.where(valid[None, :, :, :, None, None], kf, jnp.zeros((), kf.dtype))
  kf = kf.transpose(0, 1, 2, 4, 3, 5).reshape(k, qmax - qmin + 1, b * c, fold * co)
  nj = wo // fold
  y = lax.conv_general_dilated(
    x.reshape(n, h, w // b, b * c),
    kf,
    (s, 1),
    ((pad, pad), (-qmin, nj - 1 + qmax - (w // b - 1))),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return y.reshape(n, y.shape[1], nj * fold, co)


def wfold_factors(
  shape: tuple, kernel_shape: tuple, stride: int, groups: int
) -> tuple[int, int] | None:
  """(forward fold, gradient fold) where `conv_wfold` was measured faster than XLA, else None.

  Thin (<= 16 channel) dense convs with k > 1, batch-16 ZenNet-R training shapes, one core
  (forward / input grad / kernel grad, ms, XLA -> folded): 224px 8->8 3x3 73/76/80 -> 39/43/83
  (fold 2), 112px 5x5 20/20/20 -> 12/13/16 (2), 56px 7x7 10/10/10 -> 4/4/6 (4), 28px 16->16
  7x7 4.6/4.6/4.8 -> 3.2/3.2/3.7 (2); the RGB stem 3->8 69/-/39 -> 12/-/30 (forward fold 4,
  kernel grad fold 2; fold 4's kernel grad was 72). Stride 2 (forward only; the gradients are
  `conv_strided`'s): 224px 8->8 5x5 21 -> 17 and 112px 7x7 10 -> 6 (fold 2); 16 channels
  gained nothing. W must split into whole folded blocks.
  """
  k, _, cin, cout = kernel_shape
  h, w = shape[1], shape[2]
  if groups != 1 or k == 1 or k % 2 == 0 or cin > 16 or cout > 16:
    return None
  if min(h, w) <= k + 1:
    # Hardly larger than the kernel, the folded form's kernel gradient falls off a cliff in
    # XLA: batch 64, 8x8 16->16 7x7, fwd + both grads 199 ms against XLA's 7.8 (10x10: 11 vs
    # 12; 12x12 8->8: 3.1 vs 5.7). ZenNet-R's last stage is 8x8 at 64 px.
    return None
  if stride == 1:
    if cin <= 4:
      folds = (4, 2)
    elif k == 7 and cin <= 8 and cout <= 8:
      folds = (4, 4)
    else:
      folds = (2, 2)
  elif stride == 2 and cin == 8 and cout <= 8:
    folds = (2, 2)
  else:
    return None
  if w % (stride * max(folds)):
    return None
  return folds


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_wfold(
  x: jax.Array, kernel: jax.Array, stride: int, pad: int, fold: int, grad_fold: int
) -> jax.Array:
  """Dense conv (groups 1, odd k, pad k // 2) computed on W-folded blocks (`_wfold_conv`).

  The forward folds `fold` output columns; the gradients are those of the same form with
  `grad_fold` (at stride 1; the best fold differs between forward and kernel gradient for the
  RGB stem), or at stride > 1 `conv_strided`'s (input gradient through the stride phases).
  """
  return _wfold_conv(x, kernel, stride, pad, fold)


def _conv_wfold_fwd(x, kernel, stride, pad, fold, grad_fold):
  return conv_wfold(x, kernel, stride, pad, fold, grad_fold), (x, kernel)


def _conv_wfold_bwd(stride, pad, fold, grad_fold, res, g):
  if stride > 1:
    return _conv_strided_bwd(stride, pad, res, g)
  x, kernel = res
  _, fn = jax.vjp(lambda a, b: _wfold_conv(a, b, 1, pad, grad_fold), x, kernel)
  return fn(g)


conv_wfold.defvjp(_conv_wfold_fwd, _conv_wfold_bwd)


# --- shuffle attention (the SA block) -----------------------------------------------------------


def _sa_channel_vectors(params: tuple, groups: int, per_group: int) -> dict:
  """The SA parameters as (C,) vectors in the block's channel order, zero where they do not act.

  Within each group the first `per_group - half` channels are channel attention (cweight,
  cbias; one parameter may serve two channels when per_group is 3), the rest spatial attention
  (sweight, sbias, gn_scale, gn_bias).
  """
  cweight, cbias, sweight, sbias, gn_scale, gn_bias = params
  half = per_group // 2
  first = per_group - half
  zf, zh = jnp.zeros((first,), jnp.float32), jnp.zeros((half,), jnp.float32)

  def vec(v_first, v_spatial):
    return jnp.tile(jnp.concatenate([jnp.broadcast_to(v_first, (first,)), v_spatial]), groups)

  return {
    'spatial': vec(zf, jnp.ones((half,), jnp.float32)),
    'cw': vec(cweight, zh),
    'cb': vec(cbias, zh),
    'sw': vec(zf, sweight),
    'sb': vec(zf, sbias),
    'gs': vec(zf, gn_scale),
    'gb': vec(zf, gn_bias),
  }


# Lanes a channel-wise reduction is folded to: NHWC activations with few channels (8 at 48x48
# in ZenNet-R) reduce over the leading axes as XLA CPU column reductions only C floats wide,
# about 5x slower than the same sum viewed as (M/k, k*C) and folded back (measured on [64, 48,
# 48, 8]: 0.53 -> 0.08 ms).
_REDUCE_LANES = 128


def _channel_sum(t: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Sums `t` over `axes` (contiguous, ending just before the channel axis), lane-folded."""
  c = t.shape[-1]
  lead = t.shape[: axes[0]]
  m = math.prod(t.shape[a] for a in axes)
  k = max(1, _REDUCE_LANES // c)
  while k > 1 and m % k:
    k //= 2
  if k == 1:
    return jnp.sum(t, axis=axes)
  folded = jnp.sum(t.reshape(*lead, m // k, k * c), axis=len(lead))
  return jnp.sum(folded.reshape(*lead, k, c), axis=len(lead))


def _channel_mean(t: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  return _channel_sum(t, axes) / math.prod(t.shape[a] for a in axes)


def _sa_gates(x: jax.Array, v: dict, eps: float):
  """(a, b, mu, r), each (N, C): the block's output is x * sigmoid(a * x + b) per channel.

  Spatial channels: z = sw * (gs * (x - mu) * r + gb) + sb, i.e. a = sw*gs*r and
  b = sw*(gb - gs*mu*r) + sb; channel-attention ones: a = 0, b = cw * mean(x) + cb.
  """
  mu = _channel_mean(x, (1, 2))
  var = _channel_mean(jnp.square(x - mu[:, None, None, :]), (1, 2))
  r = lax.rsqrt(var + eps)
  a = v['sw'] * v['gs'] * r
  b = jnp.where(
    v['spatial'] > 0, v['sw'] * (v['gb'] - v['gs'] * mu * r) + v['sb'], v['cw'] * mu + v['cb']
  )
  return a, b, mu, r


def _shuffle2(x: jax.Array) -> jax.Array:
  """The SA block's 2-group channel shuffle: channel g*(C/2) + i moves to 2*i + g."""
  *lead, c = x.shape
  return jnp.swapaxes(x.reshape(*lead, 2, c // 2), -1, -2).reshape(*lead, c)


def _unshuffle2(x: jax.Array) -> jax.Array:
  *lead, c = x.shape
  return jnp.swapaxes(x.reshape(*lead, c // 2, 2), -1, -2).reshape(*lead, c)


def use_shuffle_attention(shape: tuple) -> bool:
  """Where the gate form with the closed-form backward was measured faster than autodiff.

  ZenNet-R's SA blocks (8 channels at 224-56px, 16 at 28px, batch 16); at 32-160 channels
  (ZenNet-M) a single-pass SA was measured slower than XLA's fusion of the plain form.
  """
  return shape[-1] <= 16


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def shuffle_attention(
  x: jax.Array,
  cweight: jax.Array,
  cbias: jax.Array,
  sweight: jax.Array,
  sbias: jax.Array,
  gn_scale: jax.Array,
  gn_bias: jax.Array,
  groups: int,
  eps: float,
) -> jax.Array:
  """The SA block (float32 out) as one gate per (sample, channel), with a closed-form backward.

  Every channel's output is x * sigmoid(a * x + b) with per-(sample, channel) a and b (see
  `_sa_gates`), so the forward is two reductions over H, W and one elementwise pass (plus the
  shuffle) instead of XLA's slices, concatenation and separate passes per half. The backward
  needs two sums per (sample, channel), P = sum(gz) and Q = sum(gz * x) with
  gz = g * x * s * (1 - s), s the gate: one reduction pass and one elementwise pass, where
  autodiff differentiated the GroupNorm's mean and variance separately.
  """
  args = (x, cweight, cbias, sweight, sbias, gn_scale, gn_bias)
  return _shuffle_attention_fwd(*args, groups, eps)[0]


def _shuffle_attention_fwd(x, cweight, cbias, sweight, sbias, gn_scale, gn_bias, groups, eps):
  params = (cweight, cbias, sweight, sbias, gn_scale, gn_bias)
  v = _sa_channel_vectors(params, groups, x.shape[-1] // groups)
  xf = x.astype(jnp.float32)
  # Kept in memory: left fusible, XLA recomputed these per-channel coefficients (and their
  # tiling) for every element of the gate's elementwise pass, which then took ~15x as long.
  a, b, mu, r = _materialized(lambda: jnp.stack(_sa_gates(xf, v, eps)), sweight)
  out = xf * jax.nn.sigmoid(a[:, None, None, :] * xf + b[:, None, None, :])
  return _shuffle2(out), (x, params, a, b, mu, r)


def _shuffle_attention_bwd(groups, eps, res, g):
  x, params, a, b, mu, r = res
  n, h, w, c = x.shape
  per_group = c // groups
  half = per_group // 2
  first = per_group - half
  v = _sa_channel_vectors(params, groups, per_group)
  xf = x.astype(jnp.float32)
  gu = _unshuffle2(g.astype(jnp.float32))
  e = lambda t: t[:, None, None, :]  # noqa: E731  (N, C) -> (N, 1, 1, C)
  sg = jax.nn.sigmoid(e(a) * xf + e(b))
  gz = gu * xf * sg * (1 - sg)
  p = _channel_sum(gz, (1, 2))  # (N, C)
  q = _channel_sum(gz * xf, (1, 2))
  hw = h * w
  sp = v['spatial'] > 0
  k = v['sw'] * v['gs']
  d = q - mu * p  # sum(gz * (x - mu))

  def coefficients():
    c3 = jnp.where(sp, -k * r**3 * d / hw, 0.0)
    return jnp.stack([c3, jnp.where(sp, -k * r * p / hw - c3 * mu, v['cw'] * p / hw)])

  c3, c2 = _materialized(coefficients, params[2])
  dx = gu * sg + e(a) * gz + e(c2) + e(c3) * xf  # a = k * r on spatial channels, 0 elsewhere

  def fold(t):  # (N, C) -> per-group-channel sums (per_group,)
    return jnp.sum(t.reshape(n, groups, per_group), axis=(0, 1))

  def first_part(t):
    t = fold(t)[:first]
    return t if first == half else jnp.sum(t, keepdims=True)

  sum_gz_xhat = r * d
  dcw = first_part(p * mu)
  dcb = first_part(p)
  spatial = lambda t: fold(t)[first:]  # noqa: E731
  dsw = spatial(v['gs'] * sum_gz_xhat + v['gb'] * p)
  dsb = spatial(p)
  dgs = spatial(v['sw'] * sum_gz_xhat)
  dgb = spatial(v['sw'] * p)
  return dx.astype(x.dtype), dcw, dcb, dsw, dsb, dgs, dgb


shuffle_attention.defvjp(_shuffle_attention_fwd, _shuffle_attention_bwd)


# --- BatchNorm (training mode) ------------------------------------------------------------------


def _batch_moments(xf: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
  axes = tuple(range(xf.ndim - 1))
  mean = _channel_mean(xf, axes)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  # Two-pass variance: stable and exact across devices.
  var = _channel_mean(jnp.square(xf - mean), axes)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  return mean, var


def batch_norm_forward(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Training-mode normalisation: (y fp32, batch mean, biased batch var, 1/sigma).

  Both BatchNorm impls run this forward ('xla' differentiates it by autodiff, 'cpu' through
  `batch_norm_train`), so their outputs and statistics are equal bit for bit.
  """
  xf = x.astype(jnp.float32)
  mean, var = _batch_moments(xf, axis_name)
  r = lax.rsqrt(var + epsilon)
  y = (xf - mean) * (r * scale) + bias
  return y, mean, var, r


def global_count(x: jax.Array, axis_name: str | None):
  """Elements per channel over the whole (cross-device) batch: N*H*W times the device count."""
  count = 1
  for a in range(x.ndim - 1):
    count *= x.shape[a]
  if axis_name is not None:
    count = count * lax.psum(1, axis_name)
  return count


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
  x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`batch_norm_forward` with the textbook backward; returns (y fp32, mean, var).

  Autodiff of the two-pass forward differentiates through the mean and the variance
  separately, which on CPU costs several more passes over the activation than the closed
  form dx = scale/sigma * (g - mean(g) - xhat * mean(g * xhat)). Gradients equal autodiff's
  to ~1e-6, also across devices (the means are over the global batch, as sync BatchNorm's
  are). The batch statistics' own cotangents are dropped: they only feed running averages,
  which no loss reads.
  """
  y, mean, var, _ = batch_norm_forward(x, scale, bias, epsilon, axis_name)
  return y, mean, var


def _bn_train_fwd(x, scale, bias, epsilon, axis_name):
  y, mean, var, r = batch_norm_forward(x, scale, bias, epsilon, axis_name)
  # The device count is read here, where the axis is bound (a backward pass may run outside).
  count = jnp.asarray(global_count(x, axis_name), jnp.float32)
  return (y, mean, var), (x, mean, r, scale, count)


def _bn_train_bwd(epsilon, axis_name, res, cts):
  x, mean, r, scale, count = res
  g = cts[0]
  axes = tuple(range(x.ndim - 1))
  xhat = (x.astype(jnp.float32) - mean) * r
  sum_g = _channel_sum(g, axes)
  sum_gx = _channel_sum(g * xhat, axes)
  tot_g, tot_gx = sum_g, sum_gx
  if axis_name is not None:
    tot_g, tot_gx = lax.psum((sum_g, sum_gx), axis_name)
  dx = (scale * r) * (g - tot_g / count - xhat * (tot_gx / count))
  return dx.astype(x.dtype), sum_gx, sum_g


batch_norm_train.defvjp(_bn_train_fwd, _bn_train_bwd)
