"""Zen-score evolutionary architecture search.

  python -m zenfer_jax.search --config=configs/search_m.py --workdir=runs/search_m \
      [--config.search.max_iterations=2000 ...]

Writes to --workdir: best_structure.txt (feed it to training with
--config.model.structure=WORKDIR/best_structure.txt), candidates.jsonl (every
scored candidate: structure, score, FLOPs, model size, layers, and the search's
cumulative compiled_programs and elapsed_s), search_state.json (the population,
written atomically every config.search.checkpoint_every iterations), and at every
checkpoint search_summary.json (candidates/s, compile and scoring time, best so
far) and search_progress.png. Rerunning with the same --workdir resumes; a bad
config fails before anything is scored.

  --config.search.warmup_only=True compiles the programs of the search's first
  config.search.warmup_candidates candidates into the persistent compilation cache,
  prints how many and how long, and exits (scores nothing, writes nothing to --workdir).
"""

import os
import sys
import time

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
  if FLAGS.config.search.get('warmup_only', False):
    setup = evolution.validate_config(FLAGS.config)
    s = FLAGS.config.search
    if setup.settings['proxy'] != 'zen':
      print('warm-up: nothing to compile for proxy', setup.settings['proxy'])
      return
    evolution.enable_compilation_cache(os.path.expanduser(s.get('compilation_cache_dir', '') or ''))
    t = time.perf_counter()
    structures = evolution.warmup_structures(FLAGS.config, s.get('warmup_candidates', 256))
    scorer = evolution.jax_scorer(setup.settings)
    count = scorer.warmup(structures)
    programs, compile_s = scorer.stats()
    print(
      f'warm-up: {count} programs for the first {len(structures)} candidates '
      f'({setup.settings["space"]}, {s.resolution} px, batch {s.batch_size}, '
      f'{setup.settings["candidates_per_step"]} per step, {jax.devices()[0].platform}) in '
      f'{time.perf_counter() - t:.1f} s ({compile_s:.1f} s compiling, summed over threads)'
    )
    return
  state = evolution.run_search(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress)
  best = state.best()
  if best is not None:
    logging.info('best score %.4f: %s', best[1], best[0])
    print(f'best score {best[1]:.4f} after {state.next_iteration} iterations: {best[0]}')


if __name__ == '__main__':
  app.run(main)
