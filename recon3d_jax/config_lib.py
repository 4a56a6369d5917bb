"""Config helpers: parse `file.py:key=val,...` arguments and validate a config before a run.

Validation lives here (not in the model or loss code, which never read configs) so that every
entry point - `main`, the evaluation entry, notebooks - fails early with one clear message.
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


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _positive_ints(config: ml_collections.ConfigDict, keys: Iterable[str]) -> None:
  flat = flatten(config.to_dict())
  for key in keys:
    value = flat[key]
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"config.{key}={value!r}: expected a positive integer")


def _integer_at_least(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Checks the mesh-extraction settings (also run by the eval-only entry, which skips
  `validate`); raises ConfigError naming the bad value."""
  e = config.eval
  _require(_integer_at_least(e.mise_resolution0, 2),
           f"config.eval.mise_resolution0={e.mise_resolution0!r}: expected an integer >= 2 "
           "(cells per side of MISE's coarse grid)")
  _require(_integer_at_least(e.mise_upsampling_steps, 0),
           f"config.eval.mise_upsampling_steps={e.mise_upsampling_steps!r}: expected an integer "
           ">= 0 (0: the dense grid)")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names, sizes and divisibility; raises ConfigError naming the bad value."""
  from recon3d_jax import losses, models  # Local: keeps config parsing import-light.
  from recon3d_jax.data import benchmarks, corrupt, pipeline

  _require(config.arm in losses.ARMS,
           f"config.arm={config.arm!r}: expected one of {sorted(losses.ARMS)}")
  _require(config.model.encoder in models.ENCODERS,
           f"config.model.encoder={config.model.encoder!r}: expected one of "
           f"{sorted(models.ENCODERS)}")
  _require(config.data.benchmark in benchmarks.BENCHMARKS,
           f"config.data.benchmark={config.data.benchmark!r}: expected one of "
           f"{sorted(benchmarks.BENCHMARKS)}")
  _require(config.model.decoder in models.DECODERS,
           f"config.model.decoder={config.model.decoder!r}: expected one of {list(models.DECODERS)}")
  _require(not config.model.pixel_aligned or config.model.decoder == "occupancy",
           "config.model.pixel_aligned=True: expected config.model.decoder='occupancy' (the voxel "
           f"decoder reads the global code only), got {config.model.decoder!r}")
  r = config.rdep
  _require(r.temperature > 0, f"config.rdep.temperature={r.temperature!r}: expected > 0")
  _require(r.kl_weight >= 0, f"config.rdep.kl_weight={r.kl_weight!r}: expected >= 0")
  for key in ("projection_dim", "scorer_hidden"):
    _require(isinstance(r[key], int) and r[key] > 0,
             f"config.rdep.{key}={r[key]!r}: expected a positive integer")
  _require(len(r.weighted_terms) > 0 and set(r.weighted_terms) <= set(losses.TERMS),
           f"config.rdep.weighted_terms={tuple(r.weighted_terms)!r}: expected a non-empty subset "
           f"of {losses.TERMS}")
  if config.arm == "full" and r.feature_extraction:
    _require(bool(config.init_from),
             "config.arm='full' with config.rdep.feature_extraction=True needs a stage-1 run: "
             "train one with arm=stage1, then pass its workdir as --config.init_from=WORKDIR "
             "(or set config.rdep.feature_extraction=False to train the encoder from scratch)")
  _require(not config.init_from or config.arm == "full",
           f"config.init_from={config.init_from!r} is only used by arm='full'; got "
           f"arm={config.arm!r} (expected init_from='')")
  try:
    pipeline.parse_supervision(config.data.supervision)
  except ValueError as e:
    raise ConfigError(f"config.data.supervision={config.data.supervision!r}: {e}") from None
  _require(config.data.max_level in ("",) + corrupt.LEVELS,
           f"config.data.max_level={config.data.max_level!r}: expected '' or one of "
           f"{corrupt.LEVELS}")
  _require(config.data.supervision != pipeline.CLEAN
           or not (config.data.max_level or config.data.curriculum),
           "config.data.max_level / config.data.curriculum act on supervision levels: expected "
           "config.data.supervision to be a level or a mixture, not 'clean'")
  _require(config.data.on_bad_mesh in ("fail", "skip"),
           f"config.data.on_bad_mesh={config.data.on_bad_mesh!r}: expected 'fail' or 'skip'")
  _require(not config.data.mesh_dir or os.path.isdir(config.data.mesh_dir),
           f"config.data.mesh_dir={config.data.mesh_dir!r}: expected an existing folder of "
           ".off/.obj/.ply meshes (or '' for the bundled ones)")
  _positive_ints(config, [
      "batch_size", "total_steps", "log_every_steps", "eval_every_steps",
      "checkpoint_every_steps", "keep_checkpoints", "data.num_train", "data.num_validation",
      "data.num_test", "data.image_size", "data.num_surface_points", "data.num_uniform_points",
      "data.num_near_points", "data.points_per_step", "data.voxel_resolution",
      "model.encoder_width", "model.code_dim", "model.head_width", "model.decoder_hidden",
      "model.decoder_blocks", "eval.num_pred_points",
      "eval.max_instances", "eval.batch_size"])
  _require(config.data.image_size % 16 == 0,
           f"config.data.image_size={config.data.image_size}: expected a multiple of 16 "
           "(the encoder halves the resolution four times)")
  _require(config.data.points_per_step <= config.data.num_uniform_points
           + config.data.num_near_points,
           f"config.data.points_per_step={config.data.points_per_step}: expected at most "
           "num_uniform_points + num_near_points")
  validate_eval(config)
  _require(isinstance(config.eval.cost_repeats, int) and config.eval.cost_repeats >= 0,
           f"config.eval.cost_repeats={config.eval.cost_repeats!r}: expected an integer >= 0")
  for key in ("optimizer.learning_rate", "optimizer.weight_decay", "optimizer.clip_norm",
              "loss.normal_weight", "loss.depth_weight", "loss.silhouette_weight"):
    value = flatten(config.to_dict())[key]
    _require(isinstance(value, (int, float)) and value >= 0,
             f"config.{key}={value!r}: expected a non-negative number")
  _require(0 <= config.optimizer.warmup_steps < config.total_steps,
           f"config.optimizer.warmup_steps={config.optimizer.warmup_steps}: expected 0 <= "
           f"warmup_steps < total_steps={config.total_steps}")


def check_workdir(workdir: str) -> None:
  """Creates workdir if needed; raises ConfigError if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} cannot be created: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {workdir!r} is not writable; expected a writable directory")
