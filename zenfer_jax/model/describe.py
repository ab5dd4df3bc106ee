"""Per-block table of a ZenNet: output shape, trainable parameters and reference FLOPs.

    python -m zenfer_jax.model.describe --model zennet_m --use_sa
    python -m zenfer_jax.model.describe --structure 'SuperConvK3BNRELU(3,8,2,1)...' --resolution 112

Shapes come from tracing the real Flax model (no compute), parameters from its
variables, FLOPs and model size from the reference counters that search
budgets use.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from zenfer_jax import cli
from zenfer_jax.model import counters
from zenfer_jax.model.structure import StructureError, check_resolution, resolve
from zenfer_jax.model.zennet import build_model, count_params

__all__ = ['describe', 'main']


def describe(
  structure,
  *,
  resolution: int = 224,
  num_classes: int = 7,
  use_sa: bool = False,
  use_lw_att: bool = False,
) -> dict:
  """Rows per block plus totals, as plain data (used by the CLI and tests)."""
  s = resolve(structure)
  check_resolution(s, resolution)
  model = build_model(s, num_classes, use_sa=use_sa, use_lw_att=use_lw_att)
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
  params = variables['params']

  # Output shape of each block: trace the backbone one block deeper each time is wasteful;
  # capture intermediates instead.
  def run(v, xx):
    return model.apply(v, xx, train=False, capture_intermediates=True, mutable=['intermediates'])

  _, state = jax.eval_shape(run, variables, x)
  inter = state['intermediates']['backbone']
  counts = counters.block_counts(s, resolution, use_sa=use_sa)
  rows = []
  for i, block in enumerate(s):
    out = inter[f'block{i}']['__call__'][0]
    rows.append(
      {
        'block': i,
        'type': block.type_name,
        'text': str(block),
        'output_shape': tuple(int(d) for d in out.shape[1:]),
        'params': count_params(params['backbone'][f'block{i}']),
        'reference_flops': counts[i][0],
        'reference_model_size': counts[i][1],
      }
    )
  head_params = count_params(params) - sum(r['params'] for r in rows)
  return {
    'structure': str(s),
    'resolution': resolution,
    'rows': rows,
    'head_params': head_params,
    'total_params': count_params(params),
    'reference_flops': counters.flops(s, resolution, num_classes=num_classes, use_sa=use_sa),
    'reference_model_size': counters.model_size(s, num_classes=num_classes, use_sa=use_sa),
    'num_layers': counters.num_layers(s),
  }


def format_table(info: dict) -> str:
  lines = [
    f'structure: {info["structure"]}',
    f'input: {info["resolution"]}x{info["resolution"]}x3',
    '',
    f'{"#":>2}  {"block":<22} {"output (HxWxC)":<16} {"params":>10} {"ref FLOPs":>14}',
  ]
  for r in info['rows']:
    shape = 'x'.join(str(d) for d in r['output_shape'])
    lines.append(
      f'{r["block"]:>2}  {r["type"]:<22} {shape:<16} {r["params"]:>10,} {r["reference_flops"]:>14,.0f}'
    )
  lines += [
    f'    {"head (pool, lw_att, fc)":<22} {"":<16} {info["head_params"]:>10,}',
    '',
    f'trainable parameters:        {info["total_params"]:,}',
    f'reference FLOPs counter:     {info["reference_flops"]:,.0f} ({info["reference_flops"] / 1e6:.1f}M)',
    f'reference model-size counter:{info["reference_model_size"]:,.0f}',
    f'layers (sum of sub_layers):  {info["num_layers"]}',
  ]
  return '\n'.join(lines)


@cli.command
def main(argv: list[str] | None = None) -> int:
  parser = cli.ArgumentParser(
    prog='python -m zenfer_jax.model.describe', description=__doc__.splitlines()[0]
  )
  parser.add_argument('--model', default='zennet_m', help='preset name (zennet_m, zennet_r)')
  parser.add_argument(
    '--structure', default=None, help='structure string or file (overrides --model)'
  )
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--num_classes', type=cli.positive_int, default=7)
  parser.add_argument('--use_sa', action='store_true')
  parser.add_argument('--use_lw_att', action='store_true')
  args = parser.parse_args(argv)
  cli.setup_logging(args.verbosity)
  try:
    info = describe(
      args.structure or args.model,
      resolution=args.resolution,
      num_classes=args.num_classes,
      use_sa=args.use_sa,
      use_lw_att=args.use_lw_att,
    )
  except (StructureError, ValueError) as e:
    return cli.report(e)
  print(format_table(info))
  return 0


if __name__ == '__main__':
  sys.exit(main())
