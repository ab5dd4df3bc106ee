"""Checkpoint files, strictness, only_backbone and the two command lines."""

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict

import torch_port
from torch_port import convert as convert_cli
from torch_port import export as export_cli
from torch_port.checkpoint_file import CheckpointFormatError
from torch_port.convert import CheckpointMismatchError, convert_state_dict
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax.model.zennet import build_model
from zenfer_jax.rundir import model_directory

torch.set_num_threads(1)

# Every family, SA-compatible widths, an lw_att-compatible head; cheap to trace.
TINY = (
  'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,16,2,8,1)SuperResK1K3K1(16,16,1,8,1)'
  'SuperResIDWE2K3(16,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference(classes=7, use_sa=True, use_lw_att=False, seed=0):
  return randomize_(
    build_reference_model(TINY, classes, use_sa=use_sa, use_lw_att=use_lw_att), seed=seed
  ).eval()


def _original_wrapper(model, epoch=41):
  """What the original train_image_classification.py saves from a DataParallel model."""
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  model.train()
  model(torch.randn(2, 3, 32, 32)).sum().backward()
  opt.step()
  model.eval()
  sd = {'module.' + k: v for k, v in model.state_dict().items()}
  return {
    'epoch': epoch,
    'state_dict': sd,
    'optimizer': opt.state_dict(),
    'top1_acc': 87.5,
    'top5_acc': 99.25,
    'training_status_info': {
      'best_acc1': 87.5,
      'best_acc5': 99.25,
      'best_acc1_at_epoch': 40,
      'best_acc5_at_epoch': 12,
      'training_elasped_time': 1234.5,
      'validation_elasped_time': 12.0,
    },
  }


def _same_tree(a, b):
  fa, fb = flatten_dict(a), flatten_dict(b)
  return fa.keys() == fb.keys() and all(
    np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa
  )


def _logits(variables, x, classes=7, use_sa=True, use_lw_att=False):
  model = build_model(TINY, classes, use_sa=use_sa, use_lw_att=use_lw_att, conv_impl='xla')
  return np.asarray(
    jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, x.numpy().transpose(0, 2, 3, 1))
  )


# ---------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize('suffix', ['.pth', '.pth.tar'])
def test_original_training_checkpoint_with_module_prefix(tmp_path, suffix):
  model = _reference()
  wrapper = _original_wrapper(model)
  path = tmp_path / f'best-params_rank0{suffix}'
  torch.save(wrapper, path)
  got = torch_port.load_torch_checkpoint(path, TINY, 7, use_sa=True)
  want = torch_port.load_torch_checkpoint(model.state_dict(), TINY, 7, use_sa=True)
  assert _same_tree(got, want)
  x = torch.randn(2, 3, 40, 40)
  with torch.no_grad():
    ref = model(x).numpy()
  assert np.abs(_logits(got, x) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_safetensors_and_legacy_pickle_formats(tmp_path):
  from safetensors.torch import save_file

  model = _reference(use_lw_att=True)
  sd = model.state_dict()
  want = torch_port.load_torch_checkpoint(sd, TINY, 7, use_sa=True, use_lw_att=True)
  save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / 'w.safetensors'))
  torch.save(sd, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  for name in ('w.safetensors', 'legacy.pth'):
    got = torch_port.load_torch_checkpoint(tmp_path / name, TINY, 7, use_sa=True, use_lw_att=True)
    assert _same_tree(got, want), name
  # Recognised by content, not by name.
  os.rename(tmp_path / 'w.safetensors', tmp_path / 'w.bin')
  assert _same_tree(
    torch_port.load_torch_checkpoint(tmp_path / 'w.bin', TINY, 7, use_sa=True, use_lw_att=True),
    want,
  )


def test_half_precision_checkpoint_loads_as_float32():
  model = _reference()
  sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
  got = torch_port.load_torch_checkpoint(sd, TINY, 7, use_sa=True)
  kernel = got['params']['backbone']['block0']['conv0']['kernel']
  assert kernel.dtype == np.float32


# torch.save's format before zip archives: pickles one after another.
LEGACY = {'_use_new_zipfile_serialization': False}


class _NotAllowed:
  """Pickled by reference: loading it would import and construct this class."""

  def __init__(self):
    self.x = 1


class _RunsCode:
  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_pickles_that_need_code_are_refused(tmp_path):
  sd = _reference().state_dict()
  # numpy scalars and arrays are data, not code: accepted.
  torch.save(
    {'state_dict': sd, 'top1_acc': np.float64(80.5), 'hist': np.arange(3.0)}, tmp_path / 'np.pth'
  )
  torch_port.load_torch_checkpoint(tmp_path / 'np.pth', TINY, 7, use_sa=True)
  torch.save({'state_dict': sd, 'extra': _NotAllowed()}, tmp_path / 'custom.pth')
  with pytest.raises(CheckpointFormatError, match='refused.*never done'):
    torch_port.load_torch_checkpoint(tmp_path / 'custom.pth', TINY, 7, use_sa=True)

  marker = tmp_path / 'pwned'
  evil = _RunsCode()
  evil.marker = str(marker)
  (tmp_path / 'evil.pth').write_bytes(pickle.dumps(evil, protocol=2))
  with pytest.raises(CheckpointFormatError, match='refused'):
    torch_port.load_torch_checkpoint(tmp_path / 'evil.pth', TINY, 7, use_sa=True)
  assert not marker.exists()


def test_truncated_and_non_checkpoint_files_fail_clearly(tmp_path):
  from safetensors.torch import save_file

  sd = _reference().state_dict()
  torch.save({'state_dict': sd}, tmp_path / 'full.pth')
  data = (tmp_path / 'full.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
  save_file(dict(sd), str(tmp_path / 'full.safetensors'))
  st = (tmp_path / 'full.safetensors').read_bytes()
  (tmp_path / 'cut.safetensors').write_bytes(st[: len(st) - 100])
  (tmp_path / 'notes.txt').write_text('SuperConvK3BNRELU(3,8,2,1)\n')
  (tmp_path / 'empty.pth').write_bytes(b'')
  (tmp_path / 'image.jpg').write_bytes(b'\xff\xd8\xff\xe0' + bytes(200))
  torch.save([1, 2, 3], tmp_path / 'list.pth')
  torch.save({'epoch': 3, 'lr': 0.1}, tmp_path / 'dict.pth')
  cases = {
    'cut.pth': 'truncated or damaged',
    'cut.safetensors': 'truncated or damaged',
    'notes.txt': 'not a checkpoint: .*notes.txt: expected a PyTorch checkpoint',
    'empty.pth': 'empty',
    'image.jpg': 'not a checkpoint: .*image.jpg',
    'list.pth': 'expected a state_dict',
    'dict.pth': 'not a model state_dict',
  }
  for name, msg in cases.items():
    with pytest.raises(CheckpointFormatError, match=msg):
      torch_port.load_torch_checkpoint(tmp_path / name, TINY, 7, use_sa=True)
  with pytest.raises(FileNotFoundError):
    torch_port.load_torch_checkpoint(tmp_path / 'absent.pth', TINY, 7)


def test_only_pickles_that_ask_for_code_are_said_to_run_code(tmp_path):
  """Random bytes that start like a pickle, or a cut one, are not a checkpoint; not code."""
  rng = np.random.default_rng(0)
  torch.save({'state_dict': _reference().state_dict()}, tmp_path / 'legacy.pth', **LEGACY)
  legacy = (tmp_path / 'legacy.pth').read_bytes()
  files = {
    'random.pth': b'\x80' + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    'proto2_noise.pth': b'\x80\x02' + rng.integers(0, 256, 200, dtype=np.uint8).tobytes(),
    'legacy_cut.pth': legacy[: len(legacy) // 2],
    'plain_pickle.pth': pickle.dumps({'a': 1}, protocol=2),
  }
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointFormatError) as e:
      torch_port.load_torch_checkpoint(tmp_path / name, TINY, 7, use_sa=True)
    assert str(e.value).startswith(f'not a checkpoint: {tmp_path / name}: '), str(e.value)
    assert 'run code' not in str(e.value), str(e.value)
  # The same object with a callable in it, in either torch.save format, is refused by name.
  for extra in ({}, LEGACY):
    torch.save({'state_dict': {}, 'x': _NotAllowed()}, tmp_path / 'custom.pth', **extra)
    with pytest.raises(CheckpointFormatError, match=r'calls .*_NotAllowed.*would run code'):
      torch_port.load_torch_checkpoint(tmp_path / 'custom.pth', TINY, 7, use_sa=True)


# ---------------------------------------------------------------------------
# Strictness


def test_wrong_structure_lists_every_problem_in_one_error():
  sd = _reference().state_dict()
  other = TINY.replace('SuperResK1K3K1(16,16,1,8,1)', 'SuperResK1K5K1(16,16,1,8,2)')
  with pytest.raises(CheckpointMismatchError) as e:
    torch_port.load_torch_checkpoint(sd, other, 7, use_sa=True)
  msg = str(e.value)
  assert 'missing' in msg and 'mis-shaped' in msg
  assert 'module_list.2.module_list.4.module_list.0.netblock.weight' in msg  # a missing key
  assert (
    'module_list.2.module_list.0.module_list.3.netblock.weight: (8, 8, 3, 3) vs (8, 8, 5, 5)' in msg
  )
  assert len(e.value.missing) > 5 and e.value.misshaped
  assert 'structure' in msg


def test_wrong_class_count_and_flags_get_hints():
  sd = _reference(use_sa=True).state_dict()
  with pytest.raises(CheckpointMismatchError, match=r'7 classes, not 8.*--num_classes 7'):
    torch_port.load_torch_checkpoint(sd, TINY, 8, use_sa=True)
  with pytest.raises(CheckpointMismatchError, match='use_sa=True') as e:
    torch_port.load_torch_checkpoint(sd, TINY, 7, use_sa=False)
  assert 'unexpected' in str(e.value) and 'structure does not match' not in str(e.value)
  with pytest.raises(CheckpointMismatchError, match='no lw_att head'):
    torch_port.load_torch_checkpoint(sd, TINY, 7, use_sa=True, use_lw_att=True)
  extra = dict(sd)
  extra['some.other.weight'] = torch.zeros(3)
  with pytest.raises(CheckpointMismatchError, match=r'unexpected \(1\)'):
    torch_port.load_torch_checkpoint(extra, TINY, 7, use_sa=True)


def _original_only_backbone(checkpoint_sd, fresh_variables, classes, use_lw_att, structure=TINY):
  """The oracle: the original load_model(..., only_backbone=True) on a PyTorch model that holds
  `fresh_variables` (every key of the checkpoint that the model has with the same size replaces
  the model's value); its logits are what the converted variables must give."""
  target = build_reference_model(structure, classes, use_sa=True, use_lw_att=use_lw_att)
  target.load_state_dict(
    torch_port.export_state_dict(
      fresh_variables, structure, classes, use_sa=True, use_lw_att=use_lw_att
    ),
    strict=True,
  )
  model_dict = target.state_dict()
  for k, v in checkpoint_sd.items():
    if k in model_dict and model_dict[k].size() == v.size():
      model_dict[k] = v
  target.load_state_dict(model_dict)
  return target.eval()


def _fresh(classes, use_lw_att, seed, structure=TINY):
  model = build_model(structure, classes, use_sa=True, use_lw_att=use_lw_att)
  from zenfer_jax.model.zennet import init_variables

  v = init_variables(model, jax.random.PRNGKey(seed), resolution=32)
  return {c: jax.device_get(v.get(c, {})) for c in ('params', 'batch_stats')}


def test_only_backbone_takes_what_matches_by_key_and_shape_like_the_original(caplog):
  model = _reference(classes=7, use_lw_att=False)
  sd = model.state_dict()
  full = torch_port.load_torch_checkpoint(sd, TINY, 7, use_sa=True)
  x = torch.randn(2, 3, 32, 32)

  # Another class count and an lw_att head the checkpoint lacks: both start fresh, from `rng`.
  variables, report = convert_state_dict(
    sd, TINY, 3, use_sa=True, use_lw_att=True, only_backbone=True, rng=jax.random.PRNGKey(3)
  )
  lw_att = ['params/lw_att/res_scale', 'params/lw_att/x_scale'] + [
    f'params/lw_att/sa/{n}' for n in ('cweight', 'cbias', 'sweight', 'sbias', 'gn_scale', 'gn_bias')
  ]
  assert report.left_at_init == sorted(['params/fc/kernel', 'params/fc/bias'] + lw_att)
  why = dict(report.transfer.fresh)
  assert why['params/fc/kernel'] == 'shape (7, 32) in the checkpoint, (3, 32) here (PyTorch layout)'
  assert why['params/lw_att/x_scale'] == 'not in the checkpoint'
  assert report.discarded == ['fc_linear.netblock.weight', 'fc_linear.netblock.bias']
  assert report.transfer.unused == [] and report.loaded == len(sd) - 2
  assert _same_tree(variables['params']['backbone'], full['params']['backbone'])
  assert _same_tree(variables['batch_stats'], full['batch_stats'])
  fresh = _fresh(3, True, seed=3)
  assert _same_tree(variables['params']['fc'], fresh['params']['fc'])
  assert _same_tree(variables['params']['lw_att'], fresh['params']['lw_att'])
  with torch.no_grad():
    want = _original_only_backbone(sd, fresh, 3, True)(x).numpy()
  got = _logits(variables, x, classes=3, use_lw_att=True)
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
  # The public function logs the same report.
  with caplog.at_level('WARNING'):
    torch_port.load_torch_checkpoint(sd, TINY, 3, use_sa=True, use_lw_att=True, only_backbone=True)
  assert 'left at initialisation' in caplog.text and 'params/fc/kernel' in caplog.text

  # The same class count: the classifier is copied too, as the original copies it.
  variables, report = convert_state_dict(sd, TINY, 7, use_sa=True, only_backbone=True)
  assert report.left_at_init == [] and report.discarded == []
  assert _same_tree(variables, full)

  # A checkpoint's lw_att is kept when the model has one, discarded when it has none.
  with_lw = _reference(use_lw_att=True).state_dict()
  v, r = convert_state_dict(with_lw, TINY, 3, use_sa=True, use_lw_att=True, only_backbone=True)
  assert r.left_at_init == ['params/fc/bias', 'params/fc/kernel']
  np.testing.assert_array_equal(
    v['params']['lw_att']['x_scale'], with_lw['lw_att.x_scale.scale'].numpy()
  )
  v, r = convert_state_dict(with_lw, TINY, 3, use_sa=True, use_lw_att=False, only_backbone=True)
  assert 'lw_att.SAlayer.cweight' in r.discarded and 'lw_att' not in v['params']
  assert 'lw_att.SAlayer.cweight' in r.transfer.unused

  # Another structure: what differs starts fresh (the original does not fail), the rest loads.
  other = TINY.replace('K1K3K1', 'K1K5K1')
  v, r = convert_state_dict(
    sd, other, 7, use_sa=True, only_backbone=True, rng=jax.random.PRNGKey(1)
  )
  five = [p for p, _ in r.transfer.fresh]
  assert five and all(p.startswith('params/backbone/block2/') for p in five), five
  assert all('(PyTorch layout)' in w for _, w in r.transfer.fresh)
  assert all(k.startswith('module_list.2.') for k in r.discarded) and len(r.discarded) == len(five)
  with torch.no_grad():
    want = _original_only_backbone(sd, _fresh(7, False, 1, other), 7, False, other)(x).numpy()
  got = np.asarray(
    build_model(other, 7, use_sa=True, conv_impl='xla').apply(
      v, x.numpy().transpose(0, 2, 3, 1), train=False
    )
  )
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_convert_only_backbone_is_trainings_init_from_rule(tmp_path, capsys):
  """A 20-identity .pth into a 7-class model two ways: `torch_port.convert --only_backbone`, and
  a strict conversion that training then loads with init_from + only_backbone. The same arrays
  are copied and the same are left fresh, with the same values where copied."""
  from train_fixtures import flat, tiny_config

  from zenfer_jax.training import init

  pretrained = _reference(classes=20, use_lw_att=False, seed=4)
  torch.save(_original_wrapper(pretrained), tmp_path / 'best-params_rank0.pth')
  common = ['--checkpoint', str(tmp_path / 'best-params_rank0.pth'), '--structure', TINY]
  common += ['--use_sa', '--image_size', '16']
  out = tmp_path / 'rafdb_init'
  argv = common + ['--num_classes', '7', '--only_backbone', '--seed', '5', '--output', str(out)]
  assert convert_cli.main(argv) == 0, capsys.readouterr().err
  assert 'left at initialisation (2): params/fc/bias, params/fc/kernel' in capsys.readouterr().out
  variables, card = model_directory.load_model_dir(out)
  record = card['init_from']
  assert record['only_backbone'] is True and record['source_num_classes'] == 20
  assert record['init_from'] == str(tmp_path / 'best-params_rank0.pth')
  assert {e['array'] for e in record['left_at_init']} == {'params/fc/kernel', 'params/fc/bias'}
  assert record['unused'] == []
  assert '[only_backbone: ' in card['source'] and '2 left at initialisation]' in card['source']
  strict = torch_port.load_torch_checkpoint(pretrained.state_dict(), TINY, 20, use_sa=True)
  converted = flat(variables)
  for k, v in flat(strict).items():
    if not k.startswith('params/fc/'):
      np.testing.assert_array_equal(converted[k], v, err_msg=k)
  fresh = flat(_fresh(7, False, seed=5))
  for k in ('params/fc/kernel', 'params/fc/bias'):
    np.testing.assert_array_equal(converted[k], fresh[k], err_msg=k)

  # Training's path from the same file: strict conversion (20 classes), then init_from.
  assert convert_cli.main(common + ['--num_classes', '20', '--output', str(tmp_path / 'vgg')]) == 0
  config = tiny_config(
    '/unused',
    **{
      'model.structure': TINY,
      'model.use_sa': True,
      'model.use_lw_att': False,
      'init_from': str(tmp_path / 'vgg'),
      'only_backbone': True,
    },
  )
  report = {}
  trained_from = flat(
    init.initial_variables(config, init.build_model(config, 7), jax.random.PRNGKey(0), report)
  )
  assert sorted(report['copied']) == sorted(record['copied'])
  assert sorted(e['array'] for e in report['left_at_init']) == [
    e['array'] for e in record['left_at_init']
  ]
  for k in record['copied']:
    np.testing.assert_array_equal(trained_from[k], converted[k], err_msg=k)


# ---------------------------------------------------------------------------
# Command lines


def test_convert_and_export_command_lines(tmp_path, capsys):
  model = _reference(use_lw_att=True)
  torch.save(_original_wrapper(model), tmp_path / 'latest-params_rank0.pth')
  out = tmp_path / 'converted'
  rc = convert_cli.main(
    [
      '--checkpoint',
      str(tmp_path / 'latest-params_rank0.pth'),
      '--structure',
      TINY,
      '--num_classes',
      '7',
      '--use_sa',
      '--use_lw_att',
      '--class_names',
      'a,b,c,d,e,f,g',
      '--output',
      str(out),
    ]
  )
  assert rc == 0, capsys.readouterr().err
  variables, card = model_directory.load_model_dir(out)
  assert (
    card['structure'] == TINY and card['num_classes'] == 7 and card['use_sa'] and card['use_lw_att']
  )
  assert card['class_names'] == list('abcdefg') and card['image_size'] == 224
  assert 'epoch 41' in card['source'] and 'top1_acc 87.5' in card['source']
  want = torch_port.load_torch_checkpoint(model.state_dict(), TINY, 7, use_sa=True, use_lw_att=True)
  assert _same_tree(variables, want)

  # Back to PyTorch: bare .pth, the original's wrapper, and .safetensors; strict loads, same logits.
  x = torch.randn(2, 3, 36, 36)
  flax_logits = _logits(variables, x, use_lw_att=True)
  for name, extra in (
    ('back.pth', []),
    ('wrapped.pth.tar', ['--wrapped']),
    ('back.safetensors', []),
  ):
    assert (
      export_cli.main(['--checkpoint', str(out), '--output', str(tmp_path / name)] + extra) == 0
    )
    if name.endswith('.safetensors'):
      from safetensors.torch import load_file

      sd = load_file(str(tmp_path / name))
    else:
      obj = torch.load(tmp_path / name, weights_only=True)
      sd = obj['state_dict'] if extra else obj
    fresh = build_reference_model(TINY, 7, use_sa=True, use_lw_att=True)
    fresh.load_state_dict(sd, strict=True)
    with torch.no_grad():
      ref = fresh.eval()(x).numpy()
    assert np.abs(flax_logits - ref).max() <= 1e-5 * np.abs(ref).max(), name
  # Existing output is not overwritten by accident.
  assert export_cli.main(['--checkpoint', str(out), '--output', str(tmp_path / 'back.pth')]) == 2
  assert 'already exists' in capsys.readouterr().err


def _leftovers(parent):
  return sorted(p for p in os.listdir(parent) if p.startswith('.'))


def test_convert_errors_write_nothing(tmp_path, capsys):
  model = _reference()
  torch.save({'state_dict': model.state_dict()}, tmp_path / 'ok.pth')
  data = (tmp_path / 'ok.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 3])
  (tmp_path / 'readme.md').write_text('# not weights\n')
  base = ['--use_sa', '--num_classes', '7']
  cases = {
    'wrong structure': ['--checkpoint', str(tmp_path / 'ok.pth'), '--model', 'zennet_r'] + base,
    'wrong classes': [
      '--checkpoint',
      str(tmp_path / 'ok.pth'),
      '--structure',
      TINY,
      '--use_sa',
      '--num_classes',
      '8',
    ],
    'truncated': ['--checkpoint', str(tmp_path / 'cut.pth'), '--structure', TINY] + base,
    'not a checkpoint': ['--checkpoint', str(tmp_path / 'readme.md'), '--structure', TINY] + base,
    'bad structure': [
      '--checkpoint',
      str(tmp_path / 'ok.pth'),
      '--structure',
      'SuperConvK3BNRELU(3,8',
    ]
    + base,
    'names vs classes': [
      '--checkpoint',
      str(tmp_path / 'ok.pth'),
      '--structure',
      TINY,
      '--class_names',
      'a,b',
    ]
    + base,
  }
  expected = {
    'wrong structure': 'super-blocks',
    'wrong classes': '7 classes, not 8',
    'truncated': 'truncated',
    'not a checkpoint': 'not a checkpoint: ',
    'bad structure': 'expected',
    'names vs classes': '2 class names',
  }
  for what, argv in cases.items():
    out = tmp_path / what.replace(' ', '_')
    assert convert_cli.main(argv + ['--output', str(out)]) == 2, what
    err = capsys.readouterr().err
    assert err.startswith('error: ') and expected[what] in err, (what, err)
    assert err.count('\n') == 1, (what, err)  # One line, even for a list of mismatched keys.
    assert not out.exists(), what
  assert _leftovers(tmp_path) == []
  # A non-empty output directory is refused and left as it was.
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'keep.txt').write_text('x')
  argv = [
    '--checkpoint',
    str(tmp_path / 'ok.pth'),
    '--structure',
    TINY,
    '--output',
    str(tmp_path / 'taken'),
  ] + base
  assert convert_cli.main(argv) == 2
  assert os.listdir(tmp_path / 'taken') == ['keep.txt']


@pytest.mark.slow
def test_command_lines_run_as_modules(tmp_path):
  """`python -m torch_port.convert` / `python -m torch_port.export` from a fresh interpreter."""
  model = randomize_(build_reference_model('zennet_r', 7), seed=5)
  torch.save(
    {'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}, tmp_path / 'r.pth'
  )
  env = dict(
    os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), JAX_PLATFORMS='cpu'
  )

  def run(*a):
    return subprocess.run(
      [sys.executable, '-m', *a], cwd=REPO, env=env, capture_output=True, text=True
    )

  r = run(
    'torch_port.convert',
    '--checkpoint',
    str(tmp_path / 'r.pth'),
    '--model',
    'zennet_r',
    '--num_classes',
    '7',
    '--output',
    str(tmp_path / 'dir'),
  )
  assert r.returncode == 0, r.stderr
  r = run(
    'torch_port.export',
    '--checkpoint',
    str(tmp_path / 'dir'),
    '--output',
    str(tmp_path / 'out.pth'),
  )
  assert r.returncode == 0, r.stderr
  back = torch.load(tmp_path / 'out.pth', weights_only=True)
  for k, v in model.state_dict().items():
    assert torch.equal(back[k], v) or k.endswith('num_batches_tracked'), k
