"""Table 1 (main results per arm) and table 2 (per benchmark): every arm on every benchmark.

    python launch/sweep.py --config=configs/study/main.py:runlocal --sweep_dir=/tmp/main
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

TABLES = ("table1_main", "table1b_pairwise", "table2_benchmarks", "power")


def get_config(arg=None):
  return common.get_config(common.parse(arg))


def sweep(arg=None):
  """The core arms (`common.CORE_ARMS`) over `common.seeds(arg, core=True)` first, seed by seed,
  so a sweep stopped early holds whole seeds of the primary comparison; then the other arms."""
  arg = common.parse(arg)
  runs = []
  for seed in common.seeds(arg, core=True):
    for benchmark in common.benchmarks(arg):
      runs += [{"arm": arm, "seed": seed, "data.benchmark": benchmark} for arm in common.CORE_ARMS]
  for seed in common.seeds(arg):
    for benchmark in common.benchmarks(arg):
      for arm in common.ARMS:
        if arm not in common.CORE_ARMS:
          runs += common.with_stage1({"arm": arm, "seed": seed, "data.benchmark": benchmark})
  yield from common.unique(runs)
