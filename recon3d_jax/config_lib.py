"""Config helpers: parse `file.py:key=val,...` arguments, apply overrides, check the eval
settings and the workdir.

Imports no JAX, so the sweep launcher can use it; the checks that need the model and data
registries are `experiment.validate`.
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, Mapping

import ml_collections


class ConfigError(ValueError):
  """A config value or key that is not what the experiment expects."""


# config.eval keys added after runs were written, with the values older config.json files get
# (those of configs/default.py), and keys retired since.
EVAL_DEFAULTS = dict(mise_resolution0=32, mise_upsampling_steps=2)
RETIRED_EVAL_KEYS = dict(grid_resolution="the dense mesh grid, replaced by eval.mise_resolution0 "
                         "and eval.mise_upsampling_steps")
# Keys that do not define a run: where it reads its data, how often it logs, evaluates and saves,
# and how its final meshes are extracted (eval.grid_resolution: their retired name). Two configs
# that differ only in these describe the same run, so a resume or a sweep's relaunch may change
# them.
NON_DEFINING_KEYS = ("data.data_dir", "log_every_steps", "eval_every_steps",
                     "checkpoint_every_steps", "keep_checkpoints", "eval.grid_resolution",
                     "eval.mise_resolution0", "eval.mise_upsampling_steps")
# Keys in which the replicates of one cell differ: the seed, and the link to a stage-1 run (which
# follows the seed). The report pools such runs into a cell; an ensemble's members differ in them.
REPLICATE_KEYS = ("seed", "init_from")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a `get_config` argument such as "runlocal,arm=depth" (big_vision style).

  A bare word sets a boolean default to True; `key=value` converts value to the default's type.
  Keys must be among `defaults`; anything else is an error naming the valid keys.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ConfigError(
          f"unknown config argument {key!r}{_suggest(key, defaults)}; "
           f"expected one of {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"config argument {key}={value!r}: expected true or false")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise ConfigError(
            f"config argument {key}={value!r}: expected a {type(default).__name__}") from None
  return result


def _suggest(name: str, options: Iterable[str]) -> str:
  close = difflib.get_close_matches(name, list(options), n=3)
  return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any],
                   ignore: Iterable[str] = NON_DEFINING_KEYS) -> list[str]:
  """The dotted keys, sorted, whose values differ between two (nested or flat) configs as dicts,
  a key that only one has included; keys in `ignore` do not count."""
  a, b, ignore = flatten(a), flatten(b), set(ignore)
  return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Returns a copy of config with dotted-key overrides applied; unknown keys are an error."""
  valid = flatten(config.to_dict())
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    if key not in valid:
      raise ConfigError(f"unknown config key {key!r}{_suggest(key, valid)}")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def upgrade_eval(config: ml_collections.ConfigDict) -> list[str]:
  """Brings the eval settings of a saved (older) config up to date, in place: drops
  RETIRED_EVAL_KEYS, fills missing EVAL_DEFAULTS. Returns one note per change, for the log."""
  notes = []
  for key, why in RETIRED_EVAL_KEYS.items():
    if key in config.eval:
      notes.append(f"dropped eval.{key}={config.eval[key]!r} ({why})")
      del config.eval[key]
  for key, value in EVAL_DEFAULTS.items():
    if key not in config.eval:
      config.eval[key] = value
      notes.append(f"eval.{key} missing (an older run); using {value!r}")
  return notes


def require(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless ok: one line per check in the validators."""
  if not ok:
    raise ConfigError(message)


def positive_ints(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  """Raises ConfigError naming the first of the dotted `keys` that is not a positive int."""
  flat = flatten(config.to_dict())
  for key in keys:
    value = flat[key]
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"config.{key}={value!r}: expected a positive integer")


def _integer_at_least(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Checks the mesh-extraction settings (also run by the eval-only entry, which skips
  `experiment.validate`); raises ConfigError naming the bad value."""
  e = config.eval
  require(_integer_at_least(e.mise_resolution0, 2),
          f"config.eval.mise_resolution0={e.mise_resolution0!r}: expected an integer >= 2 "
          "(cells per side of MISE's coarse grid)")
  require(_integer_at_least(e.mise_upsampling_steps, 0),
          f"config.eval.mise_upsampling_steps={e.mise_upsampling_steps!r}: expected an integer "
          ">= 0 (0: the dense grid)")
  require(_integer_at_least(e.num_picture_instances, 0),
          f"config.eval.num_picture_instances={e.num_picture_instances!r}: expected an integer "
          ">= 0")
  candidates = e.threshold_candidates
  require(isinstance(candidates, (list, tuple)) and len(candidates) > 0
          and all(isinstance(t, (int, float)) and 0 < t < 1 for t in candidates),
          f"config.eval.threshold_candidates={candidates!r}: expected a non-empty list of "
          "occupancy thresholds in (0, 1)")


def check_workdir(workdir: str) -> None:
  """Creates workdir if needed; raises ConfigError if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be created: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not writable; expected a writable directory")
