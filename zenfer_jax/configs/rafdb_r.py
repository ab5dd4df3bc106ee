"""ZenNet-R-SA on RAF-DB basic, 7 classes (reference script scripts/Train-ZenNet-SA-R-FER-rafdb.sh).

Run:
  python -m zenfer_jax.main --config=configs/rafdb_r.py --workdir=runs/rafdb_r \
      --config.data.manual_dir=/data/RAF-DB  # holds basic/EmoLabel/, basic/Image/aligned/

Recipe (the reference training scripts): 400 epochs (5 warmup), batch 64, SGD Nesterov 0.9,
lr 0.1 x batch / 256 cosine to 0 per sample, weight decay 5e-4 on kernels, label smoothing 0.1
+ mixup Beta(0.2, 0.2), custom init, BatchNorm momentum 0.01 (PyTorch) / eps 1e-3, SA on.
Paper top-1 on the test split: see the paper (not reported in the reference repository).
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'rafdb'
  config.model.structure = 'zennet_r'
  config.model.use_sa = True
  return config
