"""Trains and evaluates a ZenNet on a facial-expression (or any image-folder) dataset.

  python -m zenfer_jax.main --config=configs/rafdb_m.py --workdir=runs/rafdb_m \
      [--config.num_epochs=100 ...]

Rerunning with the same --workdir resumes. Multi-host: launched under SLURM (or with the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) jax.distributed is
initialised first; see launch/.

The terminal shows the start-up summary, the progress bar, one line per epoch and the result;
WORKDIR/log.txt (log.process<i>.txt on the other processes of a multi-host run) holds every
library's log lines as well. --verbosity=0 shows those on the terminal too.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from zenfer_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the exported model.')
flags.DEFINE_bool(
  'distributed',
  None,
  'Call jax.distributed.initialize() (default: when the '
  'environment says this is one of several processes).',
)
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _launched_multiprocess() -> bool:
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(os.environ.get(var, '1') or 1) > 1:
      return True
  return False


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_logging(
    FLAGS.verbosity if FLAGS['verbosity'].present else None,
    show_own_info=True,
    log_file_follows=True,
    uses_tensorflow=True,
  )
  # TensorFlow runs the input pipeline only: keep it off the accelerators JAX uses.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  import jax

  if FLAGS.distributed or (FLAGS.distributed is None and _launched_multiprocess()):
    jax.distributed.initialize()
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
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
  from zenfer_jax import train
  from zenfer_jax.config_validation import ConfigError

  try:
    train.train_and_evaluate(FLAGS.config, workdir)
  except (ConfigError, FileNotFoundError, train.NonFiniteLossError) as e:
    # What to fix is in the message; a traceback would only bury it.
    logging.error('%s', e, extra={'terminal': False})
    sys.exit(f'error: {e}')
  logging.info(
    'In %s: model_best/ (the best model, for evaluate, predict and torch_port.export), '
    'metrics.jsonl, summary.json, TensorBoard events, %s.',
    workdir,
    os.path.basename(log_file),
  )


if __name__ == '__main__':
  app.run(main)
