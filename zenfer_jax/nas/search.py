"""Zen-score evolutionary architecture search.

  zenfer-search --config=search_m --workdir=runs/search_m [--config.search.max_iterations=2000 ...]

(or `python -m zenfer_jax.nas.search`; --config also takes a config file's path).

Writes to --workdir: best_structure.txt (feed it to training with
--config.model.structure=WORKDIR/best_structure.txt), candidates.jsonl (every
scored candidate: structure, score, FLOPs, model size, layers, and the search's
cumulative compiled_programs and elapsed_s), search_state.json (the population,
written atomically every config.search.checkpoint_every iterations, the checkpoint
before it kept as search_state.previous.json), at every checkpoint search_summary.json
(candidates/s, compile and scoring time, best so far) and search_progress.png, and
log.txt (every log line). Rerunning with the same --workdir resumes; a damaged latest
checkpoint falls back to the previous one, saying so. A bad config fails before
anything is scored, as one line on stderr with exit status 2 (--verbosity=1 adds the
traceback). The search holds WORKDIR/run.lock while it runs: a second search (or
training run) on the same workdir stops at once, naming the process that holds it.

  --config.search.warmup_only=True compiles the programs of the search's first
  config.search.warmup_candidates candidates into the persistent compilation cache,
  prints how many and how long, and exits (scores nothing, writes nothing to --workdir).
  With config.search.compile_grid on (the default on accelerators) it compiles every program
  the budgets allow, which the search itself also does before its first candidate.
"""

import os
import time

from absl import app, flags, logging

from zenfer_jax import cli
from zenfer_jax.config import validation
from zenfer_jax.config.files import define_config_flag
from zenfer_jax.errors import InvalidInput
from zenfer_jax.nas import evolution
from zenfer_jax.rundir import compilation_cache, workdir_lock

FLAGS = flags.FLAGS
flags.DEFINE_string(
  'workdir', None, 'Directory for the population checkpoint, the candidate log and the result.'
)
flags.DEFINE_bool('progress', True, 'Show a progress bar (candidates/s and best score).')
define_config_flag('Search')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir.strip():
    raise InvalidInput(
      "--workdir is empty: name the directory for the search's checkpoints and results, "
      'e.g. --workdir=runs/search_m.'
    )
  workdir = os.path.abspath(os.path.expanduser(FLAGS.workdir))
  config = FLAGS.config
  warmup_only = bool(config.search.get('warmup_only', False))
  cli.setup_logging(
    FLAGS.verbosity if FLAGS['verbosity'].present else None,
    show_own_info=True,
    log_file_follows=not warmup_only,  # Warm-up writes nothing to the workdir.
  )
  # The user's mistakes first, before the workdir is created or anything is compiled.
  validation.check_search_iterations(config)
  setup = evolution.validate_config(config)
  if warmup_only:
    warmup(config, setup)
    return
  with workdir_lock.hold(workdir, 'search'):
    log_file = os.path.join(workdir, 'log.txt')
    cli.log_to_file(log_file)
    import jax

    logging.info('Searching on %s; workdir %s (full log: %s)', jax.devices(), workdir, log_file)
    try:
      state = evolution.run_search(config, workdir, progress=FLAGS.progress, setup=setup)
    except Exception as e:
      if cli.is_user_error(e):  # The terminal gets it as one line (cli.run_absl), the log too.
        logging.error('%s', e, extra={'terminal': False})
      raise
  best = state.best()
  if best is not None:
    logging.info('best score %.4f: %s', best[1], best[0], extra={'terminal': False})
    print(f'best score {best[1]:.4f} after {state.next_iteration} iterations: {best[0]}')


def warmup(config, setup) -> None:
  """Compiles the first candidates' programs into the persistent cache; prints how many."""
  import jax

  s = config.search
  if setup.settings['proxy'] != 'zen':
    print('warm-up: nothing to compile for proxy', setup.settings['proxy'])
    return
  compilation_cache.enable(s.get('compilation_cache_dir', '') or '')
  t = time.perf_counter()
  structures = evolution.warmup_structures(config, s.get('warmup_candidates', 256), setup)
  scorer = evolution.jax_scorer(setup.settings)
  # The grid first: it sizes the weight buffer, which is part of every program's key.
  grid = scorer.compile_grid() if evolution.grid_enabled(config) else None
  count = scorer.warmup(structures)
  _, compile_s = scorer.stats()
  what = 'the level grid and ' if grid is not None else ''
  print(
    f'warm-up: {count} programs for {what}the first {len(structures)} candidates '
    f'({setup.settings["space"]}, {s.resolution} px, batch {s.batch_size}, '
    f'{setup.settings["candidates_per_step"]} per step, {jax.devices()[0].platform}) in '
    f'{time.perf_counter() - t:.1f} s ({compile_s:.1f} s compiling, summed over threads)'
  )


def run() -> None:
  """The `zenfer-search` command."""
  cli.run_absl(main)


if __name__ == '__main__':
  run()
