"""ZenNet-M-SA on FER2013 at its native 48x48: configs/fer2013_r.py's recipe with the M network.

Run:
  python -m zenfer_jax.main --config=configs/fer2013_m.py --workdir=runs/fer2013_m \
      --config.data.manual_dir=/data/fer2013

At 48 px ZenNet-M's stride-32 backbone ends at 2x2 (ZenNet-R's stride-8 one at 6x6). Its train
step here runs at 106 images/s against ZenNet-R-SA's 139 (batch 64, one thread; README "Train step
by input size"). No ZenNet-M-SA model has been trained for the repository yet: the recipe is
ZenNet-R-SA's, not tuned for M.
"""

from zenfer_jax.config.files import sibling

fer2013_r = sibling(__file__, 'fer2013_r')


def get_config():
  config = fer2013_r.get_config()
  config.model.structure = 'zennet_m'
  return config
