"""Table 5: vanilla, normal, depth and 3D-R-DEP over training-set sizes (a prefix of the
benchmark's train split): 1K ... 100K at full scale; 250 ... 2,000 at the embedded scale.
Auxiliary 2.5D supervision is expected to matter most when 3D data are few.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

ARMS = (BASELINE_ARM, "normal", "depth", OURS_ARM)

TABLES = ("table1_main", "table1b_pairwise", "table5_scaling", "power")


def get_config(arg=None):
  c = common.get_config(common.parse(arg))
  c.data.num_train = max(sizes(common.parse(arg)))
  return c


def sizes(arg):
  return (250, 500, 1000, 2000) if arg.runlocal else (1_000, 5_000, 10_000, 50_000, 100_000)


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  for num_train in sizes(arg):
    for arm in ARMS:
      for seed in common.seeds(arg):
        runs += common.with_stage1({"arm": arm, "seed": seed, "data.num_train": num_train})
  yield from common.unique(runs)
