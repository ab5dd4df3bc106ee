"""Trains and evaluates a ZenNet on a facial-expression (or any image-folder) dataset.

  zenfer-train --config=rafdb_m --workdir=runs/rafdb_m [--config.num_epochs=100 ...]

(or `python -m zenfer_jax.main`). --config takes a shipped config's name or a config file's path
(configs/rafdb_m.py, or a copy of it anywhere).

Rerunning with the same --workdir resumes. A run holds WORKDIR/run.lock while it runs: a second
run on the same workdir stops at once, naming the process that holds it. Multi-process: launched
under SLURM, Open MPI or with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
(launch/train_local.sh), the process joins the job first (zenfer_jax.training.distributed); if
another process of the job dies, this one stops within --peer_timeout_s with exit code 75 and a
message saying so, and rerunning the same command resumes.

The terminal shows the start-up summary, the progress bar, one line per epoch and the result;
WORKDIR/log.txt (log.process<i>.txt on the other processes of a multi-host run) holds every
library's log lines as well. --verbosity=0 shows those on the terminal too.
"""

import atexit
import os
import sys

from absl import app, flags, logging

from zenfer_jax import cli
from zenfer_jax.config.files import define_config_flag
from zenfer_jax.rundir import compilation_cache, workdir_lock
from zenfer_jax.training import distributed

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the exported model.')
flags.DEFINE_bool(
  'distributed',
  None,
  'Call jax.distributed.initialize() (default: when the '
  'environment says this is one of several processes).',
)
flags.DEFINE_float(
  'peer_timeout_s',
  60.0,
  'Multi-process runs: stop (exit code 75, rerun to resume) when another process of the job '
  'has not responded for this many seconds.',
)
flags.register_validator(
  'peer_timeout_s', lambda s: s > 0, message='--peer_timeout_s must be a positive number of seconds'
)
define_config_flag('Training')
flags.mark_flags_as_required(['config', 'workdir'])


def _lock(workdir: str) -> None:
  """Holds the workdir until the process exits, or exits at once naming the run that holds it."""
  try:
    lock = workdir_lock.acquire(workdir, 'training run')
  except workdir_lock.WorkdirLocked as e:
    sys.exit(f'error: {e}')
  atexit.register(lock.release)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir.strip():
    sys.exit(
      "error: --workdir is empty: name the directory for this run's checkpoints and logs, "
      'e.g. --workdir=runs/demo.'
    )
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  multiprocess = FLAGS.distributed or (
    FLAGS.distributed is None and distributed.launched_multiprocess()
  )
  if not multiprocess:  # Before anything is imported or written; process 0 of several, below.
    _lock(workdir)
  # The Grain loader never imports TensorFlow (zenfer_jax/data/grain_pipeline.py).
  uses_tf = FLAGS.config.data.get('loader', 'tf.data') != 'grain'
  cli.setup_logging(
    FLAGS.verbosity if FLAGS['verbosity'].present else None,
    show_own_info=True,
    log_file_follows=True,
    uses_tensorflow=uses_tf,
  )
  # Imported only now: the logging set up above keeps their start-up lines off the terminal.
  if uses_tf:  # TensorFlow runs the input pipeline only: keep it off the accelerators JAX uses.
    import tensorflow as tf

    tf.config.set_visible_devices([], 'GPU')
  import jax

  if multiprocess:
    try:
      distributed.initialize(FLAGS.peer_timeout_s)
    except ValueError as e:
      sys.exit(f'error: {e}')
    if jax.process_index() == 0:
      _lock(workdir)
    else:
      cli.terminal_warnings_only()
  # Imports JAX and Flax: after the logging, and out of --help.
  from zenfer_jax.config.validation import validate_config

  # The run's one check (the loop takes it as done): a bad value is the only line shown.
  validate_config(FLAGS.config, jax.device_count())
  cache = compilation_cache.enable(FLAGS.config.compilation_cache_dir)
  index = jax.process_index()
  log_file = os.path.join(workdir, 'log.txt' if index == 0 else f'log.process{index}.txt')
  cli.log_to_file(log_file)
  logging.info(
    'JAX process %d of %d; local devices: %s',
    index,
    jax.process_count(),
    jax.local_devices(),
  )
  logging.info('Workdir %s (full log: %s)', workdir, log_file)
  logging.info(
    'Compilation cache: %s',
    cache or jax.config.jax_compilation_cache_dir or 'off',
    extra={'terminal': False},  # The log file's; the terminal keeps its fixed start-up lines.
  )
  # Imports JAX, Optax and Orbax: after the logging, and out of --help.
  from zenfer_jax.training import loop

  watchdog = distributed.Watchdog(FLAGS.peer_timeout_s, workdir=workdir).start()
  ok = False
  try:
    loop.train_validated(FLAGS.config, workdir)
    ok = True
  except Exception as e:
    if cli.is_user_error(e):  # The terminal gets it as one line (cli.run_absl), the log too.
      logging.error('%s', e, extra={'terminal': False})
    raise
  finally:
    watchdog.finish(ok)
  logging.info(
    'In %s: model_best/ (the best model, for evaluate, predict and torch_port.export), '
    'metrics.jsonl, summary.json, TensorBoard events, %s.',
    workdir,
    os.path.basename(log_file),
  )


def run() -> None:
  """The `zenfer-train` command."""
  cli.run_absl(main)


if __name__ == '__main__':
  run()
