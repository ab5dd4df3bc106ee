"""A small, bounded set of compiled programs that score any candidate of a search.

Why this shape. A residual-free candidate is: a first conv, residual *layers* grouped into
*stages* (a stage starts at every stride-2 layer), and a last conv. Its widths change with every
mutation, and an XLA program has static shapes, so programs keyed by exact widths (or by one
width bucket per unit) keep compiling all search long: a 1,000-iteration search at 64 px met
over 300 distinct unit shapes even with power-of-two buckets. Here a program is one whole
stage, keyed by two width *levels* only (a geometric ladder 8, 32, 128, ... at the default
ratio 4):

  * ``in_level``: the width of the activation that enters the stage (the previous stage's
    level, or 3 for the image), and
  * ``level``: the stage's own level, the width every activation between its layers is
    padded to (it covers every thin width of the stage: layer inputs and outputs).

The *wide* width inside a layer (the IDW expansion, the KXKX bottleneck, the K1KXK1 kxk
output, the last conv's width) is not in the key at all: the layer runs a loop over chunks of
`chunk` channels with a runtime trip count; each chunk goes through its BatchNorm/ReLU (and the
depthwise conv) on its own, since those are per channel, and the layer's output accumulates
chunk by chunk. The number of layers of a stage is a runtime loop count too, and kernel sizes
are a `lax.switch`, so a stage program serves every depth, expansion, kernel size and wide width.

Exact, not approximate: padded channels carry exact zeros (their weights are masked to zero;
BatchNorm maps an all-zero channel to zero) and every BatchNorm statistic and running-variance
term is summed over real channels only, so a padded score is the unpadded network's score up to
float rounding. Weights are read from the flat per-draw N(0, 1) buffer in the *unpadded* layout
(`units.network_units`, drawn by `zen_score.network_weights`), so the draws do not depend on levels, chunks or batching.

Batching: every program is `vmap`ped over instances (draws, and candidates when a search scores
several per step); candidates scored together share the maximum level per stage.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zenfer_jax.model.structure import Structure, resolve
from zenfer_jax.nas.units import network_units

__all__ = [
  'Conv',
  'Layer',
  'Layout',
  'StageSpec',
  'ProgramSet',
  'network_layout',
  'width_level',
  'conv_out_size',
  'FAMILIES',
  'ROW_FIELDS',
]

FAMILIES = ('idw', 'kxkx', 'k1kxk1')
ROW_FIELDS = 8  # family, kernel size, cin, mid, cout, offset1, offset2, offset3
BN_EPS = 1e-3
BN_MOMENTUM = 0.1  # PyTorch convention: weight of the new batch statistic.


@dataclasses.dataclass(frozen=True)
class Conv:
  """The first or last plain conv -> BatchNorm (-> ReLU) of the network."""

  kernel_size: int
  stride: int
  in_channels: int
  out_channels: int
  offset: int
  relu: bool


@dataclasses.dataclass(frozen=True)
class Layer:
  """One residual layer without its residual link.

  idw:    1x1 (cin -> mid), depthwise kxk (mid, stride), 1x1 (mid -> cout);
  kxkx:   kxk (cin -> mid, stride), kxk (mid -> cout);
  k1kxk1: 1x1 (cin -> mid), kxk (mid -> mid, stride), 1x1 (mid -> cout).
  Each conv is followed by BatchNorm and ReLU. `offsets` locate the convs' kernels in the
  flat weight buffer (0 where a family has fewer convs).
  """

  family: str
  kernel_size: int
  stride: int
  in_channels: int
  mid_channels: int
  out_channels: int
  offsets: tuple[int, int, int]

  @property
  def thin_widths(self) -> tuple[int, ...]:
    """The widths the stage level must cover (the middle one runs in chunks)."""
    return (self.in_channels, self.out_channels)


@dataclasses.dataclass(frozen=True)
class Layout:
  first: Conv
  stages: tuple[tuple[Layer, ...], ...]
  last: Conv
  num_weights: int

  def signature(self, resolution: int) -> tuple:
    """What programs depend on besides levels: spatial sizes, strides, kernel of the plain convs."""
    h = conv_out_size(resolution, self.first.kernel_size, self.first.stride)
    stages = []
    for i, stage in enumerate(self.stages):
      h_in = resolution if i == 0 else h
      entry = stage[0].stride if stage else 1
      if stage:
        h = conv_out_size(h, stage[0].kernel_size, entry)
      stages.append((h_in, entry, bool(stage)))
    return (
      (self.first.kernel_size, self.first.stride, self.first.relu),
      tuple(stages),
      (self.last.kernel_size, self.last.stride, self.last.relu),
    )


def conv_out_size(h: int, k: int, stride: int) -> int:
  """Spatial size after a conv padded by k // 2 on each side (the reference's padding)."""
  return (h + 2 * (k // 2) - k) // stride + 1


def width_level(channels: int, ratio: int = 2) -> int:
  """The smallest ladder width 8 * ratio**i that holds `channels` (3 stays 3: the image)."""
  if channels <= 3:
    return channels
  level = 8
  while level < channels:
    level *= ratio
  return level


def network_layout(structure: str | Structure) -> Layout:
  """The residual-free network of `structure` as first conv, stages of layers, last conv."""
  s = resolve(structure)
  units = network_units(s)
  groups: list[list] = []
  for u in units:
    key = u.conv_path[1:3] if len(u.conv_path) == 4 else u.conv_path[1:]
    if groups and len(u.conv_path) == 4 and groups[-1][0] == key:
      groups[-1][1].append(u)
    else:
      groups.append([key, [u]])
  if len(groups) < 2 or len(groups[0][1][0].conv_path) != 3 or len(groups[-1][1][0].conv_path) != 3:
    raise ValueError(
      f'{s}: the compiled programs score structures made of one plain conv, residual blocks and '
      'one plain conv (as both search spaces are); this one does not start and end with a '
      'single SuperConv layer'
    )

  def plain(u) -> Conv:
    return Conv(u.kernel_size, u.stride, u.in_channels, u.out_channels, u.offset, u.relu)

  stages: list[list[Layer]] = [[]]
  for key, us in groups[1:-1]:
    if len(us[0].conv_path) != 4:
      raise ValueError(
        f'{s}: a SuperConv block between residual blocks is not supported by the compiled '
        'programs (neither search space produces one)'
      )
    family = s.blocks[int(key[0][len('block') :])].family
    if family == 'kxkx':
      a, b = us
      layer = Layer(
        family,
        a.kernel_size,
        a.stride,
        a.in_channels,
        a.out_channels,
        b.out_channels,
        (a.offset, b.offset, 0),
      )
    else:  # idw (expand, depthwise, project) and k1kxk1: the middle unit has the kernel.
      a, b, c = us
      layer = Layer(
        family,
        b.kernel_size,
        b.stride,
        a.in_channels,
        a.out_channels,
        c.out_channels,
        (a.offset, b.offset, c.offset),
      )
    if layer.stride != 1 and stages[-1]:
      stages.append([])
    stages[-1].append(layer)
  last = units[-1]
  return Layout(
    first=plain(units[0]),
    stages=tuple(tuple(st) for st in stages),
    last=plain(last),
    num_weights=last.offset + last.num_weights,
  )


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """Everything static about one stage program (its compile key)."""

  index: int
  h_in: int
  entry_stride: int
  has_layers: bool
  first: tuple | None  # (kernel, stride, relu) of the first conv when the stage starts the net
  last: tuple | None  # (kernel, stride, relu) of the last conv when the stage ends the net
  in_level: int  # width of the input activation (3: the image)
  first_level: int  # width of the first conv's output (stage 0 only, else 0)
  level: int  # width of every activation between this stage's layers
  families: tuple[str, ...]
  kmax: int  # the largest kernel size of the residual layers
  chunk: int
  last_chunk: int
  instances: int  # vmapped instances (draws x candidates)
  shared_structure: bool  # one structure for all instances (its tables are not batched)
  batch_size: int
  max_layers: int
  capacity: int  # flat weight buffer length per instance
  bn_variance: str
  depthwise_impl: str


# ----------------------------------------------------------------------------- numerics


def _bn(y, valid, relu: bool, bn_variance: str):
  """Train-mode BatchNorm per pass (the two passes are stacked on the batch axis).

  Returns the output and the sum over `valid` channels of the variance the score reads (the
  running variance after two PyTorch-style updates, or the first pass's batch variance).
  Two-pass mean/variance: exact and free of cancellation. All-zero (padded) channels stay zero.
  """
  n2, h, w, c = y.shape
  m = (n2 // 2) * h * w
  yp = y.reshape(2, m, c)
  mean = jnp.mean(yp, axis=1, keepdims=True)
  d = yp - mean
  var = jnp.mean(d * d, axis=1)  # (2, c), biased
  out = d * lax.rsqrt(var[:, None, :] + BN_EPS)
  if relu:
    out = jnp.maximum(out, 0.0)
  if bn_variance == 'running':
    unbiased = var * (m / max(m - 1, 1))
    mom = BN_MOMENTUM
    read = (1 - mom) * ((1 - mom) * 1.0 + mom * unbiased[0]) + mom * unbiased[1]
  else:
    read = var[0]
  return out.reshape(y.shape), jnp.sum(jnp.where(valid, read, 0.0))


def _rows(buf, starts, length: int):
  """buf[s : s + length] for every s in `starts`: contiguous runs, copied as such (a gather
  of single elements costs XLA on CPU several times more). The buffer keeps a margin past its
  last weight (see ZenScorer), so a run that starts at a real weight never reaches the end."""
  flat = starts.reshape(-1)
  rows = jax.vmap(lambda st: lax.dynamic_slice(buf, (st,), (length,)))(flat)
  return rows.reshape(starts.shape + (length,))


def _kernel(buf, offset, k, cin, cout, ci0, co0, ki: int, ko: int, kmax: int | None = None):
  """Block [ci0:ci0+ki, co0:co0+ko] of the HWIO kernel (k, k, cin, cout) stored at `offset`.

  Out-of-range entries are zero. With `kmax`, the k x k kernel sits centred in a kmax x kmax
  one with zero taps (exact for the k // 2 padding used everywhere); `k` may then be traced.
  """
  size = k if kmax is None else kmax
  i = jnp.arange(size)[:, None, None]
  j = jnp.arange(size)[None, :, None]
  ci = ci0 + jnp.arange(ki)[None, None, :]
  valid = ci < cin
  if kmax is not None:
    shift = (kmax - k) // 2
    i, j = i - shift, j - shift
    valid = valid & (i >= 0) & (i < k) & (j >= 0) & (j < k)
  starts = jnp.where(valid, offset + ((i * k + j) * cin + ci) * cout + co0, 0)
  w = _rows(buf, starts, ko)
  return jnp.where(valid[..., None] & (co0 + jnp.arange(ko) < cout), w, 0.0)


def _conv(x, w, stride: int):
  """A conv with a static kernel (the first and last plain convs)."""
  k = w.shape[0]
  if k == 1:
    xs = x[:, ::stride, ::stride, :] if stride > 1 else x
    return jnp.einsum('nhwc,cd->nhwd', xs, w[0, 0])
  p = k // 2
  return lax.conv_general_dilated(
    x, w, (stride, stride), ((p, p), (p, p)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _tap_sum(x, k, stride: int, kmax: int, term, out_channels: int):
  """sum over the k*k taps (dy, dx) of term(window(dy, dx), dy, dx), k a runtime value.

  window(dy, dx) is the input seen by tap (dy, dx) of a kxk conv padded by k // 2 with the
  given stride; the input is padded once for the largest kernel `kmax`. One small loop body
  serves every kernel size, where a switch would compile (and trace) one body per size.
  """
  n, h, w, c = x.shape
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  p = kmax // 2
  xp = jnp.pad(x, ((0, 0), (p, p + stride), (p, p + stride), (0, 0)))
  base = p - k // 2

  def body(t, acc):
    dy, dx = t // k, t % k
    win = lax.dynamic_slice(xp, (0, base + dy, base + dx, 0), (n, stride * ho, stride * wo, c))
    if stride > 1:
      win = win[:, ::stride, ::stride, :]
    return acc + term(win, dy, dx)

  return lax.fori_loop(0, k * k, body, jnp.zeros((n, ho, wo, out_channels), x.dtype))


def _dense(buf, off, k, cin, cout, x, ci0, co0, ko: int, stride: int, kmax: int):
  """Output channels [co0:co0+ko] of the kxk conv (cin -> cout) stored at `off`, applied to
  input channels [ci0:ci0+x.shape[-1]] (x holds just those): summed over input chunks, these
  make the whole conv."""
  ki = x.shape[-1]

  def term(win, dy, dx):
    ci = ci0 + jnp.arange(ki)
    starts = jnp.where(ci < cin, off + ((dy * k + dx) * cin + ci) * cout + co0, 0)
    valid = (ci < cin)[:, None] & (co0 + jnp.arange(ko) < cout)[None, :]
    w = jnp.where(valid, _rows(buf, starts, ko), 0.0)
    return jnp.einsum('nhwc,cd->nhwd', win, w)

  return _tap_sum(x, k, stride, kmax, term, ko)


def _pointwise(buf, off, cin, cout, x, ci0, co0, ki: int, ko: int):
  """x @ the block [ci0:ci0+ki, co0:co0+ko] of the 1x1 conv (cin -> cout) stored at `off`."""
  return jnp.einsum('nhwc,cd->nhwd', x, _kernel(buf, off, 1, cin, cout, ci0, co0, ki, ko)[0, 0])


def _depthwise(buf, off, k, c, c0, y, stride: int, spec: StageSpec):
  """Channels [c0:c0+t] of the depthwise kxk conv (c channels) stored at `off`, on y."""
  t = y.shape[-1]
  lane = c0 + jnp.arange(t)
  kmax = spec.kmax
  if spec.depthwise_impl == 'xla':  # one grouped conv, the k x k kernel centred in kmax x kmax
    w = _kernel(buf, off, k, 1, c, 0, c0, 1, t, kmax)
    p = kmax // 2
    return lax.conv_general_dilated(
      y,
      w,
      (stride, stride),
      ((p, p), (p, p)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=t,
    )

  valid = lane < c

  def term(win, dy, dx):
    w = lax.dynamic_slice(buf, (off + (dy * k + dx) * c + c0,), (t,))
    return win * jnp.where(valid, w, 0.0)

  return _tap_sum(y, k, stride, kmax, term, t)


def _idw(spec: StageSpec, x, buf, row, stride: int):
  _, k, cin, mid, cout, o1, o2, o3 = (row[i] for i in range(ROW_FIELDS))
  n2, h, _, lin = x.shape
  ho = (h - 1) // stride + 1
  t, p = spec.chunk, spec.level
  lane = jnp.arange(t)

  def body(c, carry):
    acc, s1, s2 = carry
    c0 = c * t
    valid = c0 + lane < mid
    y, r1 = _bn(_pointwise(buf, o1, cin, mid, x, 0, c0, lin, t), valid, True, spec.bn_variance)
    y, r2 = _bn(_depthwise(buf, o2, k, mid, c0, y, stride, spec), valid, True, spec.bn_variance)
    acc = acc + _pointwise(buf, o3, mid, cout, y, c0, 0, t, p)
    return acc, s1 + r1, s2 + r2

  init = (jnp.zeros((n2, ho, ho, p), x.dtype), 0.0, 0.0)
  acc, s1, s2 = lax.fori_loop(0, (mid + t - 1) // t, body, init)
  out, s3 = _bn(acc, jnp.arange(p) < cout, True, spec.bn_variance)
  return out, 0.5 * (jnp.log(s1 / mid) + jnp.log(s2 / mid) + jnp.log(s3 / cout))


def _kxkx(spec: StageSpec, x, buf, row, stride: int):
  _, k, cin, mid, cout, o1, o2, _ = (row[i] for i in range(ROW_FIELDS))
  n2, h, _, _ = x.shape
  ho = (h - 1) // stride + 1
  t, p, kmax = spec.chunk, spec.level, spec.kmax
  lane = jnp.arange(t)

  def body(c, carry):
    acc, s1 = carry
    c0 = c * t
    y = _dense(buf, o1, k, cin, mid, x, 0, c0, t, stride, kmax)
    y, r1 = _bn(y, c0 + lane < mid, True, spec.bn_variance)
    # The second conv, restricted to this chunk of its inputs; the chunks sum to the conv.
    acc = acc + _dense(buf, o2, k, mid, cout, y, c0, 0, p, 1, kmax)
    return acc, s1 + r1

  init = (jnp.zeros((n2, ho, ho, p), x.dtype), 0.0)
  acc, s1 = lax.fori_loop(0, (mid + t - 1) // t, body, init)
  out, s2 = _bn(acc, jnp.arange(p) < cout, True, spec.bn_variance)
  return out, 0.5 * (jnp.log(s1 / mid) + jnp.log(s2 / cout))


def _k1kxk1(spec: StageSpec, x, buf, row, stride: int):
  """The bottleneck width is a loop too: the kxk conv's output chunk c2 sums its input chunks
  c1, each recomputed from x (one chunk each when the bottleneck fits in one, the usual case)."""
  _, k, cin, mid, cout, o1, o2, o3 = (row[i] for i in range(ROW_FIELDS))
  n2, h, _, lin = x.shape
  ho = (h - 1) // stride + 1
  t, p, kmax = spec.chunk, spec.level, spec.kmax
  lane = jnp.arange(t)
  n = (mid + t - 1) // t

  def outer(c2, carry):
    acc, s1, s2 = carry

    def inner(c1, carry):
      y2, s1_all = carry
      h1 = _pointwise(buf, o1, cin, mid, x, 0, c1 * t, lin, t)
      h1, r1 = _bn(h1, c1 * t + lane < mid, True, spec.bn_variance)
      y2 = y2 + _dense(buf, o2, k, mid, mid, h1, c1 * t, c2 * t, t, stride, kmax)
      return y2, s1_all + r1

    y2, s1_all = lax.fori_loop(0, n, inner, (jnp.zeros((n2, ho, ho, t), x.dtype), 0.0))
    y2, r2 = _bn(y2, c2 * t + lane < mid, True, spec.bn_variance)
    acc = acc + _pointwise(buf, o3, mid, cout, y2, c2 * t, 0, t, p)
    return acc, jnp.where(c2 == 0, s1_all, s1), s2 + r2  # each 1x1 chunk counted once

  init = (jnp.zeros((n2, ho, ho, p), x.dtype), 0.0, 0.0)
  acc, s1, s2 = lax.fori_loop(0, n, outer, init)
  out, s3 = _bn(acc, jnp.arange(p) < cout, True, spec.bn_variance)
  return out, 0.5 * (jnp.log(s1 / mid) + jnp.log(s2 / mid) + jnp.log(s3 / cout))


_LAYER_FNS = {'idw': _idw, 'kxkx': _kxkx, 'k1kxk1': _k1kxk1}


def _layer(spec: StageSpec, x, buf, row, stride: int):
  fams = spec.families
  if len(fams) == 1:
    return _LAYER_FNS[fams[0]](spec, x, buf, row, stride)
  branches = [functools.partial(_LAYER_FNS[f], spec, stride=stride) for f in fams]
  return lax.switch(
    row[0], [lambda x, buf, row, f=f: f(x, buf, row) for f in branches], x, buf, row
  )


def _stage_instance(spec: StageSpec, x, buf, table, num_layers, first_row, last_row):
  """One instance (one draw of one candidate) through one stage program."""
  log_bn = jnp.zeros((), x.dtype)
  if spec.first is not None:
    k, stride, relu = spec.first
    cin, cout, off = first_row[0], first_row[1], first_row[2]
    w = _kernel(buf, off, k, cin, cout, 0, 0, x.shape[-1], spec.first_level)
    y = _conv(x, w, stride)
    x, r = _bn(y, jnp.arange(spec.first_level) < cout, relu, spec.bn_variance)
    log_bn = log_bn + 0.5 * jnp.log(r / cout)
  if spec.has_layers:
    x, lb = _layer(spec, x, buf, table[0], spec.entry_stride)
    log_bn = log_bn + lb

    def body(i, carry):
      x, log_bn = carry
      x, lb = _layer(spec, x, buf, table[i], 1)
      return x, log_bn + lb

    x, log_bn = lax.fori_loop(1, num_layers, body, (x, log_bn))
  if spec.last is None:
    return x, log_bn
  k, stride, relu = spec.last
  cin, cout, off = last_row[0], last_row[1], last_row[2]
  t = spec.last_chunk
  lane = jnp.arange(t)
  b = x.shape[0] // 2

  def body(c, carry):
    dsum, s = carry
    c0 = c * t
    y = _conv(x, _kernel(buf, off, k, cin, cout, 0, c0, x.shape[-1], t), stride)
    y, r = _bn(y, c0 + lane < cout, relu, spec.bn_variance)
    return dsum + jnp.sum(jnp.abs(y[:b] - y[b:]), axis=(1, 2, 3)), s + r

  dsum, s = lax.fori_loop(0, (cout + t - 1) // t, body, (jnp.zeros((b,), x.dtype), 0.0))
  return jnp.log(jnp.mean(dsum)), log_bn + 0.5 * jnp.log(s / cout)


# Traces of each stage program kind (by stage index), for the tests: a structure that fits
# the compiled programs must not trace again. Programs trace on several compile threads.
TRACES: dict[int, int] = {}
_TRACES_LOCK = threading.Lock()


def _stage_program(spec: StageSpec):
  def run(x, buf, table, num_layers, first_row, last_row):
    with _TRACES_LOCK:
      TRACES[spec.index] = TRACES.get(spec.index, 0) + 1
    shared = None if spec.shared_structure else 0
    if spec.instances == 1 and spec.shared_structure:  # no batch axis: a simpler program
      out = _stage_instance(spec, x[0], buf[0], table, num_layers, first_row, last_row)
      return jax.tree.map(lambda a: a[None], out)
    return jax.vmap(
      functools.partial(_stage_instance, spec), in_axes=(0, 0, shared, shared, shared, shared)
    )(x, buf, table, num_layers, first_row, last_row)

  return jax.jit(run)


def stage_avals(spec: StageSpec) -> tuple[jax.ShapeDtypeStruct, ...]:
  n, f32, i32 = spec.instances, jnp.float32, jnp.int32
  lead = () if spec.shared_structure else (n,)
  h = spec.h_in
  return (
    jax.ShapeDtypeStruct((n, 2 * spec.batch_size, h, h, spec.in_level), f32),
    jax.ShapeDtypeStruct((n, spec.capacity), f32),
    jax.ShapeDtypeStruct(lead + (spec.max_layers, ROW_FIELDS), i32),
    jax.ShapeDtypeStruct(lead, i32),
    jax.ShapeDtypeStruct(lead + (3,), i32),
    jax.ShapeDtypeStruct(lead + (3,), i32),
  )


def compile_options(backend: str | None = None) -> dict:
  """XLA options for the programs: no convolution autotuning on GPUs.

  On a GPU XLA autotunes every convolution at compile time by timing cuDNN's algorithms on the
  device; the programs here are few, but each holds several convolutions per kernel size.
  Not yet measured on a GPU; ZENFER_SEARCH_GPU_AUTOTUNE=1 keeps autotuning.
  """
  backend = backend or jax.default_backend()
  if (
    backend in ('gpu', 'cuda', 'rocm') and os.environ.get('ZENFER_SEARCH_GPU_AUTOTUNE', '0') != '1'
  ):
    return {'xla_gpu_autotune_level': 0}
  return {}


class ProgramSet:
  """Compiled programs by key, compiled on a thread pool; counts them and their compile time.

  Thread-safe. `get` returns a Future, so every program a call needs starts compiling before
  the first one runs (XLA compiles without holding the GIL).
  """

  def __init__(self):
    self._futures: dict[object, Future] = {}
    self._lock = threading.Lock()
    self._pool: ThreadPoolExecutor | None = None
    self._bg_pool: ThreadPoolExecutor | None = None
    self._background: set = set()
    self.compile_seconds = 0.0
    # Finished compiles only: the table also holds queued and running ones.
    self.compiled = 0

  def _compile(self, key, build):
    t = time.perf_counter()
    fn, avals = build()
    lowered = fn.lower(*avals)
    options = compile_options()
    compiled = None
    if options:
      try:
        compiled = lowered.compile(compiler_options=options)
      except Exception:  # an XLA without the option: compile with defaults
        compiled = None
    if compiled is None:
      compiled = lowered.compile()
    with self._lock:
      self.compile_seconds += time.perf_counter() - t
      self.compiled += 1
    return compiled

  def get(self, key, build, background: bool = False) -> Future:
    """The program's future; `background` compiles queue on one thread of their own, so a
    program needed now never waits behind them (and takes theirs over if it has not started).
    `build` may be None only for a program already asked for."""
    with self._lock:
      fut = self._futures.get(key)
      if fut is not None and not background and key in self._background and fut.cancel():
        fut = None  # needed now: move it from the background queue to the main one
      if fut is None or (fut.done() and fut.exception() is not None):
        if build is None:
          raise KeyError(f'no program {key!r} to wait for, and nothing to build it with')
        if background:
          if self._bg_pool is None:
            self._bg_pool = ThreadPoolExecutor(1, thread_name_prefix='zen-programs-bg')
          pool = self._bg_pool
          self._background.add(key)
        else:
          if self._pool is None:
            workers = int(os.environ.get('ZENFER_COMPILE_THREADS', 0)) or max(
              1, min(8, os.cpu_count() or 1)
            )
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix='zen-programs')
          pool = self._pool
          self._background.discard(key)
        fut = self._futures[key] = pool.submit(self._compile, key, build)
    return fut

  def futures(self) -> list[Future]:
    with self._lock:
      return list(self._futures.values())

  def wait_all(self) -> None:
    """Blocks until every program asked for so far, background ones included, is compiled
    (and raises the first compile error). A queued background future taken over by a caller is
    replaced in the table, so the table is read again until nothing is pending."""
    while True:
      pending = [f for f in self.futures() if not f.done()]
      if not pending:
        return
      for f in pending:
        if not f.cancelled():
          f.result()

  def cancel_background(self) -> int:
    """Drops the background compiles not started yet; returns how many.

    Python joins a pool's threads at exit only after they have run everything queued, so a
    search that ends with its level grid still queued would otherwise compile it all first.
    """
    dropped = 0
    with self._lock:
      for key in list(self._background):
        fut = self._futures.get(key)
        if fut is not None and fut.cancel():
          del self._futures[key]
          self._background.discard(key)
          dropped += 1
    return dropped

  def __contains__(self, key) -> bool:
    return key in self._futures

  def __len__(self) -> int:
    return len(self._futures)

  def keys(self) -> list:
    return list(self._futures)


PROGRAMS = ProgramSet()


def stage_levels(
  layout: Layout, ratio: int, max_step: int | None = None
) -> tuple[int, list[int], list[int]]:
  """(first_level, in_levels, levels) of every stage.

  `max_step` (ladder steps) limits how far consecutive stage levels may differ, raising the
  lower one, so that only few (in_level, level) pairs can ever occur.
  """
  first_level = width_level(layout.first.out_channels, ratio)
  levels = []
  for i, stage in enumerate(layout.stages):
    widths = [w for layer in stage for w in layer.thin_widths]
    if i == 0 and not stage:
      widths.append(layout.first.out_channels)
    levels.append(width_level(max(widths + [8]), ratio))
  if max_step is not None:
    bound = ratio**max_step
    for _ in range(len(levels)):
      for i in range(1, len(levels)):
        levels[i] = max(levels[i], levels[i - 1] // bound)
        levels[i - 1] = max(levels[i - 1], levels[i] // bound)
  in_levels = [3] + levels[:-1]
  return first_level, in_levels, levels


def layer_rows(stage: Sequence[Layer], families, max_layers: int) -> np.ndarray:
  rows = np.zeros((max_layers, ROW_FIELDS), np.int32)
  for i, layer in enumerate(stage):
    rows[i] = (
      families.index(layer.family),
      layer.kernel_size,
      layer.in_channels,
      layer.mid_channels,
      layer.out_channels,
      *layer.offsets,
    )
  return rows
