"""Files and directories the tools write get the user's umask, like any program's.

Writes go through a temporary sibling that is renamed into place, and a renamed file or
directory keeps its mode: tempfile's mkdtemp (0700) and mkstemp (0600) temporaries made a
model directory only its owner could read, whatever the umask said.
"""

from __future__ import annotations

import os
import stat

import jax
import pytest
from train_fixtures import TINY

from zenfer_jax import atomic_write
from zenfer_jax.deploy import export
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory


def _modes(root) -> dict[str, int]:
  """Permission bits of `root` and everything under it."""
  out = {str(root): stat.S_IMODE(os.stat(root).st_mode)}
  for directory, dirs, files in os.walk(root):
    for name in dirs + files:
      path = os.path.join(directory, name)
      out[path] = stat.S_IMODE(os.stat(path).st_mode)
  return out


@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_model_directory_export_and_atomic_writes_follow_the_umask(tmp_path, umask):
  model = zennet.build_model(TINY, 3)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(0), 32))
  card = model_directory.make_card(TINY, 3, image_size=32, recipe='rafdb')
  previous = os.umask(umask)
  try:
    model_dir = model_directory.save_model_dir(str(tmp_path / 'model_best'), variables, card)
    model_dir = model_directory.save_model_dir(model_dir, variables, card, overwrite=True)
    exported = export.export(model_dir, 'stablehlo', str(tmp_path / 'model.stablehlo'))
    atomic_write.write_json(tmp_path / 'metrics.json', {'top1': 0.5})
  finally:
    os.umask(previous)

  want_dir, want_file = 0o777 & ~umask, 0o666 & ~umask
  written = _modes(model_dir)
  written.update(
    {p: stat.S_IMODE(os.stat(p).st_mode) for p in (exported['path'], exported['card_path'])}
  )
  written[str(tmp_path / 'metrics.json')] = stat.S_IMODE(os.stat(tmp_path / 'metrics.json').st_mode)
  assert len(written) > 5
  for path, mode in written.items():
    want = want_dir if os.path.isdir(path) else want_file
    assert mode == want, f'{path}: {oct(mode)}, expected {oct(want)} under umask {oct(umask)}'
  # Nothing temporary is left beside the outputs.
  assert sorted(p for p in os.listdir(tmp_path) if p.startswith('.')) == []
