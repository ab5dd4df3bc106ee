"""zenfer_jax.training.distributed without a cluster: the launch variables, and the watchdog's
decisions against an in-memory key-value store that stands in for the coordination service.

The real job (processes, gloo, a SIGKILL) is tests/test_multiprocess.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from zenfer_jax.training import distributed


class Store:
  """The two calls the watchdog makes, on a dict; `down` makes them fail as an unreachable
  coordinator does."""

  def __init__(self):
    self.data: dict[str, str] = {}
    self.down = False
    self.lock = threading.Lock()

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Failed to send RPC to coordination service')
    with self.lock:
      self.data[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Socket closed')
    with self.lock:
      return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def _watch(store, index=0, count=2, timeout=0.5):
  lost = []
  dog = distributed.Watchdog(
    timeout,
    workdir='runs/x',
    interval_s=0.05,
    on_lost=lost.append,
    client=store,
    index=index,
    count=count,
  )
  return dog.start(), lost


def _beat(store, index, stop, interval=0.05):
  n = 0
  while not stop.is_set():
    n += 1
    store.key_value_set(f'zenfer_jax/watchdog/beat/{index}', str(n), True)
    time.sleep(interval)


def _wait_for(condition, limit=10.0):
  deadline = time.monotonic() + limit
  while not condition() and time.monotonic() < deadline:
    time.sleep(0.02)
  return condition()


def test_a_peer_that_stops_beating_is_reported_after_the_timeout():
  store, stop = Store(), threading.Event()
  peer = threading.Thread(target=_beat, args=(store, 1, stop), daemon=True)
  peer.start()
  dog, lost = _watch(store, timeout=0.5)
  time.sleep(1.5)  # Three timeouts of a live peer: nothing said.
  assert lost == []
  stop.set()  # The peer dies.
  died = time.monotonic()
  assert _wait_for(lambda: lost)
  took = time.monotonic() - died
  assert 0.4 < took < 2.0, took
  assert lost == [
    'process 1 of 2 has not responded for 0.5 s: it died (killed, out of memory, its host lost) '
    'or hangs; stopping process 0 too. The last checkpoint in runs/x is intact: rerun the same '
    'command to resume.'
  ]
  assert store.data['zenfer_jax/watchdog/beat/0']  # It beat for the others too.
  dog.finish(ok=False)


def test_a_peer_that_finished_may_fall_silent_but_one_that_failed_stops_the_others():
  store = Store()
  store.key_value_set('zenfer_jax/watchdog/exit/1', 'ok')
  dog, lost = _watch(store, count=3, timeout=0.3)
  store.key_value_set('zenfer_jax/watchdog/exit/2', 'error')
  assert _wait_for(lambda: lost)
  assert lost[0].startswith('process 2 of 3 stopped with an error')
  dog.finish()
  # finish() tells the others how this one ended.
  assert store.data['zenfer_jax/watchdog/exit/0'] == 'ok'


def test_losing_the_coordinator_is_reported_once_it_has_lasted_the_timeout():
  store, stop = Store(), threading.Event()
  threading.Thread(target=_beat, args=(store, 0, stop), daemon=True).start()
  dog, lost = _watch(store, index=1, timeout=0.4)
  time.sleep(0.3)
  store.down = True
  stop.set()
  assert _wait_for(lambda: lost)
  assert lost[0].startswith('process 1 of 2 lost the job coordinator (process 0) for 0.4 s')
  assert 'Socket closed' in lost[0] or 'UNAVAILABLE' in lost[0]
  dog.finish()


def test_after_finish_nothing_is_reported():
  store = Store()
  dog, lost = _watch(store, timeout=0.2)
  dog.finish()
  time.sleep(0.5)
  assert lost == []


def test_a_single_process_needs_no_watchdog():
  dog, lost = _watch(Store(), count=1)
  assert dog._thread is None
  dog.finish()


def test_launch_variables():
  env = {
    'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234',
    'JAX_NUM_PROCESSES': '2',
    'JAX_PROCESS_ID': '1',
  }
  assert distributed.launched_multiprocess(env)
  assert distributed._explicit_args(env) == {
    'coordinator_address': '127.0.0.1:1234',
    'num_processes': 2,
    'process_id': 1,
  }
  assert distributed._explicit_args({}) == {}  # SLURM / MPI: JAX reads their variables itself.
  assert distributed.launched_multiprocess({'SLURM_NTASKS': '4'})
  assert not distributed.launched_multiprocess({'SLURM_NTASKS': '1'})
  slurm = {'JAX_COORDINATOR_ADDRESS': 'node1:1234', 'SLURM_NTASKS': '4'}
  assert distributed._explicit_args(slurm) == {'coordinator_address': 'node1:1234'}
  with pytest.raises(ValueError, match='JAX_NUM_PROCESSES and JAX_PROCESS_ID not'):
    distributed._explicit_args({'JAX_COORDINATOR_ADDRESS': 'h:1'})
  with pytest.raises(ValueError, match='expected 0 <= id < JAX_NUM_PROCESSES=2'):
    distributed._explicit_args({**env, 'JAX_PROCESS_ID': '2'})
