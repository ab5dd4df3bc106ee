"""What every command-line program of this repository shares: flag spelling, --verbosity, logs.

The conventions, for `zenfer_jax.*`, `torch_port.*` and `benchmarks.*` alike:

- Flags are spelt with underscores (`--num_classes`, `--data_dir`, `--top_k`), as the config
  fields (`--config.data.data_dir`) and the original PyTorch scripts (`--num_classes`,
  `--use_sa`) spell them. Programs built on `ArgumentParser` below also take the hyphenated
  spelling of any flag (`--num-classes`), so commands written for older versions keep working.
- Training and search parse their flags with absl (ml_collections config files are absl
  flags); every other program with `ArgumentParser`, which `main(argv)` can call in-process.
- Logging is absl.logging. A program's result (a table, JSON, a summary line) goes to stdout;
  logs, progress bars and errors go to stderr.
- By default a program is quiet: the terminal shows warnings and errors (and, for training,
  this package's own progress lines: the start-up summary, one line per epoch, the result), not
  TensorFlow's C++ start-up lines nor other libraries' INFO lines; a training run writes every
  line to WORKDIR/log.txt. `--verbosity=0` (absl's levels: -1 warnings, 0 info, 1 debug)
  gives the terminal back to absl: every library's lines at that level, and TensorFlow's.
"""

from __future__ import annotations

import argparse
import logging as std_logging
import os
import sys
from collections.abc import Sequence
from logging.handlers import MemoryHandler

from absl import flags, logging

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A log line from a file in one of these directories is this repository's own.
_OWN_DIRS = tuple(
  os.path.join(_ROOT, d) + os.sep for d in ('zenfer_jax', 'torch_port', 'benchmarks')
)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the house conventions: `--verbosity`, and hyphenated flags accepted."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault(
      'epilog', 'Any flag may also be spelt with hyphens (--data-dir for --data_dir).'
    )
    super().__init__(*args, **kwargs)

  def _add_verbosity(self) -> None:
    """Last, so that --help lists a program's own flags first."""
    if '--verbosity' not in self._option_string_actions:
      self.add_argument(
        '-v',
        '--verbosity',
        type=int,
        default=None,
        help='absl logging level for the terminal: -1 warnings, 0 info, 1 debug; also shows '
        "TensorFlow's C++ log lines (default: quiet, warnings and errors only)",
      )

  def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
    self._add_verbosity()
    args = sys.argv[1:] if args is None else list(args)
    return super().parse_known_args([self._underscored(a) for a in args], namespace)

  def format_help(self) -> str:
    self._add_verbosity()
    return super().format_help()

  def _underscored(self, arg: str) -> str:
    """`--num-classes[=7]` -> `--num_classes[=7]` when that is a flag of this parser."""
    if not arg.startswith('--') or arg == '--':
      return arg
    name, eq, value = arg.partition('=')
    spelt = '--' + name[2:].replace('-', '_')
    if name not in self._option_string_actions and spelt in self._option_string_actions:
      return spelt + eq + value
    return arg


class _TerminalHandler(std_logging.Handler):
  """Writes through tqdm, so a line logged during a progress bar does not break the bar."""

  def __init__(self, show_own_info: bool):
    super().__init__(std_logging.INFO)
    self.show_own_info = show_own_info

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not getattr(record, 'terminal', True):  # extra={'terminal': False}: said otherwise.
      return False
    if record.levelno >= std_logging.WARNING:
      return record.name != 'py.warnings'  # Library deprecation notices: the log file only.
    return self.show_own_info and os.path.abspath(record.pathname).startswith(_OWN_DIRS)

  def format(self, record: std_logging.LogRecord) -> str:
    message = record.getMessage()
    if record.levelno >= std_logging.WARNING:
      return logging.get_absl_log_prefix(record) + message
    return message

  def emit(self, record: std_logging.LogRecord) -> None:
    try:
      from tqdm import tqdm

      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # A log line must never be what stops a run.
      self.handleError(record)


_installed: list[std_logging.Handler] = []


def setup_logging(
  verbosity: int | None,
  *,
  show_own_info: bool = False,
  log_file_follows: bool = False,
  uses_tensorflow: bool = False,
) -> None:
  """Routes log lines for a command-line program; call before TensorFlow is imported.

  verbosity None (the default of every program): quiet terminal as the module docstring says;
  `show_own_info` also shows this package's INFO lines (training's progress lines). An int hands
  the terminal to absl's handler at that level and leaves TensorFlow's C++ logging alone.
  With `log_file_follows`, every record is kept in memory until `log_to_file` names the file
  (a run's workdir and process index are known only after JAX has started, and logged). A
  program that `uses_tensorflow` has it imported here, quietly.
  """
  if not flags.FLAGS.is_parsed():  # argparse programs: absl's own flags keep their defaults.
    flags.FLAGS.mark_as_parsed()
  root = std_logging.getLogger()
  for handler in _installed:
    root.removeHandler(handler)
  _installed.clear()
  std_logging.captureWarnings(True)
  if log_file_follows:
    _install(MemoryHandler(1 << 20, flushLevel=std_logging.CRITICAL + 1))
  if verbosity is not None:
    logging.set_verbosity(verbosity)
    logging.use_absl_handler()
    return
  logging.set_verbosity(logging.INFO)
  root.setLevel(std_logging.INFO)  # Every library's INFO lines reach the log file ...
  root.removeHandler(logging.get_absl_handler())  # ... the terminal only what this one lets by.
  _install(_TerminalHandler(show_own_info))
  if uses_tensorflow:
    _import_tensorflow_quietly()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # Building a dataset's records: the log lines say the same.


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow with its C++ start-up lines (oneDNN, CPU features) sent to the log.

  TF_CPP_MIN_LOG_LEVEL silences only part of them: some of TensorFlow's libraries log through
  absl's C++ logging, which writes to file descriptor 2 before anything can configure it.
  """
  if 'tensorflow' in sys.modules:
    return
  import tempfile

  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  with tempfile.TemporaryFile() as captured:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode('utf-8', 'replace').splitlines():
        if line.strip():
          logging.info('tensorflow: %s', line, extra={'terminal': False})


def terminal_warnings_only() -> None:
  """From now on the terminal shows warnings and errors only, not this package's INFO lines.

  For the processes other than 0 of a multi-process run: process 0 shows the progress lines for
  the whole job, and N copies of them would bury everything else; each process's log file still
  gets every line.
  """
  for handler in _installed:
    if isinstance(handler, _TerminalHandler):
      handler.show_own_info = False


def log_to_file(path: str) -> None:
  """From now on every log line (and those since `setup_logging`) also goes to `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  handler = std_logging.FileHandler(path, encoding='utf-8')
  handler.setFormatter(logging.PythonFormatter())
  root = std_logging.getLogger()
  for buffer in [h for h in _installed if isinstance(h, MemoryHandler)]:
    buffer.setTarget(handler)
    buffer.flush()
    root.removeHandler(buffer)
    _installed.remove(buffer)
  _install(handler)


def _install(handler: std_logging.Handler) -> None:
  std_logging.getLogger().addHandler(handler)
  _installed.append(handler)
