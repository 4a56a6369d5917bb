"""Which runs can train as one program (a pack), and how runs are grouped into packs.

Runs pack when their configs differ only in PACKABLE_KEYS: the seed (its own initialisation and
data order), the loss weights, and the arm among arms that build the same model (the core arms
vanilla, normal, depth, both). train.train_and_evaluate_pack trains a pack; each run keeps its
own workdir in the single-run format (docs/DESIGN.md section 9). Imports no JAX: the sweep
launcher groups runs with it.
"""
from __future__ import annotations

import json
from typing import Any, Hashable, Mapping, Sequence

from recon3d_jax import arms, config_lib

PACKABLE_KEYS = ("seed", "arm", "loss.normal_weight", "loss.depth_weight",
                 "loss.silhouette_weight")


def signature(config: Mapping[str, Any]) -> str | None:
  """Equal for configs that can share a pack (their program is the same); None for a run that
  trains alone: a 3D-R-DEP arm, whose instance weights and stage-1 encoder are per run."""
  flat = config_lib.flatten(config)
  arm = arms.get(flat["arm"])
  if arm.rdep:
    return None
  shared = {k: v for k, v in flat.items() if k not in PACKABLE_KEYS}
  shared["arm.program"] = [arm.input_maps, arm.sketch]  # What the arm changes in the model.
  return json.dumps(shared, sort_keys=True)


def check_packable(configs: Sequence[Mapping[str, Any]]) -> None:
  """Raises ConfigError naming the first config that cannot share a pack with the first one."""
  first = signature(configs[0])
  for config in configs:
    if first is None or signature(config) != first:
      a, b = config_lib.flatten(configs[0]), config_lib.flatten(config)
      keys = sorted(k for k in set(a) | set(b)
                    if k not in PACKABLE_KEYS and a.get(k) != b.get(k)) or ["arm"]
      raise config_lib.ConfigError(
          f"cannot pack arm={b['arm']!r}, seed={b['seed']} with arm={a['arm']!r}, "
          f"seed={a['seed']} (they differ at {keys[:5]}); expected configs that differ only in "
          f"{list(PACKABLE_KEYS)}, with arms that build the same model and no 3D-R-DEP arm")


def group(keys: Sequence[Hashable | None], pack_size: int) -> list[list[int]]:
  """Indices 0..len(keys)-1 in packs of at most `pack_size` equal, non-None keys, in order of
  each pack's first member; a None key is a pack of its own.

  >>> group(["a", "b", "a", None, "a"], 2)
  [[0, 2], [1], [3], [4]]
  """
  if pack_size < 1:
    raise config_lib.ConfigError(f"pack_size={pack_size}: expected a positive integer")
  packs: list[list[int]] = []
  open_pack: dict[Hashable, list[int]] = {}
  for i, key in enumerate(keys):
    if key is None or pack_size == 1:
      packs.append([i])
      continue
    if key not in open_pack:
      open_pack[key] = []
      packs.append(open_pack[key])
    open_pack[key].append(i)
    if len(open_pack[key]) == pack_size:
      del open_pack[key]
  return packs
