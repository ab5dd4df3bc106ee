"""ZenNet-M-SA on AffectNet, 8 classes (expressions 0-7) (reference script scripts/Train-ZenNet-SA-M-FER-AffectNet.sh, second run).

Run:
  python -m zenfer_jax.main --config=configs/affectnet8_m.py --workdir=runs/affectnet8_m \
      --config.data.manual_dir=/data/AffectNet  # holds Manually_Annotated_Images/, training.csv, validation.csv

Recipe (the reference training scripts): 400 epochs (5 warmup), batch 64, SGD Nesterov 0.9,
lr 0.1 x batch / 256 cosine to 0 per sample, weight decay 5e-4 on kernels, label smoothing 0.1
+ mixup Beta(0.2, 0.2), custom init, BatchNorm momentum 0.01 (PyTorch) / eps 1e-3, SA on.
Paper top-1 on the test split: 61.32%.
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'affectnet/8cls'
  config.model.structure = 'zennet_m'
  config.model.use_sa = True
  return config
