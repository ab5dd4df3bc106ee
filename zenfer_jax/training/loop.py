"""The training loop: prepare data, build or resume the state, train, evaluate, checkpoint, export.

`train_and_evaluate(config, workdir)` is the whole library entry point (main.py only parses
flags). Rerunning with the same workdir resumes from its latest checkpoint; the data order and
every random draw are functions of (seed, step), so a resumed run ends exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from zenfer_jax import atomic_write, data, dataset_names, errors
from zenfer_jax.config.validation import ConfigError, class_list, validate_config
from zenfer_jax.data import recipes
from zenfer_jax.data import spec as data_spec
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory, workdir_lock
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import loop_timing, metrics, optim, parallel, precise_bn, steps
from zenfer_jax.training import train_state as ts

# Per-class test accuracy goes to TensorBoard for up to this many classes (metrics.jsonl always
# has it): a face-identity pretraining's thousands of curves would bury the rest.
PER_CLASS_SCALARS_MAX = 100
# Evaluation sums a confusion matrix up to this many classes, per-class counts beyond.
CONFUSION_MAX = 256
# Which arrays config.init_from gave and which started fresh (zenfer_jax.training.train_state).
INIT_REPORT = 'init_from.json'


class NonFiniteLossError(FloatingPointError, errors.UserError):
  """The loss became NaN or infinite; no checkpoint was written after it."""


def prepare_data(config: ml_collections.ConfigDict) -> data.DatasetInfo:
  """The dataset's info, building its records from config.data.manual_dir when missing."""
  d = config.data
  kwargs = dict(
    manual_dir=os.path.expanduser(d.manual_dir) if d.manual_dir else None,
    classes=class_list(config),
  )
  data_dir = os.path.expanduser(d.data_dir)
  if d.get('loader', 'tf.data') == 'grain':  # Grain reads ArrayRecord files (added if missing).
    kwargs['file_format'] = 'array_record'
  try:
    if jax.process_index() == 0:  # One builder on a shared file system; then the others.
      info = data.prepare_dataset(d.name, data_dir, **kwargs)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices('zenfer_jax: dataset prepared')
    if jax.process_index() != 0:
      info = data.prepare_dataset(d.name, data_dir, **kwargs)
  except FileNotFoundError as e:
    raise FileNotFoundError(
      f'{e}\nPoint --config.data.manual_dir at the raw {d.name} files (see the layout above); '
      f'the TFDS records are then written once under {data_dir}.'
    ) from None
  for key in ('train_split', 'eval_split'):
    if d[key] not in info.split_sizes:
      raise ValueError(
        f'config.data.{key}={d[key]!r}: {d.name} has the splits {sorted(info.split_sizes)}.'
      )
  return info


def model_card(config: ml_collections.ConfigDict, model, info: data.DatasetInfo) -> dict:
  return model_directory.make_card(
    model.structure_text,
    info.num_classes,
    use_sa=config.model.use_sa,
    use_lw_att=config.model.use_lw_att,
    class_names=info.class_names,
    image_size=config.data.image_size,
    recipe=config.data.recipe or recipes.default_recipe(config.data.name),
    source=f'zenfer_jax.training.loop on {config.data.name}',
  )


@dataclasses.dataclass
class Bookkeeping:
  """Loop state saved beside the train state: best result so far and the epoch's running sums."""

  best_top1: float = -1.0
  best_epoch: int = 0
  best_step: int = 0
  epoch_loss_sum: float = 0.0
  epoch_accuracy_sum: float = 0.0
  epoch_steps: int = 0


@dataclasses.dataclass
class Schedule:
  """The run's step arithmetic."""

  num_train: int
  global_batch: int
  steps_per_epoch: int
  total_steps: int
  lr: float
  target_lr: float

  @classmethod
  def from_config(cls, config, num_train: int) -> Schedule:
    spe = optim.steps_per_epoch(num_train, config.batch_size, config.steps_per_epoch)
    return cls(
      num_train,
      config.batch_size,
      spe,
      spe * config.num_epochs,
      config.lr_per_256 * config.batch_size / 256.0,
      config.target_lr_per_256 * config.batch_size / 256.0,
    )

  def lr_fn(self, config):
    return optim.learning_rate_fn(
      lr=self.lr,
      target_lr=self.target_lr,
      num_train=self.num_train,
      num_epochs=config.num_epochs,
      warmup_epochs=config.warmup_epochs,
      steps_per_epoch=self.steps_per_epoch,
      global_batch=self.global_batch,
    )


class _Progress:
  """A tqdm bar in images with rate and ETA on process 0; nothing elsewhere."""

  def __init__(self, enabled: bool, total: int, initial: int):
    self.bar = None
    if enabled and jax.process_index() == 0:
      from tqdm import tqdm

      self.bar = tqdm(
        total=total,
        initial=initial,
        unit='img',
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.05,
        desc='train',
      )

  def update(self, n: int, **postfix):
    if self.bar is not None:
      self.bar.update(n)
      if postfix:
        self.bar.set_postfix(postfix, refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _check_finite(
  step_metrics: list[dict], first_step: int, last_saved: int | None, workdir: str
) -> None:
  for i, m in enumerate(step_metrics):
    if not (math.isfinite(float(m['loss'])) and math.isfinite(float(m['grad_norm']))):
      where = (
        f'the last good checkpoint (step {last_saved}) in {workdir} is untouched'
        if last_saved is not None
        else 'no checkpoint had been written yet'
      )
      raise NonFiniteLossError(
        f'The training loss is {float(m["loss"])} (gradient norm {float(m["grad_norm"])}) at '
        f'step {first_step + i + 1} '
        f'(learning rate {float(m["learning_rate"]):.4g}); stopping, and {where}. '
        'Lower lr_per_256, check the data, or use model.dtype=float32.'
      )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary.

  The run holds the workdir's lock throughout (see `zenfer_jax.rundir.workdir_lock`): a second run
  on the same workdir stops at once instead of mixing its checkpoints and metrics into this one's.
  """
  if not str(workdir).strip():
    raise ConfigError("workdir is empty: name the directory for this run's checkpoints.")
  validate_config(config, jax.device_count())
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with (
    workdir_lock.hold(workdir, 'training run')
    if jax.process_index() == 0
    else contextlib.nullcontext()
  ):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  info = prepare_data(config)
  num_classes = info.num_classes
  sched = Schedule.from_config(config, info.split_sizes[config.data.train_split])
  lr_fn = sched.lr_fn(config)
  model = ts.build_model(config, num_classes)
  card = model_card(config, model, info)
  logging.info(
    '%s: %d classes %s, %d training images; %d steps/epoch x %d epochs, global batch '
    '%d on %d devices, lr %.4g',
    info.name,
    num_classes,
    dataset_names.class_summary(info.class_names),
    sched.num_train,
    sched.steps_per_epoch,
    config.num_epochs,
    sched.global_batch,
    jax.device_count(),
    sched.lr,
  )

  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  ckpts = workdir_lib.Checkpoints(workdir)
  restored = ckpts.restore('latest')
  # A resumed run takes its weights from the checkpoint, never from init_from.
  init_report: dict = {}  # What init_from gave: WORKDIR/init_from.json.
  variables = (
    ts.placeholder_variables(config, model)
    if restored is not None
    else ts.initial_variables(config, model, init_rng, init_report)
  )
  state = ts.create_train_state(config, model, variables, lr_fn)
  book = Bookkeeping()
  if restored is not None:
    checkpoint = os.path.join(workdir, workdir_lib.LATEST, str(int(restored[0]['step'])))
    ts.check_resumable(state, restored[0], card, workdir=workdir, checkpoint=checkpoint)
    if ckpts.damaged:  # Out of the way, so the steps they held are saved again.
      ckpts.set_aside_damaged(move=is_chief)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('zenfer_jax: damaged checkpoints set aside')
        ckpts.set_aside_damaged(move=False)
    state = ts.from_state_dict(state, restored[0])
    book = Bookkeeping(**restored[1]['book'])
    if is_chief:
      workdir_lib.truncate_metrics(workdir, int(state.step))
    logging.info(
      'Resuming from step %d of %d (%s).',
      int(state.step),
      sched.total_steps,
      os.path.join(workdir, workdir_lib.LATEST),
    )
  if is_chief:
    atomic_write.write_json(os.path.join(workdir, workdir_lib.CONFIG), config.to_dict())
    atomic_write.write_json(os.path.join(workdir, model_directory.CARD_NAME), card)
    if init_report:
      atomic_write.write_json(os.path.join(workdir, INIT_REPORT), init_report)
  start_step = int(state.step)
  last_saved = start_step if restored is not None else None
  logging.info('Model %s: %d parameters.', model.structure_text, zennet.count_params(state.params))

  d = config.data
  spec = data_spec.from_config(config)
  grain = d.get('loader', 'tf.data') == 'grain'
  if grain:  # No TensorFlow on this path (zenfer_jax/data/grain_pipeline.py).
    from zenfer_jax.data import grain_pipeline

    loader_kw = dict(threads=d.grain_threads, workers=d.grain_workers)
    train_batches = functools.partial(grain_pipeline.train_batches, **loader_kw)
    eval_dataset = functools.partial(grain_pipeline.eval_batches, threads=d.grain_threads)
  else:
    from zenfer_jax.data import device_pipeline

    on_device = d.get('augment_on', 'host') == 'device'
    train_batches = device_pipeline.train_batches if on_device else data.pipeline.train_dataset
    eval_dataset = data.pipeline.eval_dataset
  train_iter = train_batches(spec, start_step=start_step)
  if restored is not None and restored[1].get('loader') and hasattr(train_iter, 'set_state'):
    train_iter.set_state(restored[1]['loader'])  # Checks it is this run's order and step.
    if train_iter.get_state()['next_step'] != start_step:
      raise ValueError(
        f'The checkpoint at step {start_step} saved the loader at step '
        f'{train_iter.get_state()["next_step"]}: the checkpoint is inconsistent.'
      )
  eval_batches = eval_dataset(spec)

  p_train = parallel.pmap_train_step(
    functools.partial(
      steps.train_step,
      num_classes=num_classes,
      label_smoothing=config.label_smoothing,
      mixup_alpha=config.mixup_alpha,
      learning_rate_fn=lr_fn,
    )
  )
  # Thousands of classes (identities): per-class counts instead of a confusion matrix.
  confusion = num_classes <= CONFUSION_MAX
  p_eval = parallel.pmap_eval_step(
    functools.partial(
      steps.eval_step if confusion else steps.eval_counts_step,
      apply_fn=model.apply,
      num_classes=num_classes,
    )
  )
  precise = precise_bn.for_training(config, model.apply, sched.num_train, spec)
  if grain:  # clu's writers import TensorFlow.
    from zenfer_jax.rundir.event_writer import EventWriter

    writer = EventWriter(workdir, just_logging=not is_chief)
  else:
    from clu import metric_writers

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  if start_step == 0:
    writer.write_hparams(traverse_util.flatten_dict(config.to_dict(), sep='.'))

  state = parallel.replicate(state)
  pending: list = []
  pending_from = start_step
  progress = _Progress(
    config.progress_bar, sched.total_steps * sched.global_batch, start_step * sched.global_batch
  )
  t0, images_seen, last_eval = time.time(), 0, None
  timer = loop_timing.LoopTimer(start_step)

  def flush():
    """Fetches the steps since the last flush, checks them and adds them to the epoch sums."""
    nonlocal pending, pending_from
    fetched = [parallel.unreplicate_to_host(m) for m in pending]
    _check_finite(fetched, pending_from, last_saved, workdir)
    for m in fetched:
      book.epoch_loss_sum += float(m['loss'])
      book.epoch_accuracy_sum += float(m['accuracy'])
      book.epoch_steps += 1
    pending_from += len(pending)
    pending = []
    return fetched

  def save(step: int):
    nonlocal last_saved
    host_state = ts.to_state_dict(parallel.unreplicate_to_host(state))
    meta = {'book': dataclasses.asdict(book)}
    if hasattr(train_iter, 'get_state'):  # Grain: the loader's position, restored on resume.
      meta['loader'] = train_iter.get_state()
    ckpts.save_latest(step, host_state, meta)
    last_saved = step

  for step in range(start_step, sched.total_steps):
    with timer.phase('input_wait'):
      batch = next(train_iter)
    state, step_metrics = p_train(state, batch, step_rng)
    pending.append(step_metrics)
    images_seen += sched.global_batch
    done = step + 1
    if done % config.log_every_steps == 0:
      fetched = flush()
      timer.mark(done)
      loss = float(np.mean([m['loss'] for m in fetched]))
      writer.write_scalars(
        done,
        {
          'train/loss': loss,
          'train/accuracy': float(np.mean([m['accuracy'] for m in fetched])),
          'train/learning_rate': float(fetched[-1]['learning_rate']),
          'train/images_per_second': images_seen / (time.time() - t0),
        },
      )
      progress.update(0, loss=f'{loss:.4f}')
    progress.update(sched.global_batch)
    epoch_end = done % sched.steps_per_epoch == 0
    periodic = config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0
    if not (epoch_end or periodic):
      continue
    flush()
    if epoch_end:
      epoch = done // sched.steps_per_epoch
      train_loss = book.epoch_loss_sum / max(book.epoch_steps, 1)
      train_acc = book.epoch_accuracy_sum / max(book.epoch_steps, 1)
      book.epoch_loss_sum, book.epoch_accuracy_sum, book.epoch_steps = 0.0, 0.0, 0
      scalars = {'train/epoch_loss': train_loss, 'train/epoch_accuracy': train_acc}
      if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        with timer.phase('eval'):
          if precise is not None:  # Also what the best checkpoint and the export hold.
            variables = precise(variables)
          cm = steps.evaluate_split(p_eval, variables, eval_batches, num_classes)
        summarize = metrics.summarize if confusion else metrics.summarize_counts
        last_eval = summarize(cm, info.class_names)
        record = {
          'epoch': epoch,
          'step': done,
          'train_loss': train_loss,
          'train_accuracy': train_acc,
          'test_top1': last_eval['top1'],
          'test_mean_class_accuracy': last_eval['mean_class_accuracy'],
          'test_examples': last_eval['num_examples'],
          'per_class_accuracy': last_eval['per_class_accuracy'],
        }
        if is_chief:
          workdir_lib.append_metrics(workdir, record)
        scalars.update(
          {
            'test/top1': last_eval['top1'],
            'test/mean_class_accuracy': last_eval['mean_class_accuracy'],
          }
        )
        if num_classes <= PER_CLASS_SCALARS_MAX:  # Not one curve per identity of VGGFace2.
          scalars.update(
            {
              f'test/accuracy/{k}': v
              for k, v in last_eval['per_class_accuracy'].items()
              if v is not None
            }
          )
        logging.info(
          'epoch %d/%d step %d: train loss %.4f acc %.4f | test top-1 %.4f mean-class %.4f',
          epoch,
          config.num_epochs,
          done,
          train_loss,
          train_acc,
          last_eval['top1'],
          last_eval['mean_class_accuracy'],
        )
        if last_eval['top1'] > book.best_top1:
          book.best_top1, book.best_epoch, book.best_step = last_eval['top1'], epoch, done
          with timer.phase('checkpoint'):
            ckpts.save_best(done, parallel.unreplicate_to_host(variables), dict(record))
      writer.write_scalars(done, scalars)
      writer.flush()
    with timer.phase('checkpoint'):
      save(done)
  progress.close()
  writer.flush()
  jax.effects_barrier()

  if last_eval is None:  # Resumed after the last evaluation: report the recorded one.
    records = workdir_lib.read_metrics(workdir)
    if records:
      last_eval = {
        'top1': records[-1]['test_top1'],
        'mean_class_accuracy': records[-1]['test_mean_class_accuracy'],
      }
  summary = _finish(workdir, ckpts, card, book, last_eval, is_chief, images_seen, time.time() - t0)
  ckpts.close()
  if is_chief:
    timing = timer.summary(max(start_step, sched.total_steps), sched.global_batch)
    atomic_write.write_json(os.path.join(workdir, 'timing.json'), timing)
  return summary


def _finish(workdir, ckpts, card, book, last_eval, is_chief, images_seen, seconds) -> dict:
  """Exports the best model dir and logs the run's summary."""
  best = ckpts.restore('best')
  export = os.path.join(workdir, workdir_lib.MODEL_BEST)
  if best is not None and is_chief:
    with workdir_lib.quiet():
      model_directory.save_model_dir(export, best[0], card, overwrite=True)
  summary = {
    'best_test_top1': book.best_top1 if best is not None else None,
    'best_epoch': book.best_epoch,
    'best_step': book.best_step,
    'final_test_top1': last_eval['top1'] if last_eval else None,
    'final_test_mean_class_accuracy': last_eval['mean_class_accuracy'] if last_eval else None,
    'train_seconds': seconds,
    'images_per_second': images_seen / seconds if seconds > 0 and images_seen else None,
    'model_dir': export if best is not None else None,
  }
  if is_chief:
    atomic_write.write_json(os.path.join(workdir, 'summary.json'), summary)
  took = f'{int(seconds) // 60}m{int(seconds) % 60:02d}s'
  if summary['images_per_second']:
    took += f', {summary["images_per_second"]:.1f} img/s'
  if best is None:
    logging.info('Done (%s); no evaluation ran, so no model was exported.', took)
  else:
    last = (
      f'; last {100 * last_eval["top1"]:.2f}% (mean class {100 * last_eval["mean_class_accuracy"]:.2f}%)'
      if last_eval
      else ''
    )
    logging.info(
      'Done (%s). Best test top-1 %.2f%% at epoch %d%s; exported to %s.',
      took,
      100 * book.best_top1,
      book.best_epoch,
      last,
      export,
    )
  return summary
