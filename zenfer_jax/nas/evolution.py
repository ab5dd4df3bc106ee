"""The reference evolutionary search (evolution_search.py), resumable and with pluggable scoring.

Per iteration, as in the reference: drop the lowest-scoring members while the
population exceeds its size; mutate the initial structure (1 block) while the
population has at most 10 members, else a random member (2 blocks); split deep
blocks; skip the candidate if it breaks a budget (layers, model size, FLOPs
on the reference counters, latency) or the optional efficient-score filter;
otherwise score it and append it. The best structure is the population's
maximum at the end.

With `config.search.candidates_per_step` = C > 1, one *step* draws C
candidates from the population as it stands (trimmed once, at the step's
start), scores them in one call and appends them in order; C = 1 is the
reference's sequential loop. Steps cover iterations [kC, (k + 1)C), so a
search stopped and resumed at any step boundary takes the same steps.

Differences, all deliberate: a structure is scored once and its score reused
(the reference builds a fresh random network each time, so a repeated
structure there gets a new draw), and each structure's draw is seeded from
the structure string and `config.seed`. Padding and batching change a score
only by float rounding, and whatever they depend on is saved with the
checkpoint, so a resumed search retraces the killed one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from zenfer_jax import atomic_write
from zenfer_jax.errors import UserError
from zenfer_jax.model import counters
from zenfer_jax.model.structure import (
  BLOCK_TYPES,
  Structure,
  StructureError,
  check_resolution,
  resolve,
)
from zenfer_jax.model.zennet import build_model
from zenfer_jax.nas import grid as grid_lib
from zenfer_jax.nas import programs as prog
from zenfer_jax.nas import space as space_lib
from zenfer_jax.nas.population import (
  BEST_FILE,
  LOG_FILE,
  PROGRESS_FILE,
  SUMMARY_FILE,
  SearchState,
  SearchStateError,
  load_state,
  save_state,
)
from zenfer_jax.nas.zen_score import ZenScorer, compile_seconds, compiled_programs
from zenfer_jax.rundir import compilation_cache, workdir_lock

__all__ = [
  'SearchConfigError',
  'SearchStateError',
  'validate_config',
  'run_search',
  'structure_seed',
  'Scorer',
  'jax_scorer',
  'make_scorer',
  'JaxZenScorer',
  'default_candidates_per_step',
  'summary',
  'plot_progress',
  'warmup_structures',
  'PROXIES',
]

log = logging.getLogger(__name__)

Scorer = Callable[[Structure, int], float]

# Settings that define the search's trajectory: a resumed run must agree on all of them.
_TRAJECTORY_KEYS = (
  'space',
  'init_structure',
  'population_size',
  'resolution',
  'batch_size',
  'budget_flops',
  'budget_model_size',
  'max_layers',
  'budget_latency',
  'num_classes',
  'mixup_gamma',
  'repeats',
  'efficient_score',
  'bn_variance',
  'proxy',
  'candidates_per_step',
)
# Zero-shot proxies, as the reference's --zero_shot_score offers them; 'zen' is the one its scripts use.
PROXIES = ('zen', 'flops', 'params', 'random')
# search_progress.png is redrawn at a checkpoint only when the last drawing is this old (and at
# the end of every call): a redraw costs about 0.4 s on a 2-core CPU, and at the hundreds of
# candidates per second a GPU search reaches, a redraw every 100 iterations would cost more than
# the scoring.
PLOT_EVERY_S = 60.0


class SearchConfigError(ValueError, UserError):
  """A search configuration that cannot run; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class SearchSetup:
  """A validated search configuration."""

  space: space_lib.SearchSpace
  init: Structure
  settings: dict[str, Any]


def _get(search, key, default=None):
  return search[key] if key in search else default


def validate_config(config) -> SearchSetup:
  """Check a search config before anything is scored; raise SearchConfigError saying what to change."""
  # Over 80 lines on purpose: a flat list of independent checks, each with its own message, and
  # the settings they admit; split up, it would only be harder to find a field's check.
  if 'search' not in config:
    raise SearchConfigError('the config has no `search` section; start from configs/search_m.py')
  s = config.search
  try:
    space = space_lib.get_space(s.space)
  except ValueError:
    raise SearchConfigError(
      f'config.search.space={s.space!r} is not a search space; set it to one of {sorted(space_lib.SPACES)}'
    ) from None
  try:
    init = resolve(s.init_structure)
  except StructureError as e:
    raise SearchConfigError(f'config.search.init_structure does not parse: {e}') from None
  for key in (
    'population_size',
    'resolution',
    'batch_size',
    'checkpoint_every',
    'num_classes',
    'repeats',
  ):
    v = _get(s, key, 1)
    if not isinstance(v, int) or v < 1:
      raise SearchConfigError(f'config.search.{key} must be a positive integer, got {v!r}')
  try:
    check_resolution(init, s.resolution, 'config.search.resolution')
  except StructureError as e:
    raise SearchConfigError(
      f'{e}, or start from a config.search.init_structure with fewer stride-2 layers'
    ) from None
  if s.batch_size < 2:
    raise SearchConfigError(
      'config.search.batch_size must be at least 2 (the BatchNorm variance is unbiased)'
    )
  if not isinstance(s.max_iterations, int) or s.max_iterations < 0:
    raise SearchConfigError(
      f'config.search.max_iterations must be a non-negative integer, got {s.max_iterations!r}'
    )
  num_classes = _get(s, 'num_classes', 7)
  checks = (
    ('max_layers', counters.num_layers(init), 'layers'),
    (
      'budget_model_size',
      counters.model_size(init, num_classes=num_classes),
      'parameters (reference counter)',
    ),
    (
      'budget_flops',
      counters.flops(init, s.resolution, num_classes=num_classes),
      f'FLOPs at {s.resolution}x{s.resolution} (reference counter)',
    ),
  )
  for key, value, what in checks:
    budget = _get(s, key)
    if budget is not None and budget < value:
      raise SearchConfigError(
        f"config.search.{key}={budget:g} is below the initial structure's {value:g} {what}; "
        f'raise the budget or start from a smaller config.search.init_structure'
      )
  latency_budget = _get(s, 'budget_latency')
  if latency_budget is not None:
    latency = measure_latency(
      init, batch_size=s.batch_size, resolution=s.resolution, num_classes=num_classes
    )
    if latency_budget < latency:
      raise SearchConfigError(
        f"config.search.budget_latency={latency_budget:g} s is below the initial structure's {latency:.4g} s "
        f'per batch of {s.batch_size} on {_device_name()}; raise the budget or start from a smaller '
        f'config.search.init_structure'
      )
  eff = _get(s, 'efficient_score')
  if eff is not None and not eff > 0:
    raise SearchConfigError(
      f'config.search.efficient_score must be positive or None (off), got {eff!r}'
    )
  if _get(s, 'compile_grid', 'auto') not in GRID_CHOICES:
    raise SearchConfigError(
      f'config.search.compile_grid={s.compile_grid!r}: set it to one of {list(GRID_CHOICES)}'
    )
  bn_variance = _get(s, 'bn_variance', 'running')
  if bn_variance not in ('running', 'batch'):
    raise SearchConfigError(
      f"config.search.bn_variance must be 'running' or 'batch', got {bn_variance!r}"
    )
  settings = {k: _get(s, k) for k in _TRAJECTORY_KEYS}
  settings['init_structure'] = str(init)
  settings['num_classes'] = num_classes
  settings['repeats'] = _get(s, 'repeats', 1)
  settings['mixup_gamma'] = float(_get(s, 'mixup_gamma', 1e-2))
  settings['bn_variance'] = bn_variance
  proxy = _get(s, 'proxy', 'zen')
  if proxy not in PROXIES:
    raise SearchConfigError(
      f'config.search.proxy={proxy!r} is not a proxy; set it to one of {list(PROXIES)}'
    )
  settings['proxy'] = proxy
  cps = _get(s, 'candidates_per_step', 1)
  if cps == 0:
    cps = default_candidates_per_step()
  if not isinstance(cps, int) or cps < 1:
    raise SearchConfigError(
      f'config.search.candidates_per_step must be a positive integer or 0 (per device), got {cps!r}'
    )
  settings['candidates_per_step'] = cps
  settings['seed'] = int(config.seed)
  return SearchSetup(space=space, init=init, settings=settings)


def structure_seed(structure: str, seed: int) -> int:
  """The Zen-score seed of a structure: a function of the structure string and config.seed only."""
  return zlib.crc32(f'{seed}:{structure}'.encode()) & 0x7FFFFFFF


def default_candidates_per_step() -> int:
  """Candidates per step when the config says 0: what is fastest on the default device.

  CPU: 1. Measured on the 2-core CPU (benchmarks/search_throughput.py), several candidates in
  one call only run their loops to the longest candidate's trip counts. Accelerators: 16, so a
  call fills the device (not yet measured on one).
  """
  import jax

  return 1 if jax.default_backend() == 'cpu' else 16


def make_scorer(settings: dict[str, Any]) -> Scorer:
  """The configured proxy: the JAX Zen-score, or the reference's cheap baselines."""
  proxy = settings['proxy']
  if proxy == 'zen':
    return jax_scorer(settings)
  if proxy == 'flops':
    return lambda s, seed: float(
      counters.flops(s, settings['resolution'], num_classes=settings['num_classes'])
    )
  if proxy == 'params':
    return lambda s, seed: float(counters.model_size(s, num_classes=settings['num_classes']))
  return lambda s, seed: float(np.random.default_rng(seed).standard_normal())


def width_bounds(settings: dict[str, Any]):
  """The widest first conv and stages any candidate of a validated search can reach
  (`nas.grid.width_bounds`), or None when its budgets bound no width."""
  return grid_lib.width_bounds(
    resolve(settings['init_structure']),
    space_lib.get_space(settings['space']),
    resolution=settings['resolution'],
    num_classes=settings['num_classes'],
    budget_model_size=settings['budget_model_size'],
    budget_flops=settings['budget_flops'],
    max_layers=settings['max_layers'],
  )


class JaxZenScorer:
  """The search's fitness: the Zen-score through the bounded program set.

  Every program it runs supports the whole space (its layer families and kernel sizes), so the
  search never needs another kind. `score_many` scores one step's candidates in one call.
  """

  def __init__(self, settings: dict[str, Any]):
    self.settings = settings
    space = space_lib.get_space(settings['space'])
    types = [t for group in space.groups for t in group]
    self.scorer = ZenScorer(
      resolution=settings['resolution'],
      batch_size=settings['batch_size'],
      repeats=settings['repeats'],
      mixup_gamma=settings['mixup_gamma'],
      bn_variance=settings['bn_variance'],
      families=sorted({BLOCK_TYPES[t].family for t in types}),
      kernel_sizes=sorted({BLOCK_TYPES[t].kernel_size for t in types}),
      candidates=settings['candidates_per_step'],
      # Conv weights never exceed the parameter budget; without one, start at 2M and grow.
      weight_capacity=int(settings['budget_model_size'] or (1 << 21)),
    )

  def __call__(self, structure: Structure, seed: int) -> float:
    return float(self.score_many([structure], [seed])[0])

  def score_many(self, structures: list[Structure], seeds: list[int]) -> list[float]:
    return [float(v) for v in self.scorer.score_batch(structures, seeds).mean(axis=1)]

  def stats(self) -> tuple[int, float]:
    """(programs compiled, compile seconds) in this process so far."""
    return compiled_programs(), compile_seconds()

  def state(self) -> dict[str, Any]:
    return self.scorer.state()

  def restore(self, state: dict[str, Any]) -> None:
    self.scorer.restore(state)

  def warmup(self, structures: list[Structure]) -> int:
    """Compile the programs `structures` need, grouped as a search would score them."""
    return self.scorer.warmup(structures)

  def grid(self) -> list | None:
    """Every stage program this search can run (the level grid its budgets allow), with the
    scorer's buffers sized so they never grow; None when the budgets bound no width."""
    init = resolve(self.settings['init_structure'])
    bounds = width_bounds(self.settings)
    if bounds is None:
      return None
    top = prog.width_level(max(bounds.first, *bounds.stages), self.scorer.level_ratio)
    self.scorer.bound_sizes(bounds.max_weights, bounds.stage_layers, top)
    return self.scorer.level_grid(init, bounds.first, bounds.stages)

  def compile_grid(self) -> int | None:
    """Compiles `grid()`; returns how many programs this process holds (None: no grid)."""
    specs = self.grid()
    return None if specs is None else self.scorer.compile_grid(specs)

  def close(self) -> None:
    """Drops the background compiles not started yet (the process need not wait for them)."""
    prog.PROGRAMS.cancel_background()


def warmup_structures(config, count: int, setup: SearchSetup | None = None) -> list[Structure]:
  """The first `count` candidates the search proposes that pass its budgets.

  Until the population first reaches its size nothing is trimmed and parents are drawn
  uniformly, so these do not depend on any score: they are exactly the search's own first
  candidates (fewer if trimming starts earlier), drawn in steps of `candidates_per_step` from
  the step's population as `run_search` draws them. Repeats are dropped, as the search scores
  a structure once. `setup`: as `run_search` takes it.
  """
  setup = setup if setup is not None else validate_config(config)
  settings = setup.settings
  rng = np.random.Generator(np.random.PCG64(settings['seed']))
  state = SearchState(settings=settings)
  out: dict[str, Structure] = {}
  size, end = config.search.population_size, config.search.max_iterations
  per_step, it = settings['candidates_per_step'], 0
  while it < end and len(out) < count:
    n = min(per_step, end - it)
    state.trim(size)
    proposals = [(it + j, _propose(state, setup, rng)) for j in range(n)]
    for i, candidate in proposals:
      if _screen(candidate, dict(settings, budget_latency=None), {}, i) is not None:
        out.setdefault(str(candidate), candidate)
        state.population.append((str(candidate), 0.0))
    it += n
  return list(out.values())[:count]


GRID_CHOICES = ('auto', 'on', 'off')


def grid_enabled(config) -> bool:
  """Whether the search compiles its whole level grid up front (config.search.compile_grid).

  'auto' is on for accelerators only: there a compile mid-search stalls scoring that runs at
  hundreds of candidates a second, while on the 2-core CPU the grid takes minutes to compile,
  more than the few late compiles of a short search cost.
  """
  choice = _get(config.search, 'compile_grid', 'auto')
  if choice not in GRID_CHOICES:
    raise SearchConfigError(
      f'config.search.compile_grid={choice!r}: set it to one of {list(GRID_CHOICES)}'
    )
  if choice == 'auto':
    import jax

    return jax.default_backend() != 'cpu'
  return choice == 'on'


def jax_scorer(settings: dict[str, Any]) -> JaxZenScorer:
  """Zen-score with the search's settings (see zenfer_jax.nas.zen_score)."""
  return JaxZenScorer(settings)


def measure_latency(
  structure: Structure, *, batch_size: int, resolution: int, num_classes: int, repeats: int = 3
) -> float:
  """Seconds per forward pass of the real network (residual links on, no SA) on the default device."""
  import jax
  import jax.numpy as jnp

  model = build_model(structure, num_classes)
  x = jnp.zeros((batch_size, resolution, resolution, 3), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready(fwd(variables, x))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fwd(variables, x))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _device_name() -> str:
  import jax

  d = jax.devices()[0]
  return f'{d.platform}:{d.device_kind}'


def _check_resume(state: SearchState, setup: SearchSetup, workdir: str) -> None:
  differ = sorted(
    k
    for k in set(state.settings) | set(setup.settings)
    if state.settings.get(k) != setup.settings.get(k)
  )
  if differ:
    detail = ', '.join(
      f'{k}: {state.settings.get(k)!r} there, {setup.settings.get(k)!r} now' for k in differ
    )
    raise SearchConfigError(
      f'{workdir} holds a search with other settings ({detail}); use a new --workdir or the same settings'
    )


def _open_log(workdir: str, state: SearchState):
  """The candidate log, cut back to the bytes the checkpoint vouches for, opened for appending.

  A log that lost rows the checkpoint vouches for (deleted, or cut short) does not stop the
  search: the population, the RNG and the progress curve are in the checkpoint, so the search
  continues exactly, appending to what is left of the log (its whole lines), and says which
  rows are gone. `state.log_bytes` then counts what the log really holds, so the next resume
  finds them in agreement. Refusing instead would lose the whole search for the sake of rows
  that are lost either way.
  """
  path = os.path.join(workdir, LOG_FILE)
  size = os.path.getsize(path) if os.path.exists(path) else 0
  keep = state.log_bytes
  if size < keep:
    keep = 0
    if size:
      with open(path, 'rb') as f:
        keep = f.read().rfind(b'\n') + 1  # Whole lines only.
    log.warning(
      '%s holds %d bytes but the checkpoint at iteration %d vouches for %d: %s. The search '
      'continues from the checkpoint (its population is intact); the log keeps its first %d '
      'bytes and new candidates are appended after them, so rows of earlier iterations are '
      'missing from it.',
      path,
      size,
      state.next_iteration,
      state.log_bytes,
      'it was deleted' if not os.path.exists(path) else 'it was cut short or edited',
      keep,
    )
    state.log_bytes = keep
  if os.path.exists(path) and size != keep:
    with open(path, 'r+b') as f:
      f.truncate(keep)
  return open(path, 'ab')


def _read_scores(workdir: str, num_bytes: int) -> dict[str, float]:
  path = os.path.join(workdir, LOG_FILE)
  scores: dict[str, float] = {}
  if not os.path.exists(path) or num_bytes == 0:
    return scores
  with open(path, 'rb') as f:
    data = f.read(num_bytes)
  for line in data.splitlines():
    rec = json.loads(line)
    scores[rec['structure']] = rec['score']
  return scores


def _propose(state: SearchState, setup: SearchSetup, rng: np.random.Generator) -> Structure:
  """One mutation by the reference's rule: of the initial structure while the population has at
  most 10 members (1 block), else of a uniformly drawn member (2 blocks)."""
  if len(state.population) <= 10:
    return space_lib.mutate(setup.init, setup.space, rng, num_replaces=1)
  parent = state.population[int(rng.integers(0, len(state.population)))][0]
  return space_lib.mutate(resolve(parent), setup.space, rng, num_replaces=2)


def run_search(
  config,
  workdir: str,
  *,
  scorer: Scorer | None = None,
  progress: bool = True,
  stop_after: int | None = None,
  max_seconds: float | None = None,
  setup: SearchSetup | None = None,
) -> SearchState:
  """Run (or resume) the search described by `config` in `workdir`; returns the final state.

  scorer: structure, seed -> score (with an optional `score_many(structures, seeds)` that
  scores a step's candidates in one call); the JAX Zen-score by default. stop_after: run at
  most this many iterations in this call, rounded up to whole steps (benchmarks, tests).
  max_seconds (or config.search.max_seconds): stop after the step that passes this much wall
  time in this call, with a checkpoint, so a job with a wall-clock limit (a SLURM slot, a
  benchmark's budget) ends cleanly and the next call resumes.

  The search holds WORKDIR/run.lock while it runs (`zenfer_jax.rundir.workdir_lock`): a second
  search or training run on the same workdir raises WorkdirLocked at once, naming the holding
  process, instead of interleaving its candidates and checkpoints with this one's.

  setup: `validate_config(config)` from a caller that checked the config already (the command
  does, before its log file opens); without it the config is checked here. Checking twice
  would cost a budget_latency config a second latency measurement.
  """
  setup = setup if setup is not None else validate_config(config)
  if max_seconds is None:
    max_seconds = _get(config.search, 'max_seconds')
  if max_seconds is not None and not max_seconds > 0:
    raise SearchConfigError(f'max_seconds must be positive, got {max_seconds!r}')
  with workdir_lock.hold(workdir, 'search'):
    return _run_search(config, setup, workdir, scorer, progress, stop_after, max_seconds)


def _run_search(config, setup, workdir, scorer, progress, stop_after, max_seconds) -> SearchState:
  """The search under the workdir lock, in parts: a call with nothing left to do writes the
  outputs without building a scorer (a JAX start-up), and the loop's shared state lives in one
  `_Session`."""
  settings = setup.settings
  os.makedirs(workdir, exist_ok=True)
  state = _load_or_new_state(workdir, setup)
  rng = np.random.Generator(np.random.PCG64(settings['seed']))
  if state.rng_state is not None:
    rng.bit_generator.state = state.rng_state
  end = _end_iteration(state, config.search.max_iterations, settings, stop_after)
  if state.next_iteration >= end:
    _write_outputs(workdir, state, settings)
    return state
  scorer = _ready_scorer(scorer, settings, config.search, state)
  session = _Session(config, setup, workdir, state, rng, scorer, progress, end, max_seconds)
  if hasattr(scorer, 'compile_grid') and grid_enabled(config):
    session.compile_grid()
  session.run()
  return state


def _load_or_new_state(workdir: str, setup: SearchSetup) -> SearchState:
  """A workdir's checkpoint is only resumed under the settings it was made with, since any other
  setting would make the rest of the search a different search than its first part."""
  state = load_state(workdir)
  if state is None:
    return SearchState(settings=setup.settings)
  _check_resume(state, setup, workdir)
  return state


def _end_iteration(state: SearchState, max_iterations: int, settings, stop_after) -> int:
  """Where this call stops: `stop_after` is rounded up to a whole step, so a search stopped and
  resumed takes the same steps as one that ran through."""
  if stop_after is None:
    return max_iterations
  per_step = settings['candidates_per_step']
  return min(max_iterations, -(-(state.next_iteration + stop_after) // per_step) * per_step)


def _ready_scorer(scorer, settings, s, state: SearchState):
  """The default scorer is built only once there is work to do (it costs a JAX start-up), and
  any scorer resumes its saved state so that resumed scores equal uninterrupted ones."""
  if scorer is None:
    if settings['proxy'] == 'zen':
      compilation_cache.enable(_get(s, 'compilation_cache_dir', '') or '')
    scorer = make_scorer(settings)
  if hasattr(scorer, 'restore'):
    scorer.restore(state.scorer_state)
  return scorer


def _progress_bar(max_iterations: int, initial: int):
  """tqdm is imported only when a bar is asked for, so quiet runs (tests, jobs) do without it."""
  from tqdm import tqdm

  return tqdm(
    total=max_iterations,
    initial=initial,
    desc='search',
    unit='it',
    dynamic_ncols=True,
  )


class _Session:
  """One call's run of the search loop. Its steps share the scorer, the open log, the known
  scores and the clocks that the saved totals add this call's share to; one object holds them so
  that each part of a step can be read, and tested, on its own."""

  def __init__(self, config, setup, workdir, state, rng, scorer, progress, end, max_seconds):
    self.s = config.search
    self.setup, self.settings = setup, setup.settings
    self.workdir, self.state, self.rng, self.scorer, self.end = workdir, state, rng, scorer, end
    self.per_step = self.settings['candidates_per_step']
    self.stats = getattr(scorer, 'stats', lambda: (0, 0.0))
    self.programs_before, self.compile_before = self.stats()
    self.log_file = _open_log(workdir, state)
    self.known = _read_scores(workdir, state.log_bytes)
    self.latencies: dict[str, float] = {}
    # Record the progress curve at most ~2,000 times over the whole search.
    self.progress_every = max(1, self.s.max_iterations // 2000)
    self.bar = _progress_bar(self.s.max_iterations, state.next_iteration) if progress else None
    self.scored_here = 0
    self.last_plot = -float('inf')
    self.start = time.perf_counter()
    self.deadline = None if max_seconds is None else self.start + float(max_seconds)
    self.saved = dict(
      elapsed=state.elapsed_s,
      scoring=state.scoring_s,
      compile=state.compile_s,
      programs=state.compiled_programs,
    )

  def totals(self):
    """(programs, compile seconds, elapsed seconds) over every call so far, not just this one,
    so that the log and the summary describe the whole search however often it was resumed."""
    programs, compile_s = self.stats()
    return (
      self.saved['programs'] + programs - self.programs_before,
      self.saved['compile'] + compile_s - self.compile_before,
      self.saved['elapsed'] + time.perf_counter() - self.start,
    )

  def compile_grid(self) -> None:
    """Before the first candidate, and inside the search's elapsed time: what a user waits for."""
    state, stats = self.state, self.stats
    t, before = time.perf_counter(), stats()[0]
    if self.scorer.compile_grid() is None:
      log.warning(
        'config.search.compile_grid: without a parameter or FLOP budget and a layer budget '
        'nothing bounds the widths, so there is no level grid to compile up front'
      )
    else:
      state.warmup_programs += stats()[0] - before
      state.warmup_s += time.perf_counter() - t
      log.info(
        'compiled the level grid up front: %d programs in %.1f s',
        stats()[0] - before,
        time.perf_counter() - t,
      )

  def run(self) -> None:
    """Steps until the end or the deadline; the log, the bar and the scorer are closed however
    the loop ends, so an interrupted search leaves no half-written line or live workers."""
    state = self.state
    try:
      while state.next_iteration < self.end:
        it = state.next_iteration
        n = min(self.per_step - it % self.per_step, self.end - it)
        if self._step(it, n):
          break
    finally:
      self.log_file.close()
      if self.bar is not None:
        self.bar.close()
      if hasattr(self.scorer, 'close'):
        self.scorer.close()

  def _step(self, it: int, n: int) -> bool:
    """Iterations [it, it + n): one step, checkpointed where due. True when out of time: the
    deadline is checked only between steps, so a stopped search stops at a step boundary."""
    state = self.state
    state.trim(self.s.population_size)
    proposals = []
    for j in range(n):
      candidate = _propose(state, self.setup, self.rng)
      record = _screen(candidate, self.settings, self.latencies, it + j)
      proposals.append((it + j, candidate, record))
    fresh: dict[str, Structure] = {}
    for _, candidate, record in proposals:
      if record is not None and record['structure'] not in self.known:
        fresh.setdefault(record['structure'], candidate)
    score_s = self._score(fresh)
    state.scoring_s += score_s
    elapsed = self._log_accepted([p for p in proposals if p[2] is not None], fresh, score_s)
    state.next_iteration = it + n
    self._note_progress(it, elapsed)
    self._update_bar(n)
    out_of_time = self.deadline is not None and time.perf_counter() >= self.deadline
    crossed = state.next_iteration // self.s.checkpoint_every != it // self.s.checkpoint_every
    if crossed or state.next_iteration == self.end or out_of_time:
      self._checkpoint(out_of_time)
    return out_of_time

  def _score(self, fresh: dict[str, Structure]) -> float:
    """Scores the step's new structures in one call where the scorer can (one batch on the
    device), each seeded by its text so a structure's score does not depend on its neighbours;
    returns the seconds it took."""
    t = time.perf_counter()
    if fresh:
      texts = list(fresh)
      seeds = [structure_seed(text, self.settings['seed']) for text in texts]
      if hasattr(self.scorer, 'score_many'):
        values = self.scorer.score_many([fresh[x] for x in texts], seeds)
      else:
        values = [self.scorer(fresh[x], seed) for x, seed in zip(texts, seeds)]
      for text, value in zip(texts, values):
        self.known[text] = float(value)
    return time.perf_counter() - t

  def _log_accepted(self, accepted, fresh: dict[str, Structure], score_s: float) -> float:
    """Appends the step's accepted candidates to the log and the population in proposal order
    (what the reference's sequential loop would do); a structure repeated within the step is
    marked cached after its first row. Returns the elapsed total the rows carry."""
    state = self.state
    programs, _, elapsed = self.totals()
    for _, _, record in accepted:
      text = record['structure']
      record.update(
        score=self.known[text],
        cached=text not in fresh,
        score_s=round(score_s / len(accepted), 4),
        compiled_programs=programs,
        elapsed_s=round(elapsed, 3),
      )
      fresh.pop(text, None)
      line = (json.dumps(record) + '\n').encode()
      self.log_file.write(line)
      state.log_bytes += len(line)
      state.population.append((text, record['score']))
      state.num_scored += 1
      self.scored_here += 1
    self.log_file.flush()
    return elapsed

  def _note_progress(self, it: int, elapsed: float) -> None:
    """Adds a point to the progress curve only every `progress_every` iterations (and at the
    end), so a million-iteration search's checkpoint stays small."""
    state, every = self.state, self.progress_every
    if state.population and (
      state.next_iteration // every != it // every or state.next_iteration == self.end
    ):
      best = state.best()
      state.progress.append([state.next_iteration, round(elapsed, 3), best[1], state.median()])

  def _update_bar(self, n: int) -> None:
    """The rate shown is this call's, which is what a user watching the bar can act on."""
    if self.bar is None:
      return
    rate = self.scored_here / max(time.perf_counter() - self.start, 1e-9)
    best = self.state.best()
    self.bar.set_postfix(
      cand_per_s=f'{rate:.2f}', best=f'{best[1]:.3f}' if best else '-', refresh=False
    )
    self.bar.update(n)

  def _checkpoint(self, out_of_time: bool) -> None:
    """The log is fsynced before the checkpoint that vouches for its bytes, so a resume never
    finds the checkpoint ahead of the log; plots are redrawn at most every PLOT_EVERY_S (a
    redraw can cost more than the scoring) and at the end."""
    state = self.state
    os.fsync(self.log_file.fileno())
    state.rng_state = self.rng.bit_generator.state
    state.compiled_programs, state.compile_s, state.elapsed_s = self.totals()
    if hasattr(self.scorer, 'state'):
      state.scorer_state = self.scorer.state()
    save_state(self.workdir, state)
    final = state.next_iteration == self.end or out_of_time
    plot = final or time.perf_counter() - self.last_plot >= PLOT_EVERY_S
    _write_outputs(self.workdir, state, self.settings, plot=plot)
    if plot:
      self.last_plot = time.perf_counter()


def _screen(candidate: Structure, settings, latencies, iteration: int):
  """The candidate's log record (without its score), or None when a budget or filter rejects it."""
  text = str(candidate)
  num_classes = settings['num_classes']
  layers = counters.num_layers(candidate)
  if settings['max_layers'] is not None and layers > settings['max_layers']:
    return None
  size = counters.model_size(candidate, num_classes=num_classes)
  if settings['budget_model_size'] is not None and size > settings['budget_model_size']:
    return None
  flops = counters.flops(candidate, settings['resolution'], num_classes=num_classes)
  if settings['budget_flops'] is not None and flops > settings['budget_flops']:
    return None
  record = {'iteration': iteration, 'structure': text}
  if settings['budget_latency'] is not None:
    if text not in latencies:
      latencies[text] = measure_latency(
        candidate,
        batch_size=settings['batch_size'],
        resolution=settings['resolution'],
        num_classes=num_classes,
      )
    if latencies[text] > settings['budget_latency']:
      return None
    record['latency_s'] = latencies[text]
  if settings['efficient_score'] is not None:
    eff = space_lib.efficient_score(candidate, settings['resolution'])
    if eff > settings['efficient_score']:
      return None
    record['efficient_score'] = eff
  record.update(flops=flops, model_size=size, layers=layers)
  return record


def summary(state: SearchState, settings: dict[str, Any]) -> dict[str, Any]:
  """What search_summary.json holds: throughput, compile cost and the best structure so far."""
  best = state.best()
  elapsed = round(state.elapsed_s, 3)  # candidates_per_s agrees with the elapsed_s it shows.
  return {
    'iterations': state.next_iteration,
    'candidates_scored': state.num_scored,
    'compiled_programs': state.compiled_programs,
    'warmup_programs': state.warmup_programs,
    'warmup_s': round(state.warmup_s, 3),
    'compile_s': round(state.compile_s, 3),
    'scoring_s': round(state.scoring_s, 3),
    'elapsed_s': elapsed,
    'candidates_per_s': state.num_scored / max(elapsed, 1e-9),
    'candidates_per_step': settings['candidates_per_step'],
    'best_score': None if best is None else best[1],
    'best_structure': None if best is None else best[0],
    'population_median': state.median(),
    'settings': {k: v for k, v in settings.items()},
  }


def plot_progress(state: SearchState, path: str) -> None:
  """Best and median population score against iterations and against wall time."""
  if not state.progress:
    return
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  p = np.asarray(state.progress, dtype=np.float64)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
  for ax, x, label in ((axes[0], p[:, 0], 'iterations'), (axes[1], p[:, 1], 'wall time (s)')):
    ax.plot(x, p[:, 2], label='best')
    ax.plot(x, p[:, 3], label='population median')
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('score')
  axes[0].legend(loc='lower right')
  fig.suptitle(
    f'{state.settings.get("space")} search at {state.settings.get("resolution")} px: '
    f'{state.num_scored} candidates scored'
  )
  fig.tight_layout()
  try:
    with atomic_write.replacing(path) as tmp:
      fig.savefig(tmp, dpi=90, format='png')
  finally:
    plt.close(fig)


def _write_outputs(
  workdir: str, state: SearchState, settings: dict[str, Any], *, plot: bool = True
) -> None:
  _write_best(workdir, state)
  atomic_write.write_json(os.path.join(workdir, SUMMARY_FILE), summary(state, settings), indent=1)
  if plot:
    plot_progress(state, os.path.join(workdir, PROGRESS_FILE))


def _write_best(workdir: str, state: SearchState) -> None:
  best = state.best()
  if best is not None:
    atomic_write.write_text(os.path.join(workdir, BEST_FILE), best[0] + '\n')
