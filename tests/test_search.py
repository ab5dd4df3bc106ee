"""The evolutionary search: outputs, budgets, bad configs, resume, damaged state, the workdir lock,
and a real SIGKILL."""

import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import search_m, search_r
from zenfer_jax.model import counters
from zenfer_jax.model.structure import resolve
from zenfer_jax.nas import evolution
from zenfer_jax.nas.population import (
  BEST_FILE,
  LOG_FILE,
  PREVIOUS_STATE_FILE,
  PROGRESS_FILE,
  STATE_FILE,
  SUMMARY_FILE,
  load_state,
)
from zenfer_jax.rundir import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
# Another process that holds a directory's lock, as a running training run or search would.
HOLDER = (
  'import sys, time\n'
  'from zenfer_jax.rundir import workdir_lock\n'
  'workdir_lock.acquire(sys.argv[1], sys.argv[2])\n'
  'print("held", flush=True)\n'
  'time.sleep(120)\n'
)


def _config(base=search_m, **search):
  c = base.get_config()
  c.search.compilation_cache_dir = ''
  for k, v in search.items():
    setattr(c.search, k, v)
  return c


def _never(structure, seed):
  raise AssertionError('nothing may be scored for a bad config')


def _log(workdir):
  return [json.loads(line) for line in (pathlib.Path(workdir) / LOG_FILE).read_text().splitlines()]


TIMING_KEYS = ('score_s', 'elapsed_s', 'compiled_programs')  # differ between processes


def _untimed_log(workdir, also=()):
  skip = TIMING_KEYS + tuple(also)
  return [{k: v for k, v in rec.items() if k not in skip} for rec in _log(workdir)]


@pytest.fixture
def held_workdir(tmp_path):
  """(tmp_path / 'held', the process holding its lock as a training run), for the test."""
  workdir = tmp_path / 'held'
  proc = subprocess.Popen(
    [sys.executable, '-c', HOLDER, str(workdir), 'training run'],
    cwd=REPO,
    env=ENV,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert proc.stdout.readline().strip() == 'held'
    yield workdir, proc
  finally:
    proc.kill()
    proc.wait()


def test_reference_configs():
  m, r = search_m.get_config(), search_r.get_config()
  assert (
    m.search.space,
    m.search.budget_flops,
    m.search.budget_model_size,
    m.search.max_layers,
  ) == ('IDW', 400e6, 1e6, 14)
  assert (
    r.search.space,
    r.search.budget_flops,
    r.search.budget_model_size,
    r.search.max_layers,
  ) == ('XXBL', 400e6, None, 10)
  for c in (m, r):
    assert (
      c.search.population_size,
      c.search.max_iterations,
      c.search.resolution,
      c.search.batch_size,
    ) == (512, 480_000, 224, 16)
    assert (
      c.search.budget_latency is None
      and c.search.efficient_score is None
      and c.search.proxy == 'zen'
    )
    evolution.validate_config(c)
  assert str(resolve(m.search.init_structure)).startswith(
    'SuperConvK3BNRELU(3,8,2,1)SuperResIDWE6K3(8,32,2,8,1)'
  )


@pytest.mark.parametrize(
  'change,message',
  [
    (dict(space='IDWX'), r"space='IDWX' is not a search space; set it to one of \['IDW', 'XXBL'\]"),
    (
      dict(budget_flops=1e8),
      r"budget_flops=1e\+08 is below the initial structure's 1.6036\de\+08 FLOPs",
    ),
    (dict(budget_model_size=1e4), r"budget_model_size=10000 is below the initial structure's"),
    (dict(max_layers=3), r"max_layers=3 is below the initial structure's 6 layers"),
    (
      dict(init_structure='SuperConvK3BNRELU(3,8,2,1)SuperResIDWE6K3(16,32,2,8,1)'),
      r'init_structure does not parse',
    ),
    (dict(proxy='zenn'), r"proxy='zenn' is not a proxy"),
    (dict(population_size=0), r'population_size must be a positive integer'),
    # init_m has 5 stride-2 layers: below 32 px its deepest maps have no pixel left.
    (dict(resolution=1), r'resolution 1 is below the 32 pixels this structure needs'),
    (dict(resolution=16), r'resolution 16 is below the 32 pixels .* use at least 32'),
  ],
)
def test_bad_config_fails_before_scoring(tmp_path, change, message):
  with pytest.raises(evolution.SearchConfigError, match=message):
    evolution.run_search(_config(**change), str(tmp_path), scorer=_never, progress=False)
  assert not os.listdir(tmp_path)


def test_search_with_zen_score(tmp_path):
  """A real, tiny search: every output, budgets honoured, the result feeds a model."""
  c = _config(
    resolution=32,
    batch_size=4,
    population_size=6,
    max_iterations=16,
    checkpoint_every=5,
    budget_flops=9.0e6,  # init_m: 3.3e6 at 32 px
  )
  state = evolution.run_search(c, str(tmp_path), progress=False)
  log = _log(tmp_path)
  assert len(log) == state.num_scored >= 8
  for rec in log:
    s = resolve(rec['structure'])
    assert (
      rec['flops'] == counters.flops(s, 32) <= 9.0e6
      and rec['model_size'] <= 1e6
      and rec['layers'] <= 14
    )
    assert np.isfinite(rec['score']) and 2 < rec['score'] < 60
  assert [r['iteration'] for r in log] == sorted(r['iteration'] for r in log)
  best = (tmp_path / BEST_FILE).read_text().strip()
  assert best == max(state.population, key=lambda p: p[1])[0]
  assert len(state.population) <= 7  # trimmed to 6 at the start of each iteration
  assert resolve(str(tmp_path / BEST_FILE)) == resolve(
    best
  )  # --config.model.structure=DIR/best_structure.txt
  saved = load_state(str(tmp_path))
  assert saved.next_iteration == 16 and saved.population == state.population
  # Distinct structures got distinct scores: the score follows the structure, not a constant.
  by_structure = {r['structure']: r['score'] for r in log}
  assert len(set(by_structure.values())) == len(by_structure) > 4
  # What a user sees: cumulative programs and wall time on every row, a summary, a plot.
  programs = [r['compiled_programs'] for r in log]
  elapsed = [r['elapsed_s'] for r in log]
  assert programs == sorted(programs) and 3 <= programs[-1] <= 40
  assert elapsed == sorted(elapsed) and elapsed[-1] > 0
  summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
  assert summary['candidates_scored'] == state.num_scored == len(log)
  assert summary['compiled_programs'] == programs[-1] and summary['compile_s'] > 0
  assert 0 < summary['scoring_s'] <= summary['elapsed_s']
  assert summary['candidates_per_s'] == pytest.approx(len(log) / summary['elapsed_s'])
  assert (summary['best_structure'], summary['best_score']) == max(
    state.population, key=lambda p: p[1]
  )
  png = (tmp_path / PROGRESS_FILE).read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 5000
  assert [p[0] for p in saved.progress] == sorted(p[0] for p in saved.progress)
  assert saved.progress[-1][2] == summary['best_score']


def _fast_config(**search):
  # 'random' is the reference's Random proxy: the search machinery without the scoring cost.
  base = dict(proxy='random', population_size=20, max_iterations=400, checkpoint_every=25)
  base.update(search)
  return _config(**base)


def test_resume_retraces_the_same_search(tmp_path):
  c = _fast_config()
  whole = evolution.run_search(c, str(tmp_path / 'a'), progress=False)
  evolution.run_search(c, str(tmp_path / 'b'), progress=False, stop_after=137)
  assert load_state(str(tmp_path / 'b')).next_iteration == 137
  # A stray half-written line after the checkpoint must be cut away, not kept.
  with open(tmp_path / 'b' / LOG_FILE, 'a') as f:
    f.write('{"iteration": 9999, "structure": "Sup')
  resumed = evolution.run_search(c, str(tmp_path / 'b'), progress=False)
  assert resumed.population == whole.population
  assert _untimed_log(tmp_path / 'a') == _untimed_log(tmp_path / 'b')
  assert (tmp_path / 'a' / BEST_FILE).read_text() == (tmp_path / 'b' / BEST_FILE).read_text()
  # Finished: rerunning does nothing; other trajectory settings are refused.
  again = evolution.run_search(c, str(tmp_path / 'b'), scorer=_never, progress=False)
  assert again.population == whole.population
  with pytest.raises(evolution.SearchConfigError, match='population_size: 20 there, 21 now'):
    evolution.run_search(
      _fast_config(population_size=21), str(tmp_path / 'b'), scorer=_never, progress=False
    )


def test_a_search_refuses_a_workdir_in_use_and_holds_its_own(tmp_path, held_workdir):
  workdir, proc = held_workdir
  t0 = time.time()
  with pytest.raises(
    workdir_lock.WorkdirLocked, match=rf'in use by another training run \(pid {proc.pid} on host'
  ):
    evolution.run_search(_fast_config(), str(workdir), scorer=_never, progress=False)
  assert time.time() - t0 < 2  # At once, not after a wait.
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]  # Nothing of the search's.
  # Its own workdir: held (as a search, by this process) while it runs, released at the end.
  own, holders = tmp_path / 'own', []

  def scorer(structure, seed):
    holders.append(workdir_lock.holder(own))
    return (seed % 1000) / 1000

  evolution.run_search(_fast_config(max_iterations=30), str(own), scorer=scorer, progress=False)
  assert holders and all(h['what'] == 'search' and h['pid'] == os.getpid() for h in holders)
  assert workdir_lock.holder(own) is None and not (own / workdir_lock.LOCK_NAME).exists()


def test_a_search_checks_its_config_once(tmp_path, monkeypatch):
  # The command checks the config before its log file opens and hands on what it found.
  checks, real = [], evolution.validate_config
  monkeypatch.setattr(evolution, 'validate_config', lambda c: checks.append(c) or real(c))
  c = _fast_config(max_iterations=30)
  setup = evolution.validate_config(c)
  evolution.run_search(c, str(tmp_path / 'a'), progress=False, setup=setup)
  evolution.warmup_structures(c, 4, setup)
  assert len(checks) == 1
  evolution.run_search(c, str(tmp_path / 'b'), progress=False)  # A library call checks it itself.
  assert len(checks) == 2


def test_files_are_created_with_the_umask(tmp_path):
  old = os.umask(0o027)
  try:  # Checkpoints at 25, 50 and 60: a previous state file too.
    evolution.run_search(_fast_config(max_iterations=60), str(tmp_path), progress=False)
  finally:
    os.umask(old)
  for name in (STATE_FILE, PREVIOUS_STATE_FILE, SUMMARY_FILE, BEST_FILE, PROGRESS_FILE, LOG_FILE):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # No temporaries.


def _damage(path: pathlib.Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # A truncated copy, as a full disk leaves it.


def test_damaged_latest_state_falls_back_to_the_previous_one(tmp_path, caplog):
  c = _fast_config(max_iterations=160, checkpoint_every=40)
  whole = evolution.run_search(c, str(tmp_path / 'a'), progress=False)
  work = tmp_path / 'b'
  evolution.run_search(c, str(work), progress=False, stop_after=130)
  previous = json.loads((work / PREVIOUS_STATE_FILE).read_text())
  assert (previous['next_iteration'], load_state(str(work)).next_iteration) == (120, 130)
  _damage(work / STATE_FILE)
  with caplog.at_level(logging.WARNING):
    resumed = evolution.run_search(c, str(work), progress=False)
  assert f'{work / STATE_FILE} is damaged (not whole JSON' in caplog.text
  assert f'resuming from the previous checkpoint {work / PREVIOUS_STATE_FILE} (iteration 120' in (
    caplog.text
  )
  # Rows logged after iteration 120 were cut away and written again, once.
  assert resumed.population == whole.population
  assert _untimed_log(tmp_path / 'a') == _untimed_log(work)
  # The damaged file was not rotated over the intact previous one.
  assert json.loads((work / PREVIOUS_STATE_FILE).read_text())['next_iteration'] == 120
  assert load_state(str(work)).next_iteration == 160
  # Neither checkpoint intact: refused, naming both, every time, touching nothing.
  _damage(work / STATE_FILE)
  (work / PREVIOUS_STATE_FILE).write_text('{"version": 1, "next_iteration": 3}')
  log_before = (work / LOG_FILE).read_bytes()
  for _ in range(2):
    with pytest.raises(evolution.SearchStateError) as e:
      evolution.run_search(c, str(work), scorer=_never, progress=False)
    message = str(e.value)
    assert f'{work / STATE_FILE} is damaged (not whole JSON' in message
    assert f'{work / PREVIOUS_STATE_FILE} is damaged (not a search state' in message
    assert 'Start the search in a new --workdir' in message
  assert (work / LOG_FILE).read_bytes() == log_before


@pytest.mark.parametrize('loss', ['deleted', 'cut'])
def test_a_lost_candidate_log_is_continued_and_resumes_again(tmp_path, caplog, loss):
  """The checkpoint holds the search; a log that lost rows is continued, not refused."""
  c = _fast_config(max_iterations=160, checkpoint_every=40)
  uninterrupted = evolution.run_search(c, str(tmp_path / 'a'), progress=False)
  whole = _untimed_log(tmp_path / 'a', also=['cached'])
  work = tmp_path / 'b'
  evolution.run_search(c, str(work), progress=False, stop_after=80)
  kept = []
  if loss == 'deleted':
    (work / LOG_FILE).unlink()
  else:
    _damage(work / LOG_FILE)
    data = (work / LOG_FILE).read_bytes()
    kept = whole[: data.count(b'\n')]  # Its whole lines; the last one is cut in the middle.
    assert not data.endswith(b'\n')
  with caplog.at_level(logging.WARNING):
    evolution.run_search(c, str(work), progress=False, stop_after=40)
  words = 'it was deleted' if loss == 'deleted' else 'it was cut short or edited'
  assert words in caplog.text and 'The search continues from the checkpoint' in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):  # The second resume finds log and state in agreement.
    resumed = evolution.run_search(c, str(work), progress=False)
  assert 'vouches for' not in caplog.text
  assert load_state(str(work)).log_bytes == (work / LOG_FILE).stat().st_size
  assert resumed.population == uninterrupted.population
  # What is left of the log, then every row from the checkpoint on, as the whole search wrote them.
  assert _untimed_log(work, also=['cached']) == kept + [r for r in whole if r['iteration'] >= 80]


@pytest.mark.parametrize('per_step', [1, 16])
def test_sigkill_loses_at_most_one_checkpoint_interval(tmp_path, per_step):
  """Kill the CLI with SIGKILL mid-search, resume, and get exactly the uninterrupted result."""
  every, total = 40, 3000
  args = [
    sys.executable,
    '-m',
    'zenfer_jax.nas.search',
    '--config=configs/search_m.py',
    f'--workdir={tmp_path / "k"}',
    '--config.search.proxy=random',
    '--config.search.population_size=20',
    f'--config.search.max_iterations={total}',
    f'--config.search.checkpoint_every={every}',
    f'--config.search.candidates_per_step={per_step}',
    '--config.search.compilation_cache_dir=',
  ]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  state_file = tmp_path / 'k' / STATE_FILE
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      if state_file.exists() and json.loads(state_file.read_text())['next_iteration'] >= 3 * every:
        break
      time.sleep(0.05)
    time.sleep(np.random.default_rng().uniform(0, 0.5))
    assert proc.poll() is None, (
      'the search finished before it could be killed; raise max_iterations'
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  logged = (tmp_path / 'k' / LOG_FILE).read_text().splitlines()
  reached = max(json.loads(line)['iteration'] for line in logged if line.endswith('}'))
  saved = load_state(str(tmp_path / 'k'))
  # Checkpoints fall on step ends; a step of 16 may carry one past a multiple of 40.
  assert saved.next_iteration % per_step == 0 and saved.next_iteration % every < per_step
  assert reached + 1 - saved.next_iteration < every + per_step
  assert saved.next_iteration < total

  c = _fast_config(max_iterations=total, checkpoint_every=every, candidates_per_step=per_step)
  resumed = evolution.run_search(c, str(tmp_path / 'k'), progress=False)
  whole = evolution.run_search(c, str(tmp_path / 'w'), progress=False)
  assert resumed.population == whole.population
  assert _untimed_log(tmp_path / 'k') == _untimed_log(tmp_path / 'w')
  assert (tmp_path / 'k' / BEST_FILE).read_text() == (tmp_path / 'w' / BEST_FILE).read_text()
  # Both step sizes find structures within every budget.
  for rec in _log(tmp_path / 'w'):
    assert rec['flops'] <= 400e6 and rec['model_size'] <= 1e6 and rec['layers'] <= 14


def test_candidates_per_step_draws_from_the_step_population(tmp_path):
  """A step of C proposes C candidates from the same population, scores them in one call,
  then appends them in order; any C is deterministic."""
  calls = []

  class Batched:
    def __call__(self, structure, seed):
      raise AssertionError('a batched scorer is called through score_many')

    def score_many(self, structures, seeds):
      calls.append(len(structures))
      return [(seed % 1000) / 1000 for seed in seeds]

  c = _fast_config(max_iterations=96, candidates_per_step=8, checkpoint_every=40)
  a = evolution.run_search(c, str(tmp_path / 'a'), scorer=Batched(), progress=False)
  assert 1 < max(calls) <= 8 and len(calls) <= 12  # at most one call per step (96 / 8)
  b = evolution.run_search(c, str(tmp_path / 'b'), scorer=Batched(), progress=False)
  assert a.population == b.population
  assert _untimed_log(tmp_path / 'a') == _untimed_log(tmp_path / 'b')
  # stop_after rounds up to whole steps, so a resumed search takes the same steps.
  cut = evolution.run_search(c, str(tmp_path / 'c'), scorer=Batched(), progress=False, stop_after=5)
  assert cut.next_iteration == 8
  resumed = evolution.run_search(c, str(tmp_path / 'c'), scorer=Batched(), progress=False)
  assert resumed.population == a.population
  # Another step size is another (deterministic) search from the same seed.
  c1 = _fast_config(max_iterations=96, candidates_per_step=1, checkpoint_every=40)
  one = evolution.run_search(c1, str(tmp_path / 'd'), scorer=Batched(), progress=False)
  assert one.population != a.population
  with pytest.raises(evolution.SearchConfigError, match='candidates_per_step: 8 there, 1 now'):
    evolution.run_search(c1, str(tmp_path / 'a'), scorer=_never, progress=False)


def test_zen_search_in_batches_is_deterministic(tmp_path):
  """The JAX Zen-score, 4 candidates per call: the same search twice, and resumed."""
  c = _config(
    resolution=32,
    batch_size=2,
    population_size=6,
    max_iterations=16,
    checkpoint_every=8,
    candidates_per_step=4,
    budget_flops=9.0e6,
  )
  a = evolution.run_search(c, str(tmp_path / 'a'), progress=False)
  evolution.run_search(c, str(tmp_path / 'b'), progress=False, stop_after=8)
  b = evolution.run_search(c, str(tmp_path / 'b'), progress=False)
  assert a.population == b.population and a.num_scored >= 8
  assert _untimed_log(tmp_path / 'a') == _untimed_log(tmp_path / 'b')


def _one_line(proc, *words):
  """stderr is one `error:` line holding `words`, with exit status 2 and no traceback."""
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: ') and 'Traceback' not in proc.stderr
  for word in words:
    assert word in lines[0], (word, lines[0])


def test_cli_errors_lock_progress_and_compilation_cache(tmp_path, held_workdir):
  env = dict(ENV)
  env.pop('ZENFER_TRACEBACK', None)
  work, cache = tmp_path / 'work', tmp_path / 'cache'
  base = [sys.executable, '-m', 'zenfer_jax.nas.search', '--config=configs/search_r.py']

  def run(*args, workdir=work):
    return subprocess.run(
      base + [f'--workdir={workdir}', *args], cwd=REPO, env=env, capture_output=True, text=True
    )

  # A user error is one line and exit status 2, before the workdir is created.
  _one_line(
    run('--config.search.resolution=1'),
    'config.search.resolution 1 is below the 8 pixels this structure needs',
  )
  assert not work.exists()
  # --verbosity=1 adds the traceback, for a bug report; the error is still the last line.
  nothing = run('--config.search.max_iterations=0', '--verbosity=1')
  assert nothing.returncode == 2 and 'Traceback (most recent call last)' in nothing.stderr
  assert (
    nothing.stderr.rstrip()
    .splitlines()[-1]
    .startswith('error: config.search.max_iterations=0: nothing to do')
  )
  # A workdir another run holds: refused at once, naming it, with nothing written there.
  held, holder = held_workdir
  _one_line(
    run('--config.search.max_iterations=6', workdir=held),
    f'{held} is in use by another training run (pid {holder.pid} on host',
  )
  assert os.listdir(held) == [workdir_lock.LOCK_NAME]
  tiny = [
    '--config.search.max_iterations=6',
    '--config.search.resolution=16',
    '--config.search.batch_size=2',
    '--config.search.budget_flops=1e7',
    f'--config.search.compilation_cache_dir={cache}',
  ]
  # Warm-up: compiles the first candidates' programs into the cache, scores nothing.
  warm = run(*tiny, '--config.search.warmup_only=True', '--config.search.warmup_candidates=6')
  assert warm.returncode == 0, warm.stderr[-3000:]
  m = re.search(
    r'warm-up: (\d+) programs for the first (\d+) candidates .* in [\d.]+ s', warm.stdout
  )
  assert m and 3 <= int(m[1]) <= 30 and 1 <= int(m[2]) <= 6, warm.stdout
  assert not work.exists() or not os.listdir(work)
  cached = len([p for p in cache.rglob('*') if p.is_file()])
  assert cached >= int(m[1])
  ok = run(*tiny)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'cand_per_s=' in ok.stderr and 'best=' in ok.stderr
  best = (work / BEST_FILE).read_text().strip()
  assert f'after 6 iterations: {best}' in ok.stdout
  log = _log(work)
  assert max(r['score'] for r in log) == max(r['score'] for r in log if r['structure'] == best)
  assert all(r['layers'] <= 10 and r['flops'] <= 1e7 for r in log)
  # The persistent compilation cache keeps every program (zero minimum compile time).
  assert len([p for p in cache.rglob('*') if p.is_file()]) >= cached
  # Every log line is in WORKDIR/log.txt; the lock went with the process.
  assert 'Searching on' in (work / 'log.txt').read_text()
  assert not (work / workdir_lock.LOCK_NAME).exists()


def test_search_r_loads_by_path_outside_the_repository(tmp_path):
  """As --config=/path/to/configs/search_r.py loads it, from a directory that is not the repo."""
  load = (
    'import sys\n'
    'from absl import flags\n'
    'from ml_collections import config_flags\n'
    "config = config_flags.DEFINE_config_file('config')\n"
    "flags.FLAGS(['search', '--config=' + sys.argv[1]])\n"
    'print(config.value.search.space, config.value.search.population_size)\n'
  )
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  out = subprocess.run(
    [sys.executable, '-c', load, str(REPO / 'configs' / 'search_r.py')],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]  # Was: No module named 'configs'.
  assert out.stdout.split() == ['XXBL', '512']


def test_efficient_score_filter(tmp_path):
  from zenfer_jax.nas.space import efficient_score

  kw = dict(proxy='random', population_size=20, max_iterations=300, checkpoint_every=50)
  state = evolution.run_search(
    _config(search_r, efficient_score=0.25, **kw), str(tmp_path / 'f'), progress=False
  )
  log = _log(tmp_path / 'f')
  assert state.num_scored == len(log) > 10
  for rec in log:
    assert rec['efficient_score'] <= 0.25
    assert rec['efficient_score'] == pytest.approx(efficient_score(resolve(rec['structure']), 224))
  # Without the filter about half of these candidates score above 0.25.
  unfiltered = evolution.run_search(_config(search_r, **kw), str(tmp_path / 'u'), progress=False)
  assert unfiltered.num_scored > state.num_scored + 10


def test_latency_budget(tmp_path):
  seconds = evolution.measure_latency(
    resolve(search_m.get_config().search.init_structure),
    batch_size=2,
    resolution=32,
    num_classes=7,
    repeats=1,
  )
  assert 0 < seconds < 5
  tiny = dict(resolution=32, batch_size=2, budget_flops=None, max_iterations=2)
  with pytest.raises(
    evolution.SearchConfigError, match=r"budget_latency=1e-09 s is below the initial structure's"
  ):
    evolution.run_search(
      _fast_config(budget_latency=1e-9, **tiny), str(tmp_path), scorer=_never, progress=False
    )
  state = evolution.run_search(
    _fast_config(budget_latency=60.0, **tiny), str(tmp_path), progress=False
  )
  log = _log(tmp_path)
  assert state.next_iteration == 2 and len(log) == state.num_scored >= 1
  assert all(0 < rec['latency_s'] < 60 for rec in log)


def test_time_limit_stops_with_a_checkpoint_and_resumes_the_same_search(tmp_path):
  import time
  import zlib

  def slow(structure, seed):  # deterministic in the structure, 20 ms per candidate
    time.sleep(0.02)
    return zlib.crc32(str(structure).encode()) / 2**32

  c = _fast_config(max_iterations=120, checkpoint_every=1000)
  whole = evolution.run_search(c, str(tmp_path / 'a'), scorer=slow, progress=False)
  t0 = time.perf_counter()
  cut = evolution.run_search(c, str(tmp_path / 'b'), scorer=slow, progress=False, max_seconds=0.3)
  assert time.perf_counter() - t0 < 0.3 + 2.5  # the stop writes a checkpoint, a summary, a plot
  assert 0 < cut.next_iteration < 120
  # The stop wrote a checkpoint even though checkpoint_every was not reached.
  assert load_state(str(tmp_path / 'b')).next_iteration == cut.next_iteration
  resumed = evolution.run_search(c, str(tmp_path / 'b'), scorer=slow, progress=False)
  assert resumed.next_iteration == 120 and resumed.population == whole.population
  with pytest.raises(evolution.SearchConfigError, match='max_seconds'):
    evolution.run_search(c, str(tmp_path / 'c'), scorer=slow, progress=False, max_seconds=0)


def test_search_throughput_flags_parse_and_round_trip(tmp_path, capsys):
  from benchmarks import search_throughput as bench

  args = bench.parse_args(
    ['--batch_size=8', '--candidates_per_step', '4', '--torch_device=cuda', '--max_seconds=5']
  )
  assert (args.batch_size, args.candidates_per_step, args.torch_device, args.max_seconds) == (
    8,
    4,
    'cuda',
    5.0,
  )
  # The command line each side runs in its own process parses back to the same settings.
  child = bench.parse_args(bench.child_command('jax_warm', args, str(tmp_path))[3:])
  assert (child.child, child.cache) == ('jax', str(tmp_path))
  for key in ('iterations', 'resolution', 'batch_size', 'torch_device', 'candidates_per_step'):
    assert getattr(child, key) == getattr(args, key), key
  assert child.max_seconds == args.max_seconds
  with pytest.raises(SystemExit) as e:
    bench.parse_args(['--batch_size=0'])
  assert e.value.code == 2 and '0 is not a positive integer' in capsys.readouterr().err


def test_progress_plot_is_redrawn_at_most_once_a_minute_and_at_the_end(tmp_path, monkeypatch):
  drawn = []
  real = evolution.plot_progress
  monkeypatch.setattr(
    evolution,
    'plot_progress',
    lambda state, path: drawn.append(state.next_iteration) or real(state, path),
  )
  c = _fast_config(max_iterations=60, checkpoint_every=10)
  evolution.run_search(c, str(tmp_path / 'slow'), progress=False)
  assert drawn == [10, 60]  # The first checkpoint, then nothing within a minute until the end.
  assert load_state(str(tmp_path / 'slow')).next_iteration == 60  # Every checkpoint was saved.
  drawn.clear()
  monkeypatch.setattr(evolution, 'PLOT_EVERY_S', 0.0)
  evolution.run_search(c, str(tmp_path / 'every'), progress=False)
  assert drawn == [10, 20, 30, 40, 50, 60]
  png = (tmp_path / 'every' / PROGRESS_FILE).read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('per_step', [1, 4])
def test_warmup_structures_are_the_searchs_first_candidates(tmp_path, per_step):
  c = _fast_config(population_size=512, max_iterations=60, candidates_per_step=per_step)
  evolution.run_search(c, str(tmp_path / 's'), progress=False)
  searched = list(dict.fromkeys(rec['structure'] for rec in _log(tmp_path / 's')))
  warm = [str(s) for s in evolution.warmup_structures(c, 30)]
  assert len(searched) >= 30 and warm == searched[:30]
