"""The level grid a search's budgets allow, compiled up front: no candidate's program is outside
it, nothing compiles after the warm-up, and the search's results do not change."""

import json
import pathlib

import numpy as np
import pytest

from configs import search_m, search_r
from zenfer_jax.model.structure import resolve
from zenfer_jax.nas import evolution
from zenfer_jax.nas import programs as prog
from zenfer_jax.nas import space as space_lib
from zenfer_jax.nas.population import LOG_FILE

# Two stages at 16 px and budgets that keep every width under 128: a grid of 15 programs.
SMALL = dict(
  init_structure='SuperConvK3BNRELU(3,8,2,1)SuperResIDWE1K3(8,16,2,8,1)'
  'SuperResIDWE1K3(16,24,2,8,1)SuperConvK1BNRELU(24,64,1,1)',
  resolution=16,
  batch_size=2,
  budget_model_size=16e3,
  budget_flops=250e3,
  max_layers=6,
  population_size=8,
  checkpoint_every=1000,
  compilation_cache_dir='',
)


def _config(base=search_m, seed=0, **search):
  c = base.get_config()
  c.seed = seed
  c.search.compilation_cache_dir = ''
  for k, v in search.items():
    setattr(c.search, k, v)
  return c


def _log(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / LOG_FILE).read_text().splitlines()]


def _bounds(config):
  return evolution.width_bounds(evolution.validate_config(config).settings)


@pytest.mark.parametrize(
  'base,proxy,resolution',
  [(search_m, 'params', 64), (search_m, 'flops', 64), (search_r, 'flops', 32)],
)
def test_no_candidate_is_wider_than_the_bounds(tmp_path, base, proxy, resolution):
  """Searches that grow parameters or FLOPs as far as the budgets let them (the cheap proxies,
  no scoring) never meet a width, level, weight count or stage depth past the bounds."""
  c = _config(base, proxy=proxy, resolution=resolution, population_size=16, max_iterations=3000)
  c.search.checkpoint_every = 3000
  bounds = _bounds(c)
  evolution.run_search(c, str(tmp_path), progress=False)
  widest = [0] * len(bounds.stages)
  for rec in _log(tmp_path):
    layout = prog.network_layout(rec['structure'])
    first, _, levels = prog.stage_levels(layout, 4)
    assert layout.first.out_channels <= bounds.first
    assert layout.num_weights <= bounds.max_weights
    for i, stage in enumerate(layout.stages):
      widths = [w for layer in stage for w in layer.thin_widths]
      widest[i] = max(widest[i], *widths)
      assert max(widths) <= bounds.stages[i] and len(stage) <= bounds.stage_layers
      assert first <= levels[0]  # what halves stage 0's grid
  # The proxies really push the widths up: the bounds are not vacuous for these searches.
  assert max(widest) > 64


def test_the_grid_holds_every_program_and_nothing_compiles_after_the_warm_up(tmp_path):
  """Several seeds of a small search with the grid compiled up front: every stage program any
  candidate ran is in the grid, no candidate compiled anything, and with the grid off the same
  seed scores every candidate identically (same structures, same scores, bit for bit)."""
  planned = None
  for seed in (0, 1, 2):
    c = _config(seed=seed, max_iterations=40, compile_grid='on', **SMALL)
    scorer = evolution.JaxZenScorer(evolution.validate_config(c).settings)
    before = set(prog.PROGRAMS.keys())
    state = evolution.run_search(c, str(tmp_path / f'on{seed}'), scorer=scorer, progress=False)
    grid = {('stage', spec) for spec in scorer.grid()}
    # Nothing outside the grid was even asked for (no background completion either).
    assert {k for k in set(prog.PROGRAMS.keys()) - before if k[0] == 'stage'} <= grid
    planned = planned or len(grid)
    assert len(grid) == planned == 15
    assert grid <= set(prog.PROGRAMS.keys())
    used = set()
    for layout in (prog.network_layout(r['structure']) for r in _log(tmp_path / f'on{seed}')):
      used.update(('stage', spec) for spec in scorer.scorer._plan([layout], record=False))
    assert used and used <= grid
    log = _log(tmp_path / f'on{seed}')
    # Every row counts the programs compiled up front and not one more.
    assert {r['compiled_programs'] for r in log} == {state.warmup_programs}
    assert state.compiled_programs == state.warmup_programs
  c = _config(seed=2, max_iterations=40, compile_grid='off', **SMALL)
  evolution.run_search(c, str(tmp_path / 'off2'), progress=False)
  skip = ('score_s', 'elapsed_s', 'compiled_programs')
  untimed = [
    [{k: v for k, v in r.items() if k not in skip} for r in _log(tmp_path / d)]
    for d in ('on2', 'off2')
  ]
  assert untimed[0] == untimed[1]


def test_compile_grid_is_checked_with_the_config():
  with pytest.raises(evolution.SearchConfigError, match='compile_grid'):
    evolution.validate_config(_config(compile_grid='yes'))
  assert evolution.grid_enabled(_config(compile_grid='auto')) is False  # the test runs on CPU
  assert _bounds(_config(budget_flops=None, budget_model_size=None)) is None


def test_a_longer_weight_buffer_changes_no_score():
  """The grid sizes the weight buffer for the largest structure the budgets allow, where a search
  without it starts smaller and grows: the scores must not depend on the buffer's length."""
  from zenfer_jax.nas.zen_score import ZenScorer

  rng = np.random.default_rng(3)
  init = resolve(search_m.get_config().search.init_structure)
  structures = [space_lib.mutate(init, space_lib.get_space('IDW'), rng, 2) for _ in range(2)]
  kw = dict(resolution=16, batch_size=2, families=('idw',), kernel_sizes=(3, 5, 7))
  short = ZenScorer(weight_capacity=1 << 16, **kw)
  long = ZenScorer(weight_capacity=1 << 16, **kw)
  long.bound_sizes(1 << 20, 64, 128)
  assert long._capacity_chunks > short._capacity_chunks and long.max_layers > short.max_layers
  assert (long.score_batch(structures, [4, 5]) == short.score_batch(structures, [4, 5])).all()
