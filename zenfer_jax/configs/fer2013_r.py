"""ZenNet-R-SA on FER2013 at its native 48x48 (grey faces fed as three equal channels).

Run (the Kaggle folder layout or the ICML fer2013.csv, see docs/datasets.md, "FER2013"):
  python -m zenfer_jax.main --config=configs/fer2013_r.py --workdir=runs/fer2013_r \
      --config.data.manual_dir=/data/fer2013

Train on Training, select on PublicTest (`data.eval_split`); PrivateTest stays untouched.
Recipe (recipes.RECIPES['fer2013']): rotation +-10 deg, scale/aspect crop (area 0.64-1),
flip, random erasing; no AutoAugment, no colour lighting, no mixup; label smoothing 0.1; SGD
Nesterov with the reference's warm-up + cosine at 4x the reference learning rate (0.1 at batch
64), 16 epochs; the reference's init with the residual branches open (`custom_open`).

Chosen on short runs (PublicTest only). With the reference's init (each residual branch's last
BatchNorm at zero) ZenNet-R-SA stayed at the class prior: 2 epochs gave 27.1% at lr 0.025 and
23.9% after 1 epoch at 0.1, on the recipe above. On 2,800 Training faces without augmentation,
150 steps reached 23% with zeroed branches and 37% with open ones (lr 0.1).

The shipped `fer2013_r` is this config's 16 epochs followed by six restarts from the best weights
(`--config.init_from`: 30 epochs, then 20 at `--config.lr_per_256=0.2`, then those 20 again with
`--config.data.image_size=64`, then 15 with `--config.data.image_size=80`, then 15 with
`--config.data.image_size=96`, then 10 at 96 px with that model as its own teacher,
`--config.distill_from`): 67.37% PublicTest top-1, 68.04% with `--tta flip`
(docs/training.md, "The FER2013 recipe"). An epoch at 48 px takes about 2.2 minutes on a quiet
2-core CPU (225 images/s end to end), at 64 px about 4 (113-126 images/s), at 80 px about 6.5
(67-76 images/s), at 96 px about 9 (52 images/s).
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'fer2013'
  config.data.image_size = 48
  config.data.recipe = 'fer2013'
  config.data.eval_split = 'publictest'
  # Holds all 28,709 Training faces, so every epoch is one full permutation; below the split's
  # size the pipeline shuffles within per-class streams instead (zenfer_jax/data/pipeline.py).
  config.data.shuffle_buffer = 32_768
  config.model.structure = 'zennet_r'
  config.model.use_sa = True
  config.model.init = 'custom_open'
  config.num_epochs = 16
  config.warmup_epochs = 1
  config.lr_per_256 = 0.4
  config.mixup_alpha = 0.0
  return config
