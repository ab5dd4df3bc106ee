"""Bad items never sink a batch, 16-bit images keep their levels, records know their source."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from train_fixtures import TINY

from tests import data_fixtures as fx
from zenfer_jax import data
from zenfer_jax.data import images, pipeline, registry
from zenfer_jax.deploy import predict
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory

tfds.disable_progress_bar()
CLASSES = ['sad', 'happy', 'angry']


def _chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
  """A PNG that claims width x height but holds almost no data (a decompression bomb's header)."""
  ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + _chunk(b'IHDR', ihdr)
    + _chunk(b'IDAT', zlib.compress(b'\0' * 64))
    + _chunk(b'IEND', b'')
  )


def png_bomb(side: int) -> bytes:
  """A valid all-black RGB PNG of side x side pixels that compresses to a few hundred KB."""
  row = b'\0' * (1 + 3 * side)
  comp = zlib.compressobj(9)
  body = b''.join(comp.compress(row) for _ in range(side)) + comp.flush()
  ihdr = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
  return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', body) + _chunk(b'IEND', b'')


def grey16_ramp(h: int = 48, w: int = 64) -> np.ndarray:
  return (np.arange(h * w, dtype=np.int64).reshape(h, w) * 65535 // (h * w - 1)).astype(np.uint16)


def _records(name, data_dir, split, classes=None):
  b = data.builder(name, data_dir, classes)
  return {
    e['file_name'].decode(): e
    for e in tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False))
  }


def _report(info) -> str:
  with open(info.report_path, encoding='utf-8') as f:  # prepare writes UTF-8 in any locale.
    return f.read()


# ---- 16-bit images: one decoder, the same 8-bit levels in prepare, evaluation and predict ----


def test_16_bit_grey_png_keeps_its_levels_in_prepare_and_predict(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_folders(str(manual))
  ramp = grey16_ramp()
  path = manual / 'train' / 'sad' / 'ramp16.png'
  Image.fromarray(ramp).save(path)  # Pillow mode I;16: it used to come out almost white.
  expected = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, -1)
  # TensorFlow's decoder (what `predict` used and evaluation uses) keeps the high byte.
  tf_decoded = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
  np.testing.assert_array_equal(tf_decoded.numpy(), expected)

  info = data.prepare_dataset(
    'folders', str(tmp_path / 'tfds'), manual_dir=str(manual), classes=CLASSES
  )
  stored = _records('folders', str(tmp_path / 'tfds'), 'train')['sad/ramp16.png']['image']
  np.testing.assert_array_equal(stored, expected)
  assert abs(float(stored.mean()) - 127.5) < 1.0, 'a mid-grey ramp, not white'
  assert info.split_sizes['train'] == 11 + 1

  # predict reads the file with the same reader, then decodes as evaluation does.
  np.testing.assert_array_equal(
    pipeline.decode(tf.constant(images.read_image(str(path)))), expected
  )
  got = predict.load_image(str(path), 16, 'none')
  np.testing.assert_allclose(got, pipeline.preprocess_for_eval(expected, 16, 'none'), atol=1e-6)


def test_16_bit_colour_png_is_stored_as_8_bit():
  rgb16 = np.stack([grey16_ramp(), grey16_ramp()[::-1], grey16_ramp() // 2], -1)
  raw16 = tf.io.encode_png(tf.constant(rgb16)).numpy()
  path = os.path.join(os.environ.get('TMPDIR', '/tmp'), f'rgb16_{os.getpid()}.png')
  with open(path, 'wb') as f:
    f.write(raw16)
  try:
    encoded = images.read_image(path)
  finally:
    os.remove(path)
  assert encoded[24] == 8  # The re-encoded PNG's bit depth.
  np.testing.assert_array_equal(
    tf.io.decode_png(encoded).numpy(), tf.io.decode_image(raw16, channels=3).numpy()
  )


# ---- prepare: undecodable, too large and mislabelled items are skipped and reported ----


def test_rafdb_bad_labels_and_bombs_are_skipped_and_reported(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_rafdb(str(manual))
  aligned = manual / 'basic' / 'Image' / 'aligned'
  (aligned / 'train_09101_aligned.jpg').write_bytes(png_header_only(60_000, 60_000))
  (aligned / 'train_09102_aligned.jpg').write_bytes(png_header_only(9_000, 9_000))
  label_file = manual / 'basic' / 'EmoLabel' / 'list_patition_label.txt'
  lines = label_file.read_text(encoding='utf-8').splitlines()
  lines += [
    'train_00001.jpg \u00b2',  # str.isdigit() is True for '²'; int('²') raised and ended prepare.
    'train_00002.jpg 8',
    lines[0],  # The same image listed twice.
    '../../etc/passwd 3',
    'train_09101.jpg 1',
    'train_09102.jpg 1',
  ]
  label_file.write_text('\n'.join(lines) + '\n', encoding='utf-8')  # As prepare reads it.

  t = time.perf_counter()
  info = data.prepare_dataset('rafdb', str(tmp_path / 'tfds'), manual_dir=str(manual))
  assert time.perf_counter() - t < 60
  assert info.split_sizes == {'train': 16, 'test': 7}  # The good images, each once.
  report = _report(info)
  assert "malformed label line 'train_00001.jpg ²'" in report
  assert "malformed label line 'train_00002.jpg 8'" in report
  assert f'{lines[0].split()[0]}: listed more than once' in report
  assert "'../../etc/passwd' is not a plain file name" in report
  assert 'train_09101.jpg: image of 3,600,000,000 pixels is above the limit' in report
  assert 'train_09102.jpg: 9000x9000 image (81,000,000 pixels) is above the limit' in report
  assert info.skipped == 4 + 6


def test_affectnet_bad_rows_are_skipped(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_affectnet(str(manual))
  image_dir = manual / 'Manually_Annotated_Images'
  shutil.copy(image_dir / '100' / 'train_000.jpg', image_dir / '100' / 'extra.jpg')
  with open(manual / 'training.csv', 'a') as f:
    f.write('100/train_000.jpg,20,10,60,50,,inf,0,0\n')  # int(float('inf')) overflows.
    f.write('100/extra.jpg,nan,10,60,50,,1,0,0\n')
    f.write('/etc/hostname,20,10,60,50,,1,0,0\n')
  info = data.prepare_dataset('affectnet/7cls_crop', str(tmp_path / 'tfds'), manual_dir=str(manual))
  report = _report(info)
  assert 'training.csv:22: malformed annotation row' in report
  assert '100/extra.jpg: face box (nan, 10.0, 60.0, 50.0) is not four finite numbers' in report
  assert "training.csv:24: '/etc/hostname' is not a path inside" in report
  assert info.split_sizes['train'] == 13  # The 13 good images with codes 0-6, as before.


def test_folders_odd_names_and_decompression_bombs(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_folders(str(manual))
  sad = os.path.join(os.fsencode(manual), b'train', b'sad')
  fx.write_image(os.fsdecode(os.path.join(sad, b'caf\xe9.jpg')), 0, 99)  # Latin-1 file name.
  with open(os.path.join(sad, b'bomb.png'), 'wb') as f:
    f.write(png_bomb(12_000))  # 144 megapixels in 420 KB.
  with open(os.path.join(sad, b'giant.png'), 'wb') as f:
    f.write(png_header_only(100_000, 100_000))  # Pillow itself refuses it at open.
  info = data.prepare_dataset(
    'folders', str(tmp_path / 'tfds'), manual_dir=str(manual), classes=CLASSES
  )
  names = _records('folders', str(tmp_path / 'tfds'), 'train')
  assert 'sad/caf\\xe9.jpg' in names
  assert fx.colour_label(names['sad/caf\\xe9.jpg']['image']) == 0
  report = _report(info)
  assert 'sad/bomb.png: 12000x12000 image (144,000,000 pixels) is above the limit' in report
  assert 'sad/giant.png: ' in report and 'refused before decoding' in report


def test_read_image_refuses_devices_and_huge_files(tmp_path):
  with pytest.raises(images.BadImage, match='not a regular file'):
    images.read_image('/dev/zero')
  big = tmp_path / 'big.jpg'
  with open(big, 'wb') as f:
    f.truncate(images.MAX_IMAGE_BYTES + 1)  # Sparse: no disk used.
  with pytest.raises(images.BadImage, match='above the limit of 268,435,456'):
    images.read_image(str(big))


# ---- prepare: records are reused only for the manual_dir they were built from ----


def test_another_manual_dir_is_not_silently_given_the_old_records(tmp_path):
  a, b = tmp_path / 'a', tmp_path / 'b'
  fx.make_folders(str(a))
  fx.make_folders(str(b), train_counts=(2, 2, 2))
  tfds_dir = str(tmp_path / 'tfds')
  first = data.prepare_dataset('folders', tfds_dir, manual_dir=str(a), classes=CLASSES)
  meta = json.loads(open(os.path.join(first.data_path, 'metadata.json')).read())
  assert meta['source']['manual_dir'] == str(a) and meta['source']['files'] == 19
  before = sorted(os.listdir(first.data_path))

  with pytest.raises(registry.SourceMismatchError, match=rf'prepared from {a} \(19 files'):
    data.prepare_dataset('folders', tfds_dir, manual_dir=str(b), classes=CLASSES)
  assert sorted(os.listdir(first.data_path)) == before  # Nothing deleted or rewritten.

  copy = tmp_path / 'copy_of_a'
  shutil.copytree(a, copy)  # Same files elsewhere: the records fit.
  assert data.prepare_dataset('folders', tfds_dir, manual_dir=str(copy), classes=CLASSES) == first
  # Without a manual_dir (a training run on prepared records) nothing is compared.
  assert data.prepare_dataset('folders', tfds_dir, classes=CLASSES) == first


def test_a_relabelled_annotation_file_is_a_different_source(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_rafdb(str(manual))
  tfds_dir = str(tmp_path / 'tfds')
  data.prepare_dataset('rafdb', tfds_dir, manual_dir=str(manual))
  label_file = manual / 'basic' / 'EmoLabel' / 'list_patition_label.txt'
  text = label_file.read_text()
  label_file.write_text(text.replace('train_00001.jpg 1', 'train_00001.jpg 2'))  # Same size.
  with pytest.raises(registry.SourceMismatchError, match='changed annotation files'):
    data.prepare_dataset('rafdb', tfds_dir, manual_dir=str(manual))


# ---- predict: an image too large gets its own error, every other image its answer ----


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  model = zennet.build_model(TINY, 3, use_sa=True)
  variables = jax.device_get(zennet.init_variables(model, jax.random.PRNGKey(0), 16))
  card = model_directory.make_card(
    TINY, 3, use_sa=True, class_names=CLASSES, image_size=16, recipe='none', source='test'
  )
  path = tmp_path_factory.mktemp('models') / 'tiny'
  model_directory.save_model_dir(str(path), variables, card)
  return str(path)


def test_predict_isolates_images_too_large_to_process(model_dir, tmp_path):
  paths = []
  for i, name in enumerate(['a.jpg', 'bomb.png', 'b.png', 'header.png', 'c.jpg']):
    p = tmp_path / name
    if name == 'bomb.png':
      p.write_bytes(png_bomb(12_000))
    elif name == 'header.png':
      p.write_bytes(png_header_only(60_000, 60_000))
    else:
      fx.write_image(str(p), i % 3, i, (40, 30), 'PNG' if name.endswith('png') else 'JPEG')
    paths.append(str(p))
  t = time.perf_counter()
  results = predict.predict(model_dir, paths, top_k=2)
  assert time.perf_counter() - t < 60  # Decoding the bomb took 24 s and 4 GB before.
  assert [r['image'] for r in results] == paths
  for r in (results[0], results[2], results[4]):
    assert 'error' not in r and len(r['predictions']) == 2
  assert 'above the limit of 67,108,864 pixels' in results[1]['error']
  assert 'refused before decoding' in results[3]['error']
  assert 'predictions' not in results[1] and 'predictions' not in results[3]


def test_image_limits_are_documented():
  assert images.MAX_IMAGE_PIXELS == 8192 * 8192
  assert '64 megapixels' in images.__doc__ and '256 MiB' in images.__doc__


def test_prepared_files_follow_the_umask(tmp_path):
  manual = tmp_path / 'manual'
  fx.make_folders(str(manual))
  old = os.umask(0o027)
  try:
    info = data.prepare_dataset(
      'folders', str(tmp_path / 'tfds'), manual_dir=str(manual), classes=CLASSES
    )
  finally:
    os.umask(old)
  modes = {}
  for root, dirs, files in os.walk(tmp_path / 'tfds'):
    for name in dirs + files:
      path = os.path.join(root, name)
      modes[os.path.relpath(path, info.data_path)] = os.stat(path).st_mode & 0o777
      assert modes[os.path.relpath(path, info.data_path)] == (
        0o750 if os.path.isdir(path) else 0o640
      ), path
  assert {'prepare_report.txt', 'metadata.json', 'dataset_info.json'} <= set(modes)
