"""CPU train step over several XLA host devices (pmap across the cores) against one, and PyTorch.

  python -m benchmarks.host_devices --out benchmarks/results/host_devices_cpu.json
  python -m benchmarks.host_devices --resolution 48 --devices 1,2 --rounds 3 --reps 8

Why: XLA's CPU backend runs many of a small step's fusions on one thread, so on a 2-core machine
one device leaves part of the second core idle. `--xla_force_host_platform_device_count=N`
makes N CPU devices, and `pmap` runs the same step on N slices of the batch at once (gradients
averaged across them, BatchNorm per slice as in any data-parallel run unless cross-device
BatchNorm is asked for). This measures whether that pays for the train step alone, beside
PyTorch eager (NCHW and channels_last) with the same number of threads.

Each case is a fresh process (XLA_FLAGS must be set before JAX starts), the cases alternate
round by round so a change of load hits all of them, and each reports the median images/s over
--reps timed steps after 3 warm-up steps. The step is benchmarks.train_throughput's: label
smoothing, forward in train mode, soft-target cross-entropy, backward, weight decay on the
kernels, SGD Nesterov, BatchNorm statistics; same initial weights and inputs on every side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(case: str, structure: str, resolution: int, batch: int, reps: int) -> dict:
  """One case in this process: 'torch', 'torch_cl' or 'jax<N>' (N host devices)."""
  if case.startswith('torch'):
    import torch

    from benchmarks.train_throughput import TorchTrainCase

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    c = TorchTrainCase(
      structure, use_sa=True, batch=batch, resolution=resolution, channels_last=case == 'torch_cl'
    )
    run = c.run
  else:
    run = _jax_step(int(case[3:]), structure, resolution, batch)
  for _ in range(3):
    run()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return {'images_per_second': batch / float(np.median(times)), 'best': batch / min(times)}


def _jax_step(devices: int, structure: str, resolution: int, batch: int):
  import jax
  import jax.numpy as jnp
  import optax

  from benchmarks.train_throughput import (
    LR,
    MOMENTUM,
    NUM_CLASSES,
    WEIGHT_DECAY,
    initial_variables,
    synthetic_batch,
  )
  from zenfer_jax.model import zennet
  from zenfer_jax.training import losses, optim, parallel

  if jax.local_device_count() != devices:
    raise RuntimeError(f'asked for {devices} host devices, JAX has {jax.local_device_count()}')
  model = zennet.build_model(structure, NUM_CLASSES, use_sa=True)
  v = initial_variables(structure, True, 0)
  params, stats = v['params'], v['batch_stats']
  tx = optax.chain(
    optax.masked(optax.add_decayed_weights(WEIGHT_DECAY), optim.weight_decay_mask(params)),
    optax.sgd(LR, momentum=MOMENTUM, nesterov=True),
  )
  axis = 'batch' if devices > 1 else None

  def step(params, stats, opt, images, labels):
    targets = losses.smooth_one_hot(labels, NUM_CLASSES, 0.1)

    def loss_fn(p):
      logits, new = model.apply(
        {'params': p, 'batch_stats': stats}, images, train=True, mutable=['batch_stats']
      )
      return losses.soft_cross_entropy(logits, targets), new['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if axis:
      grads = jax.lax.pmean(grads, axis)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), new_stats, opt, loss

  images, labels = synthetic_batch(batch, resolution, 0)
  state = [params, stats, tx.init(params)]
  if axis:
    fn = jax.pmap(step, axis_name=axis, donate_argnums=(0, 1, 2))
    state = [parallel.replicate(x) for x in state]
    images = jnp.asarray(images).reshape(devices, batch // devices, *images.shape[1:])
    labels = jnp.asarray(labels).reshape(devices, batch // devices)
  else:
    fn = jax.jit(step, donate_argnums=(0, 1, 2))
    images, labels = jnp.asarray(images), jnp.asarray(labels)

  def run():
    out = fn(*state, images, labels)
    state[:] = out[:3]
    jax.block_until_ready(out)

  return run


def _run_case(case: str, args) -> dict:
  env = dict(os.environ)
  if case.startswith('jax'):
    n = int(case[3:])
    flags = env.get('XLA_FLAGS', '')
    env['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={n}'.strip()
  cmd = [sys.executable, '-m', 'benchmarks.host_devices', '--_child', case]
  cmd += ['--structure', args.structure, '--resolution', str(args.resolution)]
  cmd += ['--batch', str(args.batch), '--reps', str(args.reps)]
  out = subprocess.run(cmd, env=env, cwd=_ROOT, capture_output=True, text=True, timeout=900)
  if out.returncode:
    return {'error': (out.stderr or out.stdout).strip().splitlines()[-1:]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog='python -m benchmarks.host_devices', description=__doc__)
  p.add_argument('--structure', default='zennet_r')
  p.add_argument('--resolution', type=int, default=48)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--devices', default='1,2', help='JAX host device counts to time')
  p.add_argument('--torch', default='torch,torch_cl', help="PyTorch sides ('' for none)")
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--reps', type=int, default=8)
  p.add_argument('--out', default=None)
  p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:
    r = _child(args._child, args.structure, args.resolution, args.batch, args.reps)
    print(json.dumps(r))
    return r
  cases = [f'jax{int(n)}' for n in args.devices.split(',') if n.strip()]
  cases += [t for t in args.torch.split(',') if t.strip()]
  runs = {c: [] for c in cases}
  load = [os.getloadavg()]
  for r in range(args.rounds):
    for c in cases:
      runs[c].append(_run_case(c, args))
      print(f'round {r + 1} {c}: {runs[c][-1]}', file=sys.stderr, flush=True)
  load.append(os.getloadavg())
  rates = {
    c: [x['images_per_second'] for x in v if 'images_per_second' in x] for c, v in runs.items()
  }
  summary = {c: float(np.median(v)) if v else None for c, v in rates.items()}
  best_torch = max((summary[t] or 0.0 for t in cases if t.startswith('torch')), default=0.0)
  report = {
    'command': 'python -m benchmarks.host_devices '
    + ' '.join(sys.argv[1:] if argv is None else argv),
    'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    'cpus': len(os.sched_getaffinity(0)),
    'structure': args.structure,
    'resolution': args.resolution,
    'batch': args.batch,
    'loadavg_start_end': load,
    'runs': runs,
    'images_per_second_median_of_rounds': summary,
    'ratio_to_best_torch': {
      c: (summary[c] / best_torch if summary[c] and best_torch else None)
      for c in cases
      if c.startswith('jax')
    },
  }
  text = json.dumps(report, indent=1)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  print(text)
  return report


if __name__ == '__main__':
  main()
