"""The accelerator benchmark on a bare machine: search, steps, end to end with Grain, one call each.

  python -m benchmarks.gpu_driver --stage search --out DIR    # then --stage steps, --stage e2e
  python -m benchmarks.gpu_driver --all --out DIR             # the three in turn, one process
  python -m benchmarks.gpu_driver --all --tiny --out /tmp/d   # seconds-sized smoke run (CPU)

Why a driver of its own: the lent accelerator machines have a Python with CUDA builds of JAX and
PyTorch but no TensorFlow, ml_collections, Grain, ArrayRecord or TFDS, nothing can be downloaded
there, a command may run 600 s at most, and the working tree travels with at most 64 MiB. So
every stage here fits one such call (--budget_s, default 540 s: the rest is the wheels' install
and the start), no path imports TensorFlow (the input path is Grain over ArrayRecord files, and
the dataset is written and prepared without TensorFlow too), and the few wheels the image lacks
are carried: benchmarks/gpu_wheels.txt lists them, benchmarks/fetch_gpu_wheels.sh downloads
them into .whl/, and on the machine

  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site

installs them. benchmarks/gpu.sh does both and runs the stages.

Stages, most important first; each writes its JSON as each of its parts ends, so a call cut short
keeps what finished, and gpu_driver.json records every stage's status, time and environment:
  search  benchmarks.search_throughput: the evolutionary search from init_m (configs/search_m.py;
          default 2,000 iterations at 224 px, batch 16), JAX cold (empty compilation cache), JAX
          warm (the same search in a new process), PyTorch eager scoring the same algorithm; each
          side stops after --search_side_s. -> gpu_search.json, the searches under gpu_search/
  steps   benchmarks.run: train step and batch-1 inference of ZenNet-M-SA and ZenNet-R-SA, JAX
          (fp32; bf16 and torch.compile in a later pass) against PyTorch eager. -> gpu.json
  e2e     benchmarks.train_end_to_end's runs of the real `zenfer_jax.main` with
          config.data.loader='grain' and device augmentation on a generated RAF-DB-sized dataset
          (12,271 + 3,068 100x100 JPEGs in RAF-DB's layout, prepared as ArrayRecord files),
          fp32 and bf16, and the Grain input path alone. -> e2e_gpu.json

PyTorch sides need a PyTorch with CUDA on an accelerator (any PyTorch on the CPU); without one
they are recorded as skipped, with the reason, and the JAX sides still run. --tiny shrinks every
size (a tiny network, 16 px, a few dozen images, seconds of search) for the CPU check of
tests/test_gpu_driver.py and of a fresh environment (docs/performance.md says how).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time

from zenfer_jax import atomic_write, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('search', 'steps', 'e2e')
FILES = {'search': 'gpu_search.json', 'steps': 'gpu.json', 'e2e': 'e2e_gpu.json'}
DRIVER_JSON = 'gpu_driver.json'
# What the image lacks and the carried wheels bring (benchmarks/gpu_wheels.txt), reported with
# where each was imported from.
CARRIED = (
  'grain',
  'array-record',
  'tensorflow-datasets',
  'ml-collections',
  'dm-tree',
  'promise',
  'immutabledict',
  'tensorflow-metadata',
  'termcolor',
  'toml',
  'portpicker',
)
# The smoke network of the training tests (tests/train_fixtures.TINY).
TINY_STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
# Seconds a part needs left in the stage's budget to be started at all.
MIN_PART_S = 20

_PROBE = r"""
import importlib.util, json, sys
out = {'python': sys.version.split()[0], 'executable': sys.executable}
import jax
out.update(jax=jax.__version__, backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
           device_count=jax.device_count())
out['tensorflow_importable'] = importlib.util.find_spec('tensorflow') is not None
try:
  import torch
  out.update(torch=torch.__version__, torch_cuda=torch.cuda.is_available(), torch_cuda_build=torch.version.cuda)
except ImportError as e:
  out.update(torch=None, torch_error=str(e))
print(json.dumps(out))
"""


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(
    prog='python -m benchmarks.gpu_driver',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--stage', action='append', default=[], help=f'one of {STAGES} (repeatable)')
  p.add_argument('--all', action='store_true', help='every stage, in the order above')
  p.add_argument('--out', default=os.path.join('benchmarks', 'results'), help='JSON directory')
  p.add_argument('--device', choices=('auto', 'gpu', 'cpu'), default='auto')
  p.add_argument(
    '--budget_s',
    type=cli.positive_float,
    default=540,
    help='seconds per stage: parts not started by then are skipped, a running one is stopped',
  )
  p.add_argument('--torch', choices=('auto', 'off'), default='auto', help='off: JAX sides only')
  p.add_argument('--tiny', action='store_true', help='smoke sizes for a CPU check (see above)')
  p.add_argument('--search_iterations', type=cli.positive_int, default=None)
  p.add_argument('--search_resolution', type=cli.positive_int, default=None)
  p.add_argument('--search_batch', type=cli.positive_int, default=None)
  p.add_argument(
    '--search_side_s', type=cli.positive_float, default=None, help='search seconds per side'
  )
  p.add_argument(
    '--search_sides',
    default='jax_cold,jax_warm,torch',
    help='comma list, in this order (jax_warm needs jax_cold first)',
  )
  p.add_argument('--steps_models', default='zennet_m_sa,zennet_r_sa')
  p.add_argument(
    '--e2e_models', default='ZenNet-M-SA', help='comma list of ZenNet-M-SA, ZenNet-R-SA'
  )
  p.add_argument('--e2e_dtypes', default='float32,bfloat16')
  p.add_argument('--e2e_train', type=cli.positive_int, default=None, help='images (RAF-DB: 12,271)')
  p.add_argument('--e2e_test', type=cli.positive_int, default=None, help='images (RAF-DB: 3,068)')
  p.add_argument(
    '--cache_dir',
    default=None,
    help='the generated dataset, its ArrayRecord files and the compilation caches, reused '
    'when there (default: ~/.cache/zenfer_jax/gpu_driver; not under --out, whose files a lent '
    'machine sends back)',
  )
  a = p.parse_args(argv)
  stages = list(STAGES) if a.all else [s for x in a.stage for s in x.split(',') if s]
  if not stages:
    p.error('give --stage (search, steps or e2e) or --all')
  for s in stages:
    if s not in STAGES:
      p.error(f'unknown stage {s!r}; expected one of {STAGES}')
  a.stages = stages
  for side in [x for x in a.search_sides.split(',') if x]:
    if side not in ('jax_cold', 'jax_warm', 'torch'):
      p.error(f'--search_sides: unknown side {side!r}')
  sizes = (
    dict(search=(4, 32, 2, 5.0), train=48, test=16)
    if a.tiny
    else dict(search=(2000, 224, 16, 75.0), train=12_271, test=3_068)
  )
  for name, value in zip(
    ('search_iterations', 'search_resolution', 'search_batch', 'search_side_s'), sizes['search']
  ):
    if getattr(a, name) is None:
      setattr(a, name, value)
  a.e2e_train = a.e2e_train or sizes['train']
  a.e2e_test = a.e2e_test or sizes['test']
  a.out = os.path.abspath(a.out)
  a.cache_dir = os.path.abspath(
    os.path.expanduser(a.cache_dir or os.path.join('~', '.cache', 'zenfer_jax', 'gpu_driver'))
  )
  return a


def _log(msg: str) -> None:
  print(f'[gpu_driver {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def _write(path: str, data: dict) -> None:
  atomic_write.write_json(path, data)


# ------------------------------------------------------------------------------ environment


def _child_env(device: str) -> dict:
  """The children's environment: this repository importable, JAX on `device`, no preallocation.

  PYTHONPATH keeps what it had (the carried wheels' /tmp/site, a sitecustomize that blocks
  TensorFlow in the tests) after the repository.
  """
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(x for x in (REPO, env.get('PYTHONPATH', '')) if x)
  env['JAX_PLATFORMS'] = 'cuda' if device == 'gpu' else 'cpu'
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # Both frameworks share the GPU.
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def probe(device: str) -> dict:
  """JAX's backend, PyTorch's CUDA and TensorFlow's absence, from a child process (this one
  stays free of both frameworks' device state)."""
  env = _child_env('gpu' if device == 'gpu' else 'cpu')
  if device == 'auto':
    env.pop('JAX_PLATFORMS')
  proc = subprocess.run(
    [sys.executable, '-c', _PROBE], capture_output=True, text=True, env=env, timeout=300, cwd=REPO
  )
  if proc.returncode:
    raise SystemExit(f'gpu_driver: the environment probe failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def carried_versions() -> dict:
  """Version and install location of each package the carried wheels bring (None: absent)."""
  out = {}
  for name in CARRIED:
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
      continue
    out[name] = {'version': dist.version, 'location': str(dist.locate_file(''))}
  return out


def torch_plan(a, env_info: dict) -> tuple[str | None, str | None]:
  """(torch device, None) or (None, why the PyTorch sides are skipped)."""
  if a.torch == 'off':
    return None, 'not run: --torch off'
  if env_info.get('torch') is None:
    return None, f'torch is not importable: {env_info.get("torch_error")}'
  if a.device == 'gpu':
    if not env_info.get('torch_cuda'):
      return None, (
        f'torch {env_info["torch"]} has no CUDA device (built for CUDA '
        f'{env_info.get("torch_cuda_build")})'
      )
    return 'cuda', None
  return 'cpu', None


# ------------------------------------------------------------------------------ stages


class Budget:
  def __init__(self, seconds: float):
    self.seconds, self.start = seconds, time.monotonic()

  def left(self) -> float:
    return self.seconds - (time.monotonic() - self.start)

  def elapsed(self) -> float:
    return time.monotonic() - self.start


def stage_search(a, env_info: dict, budget: Budget) -> dict:
  """The three sides of search_throughput, each in its own process, the JSON after each."""
  from benchmarks import search_throughput, timing

  torch_device, torch_skip = torch_plan(a, env_info)
  keep = os.path.join(a.out, 'gpu_search')
  shutil.rmtree(keep, ignore_errors=True)
  args = search_throughput.parse_args(
    [
      f'--iterations={a.search_iterations}',
      f'--resolution={a.search_resolution}',
      f'--batch_size={a.search_batch}',
      f'--max_seconds={a.search_side_s}',
      f'--torch_device={torch_device or "cpu"}',
      f'--keep={keep}',
    ]
  )
  path = os.path.join(a.out, FILES['search'])
  out = {'machine': timing.machine_info(), 'args': vars(args), 'results': [], 'not_run': {}}
  cache = os.path.join(a.cache_dir, 'search_jax_cache')  # The cold side's empty cache, then warm's.
  shutil.rmtree(cache, ignore_errors=True)
  saved, children = os.environ.copy(), _child_env(a.device)
  os.environ.clear()  # run_side's children inherit this process's environment.
  os.environ.update(children)
  # The search's own cache (config.search.compilation_cache_dir) is the only one: cold is cold.
  os.environ.pop('JAX_COMPILATION_CACHE_DIR', None)
  try:
    for side in [x for x in a.search_sides.split(',') if x]:
      if side == 'torch' and torch_skip:
        out['not_run'][side] = torch_skip
      elif side == 'jax_warm' and not any(r['side'] == 'jax_cold' for r in out['results']):
        out['not_run'][side] = 'the cold side, which fills its cache, did not finish'
      elif budget.left() < MIN_PART_S:
        out['not_run'][side] = f'the stage budget of {budget.seconds:.0f} s was spent'
      else:
        _log(f'search: {side} (at most {a.search_side_s:.0f} s of search) ...')
        try:
          r = search_throughput.run_side(
            side, args, cache if side.startswith('jax') else None, timeout=budget.left()
          )
          out['results'].append(r)
          _log(f'search: {side}: {r["candidates"]} candidates in {r["seconds"]} s')
        except subprocess.TimeoutExpired:
          out['not_run'][side] = f'stopped at the stage budget of {budget.seconds:.0f} s'
        except RuntimeError as e:
          out['not_run'][side] = f'failed: {str(e)[-2000:]}'
      _write(path, out)
  finally:
    os.environ.clear()
    os.environ.update(saved)
  return {
    'ok': bool(out['results']),
    'file': FILES['search'],
    'sides': [r['side'] for r in out['results']],
    'not_run': out['not_run'],
  }


def stage_steps(a, env_info: dict, budget: Budget) -> dict:
  """benchmarks.run's train and batch-1 inference sections, in a child bounded by the budget.

  benchmarks.run writes its JSON after each model of each section and skips the sections not
  started within its own --budget_s (here 70% of what is left: the later pass of bf16 and
  torch.compile compiles for minutes on a GPU); the child is stopped at the stage's budget.
  """
  path = os.path.join(a.out, FILES['steps'])
  device = 'gpu' if a.device == 'gpu' else 'cpu'
  cmd = [
    sys.executable,
    '-m',
    'benchmarks.run',
    f'--device={device}',
    f'--budget_s={max(1.0, 0.7 * budget.left()):.0f}',
    '--sections=train,infer_b1',
    f'--models={a.steps_models}',
    f'--out={path}',
    f'--torch={a.torch}',
  ]
  if a.tiny:
    cmd += [
      '--quick',
      f'--structure={TINY_STRUCTURE}',
      '--resolution=16',
      '--train_batch=4',
      '--infer_batch=4',
      '--torch_channels_last=off',
    ]
  env = _child_env(device)
  env['JAX_COMPILATION_CACHE_DIR'] = os.path.join(a.cache_dir, 'xla_cache')
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return _run_child(cmd, env, budget, path, FILES['steps'])


def _run_child(cmd, env, budget: Budget, path: str, name: str) -> dict:
  _log(' '.join(cmd[1:]))
  try:
    proc = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(1.0, budget.left())
    )
  except subprocess.TimeoutExpired as e:
    tail = (e.stderr or b'')[-2000:]
    return {
      'ok': os.path.exists(path),  # What finished before the stop is on disk.
      'file': name,
      'stopped': f'at the stage budget of {budget.seconds:.0f} s',
      'written': os.path.exists(path),
      'tail': tail.decode(errors='replace') if isinstance(tail, bytes) else tail,
    }
  written = os.path.exists(path)
  out = {'ok': written and not proc.returncode, 'file': name, 'returncode': proc.returncode}
  out['written'] = written
  if proc.returncode:
    out['tail'] = (proc.stdout + proc.stderr)[-3000:]
  return out


def ensure_dataset(cache_dir: str, train: int, test: int) -> dict:
  """A generated RAF-DB of `train` + `test` images in its official layout, prepared as ArrayRecord
  files by the project's own builder (TFDS writes ArrayRecord without TensorFlow); written once
  per size under `cache_dir`. Returns the paths and the seconds each part took."""
  import tensorflow_datasets as tfds  # Without TensorFlow: TFDS imports it only when asked to.

  from benchmarks.train_end_to_end import write_rafdb_layout
  from zenfer_jax import data

  tfds.disable_progress_bar()  # The driver's output is a log of its stages.

  root = os.path.join(cache_dir, f'rafdb_{train}_{test}')
  manual, records = os.path.join(root, 'manual'), os.path.join(root, 'array_record')
  done = os.path.join(manual, 'COMPLETE')
  out = {'manual_dir': manual, 'data_dir': records, 'train': train, 'test': test}
  if not os.path.exists(done):
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    write_rafdb_layout(manual, train, test)
    open(done, 'w').close()
    out['write_seconds'] = round(time.perf_counter() - start, 1)
  start = time.perf_counter()
  info = data.prepare_dataset('rafdb', records, manual_dir=manual, file_format='array_record')
  out['prepare_seconds'] = round(time.perf_counter() - start, 1)
  sizes = (info.split_sizes['train'], info.split_sizes['test'])
  if sizes != (train, test):
    raise RuntimeError(f'{records} holds {sizes} images, expected {(train, test)}.')
  return out


def stage_e2e(a, env_info: dict, budget: Budget) -> dict:
  """The generated dataset, the Grain input path alone, then each training run, JSON after each."""
  from benchmarks import train_end_to_end as e2e

  device = 'gpu' if a.device == 'gpu' else 'cpu'
  path = os.path.join(a.out, FILES['e2e'])
  run = argparse.Namespace(
    device=device,
    cache_dir=a.cache_dir,
    image_size=16 if a.tiny else 224,
    batch=8 if a.tiny else 64,
    warmup=1 if a.tiny else 10,
    steps=2 if a.tiny else 40,
    epochs=1 if a.tiny else 2,
    input_batches=2 if a.tiny else 20,
    timeout=0,
  )
  result = {
    'environment': {
      'command': 'python -m benchmarks.gpu_driver --stage e2e' + (' --tiny' if a.tiny else ''),
      'device': device,
      'device_description': e2e._describe(device),
      'cpu_count': os.cpu_count(),
      'load_average_before': e2e._load(),
      'loader': 'grain',
      'augment_on': 'device',
      'image_size': run.image_size,
      'batch': run.batch,
      'warmup_steps': run.warmup,
      'timed_steps': run.steps,
      'epochs': run.epochs,
      'structure_override': TINY_STRUCTURE if a.tiny else None,
      'date': time.strftime('%Y-%m-%d %H:%M'),
    },
    'runs': [],
    'input_only': [],
    'not_run': [],
  }

  def write():
    result['environment']['load_average_after'] = e2e._load()
    _write(path, result)
    if result['runs'] or result['input_only']:
      with open(os.path.splitext(path)[0] + '.md', 'w') as f:
        f.write(e2e.markdown(result))

  _log(f'e2e: the generated RAF-DB ({a.e2e_train} + {a.e2e_test} images) as ArrayRecord ...')
  dataset = ensure_dataset(a.cache_dir, a.e2e_train, a.e2e_test)
  result['environment']['dataset'] = dataset
  _log(f'e2e: dataset ready: {dataset}')
  write()
  env = e2e._environment(device, a.cache_dir)
  env['PYTHONPATH'] = _child_env(device)['PYTHONPATH']
  if budget.left() >= MIN_PART_S:
    cmd = [sys.executable, '-c', e2e.INPUT_ONLY_SCRIPT, dataset['data_dir'], 'grain']
    cmd += [str(v) for v in (run.image_size, run.batch, run.input_batches)]
    try:
      proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget.left()
      )
      if proc.returncode:
        result['not_run'].append({'part': 'input_only', 'error': proc.stderr[-2000:]})
      else:
        line = json.loads(proc.stdout.strip().splitlines()[-1])
        result['input_only'].append(dict(line, image_size=run.image_size, batch=run.batch))
    except subprocess.TimeoutExpired:
      result['not_run'].append({'part': 'input_only', 'error': 'stopped at the stage budget'})
    write()
  overrides = {'model.structure': TINY_STRUCTURE} if a.tiny else {}
  for model in [m for m in a.e2e_models.split(',') if m]:
    for dtype in [d for d in a.e2e_dtypes.split(',') if d]:
      part = {'part': 'train', 'model': model, 'dtype': dtype}
      if budget.left() < MIN_PART_S:
        result['not_run'].append({**part, 'error': f'the stage budget of {budget.seconds:.0f} s'})
        write()
        continue
      run.timeout = budget.left()
      _log(f'e2e: {model} {dtype}, loader=grain, augment_on=device ...')
      try:
        r = e2e.train_run(
          run,
          model,
          'device',
          dtype,
          dataset['manual_dir'],
          dataset['data_dir'],
          loader='grain',
          overrides=overrides,
        )
        r['structure_override'] = overrides.get('model.structure')
        result['runs'].append(r)
        _log(f'e2e: {model} {dtype}: {r["images_per_second"]:.1f} images/s')
      except subprocess.TimeoutExpired:
        result['not_run'].append({**part, 'error': 'stopped at the stage budget'})
      except RuntimeError as e:
        result['not_run'].append({**part, 'error': str(e)[-3000:]})
      write()
  return {
    'ok': bool(result['runs']),
    'file': FILES['e2e'],
    'runs': len(result['runs']),
    'input_only': len(result['input_only']),
    'not_run': result['not_run'],
  }


STAGE_FUNCTIONS = {'search': stage_search, 'steps': stage_steps, 'e2e': stage_e2e}


def main(argv=None) -> int:
  a = parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  env_info = probe(a.device)
  if a.device == 'auto':
    a.device = 'gpu' if env_info['backend'] == 'gpu' else 'cpu'
  if env_info['tensorflow_importable']:
    _log('note: TensorFlow is importable here; no stage imports it')
  driver_path = os.path.join(a.out, DRIVER_JSON)
  report = {}
  if os.path.exists(driver_path):  # Stages of earlier calls stay listed.
    with open(driver_path) as f:
      report = json.load(f)
  report.update(
    environment=env_info,
    device=a.device,
    carried=carried_versions(),
    torch_plan=dict(zip(('device', 'skipped'), torch_plan(a, env_info))),
  )
  report.setdefault('stages', {})
  _log(f'{a.device}: {env_info}')
  for stage in a.stages:
    budget = Budget(a.budget_s)
    _log(f'== {stage} (budget {a.budget_s:.0f} s)')
    entry = {
      'started': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      'budget_s': a.budget_s,
      'tiny': a.tiny,
    }
    try:
      entry.update(STAGE_FUNCTIONS[stage](a, env_info, budget))
      # 'done': the stage measured something (its JSON says what was not run, and why).
      entry['status'] = 'done' if entry.pop('ok') else 'failed'
    except Exception as e:  # The next stage still runs; the error is on record.
      entry.update(status='failed', error=f'{type(e).__name__}: {str(e)[-3000:]}')
    entry['seconds'] = round(budget.elapsed(), 1)
    report['stages'][stage] = entry
    _write(driver_path, report)
    _log(f'{stage}: {entry["status"]} in {entry["seconds"]} s')
  return 0 if all(report['stages'][s]['status'] == 'done' for s in a.stages) else 1


if __name__ == '__main__':
  sys.exit(main())
