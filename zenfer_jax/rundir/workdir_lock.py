"""One run per directory: a lock file that a training run (or a search) holds on its workdir.

Two processes writing one workdir interleave their metrics rows and checkpoints and leave a
config.json that describes neither run's weights. So a run takes `DIR/run.lock` before it writes
anything and keeps it until it exits; a second run on the same directory stops at once with an
error naming the holder (pid, host, start time, command).

The lock is an advisory `flock` on the file, taken through the `filelock` library: the kernel
drops it when the holding process dies, however it dies, so a SIGKILLed run never leaves a lock
that blocks the next one (the file may stay, holding the dead run's details; the next run takes it
over and says so). This module adds what `filelock` does not know: the holder's details, written
into the lock file once it is held, and errors that name the holder. Where `flock` is not
available (some network file systems, Windows) the file is created exclusively instead, and a
lock whose process is known to be dead (same host, pid gone or reused) is taken over; a lock held
from another host cannot be checked and is reported for the user to remove.

Library use::

    with workdir_lock.hold(workdir, 'search'):
      ...  # everything that writes to workdir

Taking the lock again in the process that holds it succeeds (it is counted), so a command-line
entry point and the library function it calls can both hold it. In a multi-host run only
process 0 takes it.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time

import filelock
from absl import logging

from zenfer_jax.errors import UserError

try:  # Where `fcntl` is missing (Windows), or set to None (a test), the exclusive file is used.
  import fcntl
except ImportError:
  fcntl = None

__all__ = ['LOCK_NAME', 'WorkdirLocked', 'WorkdirLock', 'acquire', 'hold', 'holder']

LOCK_NAME = 'run.lock'
# flock errors that mean "this file system cannot lock", not "someone holds it".
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirLocked(RuntimeError, UserError):
  """Another live process holds the directory's lock; `holder` has its details (may be empty)."""

  def __init__(self, message: str, path: str, holder: dict):
    super().__init__(message)
    self.path = path
    self.holder = holder


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), to tell a reused pid from the original process."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii', errors='replace') as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22, counted after the parenthesised command name (which may hold spaces).
  fields = stat.rpartition(')')[2].split()
  return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's live process.
    return True
  except OSError:
    return True  # Cannot tell: never call a lock stale on a guess.
  return True


def _holder_is_dead(info: dict) -> bool:
  """True only when the holder is known to be gone: same host, and its pid dead or reused."""
  pid = info.get('pid')
  if info.get('host') != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return False
  if not _pid_alive(pid):
    return True
  start = info.get('pid_start')
  return start is not None and _process_start(pid) not in (None, start)


def _my_info(what: str) -> dict:
  return {
    'pid': os.getpid(),
    'host': socket.gethostname(),
    'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
    'what': what,
    'command': ' '.join(sys.argv),
    'pid_start': _process_start(os.getpid()),
  }


def _parse(text: str) -> dict:
  try:
    info = json.loads(text)
  except ValueError:
    return {}
  return info if isinstance(info, dict) else {}


def _read(path: str, attempts: int = 5) -> dict:
  """The holder's details; retried briefly, since a holder writes them just after locking."""
  for i in range(attempts):
    try:
      with open(path, encoding='utf-8') as f:
        info = _parse(f.read())
    except OSError:
      info = {}
    if info or i == attempts - 1:
      return info
    time.sleep(0.05)
  return {}


def _describe(info: dict) -> str:
  if not info:
    return 'a process that has not written its details yet'
  parts = [f'pid {info.get("pid", "?")} on host {info.get("host", "?")}']
  if info.get('started'):
    parts.append(f'started {info["started"]}')
  if info.get('command'):
    parts.append(f'command: {info["command"]}')
  return ', '.join(parts)


def _locked_error(
  directory: str, path: str, info: dict, what: str, *, flock: bool
) -> WorkdirLocked:
  holder_what = info.get('what') or 'run'
  message = f'{directory} is in use by another {holder_what} ({_describe(info)}).'
  if flock and info and _holder_is_dead(info):
    message += ' That process has exited, but a process it started still holds the lock open.'
  if flock or not info or info.get('host') == socket.gethostname():
    message += (
      f' Wait for it to finish or stop it, or give this {what} another directory; '
      'two runs in one directory would mix their checkpoints and logs.'
    )
  else:
    message += (
      f' It was taken on another host and cannot be checked from here: if that {holder_what} is '
      f'no longer running, delete {path} and start again.'
    )
  return WorkdirLocked(message, path, info)


class WorkdirLock:
  """A held lock; `release()` (or leaving the `with` block) gives it up."""

  def __init__(self, directory: str, path: str, info: dict, inode: int, *, flock=None, fd=None):
    self.directory = directory
    self.path = path
    self.info = info
    self._inode = inode  # The locked file's, so that release removes only that file.
    self._flock = flock  # The held `filelock.FileLock`, or None ...
    self._fd = fd  # ... and the exclusively created file's descriptor instead.
    self._count = 1

  @property
  def held(self) -> bool:
    return self._count > 0

  def release(self) -> None:
    if self._count <= 0:
      return
    self._count -= 1
    if self._count:
      return
    _HELD.pop(self.directory, None)
    try:
      # Removed while still locked, so nobody can lock the old file after it is gone; a process
      # that opened it just before finds it unlinked and tries again on the new one.
      if _inode(self.path) == self._inode:
        os.remove(self.path)
    except OSError:
      pass
    finally:
      if self._flock is not None:
        self._flock.release(force=True)
      else:
        os.close(self._fd)

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# Locks this process holds, by directory: taking one again is counted, not refused.
_HELD: dict[str, WorkdirLock] = {}


def _inode(path: str) -> int | None:
  try:
    return os.stat(path).st_ino
  except OSError:
    return None


def _write_info(fd: int, info: dict) -> None:
  data = (json.dumps(info, indent=2) + '\n').encode('utf-8')
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, data)
  os.fsync(fd)


def _file_lock(path: str, on_acquired=None) -> filelock.FileLock:
  """A non-blocking, process-wide `flock` on `path` (this module counts re-entries itself)."""
  return filelock.FileLock(
    path, timeout=0, thread_local=False, is_singleton=False, on_acquired=on_acquired
  )


def _acquire_flock(directory: str, path: str, info: dict, what: str) -> WorkdirLock | None:
  """The lock by flock, or None when the file system cannot flock."""
  previous, inode = {}, []

  def record_holder(fd: int) -> None:  # Called by filelock once the flock is ours.
    previous.update(_parse(os.pread(fd, 1 << 16, 0).decode('utf-8', 'replace')))
    inode.append(os.fstat(fd).st_ino)
    _write_info(fd, info)

  for _ in range(10):
    lock = _file_lock(path, record_holder)
    try:
      lock.acquire()
    except filelock.Timeout:
      if not os.path.exists(path):  # The holder released and removed it meanwhile: retry.
        continue
      raise _locked_error(directory, path, _read(path), what, flock=True) from None
    except OSError as e:
      if e.errno in _NO_FLOCK:
        return None
      raise
    if previous:
      logging.warning(
        'Took over the lock of %s left by %s, which is no longer running.',
        directory,
        _describe(previous),
      )
    return WorkdirLock(directory, path, info, inode[-1], flock=lock)
  raise WorkdirLocked(f'{directory}: could not take {path}; it keeps changing.', path, {})


def _acquire_exclusive(directory: str, path: str, info: dict, what: str) -> WorkdirLock:
  """The lock by exclusive creation, taking over a lock whose process is known to be dead."""
  for _ in range(10):
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
      previous = _read(path)
      if not (previous and _holder_is_dead(previous)):
        raise _locked_error(directory, path, previous, what, flock=False) from None
      # Moved aside, not deleted: if a live process replaced the stale file meanwhile, its lock
      # is put back.
      aside = f'{path}.stale-{os.getpid()}'
      try:
        os.replace(path, aside)
      except FileNotFoundError:
        continue
      if _read(aside) == previous:
        os.remove(aside)
        logging.warning(
          'Took over the lock of %s left by %s, which is no longer running.',
          directory,
          _describe(previous),
        )
      else:
        try:
          os.link(aside, path)
        except FileExistsError:
          pass
        os.remove(aside)
      continue
    _write_info(fd, info)
    return WorkdirLock(directory, path, info, os.fstat(fd).st_ino, fd=fd)
  raise WorkdirLocked(f'{directory}: could not take {path}; it keeps changing.', path, {})


def acquire(directory: str | os.PathLike, what: str = 'training run') -> WorkdirLock:
  """Locks `directory` (created if missing) for this process, or raises WorkdirLocked at once.

  `what` names the kind of run in the holder's details and in the error another run gets
  ('training run', 'search'). The lock is released by `release()`, by leaving a `with` block,
  or by the process ending.
  """
  directory = os.path.realpath(os.path.expanduser(os.fspath(directory)))
  held = _HELD.get(directory)
  if held is not None and held.info.get('pid') == os.getpid():
    held._count += 1
    return held
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  info = _my_info(what)
  lock = _acquire_flock(directory, path, info, what) if fcntl is not None else None
  if lock is None:
    lock = _acquire_exclusive(directory, path, info, what)
  _HELD[directory] = lock
  return lock


def hold(directory: str | os.PathLike, what: str = 'training run') -> WorkdirLock:
  """`acquire` for a `with` statement (the returned lock is its own context manager)."""
  return acquire(directory, what)


def holder(directory: str | os.PathLike) -> dict | None:
  """The details of the process holding `directory`'s lock now, or None when it is free."""
  directory = os.path.realpath(os.path.expanduser(os.fspath(directory)))
  path = os.path.join(directory, LOCK_NAME)
  if not os.path.exists(path):
    return None
  held = _HELD.get(directory)
  if held is not None and held.info.get('pid') == os.getpid():
    return dict(held.info)
  if fcntl is not None:
    probe = _file_lock(path)
    try:
      probe.acquire()
    except filelock.Timeout:
      return _read(path)
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
    else:
      probe.release(force=True)
      return None  # Nobody holds it: the file is a dead run's leftover.
  info = _read(path)
  return None if info and _holder_is_dead(info) else info
