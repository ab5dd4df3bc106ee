"""FER2013 from both of its forms (fer2013.csv and Kaggle's folder copy) on tiny fixtures."""

import collections
import importlib
import pathlib
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import data_fixtures as fx
from zenfer_jax import data, dataset_names
from zenfer_jax.data import augment_spec
from zenfer_jax.data.builders import fer2013
from zenfer_jax.data.spec import DataSpec

tfds.disable_progress_bar()

SIZES = {
  'train': len(fx.FER2013_LABELS['Training']),
  'publictest': len(fx.FER2013_LABELS['PublicTest']),
  'privatetest': len(fx.FER2013_LABELS['PrivateTest']),
}
SIZES['test'] = SIZES['publictest'] + SIZES['privatetest']


def _records(data_dir, split):
  b = data.builder('fer2013', data_dir)
  return list(tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False)))


def _content(data_dir, split):
  """The split as a multiset of (label, grey pixels): record order differs between the forms."""
  out = collections.Counter()
  for r in _records(data_dir, split):
    image = r['image']
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    assert (image == image[..., :1]).all()  # Grey, stored as RGB.
    out[int(r['label']), image[..., 0].tobytes()] += 1
  return out


@pytest.fixture(scope='module')
def both(tmp_path_factory):
  """The folder copy, and fer2013.csv made from its decoded JPEGs, each prepared."""
  folders = str(tmp_path_factory.mktemp('fer_folders'))
  fx.make_fer2013_folders(folders)
  faces = fx.fer2013_faces(folders)
  csv_dir = str(tmp_path_factory.mktemp('fer_csv'))
  fx.make_fer2013_csv(csv_dir, faces)
  out = {}
  for form, manual in (('folders', folders), ('csv', csv_dir)):
    data_dir = str(tmp_path_factory.mktemp(f'fer_tfds_{form}'))
    out[form] = data.prepare_dataset('fer2013', data_dir, manual_dir=manual), data_dir
  return out, faces


@pytest.mark.parametrize('form', ['folders', 'csv'])
def test_both_forms_read_every_split_in_fer2013_label_order(both, form):
  prepared, faces = both
  info, data_dir = prepared[form]
  assert info.class_names == ['angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral']
  assert info.split_sizes == SIZES
  assert info.skipped == 0
  for split, usage in (('train', 'Training'), ('publictest', 'PublicTest')):
    want = collections.Counter(
      (label, pixels.tobytes()) for u, label, pixels in faces if u == usage
    )
    assert _content(data_dir, split) == want
  labels = [int(r['label']) for r in _records(data_dir, 'train')]
  assert labels == sorted(fx.FER2013_LABELS['Training'])  # Grouped by class.
  names = [r['file_name'].decode() for r in _records(data_dir, 'publictest')]
  if form == 'csv':
    assert all(n.startswith('fer2013.csv:') for n in names)
  else:
    assert all(n.split('/')[1].startswith('PublicTest_') for n in names)
    classes = [dataset_names.FER2013_CLASSES[int(r['label'])] for r in _records(data_dir, 'test')]
    assert [n.split('/')[0] for n in _names(data_dir, 'test')] == classes


def _names(data_dir, split):
  return [r['file_name'].decode() for r in _records(data_dir, split)]


def test_csv_and_folders_give_equal_records(both):
  """Equal decoded pixels, labels and sizes per split; compared as multisets, since the folder
  copy orders each class by file name and the CSV by line."""
  prepared, _ = both
  (folder_info, folder_dir), (csv_info, csv_dir) = prepared['folders'], prepared['csv']
  assert folder_info.split_sizes == csv_info.split_sizes
  assert folder_info.class_ranges == csv_info.class_ranges
  for split in SIZES:
    assert _content(folder_dir, split) == _content(csv_dir, split), split
  test = _content(csv_dir, 'test')
  assert test == _content(csv_dir, 'publictest') + _content(csv_dir, 'privatetest')


def test_csv_row_becomes_the_png_of_its_pixels(tmp_path):
  pixels = np.arange(48 * 48, dtype=np.int64).reshape(48, 48) % 256
  fx.make_fer2013_csv(str(tmp_path / 'm'), [('PrivateTest', 4, pixels)])
  info = data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'))
  assert info.split_sizes == {'privatetest': 1, 'test': 1}
  (record,) = _records(str(tmp_path / 'd'), 'privatetest')
  np.testing.assert_array_equal(record['image'][..., 0], pixels)
  assert record['label'] == 4 and record['file_name'] == b'fer2013.csv:2'


def test_bad_csv_rows_are_skipped_and_reported_by_line(tmp_path):
  good = [('Training', i % 7, np.full((48, 48), 10 * i)) for i in range(3)]
  good.append(('PublicTest', 5, np.zeros((48, 48), np.int64)))
  zeros = ' '.join(['0'] * 2304)
  bad = {
    'expected 2304 space-separated integers (48x48), got 2303': f'3,{zeros[2:]},Training',
    "pixels: '12a' is not an integer": f'3,12a {zeros[2:]},Training',
    "pixels: '1.5' is not an integer": f'3,1.5 {zeros[2:]},PublicTest',
    "pixels: '-1' is not an integer": f'3,-1 {zeros[2:]},Training',
    'pixels: value 256 is outside 0..255': f'3,256 {zeros[2:]},PrivateTest',
    'got 0': '3,,Training',
    "emotion '7' is not one of 0..6": f'7,{zeros},Training',
    "emotion 'x' is not one of 0..6": f'x,{zeros},Training',
    "Usage 'Validation' is not one of Training, PublicTest, PrivateTest": f'1,{zeros},Validation',
    'expected 3 fields (emotion,pixels,Usage), got 4': f'1,{zeros},Training,extra',
    'expected 3 fields (emotion,pixels,Usage), got 2': f'1,{zeros}',
  }
  fx.make_fer2013_csv(str(tmp_path / 'm'), good, extra_lines=['', *bad.values()])
  info = data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'))
  assert info.split_sizes == {'train': 3, 'publictest': 1, 'test': 1}
  assert info.skipped == len(bad)
  report = pathlib.Path(info.report_path).read_text()
  reported = {
    line.split()[1].rstrip(':'): line for line in report.splitlines() if 'fer2013.csv:' in line
  }
  first_bad = 1 + len(good) + 2  # Header, good rows, the blank line (ignored, not reported).
  assert list(reported) == [f'fer2013.csv:{n}' for n in range(first_bad, first_bad + len(bad))]
  for line_no, reason in enumerate(bad, first_bad):
    assert reason in reported[f'fer2013.csv:{line_no}'], (line_no, reason)
  assert 'privatetest: no examples in this download; the split is left out' in report
  assert 'the reference split has 28709' in report  # Sizes compared, not fatal.


def test_parse_pixels_takes_only_2304_ascii_integers_in_range():
  zeros = ['0'] * 2304
  np.testing.assert_array_equal(fer2013.parse_pixels('\t'.join(['255'] * 2304)), 255)
  assert fer2013.parse_pixels('  '.join(['007'] * 2304)).max() == 7
  bad = {
    '\u0663 ' + ' '.join(zeros[1:]): "'\u0663' is not an integer",  # An Arabic-Indic 3.
    '9' * 30 + ' ' + ' '.join(zeros[1:]): f'value {"9" * 20} is outside 0..255',
    '1e3 ' + ' '.join(zeros[1:]): "'1e3' is not an integer",
    ' '.join(zeros + ['0']): 'got 2305',
    '   ': 'got 0',
  }
  for text, message in bad.items():
    with pytest.raises(ValueError, match=re.escape(message)):
      fer2013.parse_pixels(text)


def test_each_bad_line_is_reported_with_its_own_line_number(tmp_path):
  lines = ['emotion,pixels,Usage', '0,"1 2 3,Training', fx.fer2013_csv_line(2, 'x', 'Training')]
  lines.append(fx.fer2013_csv_line(3, np.ones((48, 48), np.int64), 'Training'))
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'fer2013.csv').write_text('\n'.join(lines) + '\n')
  info = data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'))
  assert info.split_sizes == {'train': 1}  # The open quote did not swallow the next lines.
  items = [e['item'] for e in _metadata(info)['skipped']]
  assert items == ['fer2013.csv:2', 'fer2013.csv:3']


def _metadata(info):
  import json

  return json.loads(pathlib.Path(info.data_path, 'metadata.json').read_text())


def test_csv_columns_are_found_by_header_name(tmp_path):
  (tmp_path / 'm').mkdir()
  pixels = ' '.join(['7'] * 2304)
  (tmp_path / 'm' / 'fer2013.csv').write_text(
    f'\ufeffemotion, Usage, pixels\r\n6, PublicTest, {pixels}\r\n'
  )
  info = data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'))
  assert info.split_sizes == {'publictest': 1, 'test': 1}
  assert _records(str(tmp_path / 'd'), 'test')[0]['label'] == 6


def test_csv_header_without_a_column_is_a_named_error(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'fer2013.csv').write_text('emotion,pixels\n0,1 2\n')
  with pytest.raises(fer2013.HeaderError, match=r"(?s)fer2013.csv:1.*\['Usage'\]"):
    data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'm'))
  assert not (tmp_path / 'd' / 'fer2013' / '1.0.0').exists()


def test_folder_copy_test_prefixes_and_bad_items(tmp_path):
  manual = tmp_path / 'm'
  fx.make_fer2013_folders(str(manual), usages=('Training', 'PublicTest'))
  fx.write_bad(str(manual / 'test' / 'fear' / 'PublicTest_1.jpg'), 'corrupt')
  fx.write_bad(str(manual / 'train' / 'sad' / 'notes.txt'), 'text')
  (manual / 'train' / 'contempt').mkdir()
  fx.write_image(str(manual / 'test' / 'happy' / 'im42.png'), 3, 0, (48, 48), 'PNG')
  info = data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(manual))
  # No PrivateTest_ file: privatetest is left out; im42.png is in test only.
  assert info.split_sizes == {'train': 10, 'publictest': 4, 'test': 5}
  skipped = {(e['split'], e['item']) for e in _metadata(info)['skipped']}
  # The corrupt test/ file is read for publictest and for test, and listed once.
  assert skipped == {
    ('publictest', 'fear/PublicTest_1.jpg'),
    ('train', 'sad/notes.txt'),
    ('train', 'train/contempt'),
  }
  assert info.skipped == 3
  report = pathlib.Path(info.report_path).read_text()
  assert 'privatetest: no examples in this download; the split is left out' in report
  assert 'test: 1 file(s) of test/ named neither PublicTest_* nor PrivateTest_*' in report
  assert 'happy/im42.png' in _names(str(tmp_path / 'd'), 'test')
  assert 'happy/im42.png' not in _names(str(tmp_path / 'd'), 'publictest')
  with pytest.raises(
    ValueError, match=r"no split 'privatetest'.*\['publictest', 'test', 'train'\]"
  ):
    data.pipeline.eval_tf_dataset(
      DataSpec(
        'fer2013',
        str(tmp_path / 'd'),
        eval_split='privatetest',
        image_size=16,
        per_device_batch=2,
        num_local_devices=1,
        recipe='none',
      )
    )


def test_layout_errors_say_what_was_expected(tmp_path):
  manual = tmp_path / 'm'
  (manual / 'train').mkdir(parents=True)
  (manual / 'readme.txt').write_text('hi')
  with pytest.raises(fer2013.LayoutError) as e:
    data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(manual))
  message = str(e.value)
  assert 'fer2013.csv' in message and 'train/<class>/*.jpg and test/<class>/*.jpg' in message
  assert 'found readme.txt, train/' in message
  (manual / 'test').mkdir()
  (manual / 'fer2013.csv').write_text('emotion,pixels,Usage\n')
  with pytest.raises(fer2013.LayoutError, match='holds both fer2013.csv and train/ . test/'):
    data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(manual))
  with pytest.raises(FileNotFoundError, match='nowhere'):
    data.prepare_dataset('fer2013', str(tmp_path / 'd'), manual_dir=str(tmp_path / 'nowhere'))
  assert not (tmp_path / 'd' / 'fer2013' / '1.0.0').exists()


def test_label_order_and_the_rafdb_mapping():
  assert dataset_names.class_names('fer2013') == dataset_names.FER2013_CLASSES
  assert dataset_names.FER2013_CLASSES == (
    'angry',
    'disgust',
    'fear',
    'happy',
    'sad',
    'surprise',
    'neutral',
  )
  assert dataset_names.default_recipe('fer2013') == 'fer2013'
  same = {'angry': 'anger', 'happy': 'happiness', 'sad': 'sadness'}
  mapping = dataset_names.FER2013_TO_RAFDB
  assert sorted(mapping) == list(range(7))
  for fer_label, name in enumerate(dataset_names.FER2013_CLASSES):
    assert dataset_names.RAFDB_CLASSES[mapping[fer_label]] == same.get(name, name)
  fer_labels = np.array([0, 3, 6, 5])
  np.testing.assert_array_equal(np.asarray(mapping)[fer_labels], [5, 3, 6, 0])


def test_pipelines_read_the_records(both):
  _, data_dir = both[0]['csv']
  batch = next(
    iter(
      data.pipeline.eval_dataset(
        DataSpec(
          'fer2013',
          data_dir,
          eval_split='publictest',
          image_size=16,
          per_device_batch=3,
          num_local_devices=1,
          recipe='none',
        )
      )
    )
  )
  assert batch['image'].shape == (1, 3, 16, 16, 3) and batch['mask'].all()
  train = data.pipeline.train_dataset(
    DataSpec(
      'fer2013',
      data_dir,
      image_size=16,
      per_device_batch=4,
      num_local_devices=1,
      seed=0,
      recipe='none',
    )
  )
  batch = next(train)
  assert batch['image'].shape == (1, 4, 16, 16, 3)
  assert set(batch['label'].reshape(-1)) <= set(fx.FER2013_LABELS['Training'])


def test_fer2013_train_recipe_keeps_faces_grey_and_is_seeded(both):
  """The FER2013 recipe: geometry and erasing only, so grey faces stay grey (three equal
  channels, no lighting or colour op), in the normalised range, and a resumed pipeline continues
  with the very batches of an uninterrupted one."""
  _, data_dir = both[0]['csv']
  kw = dict(image_size=24, per_device_batch=4, num_local_devices=1, recipe='fer2013')
  it = data.pipeline.train_dataset(DataSpec('fer2013', data_dir, seed=3, **kw))
  a = [next(it) for _ in range(3)]
  resumed = next(
    data.pipeline.train_dataset(DataSpec('fer2013', data_dir, seed=3, **kw), start_step=2)
  )
  mean = np.asarray(augment_spec.IMAGENET_MEAN)
  std = np.asarray(augment_spec.IMAGENET_STD)
  for b in a:
    x = b['image'][0]
    assert x.shape == (4, 24, 24, 3) and x.dtype == np.float32
    unit = x * std + mean  # Back to [0, 1]: the three channels are the same grey ...
    kept = ~(x == 0).all(-1)  # ... outside the erased boxes (0 after normalisation).
    assert kept.mean() > 0.6
    np.testing.assert_allclose(unit[..., 0][kept], unit[..., 1][kept], atol=1e-5)
    np.testing.assert_allclose(unit[..., 0][kept], unit[..., 2][kept], atol=1e-5)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5
  np.testing.assert_array_equal(resumed['image'], a[2]['image'])
  # Augmented: the same face twice in an epoch's batches is not the same array.
  assert not np.array_equal(a[0]['image'], a[1]['image'])


def test_prepare_command(tmp_path, capsys, restore_logging):
  prepare = importlib.import_module('zenfer_jax.data.prepare')
  fx.make_fer2013_folders(str(tmp_path / 'm'), usages=('Training', 'PublicTest'))
  argv = ['--dataset=fer2013', f'--manual_dir={tmp_path / "m"}', f'--data_dir={tmp_path / "d"}']
  assert prepare.main(argv) == 0
  out = capsys.readouterr().out
  assert "fer2013: 7 classes ['angry', 'disgust'" in out
  assert "'train': 10" in out and "'publictest': 4" in out and "'test': 4" in out
  assert 'privatetest' not in out and '; 0 skipped; report ' in out
  assert prepare.main(['--dataset=fer2013', f'--data_dir={tmp_path / "e"}']) == 2
  assert 'fer2013.csv' in capsys.readouterr().err
