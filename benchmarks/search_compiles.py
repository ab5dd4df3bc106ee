"""Compiles mid-search: how many programs a search compiles after its first candidates, per seed.

  python -m benchmarks.search_compiles --seeds 0-9 --iterations 1000 --resolution 64 \
      --batch_size 8 --json benchmarks/results/search_compiles_64.json

Each seed runs `zenfer_jax.nas.evolution.run_search` with configs/search_m.py in a fresh
process (the program set is per process), all seeds sharing one persistent compilation cache,
so the first seed compiles the level grid and the others load it. Per seed: the programs
compiled up front (the level grid, config.search.compile_grid='on') and the seconds that took,
the programs compiled after candidate `--after` (the figure that must be 0: on an accelerator
each stalls scoring for seconds), the candidate of the last compile, the whole search's
seconds, and the best score and structure. `--compare` runs every seed again with the grid off
(its own cache) and records whether the best structure and score are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.timing import loadavg, machine_info
from zenfer_jax import atomic_write, cli

RESULT = 'SEARCH_COMPILES_RESULT '


def seed_list(text: str) -> list[int]:
  """'0-9' or '0,3,5'."""
  out = []
  for part in text.split(','):
    lo, _, hi = part.partition('-')
    out.extend(range(int(lo), int(hi or lo) + 1))
  return out


def run_child(args) -> dict:
  """One search in this process; what its candidate log says about its compiles."""
  from configs import search_m
  from zenfer_jax.nas import evolution

  c = search_m.get_config()
  c.seed = args.seed
  c.search.max_iterations = args.iterations
  c.search.resolution = args.resolution
  c.search.batch_size = args.batch_size
  c.search.checkpoint_every = args.iterations
  c.search.compilation_cache_dir = args.cache
  c.search.compile_grid = args.grid
  with tempfile.TemporaryDirectory() as work:
    t = time.perf_counter()
    state = evolution.run_search(c, work, progress=False)
    seconds = time.perf_counter() - t
    with open(os.path.join(work, 'candidates.jsonl')) as f:
      programs = [json.loads(line)['compiled_programs'] for line in f]
  after = args.after
  changes = [i + 1 for i in range(1, len(programs)) if programs[i] != programs[i - 1]]
  best = state.best()
  return {
    'seed': args.seed,
    'compile_grid': args.grid,
    'candidates': len(programs),
    'programs_up_front': state.warmup_programs,
    'warmup_s': round(state.warmup_s, 2),
    'programs': state.compiled_programs,
    f'compiled_after_candidate_{after}': programs[-1] - programs[min(after, len(programs)) - 1],
    'last_compile_at_candidate': changes[-1] if changes else 1,
    'seconds': round(seconds, 2),
    'compile_s': round(state.compile_s, 2),
    'best_score': best[1],
    'best_structure': best[0],
  }


def run_seed(seed: int, grid: str, cache: str, args) -> dict:
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.search_compiles',
    f'--child_seed={seed}',
    f'--grid={grid}',
    f'--cache={cache}',
    f'--iterations={args.iterations}',
    f'--resolution={args.resolution}',
    f'--batch_size={args.batch_size}',
    f'--after={args.after}',
  ]
  before = loadavg()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f'seed {seed} ({grid}) failed:\n{proc.stderr[-4000:]}')
  out = json.loads(lines[-1][len(RESULT) :])
  out.update(loadavg_before=before, loadavg_after=loadavg())
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m benchmarks.search_compiles',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--seeds', default='0-9', help="'0-9' or '0,3,5'")
  p.add_argument('--iterations', type=cli.positive_int, default=1000)
  p.add_argument('--resolution', type=cli.positive_int, default=64)
  p.add_argument('--batch_size', type=cli.positive_int, default=8)
  p.add_argument('--after', type=cli.positive_int, default=200, help='count compiles after this')
  p.add_argument('--compare', action='store_true', help='also run each seed with the grid off')
  p.add_argument('--cache', default=None, help='the persistent cache (default: a fresh one)')
  p.add_argument('--json', default=None, help='also write the results here')
  p.add_argument('--child_seed', type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument('--grid', default='on', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.child_seed is not None:
    args.seed = args.child_seed
    print(RESULT + json.dumps(run_child(args)), flush=True)
    return None
  results, compared = [], []
  with tempfile.TemporaryDirectory() as tmp:
    cache = args.cache or os.path.join(tmp, 'jax_cache')
    for seed in seed_list(args.seeds):
      r = run_seed(seed, 'on', cache, args)
      if args.compare:
        off = run_seed(seed, 'off', os.path.join(tmp, 'jax_cache_off'), args)
        r['grid_off'] = {k: off[k] for k in ('programs', 'seconds', 'best_score')}
        r['grid_off'][f'compiled_after_candidate_{args.after}'] = off[
          f'compiled_after_candidate_{args.after}'
        ]
        r['same_best_as_grid_off'] = (r['best_structure'], r['best_score']) == (
          off['best_structure'],
          off['best_score'],
        )
        compared.append(r['same_best_as_grid_off'])
      results.append(r)
      print(
        f'seed {seed}: {r["programs_up_front"]} programs up front in {r["warmup_s"]:.1f} s, '
        f'{r[f"compiled_after_candidate_{args.after}"]} after candidate {args.after} '
        f'(last compile at candidate {r["last_compile_at_candidate"]}), '
        f'{r["candidates"]} candidates in {r["seconds"]:.1f} s, best {r["best_score"]:.4f}'
        + (f', same best as grid off: {r["same_best_as_grid_off"]}' if args.compare else ''),
        flush=True,
      )
      report = {
        'machine': machine_info(),
        'command': 'python -m benchmarks.search_compiles ' + ' '.join(argv or sys.argv[1:]),
        'config': 'configs/search_m.py',
        'args': vars(args),
        'results': results,
      }
      if args.json:  # after each seed: a timeout during the next one keeps these
        atomic_write.write_json(args.json, report, indent=1)
  late = sum(r[f'compiled_after_candidate_{args.after}'] for r in results)
  print(f'{len(results)} seeds: {late} programs compiled after candidate {args.after} in all')
  if compared:
    print(f'same best structure and score with the grid off: {sum(compared)}/{len(compared)}')
  return report


if __name__ == '__main__':
  main()
