"""Table 6: cost of each arm against the baseline (parameters, train step time, inference latency
at batch 1 and batch B, peak memory), read from each run's eval/summary.json `cost`.

Same model and data as the main study on one benchmark; the training length only needs to be
long enough for stable step times.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

TABLES = ("table1_main", "table1b_pairwise", "table6_overhead", "power")


def get_config(arg=None):
  c = common.get_config(common.parse(arg))
  c.eval.cost_repeats = 5  # The point of this study (the other studies skip it at runlocal).
  if not common.parse(arg).runlocal:
    c.total_steps = 2_000
  return c


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  for arm in common.ARMS:
    for seed in common.seeds(arg):
      runs += common.with_stage1({"arm": arm, "seed": seed})
  yield from common.unique(runs)
