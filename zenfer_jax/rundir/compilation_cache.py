"""JAX's persistent compilation cache, as training and the search use it.

A ZenNet train step compiles for 30-50 s (CPU, or an H100 in bf16) and a search compiles dozens
of stage programs; a resumed or repeated run that finds them on disk starts at once. JAX keeps
only programs that took at least a second to compile unless told otherwise, and most of the
search's and the evaluation's programs compile faster than that, so every entry is kept.
"""

from __future__ import annotations

import os

from zenfer_jax.errors import InvalidInput

# Shared by training and the search: one directory, so both reuse what either compiled.
DEFAULT_DIR = '~/.cache/zenfer_jax/jax_compilation_cache'


def enable(cache_dir: str) -> str | None:
  """Points this process's compilations at `cache_dir` ('' leaves JAX's own settings, such as
  JAX_COMPILATION_CACHE_DIR, as they are); returns the directory used, or None.

  Takes effect for compilations after the call, even when the process already compiled
  something (JAX reads its cache settings once, at the first compile, so they are re-read).
  """
  if not cache_dir:
    return None
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  path = os.path.abspath(os.path.expanduser(cache_dir))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise InvalidInput(
      f'compilation_cache_dir={cache_dir!r} cannot be used ({e.strerror}: {path}); name a '
      "writable directory, or '' to leave the cache to JAX's own settings"
    ) from None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  compilation_cache.reset_cache()
  return path
