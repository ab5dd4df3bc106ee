"""ZenNet-R-SA on AffectNet, 8 classes (expressions 0-7) (reference script scripts/Train-ZenNet-SA-R-FER-AffectNet.sh, AffectNet8 run).

Run:
  python -m zenfer_jax.main --config=configs/affectnet8_r.py --workdir=runs/affectnet8_r \
      --config.data.manual_dir=/data/AffectNet  # holds Manually_Annotated_Images/, training.csv, validation.csv

Recipe (the reference training scripts): 400 epochs (5 warmup), batch 64, SGD Nesterov 0.9,
lr 0.1 x batch / 256 cosine to 0 per sample, weight decay 5e-4 on kernels, label smoothing 0.1
+ mixup Beta(0.2, 0.2), custom init, BatchNorm momentum 0.01 (PyTorch) / eps 1e-3, SA on.
Paper top-1 on the test split: see the paper (not reported in the reference repository).
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'affectnet/8cls'
  config.model.structure = 'zennet_r'
  config.model.use_sa = True
  return config
