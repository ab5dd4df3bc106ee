"""CPU train step by input size: JAX fp32 against PyTorch eager (NCHW and channels_last).

  python -m benchmarks.train_sizes                                   # 48, 64, 112, 224 px, batch 64
  python -m benchmarks.train_sizes --fastest_batch 32,64,128,256     # also each side's best batch
  python -m benchmarks.train_sizes --quick --resolutions 16,24 --batch 2 --reps 1   # smoke run

The measurement is `benchmarks.run`'s train section, unchanged: the full training step of
both sides on the same initial weights and inputs, alternating rep by rep, compile and
warm-up outside the figures, medians with min and max, both frameworks pinned to the same
--threads CPUs (default 1: the machine is shared, see docs/performance.md). Each (resolution, batch)
is one `python -m benchmarks.run --sections train ...` in a fresh process, so compiled
programs, thread pools and allocator state of one size cannot help or hurt the next.

Writes one JSON (--out, default benchmarks/results/train_sizes_cpu.json: every run's own
report under `runs`, one row per (model, resolution) under `rows`) and the Markdown table
beside it (.md), and prints the table. A run that fails (a crash, a timeout, PyTorch's
channels_last heap corruption, which `benchmarks.run` catches in a probe process and reports
as 'crashed') is recorded in its rows and the sweep goes on.

Ratios are JAX fp32 rate / the faster PyTorch layout's rate (medians): above 1, JAX is faster.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks import report as report_lib
from benchmarks import timing
from benchmarks.report import MODELS
from zenfer_jax import atomic_write, cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_SIDE = 'jax_float32'
TORCH_SIDES = ('torch_eager', 'torch_eager_cl')
SIDES = (JAX_SIDE, *TORCH_SIDES)
SIDE_NAMES = {
  'jax_float32': 'JAX fp32',
  'torch_eager': 'PyTorch eager',
  'torch_eager_cl': 'PyTorch eager, channels_last',
}
DEFAULT_FASTEST_BATCHES = '32,64,128,256'


def _log(msg: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


def _int_list(text: str) -> list[int]:
  values = [cli.positive_int(t) for t in text.split(',') if t.strip()]
  if not values:
    raise ValueError(f'{text!r} names no value')
  return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None = None):
  p = cli.ArgumentParser(
    prog='python -m benchmarks.train_sizes', description=__doc__.split('\n')[0]
  )
  p.add_argument('--resolutions', type=_int_list, default=[48, 64, 112, 224])
  p.add_argument(
    '--models', default='zennet_r_sa,zennet_m_sa', help=f'comma list of {tuple(MODELS)}'
  )
  p.add_argument('--batch', type=cli.positive_int, default=64, help='the batch of the main table')
  p.add_argument(
    '--fastest_batch',
    type=_int_list,
    nargs='?',
    const=_int_list(DEFAULT_FASTEST_BATCHES),
    default=None,
    help=f'also time these batches (alone: {DEFAULT_FASTEST_BATCHES}) and report each side '
    'at its fastest one',
  )
  p.add_argument('--reps', type=cli.positive_int, default=7)
  p.add_argument(
    '--threads', type=cli.positive_int, default=1, help='CPU threads per framework (both sides)'
  )
  p.add_argument(
    '--quick', action='store_true', help=f'allow --reps below {timing.MIN_REPS} (smoke runs only)'
  )
  p.add_argument('--timeout_s', type=cli.positive_float, default=3600, help='per benchmarks.run')
  p.add_argument('--out', default=os.path.join('benchmarks', 'results', 'train_sizes_cpu.json'))
  a = p.parse_args(argv)
  a.models = [m for m in a.models.split(',') if m]
  for m in a.models:
    if m not in MODELS:
      p.error(f'unknown model {m!r}')
  if not a.models:
    p.error('--models names no model')
  if a.reps < timing.MIN_REPS and not a.quick:
    p.error(f'--reps must be at least {timing.MIN_REPS} (medians of >= 5 repetitions) or --quick')
  a.batches = list(dict.fromkeys([a.batch, *(a.fastest_batch or [])]))
  return a


def run_args(a, resolution: int, batch: int, out: str) -> list[str]:
  """`benchmarks.run`'s flags for one (resolution, batch): its train section only, on CPU."""
  args = [
    '--device=cpu',
    '--sections=train',
    f'--models={",".join(a.models)}',
    f'--resolution={resolution}',
    f'--train_batch={batch}',
    f'--reps={a.reps}',
    f'--threads={a.threads}',
    '--torch_channels_last=on',
    '--torch_compile=off',
    f'--out={out}',
  ]
  return ['--quick', *args] if a.quick else args


def run_one(args: list[str], timeout_s: float) -> tuple[int | str, str]:
  """Runs `python -m benchmarks.run ARGS`, its output passed on as it comes; (exit status, tail).

  Its own session, so a timeout also ends the probe process `benchmarks.run` may have started.
  """
  cmd = [sys.executable, '-m', 'benchmarks.run', *args]
  p = subprocess.Popen(
    cmd,
    cwd=_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  timed_out = threading.Event()

  def kill():
    timed_out.set()
    try:
      os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  timer = threading.Timer(timeout_s, kill)
  timer.start()
  tail: collections.deque[str] = collections.deque(maxlen=15)
  try:
    for line in p.stdout:
      sys.stderr.write(line)
      tail.append(line.rstrip())
    rc = p.wait()
  except BaseException:  # Ctrl-C included: the child is in its own session and would live on.
    kill()
    p.wait()
    raise
  finally:
    timer.cancel()
  return (f'timeout after {timeout_s:.0f} s' if timed_out.is_set() else rc), '\n'.join(tail)


# ----------------------------------------------------------------------------- the combined report


def _rates(side: dict | None) -> tuple[float, float, float] | None:
  if not side or side.get('rate_median') is None:
    return None
  return side['rate_median'], side['rate_min'], side['rate_max']


def _row(model: str, run: dict, prev_load: list | None) -> dict:
  rep = run.get('report') or {}
  entry = ((rep.get('results') or {}).get('train') or {}).get(model)
  row = {
    'model': model,
    'label': MODELS.get(model, {}).get('label', model),
    'resolution': run['resolution'],
    'batch': run['batch'],
    'status': 'ok',
    'sides': {},
    'best_torch': None,
    'ratio': None,
    'ratio_min': None,
    'ratio_max': None,
    'loadavg_start': prev_load,
    'loadavg_end': None,
  }
  if entry is None:
    row['status'] = run.get('status') if run.get('status') != 'ok' else 'not measured'
    return row
  row['sides'] = {k: v for k, v in entry.get('sides', {}).items() if k in SIDES}
  row['loadavg_end'] = entry.get('loadavg')
  torch = {k: _rates(row['sides'].get(k)) for k in TORCH_SIDES}
  torch = {k: v for k, v in torch.items() if v}
  jax = _rates(row['sides'].get(JAX_SIDE))
  if torch:
    row['best_torch'] = max(torch, key=lambda k: torch[k][0])
  if jax and torch:
    best = torch[row['best_torch']]
    row['ratio'] = jax[0] / best[0]
    row['ratio_min'] = jax[1] / best[2]  # JAX's slowest rep against PyTorch's fastest
    row['ratio_max'] = jax[2] / best[1]
  else:
    row['status'] = 'incomplete'
  return row


def _fastest(model: str, resolution: int, runs: list[dict]) -> dict:
  """Each side at the batch where its median rate was highest, over the runs of one size."""
  out = {'model': model, 'resolution': resolution, 'sides': {}}
  for side in SIDES:
    best, status = None, None
    for run in runs:
      entry = (((run.get('report') or {}).get('results') or {}).get('train') or {}).get(model)
      got = ((entry or {}).get('sides') or {}).get(side) or {}
      r = _rates(got)
      if r and (best is None or r[0] > best['rate_median']):
        best = dict(zip(('rate_median', 'rate_min', 'rate_max'), r), batch=run['batch'])
      status = status or got.get('status')
    if best or status:
      out['sides'][side] = best or {'status': status}
  torch = [s for s in TORCH_SIDES if 'rate_median' in out['sides'].get(s, {})]
  out['best_torch'] = max(torch, key=lambda s: out['sides'][s]['rate_median']) if torch else None
  out['ratio'] = (
    out['sides'][JAX_SIDE]['rate_median'] / out['sides'][out['best_torch']]['rate_median']
    if 'rate_median' in out['sides'].get(JAX_SIDE, {}) and out['best_torch']
    else None
  )
  return out


def combine(
  runs: list[dict],
  *,
  models: list[str],
  batch: int,
  command: str,
  reps: int | None = None,
  threads: int | None = None,
  quick: bool | None = None,
) -> dict:
  """The sweep's report from its runs, each {resolution, batch, status, report, ...}.

  Pure (no JAX, no PyTorch, nothing timed), so a sweep's JSON can be redrawn or tested from
  hand-made runs. Machine, versions and threading come from the first run that wrote a report:
  every run is the same program on the same machine, and each keeps its own report anyway.
  reps, threads and quick are the sweep's, for when no run got as far as writing a report.
  """
  reports = [r['report'] for r in runs if r.get('report')]
  first = reports[0] if reports else {}
  given = first.get('settings') or {}
  rows = []
  for model in models:
    for run in runs:
      if run['batch'] != batch:
        continue
      rep = run.get('report') or {}
      # The load before this model: at the run's start, or after the model measured before it.
      prev = rep.get('loadavg_start')
      for m in (rep.get('results') or {}).get('train') or {}:
        if m == model:
          break
        prev = rep['results']['train'][m].get('loadavg', prev)
      rows.append(_row(model, run, prev))
  batches = sorted({r['batch'] for r in runs})
  fastest = []
  if len(batches) > 1:
    for model in models:
      for res in dict.fromkeys(r['resolution'] for r in runs):
        fastest.append(_fastest(model, res, [r for r in runs if r['resolution'] == res]))
  return {
    'schema': 1,
    'kind': 'train_sizes',
    'command': command,
    'date': first.get('date'),
    'date_end': reports[-1].get('date') if reports else None,
    'device_name': first.get('device_name'),
    'machine': first.get('machine'),
    'versions': first.get('versions'),
    'threading': first.get('threading'),
    'precision': first.get('precision'),
    'settings': {
      'models': models,
      'resolutions': list(dict.fromkeys(r['resolution'] for r in runs)),
      'batch': batch,
      'batches': batches,
      'reps': given.get('reps', reps),
      'threads': given.get('threads', threads),
      'quick': first.get('quick', quick),
      'conv_impl': given.get('conv_impl'),
      'bn_impl': given.get('bn_impl'),
    },
    'rows': rows,
    'fastest_batch': fastest,
    'runs': runs,
  }


def _fmt_side(side: dict | None) -> str:
  if side and side.get('rate_median') is None and side.get('status'):
    return side['status']
  return report_lib._fmt_side(side, latency=False)


def _fmt_load(start: list | None, end: list | None) -> str:
  return ' → '.join(f'{v[0]:.1f}' if v else '?' for v in (start, end))


def _fmt_ratio(row: dict) -> str:
  if row.get('ratio') is None:
    return '—'
  s = f'{row["ratio"]:.2f}x'
  if row.get('ratio_min') is not None:
    s += f' ({row["ratio_min"]:.2f}–{row["ratio_max"]:.2f})'
  return s


def to_markdown(rep: dict) -> str:
  """docs/performance.md's table: one row per (model, input size), then how, where and with what."""
  head = ['Model', 'Input', 'Batch', *(SIDE_NAMES[s] for s in SIDES)]
  lines = [
    '| ' + ' | '.join(head) + ' | JAX / best PyTorch | Load (1 min) |',
    '|---|---:|---:|' + '---:|' * (len(SIDES) + 2),
  ]
  for row in rep['rows']:
    cells = [_fmt_side(row['sides'].get(s)) for s in SIDES]
    if not row['sides']:
      cells = [row['status']] + ['—'] * (len(SIDES) - 1)
    lines.append(
      f'| {row["label"]} | {row["resolution"]}px | {row["batch"]} | '
      + ' | '.join(cells)
      + f' | {_fmt_ratio(row)} | {_fmt_load(row["loadavg_start"], row["loadavg_end"])} |'
    )
  s = rep['settings']
  lines += [
    '',
    f'Images/s, median (min–max) over {s.get("reps")} reps{" (--quick: not for docs/performance.md)" if s.get("quick") else ""}; '
    'each input size a fresh `benchmarks.run` process, sides alternating rep by rep, compile and '
    "warm-up excluded. Ratio: JAX fp32 median rate / the faster PyTorch layout's median rate "
    "(above 1: JAX faster); in brackets JAX's slowest rep against PyTorch's fastest, and the "
    'reverse. Load: the 1-minute load average before and after the row was measured.',
  ]
  if rep.get('fastest_batch'):
    lines += [
      '',
      f'Each side at its fastest batch (of {", ".join(map(str, s["batches"]))}), images/s:',
      '',
      '| Model | Input | ' + ' | '.join(SIDE_NAMES[x] for x in SIDES) + ' | JAX / best PyTorch |',
      '|---|---:|' + '---:|' * (len(SIDES) + 1),
    ]
    for f in rep['fastest_batch']:
      cells = [
        f'{report_lib._fmt_num(f["sides"][x]["rate_median"])} (batch {f["sides"][x]["batch"]})'
        if 'rate_median' in f['sides'].get(x, {})
        else f['sides'].get(x, {}).get('status', '—')
        for x in SIDES
      ]
      ratio = '—' if f['ratio'] is None else f'{f["ratio"]:.2f}x'
      label = MODELS.get(f['model'], {}).get('label', f['model'])
      lines.append(f'| {label} | {f["resolution"]}px | ' + ' | '.join(cells) + f' | {ratio} |')
    lines.append('')
  failed = [r for r in rep['runs'] if r.get('status') != 'ok']
  if failed:
    lines.append(
      'Failed runs: '
      + '; '.join(f'{r["resolution"]}px batch {r["batch"]}: {r["status"]}' for r in failed)
      + '.'
    )
  m = rep.get('machine') or {}
  if m:
    lines.append(
      f'Machine: {m.get("cpu_model")}, {m.get("cpu_count")} CPUs; device {rep.get("device_name")}; '
      f'threads per framework {s.get("threads")}; conv_impl {s.get("conv_impl")}, bn_impl {s.get("bn_impl")}.'
    )
    v = rep.get('versions') or {}
    lines.append('Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items() if val) + '.')
    lines.append(f'Date: {rep.get("date")} to {rep.get("date_end")}.')
  else:
    lines.append('No run wrote a report: machine and versions unknown.')
  lines.append(f'Command: `{rep.get("command")}`')
  return '\n'.join(lines) + '\n'


def write(rep: dict, path: str) -> None:
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  atomic_write.write_json(path, rep, indent=1, default=str)
  atomic_write.write_text(os.path.splitext(path)[0] + '.md', to_markdown(rep))


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  a = parse_args(argv)
  command = ' '.join(['python -m benchmarks.train_sizes', *argv])
  out = os.path.abspath(a.out)
  runs: list[dict] = []
  kw = dict(
    models=a.models, batch=a.batch, command=command, reps=a.reps, threads=a.threads, quick=a.quick
  )
  with tempfile.TemporaryDirectory(prefix='train_sizes_') as tmp:
    for res in a.resolutions:
      for batch in a.batches:
        path = os.path.join(tmp, f'r{res}_b{batch}.json')
        args = run_args(a, res, batch, path)
        _log(f'{res}px, batch {batch}: python -m benchmarks.run {" ".join(args)}')
        t0 = time.perf_counter()
        rc, tail = run_one(args, a.timeout_s)
        run = {
          'resolution': res,
          'batch': batch,
          'status': 'ok' if rc == 0 else (rc if isinstance(rc, str) else f'failed (exit {rc})'),
          'wall_seconds': round(time.perf_counter() - t0, 1),
          # What it wrote before failing is kept: it writes its JSON after each model.
          'report': report_lib.read(path) if os.path.exists(path) else None,
        }
        if rc != 0:
          run['tail'] = tail
        runs.append(run)
        _log(f'{res}px, batch {batch}: {run["status"]} in {run["wall_seconds"]} s')
        rep = combine(runs, **kw)
        write(rep, out)  # After every run: a sweep cut short keeps what it measured.
  print('\n' + to_markdown(rep))
  return rep


if __name__ == '__main__':
  sys.exit(0 if any(r['ratio'] is not None for r in main()['rows']) else 1)
