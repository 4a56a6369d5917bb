"""Table 3: the five supervision levels x arms (the metric by level, gap, Cohen's d, and the
per-method correlation of level with the metric). `vanilla` ignores its 2.5D targets; it is
still run at every level so that each level's comparison is paired by seed.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401


def get_config(arg=None):
  return common.get_config(common.parse(arg))


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  for level in common.LEVELS:
    for arm in ("vanilla", "normal", "depth", "both", "full"):
      for seed in common.seeds(arg):
        runs += common.with_stage1({"arm": arm, "seed": seed, "data.supervision": level})
  yield from common.unique(runs)
