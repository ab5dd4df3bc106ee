"""The search's resumable state: population, RNG, progress, in two whole-file checkpoints.

A checkpoint is one JSON file written beside its destination and renamed over it, so a reader
(or a run resumed after SIGKILL) sees a whole checkpoint, never half of one. The checkpoint
before it is kept as well (`PREVIOUS_STATE_FILE`): when the latest one is damaged after it was
written (a truncated copy, a full disk, an edit), `load_state` says so and resumes from the
previous one, losing at most one checkpoint interval, which the deterministic search then
retraces.

The candidate log is append-only JSONL; the checkpoint records how many bytes of it belong to
the state, and a resumed run cuts the log back to that length, so lines written after the
checkpoint (which the resumed run writes again) are never duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from zenfer_jax import atomic_write
from zenfer_jax.errors import UserError

__all__ = [
  'SearchState',
  'SearchStateError',
  'load_state',
  'save_state',
  'STATE_FILE',
  'PREVIOUS_STATE_FILE',
  'LOG_FILE',
  'BEST_FILE',
  'SUMMARY_FILE',
  'PROGRESS_FILE',
]

STATE_FILE = 'search_state.json'
PREVIOUS_STATE_FILE = 'search_state.previous.json'
LOG_FILE = 'candidates.jsonl'
BEST_FILE = 'best_structure.txt'
SUMMARY_FILE = 'search_summary.json'
PROGRESS_FILE = 'search_progress.png'
_VERSION = 1

log = logging.getLogger(__name__)


class SearchStateError(ValueError, UserError):
  """A workdir whose search state cannot be resumed; the message names the files and why."""


@dataclasses.dataclass
class SearchState:
  """Everything a resumed search needs; `next_iteration` iterations are done."""

  settings: dict[str, Any]
  next_iteration: int = 0
  population: list[tuple[str, float]] = dataclasses.field(default_factory=list)
  rng_state: dict[str, Any] | None = None
  log_bytes: int = 0
  num_scored: int = 0
  elapsed_s: float = 0.0
  # What the summary reports, summed over every session of the search.
  scoring_s: float = 0.0
  compile_s: float = 0.0
  compiled_programs: int = 0
  # Programs compiled before the first candidate (the level grid, see evolution.grid_enabled)
  # and the seconds that took, summed over sessions.
  warmup_programs: int = 0
  warmup_s: float = 0.0
  # [iteration, elapsed_s, best score, median population score], for search_progress.png.
  progress: list[list[float]] = dataclasses.field(default_factory=list)
  # The scorer's own resumable state (which padded programs it has used; see ZenScorer).
  scorer_state: dict[str, Any] = dataclasses.field(default_factory=dict)

  def median(self) -> float | None:
    if not self.population:
      return None
    return float(np.median([s for _, s in self.population]))

  def best(self) -> tuple[str, float] | None:
    if not self.population:
      return None
    i = int(
      np.argmax([s for _, s in self.population])
    )  # first of equal maxima, like list.index(max)
    return self.population[i]

  def trim(self, size: int) -> None:
    """Drop the lowest score (the first of equal minima) until `size` members remain."""
    while len(self.population) > size:
      scores = [s for _, s in self.population]
      self.population.pop(scores.index(min(scores)))


def save_state(workdir: str, state: SearchState) -> None:
  """Writes `state` as STATE_FILE and keeps the checkpoint it replaces as PREVIOUS_STATE_FILE.

  Both steps are renames, so each file always holds a whole checkpoint; killed between them,
  the previous checkpoint is the only one left, and `load_state` resumes from it. A latest file
  that no longer loads is not rotated over an intact previous one.
  """
  path = os.path.join(workdir, STATE_FILE)
  if os.path.exists(path) and _read(path)[0] is not None:
    os.replace(path, os.path.join(workdir, PREVIOUS_STATE_FILE))
  payload = dataclasses.asdict(state)
  payload['version'] = _VERSION
  payload['population'] = [[s, float(v)] for s, v in state.population]
  atomic_write.write_text(path, json.dumps(payload, indent=1))


def load_state(workdir: str) -> SearchState | None:
  """The latest intact checkpoint in `workdir`, or None when it holds none (a new search).

  A damaged or missing latest checkpoint falls back to the previous one, with a warning naming
  both; when neither loads, SearchStateError names them and what is wrong with each.
  """
  path = os.path.join(workdir, STATE_FILE)
  previous_path = os.path.join(workdir, PREVIOUS_STATE_FILE)
  if not os.path.exists(path) and not os.path.exists(previous_path):
    return None
  state, why = _read(path)
  if state is not None:
    return state
  previous, why_previous = _read(previous_path)
  if previous is None:
    raise SearchStateError(
      f'{path} is {why} and the previous checkpoint {previous_path} is {why_previous}: there is '
      f'no intact search state to resume from. Start the search in a new --workdir ({LOG_FILE} '
      'here keeps every candidate scored so far).'
    )
  log.warning(
    '%s is %s; resuming from the previous checkpoint %s (iteration %d; %s is cut back to the '
    '%d bytes it vouches for, and the search retraces the iterations after it).',
    path,
    why,
    previous_path,
    previous.next_iteration,
    LOG_FILE,
    previous.log_bytes,
  )
  return previous


def _read(path: str) -> tuple[SearchState | None, str | None]:
  """(the state in `path`, None), or (None, what is wrong with the file)."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    return None, 'missing'
  except OSError as e:
    return None, f'unreadable ({e.strerror})'
  try:
    payload = json.loads(data.decode('utf-8'))
  except ValueError:  # UnicodeDecodeError included.
    return None, f'damaged (not whole JSON: {len(data)} bytes, truncated or overwritten)'
  if not isinstance(payload, dict):
    return None, 'damaged (not a search state)'
  version = payload.pop('version', None)
  if version != _VERSION:
    return None, f'of search-state version {version!r} (this version reads {_VERSION})'
  try:
    payload['population'] = [(str(s), float(v)) for s, v in payload['population']]
    state = SearchState(**payload)
  except (KeyError, TypeError, ValueError) as e:
    return None, f'damaged (not a search state: {type(e).__name__}: {e})'
  counts = (state.next_iteration, state.log_bytes, state.num_scored)
  if not isinstance(state.settings, dict) or not all(
    isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts
  ):
    return None, 'damaged (its settings or counts are not what a search writes)'
  return state, None
