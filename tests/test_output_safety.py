"""--overwrite replaces only what the tool itself writes; every other output is left alone.

Before, `torch_port.convert --output . --overwrite` renamed the current directory away and
deleted it, and `torch_port.export --overwrite` replaced any file at all.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from torch_port import convert as convert_cli
from torch_port import export as export_cli
from torch_port.reference_model import build_reference_model, randomize_
from zenfer_jax.deploy import evaluate
from zenfer_jax.rundir import model_directory

torch.set_num_threads(1)

TINY = 'SuperConvK3BNRELU(3,8,2,1)SuperResK1K3K1(8,16,2,8,1)SuperConvK1BNRELU(16,32,1,1)'


@pytest.fixture(scope='module')
def pth(tmp_path_factory):
  path = tmp_path_factory.mktemp('ckpt') / 'model.pth'
  torch.save(randomize_(build_reference_model(TINY, 3), seed=1).state_dict(), path)
  return path


def _convert(pth, output, *extra) -> list[str]:
  return [
    '--checkpoint',
    str(pth),
    '--structure',
    TINY,
    '--num_classes',
    '3',
    '--output',
    str(output),
    *extra,
  ]


def _tree(root) -> dict[str, bytes]:
  """Every file under `root` with its bytes: what must survive a refused overwrite."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_convert_overwrite_of_the_current_directory_is_refused(tmp_path, pth, monkeypatch, capsys):
  work = tmp_path / 'project'
  (work / 'src').mkdir(parents=True)
  (work / 'notes.txt').write_text('mine')
  (work / 'src' / 'a.py').write_text('print(1)\n')
  before = _tree(work)
  monkeypatch.chdir(work)
  assert convert_cli.main(_convert(pth, '.', '--overwrite')) != 0
  err = capsys.readouterr().err
  assert 'is not a model directory this tool wrote' in err and 'notes.txt' in err, err
  assert _tree(work) == before
  assert sorted(os.listdir(tmp_path)) == ['project']  # No renamed-away copy, no temporary.


def test_convert_overwrite_of_a_directory_it_did_not_write_is_refused(tmp_path, pth, capsys):
  other = tmp_path / 'photos'
  other.mkdir()
  (other / model_directory.CARD_NAME).write_text('{}')  # A card alone is not enough.
  (other / 'holiday.jpg').write_bytes(b'\xff\xd8\xff')
  before = _tree(other)
  assert convert_cli.main(_convert(pth, other, '--overwrite')) != 0
  assert 'holiday.jpg' in capsys.readouterr().err
  assert _tree(other) == before
  # A directory holding the layout's names but not the layout (variables is a file) is refused.
  odd = tmp_path / 'odd'
  odd.mkdir()
  (odd / model_directory.CARD_NAME).write_text('{}')
  (odd / model_directory.VARIABLES_NAME).write_text('not a checkpoint')
  assert convert_cli.main(_convert(pth, odd, '--overwrite')) != 0
  assert 'lacks' in capsys.readouterr().err
  assert (odd / model_directory.VARIABLES_NAME).read_text() == 'not a checkpoint'


def test_convert_overwrite_replaces_its_own_model_directory(tmp_path, pth, capsys):
  out = tmp_path / 'converted'
  assert convert_cli.main(_convert(pth, out, '--class_names', 'a,b,c')) == 0
  assert model_directory.load_card(out)['class_names'] == ['a', 'b', 'c']
  assert convert_cli.main(_convert(pth, out, '--class_names', 'x,y,z')) != 0  # No --overwrite.
  assert convert_cli.main(_convert(pth, out, '--class_names', 'x,y,z', '--overwrite')) == 0
  variables, card = model_directory.load_model_dir(out)
  assert card['class_names'] == ['x', 'y', 'z']
  assert sorted(os.listdir(out)) == [model_directory.CARD_NAME, model_directory.VARIABLES_NAME]
  assert sorted(os.listdir(tmp_path)) == ['converted']
  capsys.readouterr()


def test_save_model_dir_refuses_a_training_workdir(tmp_path):
  workdir = tmp_path / 'run'
  variables = {'params': {'w': np.ones((2, 2), np.float32)}, 'batch_stats': {}}
  card = model_directory.make_card(TINY, 3)
  model_directory.save_model_dir(workdir, variables, card)
  (workdir / 'metrics.jsonl').write_text('{"step": 1}\n')
  (workdir / 'checkpoints').mkdir()
  before = _tree(workdir)
  with pytest.raises(model_directory.ModelDirError, match='checkpoints, metrics.jsonl'):
    model_directory.save_model_dir(workdir, variables, card, overwrite=True)
  assert _tree(workdir) == before


def test_export_overwrite_replaces_only_a_checkpoint_file(tmp_path, pth, capsys):
  model_dir = tmp_path / 'converted'
  assert convert_cli.main(_convert(pth, model_dir)) == 0
  notes = tmp_path / 'notes.pth'  # The right name, the wrong content.
  notes.write_text('my notes\n')
  argv = ['--checkpoint', str(model_dir), '--output']
  assert export_cli.main(argv + [str(notes), '--overwrite']) != 0
  assert 'not a checkpoint: ' in capsys.readouterr().err
  assert notes.read_text() == 'my notes\n'
  assert export_cli.main(argv + [str(tmp_path), '--overwrite']) != 0  # A directory.
  assert 'is a directory' in capsys.readouterr().err
  assert (tmp_path / 'converted').is_dir()

  out = tmp_path / 'back.pth'
  assert export_cli.main(argv + [str(out)]) == 0
  first = out.read_bytes()
  out.write_bytes(b'')  # An earlier export's file replaced by an empty one is not recognised...
  assert export_cli.main(argv + [str(out), '--overwrite']) != 0
  out.write_bytes(first)  # ... an earlier export is replaced.
  assert export_cli.main(argv + [str(out), '--overwrite']) == 0
  assert set(torch.load(out, weights_only=True)) == set(torch.load(pth, weights_only=True))
  capsys.readouterr()


def test_evaluate_output_dir_keeps_files_it_did_not_write(tmp_path):
  out = tmp_path / 'report'
  out.mkdir()
  (out / 'metrics.json').write_text('{"loss": 1}')
  with pytest.raises(ValueError, match='did not write'):
    evaluate._check_output_dir(str(out))
  (out / 'metrics.json').write_text(json.dumps({'top1': 0.5, 'confusion_matrix': [[1]]}))
  (out / 'confusion_matrix.png').write_bytes(b'png')
  evaluate._check_output_dir(str(out))  # An earlier evaluation's files: replaced.
  evaluate._check_output_dir(str(tmp_path / 'new'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ValueError, match='not a directory'):
    evaluate._check_output_dir(str(tmp_path / 'file'))
