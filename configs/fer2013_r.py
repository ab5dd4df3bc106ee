"""ZenNet-R-SA on FER2013 at its native 48x48 (grey faces fed as three equal channels).

Run (the Kaggle folder layout or the ICML fer2013.csv, see README "Datasets"):
  python -m zenfer_jax.main --config=configs/fer2013_r.py --workdir=runs/fer2013_r \
      --config.data.manual_dir=/data/fer2013

Train on Training, select on PublicTest (`data.eval_split`); PrivateTest stays untouched.
Recipe (pipeline.RECIPES['fer2013']): rotation +-10 deg, scale/aspect crop (area 0.64-1),
flip, random erasing; no AutoAugment, no colour lighting, no mixup; label smoothing 0.1; SGD
Nesterov with the reference's warm-up + cosine, at 4x the reference learning rate.
"""

from zenfer_jax.config_files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'fer2013'
  config.data.image_size = 48
  config.data.recipe = 'fer2013'
  config.data.eval_split = 'publictest'
  config.model.structure = 'zennet_r'
  config.model.use_sa = True
  config.num_epochs = 30
  config.warmup_epochs = 2
  config.lr_per_256 = 0.4
  config.mixup_alpha = 0.0
  return config
