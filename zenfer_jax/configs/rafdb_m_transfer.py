"""ZenNet-M-SA on RAF-DB from the face-identity pretraining: stage 2 of the paper's transfer recipe.

The original training script's commented command: the RAF-DB recipe of configs/rafdb_m.py,
started from the 10-epoch VGG-Face pretraining with `--load_parameters_from ... --only_backbone`.
Here `init_from` names the workdir of configs/vggface2_m.py (its model_best/; any model
directory or workdir works) and `only_backbone` copies every array whose name and shape this
model shares with it: the whole backbone, SA included, and the BatchNorm statistics; the
classifier (8,631 identities there, 7 expressions here) starts fresh. WORKDIR/init_from.json
lists what was copied and what was not.

Run, after configs/vggface2_m.py:
  python -m zenfer_jax.main --config=configs/rafdb_m_transfer.py --workdir=runs/rafdb_m_transfer \
      --config.data.manual_dir=/data/RAF-DB --config.init_from=runs/vggface2_m

Paper (the (*) row, pretrained): ZenNet-M-SA 88.53% top-1 on the RAF-DB test split.
"""

from zenfer_jax.config.files import sibling

rafdb_m = sibling(__file__, 'rafdb_m')


def get_config():
  config = rafdb_m.get_config()
  config.init_from = 'runs/vggface2_m'
  config.only_backbone = True
  return config
