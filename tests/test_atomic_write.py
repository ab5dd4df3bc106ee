"""Atomic file writes: the destination is always the old or the new file, never a part."""

import json
import os
import stat

import pytest

from zenfer_jax import atomic_write


def test_write_json_round_trip_and_replaces(tmp_path):
  path = tmp_path / 'a.json'
  atomic_write.write_json(path, {'x': 1})
  atomic_write.write_json(path, {'x': [1, 2], 'y': 'é'})
  text = path.read_text(encoding='utf-8')
  assert text.endswith('}\n')
  assert json.loads(text) == {'x': [1, 2], 'y': 'é'}
  assert os.listdir(tmp_path) == ['a.json']


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'a.txt'
  atomic_write.write_text(path, 'old\n')
  with pytest.raises(RuntimeError, match='writer died'):
    with atomic_write.replacing(path) as tmp:
      with open(tmp, 'w') as f:
        f.write('half of the new')
      raise RuntimeError('writer died')
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['a.txt']


def test_unserialisable_json_leaves_nothing(tmp_path):
  with pytest.raises(TypeError):
    atomic_write.write_json(tmp_path / 'a.json', {'x': object()})
  assert os.listdir(tmp_path) == []


def test_permissions_follow_the_umask(tmp_path):
  # A file from a plain open(); the atomic one must match it (not mkstemp's 0600).
  plain = tmp_path / 'plain.txt'
  plain.write_text('x')
  path = tmp_path / 'a.txt'
  atomic_write.write_text(path, 'x')
  assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
