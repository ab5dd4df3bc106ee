"""ZenNet-M-SA on any class-per-folder image dataset (the original repository's ImageFolder layout).

Layout: ROOT/<split>/<class>/<image>.jpg|png with at least the splits train/ and test/.
Run:
  python -m zenfer_jax.main --config=configs/folders.py --workdir=runs/smile \
      --config.data.manual_dir=/data/smile --config.data.classes=neutral,smile \
      --config.data.data_dir=runs/smile_data

The class list fixes label order (its order, not the file system's). Training follows the
RAF-DB recipe (augmentation included) for 100 epochs, a budget that suits datasets of a few
thousand images; on CPU, `--config.data.image_size=112 --config.model.structure=zennet_r`
trains several times faster. No paper number: the dataset is yours.

BatchNorm statistics are recomputed over the training images before every evaluation and
export (precise BN, `config.precise_bn_batches`): on a small dataset the running averages the
reference recipe evaluates with have not converged, and evaluation would sit at chance level.
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'folders'
  config.data.recipe = 'rafdb'
  config.model.structure = 'zennet_m'
  config.model.use_sa = True
  config.num_epochs = 100
  # Datasets of a few hundred images train for a few hundred steps in all, too few for the
  # running BatchNorm averages (momentum 0.99) to converge: evaluate with recomputed statistics.
  config.precise_bn_batches = 200
  return config
