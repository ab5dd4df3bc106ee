"""Files that are always either the old or the new version, even when a process is killed.

Each write goes to a temporary file beside the destination (same directory, so the same file
system), is flushed to disk, and is renamed over the destination with `os.replace`, which is
atomic on POSIX and Windows. A reader, or a resumed run, never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

__all__ = ['make_temporary_dir', 'replacing', 'temporary_name', 'write_json', 'write_text']


def temporary_name(path: str | os.PathLike, kind: str = 'tmp') -> str:
  """A name beside `path`, unique to this process and call, for a file or directory to come.

  Named, not created: whoever creates it uses plain `open` / `os.mkdir`, so the user's umask
  applies. tempfile's mkstemp (0600) and mkdtemp (0700) would not, and the mode stays on the
  destination the temporary is renamed to.
  """
  path = os.path.abspath(os.fspath(path))
  return os.path.join(
    os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}'
  )


def make_temporary_dir(path: str | os.PathLike, kind: str = 'tmp') -> str:
  """A new empty directory beside `path` (see `temporary_name`), with the umask's mode."""
  while True:
    name = temporary_name(path, kind)
    try:
      os.mkdir(name)
      return name
    except FileExistsError:  # pragma: no cover - 32 random bits and the pid already taken
      continue


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
  """A temporary path to write; renamed onto `path` if the block succeeds, removed if not.

  For writers that want a file name (torch.save, safetensors); `write_text` and `write_json`
  cover text.
  """
  path = os.path.abspath(os.fspath(path))
  tmp = temporary_name(path)  # The writer creates it, with the umask's mode.
  try:
    yield tmp
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  with replacing(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, **dump_kwargs: Any) -> None:
  """`obj` as indented JSON with a final newline; `dump_kwargs` go to json.dumps."""
  write_text(path, json.dumps(obj, indent=indent, **dump_kwargs) + '\n')
