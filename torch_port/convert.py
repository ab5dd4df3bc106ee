"""PyTorch ZenNet-SA-FER checkpoints -> zenfer_jax variables and model directories.

Python::

    variables = torch_port.load_torch_checkpoint("best-params_rank0.pth", "zennet_m", 7, use_sa=True)
    model = build_model("zennet_m", 7, use_sa=True)
    logits = model.apply(variables, images_nhwc, train=False)

Command line (writes an orbax checkpoint and a model card to DIR, atomically)::

    python -m torch_port.convert --checkpoint X.pth --model zennet_m --num_classes 7 --use_sa --output DIR

Loading is strict: any missing, unexpected or mis-shaped key fails with one
error listing all of them, with a hint when the cause is recognisable (SA or
lw_att flags, class count, structure). `only_backbone` is the original's
transfer option (`load_model(..., only_backbone=True)`), decided by the rule
training's `init_from` uses (`zenfer_jax.training.init.merge_matching`): every
checkpoint tensor whose key this model has, with the same PyTorch shape, is
loaded; every other array keeps its fresh initialisation. So the classifier is
fresh when the class count differs and loaded when it matches, lw_att is loaded
when both models have it, and an array of another width starts fresh instead of
failing. The command line records what was copied and what was left, with the
reason, in the model card's `init_from` field, as training does in init_from.json.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from flax import traverse_util

from torch_port import mapping
from torch_port.checkpoint_file import (
  CheckpointFormatError,
  describe_source,
  extract_state_dict,
  read_checkpoint,
)
from zenfer_jax import cli, dataset_names
from zenfer_jax.model.structure import Structure, StructureError, resolve
from zenfer_jax.rundir import model_directory

__all__ = [
  'CheckpointMismatchError',
  'LoadReport',
  'convert_state_dict',
  'load_torch_checkpoint',
  'main',
]


class CheckpointMismatchError(model_directory.MergeError):
  """A checkpoint whose keys or shapes do not fit the requested model (every problem listed)."""

  def __init__(
    self, missing, unexpected, misshaped, hints: Sequence[str] = (), what: str = 'checkpoint'
  ):
    super().__init__(missing, unexpected, misshaped, what=what, source='checkpoint')
    self.hints = list(hints)
    if self.hints:
      self.args = (self.args[0] + '\n' + '\n'.join(f'hint: {h}' for h in self.hints),)

  def __str__(self) -> str:
    return self.args[0]


@dataclasses.dataclass
class LoadReport:
  loaded: int = 0  # state_dict tensors converted
  left_at_init: list[str] = dataclasses.field(default_factory=list)  # Flax paths
  discarded: list[str] = dataclasses.field(default_factory=list)  # checkpoint keys not used
  source: str = ''
  # only_backbone: training's TransferReport (Flax paths; why each array was left at init).
  transfer: Any = None
  source_num_classes: int | None = None  # The checkpoint classifier's outputs, when it has one.

  def summary(self) -> str:
    lines = [f'loaded {self.loaded} tensors']
    if self.left_at_init:
      lines.append(
        f'left at initialisation ({len(self.left_at_init)}): ' + ', '.join(self.left_at_init)
      )
    if self.discarded:
      lines.append(
        f'discarded from the checkpoint ({len(self.discarded)}): ' + ', '.join(self.discarded)
      )
    return '; '.join(lines)


_BLOCK_RE = re.compile(r'^module_list\.(\d+)\.')


def _hints(
  sd: Mapping,
  problem_keys: Sequence[str],
  structure: Structure,
  num_classes: int,
  use_sa: bool,
  use_lw_att: bool,
) -> list[str]:
  """Plain-language causes for the usual mismatches (flags, class count, structure)."""
  hints = []
  has_sa = any(k.endswith('.cweight') and not k.startswith(mapping.LW_ATT_PREFIX) for k in sd)
  has_lw = any(k.startswith(mapping.LW_ATT_PREFIX) for k in sd)
  if has_sa and not use_sa:
    hints.append(
      'the checkpoint has SA blocks (...cweight keys): load it with use_sa=True / --use_sa'
    )
  if not has_sa and use_sa:
    hints.append('the checkpoint has no SA blocks: load it with use_sa=False (drop --use_sa)')
  if has_lw and not use_lw_att:
    hints.append('the checkpoint has an lw_att head: load it with use_lw_att=True / --use_lw_att')
  if not has_lw and use_lw_att:
    hints.append(
      'the checkpoint has no lw_att head: load it with use_lw_att=False (drop --use_lw_att)'
    )
  w = sd.get(mapping.CLASSIFIER_PREFIX + 'netblock.weight')
  if w is not None and np.ndim(w) == 2:
    if w.shape[0] != num_classes:
      hints.append(
        f"the checkpoint's classifier has {w.shape[0]} classes, not {num_classes}: pass "
        f'num_classes={w.shape[0]} (--num_classes {w.shape[0]}), or only_backbone=True to train a new head'
      )
    if w.shape[1] != structure.out_channels:
      hints.append(
        f"the checkpoint's classifier reads {w.shape[1]} features but the structure ends with "
        f'{structure.out_channels} channels: the structure does not match this checkpoint'
      )
  blocks = {int(m.group(1)) for k in sd for m in [_BLOCK_RE.match(k)] if m}
  if blocks and max(blocks) + 1 != len(structure):
    hints.append(
      f'the checkpoint has {max(blocks) + 1} super-blocks (module_list.0..{max(blocks)}), the structure '
      f'has {len(structure)}: the structure does not match this checkpoint'
    )
  backbone_problem = any(_BLOCK_RE.match(k) and not _is_sa_key(k) for k in problem_keys)
  sa_flag_wrong = has_sa != use_sa
  if backbone_problem and not sa_flag_wrong and not any('structure' in h for h in hints):
    hints.append(
      'backbone keys or shapes differ: check that the structure is the one the checkpoint was trained with'
    )
  return hints


def _is_sa_key(key: str) -> bool:
  return (
    key.rsplit('.', 1)[-1] in ('cweight', 'cbias', 'sweight', 'sbias') or '.netblock.gn.' in key
  )


def _check_keys(
  sd: Mapping, expected: Sequence[mapping.Entry], skip, structure, num_classes, use_sa, use_lw_att
):
  exp = {e.torch_key: e for e in expected}
  missing = [e.torch_key for e in expected if e.torch_key not in sd and not skip(e.torch_key)]
  unexpected = [k for k in sd if k not in exp and not skip(k)]
  misshaped = [
    (k, tuple(np.shape(v)), exp[k].torch_shape)
    for k, v in sd.items()
    if k in exp and not skip(k) and tuple(np.shape(v)) != exp[k].torch_shape
  ]
  if missing or unexpected or misshaped:
    problem_keys = missing + unexpected + [k for k, _, _ in misshaped]
    raise CheckpointMismatchError(
      missing,
      unexpected,
      misshaped,
      hints=_hints(sd, problem_keys, structure, num_classes, use_sa, use_lw_att),
      what=f'checkpoint (for {structure}, {num_classes} classes, use_sa={use_sa}, use_lw_att={use_lw_att})',
    )


def convert_state_dict(
  state_dict: Mapping,
  structure: str | os.PathLike | Structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  only_backbone: bool = False,
  rng: Any = None,
) -> tuple[dict, LoadReport]:
  """(variables, report) from a flat state_dict of numpy arrays or tensors (prefixes already handled or not)."""
  s = resolve(structure)
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
  sd = extract_state_dict(state_dict, where='state_dict')
  expected = mapping.entries(s, num_classes, use_sa=use_sa, use_lw_att=use_lw_att)
  if only_backbone:
    return _convert_matching(sd, s, num_classes, expected, use_sa, use_lw_att, rng)

  _check_keys(sd, expected, lambda key: False, s, num_classes, use_sa, use_lw_att)
  flat = {}
  for e in expected:
    if e.collection is not None:
      flat[(e.collection, *e.path)] = mapping.to_flax(np.asarray(sd[e.torch_key]), e.kind).astype(
        np.float32
      )
  variables = traverse_util.unflatten_dict(flat)
  variables.setdefault('params', {})
  variables.setdefault('batch_stats', {})
  return variables, LoadReport(loaded=len(expected))


def _convert_matching(
  sd: Mapping[str, np.ndarray],
  s: Structure,
  num_classes: int,
  expected: Sequence[mapping.Entry],
  use_sa: bool,
  use_lw_att: bool,
  rng: Any,
) -> tuple[dict, LoadReport]:
  """The original's only_backbone, by the rule training's `init_from` uses.

  The rule (`zenfer_jax.training.init.merge_matching`) is applied where the original applies
  it: to the checkpoint's state_dict and the fresh model's state_dict in PyTorch layout, so a name
  and a shape decide exactly as `load_model(..., only_backbone=True)` decides. The merged
  state_dict then goes through the strict conversion.
  """
  import jax

  from zenfer_jax.model.zennet import build_model, init_variables
  from zenfer_jax.training.init import TransferReport, merge_matching

  model = build_model(s, num_classes, use_sa=use_sa, use_lw_att=use_lw_att)
  fresh = init_variables(model, rng if rng is not None else jax.random.PRNGKey(0), resolution=32)
  fresh = traverse_util.flatten_dict(jax.device_get(dict(fresh)), sep='/')
  fresh_sd = {
    e.torch_key: (
      np.zeros((), np.int64)
      if e.collection is None
      else mapping.to_torch(np.asarray(fresh[e.flax_path], np.float32), e.kind)
    )
    for e in expected
  }
  merged_sd, transfer = merge_matching(fresh_sd, sd)
  variables, _ = convert_state_dict(merged_sd, s, num_classes, use_sa=use_sa, use_lw_att=use_lw_att)
  variables = jax.tree_util.tree_map(np.asarray, variables)

  # The report in this model's Flax paths, like training's init_from.json. Counters
  # (num_batches_tracked) have no Flax counterpart: they count as loaded, nothing more.
  flax_path = {e.torch_key: e.flax_path for e in expected if e.collection is not None}
  shapes = {e.torch_key: e.torch_shape for e in expected}
  copied = [flax_path[k] for k in transfer.copied if k in flax_path]
  fresh_why = []
  for key, _ in transfer.fresh:
    if key not in flax_path:
      continue
    why = (
      'not in the checkpoint'
      if key not in sd
      else f'shape {tuple(np.shape(sd[key]))} in the checkpoint, {shapes[key]} here '
      '(PyTorch layout)'
    )
    fresh_why.append((flax_path[key], why))
  taken = set(transfer.copied)
  report = LoadReport(
    loaded=len(taken),
    left_at_init=sorted(p for p, _ in fresh_why),
    discarded=[k for k in sd if k not in taken],
    transfer=TransferReport(sorted(copied), sorted(fresh_why), transfer.unused),
  )
  head = sd.get(mapping.CLASSIFIER_PREFIX + 'netblock.bias')
  if head is not None and np.ndim(head) == 1:
    report.source_num_classes = int(np.shape(head)[0])
  return variables, report


def load_torch_checkpoint(
  path_or_state_dict: str | os.PathLike | Mapping,
  structure,
  num_classes: int,
  *,
  use_sa: bool = False,
  use_lw_att: bool = False,
  only_backbone: bool = False,
  rng: Any = None,
) -> dict:
  """{'params', 'batch_stats'} for `build_model(structure, num_classes, use_sa=..., use_lw_att=...)`.

  Accepts a path (.pth, .pth.tar, .safetensors), a loaded checkpoint dict or a
  bare state_dict; {'state_dict': ...} wrappers and 'module.' prefixes are
  handled. Strict unless `only_backbone`, which loads every tensor whose key
  and shape this model has and leaves the rest at a fresh initialisation from
  `rng` (module docstring), logging what it left.
  """
  variables, report = _convert_any(
    path_or_state_dict,
    structure,
    num_classes,
    use_sa=use_sa,
    use_lw_att=use_lw_att,
    only_backbone=only_backbone,
    rng=rng,
  )
  if report.left_at_init or report.discarded:
    logging.warning('only_backbone: %s', report.summary())
  return variables


def _convert_any(src, structure, num_classes, **kw) -> tuple[dict, LoadReport]:
  if isinstance(src, (str, os.PathLike)):
    obj = read_checkpoint(src)
    where = os.fspath(src)
  else:
    obj, where = src, 'state_dict'
  sd = extract_state_dict(obj, where=where)
  variables, report = convert_state_dict(sd, structure, num_classes, **kw)
  report.source = describe_source(obj)
  return variables, report


# ---------------------------------------------------------------------------
# Command line


def _class_names(args) -> list[str] | None:
  if args.class_names:
    if os.path.isfile(args.class_names):
      with open(args.class_names, encoding='utf-8') as f:
        return [ln.strip() for ln in f if ln.strip()]
    return [n.strip() for n in args.class_names.split(',')]
  if args.dataset:
    return list(dataset_names.class_names(args.dataset))
  return None


def _recipe(args) -> str | None:
  """--recipe, else the --dataset's own; a --recipe other than the dataset's is said aloud."""
  if args.dataset is None:
    return args.recipe
  usual = dataset_names.default_recipe(args.dataset)
  if args.recipe is not None and args.recipe != usual:
    logging.warning(
      '--recipe %s recorded, although %s is trained with the %s recipe',
      args.recipe,
      args.dataset,
      usual,
    )
  return args.recipe or usual


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m torch_port.convert',
    description='Convert a ZenNet-SA-FER PyTorch checkpoint into a zenfer_jax model directory '
    '(orbax checkpoint + model_card.json).',
  )
  p.add_argument('--checkpoint', required=True, help='.pth / .pth.tar / .safetensors file')
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument('--model', choices=('zennet_m', 'zennet_r'), help='a published structure')
  g.add_argument('--structure', help='a structure string or a file holding one')
  p.add_argument('--num_classes', type=cli.positive_int, required=True)
  p.add_argument('--use_sa', action='store_true', help='the checkpoint was trained with --use_sa')
  p.add_argument(
    '--use_lw_att', action='store_true', help='the checkpoint was trained with --use_lw_att'
  )
  p.add_argument(
    '--only_backbone',
    action='store_true',
    help="the original's transfer option: load every tensor whose key and shape this model "
    'has (the classifier only when the class count matches); the rest starts from a fresh '
    "initialisation, listed in the card's init_from field",
  )
  p.add_argument(
    '--seed', type=int, default=0, help='initialisation seed for what --only_backbone leaves fresh'
  )
  p.add_argument(
    '--class_names', help='comma-separated label names in label order, or a file with one per line'
  )
  p.add_argument(
    '--dataset',
    choices=('rafdb', 'affectnet/7cls', 'affectnet/8cls'),
    help="take the label names from this dataset's label order, and its preprocessing recipe "
    '(unless --recipe says otherwise)',
  )
  p.add_argument(
    '--recipe',
    choices=dataset_names.RECIPE_NAMES,
    help='the eval preprocessing the checkpoint was trained with, recorded in the card: rafdb '
    '(whole image resized), affectnet (shorter side resized, centre crop); default: the '
    "--dataset's recipe",
  )
  p.add_argument(
    '--image_size',
    type=cli.positive_int,
    default=224,
    help='input size the checkpoint was trained at (the original scripts use 224)',
  )
  p.add_argument('--output', required=True, help='model directory to create')
  p.add_argument(
    '--overwrite',
    action='store_true',
    help='replace an existing --output that is a model directory (model_card.json + variables/ '
    'only); any other directory is refused',
  )
  return p


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cli.setup_logging(args.verbosity)
  try:
    structure = resolve(args.model or args.structure)
    if args.class_names and args.dataset:
      raise ValueError('give --class_names or --dataset, not both')
    names = _class_names(args)
    recipe = _recipe(args)
    if names is not None and len(names) != args.num_classes:
      raise ValueError(f'{len(names)} class names given for --num_classes {args.num_classes}')
    out = os.path.abspath(args.output)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not args.overwrite:
      raise ValueError(
        f'--output {out} already exists and is not empty (pass --overwrite to replace it)'
      )
    # Before the conversion, so a refused --overwrite costs nothing.
    model_directory.check_replaceable(out, overwrite=args.overwrite)
    import jax

    variables, report = _convert_any(
      args.checkpoint,
      structure,
      args.num_classes,
      use_sa=args.use_sa,
      use_lw_att=args.use_lw_att,
      only_backbone=args.only_backbone,
      rng=jax.random.PRNGKey(args.seed),
    )
    source = f'torch:{os.path.abspath(args.checkpoint)}'
    if report.source:
      source += f' ({report.source})'
    if args.only_backbone:
      source += (
        f' [only_backbone: {len(report.transfer.copied)} arrays copied by name and shape, '
        f'{len(report.left_at_init)} left at initialisation]'
      )
    card = model_directory.make_card(
      str(structure),
      args.num_classes,
      use_sa=args.use_sa,
      use_lw_att=args.use_lw_att,
      class_names=names,
      image_size=args.image_size,
      recipe=recipe,
      source=source,
    )
    if args.only_backbone:
      # What training records in WORKDIR/init_from.json, in the card of the directory written.
      card['init_from'] = report.transfer.as_dict(
        os.path.abspath(args.checkpoint), {'num_classes': report.source_num_classes}
      )
    model_directory.save_model_dir(out, variables, card, overwrite=args.overwrite)
  except (
    CheckpointFormatError,
    CheckpointMismatchError,
    model_directory.MergeError,
    model_directory.ModelDirError,
    StructureError,
    FileNotFoundError,
    ValueError,
  ) as e:
    return cli.report(e)
  print(f'wrote {out}: {report.summary()}')
  if recipe is None:
    print(
      'note: the card records no preprocessing recipe (no --recipe or --dataset): predict and '
      'export will ask for --recipe each time',
      file=sys.stderr,
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
