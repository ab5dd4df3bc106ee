"""Joining a multi-process job, and leaving it cleanly when another process is lost.

A job is N processes, each driving its own devices (host CPU devices, or its GPUs); JAX's
distributed runtime connects them and `jax.pmap` then spans every device of every process. Where
the processes come from decides how they find each other:

  * `launch/train_local.sh` (several processes on one machine, to try the multi-host path) and
    any launcher of your own set JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID;
  * SLURM (`launch/train_slurm.sh`) and Open MPI set their own variables, which
    `jax.distributed.initialize` reads itself.

On CPU the collectives (gradient means, metric sums) go through gloo over TCP; GPUs use NCCL.

When a process dies (SIGKILL, out of memory, a lost node) the others would otherwise wait inside
a collective until JAX's heartbeat timeout aborts them with a C++ stack trace, or forever where
a barrier has no timeout. So every process runs a `Watchdog`: each process bumps a counter in
the coordination service's key-value store every second, and a process that sees a peer's
counter stand still for `peer_timeout_s` (or the coordinator vanish) prints one clear line and
exits with `PEER_LOST_EXIT`. The last checkpoint is intact (saves are atomic), so rerunning the
same command resumes. JAX's own heartbeat timeout is set longer, so this message comes first.
"""

from __future__ import annotations

import itertools
import logging as std_logging
import os
import sys
import threading
import time

from absl import logging

__all__ = [
  'PEER_LOST_EXIT',
  'Watchdog',
  'barrier',
  'initialize',
  'launched_multiprocess',
]

# EX_TEMPFAIL: a temporary failure; the same command, rerun, resumes.
PEER_LOST_EXIT = 75
_KEY = 'zenfer_jax/watchdog'


def launched_multiprocess(environ: dict | None = None) -> bool:
  """Whether the environment says this is one process of several."""
  env = os.environ if environ is None else environ
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return True
  for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if int(env.get(var, '1') or 1) > 1:
      return True
  return False


def _explicit_args(environ: dict) -> dict:
  """coordinator_address / num_processes / process_id from JAX_* variables (JAX itself reads
  only the address; a launcher without a cluster manager has to name the other two)."""
  address = environ.get('JAX_COORDINATOR_ADDRESS')
  if not address:
    return {}
  missing = [v for v in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID') if not environ.get(v)]
  if missing:
    if launched_multiprocess({k: v for k, v in environ.items() if k != 'JAX_COORDINATOR_ADDRESS'}):
      return {'coordinator_address': address}  # SLURM / MPI name the rest.
    raise ValueError(
      f'JAX_COORDINATOR_ADDRESS={address} is set but {" and ".join(missing)} not: a job started '
      'without SLURM or MPI names the number of processes and this process index '
      '(launch/train_local.sh sets all three).'
    )
  try:
    num, index = int(environ['JAX_NUM_PROCESSES']), int(environ['JAX_PROCESS_ID'])
  except ValueError:
    raise ValueError(
      f'JAX_NUM_PROCESSES={environ["JAX_NUM_PROCESSES"]!r} and '
      f'JAX_PROCESS_ID={environ["JAX_PROCESS_ID"]!r}: expected integers.'
    ) from None
  if not 0 <= index < num:
    raise ValueError(f'JAX_PROCESS_ID={index}: expected 0 <= id < JAX_NUM_PROCESSES={num}.')
  return {'coordinator_address': address, 'num_processes': num, 'process_id': index}


def initialize(peer_timeout_s: float = 60.0, environ: dict | None = None) -> None:
  """Connects this process to the job; call before any JAX computation.

  CPU collectives are set to gloo first (without it a multi-process CPU job has no cross-process
  collectives at all); the setting does not touch GPU or TPU backends.
  """
  import jax  # Not at the top: zenfer_jax.main imports this before its logging is set up.

  env = dict(os.environ if environ is None else environ)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # Longer than the watchdog's limit, so a lost peer is reported by it, clearly, first.
  heartbeat = int(2 * peer_timeout_s) + 10
  jax.distributed.initialize(
    **_explicit_args(env),
    heartbeat_timeout_seconds=heartbeat,
    shutdown_timeout_seconds=int(peer_timeout_s) + 30,
  )


_barriers = itertools.count()


def barrier(name: str, timeout_s: float = 3600.0) -> None:
  """Returns when every process of the job has called it (with the same `name`, in the same
  order); at once in a single-process run.

  Through the coordination service, not a device collective: it can wait as long as a slow
  process needs (compiling, say), which gloo cannot, as it gives a process 30 s to join a new
  collective. A process lost meanwhile is the watchdog's to report.
  """
  import jax  # Not at the top: zenfer_jax.main imports this before its logging is set up.

  if jax.process_count() == 1:
    return
  client = _client()
  key = f'{_KEY}/barrier/{next(_barriers)}/{name}'
  if client is None:
    from jax.experimental import multihost_utils  # As jax, above.

    multihost_utils.sync_global_devices(key)
    return
  client.wait_at_barrier(key, int(timeout_s * 1000))


def _client():
  """The coordination service's client (JAX keeps it as private state; None if unavailable)."""
  try:
    from jax._src import distributed as jax_distributed  # Private: may be gone (hence the try).
  except ImportError:
    return None
  return getattr(jax_distributed.global_state, 'client', None)


class Watchdog:
  """Stops this process, with a message, when another process of the job stops responding.

  `on_lost(message)` is called from the watchdog thread; the default writes the message to the
  log and stderr and ends the process at once (`os._exit`: the main thread may be blocked in a
  collective that will never complete, and exit handlers would wait on the lost peer too).
  Call `finish(ok)` when this process is done, so the others do not take its silence for a loss.
  `client`, `index` and `count` default to JAX's coordination client and this job's.

  The watchdog covers a process left waiting. A loss that breaks a transfer in flight can also
  make the collective library (gloo) end this process itself, at once; either way it is bounded,
  and the launcher says which process failed first.
  """

  def __init__(
    self,
    peer_timeout_s: float,
    *,
    workdir: str = '',
    interval_s: float | None = None,
    on_lost=None,
    client=None,
    index: int | None = None,
    count: int | None = None,
  ):
    import jax  # Not at the top: zenfer_jax.main imports this before its logging is set up.

    self.index = jax.process_index() if index is None else index
    self.count = jax.process_count() if count is None else count
    self.timeout = float(peer_timeout_s)
    self.interval = interval_s or min(1.0, self.timeout / 5)
    self.workdir = workdir
    self.on_lost = on_lost or self._exit
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._client = client if client is not None else _client()

  def start(self) -> Watchdog:
    if self.count > 1 and self._client is not None:
      self._thread = threading.Thread(target=self._run, name='zenfer-watchdog', daemon=True)
      self._thread.start()
    elif self.count > 1:
      logging.warning('No JAX coordination client: a lost process will not be detected early.')
    return self

  def finish(self, ok: bool = True) -> None:
    """Says this process ended (ok: finished its work; else failed) and stops watching."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      try:
        self._client.key_value_set(f'{_KEY}/exit/{self.index}', 'ok' if ok else 'error', True)
      except Exception:  # The coordinator may be gone already; nothing to tell then.
        pass

  def _lost(self, message: str) -> None:
    if not self._stop.is_set():  # Not after `finish`: this process is leaving anyway.
      self.on_lost(f'{message} {self._resume_hint()}')
      self._stop.set()

  def _resume_hint(self) -> str:
    where = f' in {self.workdir}' if self.workdir else ''
    return f'The last checkpoint{where} is intact: rerun the same command to resume.'

  @staticmethod
  def _exit(message: str) -> None:
    logging.error('%s', message, extra={'terminal': False})
    for handler in std_logging.getLogger().handlers:
      try:
        handler.flush()
      except Exception:  # Nothing may stop the exit below.
        pass
    sys.stderr.write(f'\nerror: {message}\n')
    sys.stderr.flush()
    os._exit(PEER_LOST_EXIT)

  def _run(self) -> None:
    client, me, n = self._client, self.index, self.count
    peers = {i for i in range(n) if i != me}
    beats: dict[int, str | None] = dict.fromkeys(peers)
    changed = dict.fromkeys(peers, time.monotonic())
    contact, beat = time.monotonic(), 0
    while not self._stop.wait(self.interval):
      now = time.monotonic()
      beat += 1
      try:
        client.key_value_set(f'{_KEY}/beat/{me}', str(beat), True)
        entries = dict(client.key_value_dir_get(f'{_KEY}/'))
      except Exception as e:  # The coordinator (process 0) is gone, or unreachable for now.
        if now - contact > self.timeout:
          first = ' '.join(str(e).split())[:160]
          self._lost(
            f'process {me} of {n} lost the job coordinator (process 0) for '
            f'{self.timeout:g} s ({first}): process 0 died or its host is unreachable; '
            f'stopping process {me} too.'
          )
        continue
      contact = now
      for i in sorted(peers):
        status = entries.get(f'{_KEY}/exit/{i}')
        if status == 'ok':  # Finished its work: its silence from now on is expected.
          peers.discard(i)
          continue
        if status is not None:
          self._lost(
            f'process {i} of {n} stopped with an error (its log says which); '
            f'stopping process {me} too.'
          )
          return
        value = entries.get(f'{_KEY}/beat/{i}')
        if value != beats[i]:
          beats[i], changed[i] = value, now
        elif now - changed[i] > self.timeout:
          self._lost(
            f'process {i} of {n} has not responded for {self.timeout:g} s: it died '
            f'(killed, out of memory, its host lost) or hangs; stopping process {me} too.'
          )
          return
