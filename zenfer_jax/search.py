"""Zen-score evolutionary architecture search.

  python -m zenfer_jax.search --config=configs/search_m.py --workdir=runs/search_m \
      [--config.search.max_iterations=2000 ...]

Writes to --workdir: best_structure.txt (feed it to training with
--config.model.structure=WORKDIR/best_structure.txt), candidates.jsonl (every
scored candidate: structure, score, FLOPs, model size, layers) and
search_state.json (the population, written atomically every
config.search.checkpoint_every iterations). Rerunning with the same --workdir
resumes; a bad config fails before anything is scored.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'workdir', None, 'Directory for the population checkpoint, the candidate log and the result.'
)
flags.DEFINE_bool('progress', True, 'Show a progress bar (candidates/s and best score).')
config_flags.DEFINE_config_file(
  'config', None, 'Search configuration file (configs/search_m.py).', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from zenfer_jax.nas import evolution

  try:
    evolution.validate_config(FLAGS.config)
  except evolution.SearchConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  import jax

  logging.info('Searching on %s', jax.devices())
  state = evolution.run_search(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress)
  best = state.best()
  if best is not None:
    logging.info('best score %.4f: %s', best[1], best[0])
    print(f'best score {best[1]:.4f} after {state.next_iteration} iterations: {best[0]}')


if __name__ == '__main__':
  app.run(main)
