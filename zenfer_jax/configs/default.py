"""Base config: the published ZenNet-SA-FER training recipe, as the reference scripts run it.

Every hyperparameter of a run lives here; dataset and model configs import this one and override
a few fields. Override any field on the command line, e.g.

  python -m zenfer_jax.main --config=configs/rafdb_m.py --workdir=runs/rafdb_m \
      --config.data.manual_dir=/data/RAF-DB --config.num_epochs=100

An unknown field is an error at flag parsing (the config is locked); a bad value is an error in
`zenfer_jax.config.validation.validate_config` before any data is read or any array allocated.
"""

import ml_collections

from zenfer_jax.rundir import compilation_cache


def get_config() -> ml_collections.ConfigDict:
  # Over 80 lines on purpose: one flat list of fields, each with its comment, so that every
  # hyperparameter of a run is in one place (the module docstring).
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The network: a preset name ('zennet_m', 'zennet_r'), a structure string or a file path.
  config.model = ml_collections.ConfigDict()
  config.model.structure = 'zennet_m'
  config.model.use_sa = True
  config.model.use_lw_att = False
  config.model.init = 'custom'
  config.model.bn_momentum = 0.99  # Flax convention; the reference's PyTorch 0.01.
  config.model.bn_eps = 1e-3
  # False: each device normalises with its own batch statistics, as the reference does.
  config.model.cross_device_bn = False
  # Convs and BatchNorm on XLA's plain ops ('xla') or the CPU formulations with hand-written
  # backward passes ('cpu', same values); 'auto': 'cpu' on the CPU backend, else 'xla'.
  config.model.conv_impl = 'auto'
  config.model.bn_impl = 'auto'
  config.model.dtype = 'float32'  # 'bfloat16' for mixed precision on accelerators.

  config.data = ml_collections.ConfigDict()
  config.data.name = 'rafdb'
  config.data.data_dir = '~/tensorflow_datasets'  # Where the TFDS records are (or go).
  # The raw download, read once to build the records when they are missing.
  config.data.manual_dir = ''
  config.data.classes = ''  # `folders` only: the class folder names in label order, a,b,c.
  config.data.image_size = 224
  config.data.recipe = ''  # '' = the dataset's own augmentation recipe.
  # Where the train recipe's augmentation runs: 'host' (tf.data on the CPU cores) or 'device'
  # (jitted on the accelerator, same ops and distributions; RAF-DB-sized data stay in device
  # memory). zenfer_jax/data/device_pipeline.py says more.
  config.data.augment_on = 'host'
  # How the records are read: 'tf.data' (TFRecord files, TensorFlow) or 'grain' (ArrayRecord
  # files, no TensorFlow imported; augmentation always as the device chain's JAX ops, whatever
  # augment_on says). zenfer_jax/data/grain_pipeline.py says more.
  config.data.loader = 'tf.data'
  config.data.grain_threads = 2  # Grain's reader threads in each training process.
  config.data.grain_workers = 0  # Grain's worker processes (each reads whole batches); 0: none.
  config.data.shuffle_buffer = 16_384
  config.data.train_split = 'train'
  # Several processes: 'examples' (each reads and decodes only its share: reading scales out) or
  # 'batches' (each reads every record, decodes its slice of each global batch: the same batches
  # for any number of processes). zenfer_jax/data/pipeline.py says more.
  config.data.process_split = 'examples'
  config.data.eval_split = 'test'

  # Global batch over all devices (the reference: 64 on its single GPU); the rate scales with it.
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 400
  config.warmup_epochs = 5
  config.steps_per_epoch = -1  # -1: training examples // batch_size.

  config.lr_per_256 = 0.1
  config.target_lr_per_256 = 0.0
  config.momentum = 0.9
  config.nesterov = True
  config.weight_decay = 5e-4  # Conv and linear kernels only.
  config.label_smoothing = 0.1
  config.mixup_alpha = 0.2  # 0 turns mixup off.

  # Initialisation from a model dir (torch_port.convert output) or another run's workdir.
  config.init_from = ''
  config.only_backbone = False  # Load the backbone only; the head starts fresh.
  config.freeze_backbone = False  # Train only the classifier.
  # Knowledge distillation: a teacher (a workdir, a model directory or a shipped model's name,
  # predicting the same classes) whose outputs at distill_temperature the model also learns
  # from, with distill_weight of the loss; '' turns it off. zenfer_jax/training/distill.py.
  config.distill_from = ''
  config.distill_weight = 0.5
  config.distill_temperature = 2.0

  # Exponential moving average of the weights and BatchNorm statistics, updated every step by
  # 1 - ema_decay (0.999: a horizon of about 1,000 steps); evaluation, the best checkpoint and
  # the export then use the average. 0 turns it off (the reference recipe).
  config.ema_decay = 0.0

  config.eval_every_epochs = 1
  # Precise BatchNorm: before each evaluation (and so before the best model is saved and
  # exported), recompute BatchNorm statistics over up to this many training batches (never more
  # than one pass over the training split), as the final weights see them; 0 keeps the running
  # averages, as the reference recipe does. Needed when training is short next to the
  # BatchNorm momentum (a few hundred steps at 0.99), where the running averages still hold
  # much of their initial values. zenfer_jax/training/precise_bn.py says more.
  config.precise_bn_batches = 0
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch only.
  config.log_every_steps = 100
  config.progress_bar = True
  # JAX's persistent compilation cache (shared with the search's): a resumed or repeated run
  # loads its compiled steps instead of compiling them again. '' leaves JAX's own settings
  # (JAX_COMPILATION_CACHE_DIR) in charge.
  config.compilation_cache_dir = compilation_cache.DEFAULT_DIR
  return config
