"""Trains and evaluates a ZenNet on a facial-expression (or any image-folder) dataset.

  python -m zenfer_jax.main --config=configs/rafdb_m.py --workdir=runs/rafdb_m \
      [--config.num_epochs=100 ...]

Rerunning with the same --workdir resumes. Multi-host: launched under SLURM (or with the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables) jax.distributed is
initialised first; see launch/.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
  # TensorFlow runs the input pipeline only: keep it off the accelerators JAX uses.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  import jax

  if FLAGS.distributed or (FLAGS.distributed is None and _launched_multiprocess()):
    jax.distributed.initialize()
  logging.info(
    'JAX process %d of %d; local devices: %s',
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  from zenfer_jax import train
  from zenfer_jax.config_validation import ConfigError

  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, FileNotFoundError, train.NonFiniteLossError) as e:
    # What to fix is in the message; a traceback would only bury it.
    logging.error('%s', e)
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
