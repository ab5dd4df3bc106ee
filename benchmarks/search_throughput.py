"""Search throughput: candidates scored per second, JAX against PyTorch, same algorithm.

  python -m benchmarks.search_throughput --iterations 1000 --resolution 64 --batch_size 8
  python -m benchmarks.search_throughput --long          # 2,000 iterations at 224, batch 16 (GPU)

Flags are spelt with underscores, as every program here spells them (zenfer_jax.cli).

Every side runs `zenfer_jax.nas.evolution.run_search` with configs/search_m.py (IDW space,
ZenNet-M budgets) from init_m for the same number of iterations, each in a fresh process;
only the fitness differs:
  jax cold: the JAX Zen-score (zenfer_jax.nas.programs) with an empty persistent compilation
            cache, so every compile is inside the figure;
  jax warm: the same search again in a new process, its programs now in that cache;
  torch:    the reference algorithm on torch_port's reference model (torch_port.zen_score: a
            fresh residual-free network per candidate, two no_grad passes), eager PyTorch.
The figure is (candidates scored) / (wall-clock seconds of the whole search), compile
included, one run per side. Each side also reports the CPU seconds its process used: on a
shared machine whose load changes between the sides, candidates per CPU-second compare the
two more fairly than wall time (the load average before and after each side is recorded).
The first candidates of both sides are the same mutations (until the population first
fills, parents are drawn uniformly, so scores do not steer the search); later ones differ.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.timing import loadavg, machine_info
from zenfer_jax import atomic_write, cli

RESULT = 'SEARCH_THROUGHPUT_RESULT '
PUBLISHED_ITERATIONS = 480_000  # ZenNet-M's and ZenNet-R's search


def _config(iterations: int, resolution: int, batch_size: int, cache_dir: str, per_step: int):
  from configs import search_m

  c = search_m.get_config()
  c.search.max_iterations = iterations
  c.search.resolution = resolution
  c.search.batch_size = batch_size
  c.search.checkpoint_every = max(1, iterations)
  c.search.compilation_cache_dir = cache_dir
  c.search.candidates_per_step = per_step
  return c


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_child(args) -> dict:
  """One side, in this process: the search, timed."""
  from zenfer_jax.nas import evolution

  cpu0 = _cpu_seconds()
  config = _config(
    args.iterations, args.resolution, args.batch_size, args.cache or '', args.candidates_per_step
  )
  scorer = None
  if args.child == 'torch':
    import torch

    from torch_port.zen_score import TorchZenScorer

    ts = TorchZenScorer(
      resolution=args.resolution, batch_size=args.batch_size, device=args.torch_device
    )
    scorer = lambda s, seed: ts(s, seed).mean  # noqa: E731
    device = f'torch {torch.__version__} {args.torch_device}, {torch.get_num_threads()} threads'
  else:
    import jax

    device = f'jax {jax.__version__} {jax.devices()[0].device_kind}'
  with tempfile.TemporaryDirectory() as tmp:
    work = args.workdir or tmp
    t0 = time.perf_counter()
    state = evolution.run_search(
      config, work, scorer=scorer, progress=False, max_seconds=args.max_seconds
    )
    seconds = time.perf_counter() - t0
    with open(os.path.join(work, 'search_summary.json')) as f:
      summary = json.load(f)
  cpu = _cpu_seconds() - cpu0
  return {
    'device': device,
    'iterations': state.next_iteration,
    'stopped_by_time_limit': state.next_iteration < args.iterations,
    'candidates': state.num_scored,
    'seconds': round(seconds, 2),
    'cpu_seconds': round(cpu, 2),
    'candidates_per_s': state.num_scored / seconds,
    # The published search (480,000 iterations) at this rate, with this run's share of scored
    # candidates among iterations (budget rejects and repeats are not scored).
    'projected_published_search_hours': PUBLISHED_ITERATIONS
    * (state.num_scored / max(state.next_iteration, 1))
    / max(state.num_scored / seconds, 1e-12)
    / 3600,
    'candidates_per_cpu_s': state.num_scored / max(cpu, 1e-9),
    'compiled_programs': summary['compiled_programs'],
    'compile_s': summary['compile_s'],
    'scoring_s': summary['scoring_s'],
    'candidates_per_step': summary['candidates_per_step'],
    'best_score': state.best()[1] if state.best() else None,
  }


def child_command(name: str, args, cache: str | None) -> list[str]:
  """The command line that runs side `name` in a fresh process."""
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.search_throughput',
    f'--child={"torch" if name == "torch" else "jax"}',
    f'--iterations={args.iterations}',
    f'--resolution={args.resolution}',
    f'--batch_size={args.batch_size}',
    f'--torch_device={args.torch_device}',
    f'--candidates_per_step={args.candidates_per_step}',
  ]
  if cache:
    cmd.append(f'--cache={cache}')
  if args.keep:
    cmd.append(f'--workdir={os.path.join(args.keep, name)}')
  if args.max_seconds:
    cmd.append(f'--max_seconds={args.max_seconds}')
  return cmd


def run_side(name: str, args, cache: str | None, timeout: float | None = None) -> dict:
  """One side in a fresh process (no state shared with the others but the cache directory).

  `timeout`: seconds before the side's process is killed (subprocess.TimeoutExpired), for a
  caller that must finish within a fixed call (benchmarks.gpu_driver).
  """
  cmd = child_command(name, args, cache)
  before = loadavg()
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'{name} side failed:\n{proc.stderr[-4000:]}')
  out = json.loads(lines[-1][len(RESULT) :])
  out.update(side=name, loadavg_before=before, loadavg_after=loadavg())
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m benchmarks.search_throughput',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--iterations', type=cli.positive_int, default=200)
  p.add_argument('--resolution', type=cli.positive_int, default=224)
  p.add_argument('--batch_size', type=cli.positive_int, default=16)
  p.add_argument(
    '--long', action='store_true', help='the GPU run: 2,000 iterations at 224 px, batch 16'
  )
  p.add_argument(
    '--sides',
    default='jax_cold,jax_warm,torch',
    help='comma list of jax_cold, jax_warm, torch (run in this order; jax_warm needs jax_cold '
    'first; jax is jax_cold under the name benchmarks/run.py reads)',
  )
  p.add_argument('--torch_device', default='cpu')
  p.add_argument(
    '--candidates_per_step',
    type=int,
    default=0,
    help='JAX side (0: the per-device default); PyTorch scores one at a time whatever this is',
  )
  p.add_argument('--json', default=None, help='also write the results here')
  p.add_argument(
    '--max_seconds',
    type=cli.positive_float,
    default=None,
    help='per side: stop the search after this much wall time (the figure then covers the '
    'iterations reached)',
  )
  p.add_argument(
    '--keep',
    default=None,
    help="keep each side's search directory (candidates.jsonl, summary, plot) under DIR/<side>",
  )
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--workdir', default=None, help=argparse.SUPPRESS)
  p.add_argument('--cache', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.candidates_per_step < 0:
    p.error(f'--candidates_per_step={args.candidates_per_step}: give 0 (per device) or more')
  if args.long:
    args.iterations, args.resolution, args.batch_size = 2000, 224, 16
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    print(RESULT + json.dumps(run_child(args)), flush=True)
    return None

  results = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, 'jax_cache')
    for side in args.sides.split(','):
      results.append(run_side(side, args, cache if side.startswith('jax') else None))
      if args.json:  # after each side: a caller's timeout during the next one keeps this figure
        atomic_write.write_json(
          args.json, {'machine': machine_info(), 'args': vars(args), 'results': results}
        )
  print(
    f'search throughput: {args.iterations} iterations from init_m (configs/search_m.py), '
    f'{args.resolution}x{args.resolution}, batch {args.batch_size}, compile included, one run each'
  )
  print(
    f'{"side":<9} {"device":<40} {"cand":>5} {"seconds":>8} {"cand/s":>7} {"cand/cpu-s":>10} '
    f'{"programs":>8} {"compile s":>9} {"load":>10}'
  )
  for r in results:
    load = f'{r["loadavg_before"][0]:.1f}-{r["loadavg_after"][0]:.1f}'
    print(
      f'{r["side"]:<9} {r["device"][:40]:<40} {r["candidates"]:>5} {r["seconds"]:>8.1f} '
      f'{r["candidates_per_s"]:>7.2f} {r["candidates_per_cpu_s"]:>10.2f} '
      f'{r.get("compiled_programs", 0):>8} {r.get("compile_s", 0):>9.1f} {load:>10}'
    )
  by = {r['side']: r for r in results}
  if 'torch' in by:
    for side in ('jax', 'jax_cold', 'jax_warm'):
      if side in by:
        wall = by[side]['candidates_per_s'] / by['torch']['candidates_per_s']
        cpu = by[side]['candidates_per_cpu_s'] / by['torch']['candidates_per_cpu_s']
        print(f'{side} / torch: {wall:.2f}x (wall clock), {cpu:.2f}x (per CPU-second)')
  for r in results:
    hours = r['projected_published_search_hours']
    print(
      f'{r["side"]}: the published {PUBLISHED_ITERATIONS:,}-iteration search at this rate: {hours:,.1f} h'
    )
  return {'machine': machine_info(), 'args': vars(args), 'results': results}


if __name__ == '__main__':
  main()
