"""Exports (ONNX, LiteRT, StableHLO) reproduce the Flax logits in their own runtimes.

The model directories hold calibrated random weights (torch_port's reference model randomised
as the parity tests do, then converted), so logits are O(1) and the 1e-4 relative bound is a
real test of the graph, not of rounding. Inputs are 32 px to keep each export to seconds; the
ONNX route (torch.export) and LiteRT conversions take tens of seconds each on 2 cores and are
marked slow.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from torch_port.convert import convert_state_dict
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax.deploy import export as export_lib
from zenfer_jax.deploy import runtimes
from zenfer_jax.rundir import model_directory

FACTS = json.loads((pathlib.Path(__file__).parent / 'reference' / 'model_facts.json').read_text())
CONFIGS = ('ZenNet-M-SA', 'ZenNet-R-SA+lw_att', 'mixed-families-SA')
RES = 32
TOL = 1e-4


# A small model for the refusals and the fast tests: compiling it takes a second or two.
TINY = dict(
  structure='SuperConvK3BNRELU(3,16,2,1)SuperResK3K3(16,24,2,16,1)SuperResIDWE2K3(24,32,2,32,1)'
  'SuperConvK1BNRELU(32,64,1,1)',
  num_classes=7,
  use_sa=True,
  use_lw_att=False,
)


def make_model_dir(path, name: str, res: int = RES, seed: int = 0, recipe='rafdb') -> str:
  f = TINY if name == 'tiny' else FACTS[name]
  flags = dict(use_sa=f['use_sa'], use_lw_att=f['use_lw_att'])
  ref = build_reference_model(f['structure'], f['num_classes'], **flags)
  g = torch.Generator().manual_seed(seed)
  randomize_(ref, seed=seed, calibration_batch=torch.randn(8, 3, res, res, generator=g))
  variables, _ = convert_state_dict(ref.state_dict(), f['structure'], f['num_classes'], **flags)
  card = model_directory.make_card(
    f['structure'],
    f['num_classes'],
    class_names=[f'c{i}' for i in range(f['num_classes'])],
    image_size=res,
    recipe=recipe,
    **flags,
  )
  return model_directory.save_model_dir(str(path), variables, card)


def flax_logits(model_dir: str, x: np.ndarray) -> np.ndarray:
  """The logits of the model as training and evaluation run it (default conv paths)."""
  variables, card = model_directory.load_model_dir(model_dir)
  model = model_directory.build_from_card(card)
  return np.asarray(jax.jit(lambda v, a: model.apply(v, a, train=False))(variables, x))


class _ModelDirs(dict):
  """Model directories made on first use, so a test pays only for the models it exports."""

  def __init__(self, root):
    super().__init__()
    self.root = root

  def __missing__(self, name):
    self[name] = make_model_dir(self.root / name.replace('+', '_'), name)
    return self[name]


@pytest.fixture(scope='module')
def model_dirs(tmp_path_factory):
  return _ModelDirs(tmp_path_factory.mktemp('model_dirs'))


def _inputs(n: int, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, RES, RES, 3), np.float32)


def _check_export(model_dirs, tmp_path, name, fmt, batch=None, capsys=None):
  """Export through the command line (in-process), then check the file in its own runtime."""
  out = tmp_path / f'model{export_lib.FORMATS[fmt]}'
  argv = ['--checkpoint', model_dirs[name], '--format', fmt, '--output', str(out)]
  assert export_lib.main(argv + (['--batch', str(batch)] if batch else [])) == 0
  line = capsys.readouterr().out
  assert float(line.split('logits ')[1].split(' relative')[0]) <= TOL, line
  assert out.is_file() and pathlib.Path(str(out) + '.json').is_file()
  # Only the file and its card: no temporary leftovers beside them.
  assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, out.name + '.json']

  loaded = runtimes.load(str(out))
  x = _inputs(3)  # not the batch the export checked with
  err = export_lib.relative_error(loaded.logits(x), flax_logits(model_dirs[name], x))
  assert err <= TOL, f'{name} {fmt}: {err:.3g}'
  card = loaded.card
  assert card['structure'] == model_directory.load_card(model_dirs[name])['structure']
  assert card['class_names'] == [f'c{i}' for i in range(7)]
  assert card['recipe'] == 'rafdb' and card['image_size'] == RES
  assert card['export']['input']['shape'] == [batch, RES, RES, 3]
  assert card['export']['input']['mean'] == pytest.approx([0.485, 0.456, 0.406])
  return out, loaded


def test_stablehlo_matches_flax_with_dynamic_batch(model_dirs, tmp_path, capsys):
  out, loaded = _check_export(model_dirs, tmp_path, 'tiny', 'stablehlo', capsys=capsys)
  assert loaded.batch is None  # checked at batch 2 by the export, at 3 here
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  assert not isinstance(exported.in_avals[0].shape[0], int)
  assert exported.in_avals[0].shape[1:] == (RES, RES, 3)


def _photo(tmp_path) -> str:
  from PIL import Image

  path = tmp_path / 'face.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), np.uint8)).save(path)
  return str(path)


def _same_predictions(model_dir: str, exported: str, image: str) -> None:
  from zenfer_jax.deploy import predict

  want = predict.predict(model_dir, [image], top_k=7)[0]['predictions']
  got = predict.predict(exported, [image], top_k=7)[0]['predictions']
  assert [p['class'] for p in got] == [p['class'] for p in want]
  np.testing.assert_allclose(
    # The exports' contract is 1e-4 relative on logits; 224 px ONNX/LiteRT runs land ~6e-5 apart.
    [p['probability'] for p in got],
    [p['probability'] for p in want],
    rtol=1e-4,
    atol=1e-6,
  )


def test_predict_runs_an_exported_file_as_it_runs_the_model_dir(model_dirs, tmp_path):
  out = tmp_path / 'm.stablehlo'
  export_lib.export(model_dirs['tiny'], 'stablehlo', str(out), verify=False)
  _same_predictions(model_dirs['tiny'], str(out), _photo(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize('name', CONFIGS)
def test_stablehlo_matches_flax(model_dirs, tmp_path, name, capsys):
  _check_export(model_dirs, tmp_path, name, 'stablehlo', batch=2, capsys=capsys)


@pytest.mark.slow
@pytest.mark.parametrize('name', CONFIGS)
def test_tflite_matches_flax_and_carries_its_card(model_dirs, tmp_path, name, capsys):
  out, loaded = _check_export(model_dirs, tmp_path, name, 'tflite', capsys=capsys)
  assert loaded.batch == 1  # LiteRT: fixed batch, 1 unless --batch
  os.remove(str(out) + '.json')  # the card inside the file is enough
  assert runtimes.load(str(out)).card['structure'] == loaded.card['structure']
  _same_predictions(model_dirs[name], str(out), _photo(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize('name', CONFIGS)
def test_onnx_matches_flax_and_carries_its_card(model_dirs, tmp_path, name, capsys):
  import onnx

  out, loaded = _check_export(model_dirs, tmp_path, name, 'onnx', capsys=capsys)
  assert loaded.batch is None and loaded.runtime == 'onnxruntime'
  proto = onnx.load(str(out))
  meta = {p.key: p.value for p in proto.metadata_props}
  assert json.loads(meta['model_card'])['structure'] == loaded.card['structure']
  assert [i.name for i in proto.graph.input] == ['images']
  os.remove(str(out) + '.json')
  assert runtimes.load(str(out)).card['num_classes'] == 7
  _same_predictions(model_dirs[name], str(out), _photo(tmp_path))


@pytest.mark.slow
def test_tflite_fixed_batch_and_int8(model_dirs, tmp_path):
  d = model_dirs['mixed-families-SA']
  out = tmp_path / 'b3.tflite'
  report = export_lib.export(d, 'tflite', str(out), batch=3)
  assert report['relative_error'] <= TOL
  loaded = runtimes.load(str(out))
  assert loaded.batch == 3
  x = _inputs(7)  # two full chunks and a padded one
  assert export_lib.relative_error(loaded.logits(x), flax_logits(d, x)) <= TOL

  reps = list(_inputs(16, seed=5))
  q = tmp_path / 'q.tflite'
  report = export_lib.export(d, 'tflite', str(q), quantize='int8', representative=reps)
  from ai_edge_litert.interpreter import Interpreter

  dtypes = {t['dtype'] for t in Interpreter(model_path=str(q)).get_tensor_details()}
  assert np.int8 in dtypes  # weights and activations really are int8
  assert runtimes.load(str(q)).card['export']['quantize'] == 'int8'
  assert q.stat().st_size < 0.5 * out.stat().st_size
  assert runtimes.load(str(q)).logits(x).shape == (7, 7)


# ---------------------------------------------------------------------------------------------
# Refusals: at once, with what to change, nothing written


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(fmt='onnx', output='m.tflite'), 'must end with .onnx'),
    (dict(fmt='keras', output='m.keras'), 'expected one of onnx, tflite, stablehlo'),
    (dict(fmt='onnx', output='m.onnx', quantize='int8'), 'tflite only'),
    (dict(fmt='tflite', output='m.tflite', quantize='int8'), 'representative set'),
    (dict(fmt='tflite', output='m.tflite', quantize='int4'), 'only int8'),
    (dict(fmt='stablehlo', output='m.stablehlo', batch=0), 'positive integer'),
    (dict(fmt='stablehlo', output='m.stablehlo', recipe='imagenet'), 'expected one of'),
  ],
)
def test_bad_options_fail_before_any_work(model_dirs, tmp_path, kwargs, message):
  kwargs = dict(kwargs, output=str(tmp_path / kwargs['output']))
  with pytest.raises(export_lib.ExportError, match=message):
    export_lib.export(model_dirs['tiny'], **kwargs)
  assert list(tmp_path.iterdir()) == []


def test_bad_model_dir_says_what_to_give(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(export_lib.ExportError, match='model_card.json not found'):
    export_lib.export(str(tmp_path / 'empty'), 'stablehlo', str(tmp_path / 'm.stablehlo'))
  with pytest.raises(export_lib.ExportError, match='is not a directory'):
    export_lib.export(str(tmp_path / 'nope'), 'stablehlo', str(tmp_path / 'm.stablehlo'))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty']


def test_existing_output_is_kept_unless_overwrite(model_dirs, tmp_path):
  out = tmp_path / 'm.stablehlo'
  out.write_bytes(b'precious')
  with pytest.raises(export_lib.ExportError, match='--overwrite'):
    export_lib.export(model_dirs['tiny'], 'stablehlo', str(out))
  assert out.read_bytes() == b'precious'


def test_overwrite_replaces_only_an_earlier_export(model_dirs, tmp_path):
  out = tmp_path / 'm.stablehlo'
  out.write_bytes(b'someone else')
  with pytest.raises(export_lib.ExportError, match='left alone'):
    export_lib.export(model_dirs['tiny'], 'stablehlo', str(out), overwrite=True)
  assert out.read_bytes() == b'someone else'
  out.unlink()
  export_lib.export(model_dirs['tiny'], 'stablehlo', str(out), batch=1, verify=False)
  first = out.read_bytes()
  export_lib.export(model_dirs['tiny'], 'stablehlo', str(out), verify=False, overwrite=True)
  assert out.read_bytes() != first  # now with a dynamic batch
  assert (
    json.loads(pathlib.Path(str(out) + '.json').read_text())['export']['input']['shape'][0] is None
  )


def test_failure_midway_leaves_nothing(model_dirs, tmp_path, monkeypatch):
  def broken(model, variables, tmp, *args):
    with open(tmp, 'wb') as f:
      f.write(b'half')
    raise RuntimeError('converter crashed')

  monkeypatch.setitem(export_lib.WRITERS, 'stablehlo', broken)
  with pytest.raises(RuntimeError, match='converter crashed'):
    export_lib.export(model_dirs['tiny'], 'stablehlo', str(tmp_path / 'm.stablehlo'))
  assert list(tmp_path.iterdir()) == []


def test_a_graph_off_the_flax_model_is_refused(model_dirs, tmp_path, monkeypatch):
  real = export_lib.WRITERS['stablehlo']

  def off_by_a_little(model, variables, tmp, *args):
    bumped = jax.tree_util.tree_map(lambda a: a, variables)
    bumped['params']['fc']['bias'] = np.asarray(bumped['params']['fc']['bias']) + 0.01
    real(model, bumped, tmp, *args)

  monkeypatch.setitem(export_lib.WRITERS, 'stablehlo', off_by_a_little)
  with pytest.raises(export_lib.ExportError, match='nothing was written'):
    export_lib.export(model_dirs['tiny'], 'stablehlo', str(tmp_path / 'm.stablehlo'))
  assert list(tmp_path.iterdir()) == []


def test_runtime_refuses_a_file_without_a_card_and_a_stale_card(model_dirs, tmp_path):
  with pytest.raises(runtimes.ExportedFileError, match='not an exported model'):
    runtimes.load(str(tmp_path / 'model.pt'))
  out = tmp_path / 'm.stablehlo'
  export_lib.export(model_dirs['tiny'], 'stablehlo', str(out), batch=1, verify=False)
  os.remove(str(out) + '.json')
  with pytest.raises(runtimes.ExportedFileError, match='no model card'):
    runtimes.load(str(out))


@pytest.mark.slow
def test_cli_in_a_fresh_process(model_dirs, tmp_path):
  """`python -m zenfer_jax.deploy.export` as a user runs it (the tests above call its main())."""
  out = tmp_path / 'tiny.stablehlo'
  cmd = [
    sys.executable,
    '-m',
    'zenfer_jax.deploy.export',
    '--format',
    'stablehlo',
    '--output',
    str(out),
  ]
  proc = subprocess.run(
    cmd + ['--checkpoint', model_dirs['tiny']], capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert float(proc.stdout.split('logits ')[1].split(' relative')[0]) <= TOL
  proc = subprocess.run(
    cmd + ['--checkpoint', str(tmp_path / 'missing'), '--overwrite'],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 2 and 'is not a directory' in proc.stderr
