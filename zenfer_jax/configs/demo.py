"""Demo: a small ZenNet on scikit-learn's handwritten digits at 32x32, minutes on 2 CPU cores.

Run (what `make demo` does, then it evaluates the result):
  python -m zenfer_jax.main --config=configs/demo.py --workdir=runs/demo
  python -m zenfer_jax.deploy.evaluate --workdir=runs/demo

The data ship with scikit-learn, so nothing is downloaded. Same recipe as the paper's runs
(SGD Nesterov, warmup + cosine, label smoothing + mixup, custom init), scaled to the task.
Expected: >= 95% test top-1 (360 test images).
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'digits'
  config.data.image_size = 32
  config.model.structure = (
    'SuperConvK3BNRELU(3,16,1,1)SuperResK1K3K1(16,32,2,16,1)'
    'SuperResK1K3K1(32,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)'
  )
  config.model.use_sa = True
  config.num_epochs = 30
  config.warmup_epochs = 1
  config.lr_per_256 = 0.4
  config.log_every_steps = 20
  return config
