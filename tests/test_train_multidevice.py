"""Data parallelism: 4 fake CPU devices and 1 device, same global batches, same parameters.

XLA_FLAGS must be set before JAX starts, and a pytest worker may already have started it, so
both runs are subprocesses. With cross-device BatchNorm (and mixup off: its partners are drawn
within each device's shard) the two runs compute the same function of the same batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from train_fixtures import flat, latest_state, run_main

from zenfer_jax.rundir import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Two training subprocesses.

RUN = dict(
  num_epochs=2,
  steps_per_epoch=4,
  batch_size=16,
  eval_batch_size=32,
  mixup_alpha=0.0,
  **{'model.cross_device_bn': True},
)


def test_four_devices_equal_one_device_with_cross_device_batchnorm(tmp_path, digits_dir):
  run_main(tmp_path / 'one', digits_dir, devices=1, **RUN)
  proc = run_main(tmp_path / 'four', digits_dir, devices=4, **RUN)
  assert 'TFRT_CPU_3' in proc.stderr or 'CpuDevice(id=3)' in proc.stderr  # Really 4 devices.

  one, _ = latest_state(tmp_path / 'one')
  four, _ = latest_state(tmp_path / 'four')
  assert int(one['step']) == int(four['step']) == 8
  a, b = flat(one['params']), flat(four['params'])
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=2e-5, err_msg=k)
  sa, sb = flat(one['batch_stats']), flat(four['batch_stats'])
  for k in sa:
    np.testing.assert_allclose(sb[k], sa[k], rtol=2e-4, atol=2e-5, err_msg=k)

  m1, m4 = (
    workdir_lib.read_metrics(str(tmp_path / 'one')),
    workdir_lib.read_metrics(str(tmp_path / 'four')),
  )
  assert [r['step'] for r in m1] == [r['step'] for r in m4] == [4, 8]
  for r1, r4 in zip(m1, m4):
    assert r4['train_loss'] == pytest.approx(r1['train_loss'], rel=1e-4)
    assert abs(r4['test_top1'] - r1['test_top1']) <= 2 / 360  # Eval counts every image once.
