"""Numerical parity: random PyTorch reference models converted to Flax give the same logits and statistics.

Every configuration of model_facts.json is checked in eval mode at two input
sizes (65 and 100: odd maps at several depths) and in train mode, where the
running statistics the step updates must convert back equal. The error
measure is max |flax - torch| / max |torch| over the logits.

The random models are calibrated (see `randomize_`): BN running statistics
are measured on a batch and then perturbed, and each residual branch's last
BN is scaled down as the recipe's init does, so activations stay O(1). Blind
random statistics make activations O(100), where the reference's own float32
result is up to 1e-4 off: its lw_att GroupNorm normalises single elements and returns
rounding noise times 1/sqrt(eps). `test_blind_random_models_match_float64`
covers that regime against PyTorch in float64, the exact answer.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
import torch

from torch_port import export_state_dict, load_torch_checkpoint
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax.model.zennet import build_model

torch.set_num_threads(1)

REF_DIR = pathlib.Path(__file__).parent / 'reference'
FACTS = json.loads((REF_DIR / 'model_facts.json').read_text())
CONFIGS = sorted(FACTS)
# Two float32 implementations' rounding, which depends on the CPU: PyTorch's oneDNN picks its conv
# kernels by instruction set, and the calibrated models themselves come from a float32 run.
# Measured worst case (ZenNet-M, eval at 65 px): 4.6e-6 with AVX-512, 1.05e-5 with oneDNN held to
# AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) and 9.9e-6 to AVX. A conversion bug is far larger: every BN
# variance off by 1e-4 (an eps mismatch) gives 1e-3 to 8e-3.
RTOL = 5e-5
TORCH_MOMENTUM = 0.1  # the reference's BatchNorm2d default; Flax's convention is 1 - that.


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _apply(model, variables, x_nchw, train=False):
  """One jitted forward (compiling once costs less CPU than running un-jitted op by op)."""
  x = x_nchw.numpy().transpose(0, 2, 3, 1)
  if train:
    fn = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=['batch_stats']))
  else:
    fn = jax.jit(lambda v, a: model.apply(v, a, train=False))
  return jax.device_get(fn(variables, x))


def _flags(name):
  f = FACTS[name]
  return f['structure'], f['num_classes'], dict(use_sa=f['use_sa'], use_lw_att=f['use_lw_att'])


def _models(name, res, seed, calibrate=True):
  structure, classes, flags = _flags(name)
  g = torch.Generator().manual_seed(seed)
  ref = build_reference_model(structure, classes, bn_momentum=TORCH_MOMENTUM, **flags)
  randomize_(
    ref,
    seed=seed,
    calibration_batch=torch.randn(8, 3, res, res, generator=g) if calibrate else None,
  )
  x = torch.randn(2, 3, res, res, generator=g)
  # 'xla' depthwise: the same arithmetic as the CPU default 'shift', far cheaper un-jitted.
  flax_model = build_model(
    structure, classes, bn_momentum=1.0 - TORCH_MOMENTUM, conv_impl='xla', **flags
  )
  return ref, flax_model, x


@pytest.mark.parametrize('name', CONFIGS)
def test_eval_logits_match_at_two_resolutions(name):
  structure, classes, flags = _flags(name)
  errs = {}
  for i, res in enumerate((65, 100)):
    ref, flax_model, x = _models(name, res, seed=100 + 7 * CONFIGS.index(name) + i)
    ref.eval()
    with torch.no_grad():
      want = ref(x).numpy()
    variables = load_torch_checkpoint(ref.state_dict(), structure, classes, **flags)
    got = _apply(flax_model, variables, x)
    errs[res] = rel_err(got, want)
  print(f'{name}: eval max relative error {errs}')
  assert max(errs.values()) < RTOL, errs


@pytest.mark.parametrize('name', CONFIGS)
def test_train_mode_logits_and_updated_statistics_match(name):
  structure, classes, flags = _flags(name)
  ref, flax_model, x = _models(name, 65, seed=500 + CONFIGS.index(name))
  variables = load_torch_checkpoint(ref.state_dict(), structure, classes, **flags)
  ref.train()
  with torch.no_grad():
    want = ref(x).numpy()
  got, updates = _apply(flax_model, variables, x, train=True)
  err = rel_err(got, want)
  assert err < RTOL, err

  exported = export_state_dict(
    {'params': variables['params'], 'batch_stats': updates['batch_stats']},
    structure,
    classes,
    **flags,
  )
  torch_sd = ref.state_dict()
  worst = 0.0
  for k, v in torch_sd.items():
    if k.endswith(('running_mean', 'running_var')):
      worst = max(worst, rel_err(exported[k].numpy(), v.numpy()))
  print(f'{name}: train logits {err:.2e}, running statistics {worst:.2e}')
  assert worst < RTOL, worst
  # The statistics did move, so the comparison above means something.
  moved = load_torch_checkpoint(torch_sd, structure, classes, **flags)['batch_stats']
  assert not np.allclose(
    moved['backbone']['block0']['bn1']['var'],
    variables['batch_stats']['backbone']['block0']['bn1']['var'],
  )


@pytest.mark.parametrize('name', ['ZenNet-R+lw_att', 'ZenNet-M-SA+lw_att', 'mixed-families'])
def test_blind_random_models_match_float64(name):
  structure, classes, flags = _flags(name)
  ref, flax_model, x = _models(name, 65, seed=900 + CONFIGS.index(name), calibrate=False)
  ref.eval()
  with torch.no_grad():
    want32 = ref(x).numpy()
    want64 = ref.double()(x.double()).numpy()
  ref.float()
  variables = load_torch_checkpoint(ref.state_dict(), structure, classes, **flags)
  got = _apply(flax_model, variables, x)
  err64 = rel_err(got, want64)
  print(
    f'{name}: |logits| {np.abs(want64).max():.1f}, flax vs torch float64 {err64:.2e}, '
    f'torch float32 vs float64 {rel_err(want32, want64):.2e}'
  )
  assert err64 < RTOL, err64
  if not flags['use_lw_att']:
    assert rel_err(got, want32) < RTOL


def test_default_depthwise_path_matches_reference():
  """The CPU default ('shift' depthwise) on a structure with depthwise blocks."""
  name = 'mixed-families-SA+lw_att'
  structure, classes, flags = _flags(name)
  ref, _, x = _models(name, 33, seed=4242)
  ref.eval()
  with torch.no_grad():
    want = ref(x).numpy()
  model = build_model(structure, classes, **flags)
  variables = load_torch_checkpoint(ref.state_dict(), structure, classes, **flags)
  got = _apply(model, variables, x)
  assert rel_err(got, want) < RTOL
