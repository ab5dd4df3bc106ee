"""Every command line reports a user error as one line and exit status 2, a bug with a traceback.

A user error is a file, flag, config key or value that cannot work; its one line says which and
what to do. `--verbosity=1` (or ZENFER_TRACEBACK=1) adds the traceback for a bug report. Any
other exception is a bug in the code and keeps its traceback. The programs run in-process
through their `main(argv)`; two slow tests run real command lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from train_fixtures import REPO, TINY, subprocess_env

from zenfer_jax import cli, errors
from zenfer_jax.config import validation
from zenfer_jax.config.files import sibling
from zenfer_jax.deploy import evaluate, export, predict
from zenfer_jax.model import describe
from zenfer_jax.rundir import workdir as workdir_lib

DEFAULT_CONFIG = str(REPO / 'configs' / 'default.py')
TF_CPP_MARKERS = ('cpu_feature_guard', 'oneDNN', 'absl::InitializeLog', 'port.cc')


@pytest.fixture(autouse=True)
def restore_state(monkeypatch, restore_logging):
  """Every test here runs a program in this process (see conftest.restore_logging)."""
  monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
  cli._installed.clear()


def _call(main, argv) -> int:
  try:
    return main(argv)
  except SystemExit as e:  # argparse's errors, and absl's app.run, exit.
    return e.code


def _one_line(rc, err: str, *words: str) -> str:
  """The whole of stderr is one `error:` line holding `words`; exit status 2; no traceback."""
  assert rc == 2, (rc, err)
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert 'Traceback' not in err
  for word in words:
    assert word in lines[0], (word, lines[0])
  return lines[0]


def _main_program(argv: list[str], monkeypatch) -> int:
  """`python -m zenfer_jax.main ARGV`, in-process (ml_collections reads sys.argv itself)."""
  from zenfer_jax import main

  argv = ['zenfer_jax.main', *argv]
  monkeypatch.setattr(sys, 'argv', argv)
  return _call(lambda a: cli.run_absl(main.main, argv=a), argv)


# ---------------------------------------------------------------------------------------------
# One representative user error per program


def _torch_cli(name: str):
  pytest.importorskip('torch')
  import importlib

  return importlib.import_module(f'torch_port.{name}').main


def _prepare_cli():
  import importlib

  return importlib.import_module('zenfer_jax.data.prepare').main


@pytest.mark.parametrize('command_module_first', [True, False])
def test_data_prepare_is_the_command_module_and_prepare_dataset_the_function(command_module_first):
  """Whichever is used first (in a fresh process, so the import order is the one under test):
  `data.prepare` is the command's module, `data.prepare_dataset` prepares."""
  first, second = 'import zenfer_jax.data.prepare\n', 'data.prepare_dataset\n'
  code = (
    'from zenfer_jax import data\n'
    + (first + second if command_module_first else second + first)
    + 'assert data.prepare is zenfer_jax.data.prepare and callable(data.prepare.main)\n'
    'try:\n'
    '  data.prepare_dataset("no_such_dataset", "unused")\n'
    'except ValueError as e:\n'
    '  print(e)\n'
  )
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Unknown dataset 'no_such_dataset'; expected one of"), proc.stdout


CASES = {
  'describe: a structure that does not parse': (
    lambda t: describe.main,
    lambda t: ['--structure', 'SuperConvK3BNRELU(3,8,2,1)SuperNope(8,8,1,1)'],
    ["unknown block 'SuperNope'", 'expected one of'],
  ),
  'describe: --num_classes 0': (
    lambda t: describe.main,
    lambda t: ['--num_classes', '0'],
    ['--num_classes', '0 is not a positive integer'],
  ),
  'evaluate: no such checkpoint': (
    lambda t: evaluate.main,
    lambda t: ['--checkpoint', str(t / 'absent')],
    ['absent', 'is not a directory', 'workdir or a model directory'],
  ),
  'evaluate: --batch_size 0': (
    lambda t: evaluate.main,
    lambda t: ['--workdir', str(t), '--batch_size', '0'],
    ['--batch_size', '0 is not a positive integer'],
  ),
  'predict: not a model directory': (
    lambda t: predict.main,
    lambda t: ['--checkpoint', str(t), 'face.png'],
    ['model_card.json not found'],
  ),
  'predict: --top_k 0': (
    lambda t: predict.main,
    lambda t: ['--checkpoint', str(t), '--top_k', '0', 'face.png'],
    ['--top_k', '0 is not a positive integer'],
  ),
  'prepare: an unknown dataset': (
    lambda t: _prepare_cli(),
    lambda t: ['--dataset', 'rafdbb', '--data_dir', str(t)],
    ["'rafdbb'", 'rafdb'],
  ),
  'export: no such checkpoint': (
    lambda t: export.main,
    lambda t: [
      '--checkpoint',
      str(t / 'absent'),
      '--format',
      'stablehlo',
      '--output',
      'm.stablehlo',
    ],
    ['absent', 'is not a directory'],
  ),
  'export: --batch 0': (
    lambda t: export.main,
    lambda t: ['--checkpoint', str(t), '--format', 'onnx', '--output', 'm.onnx', '--batch', '0'],
    ['--batch', '0 is not a positive integer'],
  ),
  'torch_port.convert: random bytes': (
    lambda t: _torch_cli('convert'),
    lambda t: (
      ['--checkpoint', _random_file(t), '--structure', TINY, '--num_classes', '7']
      + ['--output', str(t / 'out')]
    ),
    ['not a checkpoint', 'random.pth'],
  ),
  'torch_port.export: not a model directory': (
    lambda t: _torch_cli('export'),
    lambda t: ['--checkpoint', str(t), '--output', str(t / 'x.pth')],
    ['model_card.json not found'],
  ),
}


def _random_file(tmp_path) -> str:
  path = tmp_path / 'random.pth'
  path.write_bytes(b'\x80' + np.random.default_rng(0).integers(0, 256, 999, np.uint8).tobytes())
  return str(path)


@pytest.mark.parametrize('case', list(CASES))
def test_a_user_error_is_one_line_and_exit_status_2(case, tmp_path, capsys):
  program, argv, words = CASES[case]
  main = program(tmp_path)
  rc = _call(main, argv(tmp_path))
  _one_line(rc, capsys.readouterr().err, *words)


@pytest.mark.parametrize(
  'argv, words',
  [
    (['--config.nonexistent=1'], ['config (from', "has no key 'nonexistent'", 'batch_size']),
    (['--config.data.nam=digits'], ["has no key 'nam'", 'did you mean config.data.name?']),
    (['--config.batch_size=abc'], ['--config.batch_size=abc', 'invalid literal']),
    (['--no_such_flag'], ["Unknown command line flag 'no_such_flag'", '--helpfull']),
  ],
)
def test_main_flag_and_config_key_errors(argv, words, tmp_path, monkeypatch, capsys):
  rc = _main_program([f'--config={DEFAULT_CONFIG}', f'--workdir={tmp_path}', *argv], monkeypatch)
  _one_line(rc, capsys.readouterr().err, *words)
  assert os.listdir(tmp_path) == []  # Refused before anything was written.


def test_main_config_file_missing_or_not_python(tmp_path, monkeypatch, capsys):
  missing = tmp_path / 'nope.py'
  rc = _main_program([f'--config={missing}', f'--workdir={tmp_path / "w"}'], monkeypatch)
  _one_line(rc, capsys.readouterr().err, f'--config={missing}: no such config file')
  (tmp_path / 'notes.txt').write_text('batch size: 64\n')
  rc = _main_program([f'--config={tmp_path / "notes.txt"}', '--workdir=w'], monkeypatch)
  _one_line(rc, capsys.readouterr().err, 'notes.txt: not a Python config file')


def test_main_unusable_compilation_cache_dir_is_one_line(tmp_path, monkeypatch, capsys):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  workdir = tmp_path / 'w'
  argv = [
    f'--config={DEFAULT_CONFIG}',
    f'--workdir={workdir}',
    f'--config.compilation_cache_dir={blocker}/cache',
  ]
  rc = _main_program(argv, monkeypatch)
  _one_line(rc, capsys.readouterr().err, 'compilation_cache_dir=', 'Not a directory', str(blocker))
  assert not (workdir / 'log.txt').exists()


def test_main_config_value_error_comes_before_the_log_file(tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'run'
  argv = [f'--config={DEFAULT_CONFIG}', f'--workdir={workdir}', '--config.batch_size=0']
  rc = _main_program(argv, monkeypatch)
  _one_line(rc, capsys.readouterr().err, 'config.batch_size=0 is invalid', 'positive')
  assert not (workdir / 'log.txt').exists()


def test_main_checks_the_config_once_and_the_loop_takes_it_as_checked(tmp_path, monkeypatch):
  from zenfer_jax.training import loop

  checks, runs = [], []
  monkeypatch.setattr(validation, 'validate_config', lambda *a: checks.append(a))
  monkeypatch.setattr(loop, 'validate_config', lambda *a: checks.append(a))
  monkeypatch.setattr(loop, 'train_validated', lambda config, workdir: runs.append(workdir))
  workdir = tmp_path / 'run'
  argv = [f'--config={DEFAULT_CONFIG}', f'--workdir={workdir}', '--config.compilation_cache_dir=']
  assert _main_program(argv, monkeypatch) in (0, None)
  assert len(checks) == 1 and runs == [str(workdir)]


# ---------------------------------------------------------------------------------------------
# Tracebacks: on request for user errors, always for bugs


@pytest.mark.parametrize('how', ['--verbosity=1', 'ZENFER_TRACEBACK=1'])
def test_a_user_error_shows_its_traceback_on_request(how, monkeypatch, capsys):
  argv = ['--structure', 'SuperConvK3BNRELU(3,8']
  if how.startswith('--'):
    argv.append(how)
  else:
    monkeypatch.setenv(*how.split('='))
  assert describe.main(argv) == 2
  err = capsys.readouterr().err
  assert 'Traceback (most recent call last)' in err and 'StructureError' in err
  assert err.rstrip().splitlines()[-1].startswith('error: ')  # Still last, still one line.


def test_main_shows_the_traceback_with_verbosity_1(tmp_path, monkeypatch, capsys):
  argv = [f'--config={DEFAULT_CONFIG}', f'--workdir={tmp_path}', '--config.nonexistent=1']
  rc = _main_program([*argv, '--verbosity=1'], monkeypatch)
  err = capsys.readouterr().err
  assert rc == 2 and 'Traceback (most recent call last)' in err
  assert err.rstrip().splitlines()[-1].startswith('error: --config.nonexistent=1: config')


def test_an_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
  def bug(*args, **kwargs):
    raise RuntimeError('a bug')

  monkeypatch.setattr(describe, 'describe', bug)
  with pytest.raises(RuntimeError, match='a bug'):
    describe.main(['--model', 'zennet_m'])
  # ValueError is a user error only where a program says so; a KeyError never is.
  with pytest.raises(KeyError):
    cli.command(lambda argv: {}['missing'])([])

  from zenfer_jax.training import distributed

  monkeypatch.setattr(distributed, 'launched_multiprocess', bug)
  with pytest.raises(RuntimeError, match='a bug'):
    _main_program([f'--config={DEFAULT_CONFIG}', f'--workdir={tmp_path}'], monkeypatch)


def test_command_reports_typed_errors_and_exit_messages(capsys):
  def raises(error):
    return cli.command(lambda argv: (_ for _ in ()).throw(error))

  assert raises(errors.InvalidInput('bad value\n  listed: a\n  ^'))([]) == 2
  assert capsys.readouterr().err == 'error: bad value; listed: a\n'
  assert raises(FileNotFoundError(2, 'No such file or directory', 'x.png'))([]) == 2
  assert 'x.png' in capsys.readouterr().err
  assert raises(SystemExit('error: said already'))([]) == 2
  assert capsys.readouterr().err == 'error: said already\n'
  with pytest.raises(SystemExit) as e:  # --help and argparse's own exits are left alone.
    raises(SystemExit(0))([])
  assert e.value.code == 0


def test_one_line_joins_lists_and_drops_carets():
  assert cli.one_line('do not match:\n  missing (2):\n    a\n    b') == (
    'do not match: missing (2): a; b'
  )
  assert (
    cli.one_line('at position 3: bad\n  ...abc...\n       ^') == 'at position 3: bad; ...abc...'
  )


# ---------------------------------------------------------------------------------------------
# Readers of a workdir: a damaged checkpoint is a user error


def test_evaluate_names_every_damaged_checkpoint_in_one_line(tmp_path, capsys):
  from zenfer_jax.rundir import model_directory

  workdir = tmp_path / 'run'
  ckpts = workdir_lib.Checkpoints(str(workdir))
  state = {'params': {'w': np.ones((64, 64), np.float32)}, 'batch_stats': {}}
  ckpts.save_latest(3, state, {'step': 3})
  ckpts.close()
  root = workdir / workdir_lib.LATEST / '3' / 'state'
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  with open(max(files, key=os.path.getsize), 'r+b') as f:  # The array bytes, cut short.
    f.truncate(os.path.getsize(f.name) // 2)
  card = model_directory.make_card(TINY, 10, image_size=16, recipe='rafdb')
  (workdir / model_directory.CARD_NAME).write_text(json.dumps(card))
  config = {
    'data': {'name': 'digits', 'data_dir': str(tmp_path), 'classes': '', 'eval_split': 'test'}
  }
  (workdir / workdir_lib.CONFIG).write_text(json.dumps(config))

  rc = evaluate.main(['--workdir', str(workdir)])
  _one_line(rc, capsys.readouterr().err, 'No latest checkpoint', str(workdir / 'checkpoints' / '3'))


# ---------------------------------------------------------------------------------------------
# Validation of values


@pytest.mark.parametrize(
  'key, value',
  [
    ('batch_size', 0),
    ('eval_batch_size', -8),
    ('num_epochs', 0),
    ('lr_per_256', 0.0),
    ('data.image_size', 0),
    ('steps_per_epoch', 0),
    ('data.loader', 'torch'),
  ],
)
def test_config_values_that_cannot_work_are_named(key, value):
  config = sibling(DEFAULT_CONFIG, 'default').get_config()
  node, *path = [config, *key.split('.')]
  for part in path[:-1]:
    node = node[part]
  node[path[-1]] = value
  with pytest.raises(validation.ConfigError, match=rf'config\.{key}={value!r} is invalid'):
    validation.validate_config(config)


def test_the_fer2013_recipe_runs_on_the_device_and_with_grain():
  """The device chain has FER2013's rotation and AutoAugment-free variant, so nothing refuses it."""
  config = sibling(DEFAULT_CONFIG, 'fer2013_r').get_config()
  config.data.augment_on = 'device'
  validation.validate_config(config)
  config.data.augment_on = 'host'
  config.data.loader = 'grain'
  validation.validate_config(config)


def test_grain_loader_settings_that_cannot_work_are_named():
  config = sibling(DEFAULT_CONFIG, 'fer2013_r').get_config()
  config.data.loader = 'grain'
  config.data.grain_threads = 0
  with pytest.raises(validation.ConfigError, match=r'grain_threads=0.*integer >= 1'):
    validation.validate_config(config)
  config.data.grain_threads, config.data.grain_workers = 2, -1
  with pytest.raises(validation.ConfigError, match=r'grain_workers=-1.*integer >= 0'):
    validation.validate_config(config)


def test_a_search_with_nothing_to_do_says_so():
  config = ml_collections.ConfigDict({'search': {'max_iterations': 0}})
  with pytest.raises(validation.ConfigError, match='max_iterations=0: nothing to do'):
    validation.check_search_iterations(config)
  assert cli.is_user_error(validation.ConfigError('x'))
  config.search.max_iterations = 1
  validation.check_search_iterations(config)


# ---------------------------------------------------------------------------------------------
# Real command lines (fresh processes): stderr is the error line and nothing else


def _fresh(args: list[str]) -> subprocess.CompletedProcess:
  env = subprocess_env()
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # The program itself must keep TensorFlow quiet.
  # TensorFlow's oneDNN line on any CPU, not only those it turns oneDNN on for by default (see
  # test_main.ONEDNN_LINE): without a start-up line to keep off stderr the checks prove nothing.
  env['TF_ENABLE_ONEDNN_OPTS'] = '1'
  env.pop(cli.TRACEBACK_ENV, None)
  return subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )


@pytest.mark.slow
def test_prepare_command_line_error_without_tensorflow_start_up_lines(tmp_path):
  """`zenfer_jax.data` imports TensorFlow only when used, after prepare has set up its logging."""
  proc = _fresh(['zenfer_jax.data.prepare', '--dataset', 'rafdb', '--data_dir', str(tmp_path)])
  for marker in TF_CPP_MARKERS:
    assert marker not in proc.stderr, proc.stderr
  _one_line(proc.returncode, proc.stderr, 'manual_dir')


@pytest.mark.slow
def test_training_command_line_bad_value_is_one_line(tmp_path):
  proc = _fresh(
    ['zenfer_jax.main', f'--config={REPO / "configs" / "demo.py"}', f'--workdir={tmp_path}']
    + ['--config.num_epochs=0']
  )
  _one_line(proc.returncode, proc.stderr, 'config.num_epochs=0 is invalid', 'at least 1')
