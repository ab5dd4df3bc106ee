"""zenfer_jax.cli: one flag spelling for every program, and what reaches the terminal or the log."""

from __future__ import annotations

import logging as std_logging
import os
import warnings

import pytest
from absl import flags, logging

from zenfer_jax import cli


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(prog='tool')
  p.add_argument('--num_classes', type=int)
  p.add_argument('--use_sa', action='store_true')
  p.add_argument('--top_k', type=int, default=3)
  p.add_argument('images', nargs='*')
  return p


def test_flags_are_spelt_with_underscores():
  args = _parser().parse_args(['--num_classes', '7', '--use_sa', '--top_k=2'])
  assert (args.num_classes, args.use_sa, args.top_k) == (7, True, 2)
  assert args.verbosity is None


def test_hyphenated_spellings_are_refused_naming_the_flag_to_use(capsys):
  # Accepted until v0.1.0 (CHANGELOG.md); now an unknown flag, with the spelling to use.
  with pytest.raises(SystemExit) as e:
    _parser().parse_args(['--num-classes', '7', '--top-k=2'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert 'unrecognized arguments' in err
  assert 'flags are spelt with underscores: use --num_classes, --top_k' in err


def test_arguments_that_are_not_flags_are_left_alone():
  args = _parser().parse_args(['--top_k=1', 'my-face.jpg', '--', '--not-a-flag.png'])
  assert args.images == ['my-face.jpg', '--not-a-flag.png']
  assert args.top_k == 1


def test_unknown_flags_fail(capsys):
  for bad in ('--num_clases', '--no-such-flag=1'):
    with pytest.raises(SystemExit) as e:
      _parser().parse_args([bad, '3'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'unrecognized arguments' in err and 'underscores' not in err


def test_verbosity_is_every_programs_flag_listed_after_its_own():
  p = _parser()
  assert p.parse_args(['-v', '1']).verbosity == 1
  assert p.parse_args(['--verbosity=-1']).verbosity == -1
  text = p.format_help()
  assert text.index('--top_k') < text.index('--verbosity')


def _record(level: int, path: str, name: str = 'absl', **extra) -> std_logging.LogRecord:
  record = std_logging.LogRecord(name, level, path, 1, 'message %d', (7,), None)
  record.__dict__.update(extra)
  return record


def test_terminal_shows_own_progress_lines_and_everyones_warnings():
  own = os.path.join(os.path.dirname(cli.__file__), 'training', 'loop.py')
  other = os.path.join(os.path.dirname(std_logging.__file__), 'tfds_reader.py')
  narrating, quiet = cli._TerminalHandler(True), cli._TerminalHandler(False)
  assert narrating.filter(_record(std_logging.INFO, own))
  assert not quiet.filter(_record(std_logging.INFO, own))
  for handler in (narrating, quiet):
    assert not handler.filter(_record(std_logging.INFO, other))
    assert handler.filter(_record(std_logging.WARNING, other))
    assert not handler.filter(_record(std_logging.WARNING, other, name='py.warnings'))
    assert not handler.filter(_record(std_logging.ERROR, own, terminal=False))
  assert narrating.format(_record(std_logging.INFO, own)) == 'message 7'
  warning = narrating.format(_record(std_logging.WARNING, other))
  assert warning.startswith('W') and warning.endswith('tfds_reader.py:1] message 7')


def test_quiet_run_keeps_every_line_in_the_log_file(tmp_path, capsys, restore_logging):
  cli.setup_logging(None, show_own_info=True, log_file_follows=True)
  logging.info('before the file: own line')  # This test file is not one of the package's own,
  std_logging.getLogger('some.library').info('library detail')  # nor is this library.
  with warnings.catch_warnings():
    warnings.simplefilter('always')
    std_logging.captureWarnings(True)
    warnings.warn('deprecated thing', FutureWarning, stacklevel=1)
  logging.warning('a warning')
  cli.log_to_file(str(tmp_path / 'log.txt'))
  logging.info('after the file')
  for handler in std_logging.getLogger().handlers:
    handler.flush()

  err = capsys.readouterr().err
  assert 'a warning' in err
  assert 'library detail' not in err and 'deprecated thing' not in err
  assert 'before the file' not in err  # INFO from outside the package stays off the terminal.
  log = (tmp_path / 'log.txt').read_text()
  for line in ('before the file: own line', 'library detail', 'deprecated thing', 'a warning'):
    assert line in log
  assert log.index('before the file') < log.index('after the file')
  assert log.startswith('I')  # absl's prefix: level, time, file and line.


def test_verbosity_hands_the_terminal_to_absl(tmp_path, restore_logging):
  cli.setup_logging(0)
  root = std_logging.getLogger()
  assert logging.get_absl_handler() in root.handlers
  assert not any(isinstance(h, cli._TerminalHandler) for h in root.handlers)
  assert logging.get_verbosity() == 0


def test_quiet_leaves_logging_as_it_found_it(restore_logging):
  """A library user who never set absl's verbosity keeps INFO lines after a checkpoint is read."""
  from zenfer_jax.rundir import workdir

  flag, absl_logger, root = flags.FLAGS['verbosity'], logging.get_absl_logger(), std_logging.root
  flag.value, flag.using_default_value = -1, True  # absl's state before anyone set it.
  absl_logger.setLevel(std_logging.NOTSET)  # Follows the root logger ...
  root.setLevel(std_logging.INFO)  # ... which a library user set to INFO.
  seen = []
  handler = std_logging.Handler()
  handler.emit = lambda record: seen.append(record.getMessage())
  root.addHandler(handler)
  try:
    logging.info('before')
    with workdir.quiet():
      logging.info('inside')  # Orbax's file-by-file lines: dropped.
      logging.warning('a warning inside')
    logging.info('after')
  finally:
    root.removeHandler(handler)
  assert seen == ['before', 'a warning inside', 'after']
  assert (flag.value, flag.using_default_value) == (-1, True)
  assert absl_logger.level == std_logging.NOTSET and root.level == std_logging.INFO
