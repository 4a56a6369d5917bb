"""Architectures: the core arms (and 3D-R-DEP at full scale) with each of the nine encoders
(three CNNs, three ViTs, three conv-stem + transformer hybrids); at the embedded scale the
smallest of each family, core arms only.
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

ENCODERS = ("resnet10", "resnet18", "resnet34", "vit_ti", "vit_s", "vit_b", "hybrid_s",
            "hybrid_m", "hybrid_l")
SMALLEST = ("resnet10", "vit_ti", "hybrid_s")  # One CNN, one ViT, one hybrid.

TABLES = ("table1_main", "table1b_pairwise", "architectures", "power")


def get_config(arg=None):
  return common.get_config(common.parse(arg))


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  arms = common.CORE_ARMS + (() if arg.runlocal else (OURS_ARM,))
  for encoder in SMALLEST if arg.runlocal else ENCODERS:
    for arm in arms:
      for seed in common.seeds(arg):
        runs += common.with_stage1({"arm": arm, "seed": seed, "model.encoder": encoder})
  yield from common.unique(runs)
