"""What the two sides of benchmarks.train_parity feed and schedule, measured side by side.

  python -m benchmarks.parity_inputs --fer_dir /data/fer2013 \
      --out benchmarks/results/parity_inputs_fer2013.json

benchmarks.train_parity trains one ZenNet-R-SA from one init with the JAX recipe and with a
PyTorch loop; on a 7k FER2013 subset the JAX side ended 1-3 points lower with a higher train
loss at every late epoch. This script measures, cheaply and without training for long, every
input the two sides could differ in, so a gap can be traced to one of them or ruled out:

  * augmentation: the same source faces through the JAX tf.data chain (pipeline.train_example
    + finish_train_batch, seeded as the pipeline seeds them) and through train_parity's
    TorchRecipe.train: pixel statistics, share of images erased and of pixels erased. The
    geometry is read back exactly from a coordinate probe (an image whose red and green values
    are its x and y): each augmented probe is fitted with the affine map from output to input
    pixels, which gives the crop's area fraction, aspect, rotation, flip and centre shift;
  * the learning rate: the JAX schedule (zenfer_jax.training.loop.Schedule) against the PyTorch
    side's, step by step, for the benchmark's run;
  * evaluation inputs: pipeline.preprocess_for_eval against TorchRecipe.eval on PublicTest faces;
  * the train step: one batch of 64 faces through the JAX step (the loop's own pmapped
    steps.train_step) and the PyTorch step (train_parity's model, optimizer and loss), same
    init: loss, every gradient, and then `--steps` further steps on identical batches, to see
    whether the two trajectories stay together. The JAX gradients are taken with the CPU
    kernels that training uses ('auto') and with XLA's plain ops, to tell a kernel apart, and
    both sides' float32 gradients are set against the reference model's in float64;
  * the stream: pipeline.train_dataset itself over prepared records (--records, augmentation
    off): every face paired with its label, every epoch a permutation of the split;
  * a control: the PyTorch side twice on the same batches, with and without oneDNN's
    convolutions, to see how far float rounding alone moves two runs apart in those steps.

Output: one JSON (--out; --update adds the parts run to an existing one).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('angry', 'disgust', 'fear', 'happy', 'neutral', 'sad', 'surprise')
SIZE = 48
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# --------------------------------------------------------------------------------------------
# Source images


def load_faces(fer_dir: str, split: str, count: int, seed: int, pattern: str = '') -> tuple:
  """`count` seeded faces of a Kaggle-layout FER2013 split as uint8 [N, 48, 48, 3], labels [N].

  `pattern` keeps file names starting with it (PublicTest_ in test/: PrivateTest is never read).
  """
  from PIL import Image

  files = []
  for label, name in enumerate(CLASSES):
    folder = os.path.join(fer_dir, split, name)
    files += [
      (os.path.join(folder, f), label) for f in sorted(os.listdir(folder)) if f.startswith(pattern)
    ]
  # In random order: consecutive faces (a train batch of `train_steps`) mix the classes.
  pick = np.random.default_rng([seed, 5]).permutation(len(files))[:count]
  images = np.stack(
    [np.asarray(Image.open(files[i][0]).convert('L').resize((SIZE, SIZE))) for i in pick]
  )
  return np.repeat(images[..., None], 3, -1), np.array([files[i][1] for i in pick], np.int64)


def coordinate_probe(size: int = SIZE) -> np.ndarray:
  """red = x, green = y (0..255 across the image), blue constant: geometry readable per pixel."""
  ramp = np.round(np.arange(size) * 255.0 / (size - 1))
  r = np.broadcast_to(ramp[None, :], (size, size))
  g = np.broadcast_to(ramp[:, None], (size, size))
  return np.stack([r, g, np.full((size, size), 128.0)], -1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The two augmentation chains


def jax_augment(images: np.ndarray, recipe, seed: int = 0, batch: int = 250) -> np.ndarray:
  """The tf.data train chain of `recipe` on each image, seeded as pipeline.train_tf_dataset does
  (example i of stream 0 gets the seed (augment_seed(seed, 0), i))."""
  import tensorflow as tf

  from zenfer_jax.data import pipeline, samplers

  aug_seed = samplers.augment_seed(seed, 0)

  def one(image, index):
    s = tf.stack([tf.constant(aug_seed, tf.int64), index])
    return pipeline.train_example(image, SIZE, recipe, s)

  ds = tf.data.Dataset.from_tensor_slices((images, np.arange(len(images), dtype=np.int64)))
  ds = ds.map(one).batch(batch)
  ds = ds.map(lambda b: pipeline.finish_train_batch(b['image'], b['lighting'], b['erase']))
  return np.concatenate([np.asarray(x) for x in ds])


def torch_augment(images: np.ndarray, recipe, seed: int = 0) -> np.ndarray:
  """train_parity's TorchRecipe.train on each image, one generator per image."""
  from benchmarks import train_parity as tp

  r = tp.TorchRecipe.from_fields(dataclasses.asdict(recipe), SIZE)
  return np.stack(
    [r.train(im, np.random.default_rng([seed, 11, i])) for i, im in enumerate(images)]
  )


def _unnormalize(x: np.ndarray) -> np.ndarray:
  from zenfer_jax.data.augment_spec import IMAGENET_MEAN, IMAGENET_STD

  return (x * np.float32(IMAGENET_STD) + np.float32(IMAGENET_MEAN)) * 255.0


def erased_mask(x: np.ndarray) -> np.ndarray:
  """[..., H, W]: pixels set to 0 in all three normalised channels (no real pixel is)."""
  return (x == 0).all(-1)


def fit_geometry(out: np.ndarray) -> dict | None:
  """The affine map output pixel -> input pixel of one augmented coordinate probe, and what it
  means: crop area fraction, aspect (width / height), rotation (degrees), flip, centre shift.

  Pixels erased or whose input coordinate was clamped (edge-repeated corners) are left out;
  one refit drops pixels more than a pixel off the first fit.
  """
  v = _unnormalize(out)
  xi, yi = v[..., 0] * (SIZE - 1) / 255.0, v[..., 1] * (SIZE - 1) / 255.0
  yo, xo = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  keep = ~erased_mask(out) & (v[..., 0] > 1) & (v[..., 0] < 254) & (v[..., 1] > 1)
  keep &= v[..., 1] < 254
  design = np.stack([xo, yo, np.ones_like(xo)], -1)
  for _ in range(2):
    if keep.sum() < 50:
      return None
    a = design[keep]
    cx, *_ = np.linalg.lstsq(a, xi[keep], rcond=None)
    cy, *_ = np.linalg.lstsq(a, yi[keep], rcond=None)
    resid = np.hypot(design @ cx - xi, design @ cy - yi)
    keep &= resid < 1.0
  m = np.array([[cx[0], cx[1]], [cy[0], cy[1]]])
  det = float(np.linalg.det(m))
  flip = det < 0
  if flip:
    m[:, 0] = -m[:, 0]
  # With the flip undone, m = rotation @ diag(sx, sy).
  sx, sy = float(np.hypot(m[0, 0], m[1, 0])), float(np.hypot(m[0, 1], m[1, 1]))
  c = np.array([cx[2], cy[2]]) + (
    np.array([cx[0], cy[0]]) * (SIZE - 1) / 2 + np.array([cx[1], cy[1]]) * (SIZE - 1) / 2
  )
  return {
    'area': abs(det),
    'aspect': sx / sy,
    'angle': math.degrees(math.atan2(m[1, 0], m[0, 0])),
    'flip': float(flip),
    'shift': float(np.hypot(*(c - (SIZE - 1) / 2))),
    'fit_residual': float(np.sqrt(np.mean(resid[keep] ** 2))),
  }


def _quantiles(values) -> dict:
  v = np.asarray(values, np.float64)
  return {
    'mean': float(v.mean()),
    'std': float(v.std()),
    **{f'q{int(q * 100):02d}': float(np.quantile(v, q)) for q in QUANTILES},
  }


def ks_statistic(a, b) -> float:
  """Two-sample Kolmogorov-Smirnov D: the largest gap between the two empirical CDFs."""
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  grid = np.concatenate([a, b])
  return float(
    np.max(
      np.abs(
        np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)
      )
    )
  )


def ks_critical(n: int, m: int, alpha: float = 0.001) -> float:
  """D above which two samples of sizes n, m differ at level alpha (asymptotic)."""
  return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def image_statistics(x: np.ndarray) -> dict:
  erased = erased_mask(x)
  per_image = erased.reshape(len(x), -1).mean(1)
  values = _unnormalize(x)[..., 0][~erased]  # Grey faces: one channel tells all.
  return {
    'pixel_mean': float(values.mean()),
    'pixel_std': float(values.std()),
    'per_image_std': _quantiles([_unnormalize(im)[..., 0][~e].std() for im, e in zip(x, erased)]),
    'share_images_erased': float((per_image > 0).mean()),
    'erased_pixel_fraction': float(per_image.mean()),
    'erased_fraction_when_erased': _quantiles(per_image[per_image > 0]),
  }


def augmentation(faces: np.ndarray, recipe, probes: int) -> dict:
  """Both chains on the same faces and on `probes` coordinate probes."""
  out = {}
  t = time.perf_counter()
  sides = {'jax': jax_augment(faces, recipe), 'torch': torch_augment(faces, recipe)}
  out['images'] = {k: image_statistics(v) for k, v in sides.items()}
  # Per-pixel mean image of the two sides: where (in the frame) the faces' mass sits.
  mean_img = {k: _unnormalize(v)[..., 0].mean(0) for k, v in sides.items()}
  out['images']['mean_image_max_abs_diff'] = float(
    np.abs(mean_img['jax'] - mean_img['torch']).max()
  )
  probe = np.repeat(coordinate_probe()[None], probes, 0)
  geo = {}
  for side, fn in (('jax', jax_augment), ('torch', torch_augment)):
    fits = [f for f in (fit_geometry(x) for x in fn(probe, recipe)) if f is not None]
    geo[side] = {k: np.array([f[k] for f in fits]) for k in fits[0]}
  out['geometry'] = {
    side: {'fitted': int(len(g['area'])), **{k: _quantiles(v) for k, v in g.items()}}
    for side, g in geo.items()
  }
  ks = {}
  for k in ('area', 'aspect', 'angle', 'shift'):
    a, b = geo['jax'][k], geo['torch'][k]
    ks[k] = {'D': ks_statistic(a, b), 'critical_0.001': ks_critical(len(a), len(b))}
  ks['flip_share'] = {s: float(geo[s]['flip'].mean()) for s in geo}
  out['geometry']['ks'] = ks
  out['seconds'] = time.perf_counter() - t
  return out


# --------------------------------------------------------------------------------------------
# Schedule and evaluation inputs


def parity_config(num_epochs: int = 10, **fields):
  """configs/fer2013_r.py as train_parity runs it (its --epochs rule for warm-up included)."""
  from benchmarks import train_parity as tp

  config = tp.load_config(tp.DEFAULT_CONFIG)
  config.num_epochs = num_epochs
  config.warmup_epochs = min(config.warmup_epochs, num_epochs - 1)
  for k, v in fields.items():
    tp.set_field(config, k, v)
  return config


def schedules(config, num_train: int) -> dict:
  from benchmarks import train_parity as tp
  from zenfer_jax.training import loop

  jax_lr = loop.Schedule.from_config(config, num_train).lr_fn(config)
  torch_lr = tp.torch_schedule(config, num_train)
  spe = tp.steps_per_epoch(config, num_train)
  total = spe * config.num_epochs
  j = np.array([float(jax_lr(s)) for s in range(total)])
  t = np.array([torch_lr(s) for s in range(total)])
  return {
    'num_train': num_train,
    'steps_per_epoch': spe,
    'total_steps': total,
    'max_abs_diff': float(np.abs(j - t).max()),
    'peak': [float(j.max()), float(t.max())],
    'epoch_means_jax': [float(j[e * spe : (e + 1) * spe].mean()) for e in range(config.num_epochs)],
    'epoch_means_torch': [
      float(t[e * spe : (e + 1) * spe].mean()) for e in range(config.num_epochs)
    ],
    'sum_jax': float(j.sum()),
    'sum_torch': float(t.sum()),
  }


def eval_inputs(faces: np.ndarray, recipe) -> dict:
  from benchmarks import train_parity as tp
  from zenfer_jax.data import pipeline

  r = tp.TorchRecipe.from_fields(dataclasses.asdict(recipe), SIZE)
  diffs = [
    float(np.abs(pipeline.preprocess_for_eval(im, SIZE, recipe) - r.eval(im)).max()) for im in faces
  ]
  return {
    'images': len(faces),
    'max_abs_diff': max(diffs),
    'mean_max_abs_diff': float(np.mean(diffs)),
  }


def train_stream(records_dir: str, epochs: int = 2, batch: int = 64) -> dict:
  """The JAX training stream itself (pipeline.train_dataset) over prepared FER2013 records,
  augmentation off (recipe 'none'): does every batch pair each face with its own label, and
  does each epoch see every face once, as the PyTorch side's permutations do?"""
  from benchmarks import train_parity as tp
  from zenfer_jax.data import pipeline
  from zenfer_jax.data.spec import DataSpec

  images, labels = tp.decode_split('fer2013', records_dir, 'train')
  n = len(labels)
  by_bytes = {}
  for im, y in zip(images, labels):
    by_bytes.setdefault(im[..., 0].tobytes(), set()).add(int(y))
  spec = DataSpec(
    'fer2013', records_dir, SIZE, batch, recipe='none', train_split='train', shuffle_buffer=32_768
  )
  steps = epochs * n // batch
  it = pipeline.train_dataset(spec)
  wrong = unknown = 0
  seen = []
  for _ in range(steps):
    b = next(it)
    x = np.round(_unnormalize(b['image'][0])[..., 0]).astype(np.uint8)
    for im, y in zip(x, b['label'][0]):
      ys = by_bytes.get(im.tobytes())
      if ys is None:
        unknown += 1
      elif int(y) not in ys:
        wrong += 1
      seen.append(int(y))
  counts = [np.bincount(seen[e * n : (e + 1) * n], minlength=len(CLASSES)) for e in range(epochs)]
  return {
    'examples_drawn': len(seen),
    'label_not_the_faces': wrong,
    'face_not_in_records': unknown,
    'class_counts_per_epoch': [c.tolist() for c in counts if c.sum() == n],
    'class_counts_records': np.bincount(labels, minlength=len(CLASSES)).tolist(),
  }


# --------------------------------------------------------------------------------------------
# The train step


def _torch_grads(model) -> dict:
  return {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}


def train_steps(faces, labels, config, steps: int, num_train: int) -> dict:
  """One batch's loss and gradients on both sides, then `steps` steps on identical batches."""
  import jax
  import torch

  from benchmarks import train_parity as tp
  from torch_port.export import export_state_dict
  from zenfer_jax.data.recipes import RECIPES
  from zenfer_jax.training import init, loop, losses, parallel
  from zenfer_jax.training import steps as steps_lib
  from zenfer_jax.training import train_state as ts

  torch.set_num_threads(1)
  m = config.model
  batch = config.batch_size
  recipe = tp.TorchRecipe.from_fields(dataclasses.asdict(RECIPES['fer2013']), SIZE)
  xs = [
    np.stack(
      [recipe.train(im, np.random.default_rng([1, 11, s * batch + i])) for i, im in enumerate(fb)]
    )
    for s, fb in enumerate(np.split(faces[: batch * (steps + 1)], steps + 1))
  ]
  ys = np.split(labels[: batch * (steps + 1)], steps + 1)

  def export(tree):
    return {
      k: v.numpy()
      for k, v in export_state_dict(
        tree, m.structure, len(CLASSES), use_sa=m.use_sa, use_lw_att=m.use_lw_att
      ).items()
      if v.dtype == torch.float32
    }

  out = {'batch': batch}
  model = init.build_model(config, len(CLASSES))
  variables = init.initial_variables(config, model, jax.random.PRNGKey(config.seed))
  tmodel = tp.build_torch_model(config, len(CLASSES))
  tmodel.load_state_dict(export_state_dict(variables, m.structure, len(CLASSES), use_sa=m.use_sa))
  tmodel.train()
  targets = losses.smooth_one_hot(ys[0], len(CLASSES), config.label_smoothing)

  # One batch: loss and gradients, JAX with the training kernels ('auto') and XLA's ops.
  t_targets = torch.from_numpy(np.asarray(targets))
  logits = tmodel(torch.from_numpy(xs[0]).permute(0, 3, 1, 2))
  loss = -(t_targets * torch.log_softmax(logits, -1)).sum(-1).mean()
  tmodel.zero_grad()
  loss.backward()
  t_grads = _torch_grads(tmodel)
  out['torch_loss0'] = float(loss)
  grads_out, jax_side = {}, {}
  for impl in ('auto', 'xla'):
    cfg = parity_config(config.num_epochs, **{'model.conv_impl': impl, 'model.bn_impl': impl})
    mdl = init.build_model(cfg, len(CLASSES))

    def loss_fn(params, mdl=mdl):
      lg, upd = mdl.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        xs[0],
        train=True,
        mutable=['batch_stats'],
      )
      return losses.soft_cross_entropy(lg, targets), (lg, upd['batch_stats'])

    (jl, (jlogits, new_stats)), g = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables['params']
    )
    jlogits = np.asarray(jlogits)
    jg = export({'params': jax.device_get(g), 'batch_stats': jax.device_get(new_stats)})
    rel = {
      k: float(np.linalg.norm(jg[k] - t_grads[k]) / max(np.linalg.norm(t_grads[k]), 1e-12))
      for k in t_grads
    }
    worst = sorted(rel.items(), key=lambda kv: -kv[1])[:5]
    jax_side[impl] = (jlogits, jg)
    grads_out[impl] = {
      'loss': float(jl),
      'max_relative_grad_diff': worst[0][1],
      'worst': dict(worst),
      'global_relative_grad_diff': float(
        math.sqrt(sum(np.sum((jg[k] - t_grads[k]) ** 2) for k in t_grads))
        / math.sqrt(sum(np.sum(t_grads[k] ** 2) for k in t_grads))
      ),
    }
  # Which float32 side is nearer the truth: the reference model in float64 on the same batch,
  # and PyTorch float32 again with oneDNN's convolutions off (its native ones instead).
  tm64 = tp.build_torch_model(config, len(CLASSES)).double()
  tm64.load_state_dict(export_state_dict(variables, m.structure, len(CLASSES), use_sa=m.use_sa))
  tm64.train()
  lg64 = tm64(torch.from_numpy(xs[0]).double().permute(0, 3, 1, 2))
  (-(t_targets.double() * torch.log_softmax(lg64, -1)).sum(-1).mean()).backward()
  g64 = _torch_grads(tm64)

  def rel64(g):
    num = math.sqrt(sum(np.sum((g[k] - g64[k]) ** 2) for k in g64))
    return num / math.sqrt(sum(np.sum(g64[k] ** 2) for k in g64))

  native = tp.build_torch_model(config, len(CLASSES))
  native.load_state_dict(export_state_dict(variables, m.structure, len(CLASSES), use_sa=m.use_sa))
  native.train()
  with torch.backends.mkldnn.flags(enabled=False):
    lgn = native(torch.from_numpy(xs[0]).permute(0, 3, 1, 2))
    (-(t_targets * torch.log_softmax(lgn, -1)).sum(-1).mean()).backward()
  lg64 = lg64.detach().numpy()
  grads_out['against_float64'] = {
    'logits_max_abs_diff': {
      'torch_float32': float(np.abs(logits.detach().numpy() - lg64).max()),
      'torch_float32_no_onednn': float(np.abs(lgn.detach().numpy() - lg64).max()),
      **{
        f'jax_float32_{impl}': float(np.abs(lj - lg64).max()) for impl, (lj, _) in jax_side.items()
      },
    },
    'global_relative_grad_diff': {
      'torch_float32': rel64(t_grads),
      'torch_float32_no_onednn': rel64(_torch_grads(native)),
      **{f'jax_float32_{impl}': rel64(g) for impl, (_, g) in jax_side.items()},
    },
  }
  out['one_batch'] = grads_out

  # `steps` steps on identical batches: the loop's pmapped step against train_parity's SGD.
  sched = loop.Schedule.from_config(config, num_train)
  lr_fn = sched.lr_fn(config)
  torch_lr = tp.torch_schedule(config, num_train)
  state = parallel.replicate(ts.create_train_state(config, model, variables, lr_fn))
  p_train = parallel.pmap_train_step(
    functools.partial(
      steps_lib.train_step,
      num_classes=len(CLASSES),
      label_smoothing=config.label_smoothing,
      mixup_alpha=config.mixup_alpha,
      learning_rate_fn=lr_fn,
    )
  )
  tmodel.load_state_dict(export_state_dict(variables, m.structure, len(CLASSES), use_sa=m.use_sa))
  opt = tp.torch_optimizer(tmodel, config)
  eps = config.label_smoothing
  rows = []
  for s in range(steps):
    x, y = xs[s + 1], ys[s + 1]
    state, met = p_train(state, {'image': x[None], 'label': y[None].astype(np.int32)}, None)
    for group in opt.param_groups:
      group['lr'] = torch_lr(s)
    tx, ty = torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y)
    tt = torch.nn.functional.one_hot(ty, len(CLASSES)).float() * (1 - eps) + eps / len(CLASSES)
    lg = tmodel(tx)
    tl = -(tt * torch.log_softmax(lg, -1)).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    tl.backward()
    opt.step()
    rows.append({'step': s, 'jax_loss': float(met['loss'][0]), 'torch_loss': float(tl)})
  jp = export(
    {
      'params': jax.device_get(parallel.unreplicate_to_host(state).params),
      'batch_stats': jax.device_get(parallel.unreplicate_to_host(state).batch_stats),
    }
  )
  tp_ = {k: v.detach().numpy() for k, v in tmodel.state_dict().items() if v.dtype == torch.float32}
  p0 = export(variables)
  moved = math.sqrt(sum(np.sum((tp_[k] - p0[k]) ** 2) for k in tp_))
  apart = math.sqrt(sum(np.sum((tp_[k] - jp[k]) ** 2) for k in tp_))
  out['trajectory'] = {
    'steps': steps,
    'rows': rows,
    'max_abs_loss_diff': max(abs(r['jax_loss'] - r['torch_loss']) for r in rows),
    'mean_loss_jax_minus_torch': float(np.mean([r['jax_loss'] - r['torch_loss'] for r in rows])),
    'weights_moved_norm': moved,
    'weights_apart_norm': apart,
    'apart_over_moved': apart / moved,
  }
  return out


def torch_control(faces, labels, config, steps: int, num_train: int) -> dict:
  """The PyTorch side twice on identical batches from one init, once with oneDNN's convolutions
  and once with PyTorch's native ones: how far two runs drift apart on float rounding alone,
  the yardstick for the JAX-PyTorch trajectory of `train_steps`."""
  import jax
  import torch

  from benchmarks import train_parity as tp
  from torch_port.export import export_state_dict
  from zenfer_jax.data.recipes import RECIPES
  from zenfer_jax.training import init

  torch.set_num_threads(1)
  m, batch, eps = config.model, config.batch_size, config.label_smoothing
  recipe = tp.TorchRecipe.from_fields(dataclasses.asdict(RECIPES['fer2013']), SIZE)
  variables = init.initial_variables(
    config, init.build_model(config, len(CLASSES)), jax.random.PRNGKey(config.seed)
  )
  sd = export_state_dict(variables, m.structure, len(CLASSES), use_sa=m.use_sa)
  lr_at = tp.torch_schedule(config, num_train)
  runs = {}
  for name, onednn in (('onednn', True), ('native', False)):
    model = tp.build_torch_model(config, len(CLASSES))
    model.load_state_dict(sd)
    model.train()
    opt = tp.torch_optimizer(model, config)
    got = []
    with torch.backends.mkldnn.flags(enabled=onednn):
      for s in range(steps):
        lo = (s + 1) * batch  # The batches of train_steps' trajectory.
        x = np.stack(
          [
            recipe.train(faces[lo + i], np.random.default_rng([1, 11, lo + i]))
            for i in range(batch)
          ]
        )
        y = torch.from_numpy(labels[lo : lo + batch])
        t = torch.nn.functional.one_hot(y, len(CLASSES)).float() * (1 - eps) + eps / len(CLASSES)
        for group in opt.param_groups:
          group['lr'] = lr_at(s)
        loss = (
          -(t * torch.log_softmax(model(torch.from_numpy(x).permute(0, 3, 1, 2)), -1))
          .sum(-1)
          .mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        got.append(float(loss.detach()))
    runs[name] = got
  diffs = np.subtract(runs['onednn'], runs['native'])
  return {
    'steps': steps,
    'losses': runs,
    'max_abs_loss_diff': float(np.abs(diffs).max()),
    'first_step_above_0.01': int(np.argmax(np.abs(diffs) > 0.01))
    if (np.abs(diffs) > 0.01).any()
    else None,
  }


# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
  from zenfer_jax import cli

  p = cli.ArgumentParser(
    prog='python -m benchmarks.parity_inputs', description=__doc__.split('\n')[0]
  )
  p.add_argument('--fer_dir', default='/data/fer2013', help='Kaggle-layout FER2013 folders')
  p.add_argument('--images', type=int, default=2000, help='training faces augmented per side')
  p.add_argument('--probes', type=int, default=2000, help='coordinate probes per side')
  p.add_argument('--eval_images', type=int, default=300, help='PublicTest faces compared')
  p.add_argument('--steps', type=int, default=30, help='train steps on identical batches')
  p.add_argument('--num_train', type=int, default=7000, help="the benchmark's training split size")
  p.add_argument('--records', default='', help='prepared FER2013 TFDS records (the stream part)')
  p.add_argument(
    '--parts', default='augment,schedule,eval,stream,step,control', help='comma-separated'
  )
  p.add_argument('--update', action='store_true', help='add the parts run to an existing --out')
  p.add_argument(
    '--out', default=os.path.join(REPO, 'benchmarks', 'results', 'parity_inputs_fer2013.json')
  )
  args = p.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  from zenfer_jax.data.recipes import RECIPES

  recipe = RECIPES['fer2013']
  config = parity_config()
  parts = args.parts.split(',')
  report = {}
  if args.update and os.path.exists(args.out):
    with open(args.out) as f:
      report = json.load(f)
  report |= {
    'command': 'python -m benchmarks.parity_inputs '
    + ' '.join(sys.argv[1:] if argv is None else argv),
    'date': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'recipe': dataclasses.asdict(recipe),
  }
  faces, labels = load_faces(args.fer_dir, 'train', max(args.images, 64 * (args.steps + 1)), 0)
  if 'augment' in parts:
    report['augmentation'] = augmentation(faces[: args.images], recipe, args.probes)
  if 'schedule' in parts:
    report['schedule'] = schedules(config, args.num_train)
  if 'eval' in parts:
    test_faces, _ = load_faces(args.fer_dir, 'test', args.eval_images, 0, pattern='PublicTest_')
    report['eval_inputs'] = eval_inputs(test_faces, recipe)
  if 'stream' in parts and args.records:
    report['stream'] = train_stream(args.records)
  if 'step' in parts:
    report['train_step'] = train_steps(faces, labels, config, args.steps, args.num_train)
  if 'control' in parts:
    report['torch_control'] = torch_control(faces, labels, config, args.steps, args.num_train)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1)[:20000])
  return report


if __name__ == '__main__':
  main()
