"""Zen-score, computed exactly as one step of the reference evolutionary search.

One draw builds a fresh network with every residual link removed, all conv
weights N(0, 1), BatchNorm scale 1 / shift 0 / eps 1e-3 in training mode and
fresh running statistics (mean 0, var 1). Two forward passes run, on x and on
x + gamma * x2 (both N(0, 1)); after each, every BatchNorm updates its running
variance with PyTorch's momentum 0.1 and the *unbiased* batch variance. Then

    score = log(mean_b sum_{h,w,c} |f(x) - f(x + gamma x2)|)
            + sum_{BN layers} log(sqrt(mean_c running_var))

``bn_variance='batch'`` replaces the running variance by the (biased) batch
variance of the first pass, the paper's formulation. The reference search
builds this network without SA blocks whatever the training flags say
(`compute_nas_score` creates its MasterNet without `argv`), so neither does
this module.

Why it is not a Flax model under one jit: a search scores thousands of
different structures, and a whole-network jit costs 10-20 s of compile per
structure on a 2-core CPU, ten times what the reference spends scoring one.
Without residual links every network here is a plain chain of *units*
(conv -> BatchNorm -> ReLU), so each unit runs as two compiled pieces (the
conv with its kernel fetch; BatchNorm and ReLU), each keyed by shape alone and
reused by every later structure with a unit of that shape; the pieces a new
structure lacks compile ahead of use on a thread pool. Channel widths are
rounded up to a small set of buckets (`channel_bucket`) so that few distinct
shapes exist at all; padded channels carry exact zeros (zero weights in,
BatchNorm maps an all-zero channel to zero) and are left out of every
statistic, so a padded score is the unpadded network's score. The draws of a
call run together under `vmap` (in memory-bounded groups at high resolution).
On CPU a depthwise conv runs as k*k shifted multiply-adds (`depthwise_shift`),
measured 5-10x faster there than XLA's grouped convolution, equal to 2e-7.

Weights are drawn on device: per draw one flat N(0, 1) buffer (fixed-size
chunks, each from its own folded key, so its values do not depend on how long
the buffer is), and unit `u` reads its HWIO kernel at
``buffer[offset_u : offset_u + k*k*cin*cout]`` in the *unpadded* layout.
`network_weights` returns exactly those kernels, which is how the tests load
them into the Flax model and compare.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zenfer_jax import plan as plan_lib
from zenfer_jax.layers.conv import default_depthwise_impl, depthwise_shift
from zenfer_jax.structure import Structure, resolve

__all__ = [
  'ZenScore',
  'ZenScorer',
  'Unit',
  'zen_score',
  'network_units',
  'network_weights',
  'network_inputs',
  'channel_bucket',
  'BN_EPS',
  'BN_MOMENTUM',
]

BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # PyTorch convention: weight of the new batch statistic.
_CHUNK = 1 << 16  # weight-buffer chunk length (values per folded key)
BN_VARIANCES = ('running', 'batch')


@dataclasses.dataclass(frozen=True)
class ZenScore:
  """Mean and (population) std over the draws, and every draw's score."""

  mean: float
  std: float
  scores: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Unit:
  """One conv -> BatchNorm (-> ReLU) of the residual-free network.

  `offset` is where its kernel starts in the flat weight buffer; `conv_path`
  and `bn_path` name the same layers in the Flax model's parameter tree.
  """

  in_channels: int
  out_channels: int
  kernel_size: int
  stride: int
  depthwise: bool
  relu: bool
  offset: int
  conv_path: tuple[str, ...]
  bn_path: tuple[str, ...]

  @property
  def kernel_shape(self) -> tuple[int, int, int, int]:
    k = self.kernel_size
    return (k, k, 1 if self.depthwise else self.in_channels, self.out_channels)

  @property
  def num_weights(self) -> int:
    return int(np.prod(self.kernel_shape))


def network_units(structure: str | Structure) -> tuple[Unit, ...]:
  """The residual-free network of `structure` as a chain of units, in forward order."""
  s = resolve(structure)
  flat = []

  def walk(ops, prefix):
    for op in ops:
      if isinstance(op, plan_lib.ResidualOp):
        walk(op.ops, prefix + (f'layer{op.index}',))
      else:
        flat.append((op, prefix))

  for bp in plan_lib.expand(s, no_reslink=True):
    walk(bp.ops, ('backbone', f'block{bp.index}'))

  units, offset, i = [], 0, 0
  while i < len(flat):
    conv, prefix = flat[i]
    if (
      not isinstance(conv, plan_lib.ConvOp)
      or i + 1 >= len(flat)
      or not isinstance(flat[i + 1][0], plan_lib.BNOp)
    ):
      raise AssertionError(
        f'residual-free plan of {s} is not a chain of conv -> BN units at op {i}: {conv}'
      )
    bn, bn_prefix = flat[i + 1]
    relu = i + 2 < len(flat) and isinstance(flat[i + 2][0], plan_lib.ReLUOp)
    if conv.groups != 1 and not conv.depthwise:
      raise AssertionError(f'grouped (non-depthwise) conv is not in the structure language: {conv}')
    u = Unit(
      in_channels=conv.in_channels,
      out_channels=conv.out_channels,
      kernel_size=conv.kernel_size,
      stride=conv.stride,
      depthwise=conv.depthwise,
      relu=relu,
      offset=offset,
      conv_path=prefix + (f'conv{conv.index}',),
      bn_path=bn_prefix + (f'bn{bn.index}',),
    )
    units.append(u)
    offset += u.num_weights
    i += 3 if relu else 2
  return tuple(units)


def channel_bucket(channels: int, steps_per_octave: int | None = 4) -> int:
  """The padded width a unit with `channels` outputs is compiled for.

  None keeps the width (exact shapes). Otherwise widths up to 32 round up to
  a multiple of 8 and wider ones to one of `steps_per_octave` evenly spaced
  multiples per octave (4: 40, 48, 56, 64, 80, 96, 112, 128, 160, ...), so a
  whole search space needs only a few dozen distinct shapes.
  """
  if steps_per_octave is None or channels <= 8:
    return channels
  if channels <= 32:
    return -(-channels // 8) * 8
  octave = 1 << (channels - 1).bit_length() - 1  # largest power of two < channels
  step = max(8, octave // steps_per_octave)
  return -(-channels // step) * step


def _draw_keys(seed, repeats: int) -> jax.Array:
  key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
  return jax.random.split(key, repeats)


# ---------------------------------------------------------------------------
# Compiled pieces. Each is jitted once per static signature and shared by
# every scorer in the process; TRACES counts traces per piece for the tests.
# ---------------------------------------------------------------------------
TRACES: collections.Counter = collections.Counter()
_TRACES_LOCK = threading.Lock()


def _count_trace(name: str) -> None:
  with _TRACES_LOCK:  # pieces are traced on the compile threads
    TRACES[name] += 1


def piece_compile_options(backend: str | None = None) -> dict:
  """XLA options for the compiled pieces: no convolution autotuning on GPUs.

  A cold search compiles hundreds of tiny pieces, each run a few times per candidate. On a
  GPU XLA autotunes every convolution at compile time by timing cuDNN's algorithms on the
  device, and those trials queue on the one GPU; on an H100 a 100-iteration cold search did
  not finish in 180 s where PyTorch needed 8 s (its side of benchmarks/search_throughput runs
  without cudnn.benchmark, on cuDNN's heuristic algorithm choice, as this then does).
  Not yet measured on a GPU; ZENFER_SEARCH_GPU_AUTOTUNE=1 keeps autotuning.
  """
  backend = backend or jax.default_backend()
  if (
    backend in ('gpu', 'cuda', 'rocm') and os.environ.get('ZENFER_SEARCH_GPU_AUTOTUNE', '0') != '1'
  ):
    return {'xla_gpu_autotune_level': 0}
  return {}


def _compile_piece(fn, args, static):
  lowered = fn.lower(*args, **static)
  options = piece_compile_options()
  if options:
    try:
      return lowered.compile(compiler_options=options)
    except Exception:
      pass
  return lowered.compile()


class _CompiledPieces:
  """Compiled unit pieces by signature, compiled ahead of use on a thread pool.

  All pieces a structure lacks start compiling before its first unit runs,
  so compiles overlap one another (XLA compiles without holding the GIL) and
  the execution of the units before them. Measured on the 2-core CPU: 8
  conv pieces compile in 0.65 s on two threads against 0.96 s on one.
  """

  def __init__(self):
    self._futures: dict[tuple, Future] = {}
    self._lock = threading.Lock()
    self._pool: ThreadPoolExecutor | None = None

  def get(self, fn, args: tuple[jax.ShapeDtypeStruct, ...], static: dict) -> Future:
    key = (fn.__name__, tuple((a.shape, str(a.dtype)) for a in args), tuple(sorted(static.items())))
    with self._lock:
      fut = self._futures.get(key)
      if fut is None or (fut.done() and fut.exception() is not None):
        if self._pool is None:
          workers = int(os.environ.get('ZENFER_COMPILE_THREADS', 0)) or max(
            1, min(8, os.cpu_count() or 1)
          )
          self._pool = ThreadPoolExecutor(workers, thread_name_prefix='zen-score-compile')
        fut = self._futures[key] = self._pool.submit(_compile_piece, fn, args, static)
    return fut

  def __len__(self) -> int:
    return len(self._futures)


_PIECES = _CompiledPieces()
_I32 = jax.ShapeDtypeStruct((), jnp.int32)


@functools.partial(jax.jit, static_argnames=('batch_size', 'resolution'))
def _inputs(keys, gamma, *, batch_size: int, resolution: int):
  """Per draw the stacked batch [x; x + gamma * x2], shape (R, 2B, H, W, 3)."""
  _count_trace('inputs')

  def one(key):
    shape = (2, batch_size, resolution, resolution, 3)
    x, x2 = jax.random.normal(jax.random.fold_in(key, 1), shape, jnp.float32)
    return jnp.concatenate([x, x + gamma * x2], axis=0)

  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=('num_chunks',))
def _weight_buffer(keys, *, num_chunks: int):
  """Per draw a flat N(0, 1) buffer of num_chunks * _CHUNK values, shape (R, L)."""
  _count_trace('weights')

  def one(key):
    wkey = jax.random.fold_in(key, 2)
    chunks = jax.vmap(
      lambda c: jax.random.normal(jax.random.fold_in(wkey, c), (_CHUNK,), jnp.float32)
    )(jnp.arange(num_chunks))
    return chunks.reshape(-1)

  return jax.vmap(one)(keys)


def _gather_kernel(buf, offset, cin, cout, *, k: int, cin_pad: int, cout_pad: int, depthwise: bool):
  """The unit's HWIO kernel from the flat buffer, zero-padded to (k, k, cin_pad|1, cout_pad)."""
  i = jnp.arange(k)[:, None, None, None]
  j = jnp.arange(k)[None, :, None, None]
  co = jnp.arange(cout_pad)[None, None, None, :]
  if depthwise:
    idx = (i * k + j) * cout + co
    valid = co < cout
  else:
    ci = jnp.arange(cin_pad)[None, None, :, None]
    idx = ((i * k + j) * cin + ci) * cout + co
    valid = (ci < cin) & (co < cout)
  idx = jnp.where(valid, offset + idx, 0)
  return jnp.where(valid, buf[idx], 0.0)


@functools.partial(
  jax.jit, static_argnames=('kernel_size', 'stride', 'depthwise', 'cout_pad', 'depthwise_impl')
)
def _unit_conv(
  x, buf, offset, cin, cout, *, kernel_size, stride, depthwise, cout_pad, depthwise_impl
):
  """The unit's convolution for every draw, its kernel read from the draw's weight buffer.

  x: (R, 2B, H, W, cin_pad), buf: (R, L). Depthwise kernels run as shifted
  multiply-adds on CPU (`depthwise_shift`) and as XLA's grouped conv
  elsewhere. Dense kernels differ per draw, so a plain `vmap` would make one
  grouped conv over all draws, a slow path on CPU; 1x1 kernels become a
  batched matmul and larger ones loop over the draws instead.
  """
  _count_trace('conv')
  k = kernel_size
  pad = k // 2
  w = jax.vmap(
    lambda b: _gather_kernel(
      b, offset, cin, cout, k=k, cin_pad=x.shape[-1], cout_pad=cout_pad, depthwise=depthwise
    )
  )(buf)

  def conv(x, w):
    return lax.conv_general_dilated(
      x,
      w,
      window_strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1] if depthwise else 1,
    )

  if depthwise:
    if depthwise_impl == 'shift':
      return jax.vmap(lambda x, w: depthwise_shift(x, w, stride, pad))(x, w)
    return jax.vmap(conv)(x, w)
  if k == 1:
    xs = x[:, :, ::stride, ::stride, :]
    return jnp.einsum('rnhwc,rcd->rnhwd', xs, w[:, 0, 0])
  if x.shape[0] == 1:
    return conv(x[0], w[0])[None]
  return lax.map(lambda xw: conv(*xw), (x, w))


@functools.partial(jax.jit, static_argnames=('relu', 'bn_variance'))
def _unit_bn(y, cout, *, relu, bn_variance):
  """Train-mode BatchNorm per pass (and ReLU) for every draw.

  y: (R, 2B, H, W, C) with the two passes stacked on the batch axis. Returns
  the output and per draw this layer's log(sqrt(mean over the `cout` real
  channels of the variance the score reads)). The variance is taken in one
  sweep around a per-channel shift (the channel's first value), which keeps
  E[d^2] - E[d]^2 free of cancellation unless a channel's mean sits many
  standard deviations away from its first value; padded channels are all
  zero and stay zero.
  """
  _count_trace('bn')
  r, n2, h, w, c = y.shape
  m = (n2 // 2) * h * w
  yp = y.reshape(r, 2, m, c)
  d = yp - yp[:, :, :1, :]
  mean_d = jnp.mean(d, axis=2, keepdims=True)
  var = jnp.maximum(jnp.mean(d * d, axis=2, keepdims=True) - mean_d * mean_d, 0.0)
  out = (d - mean_d) * lax.rsqrt(var + BN_EPS)
  if relu:
    out = jnp.maximum(out, 0.0)
  var = var.reshape(r, 2, c)
  if bn_variance == 'running':
    unbiased = var * (m / max(m - 1, 1))
    mom = BN_MOMENTUM
    read = (1 - mom) * ((1 - mom) * 1.0 + mom * unbiased[:, 0]) + mom * unbiased[:, 1]
  else:
    read = var[:, 0]
  real = jnp.arange(c) < cout
  mean_read = jnp.sum(jnp.where(real, read, 0.0), axis=-1) / cout
  return out.reshape(y.shape), 0.5 * jnp.log(mean_read)


@jax.jit
def _log_delta(x):
  """Per draw log(mean over the batch of sum |f(x) - f(x + gamma x2)|)."""
  _count_trace('delta')
  n2 = x.shape[1]
  diff = jnp.abs(x[:, : n2 // 2] - x[:, n2 // 2 :])
  return jnp.log(jnp.mean(jnp.sum(diff, axis=(2, 3, 4)), axis=1))


def _num_chunks(total: int) -> int:
  """Chunks for `total` weights, rounded up to a power of two so few buffer shapes exist."""
  need = max(1, -(-total // _CHUNK))
  return 1 << (need - 1).bit_length()


class ZenScorer:
  """Scores structures with fixed settings; caches scores by structure string.

  Every compiled piece is keyed by shape only, so a structure made of unit
  shapes seen before costs no compile at all, and a structure seen before
  costs nothing (its score is cached for each seed).

  steps_per_octave: channel buckets (see `channel_bucket`; None: exact widths;
  'auto': 4 on CPU, 1 (powers of two) on accelerators).
  depthwise_impl: 'shift' (k*k shifted multiply-adds), 'xla' (grouped conv) or
  'auto' ('shift' on CPU, where it is measured faster).
  weight_capacity: weights per draw to allocate up front; the buffer grows by
  doubling when a structure needs more, which recompiles every conv once.
  draws_per_call: draws vmapped together ('auto': as many as fit about 1 GiB).
  """

  def __init__(
    self,
    *,
    resolution: int = 224,
    batch_size: int = 16,
    repeats: int = 1,
    mixup_gamma: float = 1e-2,
    bn_variance: str = 'running',
    steps_per_octave: int | None | str = 'auto',
    depthwise_impl: str = 'auto',
    weight_capacity: int = 0,
    draws_per_call: int | str = 'auto',
  ):
    if bn_variance not in BN_VARIANCES:
      raise ValueError(f'bn_variance must be one of {BN_VARIANCES}, got {bn_variance!r}')
    if depthwise_impl not in ('auto', 'xla', 'shift'):
      raise ValueError(f"depthwise_impl must be 'auto', 'xla' or 'shift', got {depthwise_impl!r}")
    for name, v in (('resolution', resolution), ('batch_size', batch_size), ('repeats', repeats)):
      if not isinstance(v, int) or v < 1:
        raise ValueError(f'{name} must be a positive integer, got {v!r}')
    if batch_size < 2:
      raise ValueError(
        'batch_size must be at least 2: the unbiased batch variance needs two samples'
      )
    self.resolution = resolution
    self.batch_size = batch_size
    self.repeats = repeats
    self.mixup_gamma = float(mixup_gamma)
    self.bn_variance = bn_variance
    if steps_per_octave == 'auto':
      # CPU time goes into arithmetic, so pad little; an accelerator does padded channels
      # almost for free and a compile costs it far more than a run, so pad to powers of two.
      steps_per_octave = 4 if jax.default_backend() == 'cpu' else 1
    self.steps_per_octave = steps_per_octave
    if draws_per_call == 'auto':
      # Activations of a draw scale with (2B) x H x W x width; cap one call near 1 GiB
      # assuming 64 channels at full resolution.
      per_draw = 2 * batch_size * resolution * resolution * 64 * 4 * 3
      draws_per_call = max(1, min(repeats, (1 << 30) // per_draw))
    if not isinstance(draws_per_call, int) or draws_per_call < 1:
      raise ValueError(
        f"draws_per_call must be a positive integer or 'auto', got {draws_per_call!r}"
      )
    self.draws_per_call = min(draws_per_call, repeats)
    self.depthwise_impl = default_depthwise_impl() if depthwise_impl == 'auto' else depthwise_impl
    self._cache: dict[tuple[str, object], ZenScore] = {}
    # The weight buffer's length is part of every compiled conv's signature, so it only
    # ever grows (doubling); values do not depend on it (see _weight_buffer).
    self._num_chunks = _num_chunks(max(int(weight_capacity), 1))

  def scores(self, structure: str | Structure, seed: int | jax.Array = 0) -> np.ndarray:
    """Per-draw scores, shape (repeats,); nothing is cached.

    Draws run `draws_per_call` at a time (one compiled shape; the last group is
    padded with extra draws that are dropped), so memory stays bounded at 224.
    """
    units = network_units(structure)
    keys = _draw_keys(seed, self.repeats)
    n = self.draws_per_call
    groups = -(-self.repeats // n)
    if groups * n > self.repeats:
      extra = jax.random.split(jax.random.fold_in(keys[0], 7), groups * n - self.repeats)
      keys = jnp.concatenate([keys, extra])
    out = [np.asarray(self._score_keys(units, keys[g * n : (g + 1) * n])) for g in range(groups)]
    return np.concatenate(out)[: self.repeats]

  def _score_keys(self, units, keys) -> jax.Array:
    x = _inputs(keys, self.mixup_gamma, batch_size=self.batch_size, resolution=self.resolution)
    total = units[-1].offset + units[-1].num_weights
    self._num_chunks = max(self._num_chunks, _num_chunks(total))
    buf = _weight_buffer(keys, num_chunks=self._num_chunks)
    # Every piece's signature follows from the structure alone: request them all first.
    f32 = jnp.float32
    r, n2, h, cin_pad = keys.shape[0], 2 * self.batch_size, self.resolution, 3
    buf_aval = jax.ShapeDtypeStruct(buf.shape, f32)
    steps = []
    for u in units:
      cout_pad = channel_bucket(u.out_channels, self.steps_per_octave)
      conv = _PIECES.get(
        _unit_conv,
        (jax.ShapeDtypeStruct((r, n2, h, h, cin_pad), f32), buf_aval, _I32, _I32, _I32),
        dict(
          kernel_size=u.kernel_size,
          stride=u.stride,
          depthwise=u.depthwise,
          cout_pad=cout_pad,
          depthwise_impl=self.depthwise_impl,
        ),
      )
      k = u.kernel_size
      h = (h + 2 * (k // 2) - k) // u.stride + 1
      bn = _PIECES.get(
        _unit_bn,
        (jax.ShapeDtypeStruct((r, n2, h, h, cout_pad), f32), _I32),
        dict(relu=u.relu, bn_variance=self.bn_variance),
      )
      steps.append((u, conv, bn))
      cin_pad = cout_pad
    delta = _PIECES.get(_log_delta, (jax.ShapeDtypeStruct((r, n2, h, h, cin_pad), f32),), {})
    log_bn = None
    for u, conv, bn in steps:
      cout = np.int32(u.out_channels)
      y = conv.result()(x, buf, np.int32(u.offset), np.int32(u.in_channels), cout)
      x, term = bn.result()(y, cout)
      log_bn = term if log_bn is None else log_bn + term
    return delta.result()(x) + log_bn

  def __call__(self, structure: str | Structure, seed: int = 0) -> ZenScore:
    s = resolve(structure)
    cache_key = (
      str(s),
      seed if isinstance(seed, int) else tuple(np.asarray(jax.random.key_data(seed)).ravel()),
    )
    hit = self._cache.get(cache_key)
    if hit is not None:
      return hit
    values = np.asarray(self.scores(s, seed), dtype=np.float64)
    result = ZenScore(
      mean=float(values.mean()), std=float(values.std()), scores=tuple(float(v) for v in values)
    )
    self._cache[cache_key] = result
    return result

  @property
  def cache_size(self) -> int:
    return len(self._cache)


_SCORERS: dict[tuple, ZenScorer] = {}


def zen_score(
  structure: str | Structure,
  *,
  resolution: int = 224,
  batch_size: int = 16,
  repeats: int = 1,
  mixup_gamma: float = 1e-2,
  seed: int = 0,
  bn_variance: str = 'running',
) -> ZenScore:
  """Zen-score of `structure` over `repeats` independent fresh networks (see the module docstring)."""
  settings = (resolution, batch_size, repeats, float(mixup_gamma), bn_variance)
  scorer = _SCORERS.get(settings)
  if scorer is None:
    scorer = _SCORERS[settings] = ZenScorer(
      resolution=resolution,
      batch_size=batch_size,
      repeats=repeats,
      mixup_gamma=mixup_gamma,
      bn_variance=bn_variance,
    )
  return scorer(structure, seed)


def network_weights(structure: str | Structure, seed: int | jax.Array = 0, *, repeats: int = 1):
  """The conv kernels draw `d` of `zen_score(structure, seed=...)` uses: [{conv_path: kernel}] per draw."""
  units = network_units(structure)
  keys = _draw_keys(seed, repeats)
  total = units[-1].offset + units[-1].num_weights
  buf = np.asarray(_weight_buffer(keys, num_chunks=_num_chunks(total)))
  return [
    {
      u.conv_path: buf[d, u.offset : u.offset + u.num_weights].reshape(u.kernel_shape)
      for u in units
    }
    for d in range(repeats)
  ]


def network_inputs(
  seed: int | jax.Array = 0,
  *,
  repeats: int = 1,
  batch_size: int = 16,
  resolution: int = 224,
  mixup_gamma: float = 1e-2,
):
  """The (x, x + gamma * x2) batches of each draw, shape (R, 2, B, H, W, 3)."""
  keys = _draw_keys(seed, repeats)
  x = np.asarray(_inputs(keys, float(mixup_gamma), batch_size=batch_size, resolution=resolution))
  return x.reshape(repeats, 2, batch_size, resolution, resolution, 3)
