"""Recoverable training state: a damaged latest checkpoint falls back to the one before it, and a
resume with another model's config fails before anything is written.

Real orbax checkpoints, damaged the way disks and copies damage them: a file cut short, a file
gone. Before, the two latest were not both kept and the first damaged file ended the resume
with a raw orbax traceback.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from train_fixtures import flat, latest_state, tiny_config

from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.rundir import workdir_lock


def _state(step: int) -> dict:
  rng = np.random.default_rng(step)
  return {
    'step': np.int32(step),
    'params': {'w': rng.standard_normal((128, 128)).astype(np.float32), 'b': np.full(8, step)},
  }


def _save(workdir, steps) -> None:
  ckpts = workdir_lib.Checkpoints(str(workdir))
  for step in steps:
    ckpts.save_latest(step, _state(step), {'book': {'step': step}})
  ckpts.close()


def _data_file(workdir, step: int) -> str:
  """The largest file of the step's state: where the array bytes are."""
  root = os.path.join(workdir, workdir_lib.LATEST, str(step), 'state')
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _damage(path: str, how: str) -> None:
  if how == 'truncated':
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  else:
    os.remove(path)


def test_the_two_latest_checkpoints_are_kept(tmp_path):
  _save(tmp_path, [1, 2, 3])
  assert sorted(os.listdir(tmp_path / workdir_lib.LATEST)) == ['2', '3']


@pytest.mark.parametrize(
  'how, which', [('truncated', 'data'), ('missing', 'data'), ('missing', 'meta')]
)
def test_a_damaged_latest_falls_back_to_the_one_before(tmp_path, caplog, how, which):
  _save(tmp_path, [1, 2, 3])
  if which == 'data':
    _damage(_data_file(tmp_path, 3), how)
  else:
    _damage(str(tmp_path / workdir_lib.LATEST / '3' / 'meta' / 'metadata'), how)
  ckpts = workdir_lib.Checkpoints(str(tmp_path))
  state, meta = ckpts.restore('latest')
  damaged_dir = str(tmp_path / workdir_lib.LATEST / '3')
  assert int(state['step']) == 2 and meta == {'book': {'step': 2}}
  np.testing.assert_array_equal(state['params']['w'], _state(2)['params']['w'])
  assert [(s, d) for s, d, _ in ckpts.damaged] == [(3, damaged_dir)]
  assert f'Checkpoint {damaged_dir} is damaged' in caplog.text
  assert 'step 2 instead' in caplog.text

  # Set aside (kept for inspection), so step 3 is saved afresh when training reaches it again.
  ckpts.set_aside_damaged()
  assert ckpts.latest.all_steps() == [2]
  assert os.path.isdir(tmp_path / workdir_lib.DAMAGED / '3')
  ckpts.save_latest(3, _state(3), {'book': {'step': 3}})
  state, _ = ckpts.restore('latest')
  assert int(state['step']) == 3 and ckpts.damaged == []
  ckpts.close()


def test_when_every_checkpoint_is_damaged_each_is_named(tmp_path):
  _save(tmp_path, [1, 2])
  _damage(_data_file(tmp_path, 2), 'truncated')
  _damage(_data_file(tmp_path, 1), 'missing')
  ckpts = workdir_lib.Checkpoints(str(tmp_path))
  with pytest.raises(workdir_lib.CheckpointDamagedError) as e:
    ckpts.restore('latest')
  ckpts.close()
  message = str(e.value)
  for step in ('1', '2'):
    assert str(tmp_path / workdir_lib.LATEST / step) in message
  assert 'Traceback' not in message and '\n' not in message


# ---------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope='module')
def trained(tmp_path_factory, digits_dir):
  """A finished two-epoch run (checkpoints at steps 3 and 6), never modified by a test."""
  from zenfer_jax.training import loop

  workdir = tmp_path_factory.mktemp('trained') / 'run'
  loop.train_and_evaluate(tiny_config(digits_dir), str(workdir))
  return workdir


def _snapshot(root) -> dict[str, tuple[bytes, int]]:
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, root)] = (fh.read(), os.stat(path).st_mtime_ns)
  return out


@pytest.mark.slow
def test_training_resumes_past_a_damaged_latest_checkpoint(tmp_path, trained, digits_dir, caplog):
  from zenfer_jax.training import loop

  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  assert sorted(os.listdir(workdir / workdir_lib.LATEST)) == ['3', '6']
  _damage(_data_file(workdir, 6), 'truncated')

  loop.train_and_evaluate(tiny_config(digits_dir), str(workdir))
  assert f'Checkpoint {workdir / workdir_lib.LATEST / "6"} is damaged' in caplog.text
  # Steps 4..6 were trained again and came out as the first time (the run is deterministic).
  want, want_meta = latest_state(trained)
  got, got_meta = latest_state(workdir)
  assert int(got['step']) == 6 and got_meta == want_meta
  for k, v in flat(want).items():
    np.testing.assert_array_equal(flat(got)[k], v, err_msg=k)
  assert workdir_lib.read_metrics(str(workdir)) == workdir_lib.read_metrics(str(trained))
  assert os.listdir(workdir / workdir_lib.DAMAGED) == ['6']
  assert not (workdir / workdir_lock.LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_with_another_model_fails_before_writing_anything(tmp_path, trained, digits_dir):
  from zenfer_jax.deploy import evaluate
  from zenfer_jax.training import loop
  from zenfer_jax.training.train_state import ResumeMismatchError

  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  before = _snapshot(workdir)
  wider = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,48,1,1)'
  with pytest.raises(ResumeMismatchError) as e:
    loop.train_and_evaluate(tiny_config(digits_dir, **{'model.structure': wider}), str(workdir))
  message = str(e.value)
  assert "structure: checkpoint 'SuperConvK3BNRELU(3,8,2,1)" in message
  assert (
    "this config 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,48"
    in message
  )
  assert 'params/fc/' in message and '(32, 10) in the checkpoint, (48, 10) here' in message
  assert 'Nothing was written' in message
  assert _snapshot(workdir) == before  # config.json, model_card.json, metrics, checkpoints.
  # And the workdir still evaluates.
  assert evaluate.main(['--workdir', str(workdir), '--output_dir', str(tmp_path / 'eval')]) == 0
