"""Where the JAX train step's time goes, per XLA op kind (not a test).

  python -m benchmarks.step_profile --resolution 48 --out benchmarks/results/step_profile_48.json
  python -m benchmarks.step_profile --resolution 64 --threads 1 --out /tmp/profile_64.json

Issue "Small faces at full speed" asks what limits the step where JAX trails PyTorch. The answer
needs op-level times, and jax.profiler's trace holds them: this runs `train_throughput`'s JAX step
(the same weights, recipe and update as the side-by-side benchmark), traces `--steps` steps and
sums each compiled op's time, by op and by kind (`ynn_fusion.40` -> `ynn_fusion`: XLA names
fusions by their root ops, so a kind groups the matmuls, the ReLU masks, the transposes ...).
Each op is looked up in the optimised HLO for its shape and the model layers it came from, so a
slow transpose names the layer that made it. `--threads 1` pins the process to one core first.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

from benchmarks import pinning as pinning_lib
from benchmarks import report
from zenfer_jax import cli

# Trace events that are not one compiled op: the runtime's C++ scopes (`ThunkExecutor::Execute`,
# thread-pool waits), the jitted call and Python frames.
_NOT_OPS = re.compile(r'^\$|::|PjitFunction|^jit\(|Await')


def parse_args(argv: list[str] | None = None):
  p = cli.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--structure', default='zennet_r', help="'zennet_r', 'zennet_m' or a structure")
  p.add_argument('--no_sa', action='store_true', help='without the SA blocks')
  p.add_argument('--resolution', type=cli.positive_int, default=48)
  p.add_argument('--batch', type=cli.positive_int, default=64)
  p.add_argument('--steps', type=cli.positive_int, default=3, help='traced steps')
  p.add_argument('--threads', type=int, default=0, help='cores to pin to (0: all)')
  p.add_argument('--top', type=cli.positive_int, default=25, help='ops listed by name')
  p.add_argument('--out', required=True, help='JSON file to write')
  return p.parse_args(argv)


def op_kind(name: str) -> str:
  """`ynn_fusion.40` -> `ynn_fusion`; a name without a numeric suffix is its own kind."""
  return re.sub(r'\.\d+$', '', name)


def op_times(events: list[dict]) -> tuple[dict[str, float], collections.Counter]:
  """Microseconds and calls of each compiled op in a Chrome-trace event list."""
  total: dict[str, float] = collections.defaultdict(float)
  calls: collections.Counter = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and 'dur' in e and not _NOT_OPS.search(e['name']):
      total[e['name']] += float(e['dur'])
      calls[e['name']] += 1
  return dict(total), calls


def by_kind(total: dict[str, float], calls: collections.Counter, steps: int) -> list[dict]:
  kinds: dict[str, float] = collections.defaultdict(float)
  count: collections.Counter = collections.Counter()
  for name, us in total.items():
    kinds[op_kind(name)] += us
    count[op_kind(name)] += calls[name]
  rows = [
    {'kind': k, 'ms_per_step': us / steps / 1e3, 'calls_per_step': count[k] / steps}
    for k, us in kinds.items()
  ]
  return sorted(rows, key=lambda r: -r['ms_per_step'])


def hlo_origin(hlo_text: str, op: str) -> dict:
  """The shape of `op`'s result and the layers (op_name metadata) its fused computation holds."""
  shape = None
  called = None
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%' + re.escape(op) + r' = (\S+) ', line)
    if m:
      shape = m.group(1)
      c = re.search(r'calls=%([\w.\-]+)', line)
      called = c.group(1) if c else None
      meta = re.findall(r'op_name="([^"]+)"', line)
      if called is None:
        return {'shape': shape, 'layers': sorted({_layer(n) for n in meta})}
      break
  layers: set[str] = set()
  if called:
    body = re.search(r'\n%' + re.escape(called) + r' .*?\n}', hlo_text, re.S)
    if body:
      layers = {_layer(n) for n in re.findall(r'op_name="([^"]+)"', body.group(0))}
  return {'shape': shape, 'layers': sorted(layers)}


def _layer(op_name: str) -> str:
  """'jit(step)/transpose(jvp(ZenNet))/ZenNet.features/backbone/block1/layer0/bn4/div' ->
  'backward block1/layer0/bn4'."""
  backward = 'transpose(' in op_name
  parts = [p for p in op_name.split('/') if re.fullmatch(r'(block|layer|conv|bn|sa)\d*', p)]
  return ('backward ' if backward else '') + '/'.join(parts[:3])


def profile(args) -> dict:
  import jax

  from benchmarks.train_throughput import JaxTrainCase

  case = JaxTrainCase(
    args.structure,
    use_sa=not args.no_sa,
    batch=args.batch,
    resolution=args.resolution,
    steps_per_rep=args.steps,
  )
  case.run()
  t0 = time.perf_counter()
  case.run()
  untraced = (time.perf_counter() - t0) / args.steps
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      case.run()
    (path,) = glob.glob(os.path.join(d, '**', '*.trace.json.gz'), recursive=True)
    with gzip.open(path, 'rt', encoding='utf-8') as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  hlo = case._compiled.as_text()
  total, calls = op_times(events)
  # Keep the step's own instructions; the rest (argument parsing, buffer set-up) is the runtime's.
  names = set(re.findall(r'%([\w.\-]+) = ', hlo))
  runtime = sum(us for n, us in total.items() if n not in names)
  total = {n: us for n, us in total.items() if n in names}
  top = sorted(total.items(), key=lambda kv: -kv[1])[: args.top]
  ops_ms = sum(total.values()) / args.steps / 1e3
  return {
    'command': 'python -m benchmarks.step_profile ' + ' '.join(sys.argv[1:]),
    'settings': {k: v for k, v in vars(args).items() if k != 'out'},
    'versions': {'jax': jax.__version__},
    'step_ms_untraced': untraced * 1e3,
    'images_per_second_untraced': args.batch / untraced,
    'ops_ms_per_step': ops_ms,
    'runtime_ms_per_step': runtime / args.steps / 1e3,
    'by_kind': by_kind(total, calls, args.steps),
    'top_ops': [
      {'op': n, 'ms_per_step': us / args.steps / 1e3, **hlo_origin(hlo, n)} for n, us in top
    ],
  }


def markdown(rep: dict, rows: int = 12) -> str:
  s = rep['settings']
  lines = [
    f'{s["structure"]} at {s["resolution"]} px, batch {s["batch"]}: '
    f'{rep["step_ms_untraced"]:.0f} ms a step untraced, {rep["ops_ms_per_step"]:.0f} ms in ops',
    '',
    '| op kind | ms per step | calls per step |',
    '|---|---:|---:|',
  ]
  for r in rep['by_kind'][:rows]:
    lines.append(f'| `{r["kind"]}` | {r["ms_per_step"]:.1f} | {r["calls_per_step"]:.0f} |')
  return '\n'.join(lines) + '\n'


@cli.command
def main(argv=None) -> int:
  args = parse_args(argv)
  pinning = pinning_lib.pin_threads(args.threads)  # before profile() imports JAX
  rep = profile(args)
  rep['threading'] = pinning
  md = markdown(rep)
  report.write_with_table(args.out, rep, md, indent=2)
  print(md)
  return 0


if __name__ == '__main__':
  sys.exit(main())
