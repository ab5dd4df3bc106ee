"""The bounded program set: padded, batched scores equal the unpadded network's, few programs.

The yardstick is an independent float64 NumPy forward pass of the residual-free network with
exact widths, fed the very kernels and inputs the JAX scorer draws (`network_weights`,
`network_inputs`).
"""

import importlib
import json
import threading

import jax
import numpy as np
import pytest

from zenfer_jax.model.structure import resolve
from zenfer_jax.nas import programs as prog
from zenfer_jax.nas import space as space_lib

zs = importlib.import_module('zenfer_jax.nas.zen_score')

INIT = {
  'IDW': (
    'SuperConvK3BNRELU(3,8,2,1)SuperResIDWE6K3(8,32,2,8,1)SuperResIDWE6K3(32,48,2,32,1)'
    'SuperResIDWE6K3(48,96,2,48,1)SuperResIDWE6K3(96,128,2,96,1)SuperConvK1BNRELU(128,2048,1,1)'
  ),
  'XXBL': (
    'SuperConvK3BNRELU(3,8,1,1)SuperResK3K3(8,16,1,8,1)SuperResK3K3(16,32,2,16,1)'
    'SuperResK3K3(32,64,2,32,1)SuperResK3K3(64,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)'
  ),
}


def random_structures(space: str, count: int, seed: int, steps: int = 6):
  """Structures a search could score: random mutation walks from the space's initial one."""
  rng = np.random.default_rng(seed)
  sp = space_lib.get_space(space)
  out = []
  for _ in range(count):
    s = resolve(INIT[space])
    for _ in range(steps):
      s = space_lib.mutate(s, sp, rng, num_replaces=2)
    out.append(s)
  return out


def _conv64(x, w, stride, groups_dw):
  """float64 conv, NHWC x HWIO, padding k // 2 (the reference's)."""
  k = w.shape[0]
  p = k // 2
  n, h, wd, c = x.shape
  ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = 0.0
  for dy in range(k):
    for dx in range(k):
      win = xp[
        :, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride
      ]
      out = out + (win * w[dy, dx, 0] if groups_dw else win @ w[dy, dx])
  return out


def reference_scores(
  structure, seed, *, batch_size, resolution, gamma, bn_variance='running', dtype=np.float64
):
  """The Zen-score of the unpadded residual-free network in NumPy (float64 by default)."""
  units = zs.network_units(structure)
  weights = zs.network_weights(structure, seed)[0]
  inputs = zs.network_inputs(seed, batch_size=batch_size, resolution=resolution, mixup_gamma=gamma)
  inputs = inputs[0].astype(dtype)
  feats, log_bn = [], 0.0
  stats = []
  for p in range(2):
    h = inputs[p]
    for i, u in enumerate(units):
      y = _conv64(h, weights[u.conv_path].astype(dtype), u.stride, u.depthwise)
      mean = y.mean(axis=(0, 1, 2))
      var = y.var(axis=(0, 1, 2))
      if p == 0:
        stats.append([var])
      else:
        stats[i].append(var)
      h = (y - mean) / np.sqrt(var + zs.BN_EPS)
      if u.relu:
        h = np.maximum(h, 0.0)
    feats.append(h)
  for i, (v1, v2) in enumerate(stats):
    # The unbiased variance's sample count: batch x output spatial size of the layer.
    count = _sample_count(units, i, batch_size, resolution)
    if bn_variance == 'running':
      unb1, unb2 = v1 * count / (count - 1), v2 * count / (count - 1)
      read = 0.9 * (0.9 * 1.0 + 0.1 * unb1) + 0.1 * unb2
    else:
      read = v1
    log_bn += 0.5 * np.log(read.mean())
  delta = np.log(np.mean(np.sum(np.abs(feats[0] - feats[1]), axis=(1, 2, 3))))
  return delta + log_bn


def _sample_count(units, index, batch_size, resolution):
  h = resolution
  for u in units[: index + 1]:
    h = prog.conv_out_size(h, u.kernel_size, u.stride)
  return batch_size * h * h


def assert_exact(got, structure, seed, **kw):
  """got == the float64 unpadded score within 1e-5 relative, or, where the score itself is
  ill-conditioned in float32 (a network ending at 1x1 with few samples: BatchNorm over a
  handful of values, a log of small differences), within twice the error of an unpadded
  float32 evaluation of the same network."""
  want = reference_scores(structure, seed, **kw)
  noise = abs(reference_scores(structure, seed, dtype=np.float32, **kw) - want)
  tol = max(1e-5 * abs(want), 2 * noise)
  assert abs(got - want) <= tol, (got, want, noise)
  return want


@pytest.mark.parametrize(
  'space,resolution,batch_size,candidates',
  [('IDW', 32, 16, 3), ('IDW', 64, 4, 1), ('XXBL', 32, 4, 3), ('XXBL', 64, 4, 1)],
)
def test_padded_batched_scores_equal_the_unpadded_network(
  space, resolution, batch_size, candidates
):
  """Random candidates scored in one batched call (sharing the widest levels), or one by one
  through the same programs."""
  structures = random_structures(space, 3 if candidates > 1 else 2, seed=resolution)
  seeds = [11, 12, 13][: len(structures)]
  kw = dict(batch_size=batch_size, resolution=resolution)
  scorer = zs.ZenScorer(candidates=candidates, mixup_gamma=0.01, **kw)
  got = scorer.score_batch(structures, seeds)[:, 0]
  expected = [
    assert_exact(g, s, seed, gamma=0.01, **kw) for g, s, seed in zip(got, structures, seeds)
  ]
  # The candidates really differ, and so do their scores.
  assert len({str(s) for s in structures}) == len(structures)
  assert len(set(np.round(expected, 3))) == len(structures)


def test_batch_variance_and_wide_levels_stay_exact():
  """bn_variance='batch', the coarsest ladder and chunks that split the wide widths unevenly."""
  s = random_structures('IDW', 1, seed=5)[0]
  kw = dict(batch_size=3, resolution=64)
  got = zs.ZenScorer(level_ratio=8, chunk=24, mixup_gamma=0.01, bn_variance='batch', **kw)
  assert_exact(got.scores(s, 3)[0], s, 3, gamma=0.01, bn_variance='batch', **kw)


def test_layout_groups_layers_into_stages():
  s = resolve(INIT['IDW'])
  lay = prog.network_layout(s)
  assert lay.first.out_channels == 8 and lay.last.out_channels == 2048
  assert [len(st) for st in lay.stages] == [2, 2, 2, 2]  # each IDW sub-layer: two layers
  assert all(st[0].stride == 2 and all(x.stride == 1 for x in st[1:]) for st in lay.stages)
  entry = lay.stages[0][0]
  assert (entry.family, entry.in_channels, entry.mid_channels, entry.out_channels) == (
    'idw',
    8,
    48,  # bottleneck 8 x expansion 6
    8,
  )
  assert lay.num_weights == zs.network_units(s)[-1].offset + 128 * 2048
  # 64 px: first conv to 32, then stages at 16, 8, 4, 2.
  assert [st[0] for st in lay.signature(64)[1]] == [64, 16, 8, 4]
  xxbl = prog.network_layout(INIT['XXBL'])
  assert [len(st) for st in xxbl.stages] == [1, 1, 1, 1]  # the stride-1 block joins stage 0
  assert xxbl.stages[0][0].stride == 1 and xxbl.stages[1][0].stride == 2


def test_width_levels():
  assert [prog.width_level(c, 4) for c in (3, 8, 9, 32, 33, 128, 129, 2048)] == [
    3,
    8,
    32,
    32,
    128,
    128,
    512,
    2048,
  ]
  assert prog.width_level(100, 2) == 128


def test_programs_do_not_grow_with_new_structures():
  """Once a stage's levels are compiled, new depths, kernels, expansions and wide widths of
  the same levels compile nothing; a scorer reuses a compiled wider level (level_slack)."""
  scorer = zs.ZenScorer(
    resolution=16,
    batch_size=2,
    families=('idw',),
    kernel_sizes=(3, 5, 7),
    level_slack=1,
    weight_capacity=1 << 20,
  )
  a = 'SuperConvK3BNRELU(3,16,2,1)SuperResIDWE2K3(16,24,2,16,1)SuperConvK1BNRELU(24,128,1,1)'
  scorer.scores(a, 0)
  before = zs.compiled_programs()
  traces = dict(prog.TRACES)
  for b in (
    'SuperConvK3BNRELU(3,16,2,1)SuperResIDWE6K7(16,32,2,24,3)SuperConvK1BNRELU(32,512,1,1)',
    'SuperConvK3BNRELU(3,24,2,1)SuperResIDWE1K5(24,32,2,8,2)SuperConvK1BNRELU(32,2048,1,1)',
  ):
    got = scorer.scores(b, 1)[0]
    assert np.isfinite(got)
  assert zs.compiled_programs() == before and prog.TRACES == traces
  # A wider stage (level 128) runs on a new program; then level 32 structures keep theirs.
  scorer.scores(
    'SuperConvK3BNRELU(3,16,2,1)SuperResIDWE2K3(16,96,2,48,1)SuperConvK1BNRELU(96,128,1,1)', 2
  )
  assert zs.compiled_programs() == before + 1
  assert sorted(scorer.levels_used) == [(0, 3, 32, 32), (0, 3, 32, 128)]


def test_warmup_waits_for_the_background_grid_and_drops_it_when_asked():
  """Warm-up compiles every program of the candidates and of their level grid (the grid queues
  on one background thread; a program needed now takes a queued one over)."""
  started, gate = threading.Event(), threading.Event()

  def held(result):  # Holds the one background thread until the test lets it go.
    def build():
      started.set()
      gate.wait()
      return jax.jit(lambda x: x + result), (1.0,)

    return build

  prog.PROGRAMS.get(('gate', 1), held(1.0), True)
  assert started.wait(30)
  threading.Timer(3.0, gate.set).start()  # The grid queues behind it meanwhile.
  scorer = zs.ZenScorer(
    resolution=16, batch_size=2, families=('idw',), kernel_sizes=(3, 5), weight_capacity=1 << 20
  )
  structures = [  # Stage 2 enters at level 32 and runs at 32, or enters at 128 and runs at 128:
    'SuperConvK3BNRELU(3,16,2,1)SuperResIDWE2K3(16,24,2,16,1)'  # the grid adds 32 -> 128 and
    'SuperResIDWE2K3(24,24,2,16,1)SuperConvK1BNRELU(24,128,1,1)',  # 128 -> 32.
    'SuperConvK3BNRELU(3,16,2,1)SuperResIDWE2K3(16,96,2,48,1)'
    'SuperResIDWE2K5(96,96,2,48,1)SuperConvK1BNRELU(96,128,1,1)',
  ]
  count = scorer.warmup(structures)
  assert count > len(set(scorer.program_keys(structures))) + 2  # + inputs and weights
  futures = prog.PROGRAMS.futures()
  assert count == len(futures)
  assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
  # A background program still queued when a search ends is dropped, not compiled at exit.
  started.clear()
  gate.clear()
  compiled = zs.compiled_programs()
  assert compiled == count
  prog.PROGRAMS.get(('gate', 2), held(2.0), True)
  prog.PROGRAMS.get('queued', lambda: (jax.jit(lambda x: x + 1), (1.0,)), True)
  assert started.wait(30)
  # Asked for is not compiled: the running and the queued program are not counted yet.
  assert len(prog.PROGRAMS) == count + 2 and zs.compiled_programs() == compiled
  assert prog.PROGRAMS.cancel_background() == 1 and 'queued' not in prog.PROGRAMS
  gate.set()
  assert prog.PROGRAMS.get(('gate', 2), None, True).result() is not None
  assert zs.compiled_programs() == compiled + 1


def test_a_restored_scorer_plans_the_programs_the_saved_one_would():
  """Through JSON, as a search checkpoint keeps it: the levels used, the level grid seen and the
  grown buffer sizes come back, so a resumed search asks for the same programs (and finds the
  killed process's in the persistent cache) and completes the same grid."""
  kw = dict(resolution=16, batch_size=2, families=('idw',), kernel_sizes=(3, 5, 7))
  saved = zs.ZenScorer(weight_capacity=1 << 10, max_layers=1, complete_grid=False, **kw)
  structures = random_structures('IDW', 3, seed=5)
  for s in structures:
    saved._plan([prog.network_layout(s)])
  state = json.loads(json.dumps(saved.state()))
  fresh = zs.ZenScorer(weight_capacity=1 << 10, max_layers=1, complete_grid=False, **kw)
  before = fresh.state()
  assert fresh.program_keys(structures[:1]) != saved.program_keys(structures[:1])
  assert fresh.state() == before  # asking plans nothing for real
  fresh.restore(state)
  assert fresh.state() == saved.state()
  assert fresh._seen == saved._seen and fresh.levels_used == saved.levels_used
  assert fresh.program_keys(structures) == saved.program_keys(structures)
