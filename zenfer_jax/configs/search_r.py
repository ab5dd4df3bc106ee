"""Zen-score evolutionary search for ZenNet-R (reference script scripts/ZenNAS-FER-R-searching.sh).

Run:
  python -m zenfer_jax.nas.search --config=configs/search_r.py --workdir=runs/search_r
  python -m zenfer_jax.main --config=configs/rafdb_r.py --workdir=runs/rafdb_searched_r \
      --config.model.structure=runs/search_r/best_structure.txt

Recipe (reference scripts): XXBL space (SuperResK1K{3,5,7}K1 and SuperResK{3,5,7}K{3,5,7}, every
conv width searchable, widths capped at 2048), Zen-score at 224x224, batch 16, population 512,
480,000 iterations, FLOPs <= 400e6 on the reference counter, layers <= 10, no parameter budget.
The reference script counts the classifier with 10 classes (--num_classes 10), kept here; it
moves the FLOPs count by 3 x the last width. The published search found ZenNet-R
(zenfer_jax/model/presets/zennet_r.txt): 396.4M FLOPs on the reference counter.
"""

import ml_collections

from zenfer_jax.config.files import sibling

search_m = sibling(__file__, 'search_m')


def get_config() -> ml_collections.ConfigDict:
  config = search_m.get_config()
  config.search.space = 'XXBL'
  config.search.init_structure = (
    'SuperConvK3BNRELU(3,8,1,1)SuperResK3K3(8,16,1,8,1)SuperResK3K3(16,32,2,16,1)'
    'SuperResK3K3(32,64,2,32,1)SuperResK3K3(64,64,2,32,1)SuperConvK1BNRELU(64,128,1,1)'
  )
  config.search.num_classes = 10
  config.search.budget_model_size = None
  config.search.max_layers = 10
  return config
