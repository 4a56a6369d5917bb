"""Negative results the paper mentions, on mixed-level supervision ("uniform"):
- curriculum: training instances ordered by level, easy first (data.curriculum);
- filtering: training instances above level "medium" dropped (data.max_level);
- ensemble of 3: the plain runs of each arm, 3 seeds per ensemble, averaged by
  `python -m recon3d_jax.study.ensemble --sweep_dir=DIR --members=3` after the sweep.
Each variant is compared with the plain run of the same arm and seed.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

ENSEMBLE_MEMBERS = 3

TABLES = ("table1_main", "table1b_pairwise", "negatives", "negatives_ensemble", "power")


def get_config(arg=None):
  return common.get_config(common.parse(arg), supervision="uniform")


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  seeds = range(max(len(common.seeds(arg)), 2 * ENSEMBLE_MEMBERS))  # Two ensembles per arm.
  for arm in (BASELINE_ARM, "both", OURS_ARM):
    for seed in seeds:
      runs += common.with_stage1({"arm": arm, "seed": seed})
      runs += common.with_stage1({"arm": arm, "seed": seed, "data.curriculum": True})
      runs += common.with_stage1({"arm": arm, "seed": seed, "data.max_level": "medium"})
  yield from common.unique(runs)
