"""The study's arms, defined once: what each trains, the model it builds and what it needs.

Every reader (config validation, model building, loss weights, instance weighting, the study
configs, the report) reads this table, so adding an arm is one entry in `ARMS`. Imports nothing
but the standard library: the sweep launcher, which never imports JAX, reads it too.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Mapping

ALL_TERMS = frozenset(("occupancy", "normal", "depth", "silhouette"))  # losses.TERMS.
SURFACE = frozenset(("normal", "depth", "silhouette"))  # The 2.5D terms.


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm. Every arm trains the same model with all heads unless a switch below changes it;
  the silhouette counts as 2.5D supervision (a foreground mask comes with any depth or normal
  label)."""
  supervised: frozenset[str]  # Loss terms (losses.TERMS) with a nonzero weight.
  core: bool = False  # In the controlled comparison (same model, only the loss differs).
  input_maps: bool = False  # The true depth and normal maps are inputs too (7 channels).
  sketch: bool = False  # The 3D decoder reads the predicted 2.5D maps (models/model.py).
  rdep: bool = False  # 3D-R-DEP: config.rdep's switches (stage-1 encoder, instance weights).
  pretraining: bool = False  # Pretrains the encoder of `rdep` arms; not a study arm.


ARMS: Mapping[str, Arm] = types.MappingProxyType({
    "vanilla": Arm(supervised=frozenset(("occupancy",)), core=True),
    "normal": Arm(supervised=frozenset(("occupancy", "normal", "silhouette")), core=True),
    "depth": Arm(supervised=frozenset(("occupancy", "depth", "silhouette")), core=True),
    "both": Arm(supervised=ALL_TERMS, core=True),
    "full": Arm(supervised=ALL_TERMS, rdep=True),
    "oracle": Arm(supervised=ALL_TERMS, input_maps=True),
    "sketch": Arm(supervised=ALL_TERMS, sketch=True),
    "stage1": Arm(supervised=SURFACE, pretraining=True),
})


def get(name: str) -> Arm:
  """The arm called `name`; ValueError naming the known arms otherwise."""
  if name not in ARMS:
    raise ValueError(f"unknown arm {name!r}; expected one of {sorted(ARMS)}")
  return ARMS[name]


def study_arms() -> tuple[str, ...]:
  """The arms the study compares (all but pretraining), in table order."""
  return tuple(name for name, arm in ARMS.items() if not arm.pretraining)


def core_arms() -> tuple[str, ...]:
  """The arms of the controlled comparison, in table order."""
  return tuple(name for name, arm in ARMS.items() if arm.core)


def rdep_arms() -> tuple[str, ...]:
  """The arms that read config.rdep (and may start from a stage-1 run)."""
  return tuple(name for name, arm in ARMS.items() if arm.rdep)


def pretraining_arm() -> str:
  """The one arm that pretrains the encoder for 3D-R-DEP's feature extraction."""
  (name,) = (name for name, arm in ARMS.items() if arm.pretraining)
  return name


def needs_stage1(name: str, feature_extraction: bool) -> bool:
  """Whether a run of arm `name` starts from a stage-1 run's encoder (config.init_from)."""
  return get(name).rdep and feature_extraction


def loss_weights(name: str, normal_weight: float = 1.0, depth_weight: float = 1.0,
                 silhouette_weight: float = 0.1) -> dict[str, float]:
  """Loss weights dict(occupancy, normal, depth, silhouette) of arm `name`: the given scales
  for its supervised terms, 0 for the others."""
  scale = dict(occupancy=1.0, normal=normal_weight, depth=depth_weight,
               silhouette=silhouette_weight)
  supervised = get(name).supervised
  return {term: w if term in supervised else 0.0 for term, w in scale.items()}
