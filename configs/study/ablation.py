"""Table 4: 3D-R-DEP with one component removed at a time, and with all removed.

Supervision is a mixture of levels ("uniform"), the setting adaptive weighting is meant for.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

TABLES = ("table1_main", "table1b_pairwise", "table4_ablation", "power")


def get_config(arg=None):
  return common.get_config(common.parse(arg), supervision="uniform")


def sweep(arg=None):
  arg = common.parse(arg)
  variants = [dict.fromkeys(common.RDEP_COMPONENTS, True)]
  for removed in common.RDEP_COMPONENTS:
    variants.append({c: c != removed for c in common.RDEP_COMPONENTS})
  variants.append(dict.fromkeys(common.RDEP_COMPONENTS, False))
  runs = []
  for seed in common.seeds(arg):
    runs.append({"arm": BASELINE_ARM, "seed": seed})
    for variant in variants:
      run = {"arm": "full", "seed": seed}
      run.update({f"rdep.{c}": on for c, on in variant.items()})
      runs += common.with_stage1(run)
  yield from common.unique(runs)
