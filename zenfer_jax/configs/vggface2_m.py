"""ZenNet-M-SA pretrained on face identities: stage 1 of the paper's transfer recipe (the (*) rows).

The original training script's commented fine-tuning command starts RAF-DB training from the
weights of a 10-epoch VGG-Face pretraining (`--load_parameters_from .../latest-params_rank0.pth
--only_backbone`); this config is that pretraining on VGGFace2, and configs/rafdb_m_transfer.py
the fine-tuning.

Layout (VGGFace2 as distributed): <root>/train/n000002/0001_01.jpg ... (8,631 identities,
3.1M images) and <root>/test/<identity>/... (500 other identities). classes='auto' takes the
identities of train/ in sorted order; test/'s identities are not among them, so they are left
out (the preparation report counts them) and evaluation reads the training split once, at the
end: the exported model_best/ is then the final weights, the ones the original fine-tuning
loads. Give a split of the training identities as --config.data.eval_split=<split> to watch
held-out accuracy instead.

Prepare once (streams the tree, writes sharded records; unreadable files are skipped and listed
in prepare_report.txt), then train, on one machine or several:
  python -m zenfer_jax.data.prepare --dataset=folders --folders.classes=auto \
      --manual_dir=/data/VGGFace2 --data_dir=/data/tfds_vggface2
  python -m zenfer_jax.main --config=configs/vggface2_m.py --workdir=runs/vggface2_m \
      --config.data.data_dir=/data/tfds_vggface2
  sbatch --nodes=4 launch/train_slurm.sh configs/vggface2_m.py /shared/runs/vggface2_m \
      --config.data.data_dir=/shared/tfds_vggface2

Recipe: the reference's (SGD Nesterov, lr 0.1 x batch / 256 with cosine decay, label smoothing,
mixup, the RAF-DB augmentation, weight decay 5e-4) for 10 epochs with one warmup epoch; the
original repository gives the epoch count of its VGG-Face pretraining, not the rest.
No number of its own: it is judged by the fine-tuning (paper: 88.53% on RAF-DB with ZenNet-M-SA).
"""

from zenfer_jax.config.files import sibling

default = sibling(__file__, 'default')


def get_config():
  config = default.get_config()
  config.data.name = 'folders'
  config.data.classes = 'auto'
  config.data.recipe = 'rafdb'
  config.data.eval_split = 'train'
  config.model.structure = 'zennet_m'
  config.model.use_sa = True
  config.num_epochs = 10
  config.warmup_epochs = 1
  config.eval_every_epochs = 10  # Once, at the end (see above).
  config.checkpoint_every_steps = 2000  # An epoch is ~48k steps at batch 64.
  return config
