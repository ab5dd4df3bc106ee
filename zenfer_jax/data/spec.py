"""What an input pipeline reads and how it batches it: one frozen `DataSpec` per run.

Every loader (tf.data `pipeline`, `device_pipeline`, Grain `grain_pipeline`) takes the same spec
for its training, evaluation and BatchNorm-statistics streams, so a run describes its data once
(`from_config`, from config.data) instead of passing a dozen keywords to each call. What only a
call knows stays an argument of the call: where training resumes (`start_step`), how many
statistics batches to take, and a loader's own knobs (Grain's threads, say).

Free of TensorFlow (the Grain path must not import it) and of JAX until `from_config` asks it
for the devices.
"""

from __future__ import annotations

import dataclasses
import os

from zenfer_jax.data.recipes import Recipe, resolve

__all__ = ['DataSpec', 'from_config']


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A dataset, its preprocessing and this process's part of every batch.

  name, data_dir, classes: the prepared dataset (`registry.load`); classes only for 'folders'
    (names in label order, or 'a,b,c').
  image_size, recipe: the model's input size; the recipe's name or `Recipe` (None: the
    dataset's default).
  per_device_batch, eval_per_device_batch: examples per device in a training and in an
    evaluation batch (None: as in training); batches are shaped [num_local_devices,
    per_device_batch, ...].
  train_split, eval_split: the splits the training and the evaluation streams read.
  seed: the training order and augmentation (evaluation is not random).
  process_index, process_count, process_split: this process among all; 'examples' (each reads
    its share of every class) or 'batches' (each walks the one-process order and keeps its
    slice of each global batch); see `pipeline`'s module docstring.
  shuffle_buffer, prefetch: tf.data's shuffle buffer (examples) and batches read ahead.
  """

  name: str
  data_dir: str
  image_size: int
  per_device_batch: int
  eval_per_device_batch: int | None = None
  num_local_devices: int = 1
  seed: int = 0
  recipe: str | Recipe | None = None
  classes: tuple[str, ...] | None = None
  train_split: str = 'train'
  eval_split: str = 'test'
  process_index: int = 0
  process_count: int = 1
  process_split: str = 'examples'
  shuffle_buffer: int = 16_384
  prefetch: int = 2

  def __post_init__(self):
    if self.eval_per_device_batch is None:
      object.__setattr__(self, 'eval_per_device_batch', self.per_device_batch)
    if isinstance(self.classes, str):  # 'a,b,c', as flags and configs spell it.
      object.__setattr__(self, 'classes', _class_list(self.classes))
    elif self.classes is not None and not isinstance(self.classes, tuple):
      object.__setattr__(self, 'classes', tuple(self.classes))  # Hashable, as a frozen spec is.

  @property
  def resolved_recipe(self) -> Recipe:
    """The `Recipe` itself: the one named, or the dataset's default."""
    return resolve(self.recipe, self.name)

  @property
  def local_batch(self) -> int:
    """Training examples per step in this process."""
    return self.num_local_devices * self.per_device_batch

  @property
  def eval_local_batch(self) -> int:
    """Evaluation examples per batch in this process."""
    return self.num_local_devices * self.eval_per_device_batch

  def per_device(self, x, evaluation: bool = False):
    """A NumPy or JAX [local batch, ...] -> [num_local_devices, per-device batch, ...]."""
    per = self.eval_per_device_batch if evaluation else self.per_device_batch
    return x.reshape(self.num_local_devices, per, *x.shape[1:])


def _class_list(text: str) -> tuple[str, ...] | None:
  names = tuple(c.strip() for c in (text or '').split(',') if c.strip())
  return names or None


def from_config(
  config,
  *,
  num_local_devices: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  device_count: int | None = None,
) -> DataSpec:
  """The run's `DataSpec` from config.data, config.batch_size, config.eval_batch_size and
  config.seed; the devices and processes are JAX's unless given."""
  if None in (num_local_devices, process_index, process_count, device_count):
    import jax

    num_local_devices = jax.local_device_count() if num_local_devices is None else num_local_devices
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    device_count = jax.device_count() if device_count is None else device_count
  d = config.data
  return DataSpec(
    name=d.name,
    data_dir=os.path.expanduser(d.data_dir),
    image_size=d.image_size,
    per_device_batch=config.batch_size // device_count,
    eval_per_device_batch=config.eval_batch_size // device_count,
    num_local_devices=num_local_devices,
    seed=config.seed,
    recipe=d.recipe or None,
    classes=_class_list(d.classes),
    train_split=d.train_split,
    eval_split=d.eval_split,
    process_index=process_index,
    process_count=process_count,
    process_split=d.get('process_split', 'examples'),
    shuffle_buffer=d.shuffle_buffer,
  )
