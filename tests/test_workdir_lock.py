"""One run per workdir: a second process is refused at once, naming the holder; dead holders don't block.

Real processes hold the locks here (a lock is about processes), each a small Python that takes
the lock and waits; a SIGKILLed holder stands for a crashed run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from train_fixtures import REPO, main_command, subprocess_env, tiny_config

from zenfer_jax.rundir import workdir_lock

HOLDER = (
  'import sys, time\n'
  'from zenfer_jax.rundir import workdir_lock\n'
  'if sys.argv[3:] == ["no_flock"]:\n'
  '  workdir_lock.fcntl = None  # As on a file system without flock.\n'
  'lock = workdir_lock.acquire(sys.argv[1], sys.argv[2])\n'
  'print("held", flush=True)\n'
  'time.sleep(120)\n'
)


@pytest.fixture
def holder_process():
  """Starts a process holding a directory's lock; every one started is killed at the end."""
  procs = []

  def start(directory, what='training run', no_flock=False):
    proc = subprocess.Popen(
      [sys.executable, '-c', HOLDER, str(directory), what] + (['no_flock'] if no_flock else []),
      cwd=REPO,
      env=subprocess_env(),
      stdout=subprocess.PIPE,
      text=True,
    )
    procs.append(proc)
    assert proc.stdout.readline().strip() == 'held'
    return proc

  yield start
  for proc in procs:
    if proc.poll() is None:
      proc.kill()
    proc.wait()


def _kill(proc) -> None:
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_second_process_is_refused_naming_the_holder(tmp_path, holder_process):
  proc = holder_process(tmp_path, 'search')
  t0 = time.time()
  with pytest.raises(workdir_lock.WorkdirLocked) as e:
    workdir_lock.acquire(tmp_path)
  assert time.time() - t0 < 2  # At once, not after a wait.
  message = str(e.value)
  assert f'in use by another search (pid {proc.pid} on host {socket.gethostname()}' in message
  assert 'started ' in message and 'command: -c' in message
  assert e.value.holder['pid'] == proc.pid
  assert workdir_lock.holder(tmp_path)['pid'] == proc.pid
  proc.terminate()  # A clean-ish end: the kernel drops the lock with the process.
  proc.wait()
  with workdir_lock.hold(tmp_path) as lock:
    assert lock.info['pid'] == os.getpid()
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())['pid'] == os.getpid()
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()  # Released: the file is gone.
  assert workdir_lock.holder(tmp_path) is None


def test_the_holding_process_may_take_it_again(tmp_path, holder_process):
  outer = workdir_lock.acquire(tmp_path / 'w')  # Creates the directory.
  inner = workdir_lock.acquire(tmp_path / 'w')
  assert inner is outer
  inner.release()
  assert outer.held and (tmp_path / 'w' / workdir_lock.LOCK_NAME).exists()
  # Still held by this process: another one is refused.
  proc = subprocess.run(
    [sys.executable, '-c', HOLDER, str(tmp_path / 'w'), 'training run'],
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode != 0 and f'pid {os.getpid()}' in proc.stderr
  outer.release()
  assert not outer.held and not (tmp_path / 'w' / workdir_lock.LOCK_NAME).exists()


def test_a_killed_holder_does_not_block_the_next_run(tmp_path, holder_process, caplog):
  proc = holder_process(tmp_path)
  _kill(proc)
  assert (tmp_path / workdir_lock.LOCK_NAME).exists()  # Left behind by the dead process ...
  assert workdir_lock.holder(tmp_path) is None  # ... but nobody holds it.
  with workdir_lock.hold(tmp_path) as lock:
    assert lock.info['pid'] == os.getpid()
  assert f'left by pid {proc.pid}' in caplog.text and 'no longer running' in caplog.text


def test_without_flock_a_dead_pid_is_detected_and_a_live_one_refused(
  tmp_path, holder_process, monkeypatch
):
  """The exclusive-file fallback (file systems without flock): stale by pid, on this host."""
  monkeypatch.setattr(workdir_lock, 'fcntl', None)
  live = holder_process(tmp_path / 'live', no_flock=True)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f'pid {live.pid} on host'):
    workdir_lock.acquire(tmp_path / 'live')
  _kill(live)  # Its file stays; its pid is dead.
  assert workdir_lock.holder(tmp_path / 'live') is None
  with workdir_lock.hold(tmp_path / 'live') as lock:
    assert lock.info['pid'] == os.getpid()
  assert not (tmp_path / 'live' / workdir_lock.LOCK_NAME).exists()

  # A lock from another host cannot be checked from here: refused, saying which file to remove.
  (tmp_path / 'far').mkdir()
  far = {'pid': 1, 'host': 'another-host.example', 'started': '2024-01-01T00:00:00+00:00'}
  (tmp_path / 'far' / workdir_lock.LOCK_NAME).write_text(json.dumps(far))
  with pytest.raises(workdir_lock.WorkdirLocked, match='another host.*delete .*run.lock'):
    workdir_lock.acquire(tmp_path / 'far')
  # A reused pid (alive, but started later than the holder did) is not the holder.
  (tmp_path / 'reused').mkdir()
  reused = {'pid': os.getpid(), 'host': socket.gethostname(), 'pid_start': '1'}
  (tmp_path / 'reused' / workdir_lock.LOCK_NAME).write_text(json.dumps(reused))
  with workdir_lock.hold(tmp_path / 'reused'):
    pass


def test_training_refuses_a_workdir_in_use_before_writing(tmp_path, holder_process):
  from zenfer_jax.training import loop

  workdir = tmp_path / 'run'
  proc = holder_process(workdir)
  with pytest.raises(workdir_lock.WorkdirLocked, match=f'pid {proc.pid}'):
    loop.train_and_evaluate(tiny_config(tmp_path / 'tfds'), str(workdir))
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]
  assert not (tmp_path / 'tfds').exists()  # Refused before the dataset was even prepared.


@pytest.mark.slow
def test_main_refuses_a_workdir_in_use_and_an_empty_one(tmp_path, holder_process):
  workdir = tmp_path / 'run'
  proc = holder_process(workdir)
  t0 = time.time()
  run = subprocess.run(
    main_command(workdir, tmp_path / 'tfds'),
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert run.returncode != 0
  assert f'in use by another training run (pid {proc.pid}' in run.stderr, run.stderr[-2000:]
  assert 'Traceback' not in run.stderr
  assert time.time() - t0 < 60
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]  # Not even log.txt.

  command = [
    a if not a.startswith('--workdir=') else '--workdir='
    for a in main_command(workdir, tmp_path / 'tfds')
  ]
  empty = subprocess.run(
    command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120
  )
  assert empty.returncode != 0 and '--workdir is empty' in empty.stderr, empty.stderr[-2000:]
  assert sorted(os.listdir(tmp_path)) == ['run']  # Nothing written into the current directory.
