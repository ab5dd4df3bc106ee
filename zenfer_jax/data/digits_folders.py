"""scikit-learn's digits written as a class-folder tree, for trying the transfer recipe on real data.

  python -m zenfer_jax.data.digits_folders --out=runs/digits_0to4 --digits=0,1,2,3,4
  python -m zenfer_jax.data.digits_folders --out=runs/digits_5to9 --digits=5,6,7,8,9

writes OUT/train/<digit>/digit_<i>.png and OUT/test/<digit>/... (8x8 RGB, the `digits` dataset's
split: image i is test when i % 5 == 0). Two disjoint sets of digits stand in for the paper's
two stages: pretrain on one (`folders`, classes=auto), fine-tune on the other with only_backbone,
and compare with the same fine-tuning from scratch (docs/training.md, "Transfer learning").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from zenfer_jax import cli


def write_tree(out: str, digits: Sequence[int]) -> dict[str, int]:
  """Writes the tree; returns the number of images per split."""
  from PIL import Image

  # Here: TensorFlow Datasets (the digits builder's module), kept out of --help.
  from zenfer_jax.data.builders.digits import digit_images, split_of

  images, labels = digit_images()
  wanted = set(digits)
  counts = {'train': 0, 'test': 0}
  for i, (image, label) in enumerate(zip(images, labels)):
    if int(label) not in wanted:
      continue
    split = split_of(i)
    folder = os.path.join(out, split, str(int(label)))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f'digit_{i:04d}.png'))
    counts[split] += 1
  return counts


def _parser() -> cli.ArgumentParser:
  p = cli.ArgumentParser(
    prog='python -m zenfer_jax.data.digits_folders', description=__doc__.split('\n')[0]
  )
  p.add_argument('--out', required=True, help='the tree root to write (must not exist yet)')
  p.add_argument('--digits', required=True, help='comma-separated digits, e.g. 0,1,2,3,4')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    digits = sorted({int(d) for d in args.digits.split(',') if d.strip()})
  except ValueError:
    parser.error(f'--digits={args.digits!r}: expected comma-separated digits 0-9')
  if not digits or not all(0 <= d <= 9 for d in digits):
    parser.error(f'--digits={args.digits!r}: expected comma-separated digits 0-9')
  if os.path.exists(args.out):
    parser.error(f'--out={args.out!r} exists: name a new directory')
  counts = write_tree(args.out, digits)
  print(f'{args.out}: digits {digits}; {counts["train"]} train and {counts["test"]} test images')
  return 0


if __name__ == '__main__':
  sys.exit(main())
