"""JAX vs PyTorch, measured in one run: training, inference, Zen-score search, input pipeline.

  python -m benchmarks.run                         # CPU, full (about 15 minutes on 2 cores)
  python -m benchmarks.run --quick                 # smoke run: small images, few reps
  python -m benchmarks.run --device gpu --out benchmarks/results/gpu.json   # see gpu.sh
  python -m benchmarks.run --threads 1             # pin both frameworks to one core

Writes a JSON report (`--out`, default benchmarks/results/<device>.json) and the markdown
table beside it (same name, .md), and prints the table; `benchmarks.report` computes the
ratios, draws the table and merges runs that split the sections.

What is compared (identical synthetic inputs on both sides):
  * train: the full training step of ZenNet-M-SA and ZenNet-R-SA at 224 (forward, backward,
    SGD Nesterov + masked weight decay, BatchNorm running statistics, label smoothing + mixup,
    see `benchmarks.train_throughput`): JAX fp32 (and bf16 on GPU) vs torch_port's reference
    model in PyTorch eager (and torch.compile where enabled);
  * infer_b1: eval-mode latency at batch 1; infer_bN: throughput at a large batch;
  * zen_search: Zen-score candidates/s of the evolutionary search (`benchmarks.search_throughput`,
    the NAS benchmark: whole search, compile included, one run per side);
  * input_pipeline: RAF-DB train-recipe images/s (`benchmarks.input_pipeline`; JAX side only).

Honest timing (see `benchmarks.timing`): compile / first call timed and reported on its own;
warm-up excluded; every timed call blocks until its results exist; sides alternate rep by
rep; medians of >= 5 reps with min and max (--quick uses 3 and says so); the search figure
follows search_throughput's own method (above). On CPU both
frameworks get the same cores: the process is pinned to --threads CPUs (default: all it may
use) before JAX or PyTorch is imported, XLA sizes its intra-op pool from that affinity, and
PyTorch gets torch.set_num_threads(--threads). The load average is recorded at the start and
the end: on a shared machine it says how much the figures can be trusted.

Ratios are JAX rate / PyTorch eager rate: above 1 means JAX is faster.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time

from absl import logging

from benchmarks import pinning as pinning_lib
from benchmarks import report as report_lib
from benchmarks import timing
from benchmarks.report import MODELS
from zenfer_jax import cli

SECTIONS = ('train', 'infer_b1', 'infer_bn', 'zen_search', 'input_pipeline')


# ----------------------------------------------------------------------------- measurement


def _log(msg: str) -> None:
  logging.info('[%s] %s', time.strftime('%H:%M:%S'), msg)


def _versions() -> dict:
  out = {}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'torch', 'numpy', 'tensorflow-cpu', 'tensorflow'):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


class TorchSkipped(Exception):
  """The PyTorch sides of a run that has no usable PyTorch (`Config.torch_skip` says why)."""


def _torch_or_reason(device: str):
  """(torch, None), or (None, why the PyTorch sides are skipped).

  A bare accelerator machine can hold a PyTorch without CUDA, or none: the JAX figures are
  still worth a run there (benchmarks.gpu_driver), so the PyTorch sides are recorded as skipped
  with the reason instead of ending the run.
  """
  try:
    import torch
  except ImportError as e:
    return None, f'torch is not importable: {e}'
  if device == 'gpu' and not torch.cuda.is_available():
    return (
      None,
      f'torch {torch.__version__} has no CUDA device (built for CUDA {torch.version.cuda})',
    )
  return torch, None


def _measure_pair(
  cases: dict, *, reps: int, warmup: int, calls_per_rep: int, items_per_call: float
) -> dict:
  """Alternate the built cases, summarise each; a case that failed to build carries its error."""
  live = {n: c for n, c in cases.items() if not isinstance(c, Exception)}
  times = timing.time_alternating(
    {n: c.run for n, c in live.items()},
    reps=reps,
    warmup=warmup,
    calls_per_rep=calls_per_rep,
    log=_log,
  )
  sides = {}
  for n, c in cases.items():
    if isinstance(c, TorchSkipped):
      sides[n] = {'status': 'skipped', 'reason': str(c)}
      continue
    if isinstance(c, Exception):
      sides[n] = {
        'status': 'crashed' if 'crashed' in str(c) else 'failed',
        'error': f'{type(c).__name__}: {str(c)[:300]}',
      }
      continue
    s = timing.summarize(times[n], items=items_per_call * calls_per_rep)
    s['compile_seconds'] = round(c.compile_seconds, 3)
    s['times_s'] = [round(t, 5) for t in times[n]]
    loss = getattr(c, 'loss', None)
    if loss is not None:
      from benchmarks.train_throughput import check_finite

      s['final_loss'] = check_finite(c)
    sides[n] = s
  return sides


def _build(factory, name: str):
  _log(f'  building {name} ...')
  try:
    case = factory()
    _log(f'  {name}: compile/first call {case.compile_seconds:.1f} s')
    return case
  except Exception as e:
    _log(f'  {name}: FAILED {type(e).__name__}: {str(e)[:200]}')
    return e


def _probe(kind: str, kwargs: dict, timeout: float = 600) -> str | None:
  """Builds a PyTorch case (one step) in a child process first; None if it survives.

  PyTorch 2.13's CPU channels_last backward of ZenNet-R-SA at 224px dies with heap corruption
  ("double free or corruption"), which would take this whole process down with it.
  """
  code = (
    f'import sys, json, torch; torch.set_num_threads({torch_threads()}); '
    'from benchmarks.train_throughput import TorchTrainCase; from benchmarks.inference import TorchInferCase; '
    f'{kind}(**json.loads(sys.argv[1]))'
  )
  try:
    p = subprocess.run(
      [sys.executable, '-c', code, json.dumps(kwargs)],
      capture_output=True,
      text=True,
      timeout=timeout,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
  except subprocess.TimeoutExpired:
    return 'probe timed out'
  if p.returncode:
    tail = [line for line in (p.stdout + p.stderr).strip().splitlines() if line][-1:] or ['?']
    return f'crashed in a probe process (exit {p.returncode}): {tail[0][:200]}'
  return None


def torch_threads() -> int:
  import torch

  return torch.get_num_threads()


def _build_probed(kind: str, factory, kwargs: dict, name: str):
  err = _probe(kind, kwargs)
  if err:
    _log(f'  {name}: {err}')
    return RuntimeError(err)
  return _build(factory, name)


def _measure_train(cfg, key: str, dtypes, channels_last: bool, compile: bool) -> dict:
  """Builds the named train cases of one model (always PyTorch eager) and times them alternately."""
  from benchmarks.train_throughput import JaxTrainCase, TorchTrainCase

  m = _model(cfg, key)
  kw = dict(
    structure=m['structure'],
    use_sa=m['use_sa'],
    batch=cfg.train_batch,
    resolution=cfg.resolution,
    steps_per_rep=cfg.train_steps_per_rep,
  )
  cases = {}
  for dt in dtypes:
    cases[f'jax_{dt}'] = _build(lambda dt=dt: JaxTrainCase(dtype=dt, **kw), f'jax_{dt}')
  if cfg.torch_skip:
    cases['torch_eager'] = TorchSkipped(cfg.torch_skip)
    channels_last = compile = False
  else:
    cases['torch_eager'] = _build(
      lambda: TorchTrainCase(device=cfg.torch_device, **kw), 'torch_eager'
    )
  if channels_last:
    ckw = dict(kw, device=cfg.torch_device, channels_last=True)
    cases['torch_eager_cl'] = _build_probed(
      'TorchTrainCase', lambda: TorchTrainCase(**ckw), ckw, 'torch_eager_cl'
    )
  if compile:
    cases['torch_compile'] = _build(
      lambda: TorchTrainCase(device=cfg.torch_device, compile=True, **kw), 'torch_compile'
    )
  return _measure_pair(
    cases,
    reps=cfg.reps,
    warmup=1,
    calls_per_rep=1,
    items_per_call=cfg.train_batch * cfg.train_steps_per_rep,
  )


def _model(cfg, key: str) -> dict:
  """MODELS[key], with --structure in place of its structure when given (smoke runs)."""
  m = dict(MODELS[key])
  if cfg.structure:
    m['structure'] = cfg.structure
  return m


def _train_compile_wanted(cfg) -> bool:
  return bool(cfg.torch_compile) and 'train' in cfg.torch_compile_sections and not cfg.torch_skip


def run_train(cfg, key: str) -> dict:
  dtypes = ('float32',) if cfg.defer_extras else cfg.jax_dtypes
  sides = _measure_train(
    cfg,
    key,
    dtypes,
    channels_last=cfg.torch_channels_last,
    compile=_train_compile_wanted(cfg) and not cfg.defer_extras,
  )
  return {
    'batch': cfg.train_batch,
    'resolution': cfg.resolution,
    'steps_per_rep': cfg.train_steps_per_rep,
    'unit': 'images/s',
    'sides': sides,
  }


def run_train_extras(cfg, key: str) -> dict:
  """JAX bf16 and torch.compile train steps, measured in a later pass beside a fresh eager case.

  On GPU their compiles take minutes (measured on an H100: 93 s for JAX's bf16 ZenNet-M-SA
  step; inductor's train graph more), so they run after the headline figures and a time
  budget drops them, not the headline; PyTorch eager is timed again in the same alternation
  so their ratios have a same-moment baseline.
  """
  dtypes = [dt for dt in cfg.jax_dtypes if dt != 'float32']
  return _measure_train(cfg, key, dtypes, channels_last=False, compile=_train_compile_wanted(cfg))


def run_infer(cfg, key: str, batch: int, calls_per_rep: int, section: str) -> dict:
  from benchmarks.inference import JaxInferCase, TorchInferCase

  m = _model(cfg, key)
  kw = dict(structure=m['structure'], use_sa=m['use_sa'], batch=batch, resolution=cfg.resolution)
  cases = {}
  for dt in cfg.infer_dtypes:
    cases[f'jax_{dt}'] = _build(lambda dt=dt: JaxInferCase(dtype=dt, **kw), f'jax_{dt}')
  if cfg.torch_skip:
    cases['torch_eager'] = TorchSkipped(cfg.torch_skip)
  else:
    cases['torch_eager'] = _build(
      lambda: TorchInferCase(device=cfg.torch_device, **kw), 'torch_eager'
    )
  if cfg.torch_channels_last and not cfg.torch_skip:
    ckw = dict(kw, device=cfg.torch_device, channels_last=True)
    cases['torch_eager_cl'] = _build_probed(
      'TorchInferCase', lambda: TorchInferCase(**ckw), ckw, 'torch_eager_cl'
    )
  if cfg.torch_compile and section in cfg.torch_compile_sections and not cfg.torch_skip:
    cases['torch_compile'] = _build(
      lambda: TorchInferCase(device=cfg.torch_device, compile=True, **kw), 'torch_compile'
    )
  sides = _measure_pair(
    cases, reps=cfg.reps, warmup=1, calls_per_rep=calls_per_rep, items_per_call=batch
  )
  for s in sides.values():
    if 'seconds_median' in s:
      s['latency_ms_median'] = 1000 * s['seconds_median'] / s['items_per_rep'] * batch
  return {
    'batch': batch,
    'resolution': cfg.resolution,
    'calls_per_rep': calls_per_rep,
    'unit': 'images/s',
    'sides': sides,
  }


def run_zen_search(cfg) -> dict:
  """Runs `python -m benchmarks.search_throughput` (the NAS benchmark) and reads its JSON.

  Its methodology, kept as is: each side runs the same evolutionary search (configs/search_m.py)
  for the same number of iterations from an empty compilation cache, and the figure is
  candidates scored per wall-clock second of the whole search, compile included, one run per
  side (a second in-process run would reuse compiled programs, so reps are not repeatable here).
  Its own process inherits this one's CPU pinning and thread variables.
  """
  import tempfile

  out_json = tempfile.mktemp(suffix='.json', prefix='zen_search_')
  # PyTorch first on GPU: its side is short and predictable, so a timeout in the JAX side
  # (compiles) still leaves one figure; search_throughput writes its JSON after each side.
  sides_order = 'torch,jax' if cfg.device == 'gpu' else 'jax,torch'
  args = [
    sys.executable,
    '-m',
    'benchmarks.search_throughput',
    f'--iterations={cfg.zs_iterations}',
    f'--resolution={cfg.zs_resolution}',
    f'--batch_size={cfg.zs_batch}',
    f'--sides={sides_order}',
    f'--torch_device={cfg.torch_device}',
    f'--json={out_json}',
  ]
  if cfg.zs_max_seconds:
    args.insert(-1, f'--max_seconds={cfg.zs_max_seconds}')
  base = {
    'unit': 'candidates/s',
    'command': 'python ' + ' '.join(args[1:-1]),
    'method': 'whole search incl. compile from an empty cache, one run per side (search_throughput)',
  }
  t0 = time.perf_counter()
  status = None
  try:
    p = subprocess.run(
      args,
      capture_output=True,
      text=True,
      timeout=cfg.zs_timeout,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if p.returncode or not os.path.exists(out_json):
      return dict(base, status='failed', returncode=p.returncode, tail=(p.stdout + p.stderr)[-800:])
  except subprocess.TimeoutExpired:
    status = f'timeout after {cfg.zs_timeout} s'
    if not os.path.exists(out_json):
      return dict(base, status=status)
  with open(out_json) as f:
    data = json.load(f)
  os.unlink(out_json)
  sides = {}
  for r in data.get('results', []):
    s = timing.summarize([r['seconds']], items=r['candidates'])
    s.update(
      {
        k: r.get(k)
        for k in (
          'device',
          'iterations',
          'stopped_by_time_limit',
          'candidates',
          'best_score',
          'loadavg_before',
          'loadavg_after',
          'compiled_programs',
        )
        if r.get(k) is not None
      }
    )
    sides[r['side']] = s
  out = dict(
    base,
    sides=sides,
    iterations=cfg.zs_iterations,
    resolution=cfg.zs_resolution,
    batch=cfg.zs_batch,
    max_seconds_per_side=cfg.zs_max_seconds,
    wall_seconds=round(time.perf_counter() - t0, 1),
  )
  if status:
    out['status'] = status
  return out


_RATE_RE = re.compile(r'([0-9.]+) images/s on (\d+) cores')
_CPUSEC_RE = re.compile(r'([0-9.]+) images per CPU-second')


def run_input_pipeline(cfg) -> dict:
  """Runs `python -m benchmarks.input_pipeline` (in its own process) and parses its output."""
  import importlib.util

  if importlib.util.find_spec('tensorflow') is None:  # e.g. a GPU image without TensorFlow
    return {
      'status': 'not run: tensorflow is not installed in this Python',
      'note': "tf.data figure; measure it where the project's own environment is installed",
    }
  args = [
    sys.executable,
    '-m',
    'benchmarks.input_pipeline',
    f'--num_images={cfg.ip_images}',
    f'--batch={cfg.ip_batch}',
    f'--steps={cfg.ip_steps}',
    f'--warmup={cfg.ip_warmup}',
    f'--image_size={224}',
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  t0 = time.perf_counter()
  try:
    p = subprocess.run(
      args,
      capture_output=True,
      text=True,
      timeout=cfg.ip_timeout,
      env=env,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
  except subprocess.TimeoutExpired:
    return {'status': 'timeout', 'command': ' '.join(args[1:])}
  out = p.stdout + p.stderr
  m, c = _RATE_RE.search(out), _CPUSEC_RE.search(out)
  if p.returncode or not m:
    return {
      'status': 'failed',
      'returncode': p.returncode,
      'tail': out[-600:],
      'command': ' '.join(args[1:]),
    }
  return {
    'images_per_s': float(m.group(1)),
    'cores': int(m.group(2)),
    'images_per_cpu_second': float(c.group(1)) if c else None,
    'batch': cfg.ip_batch,
    'steps': cfg.ip_steps,
    'num_images': cfg.ip_images,
    'wall_seconds_incl_setup': round(time.perf_counter() - t0, 1),
    'command': 'python ' + ' '.join(args[1:]),
    'note': 'tf.data on CPU; no PyTorch counterpart measured',
  }


class Config(argparse.Namespace):
  pass


def parse_args(argv: list[str] | None = None) -> Config:
  p = cli.ArgumentParser(prog='python -m benchmarks.run', description=__doc__.split('\n')[0])
  p.add_argument('--device', choices=('cpu', 'gpu'), default='cpu')
  p.add_argument(
    '--quick',
    action='store_true',
    help='smoke run: 64px, batch 4, 3 reps; the search: 1,000 iterations at 64px (not for docs/performance.md)',
  )
  p.add_argument('--out', default=None, help='JSON path (the .md table is written beside it)')
  p.add_argument(
    '--threads', type=int, default=0, help='CPU threads per framework (0: every CPU available)'
  )
  p.add_argument('--sections', default=','.join(SECTIONS), help=f'comma list of {SECTIONS}')
  p.add_argument('--models', default=','.join(MODELS), help=f'comma list of {tuple(MODELS)}')
  p.add_argument(
    '--torch_compile',
    choices=('auto', 'on', 'off'),
    default='auto',
    help="auto: on for GPU; off on CPU (inductor's C++ build of the train graph takes "
    "minutes on 2 cores, more than the whole run's budget)",
  )
  p.add_argument(
    '--torch_compile_sections',
    default='train',
    help='where torch.compile runs when enabled (comma list of train, infer_b1, infer_bn)',
  )
  p.add_argument('--infer_bf16', action='store_true', help='on GPU, also time JAX bf16 inference')
  p.add_argument(
    '--torch_channels_last',
    choices=('auto', 'on', 'off'),
    default='auto',
    help='also time PyTorch eager in channels_last format (auto: on for CPU, where it '
    "is PyTorch's faster layout for depthwise convs; off on GPU for the time budget)",
  )
  p.add_argument(
    '--budget_s',
    type=float,
    default=0,
    help='skip the sections not started after this many seconds (0: no limit)',
  )
  p.add_argument(
    '--torch',
    choices=('auto', 'off'),
    default='auto',
    help='auto: time PyTorch where it is importable (on GPU: with CUDA), else record its sides '
    'as skipped with the reason; off: JAX only',
  )
  p.add_argument(
    '--structure',
    default='',
    help="a ZenNet structure string in place of each model's (smoke runs of this benchmark "
    'on a tiny network; not for docs/performance.md)',
  )
  p.add_argument('--resolution', type=int, default=None)
  p.add_argument('--train_batch', type=int, default=None)
  p.add_argument('--infer_batch', type=int, default=None)
  p.add_argument('--reps', type=int, default=None)
  cfg = p.parse_args(argv, namespace=Config())
  gpu = cfg.device == 'gpu'
  if cfg.quick:
    defaults = dict(
      resolution=64,
      train_batch=4,
      infer_batch=8,
      reps=3,
      train_steps_per_rep=1,
      b1_calls=2,
      ip_images=64,
      ip_batch=8,
      ip_steps=2,
      ip_warmup=1,
      # The search row is the one figure --quick does not shrink much: a cold search compiles
      # its ~25 programs first, so only a search long enough to use them (issue's CPU case:
      # 1,000 iterations at 64 px, batch 8, ~3 minutes for both sides) says anything.
      zs_iterations=1000,
      zs_resolution=64,
      zs_batch=8,
    )
  elif gpu:
    defaults = dict(
      resolution=224,
      train_batch=128,
      infer_batch=256,
      reps=7,
      train_steps_per_rep=10,
      b1_calls=50,
      ip_images=1024,
      ip_batch=64,
      ip_steps=20,
      ip_warmup=3,
      zs_iterations=100,
      zs_resolution=224,
      zs_batch=16,
    )
  else:
    defaults = dict(
      resolution=224,
      train_batch=16,
      infer_batch=64,
      reps=5,
      train_steps_per_rep=1,
      b1_calls=5,
      ip_images=512,
      ip_batch=32,
      ip_steps=8,
      ip_warmup=2,
      zs_iterations=30,
      zs_resolution=224,
      zs_batch=16,
    )
  for k, v in defaults.items():
    if getattr(cfg, k, None) is None:
      setattr(cfg, k, v)
  if cfg.reps < timing.MIN_REPS and not cfg.quick:
    p.error(f'--reps must be at least {timing.MIN_REPS} (medians of >= 5 repetitions)')
  # On GPU each side stops after 75 s of search: PyTorch finishes its 100 iterations in
  # about 8 s on an H100, a cold JAX search spends minutes compiling (measured 2026-11-28).
  cfg.zs_max_seconds = 75 if gpu else None
  cfg.zs_timeout = 240 if gpu else 1800
  cfg.ip_timeout = 150 if gpu else 900
  cfg.sections = [s for s in cfg.sections.split(',') if s]
  cfg.models = [m for m in cfg.models.split(',') if m]
  for s in cfg.sections:
    if s not in SECTIONS:
      p.error(f'unknown section {s!r}')
  for m in cfg.models:
    if m not in MODELS:
      p.error(f'unknown model {m!r}')
  cfg.torch_compile = {'on': True, 'off': False, 'auto': gpu}[cfg.torch_compile]
  cfg.defer_extras = gpu
  cfg.torch_channels_last = {'on': True, 'off': False, 'auto': not gpu}[cfg.torch_channels_last]
  cfg.jax_dtypes = ('float32', 'bfloat16') if gpu else ('float32',)
  cfg.infer_dtypes = cfg.jax_dtypes if cfg.infer_bf16 else ('float32',)
  cfg.torch_compile_sections = [x for x in cfg.torch_compile_sections.split(',') if x]
  cfg.torch_device = 'cuda' if gpu else 'cpu'
  cfg.torch_skip = None  # Set in main: why the PyTorch sides are not run, if they are not.
  if cfg.out is None:
    cfg.out = os.path.join(
      'benchmarks', 'results', f'{cfg.device}{"_quick" if cfg.quick else ""}.json'
    )
  return cfg


def main(argv: list[str] | None = None) -> dict:
  args = sys.argv[1:] if argv is None else argv
  if args[:1] == ['--merge']:  # The older spelling of `python -m benchmarks.report --merge`.
    return report_lib.main(args)
  cfg = parse_args(argv)
  cli.setup_logging(cfg.verbosity, show_own_info=True)
  pinning = pinning_lib.pin_threads(cfg.threads)
  cfg.threads = pinning['threads']
  if cfg.device == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  else:
    # Both frameworks share the GPU: JAX must not grab 75% of its memory up front.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax

  from zenfer_jax.model.layers.cpu_kernels import resolve_impl

  torch, cfg.torch_skip = _torch_or_reason(cfg.device)
  if cfg.torch == 'off':
    torch, cfg.torch_skip = None, 'not run: --torch off'
  if cfg.torch_skip:
    _log(f'PyTorch sides skipped: {cfg.torch_skip}')
  if torch is not None:
    torch.set_num_threads(cfg.threads)
    if cfg.device == 'gpu':
      torch.backends.cudnn.benchmark = True  # autotuned convolutions, as XLA autotunes its own
  if cfg.device == 'gpu':
    if jax.default_backend() != 'gpu':
      raise SystemExit(f"--device gpu but JAX's backend is {jax.default_backend()}")
    torch_name = torch.cuda.get_device_name(0) if torch is not None else 'not run'
    device_name = f'{jax.devices()[0].device_kind} (JAX) / {torch_name} (PyTorch)'
  else:
    device_name = f'CPU x{cfg.threads} ({timing.cpu_model()})'
  pinning['torch_num_threads'] = torch.get_num_threads() if torch is not None else None

  report = {
    'schema': 1,
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'command': 'python -m benchmarks.run ' + ' '.join(argv if argv is not None else sys.argv[1:]),
    'device': cfg.device,
    'device_name': device_name,
    'quick': cfg.quick,
    'machine': timing.machine_info(),
    'versions': _versions(),
    'threading': pinning,
    'settings': {
      k: getattr(cfg, k)
      for k in (
        'resolution',
        'train_batch',
        'train_steps_per_rep',
        'infer_batch',
        'reps',
        'b1_calls',
        'threads',
        'torch_compile',
        'torch_compile_sections',
        'torch_channels_last',
        'jax_dtypes',
        'infer_dtypes',
        'sections',
        'models',
        'budget_s',
        'structure',
        'torch_skip',
      )
    },
    'precision': (
      'fp32 on both sides; on GPU both default to TF32 for fp32 convolutions '
      "(XLA's default precision, torch.backends.cudnn.allow_tf32="
      f'{torch.backends.cudnn.allow_tf32 if torch is not None else None}); torch NCHW '
      '(the reference layout), JAX NHWC'
    ),
    'loadavg_start': timing.loadavg(),
    'results': {},
  }
  # What the models' conv_impl/bn_impl='auto' chose on this backend ('cpu' or 'xla').
  report['settings']['conv_impl'] = resolve_impl('auto', 'conv_impl')
  report['settings']['bn_impl'] = resolve_impl('auto', 'bn_impl')
  results = report['results']
  t_start = time.perf_counter()

  def checkpoint():
    report['ratios'] = report_lib.compute_ratios(results)
    report['loadavg_end'] = timing.loadavg()
    report['wall_seconds'] = round(time.perf_counter() - t_start, 1)
    report_lib.write(report, cfg.out)

  def over_budget(name: str) -> bool:
    if cfg.budget_s and time.perf_counter() - t_start > cfg.budget_s:
      _log(f'{name}: skipped, time budget of {cfg.budget_s:.0f} s spent')
      report.setdefault('skipped', []).append(name)
      return True
    return False

  def do_input_pipeline():
    if 'input_pipeline' in cfg.sections and not over_budget('input_pipeline'):
      _log('input pipeline ...')
      results['input_pipeline'] = run_input_pipeline(cfg)
      _log(f'  {results["input_pipeline"]}')
      checkpoint()

  def do_models(section):
    if section not in cfg.sections:
      return
    for key in cfg.models:
      if over_budget(f'{section}/{key}'):
        continue
      _log(f'{section} {key} (load {timing.loadavg()}) ...')
      if section == 'train':
        entry = run_train(cfg, key)
      elif section == 'infer_b1':
        entry = run_infer(cfg, key, 1, cfg.b1_calls, section)
      else:
        entry = run_infer(cfg, key, cfg.infer_batch, 1, section)
      entry['loadavg'] = timing.loadavg()
      results.setdefault(section, {})[key] = entry
      gc.collect()
      checkpoint()

  def do_zen_search():
    if 'zen_search' in cfg.sections and not over_budget('zen_search'):
      _log('zen-score search ...')
      results['zen_search'] = run_zen_search(cfg)
      checkpoint()

  def do_train_extras():
    extras = [dt for dt in cfg.jax_dtypes if dt != 'float32']
    if _train_compile_wanted(cfg):
      extras.append('torch_compile')
    if not (cfg.defer_extras and extras):
      return
    for key in cfg.models:
      entry = (results.get('train') or {}).get(key)
      if entry is None or over_budget(f'train/{key}/' + '+'.join(extras)):
        continue
      _log(f'train {key}: later pass for {", ".join(extras)} ...')
      sides = run_train_extras(cfg, key)
      eager = sides.pop('torch_eager', {})
      for name, side in sides.items():
        entry['sides'][name] = dict(
          side,
          note='measured in a later pass (after the headline sections)',
          torch_eager_same_pass=eager.get('rate_median'),
        )
      checkpoint()

  # Most important first (a time budget drops the tail): the four headline ratios are train
  # (both models), infer_b1 and zen_search; on GPU the bf16 and torch.compile train steps
  # follow them. On CPU the input pipeline goes first: its own process wants the cores to
  # itself, and it is short.
  if cfg.device == 'cpu':
    do_input_pipeline()

  do_models('train')
  do_models('infer_b1')
  do_zen_search()
  do_train_extras()
  do_models('infer_bn')
  if cfg.device == 'gpu':
    do_input_pipeline()
  checkpoint()
  md = report_lib.to_markdown(report)
  print('\n' + md)
  return report


if __name__ == '__main__':
  main()
