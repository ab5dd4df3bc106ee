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
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["Conv", "depthwise_shift", "default_depthwise_impl"]


def default_depthwise_impl() -> str:
    """'shift' on CPU, where it is measured faster; XLA's native op elsewhere."""
    return "shift" if jax.default_backend() == "cpu" else "xla"


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
    xp = lax.pad(x, jnp.zeros((), x.dtype),
                 ((0, 0, 0), (pad, s * hq - h - pad, 0), (pad, s * wq - w - pad, 0), (0, 0, 0)))
    xq = jnp.transpose(xp.reshape(n, hq, s, wq, s, c), (2, 4, 0, 5, 1, 3))  # (s, s, n, c, hq, wq)
    xf = jnp.fft.rfft2(xq, s=(fh, fw))
    gf = jnp.fft.rfft2(jnp.transpose(g, (0, 3, 1, 2)), s=(fh, fw))  # (n, c, ...)
    spec = jnp.sum(xf * jnp.conj(gf), axis=2)  # (s, s, c, fh, fw//2+1)
    corr = jnp.fft.irfft2(spec, s=(fh, fw))[..., : o + 1, : o + 1]  # (s, s, c, o+1, o+1)
    d = np.arange(k)
    # tap (dy, dx) lives in phase (dy % s, dx % s) at offset (dy // s, dx // s)
    dk = corr[(d % s)[:, None], (d % s)[None, :], :, (d // s)[:, None], (d // s)[None, :]]  # (k, k, c)
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
    gp = lax.pad(g, jnp.zeros((), g.dtype),
                 ((0, 0, 0),
                  (lo, h + k - 1 - ((ho - 1) * stride + 1) - lo, stride - 1),
                  (lo, w + k - 1 - ((wo - 1) * stride + 1) - lo, stride - 1),
                  (0, 0, 0)))
    dx = _taps_sum(gp, kernel[::-1, ::-1], 1, h, w).astype(x.dtype)
    dk = _depthwise_kernel_grad(x, g, k, stride, pad).astype(kernel.dtype)
    return dx, dk


depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


class Conv(nn.Module):
    """Bias-optional conv with symmetric k//2 padding; depthwise when groups == features."""

    features: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
    depthwise_impl: str = "auto"  # 'auto' | 'xla' | 'shift'
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel_size
        if cin % self.groups:
            raise ValueError(f"{self.name}: {cin} input channels are not divisible by groups={self.groups}")
        kernel = self.param("kernel", self.kernel_init, (k, k, cin // self.groups, self.features), jnp.float32)
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        kernel = kernel.astype(dtype)
        pad = k // 2
        impl = default_depthwise_impl() if self.depthwise_impl == "auto" else self.depthwise_impl
        depthwise = self.groups > 1 and self.groups == cin == self.features
        if depthwise and impl == "shift":
            y = depthwise_shift(x, kernel, self.stride, pad)
        elif k == 1 and self.groups == 1 and jax.default_backend() == "cpu":
            # A 1x1 conv as one 2-D matmul: on CPU XLA lowers the conv's weight gradient with
            # transposed copies of both activations (about 6x slower than this GEMM).
            xs = x[:, :: self.stride, :: self.stride, :] if self.stride > 1 else x
            n, h, w, _ = xs.shape
            y = (xs.reshape(n * h * w, cin) @ kernel.reshape(cin, self.features)).reshape(n, h, w, self.features)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                window_strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(dtype)
        return y
