"""The benchmark report: ratios, the markdown table of docs/performance.md, and merging split runs.

`benchmarks.run` measures and hands its results here; this module only reads and writes
reports (JSON beside a markdown table), so a report can be redrawn or merged without
JAX or PyTorch:

  python -m benchmarks.report --merge A.json B.json ... --out C.json

Ratios are JAX rate / PyTorch eager rate (images/s or candidates/s; for batch-1 latency the
inverse ratio of latencies, the same thing): above 1 means JAX is faster.
"""

from __future__ import annotations

import json
import os
import sys

from zenfer_jax import atomic_write, cli

# The benchmarked models, keyed as in the report.
MODELS = {
  'zennet_m_sa': dict(structure='zennet_m', use_sa=True, label='ZenNet-M-SA'),
  'zennet_r_sa': dict(structure='zennet_r', use_sa=True, label='ZenNet-R-SA'),
}
REQUIRED_RATIOS = ('train_zennet_m_sa', 'train_zennet_r_sa', 'infer_b1_zennet_m_sa', 'zen_search')
TORCH_BASELINE = 'torch_eager'


def _rate(entry: dict | None, side: str) -> float | None:
  if not entry:
    return None
  s = entry.get('sides', {}).get(side)
  if not s or s.get('rate_median') is None:
    return None
  return float(s['rate_median'])


def _ratio(num: float | None, den: float | None) -> float | None:
  if num is None or den is None or den <= 0:
    return None
  return num / den


def compute_ratios(results: dict) -> dict[str, float | None]:
  """JAX/PyTorch speed ratios from the measured sections (above 1: JAX is faster).

  The headline keys compare JAX fp32 with PyTorch eager running the reference model as
  written (NCHW); `_bf16` keys use JAX bf16, `_vs_compile` keys use torch.compile and
  `_vs_channels_last` keys PyTorch eager in channels_last memory format as the PyTorch side.
  A missing figure gives None.
  """
  ratios: dict[str, float | None] = {}
  for section in ('train', 'infer_b1', 'infer_bn'):
    for key, entry in (results.get(section) or {}).items():
      base = f'{section}_{key}'
      ratios[base] = _ratio(_rate(entry, 'jax_float32'), _rate(entry, TORCH_BASELINE))
      if _rate(entry, 'jax_bfloat16') is not None:
        ratios[base + '_bf16'] = _ratio(_rate(entry, 'jax_bfloat16'), _rate(entry, TORCH_BASELINE))
      if _rate(entry, 'torch_compile') is not None:
        ratios[base + '_vs_compile'] = _ratio(
          _rate(entry, 'jax_float32'), _rate(entry, 'torch_compile')
        )
      if _rate(entry, 'torch_eager_cl') is not None:
        ratios[base + '_vs_channels_last'] = _ratio(
          _rate(entry, 'jax_float32'), _rate(entry, 'torch_eager_cl')
        )
  zs = results.get('zen_search') or {}
  ratios['zen_search'] = _ratio(_rate(zs, 'jax'), _rate(zs, 'torch'))
  for k in REQUIRED_RATIOS:
    ratios.setdefault(k, None)
  return ratios


def _fmt_num(v: float | None, digits: int = 3) -> str:
  if v is None:
    return '—'
  if v >= 100:
    return f'{v:,.0f}'
  return f'{v:.{digits}g}'


def _fmt_side(side: dict | None, latency: bool) -> str:
  if not side:
    return '—'
  if side.get('status') and side.get('rate_median') is None:
    return side['status']
  if latency:  # ms per image, median (min–max)
    per = side['items_per_rep']
    med, lo, hi = (1000 * side[k] / per for k in ('seconds_median', 'seconds_min', 'seconds_max'))
    return f'{med:.1f} ms ({lo:.1f}–{hi:.1f})'
  return (
    f'{_fmt_num(side["rate_median"])} ({_fmt_num(side["rate_min"])}–{_fmt_num(side["rate_max"])})'
  )


def _fmt_ratio(r: float | None) -> str:
  return '—' if r is None else f'{r:.2f}x'


COLUMNS = (
  ('jax_float32', 'JAX fp32'),
  ('jax_bfloat16', 'JAX bf16'),
  ('torch_eager', 'PyTorch eager'),
  ('torch_eager_cl', 'PyTorch eager, channels_last'),
  ('torch_compile', 'torch.compile'),
)


def to_markdown(report: dict) -> str:
  """docs/performance.md's table: one row per measurement, JAX and PyTorch side by side, then the ratio."""
  results, ratios = report['results'], report['ratios']
  cols = [
    c
    for c in COLUMNS
    if any(
      c[0] in (e.get('sides') or {})
      for sec in ('train', 'infer_b1', 'infer_bn')
      for e in (results.get(sec) or {}).values()
    )
  ] or list(COLUMNS[::2])
  head = '| Benchmark | ' + ' | '.join(name for _, name in cols) + ' | JAX / PyTorch |'
  lines = [head, '|' + '---|' * (len(cols) + 2)]
  titles = {
    'train': 'train step, {res}px, batch {batch} (images/s)',
    'infer_b1': 'inference latency, batch 1, {res}px (ms/image)',
    'infer_bn': 'inference, batch {batch}, {res}px (images/s)',
  }
  for section in ('train', 'infer_b1', 'infer_bn'):
    for key, entry in (results.get(section) or {}).items():
      title = f'{MODELS.get(key, {}).get("label", key)} ' + titles[section].format(
        res=entry.get('resolution'), batch=entry.get('batch')
      )
      cells = [_fmt_side(entry['sides'].get(c), section == 'infer_b1') for c, _ in cols]
      lines.append(
        f'| {title} | ' + ' | '.join(cells) + f' | {_fmt_ratio(ratios.get(f"{section}_{key}"))} |'
      )
  zs = results.get('zen_search')
  if zs:
    j, t = (zs.get('sides') or {}).get('jax'), (zs.get('sides') or {}).get('torch')
    cells = []
    for c, _ in cols:
      if c == 'jax_float32':
        cells.append(_fmt_side(j, False) if j else zs.get('status', '—'))
      elif c == 'torch_eager':
        cells.append(_fmt_side(t, False) if t else zs.get('status', '—'))
      else:
        cells.append('—')
    what = (
      f', {zs["iterations"]} iterations at {zs.get("resolution")}px, compile incl., 1 run'
      if zs.get('iterations')
      else ''
    )
    cut = [
      f'{"JAX" if n == "jax" else "PyTorch"} stopped by the {zs.get("max_seconds_per_side")} s limit '
      f'at iteration {v.get("iterations")}'
      for n, v in (zs.get('sides') or {}).items()
      if v.get('stopped_by_time_limit')
    ]
    if cut:
      what += '; ' + ', '.join(cut)
    lines.append(
      f'| Zen-score search ({zs.get("unit", "candidates/s")}{what}) | '
      + ' | '.join(cells)
      + f' | {_fmt_ratio(ratios.get("zen_search"))} |'
    )
  ip = results.get('input_pipeline')
  if ip:
    cells = [
      (_fmt_num(ip.get('images_per_s')) if ip.get('images_per_s') else ip.get('status', '—'))
      if c == 'jax_float32'
      else '—'
      for c, _ in cols
    ]
    lines.append(
      '| Input pipeline, RAF-DB train recipe 224 (images/s, tf.data) | '
      + ' | '.join(cells)
      + ' | — |'
    )
  lines.append('')
  lines.append(
    'Figures: median (min–max) over {} reps; ratio = JAX rate / PyTorch eager rate '
    '(above 1: JAX faster).'.format(report['settings'].get('reps'))
  )
  comp = []
  for section in ('train', 'infer_b1', 'infer_bn'):
    for key, entry in (results.get(section) or {}).items():
      cs = ', '.join(
        f'{s} {v["compile_seconds"]:.1f} s'
        for s, v in entry['sides'].items()
        if v.get('compile_seconds') is not None
      )
      if cs:
        comp.append(f'{section} {key}: {cs}')
  if comp:
    lines.append('Compile / first call (not in the figures): ' + '; '.join(comp) + '.')
  later = []
  for key, entry in (results.get('train') or {}).items():
    names = [n for n, v in entry['sides'].items() if v.get('torch_eager_same_pass')]
    if names:
      eager = entry['sides'][names[0]]['torch_eager_same_pass']
      later.append(
        f'{key}: {", ".join(names)} (PyTorch eager in that pass {_fmt_num(eager)} images/s)'
      )
  if later:
    lines.append('Timed in a later pass, after the headline rows: ' + '; '.join(later) + '.')
  if report.get('skipped'):
    lines.append('Skipped (time budget): ' + ', '.join(report['skipped']) + '.')
  m, s = report['machine'], report['settings']
  lines.append(
    f'Machine: {m.get("cpu_model")}, {m.get("cpu_count")} CPUs ({m.get("cpus_available")} used by this run)'
    + (f', GPU {m["gpu"]}' if m.get('gpu') else '')
    + f'; device {report.get("device_name")}; threads per framework {s.get("threads")}; '
    f'load average (1/5/15 min) at start {report.get("loadavg_start")}, at end {report.get("loadavg_end")}.'
  )
  v = report.get('versions', {})
  lines.append('Versions: ' + ', '.join(f'{k} {val}' for k, val in v.items() if val) + '.')
  lines.append(f'Command: `{report.get("command")}`')
  return '\n'.join(lines) + '\n'


def merge_reports(reports: list[dict]) -> dict:
  """One report from runs that split the sections (e.g. a GPU lease too short for all of them).

  Sections, and models within a section, come from the run that measured them; a later run
  wins on overlap. Each run's command, date, load and wall time are kept under `runs`, and
  the ratios are recomputed from the merged figures, so nothing is averaged across runs.
  """
  if not reports:
    raise ValueError('merge_reports needs at least one report')
  names = {r.get('device_name') for r in reports}
  if len(names) > 1:
    raise ValueError(f'refusing to merge runs on different devices: {sorted(map(str, names))}')
  merged = json.loads(json.dumps(reports[0], default=str))
  results: dict = {}
  for r in reports:
    for section, value in r.get('results', {}).items():
      if section in ('train', 'infer_b1', 'infer_bn'):
        results.setdefault(section, {}).update(value)
      else:
        results[section] = value
  measured = {
    f'{sec}/{k}'
    for sec, v in results.items()
    if sec in ('train', 'infer_b1', 'infer_bn')
    for k in v
  }
  measured |= set(results)
  merged['results'] = results
  merged['skipped'] = sorted(
    {s for r in reports for s in r.get('skipped', []) if s not in measured}
  )
  merged['runs'] = [
    {k: r.get(k) for k in ('command', 'date', 'wall_seconds', 'loadavg_start', 'loadavg_end')}
    for r in reports
  ]
  merged['command'] = ' ; '.join(r.get('command', '?') for r in reports)
  merged['loadavg_end'] = reports[-1].get('loadavg_end')
  merged['ratios'] = compute_ratios(results)
  return merged


def write_with_table(path: str, result: dict, table: str, indent: int = 1) -> None:
  """Any benchmark's result as JSON at `path` and its markdown table beside it (.md), each
  written whole or not at all, so a killed benchmark never leaves half a results file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  atomic_write.write_json(path, result, indent=indent, default=str)
  atomic_write.write_text(
    os.path.splitext(path)[0] + '.md', table if table.endswith('\n') else table + '\n'
  )


def write(report: dict, path: str) -> None:
  """The report as JSON at `path` (ratios recomputed) and its markdown table beside it (.md)."""
  report = dict(report, ratios=compute_ratios(report['results']))
  write_with_table(path, report, to_markdown(report))


def read(path: str) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def main(argv: list[str] | None = None) -> dict:
  """Merges the reports of runs that split the sections into one (JSON and table)."""
  p = cli.ArgumentParser(prog='python -m benchmarks.report', description=main.__doc__)
  p.add_argument('--merge', nargs='+', required=True, metavar='REPORT', help='JSON reports')
  p.add_argument('--out', required=True, help='JSON path (the .md table is written beside it)')
  a = p.parse_args(sys.argv[1:] if argv is None else argv)
  report = merge_reports([read(path) for path in a.merge])
  write(report, a.out)
  print(to_markdown(report))
  return report


if __name__ == '__main__':
  main()
