"""Training parity: the project's JAX training vs a plain PyTorch loop, same network, data, init.

  python -m benchmarks.train_parity --data_dir ~/tensorflow_datasets \
      --manual_dir /data/fer2013 --workdir runs/train_parity      # configs/fer2013_r.py, 30 epochs
  python -m benchmarks.train_parity --data_dir ~/tensorflow_datasets --workdir /tmp/parity \
      --max_train_examples 512 --epochs 1                          # a smoke run

The question it answers: does zenfer_jax's training reach the accuracy the original recipe
reaches in PyTorch, at what speed? So the two sides share everything but the framework:

  * one ml_collections config (--config, plus --epochs and any --config.KEY=VALUE), which the
    JAX side gets as flags and the PyTorch side as the resolved dict; after the run the config
    the JAX run wrote (WORKDIR/jax/config.json) must equal the one the PyTorch side read;
  * one initialisation: the JAX model's init from config.seed (the key a plain run would use),
    saved as a model directory for the JAX run's config.init_from and converted with
    torch_port.export into the reference model; both forward passes are compared (eval mode) on
    an evaluation batch before anything trains;
  * the same records: the TFDS split the JAX pipeline reads is decoded once into uint8 arrays for
    the PyTorch side. --max_train_examples writes a seeded subset of the training split (and the
    whole evaluation split) as a fer2013.csv and prepares it, so that both sides still read
    records of one dataset.

JAX side: `python -m zenfer_jax.main` itself, in its own process, with a timer that only records
when the loop's evaluation and checkpoint phases begin and end (zenfer_jax.training.loop_timing):
the measured thing is the product's loop, its tf.data augmentation, orbax checkpoints at every epoch
end and all. Per epoch: metrics.jsonl (train loss, PublicTest top-1) and those timestamps.

PyTorch side: torch_port's reference model in eager mode, in its own process, as the original
ZenNet-SA-FER scripts train it: SGD with momentum and Nesterov, weight decay on conv and linear
weights only, the per-sample linear warm-up + cosine rate set before every step, smoothed
one-hot targets then mixup, soft-target cross-entropy. Augmentation is the config's recipe
(zenfer_jax.data.pipeline.RECIPES) written again with PIL and NumPy in the torchvision
transforms' semantics: shorter side to round(size / resize_ratio) (bicubic), rotation in
+-rotate_degrees (bilinear, edge pixels repeated into the corners as the JAX recipe does),
RandomResizedCrop(size, scale=crop_scale, ratio=(3/4, 4/3)) (bicubic), horizontal flip 0.5,
ImageNet normalisation, PCA lighting when lighting_std > 0, RandomErasing(erasing_p,
erasing_scale, erasing_ratio, value=0). AutoAugment is not written here: a recipe with it is
refused. Batches are augmented in --torch_workers DataLoader worker processes (the JAX side's
tf.data runs in threads of its own process); every batch has its own seeded generator, so the
batches do not depend on the worker count.

Both sides evaluate in eval mode on the whole evaluation split (config.data.eval_split, resized to
image_size, normalised, no test-time augmentation) after every epoch. Both processes run pinned
to the same --threads CPUs (benchmarks.run's pinning: process affinity, which also sizes XLA's
pool, and torch.set_num_threads), one after the other.

Per epoch and side: top-1, train loss, images/s (training only: evaluation and, on the JAX side,
checkpoints excluded; the first JAX epoch includes compiling the train step, or loading it from
the compilation cache), train, eval and elapsed seconds; the summaries' rates leave epoch 1 out.
Output: --out (default benchmarks/results/train_parity_<dataset>.json) and the accuracy curves
beside it (.png).

A busy machine: PyTorch's OpenMP pool stalls when its threads cannot all run at once. On 2 cores
at load average 6, ZenNet-R-SA at 48 px with 2 threads evaluated at about 30 images/s and trained
at 3-10 s per batch of 64; with --threads 1, 300 images/s and 0.5 s. The report records the load
average at both ends; on a shared machine use fewer threads than idle cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import pinning as pinning_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'fer2013_r.py')
SIDES = ('jax', 'torch')
# Relative tolerance of the initial forward check (logits, eval mode, float32 on both sides).
FORWARD_TOLERANCE = 1e-4
FORWARD_BATCH = 32
JAX_CHILD = '--_jax_child'
TORCH_CHILD = '--_torch_child'
EVENTS = 'parity_events.jsonl'
TORCH_ROWS = 'rows.jsonl'
# torchvision's RandomResizedCrop default aspect range; the JAX recipe uses the same.
CROP_RATIO = (3 / 4, 4 / 3)
# torchvision tries this many random windows for RandomResizedCrop and RandomErasing.
ATTEMPTS = 10


# --------------------------------------------------------------------------------------------
# The config: one file, one set of overrides, for both sides


def load_config(path: str):
  """The ml_collections config of a config file (loaded by path, as zenfer_jax.main does)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location('train_parity_config', path)
  if spec is None:
    raise FileNotFoundError(f'No config file at {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _parse_value(text: str, current):
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ('true', '1', 'yes'):
      return True
    if low in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected true or false, got {text!r}')
  if isinstance(current, int):
    return int(text)
  if isinstance(current, float):
    return float(text)
  if isinstance(current, str):
    return text
  raise ValueError(f'cannot set a {type(current).__name__} field from the command line')


def set_field(config, key: str, value) -> None:
  """config.a.b = value for key 'a.b'; a string is parsed as the field's type."""
  *parents, leaf = key.split('.')
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f'--config.{key}: the config has no field {key!r}')
  if isinstance(value, str) and not isinstance(node[leaf], str):
    value = _parse_value(value, node[leaf])
  node[leaf] = value


def config_flag(key: str, value) -> str:
  """The zenfer_jax.main flag that sets `key` to `value`."""
  if isinstance(value, bool):
    value = str(value).lower()
  return f'--config.{key}={value}'


# --------------------------------------------------------------------------------------------
# The PyTorch side's schedule and augmentation (NumPy/PIL; no TensorFlow or JAX imported)


def reference_lr(
  step: int,
  *,
  lr: float,
  target_lr: float,
  num_train: int,
  num_epochs: int,
  warmup_epochs: int,
  steps_per_epoch: int,
  batch_size: int,
) -> float:
  """The original scripts' rate for 0-based `step`: a function of the samples seen, which
  `zenfer_jax.training.optim` writes in plain Python (its scheduler advances by the batch size
  before each update and restarts each epoch's count at epoch * num_train)."""
  from zenfer_jax.training import optim  # Plain Python here; importing JAX starts no computation.

  seen = optim.samples_seen(
    step, steps_per_epoch=steps_per_epoch, global_batch=batch_size, num_train=num_train
  )
  return optim.reference_lr(
    seen,
    lr=lr,
    target_lr=target_lr,
    num_train=num_train,
    num_epochs=num_epochs,
    warmup_epochs=warmup_epochs,
  )


def torch_schedule(config, num_train: int):
  """step -> rate, every input read from the config (as zenfer_jax.training.loop reads it)."""
  spe = steps_per_epoch(config, num_train)
  kw = dict(
    lr=config.lr_per_256 * config.batch_size / 256.0,
    target_lr=config.target_lr_per_256 * config.batch_size / 256.0,
    num_train=num_train,
    num_epochs=config.num_epochs,
    warmup_epochs=config.warmup_epochs,
    steps_per_epoch=spe,
    batch_size=config.batch_size,
  )
  return lambda step: reference_lr(step, **kw)


def steps_per_epoch(config, num_train: int) -> int:
  return config.steps_per_epoch if config.steps_per_epoch > 0 else num_train // config.batch_size


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic, as the recipe resizes (PIL antialiases when it shrinks, like the JAX recipe)."""
  from PIL import Image

  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize(int): the shorter side becomes `size`, the longer int(size * ratio)."""
  h, w = image.shape[:2]
  if h <= w:
    return _pil_resize(image, size, int(size * w / h))
  return _pil_resize(image, int(size * h / w), size)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
  """Counter-clockwise rotation about the centre, bilinear, edge pixels repeated outside.

  torchvision's RandomRotation would fill the corners with a constant; the JAX recipe repeats
  the edge (no test face has a black border), so this does too. The uint8 result is truncated,
  as TensorFlow's ImageProjectiveTransform casts it (the recipe's rotation, docs/datasets.md):
  rounding as PIL does made the rotated faces half a grey level brighter than the JAX side's.
  """
  h, w = image.shape[:2]
  theta = math.radians(degrees)
  c, s = math.cos(theta), math.sin(theta)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  # Each output pixel samples the input at the inverse rotation of its position.
  xs = np.clip(c * (xx - cx) - s * (yy - cy) + cx, 0, w - 1)
  ys = np.clip(s * (xx - cx) + c * (yy - cy) + cy, 0, h - 1)
  x0, y0 = np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64)
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
  img = image.astype(np.float64)
  top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
  bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
  # The 1e-6: where a pixel is copied (a right angle, say), cos and sin off by 1e-16 leave it a
  # hair below its integer value, which truncation would turn into one grey level less.
  value = top * (1 - fy) + bottom * fy + 1e-6
  return np.clip(np.floor(value), 0, 255).astype(np.uint8)


def crop_window(
  height: int, width: int, rng: np.random.Generator, scale, ratio=CROP_RATIO
) -> tuple[int, int, int, int]:
  """torchvision RandomResizedCrop.get_params: (top, left, crop height, crop width)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(ATTEMPTS):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def erasing_box(
  height: int, width: int, rng: np.random.Generator, p: float, scale, ratio
) -> tuple[int, int, int, int] | None:
  """torchvision RandomErasing.get_params, drawn with probability p: (top, left, h, w) or None."""
  if rng.random() >= p:
    return None
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(ATTEMPTS):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    h = int(round(math.sqrt(target * aspect)))
    w = int(round(math.sqrt(target / aspect)))
    if not (h < height and w < width):
      continue
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


@dataclasses.dataclass(frozen=True)
class TorchRecipe:
  """A zenfer_jax recipe's parameters (the fields of pipeline.Recipe), applied in NumPy.

  Built from the recipe's own fields (`from_fields(dataclasses.asdict(RECIPES[name]))`), so the
  PyTorch side cannot drift from the JAX recipe's numbers.
  """

  image_size: int
  fields: dict

  @classmethod
  def from_fields(cls, fields: dict, image_size: int) -> TorchRecipe:
    fields = dict(fields)
    if fields.get('augment') and fields.get('autoaugment'):
      raise NotImplementedError(
        f'recipe {fields.get("name")!r} uses AutoAugment, which the PyTorch side of '
        'benchmarks.train_parity does not implement; use a recipe without it (fer2013).'
      )
    return cls(image_size, fields)

  def __getattr__(self, name):
    try:
      return self.__dict__['fields'][name]
    except KeyError:
      raise AttributeError(name) from None

  def _normalize(self, x: np.ndarray) -> np.ndarray:
    from zenfer_jax.data.augment_spec import IMAGENET_MEAN, IMAGENET_STD

    return (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)

  def eval(self, image: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 HWC normalised: a plain resize (or shorter side + centre crop)."""
    size = self.image_size
    if self.eval_center_crop:
      image = resize_shorter(image, size)
      top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
      image = image[top : top + size, left : left + size]
    else:
      image = _pil_resize(image, size, size)
    return self._normalize(image.astype(np.float32) / 255.0).astype(np.float32)

  def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 HWC -> float32 HWC: the recipe's train chain with draws from `rng`."""
    size = self.image_size
    if not self.augment:
      image = _pil_resize(image, size, size)
      if self.shift_fraction > 0:
        m = max(1, round(size * self.shift_fraction))
        padded = np.pad(image, [(m, m), (m, m), (0, 0)])
        dy, dx = rng.integers(0, 2 * m + 1, 2)
        image = padded[dy : dy + size, dx : dx + size]
      return self._normalize(image.astype(np.float32) / 255.0).astype(np.float32)
    image = resize_shorter(image, round(size / self.resize_ratio))
    if self.rotate_degrees:
      image = rotate(image, rng.uniform(-self.rotate_degrees, self.rotate_degrees))
    top, left, h, w = crop_window(image.shape[0], image.shape[1], rng, tuple(self.crop_scale))
    image = _pil_resize(image[top : top + h, left : left + w], size, size)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    x = image.astype(np.float32) / 255.0
    if self.lighting_std:
      from zenfer_jax.data.augment_spec import IMAGENET_EIGVAL, IMAGENET_EIGVEC

      alpha = rng.normal(0.0, self.lighting_std, 3)
      x = x + (np.asarray(IMAGENET_EIGVEC) @ (alpha * np.asarray(IMAGENET_EIGVAL))).astype(
        np.float32
      )
    x = self._normalize(x).astype(np.float32)
    box = erasing_box(
      size, size, rng, self.erasing_p, tuple(self.erasing_scale), tuple(self.erasing_ratio)
    )
    if box is not None:
      top, left, bh, bw = box
      x[top : top + bh, left : left + bw] = 0.0
    return x


# --------------------------------------------------------------------------------------------
# The PyTorch side (its own process: `python -m benchmarks.train_parity --_torch_child SPEC`)


def _epoch_order(seed: int, epoch: int, num_train: int, count: int) -> np.ndarray:
  """The first `count` examples of epoch `epoch`'s shuffle (further permutations if needed)."""
  rng = np.random.default_rng([seed, 7, epoch])
  parts, have = [], 0
  while have < count:
    parts.append(rng.permutation(num_train))
    have += num_train
  return np.concatenate(parts)[:count]


class _TrainBatches:
  """Batch g of the whole run, augmented; a map-style dataset for torch's DataLoader."""

  def __init__(self, images, labels, recipe: TorchRecipe, config, spe: int):
    self.images, self.labels, self.recipe = images, labels, recipe
    self.seed, self.batch, self.spe = int(config.seed), int(config.batch_size), spe
    self.total = spe * int(config.num_epochs)
    self._order = (None, None)

  def __len__(self):
    return self.total

  def __getitem__(self, g: int):
    import torch

    epoch, within = divmod(int(g), self.spe)
    if self._order[0] != epoch:
      self._order = (epoch, _epoch_order(self.seed, epoch, len(self.labels), self.spe * self.batch))
    idx = self._order[1][within * self.batch : (within + 1) * self.batch]
    rng = np.random.default_rng([self.seed, 11, int(g)])
    x = np.stack([self.recipe.train(np.asarray(self.images[i]), rng) for i in idx])
    return (
      torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(),
      torch.from_numpy(np.asarray(self.labels[idx], np.int64)),
    )


def _one_loader_thread(_):
  import torch

  torch.set_num_threads(1)


def build_torch_model(config, num_classes: int):
  """torch_port's reference model with the config's BatchNorm momentum and epsilon."""
  import torch

  from torch_port.reference_model import build_reference_model

  m = config.model
  model = build_reference_model(
    m.structure,
    num_classes,
    use_sa=m.use_sa,
    use_lw_att=m.use_lw_att,
    bn_momentum=1.0 - m.bn_momentum,  # Flax's decay of the old value; PyTorch's new-value weight.
  )
  for mod in model.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
      mod.eps = m.bn_eps
  return model


def torch_optimizer(model, config):
  """SGD over two groups: conv and linear weights decayed, everything else not."""
  import torch

  decay, rest = [], []
  for mod in model.modules():
    for name, p in mod.named_parameters(recurse=False):
      kernel = name == 'weight' and isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
      (decay if kernel else rest).append(p)
  return torch.optim.SGD(
    [
      {'params': decay, 'weight_decay': config.weight_decay},
      {'params': rest, 'weight_decay': 0.0},
    ],
    lr=0.0,
    momentum=config.momentum,
    nesterov=bool(config.nesterov and config.momentum > 0),
  )


def _torch_evaluate(model, images, labels, batch: int) -> float:
  import torch

  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(labels), batch):
      logits = model(images[i : i + batch])
      correct += int((logits.argmax(-1) == labels[i : i + batch]).sum())
  return correct / len(labels)


def torch_side(spec_path: str) -> None:
  """Trains the reference model as the spec says; one JSON line per epoch to spec['rows']."""
  started = time.perf_counter()
  import ml_collections
  import torch

  with open(spec_path) as f:
    spec = json.load(f)
  torch.set_num_threads(int(spec['threads']))
  config = ml_collections.ConfigDict(spec['config'])
  recipe = TorchRecipe.from_fields(spec['recipe'], config.data.image_size)
  arrays = {k: np.load(spec[k], mmap_mode='r') for k in ('train_x', 'train_y', 'eval_x', 'eval_y')}
  num_train, num_classes = len(arrays['train_y']), int(spec['num_classes'])
  spe = steps_per_epoch(config, num_train)
  lr_at = torch_schedule(config, num_train)
  torch.manual_seed(config.seed)
  model = build_torch_model(config, num_classes)
  model.load_state_dict(torch.load(spec['init'], weights_only=True), strict=True)
  opt = torch_optimizer(model, config)
  eval_x = torch.from_numpy(
    np.stack([recipe.eval(np.asarray(im)) for im in arrays['eval_x']])
  ).permute(0, 3, 1, 2)
  eval_y = torch.from_numpy(np.asarray(arrays['eval_y'], np.int64))
  workers = int(spec['loader_workers'])
  loader = torch.utils.data.DataLoader(
    _TrainBatches(arrays['train_x'], arrays['train_y'], recipe, config, spe),
    batch_size=None,
    shuffle=False,
    num_workers=workers,
    worker_init_fn=_one_loader_thread if workers else None,
    prefetch_factor=2 if workers else None,
  )
  eps, alpha = config.label_smoothing, config.mixup_alpha
  mix_rng = np.random.default_rng([config.seed, 13])
  perm_gen = torch.Generator().manual_seed(config.seed)
  batches = iter(loader)
  loop_start = time.perf_counter()
  with open(spec['rows'], 'w') as out:
    out.write(json.dumps({'startup_seconds': loop_start - started}) + '\n')
    for epoch in range(config.num_epochs):
      model.train()
      t0 = time.perf_counter()
      loss_sum = acc_sum = 0.0
      for within in range(spe):
        step = epoch * spe + within
        x, y = next(batches)
        for group in opt.param_groups:
          group['lr'] = lr_at(step)
        # Smoothed one-hot targets first, then mixup of images and targets (the reference's
        # order); one lambda per batch.
        targets = torch.nn.functional.one_hot(y, num_classes).float() * (1.0 - eps) + eps / (
          num_classes
        )
        if alpha > 0:
          lam = float(mix_rng.beta(alpha, alpha))
          perm = torch.randperm(x.shape[0], generator=perm_gen)
          x = lam * x + (1.0 - lam) * x[perm]
          targets = lam * targets + (1.0 - lam) * targets[perm]
        logits = model(x)
        loss = -(targets * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach())
        acc_sum += float((logits.detach().argmax(-1) == y).float().mean())
      train_seconds = time.perf_counter() - t0
      t1 = time.perf_counter()
      top1 = _torch_evaluate(model, eval_x, eval_y, config.eval_batch_size)
      now = time.perf_counter()
      row = {
        'epoch': epoch + 1,
        'step': (epoch + 1) * spe,
        'test_top1': top1,
        'train_loss': loss_sum / spe,
        'train_accuracy': acc_sum / spe,
        'learning_rate': lr_at((epoch + 1) * spe - 1),
        'train_seconds': train_seconds,
        'eval_seconds': now - t1,
        'elapsed_seconds': now - loop_start,
        'images_per_second': spe * config.batch_size / train_seconds,
      }
      out.write(json.dumps(row) + '\n')
      out.flush()
      print(
        f'torch epoch {epoch + 1}/{config.num_epochs}: loss {row["train_loss"]:.4f} '
        f'top-1 {top1:.4f} ({row["images_per_second"]:.1f} img/s)',
        flush=True,
      )


# --------------------------------------------------------------------------------------------
# The JAX side (its own process: zenfer_jax.main with a recording loop timer)


def jax_side(events_path: str, main_flags: list[str]) -> None:
  """Runs `python -m zenfer_jax.main MAIN_FLAGS`, recording when evaluations and checkpoints
  begin and end (the loop's own LoopTimer phases), to `events_path`."""
  started = time.perf_counter()
  from zenfer_jax import cli
  from zenfer_jax.training import loop_timing

  def record(name: str, begin: float, end: float) -> None:
    with open(events_path, 'a') as f:
      f.write(json.dumps({'name': name, 'begin': begin, 'end': end}) + '\n')

  record('process', started, started)

  class RecordingTimer(loop_timing.LoopTimer):
    def __init__(self, start_step: int = 0):
      super().__init__(start_step)
      record('loop', self.start, self.start)

    @contextlib.contextmanager
    def phase(self, name: str):
      begin = time.perf_counter()
      try:
        with super().phase(name):
          yield
      finally:
        if name != 'input_wait':  # Every step's: not needed, and many.
          record(name, begin, time.perf_counter())

  loop_timing.LoopTimer = RecordingTimer
  from zenfer_jax import main as zmain

  cli.run_absl(zmain.main, argv=['zenfer_jax.main', *main_flags])


def jax_rows(records: list[dict], events: list[dict], spe: int, batch: int) -> tuple[list, dict]:
  """Per-epoch rows from metrics.jsonl and the recorded phases.

  Epoch k trains between the begin of evaluation k-1 (the loop's start for k = 1) and the begin
  of evaluation k, less the evaluations and checkpoints in that window: the steps are dispatched
  asynchronously, but the loop fetches every step's metrics (blocking) before it evaluates. The
  checkpoints written after evaluation k (best model, epoch end) are epoch k's.
  """
  loop = next(e for e in events if e['name'] == 'loop')
  process = next(e for e in events if e['name'] == 'process')
  evals = [e for e in events if e['name'] == 'eval']
  pauses = [e for e in events if e['name'] in ('eval', 'checkpoint')]
  if len(evals) != len(records):
    raise RuntimeError(f'{len(records)} metrics records but {len(evals)} evaluations recorded')
  bounds = [loop['begin']] + [e['begin'] for e in evals] + [math.inf]

  def within(lo, hi):
    return [p for p in pauses if lo <= p['begin'] < hi]

  rows = []
  for k, (rec, ev) in enumerate(zip(records, evals)):
    paused = sum(p['end'] - p['begin'] for p in within(bounds[k], ev['begin']))
    train_seconds = ev['begin'] - bounds[k] - paused
    tail = within(ev['begin'], bounds[k + 2])  # This evaluation and the checkpoints after it.
    rows.append(
      {
        'epoch': rec['epoch'],
        'step': rec['step'],
        'test_top1': rec['test_top1'],
        'train_loss': rec['train_loss'],
        'train_accuracy': rec['train_accuracy'],
        'train_seconds': train_seconds,
        'eval_seconds': ev['end'] - ev['begin'],
        'checkpoint_seconds': sum(p['end'] - p['begin'] for p in tail if p['name'] == 'checkpoint'),
        'elapsed_seconds': max(p['end'] for p in tail) - loop['begin'],
        'images_per_second': spe * batch / train_seconds,
      }
    )
  return rows, {'startup_seconds': loop['begin'] - process['begin']}


# --------------------------------------------------------------------------------------------
# The parent: data, initial weights, the two runs, the report


def _log(message: str) -> None:
  from absl import logging

  logging.info('[%s] %s', time.strftime('%H:%M:%S'), message)


def decode_split(name: str, data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Every example of a prepared split, in record order: uint8 [N, H, W, 3], int64 [N]."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from zenfer_jax.data import registry, tf_stream

  builder, _ = registry.load(name, data_dir)
  ds = builder.as_dataset(
    split=split,
    shuffle_files=False,
    decoders={'image': tfds.decode.SkipDecoding()},
    read_config=tfds.ReadConfig(try_autocache=False, add_tfds_id=False),
  ).map(
    lambda ex: (tf_stream.decode(ex['image']), ex['label']),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  images, labels = [], []
  for image, label in tfds.as_numpy(ds):
    images.append(image)
    labels.append(int(label))
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise ValueError(
      f'{name}/{split} holds images of {len(shapes)} sizes; the PyTorch side keeps one array '
      'of equal-sized images.'
    )
  return np.stack(images), np.asarray(labels, np.int64)


def write_fer2013_subset(
  root: str, train: tuple, evaluation: tuple, eval_split: str, count: int, seed: int
) -> int:
  """fer2013.csv with `count` seeded random training faces and the whole evaluation split."""
  from zenfer_jax.data.builders.fer2013 import CSV_NAME, USAGE_SPLITS

  usage = {split: u for u, split in USAGE_SPLITS.items()}
  if eval_split not in usage:
    raise ValueError(
      f'--max_train_examples writes FER2013 as a CSV, whose rows are Training, PublicTest or '
      f'PrivateTest; config.data.eval_split={eval_split!r} is none of those.'
    )
  pick = np.sort(np.random.default_rng([seed, 3]).permutation(len(train[1]))[:count])
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, CSV_NAME), 'w') as f:
    f.write('emotion,pixels,Usage\n')
    for (images, labels), rows, name in (
      (train, pick, 'Training'),
      (evaluation, np.arange(len(evaluation[1])), usage[eval_split]),
    ):
      for i in rows:
        grey = images[i][..., 0]
        if not (images[i] == grey[..., None]).all():
          raise ValueError('FER2013 records with colour images cannot be written as its CSV.')
        f.write(f'{labels[i]},{" ".join(map(str, grey.reshape(-1)))},{name}\n')
  return len(pick)


def _child_env() -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env.setdefault('JAX_PLATFORMS', 'cpu')
  return env


def _run_child(args: list[str], log_path: str, timeout: float | None) -> float:
  """Runs `python -m benchmarks.train_parity ARGS`, output to `log_path`; its wall seconds."""
  start = time.perf_counter()
  with open(log_path, 'w') as log:
    proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.train_parity', *args],
      cwd=REPO,
      env=_child_env(),
      stdout=log,
      stderr=subprocess.STDOUT,
      timeout=timeout,
    )
  if proc.returncode != 0:
    with open(log_path) as f:
      tail = f.read()[-4000:]
    raise RuntimeError(f'{args[0]} exited with {proc.returncode} (log {log_path}):\n{tail}')
  return time.perf_counter() - start


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def forward_check(model, variables, config, num_classes: int, images: np.ndarray) -> dict:
  """The JAX model and the converted reference model on one batch, eval mode: logits agree."""
  import jax
  import torch

  from torch_port.export import export_state_dict

  m = config.model
  state_dict = export_state_dict(
    variables, m.structure, num_classes, use_sa=m.use_sa, use_lw_att=m.use_lw_att
  )
  tmodel = build_torch_model(config, num_classes)
  tmodel.load_state_dict(state_dict, strict=True)
  tmodel.eval()
  with torch.no_grad():
    t_logits = tmodel(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  j_logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))
  scale = max(1.0, float(np.abs(j_logits).max()))
  diff = float(np.abs(j_logits - t_logits).max())
  return {
    'state_dict': state_dict,
    'batch': int(images.shape[0]),
    'max_abs_logit': float(np.abs(j_logits).max()),
    'max_abs_diff': diff,
    'relative_diff': diff / scale,
    'tolerance': FORWARD_TOLERANCE,
    'same_predictions': float(np.mean(j_logits.argmax(-1) == t_logits.argmax(-1))),
  }


def plot(path: str, sides: dict, title: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  fig, ax = plt.subplots(figsize=(7, 4.5))
  labels = {'jax': 'JAX (zenfer_jax.main)', 'torch': 'PyTorch (reference model, eager)'}
  for side, result in sides.items():
    rows = result.get('rows') or []
    if rows:
      ax.plot(
        [r['epoch'] for r in rows],
        [100 * r['test_top1'] for r in rows],
        marker='o' if len(rows) < 40 else None,
        label=labels[side],
      )
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('epoch')
  ax.set_ylabel('top-1 (%)')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(report: dict) -> str:
  lines = [
    '| side | epoch | top-1 | train loss | images/s | train (s) | eval (s) | elapsed (s) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for side, result in report['sides'].items():
    for r in result.get('rows') or []:
      lines.append(
        f'| {side} | {r["epoch"]} | {100 * r["test_top1"]:.2f}% | {r["train_loss"]:.4f} | '
        f'{r["images_per_second"]:.1f} | {r["train_seconds"]:.1f} | {r["eval_seconds"]:.1f} | '
        f'{r["elapsed_seconds"]:.1f} |'
      )
  return '\n'.join(lines) + '\n'


def _summary(rows: list[dict]) -> dict:
  """The run's result; its rate leaves out epoch 1 (compilation, worker start) when it can."""
  if not rows:
    return {}
  later = rows[1:] or rows
  images = sum(r['images_per_second'] * r['train_seconds'] for r in later)
  return {
    'final_top1': rows[-1]['test_top1'],
    'best_top1': max(r['test_top1'] for r in rows),
    'best_epoch': max(rows, key=lambda r: r['test_top1'])['epoch'],
    'final_train_loss': rows[-1]['train_loss'],
    'images_per_second': images / sum(r['train_seconds'] for r in later),
    'images_per_second_epochs': [later[0]['epoch'], later[-1]['epoch']],
    'train_seconds': sum(r['train_seconds'] for r in rows),
  }


def parse_args(argv: list[str]):
  from zenfer_jax import cli

  p = cli.ArgumentParser(
    prog='python -m benchmarks.train_parity', description=__doc__.split('\n')[0]
  )
  p.add_argument('--config', default=DEFAULT_CONFIG, help='config file (both sides)')
  p.add_argument('--data_dir', default=None, help="TFDS records (default: the config's)")
  p.add_argument('--manual_dir', default=None, help='raw dataset, read if records are missing')
  p.add_argument('--epochs', type=cli.positive_int, default=None, help='override num_epochs')
  p.add_argument('--sides', default='jax,torch', help='comma-separated: jax, torch')
  p.add_argument('--threads', type=int, default=0, help='CPU threads per side (0: all available)')
  p.add_argument('--torch_workers', type=int, default=1, help='DataLoader worker processes')
  p.add_argument('--max_train_examples', type=cli.positive_int, default=None, help='subset')
  p.add_argument('--workdir', default=None, help='working files (default: a new temp dir)')
  p.add_argument('--out', default=None, help='JSON report; the .png goes beside it')
  p.add_argument('--timeout', type=float, default=None, help='seconds per side')
  args, rest = p.parse_known_args(argv)
  overrides = {}
  for item in rest:
    key, eq, value = item.partition('=')
    if not key.startswith('--config.') or not eq:
      p.error(f'unrecognized argument {item!r} (config fields: --config.KEY=VALUE)')
    overrides[key[len('--config.') :]] = value
  args.overrides = overrides
  args.sides = [s for s in args.sides.split(',') if s]
  if not args.sides or any(s not in SIDES for s in args.sides):
    p.error(f'--sides takes a comma-separated subset of {SIDES}')
  return args


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == [JAX_CHILD]:
    jax_side(argv[1], argv[2:])
    return {}
  if argv[:1] == [TORCH_CHILD]:
    torch_side(argv[1])
    return {}
  args = parse_args(argv)
  from zenfer_jax import cli

  # Before TensorFlow, JAX or PyTorch is imported.
  threading = pinning_lib.pin_threads(args.threads)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  cli.setup_logging(args.verbosity, show_own_info=True, uses_tensorflow=True)

  config = load_config(args.config)
  for key, value in args.overrides.items():
    set_field(config, key, value)
  notes = []
  if args.epochs:
    config.num_epochs = args.epochs
    if config.warmup_epochs >= config.num_epochs:
      notes.append(
        f'warmup_epochs {config.warmup_epochs} >= {config.num_epochs} epochs: set to '
        f'{config.num_epochs - 1}'
      )
      config.warmup_epochs = config.num_epochs - 1
  if args.data_dir:
    config.data.data_dir = args.data_dir
  if args.manual_dir:
    config.data.manual_dir = args.manual_dir
  config.progress_bar = False
  if config.eval_every_epochs != 1:
    raise SystemExit('error: train_parity compares every epoch: config.eval_every_epochs must be 1')
  unsupported = {
    'precise_bn_batches': 0,
    'init_from': '',
    'freeze_backbone': False,
    'only_backbone': False,
  }
  for key, default in unsupported.items():
    if config[key] != default:
      raise SystemExit(f'error: the PyTorch side has no config.{key}={config[key]!r}')
  if config.model.dtype != 'float32':
    raise SystemExit('error: both sides train in float32 (config.model.dtype)')

  from zenfer_jax import data
  from zenfer_jax.data import recipes

  recipe = recipes.resolve(config.data.recipe or None, config.data.name)
  recipe_fields = dataclasses.asdict(recipe)
  if 'torch' in args.sides:
    TorchRecipe.from_fields(recipe_fields, config.data.image_size)  # Refuses what it lacks.

  workdir = os.path.abspath(os.path.expanduser(args.workdir) if args.workdir else _fresh_temp_dir())
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise SystemExit(f'error: --workdir {workdir} is not empty; name a new or empty directory')
  os.makedirs(workdir, exist_ok=True)
  name, split, eval_split = config.data.name, config.data.train_split, config.data.eval_split
  data_dir = os.path.expanduser(config.data.data_dir)
  manual = os.path.expanduser(config.data.manual_dir) or None
  _log(f'Preparing {name} in {data_dir} ...')
  info = data.prepare_dataset(name, data_dir, manual_dir=manual)
  source = {
    'dataset': name,
    'data_dir': data_dir,
    'train_split': split,
    'eval_split': eval_split,
    'full_train_examples': info.split_sizes[split],
  }
  if args.max_train_examples and args.max_train_examples < info.split_sizes[split]:
    if name != 'fer2013':
      raise SystemExit('error: --max_train_examples writes a FER2013 CSV; the dataset is ' + name)
    _log(f'Writing a {args.max_train_examples}-image training subset ...')
    raw = os.path.join(workdir, 'subset_raw')
    write_fer2013_subset(
      raw,
      decode_split(name, data_dir, split),
      decode_split(name, data_dir, eval_split),
      eval_split,
      args.max_train_examples,
      config.seed,
    )
    data_dir = os.path.join(workdir, 'subset_tfds')
    info = data.prepare_dataset(name, data_dir, manual_dir=raw)
    source['subset_data_dir'] = data_dir
  # The records are ready: neither side reads the raw files (nor fingerprints them) again.
  config.data.data_dir = data_dir
  config.data.manual_dir = ''
  from zenfer_jax.config.validation import validate_config

  validate_config(config, 1)

  _log('Decoding the records for the PyTorch side ...')
  arrays = {}
  for key, sp in (('train', split), ('eval', eval_split)):
    x, y = decode_split(name, data_dir, sp)
    for suffix, arr in (('x', x), ('y', y)):
      arrays[f'{key}_{suffix}'] = path = os.path.join(workdir, f'{key}_{suffix}.npy')
      np.save(path, arr)
  num_train = info.split_sizes[split]
  source.update(train_examples=num_train, eval_examples=info.split_sizes[eval_split])

  _log('Initialising (JAX, config.seed) and converting to PyTorch ...')
  import jax
  import torch

  from zenfer_jax.rundir import compilation_cache, model_directory
  from zenfer_jax.training import init
  from zenfer_jax.training import loop as train_lib

  # The JAX run's cache: its model init is the program compiled here, so it loads it.
  compilation_cache.enable(config.compilation_cache_dir)
  model = init.build_model(config, info.num_classes)
  # As zenfer_jax.training.loop splits.
  init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
  variables = init.initial_variables(config, model, init_rng)
  init_dir = os.path.join(workdir, 'init_model')
  model_directory.save_model_dir(init_dir, variables, train_lib.model_card(config, model, info))
  recipe_torch = TorchRecipe.from_fields(
    recipe_fields if 'torch' in args.sides else {**recipe_fields, 'autoaugment': False},
    config.data.image_size,
  )
  eval_x = np.load(arrays['eval_x'], mmap_mode='r')
  batch = np.stack([recipe_torch.eval(np.asarray(im)) for im in eval_x[:FORWARD_BATCH]])
  check = forward_check(model, variables, config, info.num_classes, batch)
  init_torch = os.path.join(workdir, 'init_torch.pt')
  torch.save(check.pop('state_dict'), init_torch)
  _log(
    f'Initial forward pass: max |JAX - PyTorch| = {check["max_abs_diff"]:.2e} '
    f'(logits up to {check["max_abs_logit"]:.3g})'
  )
  if not check['relative_diff'] <= FORWARD_TOLERANCE:
    raise SystemExit(
      f'error: the initial forward passes differ by {check["max_abs_diff"]:.3g} '
      f'(relative {check["relative_diff"]:.3g} > {FORWARD_TOLERANCE})'
    )
  config.init_from = init_dir  # The JAX run's; the PyTorch side loads init_torch.pt.
  resolved = json.loads(json.dumps(config.to_dict()))

  spe = steps_per_epoch(config, num_train)
  report = {
    'schema': 1,
    'command': 'python -m benchmarks.train_parity ' + ' '.join(argv),
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'machine': _machine(),
    'versions': _versions(),
    'threading': {**threading, 'torch_loader_workers': args.torch_workers},
    'config_file': os.path.relpath(os.path.abspath(args.config), REPO),
    'overrides': args.overrides,
    'notes': notes,
    'config': resolved,
    'recipe': recipe_fields,
    'data': source,
    'schedule': {
      'steps_per_epoch': spe,
      'total_steps': spe * config.num_epochs,
      'lr': config.lr_per_256 * config.batch_size / 256.0,
      'images_per_epoch': spe * config.batch_size,
    },
    'initial_forward': check,
    'workdir': workdir,
    'loadavg_start': _loadavg(),
    'sides': {},
  }
  out = args.out or os.path.join(REPO, 'benchmarks', 'results', f'train_parity_{name}.json')
  out = os.path.abspath(out)

  def write():
    report['loadavg_end'] = _loadavg()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump(report, f, indent=1)

  del model, variables  # The parent idles while the sides run.
  for side in args.sides:
    _log(f'{side} side: {config.num_epochs} epoch(s) of {spe} steps ...')
    if side == 'jax':
      report['sides']['jax'] = _run_jax(args, config, workdir, resolved, spe)
    else:
      report['sides']['torch'] = _run_torch(
        args, resolved, recipe_fields, arrays, info.num_classes, workdir, threading['threads']
      )
    for r in report['sides'][side]['rows']:
      _log(
        f'  {side} epoch {r["epoch"]}: top-1 {r["test_top1"]:.4f}, loss {r["train_loss"]:.4f}, '
        f'{r["images_per_second"]:.1f} img/s'
      )
    write()
  if len(report['sides']) == 2:
    jax_sum, torch_sum = (report['sides'][s]['summary'] for s in SIDES)
    report['comparison'] = {
      'final_top1_jax_minus_torch': jax_sum['final_top1'] - torch_sum['final_top1'],
      'best_top1_jax_minus_torch': jax_sum['best_top1'] - torch_sum['best_top1'],
      'images_per_second_jax_over_torch': jax_sum['images_per_second']
      / torch_sum['images_per_second'],
    }
  plot_path = os.path.splitext(out)[0] + '.png'
  plot(
    plot_path,
    report['sides'],
    f'{os.path.basename(args.config)} on {name}{" (subset)" if "subset_data_dir" in source else ""}'
    f': {num_train} train, {source["eval_examples"]} {eval_split}',
  )
  report['plot'] = os.path.basename(plot_path)
  write()
  print(markdown(report))
  print(f'Wrote {out} and {plot_path}')
  return report


def _run_jax(args, config, workdir: str, resolved: dict, spe: int) -> dict:
  jax_dir = os.path.join(workdir, 'jax')
  events = os.path.join(workdir, EVENTS)
  flags = [f'--config={os.path.abspath(args.config)}', f'--workdir={jax_dir}']
  flat = _flatten(resolved)
  defaults = _flatten(json.loads(json.dumps(load_config(args.config).to_dict())))
  flags += [config_flag(k, v) for k, v in flat.items() if defaults.get(k) != v]
  seconds = _run_child([JAX_CHILD, events, *flags], os.path.join(workdir, 'jax.log'), args.timeout)
  with open(os.path.join(jax_dir, 'config.json')) as f:
    used = json.load(f)
  if used != resolved:
    diff = sorted(
      k for k in set(_flatten(used)) | set(flat) if _flatten(used).get(k) != flat.get(k)
    )
    raise RuntimeError(f'The JAX run used another config than the PyTorch side: {diff}')
  from zenfer_jax.rundir import workdir as workdir_lib

  rows, extra = jax_rows(
    workdir_lib.read_metrics(jax_dir), _read_jsonl(events), spe, config.batch_size
  )
  return {
    'what': 'python -m zenfer_jax.main (tf.data host augmentation, orbax checkpoint per epoch)',
    'flags': flags,
    'process_seconds': seconds,
    **extra,
    'summary': _summary(rows),
    'rows': rows,
  }


def _run_torch(args, resolved, recipe_fields, arrays, num_classes, workdir, threads) -> dict:
  torch_dir = os.path.join(workdir, 'torch')
  os.makedirs(torch_dir, exist_ok=True)
  spec = {
    'config': resolved,
    'recipe': recipe_fields,
    'num_classes': num_classes,
    'init': os.path.join(workdir, 'init_torch.pt'),
    'threads': threads,
    'loader_workers': args.torch_workers,
    'rows': os.path.join(torch_dir, TORCH_ROWS),
    **arrays,
  }
  spec_path = os.path.join(torch_dir, 'spec.json')
  with open(spec_path, 'w') as f:
    json.dump(spec, f, indent=1)
  seconds = _run_child([TORCH_CHILD, spec_path], os.path.join(workdir, 'torch.log'), args.timeout)
  lines = _read_jsonl(spec['rows'])
  rows = lines[1:]
  return {
    'what': 'torch_port reference model, eager, SGD Nesterov; NumPy/PIL recipe in a DataLoader',
    'process_seconds': seconds,
    'startup_seconds': lines[0]['startup_seconds'],
    'summary': _summary(rows),
    'rows': rows,
  }


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _fresh_temp_dir() -> str:
  import tempfile

  return tempfile.mkdtemp(prefix='train_parity_')


def _machine() -> dict:
  from benchmarks import timing

  return timing.machine_info()


def _versions() -> dict:
  from benchmarks import run as run_lib

  return run_lib._versions()


def _loadavg():
  from benchmarks import timing

  return timing.loadavg()


if __name__ == '__main__':
  main()
