"""Deployment speed on CPU: JAX, ONNX Runtime, LiteRT and PyTorch eager, side by side in one run.

  python -m benchmarks.deploy_latency                      # ZenNet-M-SA and ZenNet-R-SA at 224
  python -m benchmarks.deploy_latency --quick              # 64 px, few reps: a smoke run

For each model the same calibrated random weights (torch_port's reference model randomised as
the parity tests do, then converted) run as:
  * JAX: the Flax model, jit-compiled, with the CPU conv paths training and evaluation use;
  * ONNX Runtime: the file `python -m zenfer_jax.deploy.export --format onnx` writes (dynamic
    batch);
  * LiteRT: the files `--format tflite` writes (fixed batch: one file at 1, one at --batch),
    in the LiteRT interpreter with its default XNNPACK delegate;
  * PyTorch eager: torch_port's reference model, eval mode, under torch.inference_mode().
Each export is checked against the Flax logits by the exporter itself (the relative error is
reported). Batch-1 latency (ms, median) and batch-N throughput (images/s, median) are measured
with `benchmarks.timing` (warm-up untimed, sides alternating rep by rep, medians of >= 5 reps
with min and max). Every side gets the same cores: the process is pinned to --threads CPUs
before any framework is imported, XLA sizes its pool from that, onnxruntime and LiteRT are
given --threads threads and PyTorch torch.set_num_threads(--threads). The load average at the
start and the end is recorded: on a shared machine it says how far to trust the figures.

Writes JSON (--out, default benchmarks/results/deploy_cpu.json) and the markdown table beside it.
Ratios are rate / PyTorch eager rate: above 1 is faster than PyTorch eager.
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile

from benchmarks import pinning as pinning_lib
from benchmarks import report as report_lib
from zenfer_jax import cli

MODELS = {
  'ZenNet-M-SA': dict(structure='zennet_m', use_sa=True),
  'ZenNet-R-SA': dict(structure='zennet_r', use_sa=True),
}
SIDES = ('JAX', 'ONNX Runtime', 'LiteRT', 'PyTorch eager')


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(prog='python -m benchmarks.deploy_latency', description=__doc__)
  p.add_argument('--models', nargs='+', default=list(MODELS), choices=tuple(MODELS))
  p.add_argument('--resolution', type=int, default=224)
  p.add_argument('--batch', type=int, default=64, help='batch size of the throughput figure')
  p.add_argument('--threads', type=int, default=1, help='CPUs (and threads) every side gets')
  p.add_argument('--reps', type=int, default=7)
  p.add_argument('--quick', action='store_true', help='64 px, batch 8, 3 reps: a smoke run')
  p.add_argument('--out', default=os.path.join('benchmarks', 'results', 'deploy_cpu.json'))
  return p


def _model_dir(root: str, name: str, res: int) -> str:
  """Calibrated random weights (activations O(1), as a trained model's) in a model directory."""
  import torch

  from torch_port.convert import convert_state_dict
  from torch_port.reference_model import build_reference_model, randomize_
  from zenfer_jax.model.structure import resolve
  from zenfer_jax.rundir import model_directory

  spec = MODELS[name]
  structure = str(resolve(spec['structure']))
  ref = build_reference_model(structure, 7, use_sa=spec['use_sa'])
  g = torch.Generator().manual_seed(0)
  randomize_(ref, seed=0, calibration_batch=torch.randn(4, 3, res, res, generator=g))
  variables, _ = convert_state_dict(ref.state_dict(), structure, 7, use_sa=spec['use_sa'])
  card = model_directory.make_card(
    structure, 7, use_sa=spec['use_sa'], image_size=res, recipe='rafdb', source='benchmark'
  )
  return model_directory.save_model_dir(os.path.join(root, name), variables, card)


def _sides(model_dir: str, root: str, name: str, res: int, batch: int, threads: int):
  """{side: (fn(x) -> logits for batch 1, fn for batch N)} and the exports' parity figures."""
  import jax
  import numpy as np
  import torch

  from torch_port.export import export_state_dict
  from torch_port.reference_model import build_reference_model
  from zenfer_jax.deploy import export, runtimes
  from zenfer_jax.rundir import model_directory

  variables, card = model_directory.load_model_dir(model_dir)
  model = model_directory.build_from_card(card)
  jitted = jax.jit(lambda v, a: model.apply(v, a, train=False))

  def jax_fn(x):
    return np.asarray(jax.block_until_ready(jitted(variables, x)))

  ref = build_reference_model(card['structure'], 7, use_sa=card['use_sa'])
  ref.load_state_dict(export_state_dict(variables, card['structure'], 7, use_sa=card['use_sa']))
  ref.eval()

  def torch_fn(x):
    with torch.inference_mode():
      return ref(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()

  parity = {}
  onnx_path = os.path.join(root, f'{name}.onnx')
  parity['onnx'] = export.export(model_dir, 'onnx', onnx_path)['relative_error']
  onnx_model = runtimes.load(onnx_path, threads=threads)
  lite = {}
  for b in sorted({1, batch}):
    path = os.path.join(root, f'{name}_b{b}.tflite')
    parity[f'tflite_b{b}'] = export.export(model_dir, 'tflite', path, batch=b)['relative_error']
    lite[b] = runtimes.load(path, threads=threads)
  sides = {
    'JAX': (jax_fn, jax_fn),
    'ONNX Runtime': (onnx_model.logits, onnx_model.logits),
    'LiteRT': (lite[1].logits, lite[batch].logits),
    'PyTorch eager': (torch_fn, torch_fn),
  }
  return sides, parity


def _measure(sides, res: int, batch: int, reps: int) -> dict:
  import numpy as np

  from benchmarks import timing

  rng = np.random.default_rng(0)
  x1 = rng.standard_normal((1, res, res, 3), np.float32)
  xn = rng.standard_normal((batch, res, res, 3), np.float32)
  want = sides['JAX'][0](x1)
  agree = {s: float(np.abs(f[0](x1) - want).max() / np.abs(want).max()) for s, f in sides.items()}
  b1 = timing.time_alternating(
    {s: (lambda f=f: f[0](x1)) for s, f in sides.items()}, reps=reps, warmup=2, calls_per_rep=5
  )
  bn = timing.time_alternating(
    {s: (lambda f=f: f[1](xn)) for s, f in sides.items()}, reps=reps, warmup=1
  )
  out = {}
  for s in sides:
    lat = timing.summarize([t / 5 for t in b1[s]])
    thr = timing.summarize(bn[s], items=batch)
    out[s] = {
      'b1_ms': {k: 1e3 * lat[f'seconds_{k}'] for k in ('median', 'min', 'max')},
      'bn_img_s': {k: thr[f'rate_{k}'] for k in ('median', 'min', 'max')},
      'b1_logits_vs_jax': agree[s],
    }
  torch_b1 = out['PyTorch eager']['b1_ms']['median']
  torch_bn = out['PyTorch eager']['bn_img_s']['median']
  for s in sides:
    out[s]['b1_speedup_vs_torch'] = torch_b1 / out[s]['b1_ms']['median']
    out[s]['bn_speedup_vs_torch'] = out[s]['bn_img_s']['median'] / torch_bn
  return out


def markdown(report: dict) -> str:
  batch = report['batch']
  lines = [
    f'| model | runtime | batch-1 latency, ms (min-max) | vs PyTorch | batch-{batch} images/s '
    '(min-max) | vs PyTorch | logits vs JAX |',
    '| --- | --- | --- | --- | --- | --- | --- |',
  ]
  for name, res in report['results'].items():
    for s in SIDES:
      r = res['sides'][s]
      b1, bn = r['b1_ms'], r['bn_img_s']
      lines.append(
        f'| {name} | {s} | {b1["median"]:.1f} ({b1["min"]:.1f}-{b1["max"]:.1f}) '
        f'| {r["b1_speedup_vs_torch"]:.2f}x | {bn["median"]:.0f} ({bn["min"]:.0f}-{bn["max"]:.0f}) '
        f'| {r["bn_speedup_vs_torch"]:.2f}x | {r["b1_logits_vs_jax"]:.1e} |'
      )
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  cli.setup_logging(args.verbosity, show_own_info=True)
  if args.quick:
    args.resolution, args.batch, args.reps = 64, 8, 3
  cpus = pinning_lib.pin_threads(args.threads)['cpus']
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import torch
  from absl import logging

  from benchmarks import timing

  torch.set_num_threads(args.threads)
  report = {
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'command': 'python -m benchmarks.deploy_latency '
    + ' '.join(argv if argv is not None else sys.argv[1:]),
    'machine': timing.machine_info(),
    'cpus': cpus,
    'threads': args.threads,
    'resolution': args.resolution,
    'batch': args.batch,
    'reps': args.reps,
    'loadavg_start': timing.loadavg(),
    'results': {},
  }
  with tempfile.TemporaryDirectory(prefix='deploy_latency-') as root:
    for name in args.models:
      logging.info('%s: building, exporting and checking the files', name)
      model_dir = _model_dir(root, name, args.resolution)
      sides, parity = _sides(model_dir, root, name, args.resolution, args.batch, args.threads)
      logging.info('%s: timing %s', name, ', '.join(sides))
      report['results'][name] = {
        'export_relative_error': parity,
        'sides': _measure(sides, args.resolution, args.batch, args.reps),
      }
  report['loadavg_end'] = timing.loadavg()
  table = markdown(report)
  report_lib.write_with_table(args.out, report, table, indent=2)
  print(table)
  print(
    f'{args.resolution}px, {args.threads} thread(s) on CPUs {cpus}; load average '
    f'{report["loadavg_start"]} at the start, {report["loadavg_end"]} at the end'
  )
  return report


if __name__ == '__main__':
  main()
