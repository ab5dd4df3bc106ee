"""The training loop: prepare data, build or resume the state, train, evaluate, checkpoint, export.

`train_and_evaluate(config, workdir)` is the library entry point: it checks the config, then
trains. zenfer_jax.main checks the config itself, before its log file opens (so a bad value is
the terminal's one line), and calls `train_validated`, so a run checks its config once.

Rerunning with the same workdir resumes from its latest checkpoint; the data order and
every random draw are functions of (seed, step), so a resumed run ends exactly where an
uninterrupted one does.

The run's parts (restore or init, one epoch, evaluate, save, finish) are functions of their own,
so each can be read and changed alone: what they share is passed in a `_Job` (fixed once the data
and model are known) and a `_Run` (what changes as it trains), not held in closures.
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
from jax.experimental import multihost_utils
from tqdm import tqdm

from zenfer_jax import atomic_write, data, dataset_names, errors
from zenfer_jax.config.validation import ConfigError, class_list, validate_config
from zenfer_jax.data import recipes
from zenfer_jax.data import spec as data_spec
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory, workdir_lock
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.rundir.event_writer import EventWriter
from zenfer_jax.training import (
  distill,
  init,
  loop_timing,
  metrics,
  optim,
  parallel,
  precise_bn,
  steps,
)
from zenfer_jax.training import train_state as ts

# Per-class test accuracy goes to TensorBoard for up to this many classes (metrics.jsonl always
# has it): a face-identity pretraining's thousands of curves would bury the rest.
PER_CLASS_SCALARS_MAX = 100
# Evaluation sums a confusion matrix up to this many classes, per-class counts beyond.
CONFUSION_MAX = 256
# Which arrays config.init_from gave and which started fresh (zenfer_jax.training.init).
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

  A config that cannot work raises `ConfigError` before anything is read or written.
  """
  validate_config(config, jax.device_count())
  return train_validated(config, workdir)


def train_validated(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`train_and_evaluate` for a config that `validate_config` has passed (see the module doc).

  The run holds the workdir's lock throughout (see `zenfer_jax.rundir.workdir_lock`): a second run
  on the same workdir stops at once instead of mixing its checkpoints and metrics into this one's.
  """
  if not str(workdir).strip():
    raise ConfigError("workdir is empty: name the directory for this run's checkpoints.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with (
    workdir_lock.hold(workdir, 'training run')
    if jax.process_index() == 0
    else contextlib.nullcontext()
  ):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  os.makedirs(workdir, exist_ok=True)
  job = _job(config, workdir)
  lr_fn = job.sched.lr_fn(config)
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state, book, meta = _restore_or_init(job, init_rng, lr_fn)
  run = _start(job, state, book, meta, lr_fn, step_rng)
  first_epoch = run.start_step // job.sched.steps_per_epoch + 1
  for epoch in range(first_epoch, config.num_epochs + 1):
    _train_epoch(run, epoch)
    _end_epoch(run, epoch)
  return _finish(run)


@dataclasses.dataclass(frozen=True)
class _Job:
  """What a run is fixed to once its data and model are known; every part below reads it."""

  config: ml_collections.ConfigDict
  workdir: str
  is_chief: bool
  info: data.DatasetInfo
  sched: Schedule
  model: zennet.ZenNet
  card: dict
  ckpts: workdir_lib.Checkpoints
  teacher: distill.Teacher | None = None

  @property
  def num_classes(self) -> int:
    return self.info.num_classes

  @property
  def confusion(self) -> bool:
    """Thousands of classes (identities) get per-class counts instead of a confusion matrix."""
    return self.num_classes <= CONFUSION_MAX


def _job(config: ml_collections.ConfigDict, workdir: str) -> _Job:
  info = prepare_data(config)
  sched = Schedule.from_config(config, info.split_sizes[config.data.train_split])
  model = init.build_model(config, info.num_classes)
  logging.info(
    '%s: %d classes %s, %d training images; %d steps/epoch x %d epochs, global batch '
    '%d on %d devices, lr %.4g',
    info.name,
    info.num_classes,
    dataset_names.class_summary(info.class_names),
    sched.num_train,
    sched.steps_per_epoch,
    config.num_epochs,
    sched.global_batch,
    jax.device_count(),
    sched.lr,
  )
  teacher = distill.load_teacher(config, info.num_classes, info.class_names)
  card = model_card(config, model, info)
  if teacher is not None:
    card['distillation'] = {
      **teacher.describe(),
      'weight': config.distill_weight,
      'temperature': config.distill_temperature,
    }
  return _Job(
    config,
    workdir,
    jax.process_index() == 0,
    info,
    sched,
    model,
    card,
    workdir_lib.Checkpoints(workdir),
    teacher,
  )


def _restore_or_init(
  job: _Job, init_rng: jax.Array, lr_fn
) -> tuple[ts.TrainState, Bookkeeping, dict | None]:
  """The state to start from, its bookkeeping and the checkpoint's meta (None: a fresh run).

  Nothing is written to the workdir before a checkpoint found there is known to fit this config.
  """
  config, model = job.config, job.model
  restored = job.ckpts.restore('latest')
  # A resumed run takes its weights from the checkpoint, never from init_from.
  init_report: dict = {}  # What init_from gave: WORKDIR/init_from.json.
  variables = (
    init.placeholder_variables(config, model)
    if restored is not None
    else init.initial_variables(config, model, init_rng, init_report)
  )
  teacher = job.teacher.variables if job.teacher is not None else None
  state = ts.create_train_state(config, model, variables, lr_fn, teacher=teacher)
  book, meta = Bookkeeping(), None
  if restored is not None:
    state, book = _resume(job, state, *restored)
    meta = restored[1]
  if job.is_chief:
    atomic_write.write_json(os.path.join(job.workdir, workdir_lib.CONFIG), config.to_dict())
    atomic_write.write_json(os.path.join(job.workdir, model_directory.CARD_NAME), job.card)
    if init_report:
      atomic_write.write_json(os.path.join(job.workdir, INIT_REPORT), init_report)
  logging.info('Model %s: %d parameters.', model.structure_text, zennet.count_params(state.params))
  return state, book, meta


def _resume(
  job: _Job, state: ts.TrainState, tree: dict, meta: dict
) -> tuple[ts.TrainState, Bookkeeping]:
  """`state` and the loop's bookkeeping from a checkpoint that fits; later metrics dropped."""
  workdir = job.workdir
  checkpoint = os.path.join(workdir, workdir_lib.LATEST, str(int(tree['step'])))
  ts.check_resumable(state, tree, job.card, workdir=workdir, checkpoint=checkpoint)
  if job.ckpts.damaged:  # Out of the way, so the steps they held are saved again.
    job.ckpts.set_aside_damaged(move=job.is_chief)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('zenfer_jax: damaged checkpoints set aside')
      job.ckpts.set_aside_damaged(move=False)
  state = ts.from_state_dict(state, tree)
  book = Bookkeeping(**meta['book'])
  if job.is_chief:
    workdir_lib.truncate_metrics(workdir, int(state.step))
  logging.info(
    'Resuming from step %d of %d (%s).',
    int(state.step),
    job.sched.total_steps,
    os.path.join(workdir, workdir_lib.LATEST),
  )
  return state, book


def _input_pipeline(job: _Job, start_step: int):
  """(train batches from `start_step`, eval batches, precise BN's hook): every pipeline call."""
  config, d = job.config, job.config.data
  spec = data_spec.from_config(config)
  grain = d.get('loader', 'tf.data') == 'grain'
  if grain:  # No TensorFlow on this path (zenfer_jax/data/grain_pipeline.py).
    from zenfer_jax.data import grain_pipeline  # Here: only a Grain run pays for importing Grain.

    loader_kw = dict(threads=d.grain_threads, workers=d.grain_workers)
    train_batches = functools.partial(grain_pipeline.train_batches, **loader_kw)
    eval_dataset = functools.partial(grain_pipeline.eval_batches, threads=d.grain_threads)
  else:  # Imported here: device_pipeline imports TensorFlow, which a Grain run must not.
    from zenfer_jax.data import device_pipeline

    on_device = d.get('augment_on', 'host') == 'device'
    train_batches = device_pipeline.train_batches if on_device else data.pipeline.train_dataset
    eval_dataset = data.pipeline.eval_dataset
  train_iter = train_batches(spec, start_step=start_step)
  eval_batches = eval_dataset(spec)
  precise = precise_bn.for_training(config, job.model.apply, job.sched.num_train, spec)
  return train_iter, eval_batches, precise


def _restore_loader(train_iter, meta: dict | None, start_step: int) -> None:
  """Puts a loader that keeps its own position (Grain) where the checkpoint left it."""
  if meta is None or not meta.get('loader') or not hasattr(train_iter, 'set_state'):
    return
  train_iter.set_state(meta['loader'])  # Checks it is this run's order and step.
  if train_iter.get_state()['next_step'] != start_step:
    raise ValueError(
      f'The checkpoint at step {start_step} saved the loader at step '
      f'{train_iter.get_state()["next_step"]}: the checkpoint is inconsistent.'
    )


def _compile_steps(job: _Job, lr_fn):
  """The pmapped train and eval steps (compiled on their first call)."""
  config = job.config
  p_train = parallel.pmap_train_step(
    functools.partial(
      steps.train_step,
      num_classes=job.num_classes,
      label_smoothing=config.label_smoothing,
      mixup_alpha=config.mixup_alpha,
      learning_rate_fn=lr_fn,
      ema_decay=config.get('ema_decay', 0.0),
      **(
        {
          'teacher_apply_fn': job.teacher.model.apply,
          'distill_weight': config.distill_weight,
          'distill_temperature': config.distill_temperature,
        }
        if job.teacher is not None
        else {}
      ),
    )
  )
  p_eval = parallel.pmap_eval_step(
    functools.partial(
      steps.eval_step if job.confusion else steps.eval_counts_step,
      apply_fn=job.model.apply,
      num_classes=job.num_classes,
    )
  )
  return p_train, p_eval


def _metric_writer(job: _Job, start_step: int):
  if job.config.data.get('loader', 'tf.data') == 'grain':
    writer = EventWriter(job.workdir, just_logging=not job.is_chief)
  else:
    from clu import metric_writers  # Here: it imports TensorFlow (a Grain run must not).

    writer = metric_writers.create_default_writer(job.workdir, just_logging=not job.is_chief)
  if start_step == 0:
    writer.write_hparams(traverse_util.flatten_dict(job.config.to_dict(), sep='.'))
  return writer


@dataclasses.dataclass
class _Run:
  """A run's moving parts and running state, handed to each part of the loop (no closures)."""

  job: _Job
  train_iter: Any
  eval_batches: Any
  p_train: Any
  p_eval: Any
  precise: Any  # Eval variables -> the same with recomputed BatchNorm statistics, or None.
  writer: Any
  step_rng: jax.Array
  state: ts.TrainState  # Replicated over the local devices.
  book: Bookkeeping
  start_step: int
  last_saved: int | None  # The newest checkpoint's step: a non-finite loss names it.
  progress: _Progress
  timer: loop_timing.LoopTimer
  pending: list = dataclasses.field(default_factory=list)  # Step metrics not fetched yet.
  pending_from: int = 0  # The step the first of them ended.
  images_seen: int = 0  # By this call (a resumed run counts from its start).
  last_eval: dict | None = None
  t0: float = dataclasses.field(default_factory=time.time)


def _start(job: _Job, state, book: Bookkeeping, meta: dict | None, lr_fn, step_rng) -> _Run:
  start_step = int(state.step)
  train_iter, eval_batches, precise = _input_pipeline(job, start_step)
  _restore_loader(train_iter, meta, start_step)
  p_train, p_eval = _compile_steps(job, lr_fn)
  writer = _metric_writer(job, start_step)
  state = parallel.replicate(state)
  sched = job.sched
  progress = _Progress(
    job.config.progress_bar,
    sched.total_steps * sched.global_batch,
    start_step * sched.global_batch,
  )
  return _Run(
    job,
    train_iter,
    eval_batches,
    p_train,
    p_eval,
    precise,
    writer,
    step_rng,
    state,
    book,
    start_step,
    last_saved=start_step if meta is not None else None,
    progress=progress,
    timer=loop_timing.LoopTimer(start_step),
    pending_from=start_step,
  )


def _train_epoch(run: _Run, epoch: int) -> None:
  """The steps of `epoch` still to run, logging and checkpointing as configured on the way."""
  config, sched = run.job.config, run.job.sched
  end = epoch * sched.steps_per_epoch
  for step in range(max(run.start_step, end - sched.steps_per_epoch), end):
    with run.timer.phase('input_wait'):
      batch = next(run.train_iter)
    run.state, step_metrics = run.p_train(run.state, batch, run.step_rng)
    run.pending.append(step_metrics)
    run.images_seen += sched.global_batch
    done = step + 1
    if done % config.log_every_steps == 0:
      _log_train(run, done)
    run.progress.update(sched.global_batch)
    every = config.checkpoint_every_steps
    if done < end and every and done % every == 0:  # The epoch's end saves in _end_epoch.
      _flush(run)
      _save(run, done)


def _flush(run: _Run) -> list[dict]:
  """Fetches the steps since the last flush, checks them and adds them to the epoch sums."""
  fetched = [parallel.unreplicate_to_host(m) for m in run.pending]
  _check_finite(fetched, run.pending_from, run.last_saved, run.job.workdir)
  for m in fetched:
    run.book.epoch_loss_sum += float(m['loss'])
    run.book.epoch_accuracy_sum += float(m['accuracy'])
    run.book.epoch_steps += 1
  run.pending_from += len(run.pending)
  run.pending = []
  return fetched


def _log_train(run: _Run, done: int) -> None:
  fetched = _flush(run)
  run.timer.mark(done)
  loss = float(np.mean([m['loss'] for m in fetched]))
  scalars = {
    'train/loss': loss,
    'train/accuracy': float(np.mean([m['accuracy'] for m in fetched])),
    'train/learning_rate': float(fetched[-1]['learning_rate']),
  }
  if 'distill_loss' in fetched[-1]:
    scalars['train/distill_loss'] = float(np.mean([m['distill_loss'] for m in fetched]))
  rate = run.timer.rate_since_last(done, run.job.sched.global_batch)
  if rate is not None:
    scalars['train/images_per_second'] = rate
  run.writer.write_scalars(done, scalars)
  run.progress.update(0, loss=f'{loss:.4f}')


def _end_epoch(run: _Run, epoch: int) -> None:
  """The epoch's means, its evaluation when one is due, and the checkpoint to resume from."""
  config, book = run.job.config, run.book
  done = epoch * run.job.sched.steps_per_epoch
  _flush(run)
  train_loss = book.epoch_loss_sum / max(book.epoch_steps, 1)
  train_acc = book.epoch_accuracy_sum / max(book.epoch_steps, 1)
  book.epoch_loss_sum, book.epoch_accuracy_sum, book.epoch_steps = 0.0, 0.0, 0
  scalars = {'train/epoch_loss': train_loss, 'train/epoch_accuracy': train_acc}
  if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
    scalars.update(_evaluate(run, epoch, done, train_loss, train_acc))
  run.writer.write_scalars(done, scalars)
  run.writer.flush()
  _save(run, done)


def _evaluate(run: _Run, epoch: int, done: int, train_loss: float, train_acc: float) -> dict:
  """Evaluates, records the epoch and keeps the best variables; returns the test scalars."""
  job, book = run.job, run.book
  variables = ts.eval_variables(run.state)
  with run.timer.phase('eval'):
    if run.precise is not None:  # Also what the best checkpoint and the export hold.
      variables = run.precise(variables)
    cm = steps.evaluate_split(run.p_eval, variables, run.eval_batches, job.num_classes)
  summarize = metrics.summarize if job.confusion else metrics.summarize_counts
  run.last_eval = last_eval = summarize(cm, job.info.class_names)
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
  if job.is_chief:
    workdir_lib.append_metrics(job.workdir, record)
  scalars = {
    'test/top1': last_eval['top1'],
    'test/mean_class_accuracy': last_eval['mean_class_accuracy'],
  }
  if job.num_classes <= PER_CLASS_SCALARS_MAX:  # Not one curve per identity of VGGFace2.
    scalars.update(
      {f'test/accuracy/{k}': v for k, v in last_eval['per_class_accuracy'].items() if v is not None}
    )
  logging.info(
    'epoch %d/%d step %d: train loss %.4f acc %.4f | test top-1 %.4f mean-class %.4f',
    epoch,
    job.config.num_epochs,
    done,
    train_loss,
    train_acc,
    last_eval['top1'],
    last_eval['mean_class_accuracy'],
  )
  if last_eval['top1'] > book.best_top1:
    book.best_top1, book.best_epoch, book.best_step = last_eval['top1'], epoch, done
    with run.timer.phase('checkpoint'):
      job.ckpts.save_best(done, parallel.unreplicate_to_host(variables), dict(record))
  return scalars


def _save(run: _Run, step: int) -> None:
  """The latest checkpoint: train state, bookkeeping and (Grain) the loader's position."""
  with run.timer.phase('checkpoint'):
    host_state = ts.to_state_dict(parallel.unreplicate_to_host(run.state))
    meta = {'book': dataclasses.asdict(run.book)}
    if hasattr(run.train_iter, 'get_state'):  # Grain: the loader's position, restored on resume.
      meta['loader'] = run.train_iter.get_state()
    run.job.ckpts.save_latest(step, host_state, meta)
  run.last_saved = step


def _finish(run: _Run) -> dict:
  """Closes the run: exports the best model, writes summary.json and timing.json."""
  job = run.job
  run.progress.close()
  run.writer.flush()
  jax.effects_barrier()
  if run.last_eval is None:  # Resumed after the last evaluation: report the recorded one.
    records = workdir_lib.read_metrics(job.workdir)
    if records:
      run.last_eval = {
        'top1': records[-1]['test_top1'],
        'mean_class_accuracy': records[-1]['test_mean_class_accuracy'],
      }
  summary = _export_and_report(run, time.time() - run.t0)
  job.ckpts.close()
  if job.is_chief:
    timing = run.timer.summary(max(run.start_step, job.sched.total_steps), job.sched.global_batch)
    atomic_write.write_json(os.path.join(job.workdir, 'timing.json'), timing)
  return summary


def _export_and_report(run: _Run, seconds: float) -> dict:
  """Exports the best model dir and logs the run's summary."""
  job, book, last_eval, images_seen = run.job, run.book, run.last_eval, run.images_seen
  best = job.ckpts.restore('best')
  export = os.path.join(job.workdir, workdir_lib.MODEL_BEST)
  if best is not None and job.is_chief:
    with workdir_lib.quiet():
      model_directory.save_model_dir(export, best[0], job.card, overwrite=True)
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
  if job.is_chief:
    atomic_write.write_json(os.path.join(job.workdir, 'summary.json'), summary)
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
