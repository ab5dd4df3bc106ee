"""LoopTimer: phase totals, the warm-up mark, and the sustained rate after it."""

import time

import pytest

from zenfer_jax.training.loop_timing import LoopTimer


def test_sustained_rate_excludes_warmup_eval_and_checkpoints():
  timer = LoopTimer(start_step=0)
  with timer.phase('input_wait'):
    time.sleep(0.05)  # Warm-up: not in the sustained figures.
  timer.mark(2)
  timer.mark(4)  # Only the first mark ends the warm-up.
  with timer.phase('input_wait'):
    time.sleep(0.02)
  time.sleep(0.08)  # "Steps".
  with timer.phase('eval'):
    time.sleep(0.1)
  with timer.phase('checkpoint'):
    time.sleep(0.05)
  out = timer.summary(step=12, global_batch=8)
  assert out['warmup']['step'] == 2 and out['warmup']['input_wait_seconds'] >= 0.05
  s, end, warm = out['sustained'], out['end'], out['warmup']
  assert s['steps'] == 10
  # Sleeps only overrun (a busy machine): lower bounds, and the arithmetic exactly.
  assert s['train_seconds'] >= 0.10 and s['eval_seconds'] >= 0.1
  assert s['train_seconds'] == pytest.approx(
    (end['seconds'] - warm['seconds'])
    - (end['eval_seconds'] - warm['eval_seconds'])
    - (end['checkpoint_seconds'] - warm['checkpoint_seconds'])
  )
  assert s['images_per_second'] == pytest.approx(80 / s['train_seconds'])
  waited = end['input_wait_seconds'] - warm['input_wait_seconds']
  assert waited >= 0.02 and s['input_wait_fraction'] == pytest.approx(waited / s['train_seconds'])
  assert out['counts'] == {'input_wait': 2, 'eval': 1, 'checkpoint': 1}
  assert out['last_seconds']['checkpoint'] >= 0.05


def test_no_mark_no_sustained_figures():
  timer = LoopTimer(start_step=5)
  out = timer.summary(step=5, global_batch=8)
  assert out['sustained'] is None and out['warmup'] is None and out['start_step'] == 5


def test_rate_since_last_is_the_current_speed_without_evaluation_and_checkpoints():
  timer = LoopTimer(start_step=100)
  t0 = timer.start
  # 10 steps of 8 images in 2 s since the start (a resumed run counts from its start step).
  assert timer.rate_since_last(110, 8, now=t0 + 2.0) == pytest.approx(40.0)
  timer.totals['eval'] += 3.0  # An evaluation and a checkpoint inside the next interval ...
  timer.totals['checkpoint'] += 1.0
  # ... are left out: 20 steps of 8 in 9 - 2 - 4 = 3 s.
  assert timer.rate_since_last(130, 8, now=t0 + 9.0) == pytest.approx(160 / 3)
  assert timer.rate_since_last(130, 8, now=t0 + 10.0) is None  # no step since the last call
  assert timer.rate_since_last(140, 8, now=t0 + 12.0) == pytest.approx(40.0)
