"""Tiny on-disk datasets in the official layouts, written with PIL at test time.

Each image is a flat colour that encodes its class (plus a faint pattern so JPEG has something
to code), so a test can tell from pixels which class an image came from. Every fixture includes
the bad data a real download can hold: a corrupt JPEG, a truncated one, a non-image file and a
label line whose image is missing.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from PIL import Image

# Class colours far apart in RGB so JPEG noise and resizing never confuse them.
COLOURS = np.array(
  [
    [230, 20, 20],
    [20, 230, 20],
    [20, 20, 230],
    [230, 230, 20],
    [230, 20, 230],
    [20, 230, 230],
    [128, 128, 128],
    [250, 250, 250],
  ],
  np.uint8,
)


def face(label: int, index: int, size: tuple[int, int] = (100, 100)) -> np.ndarray:
  h, w = size
  img = np.broadcast_to(COLOURS[label], (h, w, 3)).astype(np.int16)
  yy, xx = np.mgrid[0:h, 0:w]
  img = img + (((yy + xx + index) % 7) - 3)[..., None]
  return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def write_bad(path: str, kind: str) -> None:
  """kind: 'corrupt' (JPEG header then garbage), 'truncated' (half a JPEG), 'text'."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if kind == 'corrupt':
    data = b'\xff\xd8\xff\xe0' + b'\x13\x37garbage' * 64
  elif kind == 'truncated':
    data = jpeg_bytes(face(0, 0))
    data = data[: len(data) // 2]
  else:
    data = b'this is a note, not an image\n'
  with open(path, 'wb') as f:
    f.write(data)


def write_image(path: str, label: int, index: int, size=(100, 100), fmt='JPEG') -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(face(label, index, size)).save(path, format=fmt, quality=95)


# RAF-DB: per split, per label (0-based) how many good images.
RAFDB_GOOD = {'train': [3, 2, 2, 3, 2, 2, 2], 'test': [1, 1, 1, 1, 1, 1, 1]}
RAFDB_BAD = ('train_09001.jpg', 'train_09002.jpg', 'train_09003.jpg', 'test_09004.jpg')


def make_rafdb(root: str) -> dict:
  """Writes basic/EmoLabel/list_patition_label.txt and basic/Image/aligned/*_aligned.jpg."""
  lines, expected = [], {}
  img_dir = os.path.join(root, 'basic', 'Image', 'aligned')
  n = 0
  for split, per_label in RAFDB_GOOD.items():
    for label, count in enumerate(per_label):
      for _ in range(count):
        n += 1
        name = f'{split}_{n:05d}.jpg'
        write_image(os.path.join(img_dir, f'{split}_{n:05d}_aligned.jpg'), label, n)
        lines.append(f'{name} {label + 1}')
        expected[name] = (split, label)
  bad_kinds = ('corrupt', 'truncated', 'text')
  for name, kind in zip(RAFDB_BAD[:3], bad_kinds):
    write_bad(os.path.join(img_dir, name.replace('.jpg', '_aligned.jpg')), kind)
    lines.append(f'{name} 4')
  lines.append(f'{RAFDB_BAD[3]} 2')  # Its image does not exist.
  label_dir = os.path.join(root, 'basic', 'EmoLabel')
  os.makedirs(label_dir, exist_ok=True)
  with open(os.path.join(label_dir, 'list_patition_label.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return expected


AFFECTNET_COLUMNS = [
  'subDirectory_filePath',
  'face_x',
  'face_y',
  'face_width',
  'face_height',
  'facial_landmarks',
  'expression',
  'valence',
  'arousal',
]
# Per split: codes of the good images (one image each). 8, 9, 10 are never classes.
AFFECTNET_CODES = {
  'train': [0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10],
  'test': [0, 1, 2, 3, 4, 5, 6, 7, 10],
}


def make_affectnet(root: str) -> None:
  """Writes Manually_Annotated_Images/<dir>/<file>.jpg and training.csv / validation.csv.

  Images are 120x80 with the class colour inside the face box (x=20, y=10, 60x50) and black
  around it, so a face crop is recognisable.
  """
  img_root = os.path.join(root, 'Manually_Annotated_Images')
  for split, csv_name in (('train', 'training.csv'), ('test', 'validation.csv')):
    rows = []
    for i, code in enumerate(AFFECTNET_CODES[split]):
      rel = f'{100 + i % 3}/{split}_{i:03d}.jpg'
      img = np.zeros((80, 120, 3), np.uint8)
      img[10:60, 20:80] = face(code % 8, i, (50, 60))
      path = os.path.join(img_root, rel)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(img).save(path, format='JPEG', quality=95)
      rows.append([rel, 20, 10, 60, 50, '1.0;2.0;3.0', code, 0.1, -0.2])
    rows.append([f'200/{split}_truncated.jpg', 20, 10, 60, 50, '', 1, 0, 0])
    write_bad(os.path.join(img_root, '200', f'{split}_truncated.jpg'), 'truncated')
    rows.append([f'200/{split}_missing.jpg', 20, 10, 60, 50, '', 2, 0, 0])
    with open(os.path.join(root, csv_name), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(AFFECTNET_COLUMNS)
      writer.writerows(rows)


def make_folders(
  root: str, classes=('sad', 'happy', 'angry'), train_counts=(6, 2, 3), test_counts=(2, 1, 2)
) -> None:
  """Writes <root>/<split>/<class>/*.jpg|png, class i coloured COLOURS[i], plus bad files."""
  n = 0
  for split, counts in (('train', train_counts), ('test', test_counts)):
    for label, (cls, count) in enumerate(zip(classes, counts)):
      for k in range(count):
        n += 1
        fmt, ext = ('PNG', 'png') if k % 2 else ('JPEG', 'jpg')
        write_image(os.path.join(root, split, cls, f'img_{n:03d}.{ext}'), label, n, (64, 48), fmt)
  write_bad(os.path.join(root, 'train', classes[0], 'broken.jpg'), 'corrupt')
  write_bad(os.path.join(root, 'train', classes[1], 'notes.txt'), 'text')
  write_bad(os.path.join(root, 'test', classes[0], 'half.jpg'), 'truncated')


def colour_label(image_uint8: np.ndarray) -> int:
  """The class whose colour is nearest the image's mean colour."""
  mean = image_uint8.reshape(-1, 3).mean(0)
  return int(np.argmin(((COLOURS.astype(np.float64) - mean) ** 2).sum(1)))


def make_identity_tree(
  root: str, identities: list[str], per_class: int, others: tuple[str, ...] = (), size=(12, 10)
) -> None:
  """A face-identity tree in the VGGFace2 layout: train/<identity>/<k>_01.jpg (`per_class`
  each, coloured by identity index mod 8), test/<identity>/0100_01.jpg for each identity, and
  test/ folders for `others`, identities that train/ lacks (as all of VGGFace2's test ones)."""
  for i, ident in enumerate(identities):
    for k in range(per_class):
      write_image(os.path.join(root, 'train', ident, f'{k:04d}_01.jpg'), i % 8, k, size)
    write_image(os.path.join(root, 'test', ident, '0100_01.jpg'), i % 8, 100, size)
  for ident in others:
    write_image(os.path.join(root, 'test', ident, '0001_01.jpg'), 0, 1, size)


# FER2013: per Usage, the emotion numbers of the good faces (one face each).
FER2013_LABELS = {
  'Training': [0, 1, 2, 3, 4, 5, 6, 3, 6, 0],
  'PublicTest': [0, 3, 5, 6],
  'PrivateTest': [2, 4, 6],
}
FER2013_PREFIX_SPLITS = {
  'Training': 'train',
  'PublicTest': 'publictest',
  'PrivateTest': 'privatetest',
}


def make_fer2013_folders(root: str, usages=('Training', 'PublicTest', 'PrivateTest')) -> None:
  """Kaggle's folder copy: train/<class>/Training_<id>.jpg, test/<class>/<Usage>_<id>.jpg.

  Random grey 48x48 faces (fixed seed) stored as JPEG, as Kaggle ships them; the ids are
  shuffled, so file-name order is not the order `make_fer2013_csv` writes rows in.
  """
  from zenfer_jax.dataset_names import FER2013_CLASSES

  rng = np.random.default_rng(2013)
  ids = rng.permutation(90_000)[: sum(map(len, FER2013_LABELS.values()))] + 10_000
  k = 0
  for usage in usages:
    folder = 'train' if usage == 'Training' else 'test'
    for label in FER2013_LABELS[usage]:
      path = os.path.join(root, folder, FER2013_CLASSES[label], f'{usage}_{ids[k]}.jpg')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (48, 48), np.uint8), 'L').save(path, quality=90)
      k += 1


def fer2013_faces(root: str) -> list[tuple[str, int, np.ndarray]]:
  """(Usage, label, decoded uint8 [48, 48]) of every face of a folder copy, in path order."""
  from zenfer_jax.dataset_names import FER2013_CLASSES

  faces = []
  for folder in ('train', 'test'):
    for label, cls in enumerate(FER2013_CLASSES):
      cls_dir = os.path.join(root, folder, cls)
      for name in sorted(os.listdir(cls_dir)) if os.path.isdir(cls_dir) else []:
        usage = name.split('_', 1)[0]
        with Image.open(os.path.join(cls_dir, name)) as img:
          faces.append((usage, label, np.asarray(img.convert('L'))))
  return faces


def fer2013_csv_line(emotion, pixels, usage) -> str:
  if isinstance(pixels, np.ndarray):
    pixels = ' '.join(map(str, pixels.reshape(-1)))
  return f'{emotion},{pixels},{usage}'


def make_fer2013_csv(root: str, faces, extra_lines=(), seed: int = 7) -> None:
  """fer2013.csv holding `faces` (see `fer2013_faces`) in a shuffled row order, then
  `extra_lines` as they are."""
  rng = np.random.default_rng(seed)
  lines = ['emotion,pixels,Usage']
  for i in rng.permutation(len(faces)):
    usage, label, pixels = faces[i]
    lines.append(fer2013_csv_line(label, pixels, usage))
  lines.extend(extra_lines)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, 'fer2013.csv'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
