"""benchmarks.report: required keys, ratios computed from given figures, the table, merging.

Pure functions only (no model is built, nothing is timed): runs in well under a second.
"""

import json

import pytest

from benchmarks import report, run, timing


def _side(seconds, items, compile_s=1.0):
  s = timing.summarize(seconds, items)
  s['compile_seconds'] = compile_s
  return s


def _report():
  results = {
    'train': {
      'zennet_m_sa': {
        'batch': 8,
        'resolution': 224,
        'sides': {
          'jax_float32': _side([2.0, 2.0, 1.0, 3.0, 2.0], 8),  # median 2 s -> 4 img/s
          'torch_eager': _side([4.0, 5.0, 4.0, 3.0, 4.0], 8),  # median 4 s -> 2 img/s
        },
      },
      'zennet_r_sa': {
        'batch': 8,
        'resolution': 224,
        'sides': {
          'jax_float32': _side([1.0] * 5, 8),  # 8 img/s
          'jax_bfloat16': _side([0.5] * 5, 8),  # 16 img/s
          'torch_eager': _side([2.0] * 5, 8),  # 4 img/s
          'torch_compile': _side([1.0] * 5, 8),  # 8 img/s
        },
      },
    },
    'infer_b1': {
      'zennet_m_sa': {
        'batch': 1,
        'resolution': 224,
        'sides': {
          'jax_float32': _side([0.04] * 5, 4),  # 10 ms/image
          'torch_eager': _side([0.08] * 5, 4),  # 20 ms/image
        },
      },
    },
    'zen_search': {
      'unit': 'candidates/s',
      'sides': {
        'jax': timing.summarize([10.0] * 5, 30),  # 3 cand/s
        'torch': timing.summarize([10.0] * 5, 10),  # 1 cand/s
      },
    },
    'input_pipeline': {'images_per_s': 123.4},
  }
  return {
    'results': results,
    'settings': {'reps': 5, 'threads': 2},
    'machine': {'cpu_model': 'x', 'cpus_available': 2},
    'device_name': 'CPU x2',
    'loadavg_start': [1.0, 1.0, 1.0],
    'loadavg_end': [2.0, 2.0, 2.0],
    'versions': {'jax': '0'},
    'command': 'python -m benchmarks.run',
  }


def test_summarize_median_min_max_and_rates():
  s = timing.summarize([3.0, 1.0, 2.0, 5.0, 4.0], items=10)
  assert (s['reps'], s['seconds_median'], s['seconds_min'], s['seconds_max']) == (5, 3.0, 1.0, 5.0)
  assert s['rate_median'] == pytest.approx(10 / 3)
  assert s['rate_min'] == pytest.approx(2.0) and s['rate_max'] == pytest.approx(10.0)
  with pytest.raises(ValueError):
    timing.summarize([], 1)


def test_ratios_from_given_figures():
  r = report.compute_ratios(_report()['results'])
  for key in report.REQUIRED_RATIOS:
    assert key in r
  assert r['train_zennet_m_sa'] == pytest.approx(2.0)
  assert r['train_zennet_r_sa'] == pytest.approx(2.0)
  assert r['train_zennet_r_sa_bf16'] == pytest.approx(4.0)
  assert r['train_zennet_r_sa_vs_compile'] == pytest.approx(1.0)
  assert r['infer_b1_zennet_m_sa'] == pytest.approx(2.0)  # 20 ms / 10 ms
  assert r['zen_search'] == pytest.approx(3.0)
  assert 'train_zennet_m_sa_bf16' not in r


def test_missing_figures_give_none_not_errors():
  r = report.compute_ratios(
    {
      'train': {
        'zennet_m_sa': {
          'sides': {
            'jax_float32': _side([1.0] * 5, 8),
            'torch_eager': {'status': 'failed', 'error': 'x'},
          }
        }
      }
    }
  )
  assert r['train_zennet_m_sa'] is None
  assert (
    r['zen_search'] is None and r['train_zennet_r_sa'] is None and r['infer_b1_zennet_m_sa'] is None
  )


def test_markdown_and_json(tmp_path):
  rep = _report()
  rep['ratios'] = report.compute_ratios(rep['results'])
  md = report.to_markdown(rep)
  assert (
    '| ZenNet-M-SA train step, 224px, batch 8 (images/s) | 4 (2.67–8) | — | 2 (1.6–2.67) | — | 2.00x |'
    in md
  )
  assert '| ZenNet-M-SA inference latency, batch 1, 224px (ms/image) | 10.0 ms (10.0–10.0) |' in md
  assert '| Zen-score search (candidates/s) | 3 (3–3) | — | 1 (1–1) | — | 3.00x |' in md
  assert '123' in md and 'load average' in md and 'Command: `python -m benchmarks.run`' in md
  path = tmp_path / 'r.json'
  report.write(rep, str(path))
  data = json.loads(path.read_text())
  assert set(report.REQUIRED_RATIOS) <= set(data['ratios'])
  assert data['ratios']['train_zennet_m_sa'] == pytest.approx(2.0)
  assert (tmp_path / 'r.md').read_text(encoding='utf-8') == md  # UTF-8 in any locale.


def test_any_benchmark_writes_its_json_and_table_beside_it(tmp_path):
  path = tmp_path / 'deep' / 'x.json'  # Folders are made.
  report.write_with_table(str(path), {'a': [1, 2], 'when': 3.5}, '| a |\n|---|', indent=2)
  assert json.loads(path.read_text(encoding='utf-8')) == {'a': [1, 2], 'when': 3.5}
  assert (tmp_path / 'deep' / 'x.md').read_text(encoding='utf-8') == '| a |\n|---|\n'
  assert sorted(p.name for p in (tmp_path / 'deep').iterdir()) == ['x.json', 'x.md']


def test_cli_defaults():
  cfg = run.parse_args(['--quick', '--out', 'x.json'])
  assert (
    cfg.reps == 3
    and cfg.resolution == 64
    and cfg.jax_dtypes == ('float32',)
    and not cfg.torch_compile
  )
  cfg = run.parse_args(['--device', 'gpu'])
  assert (
    cfg.reps >= timing.MIN_REPS and cfg.jax_dtypes == ('float32', 'bfloat16') and cfg.torch_compile
  )
  assert cfg.infer_batch == 256 and cfg.resolution == 224
  with pytest.raises(SystemExit):
    run.parse_args(['--reps', '3'])


def test_alternation_reverses_order_each_rep():
  calls = []
  timing.time_alternating(
    {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, reps=3, warmup=1
  )
  assert calls == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']


def test_merge_reports_takes_each_section_from_the_run_that_measured_it(tmp_path):
  first, second = _report(), _report()
  first['results'] = {'train': first['results']['train']}
  first['skipped'] = ['infer_b1/zennet_m_sa', 'zen_search', 'infer_bn/zennet_m_sa']
  second['results'] = {
    k: v for k, v in second['results'].items() if k in ('infer_b1', 'zen_search')
  }
  second['command'] = 'python -m benchmarks.run --sections infer_b1,zen_search'
  merged = report.merge_reports([first, second])
  assert set(merged['results']) == {'train', 'infer_b1', 'zen_search'}
  assert merged['skipped'] == ['infer_bn/zennet_m_sa']
  assert merged['ratios']['train_zennet_m_sa'] == pytest.approx(2.0)
  assert merged['ratios']['infer_b1_zennet_m_sa'] == pytest.approx(2.0)
  assert merged['ratios']['zen_search'] == pytest.approx(3.0)
  assert [r['command'] for r in merged['runs']] == [first['command'], second['command']]
  paths = []
  for i, rep in enumerate((first, second)):
    paths.append(str(tmp_path / f'r{i}.json'))
    report.write(rep, paths[-1])
  out = report.main(['--merge', *paths, '--out', str(tmp_path / 'm.json')])
  assert json.loads((tmp_path / 'm.json').read_text())['ratios'] == out['ratios']
  assert (tmp_path / 'm.md').read_text(encoding='utf-8') == report.to_markdown(out)
  # The older spelling, `python -m benchmarks.run --merge`, still works.
  again = run.main(['--merge', *paths, '--out', str(tmp_path / 'm2.json')])
  assert json.loads((tmp_path / 'm2.json').read_text()) == json.loads(
    (tmp_path / 'm.json').read_text()
  )
  assert again['ratios'] == out['ratios']
  other = _report()
  other['device_name'] = 'GPU'
  with pytest.raises(ValueError, match='different devices'):
    report.merge_reports([first, other])


def test_markdown_names_later_pass_figures_and_time_limited_search_sides():
  rep = _report()
  side = dict(_side([2.0] * 5, 16), note='later pass', torch_eager_same_pass=3.5)
  rep['results']['train']['zennet_m_sa']['sides']['jax_bfloat16'] = side
  zs = rep['results']['zen_search']
  zs.update(iterations=100, resolution=224, max_seconds_per_side=75)
  zs['sides']['jax'].update(stopped_by_time_limit=True, iterations=12)
  rep['ratios'] = report.compute_ratios(rep['results'])
  md = report.to_markdown(rep)
  assert (
    'Timed in a later pass, after the headline rows: zennet_m_sa: jax_bfloat16 (PyTorch eager in that pass 3.5 images/s).'
    in md
  )
  assert (
    '100 iterations at 224px, compile incl., 1 run; JAX stopped by the 75 s limit at iteration 12)'
    in md
  )
  assert rep['ratios']['train_zennet_m_sa_bf16'] == pytest.approx(4.0)  # 8 img/s against 2
  assert rep['ratios']['zen_search'] == pytest.approx(3.0)


def _size_run(resolution, batch, jax_s, eager_s, cl_s=None, status='ok'):
  """A hand-made `benchmarks.run --sections train` report for one size, as train_sizes reads it."""
  train = {}
  for i, model in enumerate(('zennet_r_sa', 'zennet_m_sa')):
    sides = {
      'jax_float32': _side(jax_s, batch),
      'torch_eager': _side(eager_s, batch),
      'torch_eager_cl': (
        _side(cl_s, batch) if cl_s else {'status': 'crashed', 'error': 'RuntimeError: crashed'}
      ),
    }
    train[model] = {
      'batch': batch,
      'resolution': resolution,
      'sides': sides,
      'loadavg': [1.5 + i, 1.0, 1.0],
    }
  rep = dict(_report(), results={'train': train}, date=f'2026-01-01T00:{resolution}:00+00:00')
  rep['settings'] = {'reps': 5, 'threads': 1, 'conv_impl': 'cpu', 'bn_impl': 'cpu'}
  return {'resolution': resolution, 'batch': batch, 'status': status, 'report': rep}


def test_train_sizes_rows_ratios_and_table(tmp_path):
  from benchmarks import train_sizes

  runs = [
    # 48 px: JAX 8 img/s, eager 4, channels_last 2 -> best PyTorch eager, 2x.
    _size_run(48, 8, [1.0] * 5, [2.0] * 5, [4.0] * 5),
    # 64 px: channels_last crashed -> eager is the only PyTorch figure, 0.5x.
    _size_run(64, 8, [2.0, 2.0, 1.0, 3.0, 2.0], [1.0] * 5),
    {'resolution': 112, 'batch': 8, 'status': 'failed (exit -6)', 'report': None, 'tail': 'x'},
    # Another batch at 48 px: only in the fastest-batch table.
    _size_run(48, 16, [1.0] * 5, [1.0] * 5, [8.0] * 5),
  ]
  rep = train_sizes.combine(
    runs, models=['zennet_r_sa', 'zennet_m_sa'], batch=8, command='python -m benchmarks.train_sizes'
  )
  rows = {(r['model'], r['resolution']): r for r in rep['rows']}
  assert list(rows) == [(m, r) for m in ('zennet_r_sa', 'zennet_m_sa') for r in (48, 64, 112)]
  r48, r64, r112 = (rows['zennet_r_sa', r] for r in (48, 64, 112))
  assert (r48['best_torch'], r48['ratio']) == ('torch_eager', pytest.approx(2.0))
  assert (r64['best_torch'], r64['ratio']) == ('torch_eager', pytest.approx(0.5))
  assert r64['sides']['torch_eager_cl']['status'] == 'crashed'
  assert r64['ratio_min'] == pytest.approx((8 / 3) / 8) and r64['ratio_max'] == pytest.approx(1.0)
  assert r112['ratio'] is None and r112['status'] == 'failed (exit -6)'
  # The load before the second model is the one recorded after the first.
  assert rows['zennet_r_sa', 48]['loadavg_end'] == [1.5, 1.0, 1.0]
  assert rows['zennet_m_sa', 48]['loadavg_start'] == [1.5, 1.0, 1.0]
  assert rows['zennet_m_sa', 48]['loadavg_end'] == [2.5, 1.0, 1.0]
  fast = {(f['model'], f['resolution']): f for f in rep['fastest_batch']}
  f48 = fast['zennet_r_sa', 48]
  assert f48['sides']['jax_float32'] == dict(rate_median=16, rate_min=16, rate_max=16, batch=16)
  assert f48['sides']['torch_eager']['batch'] == 16 and f48['best_torch'] == 'torch_eager'
  assert f48['ratio'] == pytest.approx(1.0)
  assert rep['versions'] == {'jax': '0'} and rep['date'] == runs[0]['report']['date']
  md = train_sizes.to_markdown(rep)
  assert (
    '| ZenNet-R-SA | 48px | 8 | 8 (8–8) | 4 (4–4) | 2 (2–2) | 2.00x (2.00–2.00) | 1.0 → 1.5 |' in md
  )
  assert '| ZenNet-R-SA | 64px | 8 | 4 (2.67–8) | 8 (8–8) | crashed | 0.50x (0.33–1.00) |' in md
  assert '| ZenNet-M-SA | 112px | 8 | failed (exit -6) | — | — | — |' in md
  assert '| ZenNet-R-SA | 48px | 16 (batch 16) | 16 (batch 16) | 2 (batch 8) | 1.00x |' in md
  assert '| ZenNet-R-SA | 64px | 4 (batch 8) | 8 (batch 8) | crashed | 0.50x |' in md
  assert 'Failed runs: 112px batch 8: failed (exit -6).' in md
  assert 'Command: `python -m benchmarks.train_sizes`' in md and 'Versions: jax 0.' in md
  train_sizes.write(rep, str(tmp_path / 's.json'))
  assert json.loads((tmp_path / 's.json').read_text(encoding='utf-8'))['rows'][0]['ratio'] == 2.0
  assert (tmp_path / 's.md').read_text(encoding='utf-8') == md


def test_train_sizes_cli():
  from benchmarks import train_sizes

  a = train_sizes.parse_args([])
  assert (a.resolutions, a.models, a.batch, a.reps, a.threads) == (
    [48, 64, 112, 224],
    ['zennet_r_sa', 'zennet_m_sa'],
    64,
    7,
    1,
  )
  assert a.batches == [64] and a.out.endswith('train_sizes_cpu.json')
  a = train_sizes.parse_args(['--fastest_batch', '--batch', '16'])
  assert a.batches == [16, 32, 64, 128, 256]
  assert '--reps=7' in train_sizes.run_args(a, 48, 16, 'x.json')
  with pytest.raises(SystemExit):
    train_sizes.parse_args(['--reps', '1'])
  with pytest.raises(SystemExit):
    train_sizes.parse_args(['--models', 'resnet'])


@pytest.mark.slow
def test_train_sizes_sweep_smoke(tmp_path):
  """One tiny size in its own `benchmarks.run` process (about 45 s on one core); the merge of
  several sizes is test_train_sizes_rows_ratios_and_table's."""
  from benchmarks import train_sizes

  out = tmp_path / 'sizes.json'
  args = '--quick --resolutions 16 --batch 2 --reps 1 --models zennet_r_sa --out'.split()
  train_sizes.main([*args, str(out)])
  rep = json.loads(out.read_text(encoding='utf-8'))
  assert [(r['model'], r['resolution'], r['batch']) for r in rep['rows']] == [
    ('zennet_r_sa', 16, 2)
  ]
  assert [r['status'] for r in rep['runs']] == ['ok']
  md = (tmp_path / 'sizes.md').read_text(encoding='utf-8')
  for row in rep['rows']:
    rates = {s: v['rate_median'] for s, v in row['sides'].items() if 'rate_median' in v}
    assert rates['jax_float32'] > 0 and rates['torch_eager'] > 0
    best = max(v for s, v in rates.items() if s != 'jax_float32')
    assert row['ratio'] == pytest.approx(rates['jax_float32'] / best)
    assert f'| ZenNet-R-SA | {row["resolution"]}px | 2 |' in md
  assert rep['settings']['threads'] == 1 and rep['versions']['jax']
  assert rep['command'].startswith('python -m benchmarks.train_sizes --quick')


def test_loader_compare_reads_phase_ends_from_log_stamps(tmp_path):
  import datetime

  from benchmarks import loader_compare

  start = datetime.datetime(2026, 12, 7, 5, 53, 3).timestamp()
  log = tmp_path / 'log.txt'
  log.write_text(
    'I1207 05:53:33.500000 1 main.py:101] JAX process 0 of 1\n'
    "I1207 05:54:57.000000 1 event_writer.py:64] [Hyperparameters] {'seed': 0}\n"
    'I1207 05:57:13.250000 1 event_writer.py:44] [1] train/accuracy=0.1, train/loss=2.3\n'
    'I1207 05:57:16.000000 1 event_writer.py:44] [2] train/accuracy=0.1, train/loss=2.2\n'
  )
  got = loader_compare.phase_times(str(log), start)
  assert got == {
    'start_to_first_log_s': 30.5,
    'start_to_loop_s': 114.0,
    'start_to_first_step_s': 250.25,
  }
