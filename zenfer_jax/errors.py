"""Which errors are the user's to fix, and therefore reported as one line instead of a traceback.

A command-line program (see `zenfer_jax.cli.command`) prints an exception that is a `UserError`
as `error: <message>` and exits with status 2: the message names the file, flag, key or value
and says what to do, and a traceback would only bury it. Any other exception is a bug in this
package (or a library) and keeps its traceback, because that is what a bug report needs.

The typed errors of the package mix `UserError` in beside their usual base, so that code
catching `ValueError` (or `RuntimeError`) keeps working:

  class StructureError(ValueError, UserError): ...

This module imports nothing, so that every module can import it.
"""

from __future__ import annotations

__all__ = ['InvalidInput', 'UserError']


class UserError(Exception):
  """Mixin: an input that cannot work (a file, flag, config value), not a bug.

  The message alone must be enough to fix it: what is wrong (naming the file, key or value)
  and what would work instead.
  """


class InvalidInput(UserError, ValueError):
  """A value the user gave that cannot work, where no more specific error type exists."""
