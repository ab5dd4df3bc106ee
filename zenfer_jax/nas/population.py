"""The search's resumable state: population, RNG, progress, written atomically.

A checkpoint is one JSON file replaced with `os.replace`, so a reader (or a
resumed run after SIGKILL) sees either the previous checkpoint or the new one,
never half of one. The candidate log is append-only JSONL; the checkpoint
records how many bytes of it belong to the state, and a resumed run cuts the
log back to that length, so lines written after the last checkpoint (which
the resumed run will write again) are never duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import numpy as np

__all__ = [
  'SearchState',
  'atomic_write_text',
  'load_state',
  'save_state',
  'STATE_FILE',
  'LOG_FILE',
  'BEST_FILE',
  'SUMMARY_FILE',
  'PROGRESS_FILE',
]

STATE_FILE = 'search_state.json'
LOG_FILE = 'candidates.jsonl'
BEST_FILE = 'best_structure.txt'
SUMMARY_FILE = 'search_summary.json'
PROGRESS_FILE = 'search_progress.png'
_VERSION = 1


def atomic_write_text(path: str, text: str) -> None:
  """Write `text` to `path` so that the file is always either old or new, even across a crash."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=directory)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


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
  payload = dataclasses.asdict(state)
  payload['version'] = _VERSION
  payload['population'] = [[s, float(v)] for s, v in state.population]
  atomic_write_text(os.path.join(workdir, STATE_FILE), json.dumps(payload, indent=1))


def load_state(workdir: str) -> SearchState | None:
  path = os.path.join(workdir, STATE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    payload = json.load(f)
  if payload.pop('version', None) != _VERSION:
    raise ValueError(f'{path}: unknown search-state version; start a new --workdir')
  payload['population'] = [(s, float(v)) for s, v in payload['population']]
  return SearchState(**payload)
