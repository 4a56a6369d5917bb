"""Table 3: the metric by supervision level, normals against depth (the study's question).

At each of the five levels of 2.5D label quality (docs/DESIGN.md section 5; depth and normal noise
calibrated to matched difficulty), the `depth` arm is the baseline and the `normal` arm is
compared with it, paired by seed: the table gives both, their gap, Cohen's d_z and, per arm, the
correlation of level with the metric. The full scale also runs `both` and `full` (3D-R-DEP) at
every level; `vanilla` ignores 2.5D labels and is level-independent, so it is not repeated here
(its value is in the main study).

    python launch/sweep.py --config=configs/study/levels.py:runlocal --sweep_dir=DIR
"""
from configs.study import common
from configs.study.common import PRIMARY_METRIC  # noqa: F401

BASELINE_ARM = "depth"
OURS_ARM = "normal"
TABLES = ("table3_levels", "power")


def get_config(arg=None):
  return common.get_config(common.parse(arg))


def sweep(arg=None):
  arg = common.parse(arg)
  arms = ("depth", "normal") if arg.runlocal else ("depth", "normal", "both", "full")
  runs = []
  for level in common.LEVELS:
    for arm in arms:
      for seed in common.seeds(arg):
        runs += common.with_stage1({"arm": arm, "seed": seed, "data.supervision": level})
  yield from common.unique(runs)
