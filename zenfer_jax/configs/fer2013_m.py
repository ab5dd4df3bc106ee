"""ZenNet-M-SA on FER2013 at its native 48x48: configs/fer2013_r.py's recipe with the M network.

Run:
  python -m zenfer_jax.main --config=configs/fer2013_m.py --workdir=runs/fer2013_m \
      --config.data.manual_dir=/data/fer2013

At 48 px ZenNet-M's stride-32 backbone ends at 2x2 (ZenNet-R's stride-8 one at 6x6), and its
train step is slower than ZenNet-R-SA's on CPU (docs/performance.md, "CPU: train step by input
size"). The recipe is ZenNet-R-SA's, not tuned for M.
"""

from zenfer_jax.config.files import sibling

fer2013_r = sibling(__file__, 'fer2013_r')


def get_config():
  config = fer2013_r.get_config()
  config.model.structure = 'zennet_m'
  return config
