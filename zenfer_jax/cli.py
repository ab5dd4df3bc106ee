"""What every command-line program of this repository shares: flag spelling, --verbosity, logs.

The conventions, for `zenfer_jax.*`, `torch_port.*` and `benchmarks.*` alike:

- Flags are spelt with underscores (`--num_classes`, `--data_dir`, `--top_k`), as the config
  fields (`--config.data.data_dir`) and the original PyTorch scripts (`--num_classes`,
  `--use_sa`) spell them, and only so: a hyphenated spelling (`--num-classes`) is an unknown
  flag, and the error suggests the underscored one.
- Training and search parse their flags with absl (ml_collections config files are absl
  flags); every other program with `ArgumentParser`, which `main(argv)` can call in-process.
- Logging is absl.logging. A program's result (a table, JSON, a summary line) goes to stdout;
  logs, progress bars and errors go to stderr.
- By default a program is quiet: the terminal shows warnings and errors (and, for training,
  this package's own progress lines: the start-up summary, one line per epoch, the result), not
  TensorFlow's C++ start-up lines nor other libraries' INFO lines; a training run writes every
  line to WORKDIR/log.txt. `--verbosity=0` (absl's levels: -1 warnings, 0 info, 1 debug)
  gives the terminal back to absl: every library's lines at that level, and TensorFlow's.
- A user error (a `zenfer_jax.errors.UserError`, a missing file, a bad flag or config key) is
  one line on stderr, `error: <what is wrong and what to do>`, and exit status 2, with no
  traceback; `--verbosity=1` or ZENFER_TRACEBACK=1 adds the traceback, for a bug report. Any
  other exception is a bug and keeps its traceback. `command` (argparse programs) and
  `run_absl` (absl programs) do this for every program.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging as std_logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from logging.handlers import MemoryHandler
from typing import NoReturn

from absl import app, flags, logging

from zenfer_jax import errors

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A log line from a file in one of these directories is this repository's own.
_OWN_DIRS = tuple(
  os.path.join(_ROOT, d) + os.sep for d in ('zenfer_jax', 'torch_port', 'benchmarks')
)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the house conventions: `--verbosity`, one-line errors."""

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
    return super().parse_known_args(args, namespace)

  def format_help(self) -> str:
    self._add_verbosity()
    return super().format_help()

  def error(self, message: str) -> NoReturn:
    """One line, like every other user error: no usage block in front of it."""
    self.exit(
      2, f'error: {message}{self._respelt_hint(message)} ({self.prog} --help lists the flags)\n'
    )

  def _respelt_hint(self, message: str) -> str:
    """A hint naming the underscored spelling of each hyphenated flag (accepted until v0.1.0)."""
    if 'unrecognized arguments' not in message:
      return ''
    names = [a.partition('=')[0] for a in message.split(':', 1)[-1].split() if a.startswith('--')]
    spelt = ['--' + n[2:].replace('-', '_') for n in names if '-' in n[2:]]
    known = [s for s in spelt if s in self._option_string_actions]
    return f'; flags are spelt with underscores: use {", ".join(known)}' if known else ''


def positive_int(text: str) -> int:
  """argparse type of counts, sizes and resolutions: 0 or less cannot work."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'{value} is not a positive integer')
  return value


def positive_float(text: str) -> float:
  """argparse type of tolerances and rates: 0, a negative number or nan cannot work."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
  if not value > 0 or value == float('inf'):
    raise argparse.ArgumentTypeError(f'{text} is not a positive number')
  return value


def probability(text: str) -> float:
  """argparse type of thresholds on a probability: a number in [0, 1]."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
  if not 0.0 <= value <= 1.0:
    raise argparse.ArgumentTypeError(f'{text} is not in [0, 1]')
  return value


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
  _reporting['verbosity'] = verbosity
  if not flags.FLAGS.is_parsed():  # argparse programs: absl's own flags keep their defaults.
    flags.FLAGS.mark_as_parsed()
  root = std_logging.getLogger()
  for handler in list(root.handlers):  # Also those an earlier call left without record of them.
    if handler in _installed or isinstance(handler, _TerminalHandler):
      root.removeHandler(handler)
  _installed.clear()
  # captureWarnings(True) is a no-op while a previous capture is on record, even if something
  # (warnings.catch_warnings, pytest) has since put its own showwarning back: start afresh.
  std_logging.captureWarnings(False)
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


# --------------------------------------------------------------------------------------------
# User errors: one line on stderr and exit status 2; everything else keeps its traceback.

TRACEBACK_ENV = 'ZENFER_TRACEBACK'
USAGE_EXIT = 2
# OS errors about a path the user named (their message names it), whichever module raised them.
USER_OS_ERRORS = (
  FileNotFoundError,
  FileExistsError,
  IsADirectoryError,
  NotADirectoryError,
  PermissionError,
)

# The running program's --verbosity: 1 or more shows a user error's traceback too.
_reporting: dict = {'verbosity': None}


def is_user_error(error: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
  """Whether `error` is the user's to fix (see `zenfer_jax.errors`); `also`: a program's own."""
  return isinstance(error, (errors.UserError, app.UsageError, *USER_OS_ERRORS, *also))


def one_line(message: str) -> str:
  """A message that lists things on several lines, as one line: the lines joined by '; '.

  A line ending with ':' introduces the next one; a line of carets (a structure error's pointer
  under the quoted text) has no meaning once the lines are joined, so it is dropped.
  """
  out = ''
  for line in str(message).splitlines():
    line = line.strip()
    if not line or set(line) <= {'^', ' '}:
      continue
    out += ('' if not out else ' ' if out.endswith(':') else '; ') + line
  return out


def wants_traceback() -> bool:
  """--verbosity=1 (or more) or ZENFER_TRACEBACK=1: a user error shows its traceback too."""
  if os.environ.get(TRACEBACK_ENV, '').strip().lower() not in ('', '0', 'false', 'no'):
    return True
  verbosity = _reporting['verbosity']
  return verbosity is not None and verbosity >= 1


def report(error: BaseException | str, message: str | None = None) -> int:
  """Prints a user error as `error: <message>` on one line; returns the exit status, 2.

  With `wants_traceback()`, the traceback comes first, for a bug report. `message` replaces the
  exception's own text where the caller can say it better.
  """
  if isinstance(error, BaseException) and wants_traceback():
    traceback.print_exception(error, file=sys.stderr)
  if message is None:
    message = error if isinstance(error, str) else str(error) or type(error).__name__
  line = one_line(message)
  print(line if line.startswith('error:') else f'error: {line}', file=sys.stderr, flush=True)
  return USAGE_EXIT


def command(
  main: Callable | None = None, *, user_errors: tuple[type[BaseException], ...] = ()
) -> Callable:
  """Decorates a program's `main(argv) -> int` so that a user error is one line and status 2.

  A `zenfer_jax.errors.UserError`, a missing or unreadable file the user named, or
  `sys.exit('message')` returns 2 after `report`; `user_errors` adds a program's own types.
  Every other exception propagates with its traceback: it is a bug. In-process callers (tests)
  get the same: `main([...])` returns 2 for a user error.

    @cli.command
    def main(argv=None) -> int: ...
  """

  def decorate(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      _reporting['verbosity'] = None  # Until the program's own setup_logging says otherwise.
      try:
        return fn(*args, **kwargs)
      except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit('...'): a message for the user.
          return report(e.code)
        raise
      except Exception as e:
        if is_user_error(e, user_errors):
          return report(e)
        raise

    return wrapper

  return decorate(main) if main is not None else decorate


def run_absl(
  main: Callable[[list[str]], object],
  *,
  argv: Sequence[str] | None = None,
  config_flag: str = 'config',
  user_errors: tuple[type[BaseException], ...] = (),
) -> NoReturn:
  """`absl.app.run(main)` for a program with absl flags and an ml_collections config file.

  Flag parsing reports like `command`: an unknown flag or config key (`--config.bacth_size=1`,
  with the keys that exist), a bad value, or a config file that is missing or fails to load is
  one line and exit status 2; so is a user error raised by `main`.
  """

  @command(user_errors=user_errors)
  def checked(args):
    flag = flags.FLAGS['verbosity']
    _reporting['verbosity'] = flag.value if flag.present else None
    return main(args)

  app.run(
    checked,
    argv=list(argv) if argv is not None else None,
    flags_parser=functools.partial(_parse_absl_flags, config_flag=config_flag),
  )
  raise AssertionError('absl.app.run returned')  # pragma: no cover - it always exits


def _parse_absl_flags(argv: list[str], config_flag: str = 'config') -> list[str]:
  """absl's parsing, with every failure as one line (absl's own prints a FATAL block, exit 1)."""
  for name in [n for n in flags.FLAGS if n.startswith(f'{config_flag}.')]:
    delattr(flags.FLAGS, name)  # An earlier parse's overrides (in-process callers, tests).
  try:
    rest = flags.FLAGS(argv)
    if config_flag in flags.FLAGS and flags.FLAGS[config_flag].value is not None:
      # ml_collections defers a config file's load error to the first access: make it now.
      getattr(flags.FLAGS[config_flag].value, 'keys', None)
    return rest
  except Exception as e:
    _reporting['verbosity'] = _argv_verbosity(argv)
    sys.exit(report(e, _flag_error_message(e, argv, config_flag)))


def _argv_verbosity(argv: Sequence[str]) -> int | None:
  """--verbosity as written in argv, for when flag parsing failed before setting it."""
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition('=')
    if name in ('--verbosity', '-v', '--v'):
      if not eq:
        value = argv[i + 1] if i + 1 < len(argv) else ''
      try:
        return int(value)
      except ValueError:
        return None
  return None


def _config_path(argv: Sequence[str], config_flag: str) -> str | None:
  for i, arg in enumerate(argv):
    for prefix in (f'--{config_flag}', f'-{config_flag}'):
      if arg == prefix and i + 1 < len(argv):
        return argv[i + 1].split(':', 1)[0]
      if arg.startswith(prefix + '='):
        return arg[len(prefix) + 1 :].split(':', 1)[0]
  return None


def _flag_error_message(error: Exception, argv: Sequence[str], config_flag: str) -> str:
  """What went wrong while parsing absl flags, saying which flag, key or file, and what to do."""
  path = _config_path(argv, config_flag)
  flag = f'--{config_flag}={path}'
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):  # ml_collections: an unknown config key.
    unknown = _unknown_config_key(argv, config_flag, path)
    if unknown:
      return unknown
  if isinstance(error, OSError) and 'config' in text.lower() and path is not None:
    if not os.path.exists(path):
      return (
        f'{flag}: no such config file ({os.path.abspath(path)}) nor shipped config; give the '
        'path of a config file such as configs/rafdb_m.py or the name of a shipped one, such as '
        'rafdb_m (--helpfull lists them)'
      )
    if os.path.isdir(path):
      return f'{flag} is a directory; give a config file such as configs/rafdb_m.py'
    cause = error.__cause__ or error
    return f'{flag}: cannot load the config file: {_last_line(str(cause))}'
  if isinstance(error, SyntaxError):
    return f'{flag}: not a Python config file: {error.msg} (line {error.lineno})'
  if isinstance(error, flags.Error):
    if 'Error whilst parsing config file' in text:
      return f'{flag}: the config file fails to load: {_last_line(text)}'
    if isinstance(error, flags.UnrecognizedFlagError):
      return f'{text}; --helpfull lists the flags'
    return text
  if path and any(
    os.path.abspath(frame.filename) == os.path.abspath(path)
    for frame in traceback.extract_tb(error.__traceback__)
  ):
    return f'{flag}: the config file fails to load: {type(error).__name__}: {text}'
  return f'{type(error).__name__}: {text}'


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else text


def _unknown_config_key(argv: Sequence[str], config_flag: str, path: str | None) -> str | None:
  """'--config.x.y=1: config.x has no key 'y' ...' for the first override naming no key."""
  if not path or config_flag not in flags.FLAGS:
    return None
  try:
    config = flags.FLAGS[config_flag].parser.parse(path)  # The file again, to list its keys.
    if not callable(getattr(config, 'keys', None)):  # A file that failed to load raises here.
      return None
  except Exception:
    return None
  pattern = re.compile(rf'^--?(?:no)?{re.escape(config_flag)}\.([^=]+)')
  for arg in argv[1:]:
    match = pattern.match(arg)
    if not match:
      continue
    node, walked = config, config_flag
    for part in match.group(1).split('.'):
      keys = list(node.keys()) if callable(getattr(node, 'keys', None)) else None
      if keys is None:
        break
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f'did you mean {walked}.{close[0]}? ' if close else ''
        return (
          f'{arg}: {walked} (from {path}) has no key {part!r}; {hint}its keys are '
          f'{", ".join(sorted(keys))}'
        )
      node, walked = node[part], f'{walked}.{part}'
  return None
