"""The train step's convolutions and BatchNorms one shape at a time, JAX against PyTorch (not a test).

  python -m benchmarks.layer_compare --resolution 48 --out benchmarks/results/layer_compare_r_48_cpu.json
  python -m benchmarks.layer_compare --structure zennet_m --resolution 112 --threads 1 --out /tmp/m.json

Issue "Small faces at full speed" asks where the step loses to PyTorch. `step_profile` names
XLA's ops, but one fusion mixes several layers, and PyTorch's profiler names aten ops, so
neither says which layer JAX loses on. This does: every distinct conv and BatchNorm shape the
model runs at `--resolution` (found by intercepting the model's own layers) is timed on its own,
forward and backward against a fixed cotangent (kernel and input gradients; no input gradient
for the stem, whose input is the image; BatchNorm in training mode, gradients of input, scale
and bias). Sides: JAX with the model's kernel choice (`auto`), JAX with XLA's plain ops (`xla`),
PyTorch eager NCHW and channels_last, on the same weights, alternating rep by rep, pinned to
the same cores as `benchmarks.run` does. Each side's gradients are checked against the first's.
Multiplied by how often the model runs each shape, the rows add up to the part of one train
step these layers take on each side.
"""

from __future__ import annotations

import collections
import sys
import time

from benchmarks import pinning as pinning_lib
from benchmarks import report, timing
from zenfer_jax import cli

SIDES = ('jax_auto', 'jax_xla', 'torch_nchw', 'torch_channels_last')
NUM_CLASSES = 7


def parse_args(argv: list[str] | None = None):
  p = cli.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--structure', default='zennet_r', help="'zennet_r', 'zennet_m' or a structure")
  p.add_argument('--no_sa', action='store_true', help='without the SA blocks')
  p.add_argument('--resolution', type=cli.positive_int, default=48)
  p.add_argument('--batch', type=cli.positive_int, default=64)
  p.add_argument('--reps', type=cli.positive_int, default=7)
  p.add_argument('--min_rep_ms', type=float, default=20.0, help='calls per rep reach this')
  p.add_argument('--threads', type=int, default=0, help='cores to pin to (0: all)')
  p.add_argument('--out', required=True, help='JSON file to write (and .md beside it)')
  return p.parse_args(argv)


def layer_shapes(structure: str, resolution: int, batch: int, use_sa: bool = True) -> list[dict]:
  """The model's distinct Conv and BatchNorm calls in a training forward pass, with counts.

  Read from the model itself (flax method interception under `jax.eval_shape`), so the list is
  what the train step runs, stem and projections included, in first-use order.
  """
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from zenfer_jax.model import zennet
  from zenfer_jax.model.layers.batchnorm import BatchNorm
  from zenfer_jax.model.layers.conv import Conv

  model = zennet.build_model(structure, NUM_CLASSES, use_sa=use_sa)
  counts: collections.Counter = collections.Counter()
  order: list[tuple] = []

  def intercept(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name == '__call__' and isinstance(mod, (Conv, BatchNorm)):
      shape = tuple(int(d) for d in args[0].shape)
      if isinstance(mod, Conv):
        key = ('conv', shape, mod.features, mod.kernel_size, mod.stride, mod.groups)
      else:
        key = ('batchnorm', shape, shape[-1], 1, 1, 1)
      if key not in counts:
        order.append(key)
      counts[key] += 1
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)
  with nn.intercept_methods(intercept):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=True), x)
  rows = []
  for i, (kind, shape, cout, k, stride, groups) in enumerate(order):
    rows.append(
      {
        'kind': kind,
        'input': list(shape),
        'cin': shape[-1],
        'cout': cout,
        'kernel': k,
        'stride': stride,
        'groups': groups,
        'count': counts[order[i]],
        # The stem reads the image: the step never asks for its input gradient.
        'input_grad': not (kind == 'conv' and i == 0),
      }
    )
  return rows


def _conv_cases(row: dict, seed: int) -> dict:
  import jax
  import numpy as np
  import torch

  from zenfer_jax.model.layers.conv import Conv

  rng = np.random.default_rng(seed)
  n, h, w, cin = row['input']
  k, s, g, cout = row['kernel'], row['stride'], row['groups'], row['cout']
  x = rng.standard_normal((n, h, w, cin), dtype=np.float32)
  kernel = (rng.standard_normal((k, k, cin // g, cout)) / np.sqrt(k * k * cin / g)).astype(
    np.float32
  )
  ho, wo = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
  ct = rng.standard_normal((n, ho, wo, cout), dtype=np.float32)
  cases = {}
  for impl in ('auto', 'xla'):
    mod = Conv(cout, k, s, groups=g, impl=impl)

    def f(kernel, x, ct, mod=mod):
      def fwd(kernel, x):
        return mod.apply({'params': {'kernel': kernel}}, x)

      # The first cotangent is the kernel's either way.
      y, pull = (
        jax.vjp(fwd, kernel, x)
        if row['input_grad']
        else jax.vjp(lambda kernel: fwd(kernel, x), kernel)
      )
      return y, pull(ct)

    fn = jax.jit(f)
    args = [jax.device_put(a) for a in (kernel, x, ct)]
    cases[f'jax_{impl}'] = (
      lambda fn=fn, args=args: jax.block_until_ready(fn(*args)),
      lambda fn=fn, args=args: np.asarray(fn(*args)[1][0]),
    )
  for fmt_name, fmt in (('nchw', torch.contiguous_format), ('channels_last', torch.channels_last)):
    conv = torch.nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
    with torch.no_grad():
      conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
    conv = conv.to(memory_format=fmt)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    xt.requires_grad_(row['input_grad'])
    ctt = torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    def run(conv=conv, xt=xt, ctt=ctt):
      conv.weight.grad = None
      xt.grad = None
      conv(xt).backward(ctt)

    def kgrad(conv=conv, run=run):
      run()
      return conv.weight.grad.detach().numpy().transpose(2, 3, 1, 0)

    cases[f'torch_{fmt_name}'] = (run, kgrad)
  return cases


def _batchnorm_cases(row: dict, seed: int) -> dict:
  import jax
  import numpy as np
  import torch

  from zenfer_jax.model.layers.batchnorm import BatchNorm

  rng = np.random.default_rng(seed)
  shape = tuple(row['input'])
  c = shape[-1]
  x = rng.standard_normal(shape, dtype=np.float32)
  scale = (1.0 + 0.1 * rng.standard_normal(c)).astype(np.float32)
  bias = (0.1 * rng.standard_normal(c)).astype(np.float32)
  ct = rng.standard_normal(shape, dtype=np.float32)
  stats = {'mean': np.zeros(c, np.float32), 'var': np.ones(c, np.float32)}
  cases = {}
  for impl in ('auto', 'xla'):
    mod = BatchNorm(momentum=0.99, epsilon=1e-3, impl=impl)

    def f(params, x, ct, mod=mod):
      def fwd(params, x):
        y, upd = mod.apply(
          {'params': params, 'batch_stats': stats}, x, False, mutable=['batch_stats']
        )
        return y, upd

      y, pull, upd = jax.vjp(fwd, params, x, has_aux=True)
      return y, pull(ct), upd

    fn = jax.jit(f)
    args = [jax.device_put(a) for a in ({'scale': scale, 'bias': bias}, x, ct)]
    cases[f'jax_{impl}'] = (
      lambda fn=fn, args=args: jax.block_until_ready(fn(*args)),
      lambda fn=fn, args=args: np.asarray(fn(*args)[1][0]['scale']),
    )
  for fmt_name, fmt in (('nchw', torch.contiguous_format), ('channels_last', torch.channels_last)):
    bn = torch.nn.BatchNorm2d(c, eps=1e-3, momentum=0.01).train()
    with torch.no_grad():
      bn.weight.copy_(torch.from_numpy(scale))
      bn.bias.copy_(torch.from_numpy(bias))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt).requires_grad_()
    ctt = torch.from_numpy(ct).permute(0, 3, 1, 2).contiguous(memory_format=fmt)

    def run(bn=bn, xt=xt, ctt=ctt):
      bn.weight.grad = bn.bias.grad = xt.grad = None
      bn(xt).backward(ctt)

    def sgrad(bn=bn, run=run):
      run()
      return bn.weight.grad.detach().numpy()

    cases[f'torch_{fmt_name}'] = (run, sgrad)
  return cases


def measure(row: dict, *, reps: int, min_rep_ms: float, seed: int = 0) -> dict:
  """One shape on every side: median ms per forward+backward, and the gradients' agreement."""
  import numpy as np

  cases = (_conv_cases if row['kind'] == 'conv' else _batchnorm_cases)(row, seed)
  # Each gradient runs its side once: the compile, and oneDNN's choice of kernels, happen here.
  grads = {name: grad() for name, (_, grad) in cases.items()}
  ref = grads[SIDES[0]]
  scale = float(np.abs(ref).max()) or 1.0
  diff = {name: float(np.abs(g - ref).max()) / scale for name, g in grads.items()}
  runs = {name: run for name, (run, _) in cases.items()}
  t0 = time.perf_counter()
  runs[SIDES[0]]()
  calls = max(1, int(min_rep_ms / 1e3 / max(time.perf_counter() - t0, 1e-6)))
  times = timing.time_alternating(runs, reps=reps, warmup=1, calls_per_rep=calls)
  ms = {name: 1e3 * timing.summarize(t)['seconds_median'] / calls for name, t in times.items()}
  best_torch = min(ms['torch_nchw'], ms['torch_channels_last'])
  return {
    **row,
    'ms': ms,
    'calls_per_rep': calls,
    'torch_best_over_jax_auto': best_torch / ms['jax_auto'],
    'grad_rel_diff': diff,
  }


def summarize_rows(rows: list[dict]) -> dict:
  """Per kind and in all: each side's milliseconds per train step (rows weighted by count)."""
  out = {}
  for kind in ('conv', 'batchnorm', 'all'):
    chosen = [r for r in rows if kind in ('all', r['kind'])]
    out[kind] = {s: sum(r['count'] * r['ms'][s] for r in chosen) for s in SIDES}
  return out


def _label(r: dict) -> str:
  n, h, w, c = r['input']
  if r['kind'] == 'batchnorm':
    return f'BatchNorm {h}x{w}x{c}'
  dense = '' if r['groups'] == 1 else f' groups {r["groups"]}'
  stem = ' (stem)' if not r['input_grad'] else ''
  return (
    f'conv {r["kernel"]}x{r["kernel"]} {c}->{r["cout"]} stride {r["stride"]} at {h}x{w}'
    f'{dense}{stem}'
  )


def markdown(rep: dict) -> str:
  s = rep['settings']
  lines = [
    f'{s["structure"]} at {s["resolution"]} px, batch {s["batch"]}, {rep["threads"]} thread(s): '
    'ms per forward+backward, median; x count = per train step',
    '',
    '| layer | count | JAX (model) | JAX (XLA ops) | PyTorch NCHW | PyTorch channels_last '
    '| best PyTorch / JAX |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rep['rows']:
    m = r['ms']
    lines.append(
      f'| {_label(r)} | {r["count"]} | {m["jax_auto"]:.2f} | {m["jax_xla"]:.2f} '
      f'| {m["torch_nchw"]:.2f} | {m["torch_channels_last"]:.2f} '
      f'| {r["torch_best_over_jax_auto"]:.2f}x |'
    )
  for kind, tot in rep['per_step_ms'].items():
    best = min(tot['torch_nchw'], tot['torch_channels_last'])
    lines.append(
      f'| **{kind}, per step** | | {tot["jax_auto"]:.1f} | {tot["jax_xla"]:.1f} '
      f'| {tot["torch_nchw"]:.1f} | {tot["torch_channels_last"]:.1f} '
      f'| {best / tot["jax_auto"]:.2f}x |'
    )
  return '\n'.join(lines) + '\n'


@cli.command
def main(argv=None) -> int:
  args = parse_args(argv)
  # Before JAX and PyTorch start, as benchmarks.run pins its sides.
  pinning = pinning_lib.pin_threads(args.threads)
  threads = pinning['threads']
  import jax
  import torch

  torch.set_num_threads(threads)
  rows = layer_shapes(args.structure, args.resolution, args.batch, use_sa=not args.no_sa)
  measured = []
  for i, row in enumerate(rows):
    measured.append(measure(row, reps=args.reps, min_rep_ms=args.min_rep_ms, seed=i))
    print(f'{_label(row)}: ' + ', '.join(f'{k} {v:.2f}' for k, v in measured[-1]['ms'].items()))
  rep = {
    'command': 'python -m benchmarks.layer_compare '
    + ' '.join(sys.argv[1:] if argv is None else argv),
    'settings': {k: v for k, v in vars(args).items() if k != 'out'},
    'threads': threads,
    'threading': pinning,
    'machine': timing.machine_info(),
    'versions': {'jax': jax.__version__, 'torch': torch.__version__},
    'rows': measured,
    'per_step_ms': summarize_rows(measured),
  }
  md = markdown(rep)
  report.write_with_table(args.out, rep, md, indent=2)
  print(md)
  return 0


if __name__ == '__main__':
  sys.exit(main())
