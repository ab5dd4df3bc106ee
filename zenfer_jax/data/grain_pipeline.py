"""The TensorFlow-free input path (`config.data.loader='grain'`): ArrayRecord files read by Grain.

Why: tf.data makes every training process import TensorFlow (seconds of start-up, a second
framework on the accelerator, a 270 MB wheel). Here the records come from `tfds` data sources
over the ArrayRecord files `prepare --file_format=both` writes (`array_records`), Grain reads and
decodes them on threads (or worker processes), and the augmentation runs as the JAX ops of
`device_augment`, jitted on the devices, as `augment_on='device'` runs them. Nothing on this path
imports TensorFlow.

Same contract as the tf.data path: training batches {'image' float32 [local_devices,
per_device_batch, size, size, 3], 'label' int32 [local_devices, per_device_batch]}; evaluation
batches add 'mask' (bool) and cover every example of the split exactly once, padded to whole
batches, with the same number of batches on every process.

Image shapes. RAF-DB (aligned 100x100), FER2013 (48x48) and digits (8x8) hold images of one
shape (`FIXED_SHAPE`): batches go to the devices as decoded and the device chain resizes them
there, with TensorFlow's exact kernels. Other datasets (AffectNet, folders) hold many sizes; as on
the device path's streamed mode, the readers then resize each image on the host (PIL's bicubic,
antialiased when shrinking: TensorFlow's kernels, within rounding) to the shorter side, keep the
middle `device_augment.CANVAS_MAX_ASPECT` times the short side of the long one, and pad to a
fixed canvas; the crop and everything after it run on the devices. Evaluation images are resized
on the host then.

Order. Each process reads its own share of every class (`samplers.host_range`; with
process_split='batches' every process walks the one-process order and keeps its slice of each
global batch). Which examples step `s` takes is a pure function of (seed, process, s)
(`samplers.ExampleSampler`): every epoch a fresh permutation of the share, so each example is
seen once per epoch, or, for class-balanced recipes, a uniformly drawn class and an image of it.
Each example's augmentation key comes from (seed, process, example number). The loader's state
is therefore its next step: `TrainBatches.get_state()` is saved with each checkpoint and
`set_state` resumes at it, giving the batches an uninterrupted run takes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from zenfer_jax.data import array_records, device_augment, registry, samplers
from zenfer_jax.data.recipes import Recipe
from zenfer_jax.data.spec import DataSpec

# Dataset families whose builders write images of one shape (the rest: the host-resized canvas).
FIXED_SHAPE = frozenset({'rafdb', 'fer2013', 'digits'})
# Steps beyond any training run: the step dataset's length (Grain's map datasets are sized).
_MAX_STEPS = 1 << 40
STATE_VERSION = 1


class LoaderStateError(ValueError):
  """A saved loader state that does not belong to this run's data order."""


def _source(spec: DataSpec, split: str):
  """(data source of `split` over ArrayRecord files, dataset info); images decoded by TFDS."""
  builder, info = registry.load(spec.name, spec.data_dir, spec.classes)
  if split not in info.split_sizes:
    raise ValueError(f'{spec.name} has no split {split!r}; it has {sorted(info.split_sizes)}.')
  return array_records.data_source(builder, split), info


def _stack_images(records: Sequence[dict], where: str) -> np.ndarray:
  """uint8 [n, H, W, 3] from decoded records, which must share one shape."""
  images = [np.asarray(r['image']) for r in records]
  shape = images[0].shape
  for image in images:
    if image.shape != shape:
      raise ValueError(
        f"{where}: config.data.loader='grain' batches decoded images of one shape, but this "
        f"split holds {shape} and {image.shape}; use loader='tf.data' for it."
      )
  if len(shape) != 3 or shape[-1] != 3 or images[0].dtype != np.uint8:
    raise ValueError(f'{where}: expected uint8 HxWx3 images, got {images[0].dtype} {shape}.')
  return np.stack(images)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 HxWx3 -> height x width, bicubic (PIL: antialiased when shrinking, as TF's is)."""
  if image.shape[:2] == (height, width):
    return image
  from PIL import Image

  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def _on_canvas(image: np.ndarray, r: Recipe, image_size: int, canvas: int):
  """(uint8 [canvas, canvas, 3], valid (h, w)): the host part of the streamed train chain."""
  if not r.augment:
    return _resize(image, image_size, image_size), (image_size, image_size)
  h, w = device_augment.shorter_side_shape(*image.shape[:2], round(image_size / r.resize_ratio))
  image = _resize(image, h, w)
  top, left = max(h - canvas, 0) // 2, max(w - canvas, 0) // 2
  image = image[top : top + canvas, left : left + canvas]
  out = np.zeros((canvas, canvas, 3), np.uint8)
  out[: image.shape[0], : image.shape[1]] = image
  return out, image.shape[:2]


def _eval_resized(image: np.ndarray, r: Recipe, image_size: int) -> np.ndarray:
  """The eval chain's geometry on the host, for datasets of many image sizes."""
  if not r.eval_center_crop:
    return _resize(image, image_size, image_size)
  h, w = device_augment.shorter_side_shape(*image.shape[:2], image_size)
  image = _resize(image, h, w)
  top, left = (h - image_size) // 2, (w - image_size) // 2
  return image[top : top + image_size, left : left + image_size]


def _eval_with_size(image: np.ndarray, r: Recipe, image_size: int):
  return _eval_resized(image, r, image_size), (image_size, image_size)


class _ReadTrainStep:
  """Grain's map: a step number -> that step's decoded examples (uint8) for this process.

  Runs on Grain's reader threads or worker processes, so it holds only picklable state and
  computes everything from the step.
  """

  def __init__(
    self, source, records, sampler, stream_batch, first, local_batch, where, host_resize=None
  ):
    self.source, self.records, self.sampler = source, records, sampler
    self.stream_batch, self.first, self.local_batch = stream_batch, first, local_batch
    self.where = where
    # None: decoded images as they are; else a function image -> (canvas image, valid size).
    self.host_resize = host_resize

  def __call__(self, step: int) -> dict:
    step = int(step)
    mine = slice(self.first, self.first + self.local_batch)
    index = self.sampler.indices(step, self.stream_batch)[mine]
    examples = self.source.__getitems__([int(i) for i in self.records[index]])
    numbers = step * self.stream_batch + np.arange(self.stream_batch, dtype=np.int64)[mine]
    out = {
      'label': np.asarray([int(e['label']) for e in examples], np.int32),
      'number': numbers.astype(np.uint32),
      'step': step,
    }
    if self.host_resize is None:
      out['image'] = _stack_images(examples, self.where)
    else:
      resized = [self.host_resize(np.asarray(e['image'])) for e in examples]
      out['image'] = _stack_images([{'image': image} for image, _ in resized], self.where)
      out['size'] = np.asarray([size for _, size in resized], np.int32)
    return out


def _fixed_shape(name: str, fixed_shape: bool | None) -> bool:
  return name.split('/')[0] in FIXED_SHAPE if fixed_shape is None else bool(fixed_shape)


def _eval_image(images, r: Recipe, image_size: int):
  """The eval chain on uint8 [B, H, W, 3]: resize (shorter side + centre crop for the recipes
  that ask for it), then [0, 1] and ImageNet normalisation; float32 [B, size, size, 3]."""
  _, h, w, _ = images.shape
  if r.eval_center_crop:
    out_h, out_w = device_augment.shorter_side_shape(h, w, image_size)
    x = images if (out_h, out_w) == (h, w) else device_augment.resize_static(images, out_h, out_w)
    top, left = (out_h - image_size) // 2, (out_w - image_size) // 2
    x = x[:, top : top + image_size, left : left + image_size]
  elif (h, w) != (image_size, image_size):
    x = device_augment.resize_static(images, image_size, image_size)
  else:
    x = images
  b = x.shape[0]
  return device_augment.finish(x, jnp.zeros((b, 3), jnp.float32), jnp.zeros((b, 4), jnp.int32))


@functools.lru_cache(maxsize=8)
def _eval_step(r: Recipe, image_size: int):
  def prepare(images, mask):
    x = _eval_image(images, r, image_size)
    return jnp.where(mask[:, None, None, None], x, 0.0)  # Padding is zeros, as with tf.data.

  return jax.pmap(prepare)


class TrainBatches(Iterator[dict]):
  """The infinite training stream; `get_state`/`set_state` save and restore its position."""

  def __init__(self, dataset: grain.MapDataset, read_options, workers: int, finish, order: dict):
    self._dataset, self._read_options, self._workers = dataset, read_options, workers
    self._finish, self._order = finish, order
    self._next_step = 0
    self._it = None

  def _start(self):
    ds = self._dataset[self._next_step :].to_iter_dataset(self._read_options)
    if self._workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._it = iter(ds)

  def __next__(self) -> dict:
    if self._it is None:
      self._start()
    batch = next(self._it)
    if batch['step'] != self._next_step:  # Never expected: Grain keeps the order.
      raise RuntimeError(f'Grain returned step {batch["step"]}, expected {self._next_step}.')
    self._next_step += 1
    return self._finish(batch)

  def get_state(self) -> dict:
    """JSON-able: the next step and what identifies the order it indexes."""
    return {'version': STATE_VERSION, 'next_step': self._next_step, **self._order}

  def set_state(self, state: dict) -> None:
    expected = {'version': STATE_VERSION, **self._order}
    mismatched = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if mismatched:
      raise LoaderStateError(
        'The saved Grain loader state belongs to another data order; (saved, now): '
        f'{mismatched}. Resume with the config it was saved with.'
      )
    self._next_step = int(state['next_step'])
    self._it = None  # Restarts at the restored step on the next `next`.

  def close(self) -> None:
    self._it = None


def _order_fingerprint(spec: DataSpec, plan: samplers.Sampling, total: int) -> dict:
  return {
    'dataset': spec.name,
    'split': spec.train_split,
    'seed': int(spec.seed),
    'stream': [int(plan.stream), int(plan.streams)],
    'process_index': int(spec.process_index),
    'share_size': int(total),
    'local_batch': int(plan.local_batch),
  }


def _read_train_steps(spec: DataSpec, r: Recipe, fixed: bool, host_resize):
  """(the Grain map of a step to its examples, the sampling plan, the share's record count)."""
  source, info = _source(spec, spec.train_split)
  plan = samplers.sampling(spec, info)
  records = plan.records()
  read = _ReadTrainStep(
    source,
    records,
    plan.example_sampler(r.balanced, spec.seed),
    plan.stream_batch,
    plan.first,
    plan.local_batch,
    f'{spec.name}/{spec.train_split}',
    None if fixed else host_resize,
  )
  return read, plan, len(records)


def train_batches(
  spec: DataSpec,
  *,
  start_step: int = 0,
  threads: int = 2,
  workers: int = 0,
  fixed_shape: bool | None = None,
) -> TrainBatches:
  """The training stream of `spec` over ArrayRecord files (as `pipeline.train_dataset`).

  `spec.shuffle_buffer` is unused: every epoch is a full permutation. `threads`: Grain's reader
  threads in this process; `workers`: Grain worker processes (0: none), which each read and
  decode whole batches. `spec.prefetch`: batches read ahead per thread. `fixed_shape`: whether
  the split's images share one shape (None: by dataset, `FIXED_SHAPE`).
  """
  r = spec.resolved_recipe
  params = device_augment.RecipeParams.of(r)
  image_size = spec.image_size
  fixed = _fixed_shape(spec.name, fixed_shape)
  canvas = params.canvas_size(image_size)
  host_resize = functools.partial(_on_canvas, r=r, image_size=image_size, canvas=canvas)
  read, plan, total = _read_train_steps(spec, r, fixed, host_resize)
  dataset = grain.MapDataset.range(_MAX_STEPS).map(read)
  read_options = grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=spec.prefetch)
  # The batches of one-shape images carry no 'size'; the canvases do.
  finish = functools.partial(
    device_augment.augment_local_batch,
    per_device=spec.per_device,
    aug_seed=plan.aug_seed,
    r=params,
    image_size=image_size,
  )

  order = _order_fingerprint(spec, plan, total)
  batches = TrainBatches(dataset, read_options, workers, finish, order)
  batches.set_state({**batches.get_state(), 'next_step': int(start_step)})
  logging.info(
    'Grain loader: %s/%s from ArrayRecord, %d examples in this process, %d reader thread(s), '
    '%d worker process(es); augmentation on the devices%s.',
    spec.name,
    spec.train_split,
    total,
    max(1, threads),
    workers,
    '' if fixed else f' after a host resize onto a {canvas}x{canvas} canvas',
  )
  return batches


def train_order(spec: DataSpec, steps: int) -> np.ndarray:
  """Record indices [steps, local_batch] that `train_batches` reads (process_split='examples')."""
  _, info = registry.load(spec.name, spec.data_dir, spec.classes)
  plan = samplers.sampling(spec, info)
  records = plan.records()
  sampler = plan.example_sampler(spec.resolved_recipe.balanced, spec.seed)
  return np.stack([records[sampler.indices(s, plan.local_batch)] for s in range(steps)])


class _EvalBatches:
  """Re-iterable padded evaluation batches, with Grain reading the (host) batches ahead."""

  def __init__(self, read, num_batches: int, read_options, prepare, per_device):
    self._read, self._num_batches = read, num_batches
    self._read_options, self._prepare, self._per_device = read_options, prepare, per_device

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self):
    ds = grain.MapDataset.range(self._num_batches).map(self._read)
    for b in ds.to_iter_dataset(self._read_options):
      mask = self._per_device(b['mask'])
      yield {
        'image': self._prepare(self._per_device(b['image']), mask),
        'label': self._per_device(b['label']),
        'mask': mask,
      }


class _ReadEvalBatch:
  """Grain's map: an eval batch number -> its examples, zero-padded past the share's end."""

  def __init__(self, source, lo: int, hi: int, local_batch: int, shape, where: str, resize=None):
    self.source, self.lo, self.hi, self.local_batch = source, lo, hi, local_batch
    self.shape, self.where, self.resize = shape, where, resize

  def __call__(self, b: int) -> dict:
    start = self.lo + int(b) * self.local_batch
    end = min(start + self.local_batch, self.hi)
    n = max(0, end - start)
    images = np.zeros((self.local_batch, *self.shape), np.uint8)
    labels = np.zeros(self.local_batch, np.int32)
    if n:
      examples = self.source.__getitems__(list(range(start, end)))
      if self.resize is not None:
        examples = [{**e, 'image': self.resize(np.asarray(e['image']))} for e in examples]
      images[:n] = _stack_images(examples, self.where)
      labels[:n] = [int(e['label']) for e in examples]
    return {'image': images, 'label': labels, 'mask': np.arange(self.local_batch) < n}


def _first_shape(source, where: str) -> tuple[int, ...]:
  return _stack_images([source[0]], where).shape[1:]


def eval_batches(spec: DataSpec, *, threads: int = 2, fixed_shape: bool | None = None):
  """Every example of `spec.eval_split` exactly once, padded to whole batches, with a validity
  mask (contract as `pipeline.eval_dataset`); re-iterable."""
  r = spec.resolved_recipe
  split, image_size = spec.eval_split, spec.image_size
  source, info = _source(spec, split)
  n = info.split_sizes[split]
  lo, hi = samplers.host_range(0, n, spec.process_index, spec.process_count)
  local_batch = spec.eval_local_batch
  num_batches = samplers.eval_num_batches(n, local_batch, spec.process_count)
  where = f'{spec.name}/{split}'
  if _fixed_shape(spec.name, fixed_shape):
    read = _ReadEvalBatch(source, lo, hi, local_batch, _first_shape(source, where), where)
  else:
    resize = functools.partial(_eval_resized, r=r, image_size=image_size)
    shape = (image_size, image_size, 3)
    read = _ReadEvalBatch(source, lo, hi, local_batch, shape, where, resize)
  read_options = grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=spec.prefetch)
  per_device = functools.partial(spec.per_device, evaluation=True)
  return _EvalBatches(read, num_batches, read_options, _eval_step(r, image_size), per_device)


def statistics_batches(
  spec: DataSpec, num_batches: int, *, threads: int = 2, fixed_shape: bool | None = None
):
  """`num_batches` training batches, sampled as training samples them and preprocessed as
  evaluation does, for precise BatchNorm (as `pipeline.statistics_dataset`): {'image'} only."""
  r = spec.resolved_recipe
  resize = functools.partial(_eval_with_size, r=r, image_size=spec.image_size)
  read, _, _ = _read_train_steps(spec, r, _fixed_shape(spec.name, fixed_shape), resize)
  prepare = _eval_step(r, spec.image_size)
  ds = grain.MapDataset.range(num_batches).map(read)
  options = grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=2)
  mask = np.ones((spec.num_local_devices, spec.per_device_batch), bool)
  for b in ds.to_iter_dataset(options):
    yield {'image': prepare(spec.per_device(b['image']), mask)}
