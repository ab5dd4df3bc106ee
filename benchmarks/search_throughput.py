"""Search throughput: candidates scored per wall-clock second, JAX against PyTorch, same algorithm.

  python -m benchmarks.search_throughput [--iterations 200] [--resolution 224] [--batch-size 16]

Both sides run `zenfer_jax.nas.evolution.run_search` with configs/search_m.py (IDW space,
ZenNet-M budgets) from init_m for the same number of iterations; only the fitness differs:
  jax:   zenfer_jax.nas.zen_score (per-unit compiled pieces, shape buckets), started with an
         empty persistent compilation cache, so every compile is inside the figure;
  torch: the reference algorithm on torch_port's reference model (torch_port.zen_score:
         a fresh residual-free network per candidate, two no_grad passes), eager PyTorch.
The figure is (candidates scored) / (wall-clock seconds of the whole search), compile included,
one run per side. With --max-seconds a side stops after that much wall time (a GPU lease cannot
wait for a cold JAX search that compiles for minutes) and its figure covers the iterations
reached. Both sides draw the same mutations from the same seed but their scores differ, so
their populations (and the later candidates) differ; the candidate counts are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.timing import loadavg, machine_info


def _config(iterations: int, resolution: int, batch_size: int, cache_dir: str):
  from configs import search_m

  c = search_m.get_config()
  c.search.max_iterations = iterations
  c.search.resolution = resolution
  c.search.batch_size = batch_size
  c.search.checkpoint_every = max(1, iterations)
  c.search.compilation_cache_dir = cache_dir
  return c


def run_side(
  side: str,
  iterations: int,
  resolution: int,
  batch_size: int,
  torch_device: str = 'cpu',
  max_seconds: float | None = None,
) -> dict:
  import importlib

  from zenfer_jax.nas import evolution

  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, 'jax_cache') if side == 'jax' else ''
    config = _config(iterations, resolution, batch_size, cache)
    scorer = None
    if side == 'torch':
      import torch

      from torch_port.zen_score import TorchZenScorer

      ts = TorchZenScorer(resolution=resolution, batch_size=batch_size, device=torch_device)
      scorer = lambda s, seed: ts(s, seed).mean  # noqa: E731
      device = f'torch {torch.__version__} {torch_device}, {torch.get_num_threads()} threads'
    else:
      import jax

      device = f'jax {jax.__version__} {jax.devices()[0].device_kind}'
    load_before = loadavg()
    t0 = time.perf_counter()
    state = evolution.run_search(
      config, os.path.join(tmp, 'work'), scorer=scorer, progress=False, max_seconds=max_seconds
    )
    seconds = time.perf_counter() - t0
    out = {
      'side': side,
      'device': device,
      'iterations': state.next_iteration,
      'stopped_by_time_limit': state.next_iteration < iterations,
      'candidates': state.num_scored,
      'seconds': round(seconds, 2),
      'candidates_per_s': state.num_scored / seconds,
      'best_score': state.best()[1] if state.best() else None,
      'loadavg_before': load_before,
      'loadavg_after': loadavg(),
    }
    if side == 'jax':
      zs = importlib.import_module('zenfer_jax.nas.zen_score')
      out['compiled_pieces'] = dict(zs.TRACES)
    return out


def main(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument('--iterations', type=int, default=200)
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch-size', type=int, default=16)
  p.add_argument(
    '--sides', default='jax,torch', help='comma list of jax, torch (run in this order)'
  )
  p.add_argument('--torch-device', default='cpu')
  p.add_argument('--json', default=None, help='also write the results here')
  p.add_argument(
    '--max-seconds',
    type=float,
    default=None,
    help='per side: stop the search after this much wall time (the figure is then '
    'candidates scored / seconds over the iterations it reached)',
  )
  args = p.parse_args(argv)

  results = []
  for side in args.sides.split(','):
    results.append(
      run_side(
        side, args.iterations, args.resolution, args.batch_size, args.torch_device, args.max_seconds
      )
    )
    if args.json:  # after each side: a caller's timeout during the next one keeps this figure
      _write(args.json, {'machine': machine_info(), 'args': vars(args), 'results': results})
  print(
    f'search throughput: {args.iterations} iterations from init_m (configs/search_m.py), '
    f'{args.resolution}x{args.resolution}, batch {args.batch_size}, compile included, one run each'
  )
  print(f'{"side":<6} {"device":<44} {"candidates":>10} {"seconds":>9} {"cand/s":>8}')
  for r in results:
    print(
      f'{r["side"]:<6} {r["device"]:<44} {r["candidates"]:>10} {r["seconds"]:>9.1f} {r["candidates_per_s"]:>8.3f}'
    )
  by = {r['side']: r for r in results}
  if 'jax' in by and 'torch' in by:
    ratio = by['jax']['candidates_per_s'] / by['torch']['candidates_per_s']
    print(f'JAX / PyTorch: {ratio:.2f}x')
  return {'machine': machine_info(), 'args': vars(args), 'results': results}


def _write(path: str, report: dict) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=1)
  os.replace(tmp, path)


if __name__ == '__main__':
  main()
