"""rundir.event_writer: TensorBoard event files written without TensorFlow, read back by TensorBoard."""

from __future__ import annotations

import os
import subprocess
import sys

from zenfer_jax.rundir.event_writer import EventWriter


def _events(logdir):
  from tensorboard.backend.event_processing import event_accumulator

  (name,) = [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents.')]
  acc = event_accumulator.EventAccumulator(os.path.join(logdir, name))
  acc.Reload()
  return acc


def test_scalars_and_hyperparameters_read_back(tmp_path):
  w = EventWriter(str(tmp_path))
  w.write_hparams({'lr': 0.1, 'model.structure': 'zennet_m', 'bn': True, 'sizes': [1, 2]})
  w.write_scalars(3, {'train/loss': 2.5, 'test/top1': 0.25})
  w.write_scalars(6, {'train/loss': 1.5})
  w.close()
  acc = _events(str(tmp_path))
  assert sorted(acc.Tags()['scalars']) == ['test/top1', 'train/loss']
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == [(3, 2.5), (6, 1.5)]
  assert [(e.step, e.value) for e in acc.Scalars('test/top1')] == [(3, 0.25)]
  assert '_hparams_/session_start_info' in acc.PluginTagToContent('hparams')


def test_just_logging_writes_no_file(tmp_path):
  w = EventWriter(str(tmp_path / 'run'), just_logging=True)
  w.write_scalars(1, {'a': 1.0})
  w.flush()
  w.close()
  assert not (tmp_path / 'run').exists()


def test_tensorflow_is_not_imported_even_where_it_is_installed(tmp_path):
  code = (
    'import sys\n'
    'from zenfer_jax.rundir.event_writer import EventWriter\n'
    f'w = EventWriter({str(tmp_path)!r})\n'
    "w.write_hparams({'a': 1}); w.write_scalars(1, {'b': 2.0}); w.close()\n"
    "print(sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.')))\n"
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
