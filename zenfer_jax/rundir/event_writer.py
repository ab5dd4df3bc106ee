"""TensorBoard scalars and hyperparameters written without TensorFlow.

clu's `metric_writers` package imports TensorFlow as it loads (its SummaryWriter is TF's), so a
run with the Grain loader (`config.data.loader='grain'`, no TensorFlow) writes its event files
with TensorBoard's own event-file writer and protos instead. Same interface as the part of a clu
writer the training loop uses (`write_scalars`, `write_hparams`, `flush`, `close`), same log
lines, and TensorBoard reads the files as it reads clu's. Nothing here imports TensorFlow, even
where it is installed.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from absl import logging


class EventWriter:
  """Logs each write as clu's LoggingWriter does; writes event files unless `just_logging`."""

  def __init__(self, logdir: str, just_logging: bool = False):
    self._file = self._records = None
    if not just_logging:
      # TensorBoard's RecordWriter over a file opened here: its EventFileWriter goes through
      # `tensorboard.compat.tf`, which imports TensorFlow whenever it is installed.
      from tensorboard.compat.proto import event_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter

      os.makedirs(logdir, exist_ok=True)
      name = f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.0'
      self._file = open(os.path.join(logdir, name), 'wb')
      self._records = RecordWriter(self._file)
      self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._records.write(event.SerializeToString())

  def _add(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2

    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [
      f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in sorted(scalars.items())
    ]
    logging.info('[%d] %s', step, ', '.join(values), extra={'terminal': False})
    if self._file is not None:
      from tensorboard.compat.proto import summary_pb2

      value = summary_pb2.Summary.Value
      self._add(
        step,
        summary_pb2.Summary(
          value=[value(tag=k, simple_value=float(v)) for k, v in sorted(scalars.items())]
        ),
      )

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters] %s', dict(hparams), extra={'terminal': False})
    if self._file is not None:
      from tensorboard.plugins.hparams import summary_v2

      # The hparams plugin takes bool, number and str values; other values (lists) as text.
      plain = {
        k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()
      }
      self._add(0, summary_v2.hparams_pb(plain))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
