"""Architectures: baseline vs 3D-R-DEP with each of the nine encoders (three CNNs, three ViTs,
three conv-stem + transformer hybrids).
"""
from configs.study import common
from configs.study.common import BASELINE_ARM, OURS_ARM, PRIMARY_METRIC  # noqa: F401

ENCODERS = ("resnet10", "resnet18", "resnet34", "vit_ti", "vit_s", "vit_b", "hybrid_s",
            "hybrid_m", "hybrid_l")


def get_config(arg=None):
  return common.get_config(common.parse(arg))


def sweep(arg=None):
  arg = common.parse(arg)
  runs = []
  for encoder in ENCODERS:
    for arm in (BASELINE_ARM, OURS_ARM):
      for seed in common.seeds(arg):
        runs += common.with_stage1({"arm": arm, "seed": seed, "model.encoder": encoder})
  yield from common.unique(runs)
