"""Shared fixtures: the ground-truth reference facts kept beside the tests, and the process-wide
logging state that command-line programs set up, put back after a test."""

import json
import logging as std_logging
import os
import pathlib
import shutil
import tempfile

import pytest

# Tests run on CPU; keep TF quiet.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Test inputs are tiny, so compile time dominates: XLA's backend optimisation level 0 compiles
# about 4x faster here (measured on a ZenNet-R init: 20 s -> 5 s). Set before JAX initialises;
# subprocesses started by tests inherit it. Benchmarks never run under this file.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
  ).strip()

# One persistent compilation cache for the session: both pytest workers and every training or
# search subprocess compile many of the same small programs (the tiny demo model's steps, the
# reference models' inits). Made by the controller before the workers start, so they inherit it;
# a test that needs its own cache passes one explicitly.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='zenfer-tests-xla-cache-')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  _SESSION_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']
else:
  _SESSION_CACHE = None

REFERENCE_DIR = pathlib.Path(__file__).parent / 'reference'


def pytest_unconfigure(config):
  if _SESSION_CACHE:  # Only the process that made it removes it.
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope='session')
def reference_dir() -> pathlib.Path:
  return REFERENCE_DIR


@pytest.fixture(scope='session')
def model_facts() -> dict:
  return json.loads((REFERENCE_DIR / 'model_facts.json').read_text())


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory) -> str:
  """The digits dataset prepared once per test process (tests only read it)."""
  from zenfer_jax import data

  path = str(tmp_path_factory.mktemp('digits_tfds'))
  data.prepare_dataset('digits', path)
  return path


@pytest.fixture
def restore_logging():
  """The programs set up logging and parse absl flags for the whole process: put it back."""
  from absl import flags, logging

  from zenfer_jax import cli

  root = std_logging.getLogger()
  handlers, level = list(root.handlers), root.level
  verbosity = flags.FLAGS['verbosity']
  saved = (verbosity.value, verbosity.using_default_value, logging.get_absl_logger().level)
  yield
  for handler in list(root.handlers):
    if handler not in handlers:
      root.removeHandler(handler)
      handler.close()
  for handler in handlers:
    if handler not in root.handlers:
      root.addHandler(handler)
  root.setLevel(level)
  verbosity.value, verbosity.using_default_value = saved[:2]
  logging.get_absl_logger().setLevel(saved[2])
  std_logging.captureWarnings(False)
  cli._installed.clear()
