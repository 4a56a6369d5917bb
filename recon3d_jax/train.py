"""Training: train_and_evaluate, the loop of a run (what its config means is experiment.py).

Data parallel over all devices: batches sharded over the mesh's `data` axis, state replicated
(see sharding.py). The loop is one readable function; periodic actions go through `_is_time`.
"""
from __future__ import annotations

import json
import os
import time

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh
from tqdm import tqdm

from recon3d_jax import config_lib, evaluate, experiment, sharding, visualize, writers
from recon3d_jax.data import pipeline

# Config keys that may change when a run is resumed; anything else must match the checkpoint.
RESUMABLE_KEYS = ("data.data_dir", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints",
                  # The final mesh grid (renamed since older runs were written): eval only.
                  "eval.grid_resolution", "eval.mise_resolution0", "eval.mise_upsampling_steps")


# ---------------------------------------------------------------------------------------------
# Resuming.
# ---------------------------------------------------------------------------------------------
def check_compatible(workdir: str, config: ml_collections.ConfigDict,
                     manager: ocp.CheckpointManager) -> None:
  """Raises ConfigError if the run in WORKDIR was trained with a config that differs where it
  matters: the one its latest checkpoint carries (a workdir copied without config.json is still
  checked), else WORKDIR/config.json."""
  step = manager.latest_step()
  saved, source = None, "checkpoint"
  if step is not None and "config" in manager.item_metadata(step):
    _, restored = experiment.restore_newest(
        manager, ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved = restored["config"]
  elif os.path.exists(path := os.path.join(workdir, "config.json")):
    saved, source = writers.read_json(path, "the config of the run in this workdir"), "config.json"
  elif step is not None:
    raise config_lib.ConfigError(
        f"workdir {workdir!r} holds checkpoints that carry no config and has no config.json; "
        "expected the workdir of a run written by this version, or a new workdir")
  if saved is None:
    return
  saved, current = config_lib.flatten(saved), config_lib.flatten(json.loads(config.to_json()))
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if differing:
    details = ", ".join(f"{k}: {source} has {saved.get(k)!r}, config has {current.get(k)!r}"
                        for k in differing[:5])
    raise config_lib.ConfigError(
        f"workdir {workdir!r} holds a run with an incompatible config ({details}); "
        "expected the same config to resume, or use a new workdir")


def _is_time(step: int, every_steps: int, total_steps: int) -> bool:
  """The one place that decides whether a periodic action (log/eval/save) happens at `step`."""
  return step % every_steps == 0 or step == total_steps


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: Mesh | None = None) -> experiment.State:
  """Trains (resuming from WORKDIR's latest checkpoint if any), then evaluates on test."""
  experiment.validate(config)
  config_lib.check_workdir(workdir)
  mesh = mesh or sharding.make_mesh()
  if config.batch_size % mesh.size:
    raise config_lib.ConfigError(f"config.batch_size={config.batch_size}: expected a multiple "
                                 f"of the device count {mesh.size}")
  manager = experiment.checkpoint_manager(workdir, config)
  check_compatible(workdir, config, manager)

  # ----------------------------------------------------------------------------- data + state
  sources = pipeline.load_sources(config.data)
  loader = pipeline.train_loader(sources["train"], global_batch_size=config.batch_size,
                                 points_per_step=config.data.points_per_step, seed=config.seed,
                                 supervision=config.data.supervision,
                                 max_level=config.data.max_level,
                                 curriculum=config.data.curriculum,
                                 total_steps=config.total_steps)
  data_iter = iter(loader)
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  state = experiment.create_train_state(config, model, tx, mesh)
  logging.info("Model parameters: %d (%s)", experiment.count_params(state["params"]), ", ".join(
      f"{name} {experiment.count_params(subtree)}" for name, subtree in state["params"].items()))

  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  start, restored = experiment.restore_newest(manager, ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=grain.PyGrainCheckpointRestore(data_iter)))
  if start is None:
    start = 0
    if experiment.needs_stage1_run(config):
      state = experiment.init_encoder_from(state, config.init_from, mesh)
  else:
    state = restored["state"]
    _set_aside_newer(manager, workdir, start)
    logging.info("Resumed from step %d.", start)
  kept_rows = _truncate_metrics(workdir, start)
  # Training seconds of earlier sessions of this run: the clock continues from the restored
  # step's logged time, so time/train_s stays monotone and measures the time to reach each step;
  # the seconds after that row up to the crash are not counted, as their work is redone (the
  # rows that logged it were dropped above).
  seconds_before = _train_seconds_at(kept_rows, start)

  train_step = experiment.train_step_for(config, model, tx, mesh)
  writer = writers.MetricWriter(workdir)
  pending: list[tuple[int, dict]] = []  # Device-side stats not yet checked / written.
  loop_start = time.monotonic()

  def train_seconds() -> float:
    """Cumulative seconds of the training loop over all sessions of this run."""
    return seconds_before + time.monotonic() - loop_start

  # ----------------------------------------------------------------------------- loop
  try:
    with tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
              dynamic_ncols=True) as bar:
      for step in range(start + 1, config.total_steps + 1):
        state, stats = train_step(state, sharding.shard_batch(next(data_iter), mesh))
        pending.append((step, stats))
        bar.update(1)
        log_now = _is_time(step, config.log_every_steps, config.total_steps)
        save_now = _is_time(step, config.checkpoint_every_steps, config.total_steps)
        if log_now or save_now:
          # Checking before every save keeps non-finite parameters out of checkpoints.
          pending_host = [(s, jax.device_get(x)) for s, x in pending]
          pending.clear()
          _raise_if_not_finite(pending_host, manager)
          if log_now:
            last_step, last = pending_host[-1]
            writer.write(last_step, {**{f"train/{k}": v for k, v in last.items()},
                                     writers.TRAIN_SECONDS: train_seconds()})
            bar.set_postfix(loss=f"{float(last['loss/total']):.4f}")
        if save_now:
          if not bool(_params_finite(state["params"])):  # A finite loss can still blow up an update.
            raise FloatingPointError(f"non-finite parameters after step {step}; stopping. "
                                     + _kept_checkpoint(manager))
          manager.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), data=grain.PyGrainCheckpointSave(data_iter),
              config=ocp.args.JsonSave(json.loads(config.to_json()))))
          # Written with each checkpoint, never before the first: a run that fails earlier
          # leaves no config.json that would refuse its corrected config.
          writers.atomic_write(os.path.join(workdir, "config.json"), config.to_json(indent=2))
        if _is_time(step, config.eval_every_steps, config.total_steps):
          val = evaluate.validation_losses(model, state["params"], config,
                                           sources["validation"], mesh)
          writer.write(step, {**val, writers.TRAIN_SECONDS: train_seconds()})
  finally:
    manager.wait_until_finished()  # Whatever stops the loop, in-flight checkpoints complete.
  loop_seconds = train_seconds()  # Excludes the final evaluation below.

  # ----------------------------------------------------------------------------- final eval
  summary = evaluate.evaluate_and_write(model, state["params"], config, workdir, sources, mesh)
  writer.write(config.total_steps, {**{f"test/{k}": v for k, v in summary.items()
                                       if isinstance(v, (int, float))},
                                    writers.TRAIN_SECONDS: loop_seconds})
  writer.close()
  visualize.save_learning_curves(os.path.join(workdir, "eval", "learning_curves.png"),
                                 writers.read_metrics(workdir), arm=config.arm)
  return state


def _raise_if_not_finite(stats: list[tuple[int, dict]], manager: ocp.CheckpointManager) -> None:
  """Stops at the first step with a non-finite statistic: the loss, or the gradient norm, which
  turns a step before the loss does (a NaN gradient makes every parameter NaN). Weight statistics
  may be NaN by definition (a level absent from the batch) and are not checked."""
  for step, values in stats:
    bad = {k: float(v) for k, v in values.items()
           if k.startswith(("loss/", "grad_norm", "param_norm")) and not np.isfinite(v)}
    if bad:
      raise FloatingPointError(
          f"non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; "
          f"stopping. {_kept_checkpoint(manager)}")


def _kept_checkpoint(manager: ocp.CheckpointManager) -> str:
  last = manager.latest_step()
  return ("No checkpoint had been written yet." if last is None else
          f"The last good checkpoint (step {last}) is kept.")


@jax.jit
def _params_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))


def _set_aside_newer(manager: ocp.CheckpointManager, workdir: str, step: int) -> None:
  """Moves the checkpoints newer than the restored `step` (damaged ones, skipped by
  experiment.restore_newest) to WORKDIR/damaged_checkpoints, so that the resumed run can save
  those steps again; they are kept for inspection, not deleted."""
  newer = [s for s in manager.all_steps() if s > step]
  for s in newer:
    target = os.path.join(workdir, "damaged_checkpoints",
                          f"{s}-{time.strftime('%Y%m%dT%H%M%S')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(manager.directory, str(s)), target)
    logging.warning("Moved the damaged checkpoint of step %d to %s.", s, target)
  if newer:
    manager.reload()


def _truncate_metrics(workdir: str, step: int) -> list[dict]:
  """Drops metric rows after the restored step: the resumed run rewrites them with the same
  values (but later times). Returns the rows kept (none if there is no metrics file)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = [r for r in writers.read_metrics(workdir) if r["step"] <= step]
  writers.atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def _train_seconds_at(rows: list[dict], step: int) -> float:
  """The latest training time logged at or before `step`: where a resumed run's clock starts.
  0 if none is logged (a run of older code, whose rows lack the key)."""
  return max((r[writers.TRAIN_SECONDS] for r in rows
              if r["step"] <= step and writers.TRAIN_SECONDS in r), default=0.0)
