"""The demo model on a digits class-folder tree: the paper's two-stage transfer, in minutes on CPU.

Two disjoint sets of scikit-learn's digits stand in for face identities and expressions:
  python -m zenfer_jax.data.digits_folders --out=runs/digits_0to4 --digits=0,1,2,3,4
  python -m zenfer_jax.data.digits_folders --out=runs/digits_5to9 --digits=5,6,7,8,9
  python -m zenfer_jax.main --config=configs/digits_folders.py --workdir=runs/digits_pre \
      --config.data.manual_dir=runs/digits_0to4 --config.data.data_dir=runs/tfds_digits_0to4
  python -m zenfer_jax.main --config=configs/digits_folders.py --workdir=runs/digits_transfer \
      --config.data.manual_dir=runs/digits_5to9 --config.data.data_dir=runs/tfds_digits_5to9 \
      --config.num_epochs=3 --config.init_from=runs/digits_pre --config.only_backbone=True
  python -m zenfer_jax.main --config=configs/digits_folders.py --workdir=runs/digits_scratch \
      --config.data.manual_dir=runs/digits_5to9 --config.data.data_dir=runs/tfds_digits_5to9 \
      --config.num_epochs=3

classes='auto' (the digit folders, sorted), the digits recipe (shift, no flip) and precise BN
(10 batches; short runs otherwise evaluate with unconverged running averages, which would
favour whichever run copied its statistics). docs/training.md ("Transfer learning") has the
results.
"""

from zenfer_jax.config.files import sibling

demo = sibling(__file__, 'demo')


def get_config():
  config = demo.get_config()
  config.data.name = 'folders'
  config.data.classes = 'auto'
  config.data.recipe = 'digits'
  config.num_epochs = 10
  config.precise_bn_batches = 10
  return config
