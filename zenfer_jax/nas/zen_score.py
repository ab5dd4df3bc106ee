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

Why not a Flax model under one jit: a search scores thousands of different
structures, and a whole-network jit costs 10-20 s of compile per structure on a
2-core CPU. The network runs instead through a small, bounded set of compiled
*stage programs* (`zenfer_jax.nas.programs`): one per resolution stage, keyed by
two padded width levels, with depth, kernel sizes and the wide (expanded)
widths as runtime values. Padding is exact: padded channels carry zeros and
stay out of every statistic. The draws of a call run together under `vmap`
(in memory-bounded groups at high resolution), and a search can score several
candidates in one call.

Weights are drawn on device: per draw one flat N(0, 1) buffer from a
counter-based generator (value i depends on the draw's key and i only, so
values do not depend on how long the buffer is), and unit `u` reads its HWIO
kernel at
``buffer[offset_u : offset_u + k*k*cin*cout]`` in the *unpadded* layout.
`network_weights` returns exactly those kernels, which is how the tests load
them into the Flax model and compare.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zenfer_jax.model.layers.conv import default_depthwise_impl
from zenfer_jax.model.structure import Structure, resolve
from zenfer_jax.nas import programs as prog
from zenfer_jax.nas.units import Unit, network_units

__all__ = [
  'ZenScore',
  'ZenScorer',
  'Unit',
  'zen_score',
  'network_units',
  'network_weights',
  'network_inputs',
  'BN_EPS',
  'BN_MOMENTUM',
  'compiled_programs',
  'compile_seconds',
]

BN_EPS = prog.BN_EPS
BN_MOMENTUM = prog.BN_MOMENTUM  # PyTorch convention: weight of the new batch statistic.
_CHUNK = 1 << 16  # the weight buffer grows, and is drawn, in runs of this many values
BN_VARIANCES = ('running', 'batch')


@dataclasses.dataclass(frozen=True)
class ZenScore:
  """Mean and (population) std over the draws, and every draw's score."""

  mean: float
  std: float
  scores: tuple[float, ...]


def _draw_keys(seed, repeats: int) -> jax.Array:
  key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
  return jax.random.split(key, repeats)


def _mix32(x):
  """A 32-bit integer mixer (full avalanche): the core of the counter-based generator."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _normals(words, start, n: int):
  """Values start .. start + n - 1 of the N(0, 1) stream seeded by two uint32 `words`.

  Value i depends only on (words, i): a counter-based hash of i gives a uniform, and the
  inverse normal CDF (sqrt(2) erfinv(2u - 1), a polynomial) turns it into a normal. On the
  2-core CPU this is several times cheaper than jax.random.normal (threefry, 20 rounds), and
  a candidate of the search draws about a million values.
  """
  i = jnp.asarray(start, jnp.uint32) + jnp.arange(n, dtype=jnp.uint32)
  h = _mix32(_mix32(i ^ words[0]) ^ words[1])
  # (2k + 1) / 2^23 - 1 for a 23-bit k: exact in float32, symmetric, never -1 or 1.
  u = ((h >> 9) * 2 + 1).astype(jnp.float32) * (1.0 / (1 << 23)) - 1.0
  return np.float32(np.sqrt(2.0)) * lax.erf_inv(u)


def _key_words(key, stream: int):
  return jax.random.key_data(jax.random.fold_in(key, stream)).reshape(-1)[:2].astype(jnp.uint32)


def _inputs_fn(keys, gamma, *, batch_size: int, resolution: int):
  """Per draw the stacked batch [x; x + gamma * x2], shape (R, 2B, H, W, 3)."""

  def one(key):
    size = batch_size * resolution * resolution * 3
    z = _normals(_key_words(key, 1), 0, -(-2 * size // _CHUNK) * _CHUNK)
    x, x2 = z[:size], z[size : 2 * size]  # flat until the end: a 3-wide minor axis is slow
    both = jnp.concatenate([x, x + gamma * x2])
    return both.reshape(2 * batch_size, resolution, resolution, 3)

  return jax.vmap(one)(keys)


_inputs = jax.jit(_inputs_fn, static_argnames=('batch_size', 'resolution'))


def _chunk_normals(words, c):
  return _normals(words, c * _CHUNK, _CHUNK)


@functools.partial(jax.jit, static_argnames=('num_chunks',))
def _weight_buffer(keys, *, num_chunks: int):
  """Per draw a flat N(0, 1) buffer of num_chunks * _CHUNK values, shape (R, L)."""

  def one(key):
    return _normals(_key_words(key, 2), 0, num_chunks * _CHUNK)

  return jax.vmap(one)(keys)


def _weights_fn(keys, used_chunks, *, capacity_chunks: int):
  """The same buffers as `_weight_buffer`, `capacity_chunks` long, drawn up to `used_chunks`.

  One compiled program serves every candidate: the chunk count is a runtime value, and chunks
  past it (never read) stay zero, so a small network does not pay for the largest one's draws.
  """

  def one(key, used):
    words = _key_words(key, 2)
    buf = jnp.zeros((capacity_chunks * _CHUNK,), jnp.float32)

    def body(c, buf):
      return lax.dynamic_update_slice(buf, _chunk_normals(words, c), (c * _CHUNK,))

    return lax.fori_loop(0, used, body, buf)

  return jax.vmap(one)(keys, used_chunks)


def _num_chunks(total: int) -> int:
  """Chunks for `total` weights, rounded up to a power of two (the buffer capacity ladder)."""
  need = max(1, -(-total // _CHUNK))
  return 1 << (need - 1).bit_length()


def _default_chunk() -> int:
  # CPU: 32-channel chunks keep the padding of the wide widths small; accelerators prefer
  # fewer, larger steps.
  return 32 if jax.default_backend() == 'cpu' else 128


class ZenScorer:
  """Scores structures with fixed settings through the bounded program set.

  Programs are keyed by stage position, two width levels and the settings below, never by a
  structure, so a search compiles a handful of programs and then none. `__call__` caches each
  structure's score per seed; `score_batch` caches nothing (the search keeps its own cache).

  level_ratio: the width ladder 8 * ratio**i the stage widths are padded to (larger: fewer
  programs, more padding). level_slack: a stage may run on an already compiled program up to
  this many ladder steps wider instead of compiling its own (0: always the exact level).
  chunk: channels per step of the wide-width loops ('auto': 32 on CPU, 128 on accelerators).
  depthwise_impl: 'shift' (k*k shifted multiply-adds, measured faster on CPU), 'xla' (grouped
  conv, the kernel centred in the largest size) or 'auto'. families / kernel_sizes: the layer
  kinds every program supports (a search passes its space's; None: those of the structures
  scored). candidates: structures scored per call (`score_batch`); 1 keeps each structure's
  tables unbatched. complete_grid: compile every combination of the levels seen so far in the
  background (see `_complete_grid`). weight_capacity / max_layers: initial weight-buffer length
  and layers per stage; both grow (by doubling, with new programs) when a structure needs more.
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
    level_ratio: int = 4,
    level_slack: int = 1,
    max_level_step: int | None = None,
    chunk: int | str = 'auto',
    depthwise_impl: str = 'auto',
    families: Sequence[str] | None = None,
    kernel_sizes: Sequence[int] | None = None,
    candidates: int = 1,
    weight_capacity: int = 0,
    max_layers: int = 32,
    draws_per_call: int | str = 'auto',
    complete_grid: bool = True,
  ):
    if bn_variance not in BN_VARIANCES:
      raise ValueError(f'bn_variance must be one of {BN_VARIANCES}, got {bn_variance!r}')
    if depthwise_impl not in ('auto', 'xla', 'shift'):
      raise ValueError(f"depthwise_impl must be 'auto', 'xla' or 'shift', got {depthwise_impl!r}")
    for name, v in (
      ('resolution', resolution),
      ('batch_size', batch_size),
      ('repeats', repeats),
      ('candidates', candidates),
      ('max_layers', max_layers),
    ):
      if not isinstance(v, int) or v < 1:
        raise ValueError(f'{name} must be a positive integer, got {v!r}')
    if batch_size < 2:
      raise ValueError(
        'batch_size must be at least 2: the unbiased batch variance needs two samples'
      )
    if not isinstance(level_ratio, int) or level_ratio < 2:
      raise ValueError(f'level_ratio must be an integer >= 2, got {level_ratio!r}')
    self.resolution = resolution
    self.batch_size = batch_size
    self.repeats = repeats
    self.mixup_gamma = float(mixup_gamma)
    self.bn_variance = bn_variance
    self.level_ratio = level_ratio
    self.max_level_step = max_level_step
    self.level_slack = int(level_slack)
    self.chunk = _default_chunk() if chunk == 'auto' else int(chunk)
    self.depthwise_impl = default_depthwise_impl() if depthwise_impl == 'auto' else depthwise_impl
    self.families = None if families is None else tuple(f for f in prog.FAMILIES if f in families)
    self.kernel_sizes = None if kernel_sizes is None else tuple(sorted(set(kernel_sizes)))
    self.candidates = candidates
    self.max_layers = max_layers
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
    self._capacity_chunks = _num_chunks(max(int(weight_capacity), 1))
    # (stage, in_level, first_level, level) of every stage program this scorer has run.
    self.levels_used: set[tuple[int, int, int, int]] = set()
    # Per stage program kind: the in, first and stage levels seen so far (see _complete_grid).
    self._seen: dict[prog.StageSpec, tuple[set, set, set]] = {}
    self.complete_grid = complete_grid
    self._cache: dict[tuple[str, object], ZenScore] = {}

  # -------------------------------------------------------------------------- resuming

  def state(self) -> dict:
    """What a resumed search needs to plan exactly the programs this scorer would: the levels
    used, the level grid seen so far and the buffer sizes (all part of the programs' keys, so a
    resumed process also finds the killed one's programs in the persistent cache). JSON-able."""
    return {
      'levels_used': sorted(list(t) for t in self.levels_used),
      'capacity_chunks': self._capacity_chunks,
      'max_layers': self.max_layers,
      'seen': [
        [dataclasses.asdict(base), sorted(ins), sorted(firsts), sorted(levels)]
        for base, (ins, firsts, levels) in self._seen.items()
      ],
    }

  def restore(self, state: dict) -> None:
    """Takes `state()`'s output; sizes only ever grow, so a restore never shrinks them."""
    self.levels_used = {tuple(t) for t in state.get('levels_used', [])}
    self._capacity_chunks = max(self._capacity_chunks, int(state.get('capacity_chunks', 0)))
    self.max_layers = max(self.max_layers, int(state.get('max_layers', 0)))
    self._seen = {}
    for fields, ins, firsts, levels in state.get('seen', []):
      # JSON turned the spec's tuples into lists; a spec must compare equal to a planned one.
      base = prog.StageSpec(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
      )
      self._seen[base] = (set(ins), set(firsts), set(levels))

  # -------------------------------------------------------------------------- planning

  @property
  def instances(self) -> int:
    return self.candidates * self.draws_per_call

  def _plan(self, layouts: Sequence[prog.Layout], record: bool = True):
    """Stage specs and per-candidate tables for candidates scored together."""
    sig = layouts[0].signature(self.resolution)
    for lay in layouts[1:]:
      if lay.signature(self.resolution) != sig:
        raise ValueError('candidates scored together must share strides and plain convs')
    fams, ks = self._layer_kinds(layouts)
    plans = [prog.stage_levels(lay, self.level_ratio, self.max_level_step) for lay in layouts]
    first_need = max(p[0] for p in plans)
    needs = [max(p[2][i] for p in plans) for i in range(len(layouts[0].stages))]
    self._grow_capacity(layouts, max(first_need, *needs))
    first, stages, last = sig
    specs, in_level = [], 3
    for i, (h_in, entry, has_layers) in enumerate(stages):
      base = prog.StageSpec(
        index=i,
        h_in=h_in,
        entry_stride=entry,
        has_layers=has_layers,
        first=first if i == 0 else None,
        last=last if i == len(stages) - 1 else None,
        in_level=0,
        first_level=0,
        level=0,
        families=fams,
        kmax=max(ks),
        chunk=self.chunk,
        last_chunk=max(self.chunk, 256),
        instances=self.instances,
        shared_structure=self.candidates == 1,
        batch_size=self.batch_size,
        max_layers=self.max_layers,
        capacity=self._capacity_chunks * _CHUNK,
        bn_variance=self.bn_variance,
        depthwise_impl=self.depthwise_impl,
      )
      level, first_level = self._reused_levels(i, in_level, first_need if i == 0 else 0, needs[i])
      if record:
        self._record_levels(base, i, in_level, first_level, level)
      specs.append(
        dataclasses.replace(base, in_level=in_level, first_level=first_level, level=level)
      )
      in_level = level
    return specs

  def _layer_kinds(self, layouts: Sequence[prog.Layout]):
    """(families, kernel sizes) the programs support: the scorer's own when a search gave them,
    so that every candidate of the search runs on the same programs; else those of these
    candidates. Grows `max_layers` (by doubling) for a stage longer than it, since the layer
    count is part of the programs' shapes."""
    all_layers = [layer for lay in layouts for st in lay.stages for layer in st]
    fams = (
      self.families
      or tuple(f for f in prog.FAMILIES if any(layer.family == f for layer in all_layers))
      or ('idw',)
    )
    ks = self.kernel_sizes or tuple(sorted({layer.kernel_size for layer in all_layers} or {3}))
    for lay in layouts:
      for st in lay.stages:
        for layer in st:
          if layer.family not in fams or layer.kernel_size not in ks:
            raise ValueError(
              f'a {layer.family} layer with kernel {layer.kernel_size} is outside the programs '
              f'this scorer compiles (families {fams}, kernel sizes {ks})'
            )
        while len(st) > self.max_layers:
          self.max_layers *= 2
    return fams, ks

  def _grow_capacity(self, layouts: Sequence[prog.Layout], widest_need: int) -> None:
    """Doubles the weight buffer until every candidate's weights fit with a margin past the last
    weight: kernels are read in contiguous runs of up to a level's width or a chunk
    (programs._rows), and no run that starts at a real weight may reach the end (dynamic_slice
    would clamp it and read shifted weights). A reused level is at most
    level_ratio ** level_slack wider than the one needed."""
    run = max(widest_need, self.chunk, 256) * self.level_ratio**self.level_slack
    while max(lay.num_weights for lay in layouts) + run > self._capacity_chunks * _CHUNK:
      self._capacity_chunks *= 2

  def _reused_levels(self, i: int, in_level: int, first_level: int, level: int):
    """(level, first_level) of stage `i`: levels this scorer has used before (at most
    `level_slack` ladder steps wider) rather than compiling a new program, since padding is
    exact and a compile costs as much as scoring dozens of candidates. The choice depends only
    on `self.levels_used` (which a search saves with its checkpoints), so a resumed search makes
    the same choices."""
    bound = self.level_ratio**self.level_slack
    fits = [
      (lv, fl)
      for si, il, fl, lv in self.levels_used
      if si == i
      and il == in_level
      and first_level <= fl <= first_level * bound
      and level <= lv <= level * bound
    ]
    if self.level_slack and fits and (level, first_level) not in fits:
      level, first_level = min(fits)
    return level, first_level

  def _record_levels(self, base, i: int, in_level: int, first_level: int, level: int) -> None:
    """Remembers the levels a stage ran at: later stages and candidates reuse them
    (`_reused_levels`), and `_complete_grid` compiles their combinations ahead of need."""
    self.levels_used.add((i, in_level, first_level, level))
    seen = self._seen.setdefault(base, (set(), set(), set()))
    seen[0].add(in_level)
    seen[1].add(first_level)
    seen[2].add(level)

  def _tables(self, layouts, specs):
    """Per candidate and stage: (layer rows, layer count, first-conv row, last-conv row)."""
    out = []
    for lay in layouts:
      per_stage = []
      for spec, stage in zip(specs, lay.stages):
        rows = prog.layer_rows(stage, spec.families, spec.max_layers)
        f, last = lay.first, lay.last
        per_stage.append(
          (
            rows,
            np.int32(len(stage)),
            np.array([f.in_channels, f.out_channels, f.offset], np.int32),
            np.array([last.in_channels, last.out_channels, last.offset], np.int32),
          )
        )
      out.append(per_stage)
    return out

  def _program(self, spec: prog.StageSpec, background: bool = False):
    return prog.PROGRAMS.get(
      ('stage', spec),
      lambda: (prog._stage_program(spec), prog.stage_avals(spec)),
      background=background,
    )

  def _complete_grid(self) -> None:
    """Compile, on a background thread, every combination of the levels seen so far.

    A stage's programs form a grid, in_level x first_level x level; a search meets most of
    its levels within its first candidates but some combinations only much later (a rare
    wide first conv with an already common stage level, say). Completing the grid as soon as
    a level appears moves those compiles to the start, where they overlap the scoring.
    """
    for base, (ins, firsts, levels) in self._seen.items():
      for il, fl, lv in itertools.product(sorted(ins), sorted(firsts), sorted(levels)):
        spec = dataclasses.replace(base, in_level=il, first_level=fl, level=lv)
        if ('stage', spec) not in prog.PROGRAMS:
          self._program(spec, background=True)

  def _aux_programs(self):
    n, capacity = self.instances, self._capacity_chunks
    key_aval = jax.eval_shape(lambda: _draw_keys(0, n))
    inputs = prog.PROGRAMS.get(
      ('inputs', n, self.batch_size, self.resolution, self.mixup_gamma),
      lambda: (
        jax.jit(
          functools.partial(
            _inputs_fn,
            gamma=self.mixup_gamma,
            batch_size=self.batch_size,
            resolution=self.resolution,
          )
        ),
        (key_aval,),
      ),
    )
    weights = prog.PROGRAMS.get(
      ('weights', n, capacity),
      lambda: (
        jax.jit(functools.partial(_weights_fn, capacity_chunks=capacity)),
        (key_aval, jax.ShapeDtypeStruct((n,), jnp.int32)),
      ),
    )
    return inputs, weights

  def program_keys(self, structures: Sequence[str | Structure]) -> list:
    """The programs scoring `structures` (in groups of `candidates`) needs; compiles nothing
    and changes nothing (planning may grow the buffer sizes: they are put back)."""
    sizes = self._capacity_chunks, self.max_layers
    keys = []
    try:
      for g in range(0, len(structures), self.candidates):
        layouts = [prog.network_layout(s) for s in structures[g : g + self.candidates]]
        for spec in self._plan(layouts, record=False):
          keys.append(('stage', spec))
    finally:
      self._capacity_chunks, self.max_layers = sizes
    return keys

  def bound_sizes(self, max_weights: int, stage_layers: int, top_level: int) -> None:
    """Sizes the weight buffer and the layer table for the largest structure a search's budgets
    allow (`grid.width_bounds`), so neither ever grows mid-search: growing either changes every
    program's key, and the whole grid would compile again. `top_level`: the widest level.
    """
    run = max(top_level, self.chunk, 256) * self.level_ratio**self.level_slack
    while max_weights + run > self._capacity_chunks * _CHUNK:
      self._capacity_chunks *= 2
    while stage_layers > self.max_layers:
      self.max_layers *= 2

  def level_grid(self, structure: str | Structure, first_max: int, stage_max: Sequence[int]):
    """Every stage program a search can run when no first conv is wider than `first_max` and no
    stage holds a width over `stage_max[i]` (`grid.width_bounds`): per stage, every level of
    the ladder up to its bound, entered from every level of the stage before.

    Levels are chosen by `_plan` from the needs and the levels used before, so a used level is
    one some candidate needed, never wider than the bounds; stage 0's level is never below its
    first conv's (the first layer reads that width), which halves its part of the grid. A
    `max_level_step` may raise a level to a neighbour's, so then every stage gets the widest.
    """
    specs = self._plan([prog.network_layout(structure)], record=False)
    if len(specs) != len(stage_max):
      raise ValueError(f'{len(stage_max)} stage bounds for {len(specs)} stages')
    ratio = self.level_ratio

    def ladder(width: int) -> list[int]:
      top = prog.width_level(max(width, 8), ratio)
      out = [8]
      while out[-1] < top:
        out.append(out[-1] * ratio)
      return out

    tops = list(stage_max)
    if self.max_level_step is not None:
      tops = [max(tops)] * len(tops)
    grid = []
    for i, base in enumerate(specs):
      ins = [3] if i == 0 else ladder(tops[i - 1])
      firsts = ladder(first_max) if i == 0 else [0]
      for il, fl, lv in itertools.product(ins, firsts, ladder(tops[i])):
        if i == 0 and lv < fl:
          continue
        grid.append(dataclasses.replace(base, in_level=il, first_level=fl, level=lv))
    return grid

  def compile_grid(self, specs: Sequence[prog.StageSpec]) -> int:
    """Compiles `specs` (and the draw programs) on the compile threads; records no level as used,
    so the programs a search picks, and its scores, are the same with or without this.

    A grid program that fails to compile (the widest levels make very large arrays, which a
    backend may refuse) is logged and left out rather than stopping the search: a candidate
    that needs it compiles it again, and fails there, as it would without the grid.
    """
    # The grid holds every program a search can run; completing the grid of the levels seen
    # (`_complete_grid`) would only add combinations no candidate reaches (a stage 0 narrower
    # than its first conv), compiled mid-search.
    self.complete_grid = False
    self._aux_programs()
    futures = [(spec, self._program(spec)) for spec in specs]
    for spec, fut in futures:
      try:
        fut.result()
      except Exception as e:  # any compile error: the search goes on
        logging.getLogger(__name__).warning(
          'level grid: stage %d at levels %d -> %d (first conv %d) did not compile: %s',
          spec.index,
          spec.in_level,
          spec.level,
          spec.first_level,
          str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
    return len(prog.PROGRAMS)

  def warmup(self, structures: Sequence[str | Structure]) -> int:
    """Compile every program scoring `structures` needs (and their level grid, when
    `complete_grid`); returns how many programs this process holds."""
    self._aux_programs()
    for g in range(0, len(structures), self.candidates):
      layouts = [prog.network_layout(s) for s in structures[g : g + self.candidates]]
      for spec in self._plan(layouts):
        self._program(spec)
    if self.complete_grid:
      self._complete_grid()
    prog.PROGRAMS.wait_all()
    return len(prog.PROGRAMS)

  # -------------------------------------------------------------------------- scoring

  def score_batch(
    self, structures: Sequence[str | Structure], seeds: Sequence[int | jax.Array]
  ) -> np.ndarray:
    """Per-draw scores of each structure, shape (len(structures), repeats); nothing cached.

    Structures go `candidates` at a time (a short last group is padded with copies of its
    first structure, dropped after), draws `draws_per_call` at a time, so every call has the
    same instance count and no new program is needed.
    """
    if len(structures) != len(seeds):
      raise ValueError(f'{len(structures)} structures but {len(seeds)} seeds')
    out = np.zeros((len(structures), self.repeats), np.float64)
    for g in range(0, len(structures), self.candidates):
      group = list(range(g, min(g + self.candidates, len(structures))))
      padded = group + [group[0]] * (self.candidates - len(group))
      layouts = [prog.network_layout(structures[i]) for i in padded]
      draw_keys = [_draw_keys(seeds[i], self.repeats) for i in padded]
      n = self.draws_per_call
      groups = -(-self.repeats // n)
      if groups * n > self.repeats:
        draw_keys = [
          jnp.concatenate(
            [k, jax.random.split(jax.random.fold_in(k[0], 7), groups * n - self.repeats)]
          )
          for k in draw_keys
        ]
      for d in range(groups):
        keys = jnp.concatenate([k[d * n : (d + 1) * n] for k in draw_keys])
        got = np.asarray(self._score_instances(layouts, keys), np.float64).reshape(-1, n)
        for row, i in enumerate(group):
          hi = min(n, self.repeats - d * n)
          out[i, d * n : d * n + hi] = got[row, :hi]
    return out

  def scores(self, structure: str | Structure, seed: int | jax.Array = 0) -> np.ndarray:
    """Per-draw scores, shape (repeats,); nothing is cached."""
    return self.score_batch([structure], [seed])[0]

  def _score_instances(self, layouts, keys) -> jax.Array:
    specs = self._plan(layouts)
    tables = self._tables(layouts, specs)
    programs = [self._program(spec) for spec in specs]  # all compile in parallel
    if self.complete_grid:
      self._complete_grid()
    inputs, weights = self._aux_programs()
    n = self.draws_per_call
    used = np.repeat([-(-lay.num_weights // _CHUNK) for lay in layouts], n).astype(np.int32)
    x = inputs.result()(keys)
    buf = weights.result()(keys, used)
    total = None
    for s, (spec, program) in enumerate(zip(specs, programs)):
      if spec.shared_structure:
        args = tables[0][s]
      else:
        args = tuple(np.repeat(np.stack([t[s][j] for t in tables]), n, axis=0) for j in range(4))
      x, lb = program.result()(x, buf, *args)
      total = lb if total is None else total + lb
    return x + total  # the last stage returns the log-delta in place of an activation

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


def compiled_programs() -> int:
  """Programs compiled so far in this process (stage programs, inputs, weights), from all
  scorers; queued or still compiling ones are not counted."""
  return prog.PROGRAMS.compiled


def compile_seconds() -> float:
  """Wall-clock seconds spent compiling them (summed over the compile threads)."""
  return prog.PROGRAMS.compile_seconds


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
