"""Zen-score evolutionary search for ZenNet-M (reference script scripts/ZenNAS-FER-M-searching.sh).

Run:
  python -m zenfer_jax.nas.search --config=configs/search_m.py --workdir=runs/search_m
  # then train what it found:
  python -m zenfer_jax.main --config=configs/rafdb_m.py --workdir=runs/rafdb_searched \
      --config.model.structure=runs/search_m/best_structure.txt

Rerunning with the same --workdir resumes from the last population checkpoint. A quick look:
  --config.search.max_iterations=200 --config.search.resolution=112

Recipe (reference scripts): IDW space (SuperResIDWE{1,2,4,6}K{3,5,7}, final 1x1 conv fixed),
Zen-score at 224x224, batch 16, mixup gamma 1e-2, population 512, 480,000 iterations, budgets on
the reference counters: FLOPs <= 400e6, parameters <= 1e6, layers <= 14. The published search
found ZenNet-M (zenfer_jax/model/presets/zennet_m.txt): 382.8M FLOPs on the reference counter.
The reference builds its Zen-score network without SA blocks, so this search does too.
"""

import ml_collections
from ml_collections import config_dict

from zenfer_jax.rundir import compilation_cache


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.search = ml_collections.ConfigDict()
  config.search.space = 'IDW'  # 'IDW' or 'XXBL' (zenfer_jax.nas.space.SPACES)
  config.search.init_structure = (
    'SuperConvK3BNRELU(3,8,2,1)SuperResIDWE6K3(8,32,2,8,1)SuperResIDWE6K3(32,48,2,32,1)'
    'SuperResIDWE6K3(48,96,2,48,1)SuperResIDWE6K3(96,128,2,96,1)SuperConvK1BNRELU(128,2048,1,1)'
  )
  config.search.population_size = 512
  config.search.max_iterations = 480_000

  # The fitness: 'zen' (Zen-score, the reference scripts' choice), or the reference's cheap
  # baselines 'flops', 'params', 'random'.
  config.search.proxy = 'zen'
  # The Zen-score (zenfer_jax.nas.zen_score).
  config.search.resolution = 224
  config.search.batch_size = 16
  config.search.mixup_gamma = 1e-2
  config.search.repeats = 1  # fresh networks per candidate; the reference uses one
  config.search.bn_variance = 'running'  # 'running' (reference code) or 'batch' (paper)

  # Budgets (None: no budget), on the reference counters at config.search.resolution.
  config.search.num_classes = 7  # the classifier's share of FLOPs and parameters
  config.search.budget_flops = config_dict.placeholder(float)
  config.search.budget_flops = 400e6
  config.search.budget_model_size = config_dict.placeholder(float)
  config.search.budget_model_size = 1e6
  config.search.max_layers = config_dict.placeholder(int)
  config.search.max_layers = 14
  # Seconds per forward pass of a batch on the running device; each new candidate compiles
  # and times the real network, which is slow.
  config.search.budget_latency = config_dict.placeholder(float)
  # The fork's efficient-score filter: skip candidates scoring above this (it used 0.5).
  # Off: the published networks score 0.90 (M) and 0.62 (R), so it did not find them.
  config.search.efficient_score = config_dict.placeholder(float)

  # Candidates drawn, scored in one call and inserted per step (1: the reference's sequential
  # loop; 0: per device, 1 on CPU and 16 on accelerators, see evolution.default_candidates_per_step).
  config.search.candidates_per_step = 0

  config.search.checkpoint_every = 100  # iterations; a kill loses at most this many
  # Wall-clock seconds for one call (None: no limit): the search checkpoints and stops, and the
  # same command resumes it (a batch job's time limit).
  config.search.max_seconds = config_dict.placeholder(float)
  # JAX's persistent compilation cache, shared by every search on this machine ('' turns it off).
  config.search.compilation_cache_dir = compilation_cache.DEFAULT_DIR
  # --config.search.warmup_only=True: compile the programs of the first `warmup_candidates`
  # candidates into that cache, print how many and how long, and exit.
  config.search.warmup_only = False
  config.search.warmup_candidates = 256
  # Compile every program the budgets allow before the first candidate (and in the warm-up), so
  # none compiles mid-search: 'auto' (on accelerators, where a late compile stalls scoring for
  # seconds; on CPU the grid costs minutes, more than the late compiles), 'on' or 'off'.
  config.search.compile_grid = 'auto'
  return config
