"""The reference evolutionary search (evolution_search.py), resumable and with pluggable scoring.

Per iteration, as in the reference: drop the lowest-scoring members while the
population exceeds its size; mutate the initial structure (1 block) while the
population has at most 10 members, else a random member (2 blocks); split deep
blocks; skip the candidate if it breaks a budget (layers, model size, FLOPs
on the reference counters, latency) or the optional efficient-score filter;
otherwise score it and append it. The best structure is the population's
maximum at the end.

Differences, all deliberate: a structure is scored once and its score reused
(the reference builds a fresh random network each time, so a repeated
structure there gets a new draw), and each structure's draw is seeded from
the structure string and `config.seed`, so a score never depends on the
search's history, and a resumed search retraces the killed one exactly.
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

from zenfer_jax import counters
from zenfer_jax.nas import space as space_lib
from zenfer_jax.nas.population import (
  BEST_FILE,
  LOG_FILE,
  SearchState,
  atomic_write_text,
  load_state,
  save_state,
)
from zenfer_jax.structure import Structure, StructureError, resolve

__all__ = [
  'SearchConfigError',
  'validate_config',
  'run_search',
  'structure_seed',
  'Scorer',
  'jax_scorer',
  'make_scorer',
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
)
# Zero-shot proxies, as the reference's --zero_shot_score offers them; 'zen' is the one its scripts use.
PROXIES = ('zen', 'flops', 'params', 'random')


class SearchConfigError(ValueError):
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
  settings['seed'] = int(config.seed)
  return SearchSetup(space=space, init=init, settings=settings)


def structure_seed(structure: str, seed: int) -> int:
  """The Zen-score seed of a structure: a function of the structure string and config.seed only."""
  return zlib.crc32(f'{seed}:{structure}'.encode()) & 0x7FFFFFFF


def enable_compilation_cache(cache_dir: str) -> None:
  """JAX's persistent compilation cache, keeping every entry however quick its compile was."""
  if not cache_dir:
    return
  import jax

  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


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


def jax_scorer(settings: dict[str, Any]) -> Scorer:
  """Zen-score with the search's settings (see zenfer_jax.nas.zen_score)."""
  from zenfer_jax.nas.zen_score import ZenScorer

  scorer = ZenScorer(
    resolution=settings['resolution'],
    batch_size=settings['batch_size'],
    repeats=settings['repeats'],
    mixup_gamma=settings['mixup_gamma'],
    bn_variance=settings['bn_variance'],
    weight_capacity=1 << 21,  # covers 1M-parameter networks twice over
  )
  return lambda structure, seed: scorer(structure, seed).mean


def measure_latency(
  structure: Structure, *, batch_size: int, resolution: int, num_classes: int, repeats: int = 3
) -> float:
  """Seconds per forward pass of the real network (residual links on, no SA) on the default device."""
  import jax
  import jax.numpy as jnp

  from zenfer_jax.models import build_model

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


def _open_log(workdir: str, keep_bytes: int):
  """The candidate log, cut back to the bytes the checkpoint vouches for, opened for appending."""
  path = os.path.join(workdir, LOG_FILE)
  if os.path.exists(path):
    if os.path.getsize(path) < keep_bytes:
      raise SearchConfigError(f'{path} is shorter than its checkpoint says; it was edited or lost')
    with open(path, 'r+b') as f:
      f.truncate(keep_bytes)
  f = open(path, 'ab')
  return f


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


def run_search(
  config,
  workdir: str,
  *,
  scorer: Scorer | None = None,
  progress: bool = True,
  stop_after: int | None = None,
  max_seconds: float | None = None,
) -> SearchState:
  """Run (or resume) the search described by `config` in `workdir`; returns the final state.

  scorer: structure, seed -> score; the JAX Zen-score by default. stop_after:
  run at most this many iterations in this call (benchmarks, tests). max_seconds
  (or config.search.max_seconds): stop after the iteration that passes this much
  wall time in this call, with a checkpoint, so a job with a wall-clock limit
  (a SLURM slot, a benchmark's budget) ends cleanly and the next call resumes.
  """
  setup = validate_config(config)
  settings = setup.settings
  s = config.search
  os.makedirs(workdir, exist_ok=True)

  state = load_state(workdir)
  if state is None:
    state = SearchState(settings=settings)
  else:
    _check_resume(state, setup, workdir)
  rng = np.random.Generator(np.random.PCG64(settings['seed']))
  if state.rng_state is not None:
    rng.bit_generator.state = state.rng_state

  max_iterations = s.max_iterations
  checkpoint_every = s.checkpoint_every
  end = (
    max_iterations if stop_after is None else min(max_iterations, state.next_iteration + stop_after)
  )
  if state.next_iteration >= end:
    _write_best(workdir, state)
    return state

  if scorer is None:
    if settings['proxy'] == 'zen':
      enable_compilation_cache(os.path.expanduser(_get(s, 'compilation_cache_dir', '') or ''))
    scorer = make_scorer(settings)
  known = _read_scores(workdir, state.log_bytes)
  latencies: dict[str, float] = {}
  log_file = _open_log(workdir, state.log_bytes)

  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(
      total=max_iterations,
      initial=state.next_iteration,
      desc='search',
      unit='it',
      dynamic_ncols=True,
    )
  scored_here = 0
  start = time.perf_counter()
  if max_seconds is None:
    max_seconds = _get(s, 'max_seconds')
  if max_seconds is not None and not max_seconds > 0:
    raise SearchConfigError(f'max_seconds must be positive, got {max_seconds!r}')
  deadline = None if max_seconds is None else start + float(max_seconds)
  elapsed_before = state.elapsed_s

  try:
    for it in range(state.next_iteration, end):
      state.trim(s.population_size)
      if len(state.population) <= 10:
        candidate = space_lib.mutate(setup.init, setup.space, rng, num_replaces=1)
      else:
        parent = state.population[int(rng.integers(0, len(state.population)))][0]
        candidate = space_lib.mutate(resolve(parent), setup.space, rng, num_replaces=2)
      record = _evaluate(candidate, settings, s, scorer, known, latencies, it)
      if record is not None:
        line = (json.dumps(record) + '\n').encode()
        log_file.write(line)
        log_file.flush()
        state.log_bytes += len(line)
        state.population.append((record['structure'], record['score']))
        state.num_scored += 1
        scored_here += 1
      state.next_iteration = it + 1
      if bar is not None:
        rate = scored_here / max(time.perf_counter() - start, 1e-9)
        best = state.best()
        bar.set_postfix(
          cand_per_s=f'{rate:.2f}', best=f'{best[1]:.3f}' if best else '-', refresh=False
        )
        bar.update(1)
      out_of_time = deadline is not None and time.perf_counter() >= deadline
      if state.next_iteration % checkpoint_every == 0 or state.next_iteration == end or out_of_time:
        os.fsync(log_file.fileno())
        state.rng_state = rng.bit_generator.state
        state.elapsed_s = elapsed_before + time.perf_counter() - start
        save_state(workdir, state)
        _write_best(workdir, state)
      if out_of_time:
        break
  finally:
    log_file.close()
    if bar is not None:
      bar.close()
  return state


def _evaluate(
  candidate: Structure,
  settings,
  s,
  scorer: Scorer,
  known: dict[str, float],
  latencies,
  iteration: int,
):
  """The candidate's log record, or None when a budget or filter rejects it."""
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
  t = time.perf_counter()
  cached = text in known
  if not cached:
    known[text] = float(scorer(candidate, structure_seed(text, settings['seed'])))
  record.update(
    score=known[text],
    flops=flops,
    model_size=size,
    layers=layers,
    cached=cached,
    score_s=round(time.perf_counter() - t, 4),
  )
  return record


def _write_best(workdir: str, state: SearchState) -> None:
  best = state.best()
  if best is not None:
    atomic_write_text(os.path.join(workdir, BEST_FILE), best[0] + '\n')
