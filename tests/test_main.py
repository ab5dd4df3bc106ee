"""`python -m zenfer_jax.main`: what a person at the terminal sees, and what the log file keeps."""

from __future__ import annotations

import re
import subprocess

import pytest
from train_fixtures import REPO, main_command, subprocess_env

# The terminal output of a quiet run, apart from the progress bar: process and devices, workdir,
# the dataset's line from prepare, the run's summary, the model, the result and where the files
# are. One more line per epoch.
FIXED_LINES = 7
TF_CPP_MARKERS = ('cpu_feature_guard', 'oneDNN', 'absl::InitializeLog', 'port.cc')
# A TensorFlow C++ start-up line that the test causes itself: TensorFlow prints it by default
# only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX, but an explicit
# TF_ENABLE_ONEDNN_OPTS=1 overrides that CPU check (IsMklEnabled in tensorflow/core/util/port.cc),
# so any x86 machine prints it, through absl's C++ logging on file descriptor 2. An invalid value
# would log a WARNING on any CPU too, yet leave the run's oneDNN choice to the CPU.
ONEDNN_LINE = 'oneDNN custom operations are on'


def _run(workdir, data_dir, *flags: str) -> subprocess.CompletedProcess:
  env = subprocess_env()
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # The program itself must keep TensorFlow quiet.
  env['TF_ENABLE_ONEDNN_OPTS'] = '1'  # Something for it to keep quiet, on any CPU.
  proc = subprocess.run(
    [*main_command(workdir, data_dir, progress_bar=True), *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert proc.returncode == 0, proc.stderr[-6000:]
  return proc


def _text_lines(output: str) -> list[str]:
  """Lines other than progress-bar redraws (tqdm rewrites its line with carriage returns)."""
  lines = []
  for line in output.split('\n'):
    shown = line.split('\r')[-1].strip()  # What a terminal shows once the redraws are done.
    if shown and not re.match(r'train:\s+\d+%\|', shown):
      lines.append(shown)
  return lines


@pytest.mark.slow
def test_quiet_terminal_full_log_file_and_verbosity_brings_it_back(tmp_path, digits_dir):
  workdir = tmp_path / 'run'
  proc = _run(workdir, digits_dir)
  output = proc.stdout + proc.stderr
  for marker in TF_CPP_MARKERS:
    assert marker not in output, f'TensorFlow C++ line on the terminal:\n{output}'
  assert not re.search(r'^[IW]\d{4} ', output, re.M), f'absl INFO/WARNING line:\n{output}'
  lines = _text_lines(output)
  epochs = [ln for ln in lines if re.match(r'epoch \d+/2 step \d+: train loss', ln)]
  assert len(epochs) == 2, lines
  assert any(re.match(r'Done \(.*\)\. Best test top-1 \d+\.\d\d% at epoch \d', ln) for ln in lines)
  assert any(ln.startswith(f'In {workdir}: model_best/') for ln in lines), lines  # The files.
  assert len(lines) <= FIXED_LINES + 2, '\n'.join(lines)
  assert 'img/s' in proc.stderr  # The progress bar is there.

  log = (workdir / 'log.txt').read_text()
  assert re.search(rf'\] tensorflow: .*{ONEDNN_LINE}', log)  # TensorFlow's start-up lines, ...
  assert re.search(r'^I\d{4} .*\] epoch 2/2 step', log, re.M)  # ... with the run's own lines,
  assert 'Constructing tf.data.Dataset' in log  # TFDS's,
  assert re.search(r'\] \[\d+\] train/accuracy=', log)  # and the metric writer's.

  # Rerunning the finished run resumes at its end; --verbosity=0 shows every library's lines.
  loud = _run(workdir, digits_dir, '--verbosity=0')
  assert 'Constructing tf.data.Dataset' in loud.stderr
  assert ONEDNN_LINE in loud.stderr  # Straight from TensorFlow: nothing captures it.
  assert len(_text_lines(loud.stdout + loud.stderr)) > len(lines)
