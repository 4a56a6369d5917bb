"""Training: train_and_evaluate, the loop of a run (what its config means is experiment.py).

Data parallel over all devices: batches sharded over the mesh's `data` axis, state replicated
(see sharding.py); over the devices of several processes after distributed.initialize, each
process loading its slice of every global batch and process 0 alone writing files
(docs/DESIGN.md section 13). The loop is one readable function; periodic actions go through
`_is_time`. The same loop trains a pack of runs as one program (train_and_evaluate_pack,
packing.py).
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from recon3d_jax import (config_lib, distributed, evaluate, experiment, packing, sharding,
                         visualize, writers)
from recon3d_jax.data import pipeline


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
  differing = config_lib.differing_keys(saved, current)
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
  return train_and_evaluate_pack([config], [workdir], mesh)[0]


def train_and_evaluate_pack(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                            mesh: Mesh | None = None) -> list[experiment.State]:
  """Trains runs that differ only in packing.PACKABLE_KEYS as one program, then evaluates each.

  Each run reads and writes its own workdir exactly as a run trained alone (config.json,
  metrics.jsonl, checkpoints of its own state and data iterator, eval/), so it resumes packed or
  alone. Runs of one seed share that seed's data stream, as they would read it alone. One run
  uses the single-run step, several experiment.make_packed_train_step. Returns each run's final
  state.
  """
  distributed.check_same_everywhere(configs, workdirs)  # First: then all processes fail alike.
  for config in configs:
    experiment.validate(config)
  if len(configs) > 1:
    packing.check_packable([json.loads(c.to_json()) for c in configs])
  for workdir in workdirs:
    config_lib.check_workdir(workdir)
  config, packed = configs[0], len(configs) > 1  # The settings all runs share.
  if config.batch_size % jax.process_count():
    raise config_lib.ConfigError(f"config.batch_size={config.batch_size}: expected a multiple "
                                 f"of the process count {jax.process_count()} (each process "
                                 "loads an equal slice of the global batch)")
  writes = distributed.is_writer()
  mesh = mesh or sharding.make_mesh()
  if config.batch_size % mesh.size:
    raise config_lib.ConfigError(f"config.batch_size={config.batch_size}: expected a multiple "
                                 f"of the device count {mesh.size}")
  managers = [experiment.checkpoint_manager(w, c) for w, c in zip(workdirs, configs)]
  for workdir, c, manager in zip(workdirs, configs, managers):
    check_compatible(workdir, c, manager)

  # ----------------------------------------------------------------------------- data + state
  sources = _load_sources(config.data, writes)
  seeds = sorted({c.seed for c in configs})
  stream_of = [seeds.index(c.seed) for c in configs]  # Run k reads stream stream_of[k].
  data_iters = [iter(pipeline.train_loader(
      sources["train"], global_batch_size=config.batch_size,
      points_per_step=config.data.points_per_step, seed=seed,
      supervision=config.data.supervision, max_level=config.data.max_level,
      curriculum=config.data.curriculum, total_steps=config.total_steps)) for seed in seeds]
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  init = experiment.init_fn(config, model, tx, mesh)
  states = [init(c.seed) for c in configs]
  logging.info("Model parameters: %d (%s)%s", experiment.count_params(states[0]["params"]),
               ", ".join(f"{name} {experiment.count_params(subtree)}"
                         for name, subtree in states[0]["params"].items()),
               f"; {len(configs)} runs packed" if packed else "")

  starts, seconds_before = [], []
  for k, (workdir, manager) in enumerate(zip(workdirs, managers)):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, states[k])
    items = dict(state=ocp.args.StandardRestore(abstract))
    if stream_of.index(stream_of[k]) == k:  # The first run of each stream restores it.
      items["data"] = grain.PyGrainCheckpointRestore(data_iters[stream_of[k]])
    start, restored = experiment.restore_newest(manager, ocp.args.Composite(**items))
    if start is None:
      start = 0
      if experiment.needs_stage1_run(configs[k]):  # A 3D-R-DEP arm: never packed.
        states[k] = experiment.init_encoder_from(states[k], configs[k].init_from, mesh)
    else:
      states[k] = restored["state"]
      _set_aside_newer(manager, workdir, start, writes)
      logging.info("%s: Resumed from step %d.", workdir, start)
    starts.append(start)
    # Training seconds of earlier sessions of this run: the clock continues from the restored
    # step's logged time, so time/train_s stays monotone and measures the time to reach each
    # step; the seconds after that row up to the crash are not counted, as their work is redone
    # (the rows that logged it are dropped).
    seconds_before.append(_train_seconds_at(_truncate_metrics(workdir, start, writes), start))
  if len(set(starts)) > 1:
    raise config_lib.ConfigError(
        f"the packed runs resume from different steps {dict(zip(workdirs, starts))}; expected "
        "runs at the same step (launch/sweep.py packs only such runs)")
  start = starts[0]

  if packed:
    state = jax.tree.map(lambda *x: jnp.stack(x), *states)
    train_step = experiment.packed_train_step_for(configs, model, tx, mesh, stream_of)
  else:
    state, train_step = states[0], experiment.train_step_for(config, model, tx, mesh)

  def next_batch() -> dict:
    if not packed:
      return sharding.shard_batch(next(data_iters[0]), mesh)
    batches = [next(it) for it in data_iters]
    return sharding.shard_batch(jax.tree.map(lambda *x: np.stack(x), *batches), mesh, axis=1)

  def unpack(tree) -> list:
    """Per-run views of a (packed) pytree."""
    if not packed:
      return [tree]
    return [jax.tree.map(lambda x: x[k], tree) for k in range(len(configs))]

  metric_writers = [writers.MetricWriter(w, enabled=writes) for w in workdirs]
  eval_mesh, for_eval = _evaluation_placement(mesh)
  pending: list[tuple[int, dict]] = []  # Device-side stats not yet checked / written.
  loop_start = time.monotonic()

  def train_seconds(k: int) -> float:
    """Cumulative seconds of run k's training loop over all its sessions."""
    return seconds_before[k] + time.monotonic() - loop_start

  # ----------------------------------------------------------------------------- loop
  try:
    with tqdm(total=config.total_steps, initial=start, desc="train", unit="step",
              dynamic_ncols=True, disable=not writes) as bar:
      for step in range(start + 1, config.total_steps + 1):
        state, stats = train_step(state, next_batch())
        pending.append((step, stats))
        bar.update(1)
        log_now = _is_time(step, config.log_every_steps, config.total_steps)
        save_now = _is_time(step, config.checkpoint_every_steps, config.total_steps)
        if log_now or save_now:
          # Checking before every save keeps non-finite parameters out of checkpoints.
          pending_host = [(s, unpack(jax.device_get(x))) for s, x in pending]
          pending.clear()
          for k, (workdir, manager) in enumerate(zip(workdirs, managers)):
            _raise_if_not_finite([(s, x[k]) for s, x in pending_host], manager,
                                 f"run {workdir}: " if packed else "")
          if log_now:
            last_step, last = pending_host[-1]
            for k, writer in enumerate(metric_writers):
              writer.write(last_step, {**{f"train/{n}": v for n, v in last[k].items()},
                                       writers.TRAIN_SECONDS: train_seconds(k)})
            bar.set_postfix(loss=f"{float(last[0]['loss/total']):.4f}")
        # Validation before the checkpoint of the same step: a checkpoint at `step` then means
        # that every row of `step` is written, so a run resumed from it misses none.
        if _is_time(step, config.eval_every_steps, config.total_steps):
          for k, run_state in enumerate(unpack(state)):
            val = evaluate.validation_losses(model, for_eval(run_state["params"]), configs[k],
                                             sources["validation"], eval_mesh)
            metric_writers[k].write(step, {**val, writers.TRAIN_SECONDS: train_seconds(k)})
        if save_now:
          for k, run_state in enumerate(unpack(state)):
            if not bool(_params_finite(run_state["params"])):  # A finite loss can still blow
              raise FloatingPointError(                       # up an update.
                  f"{'run ' + workdirs[k] + ': ' if packed else ''}non-finite parameters after "
                  f"step {step}; stopping. {_kept_checkpoint(managers[k])}")
            managers[k].save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(run_state),
                data=grain.PyGrainCheckpointSave(data_iters[stream_of[k]]),
                config=ocp.args.JsonSave(json.loads(configs[k].to_json()))))
            # Written with each checkpoint, never before the first: a run that fails earlier
            # leaves no config.json that would refuse its corrected config.
            if writes:
              writers.atomic_write(os.path.join(workdirs[k], "config.json"),
                                   configs[k].to_json(indent=2))
  finally:
    for manager in managers:
      manager.wait_until_finished()  # Whatever stops the loop, in-flight checkpoints complete.
  loop_seconds = [train_seconds(k) for k in range(len(configs))]  # Excludes the evaluation.

  # ----------------------------------------------------------------------------- final eval
  final = unpack(state)
  for k, (c, workdir, writer) in enumerate(zip(configs, workdirs, metric_writers)):
    summary = evaluate.evaluate_and_write(model, for_eval(final[k]["params"]), c, workdir,
                                          sources, eval_mesh)
    writer.write(c.total_steps, {**{f"test/{n}": v for n, v in summary.items()
                                    if isinstance(v, (int, float))},
                                 writers.TRAIN_SECONDS: loop_seconds[k]})
    writer.close()
    if writes:
      visualize.save_learning_curves(os.path.join(workdir, "eval", "learning_curves.png"),
                                     writers.read_metrics(workdir), arm=c.arm)
  return final


def _evaluation_placement(mesh: Mesh):
  """(eval mesh, params -> params on it). One process: the training mesh, as they are. Several:
  each process evaluates every instance on its own devices with the parameters fetched to host,
  so evaluation needs no cross-process batches, every process gets the same rows and finishes
  with its peers (none idles at the shutdown barrier), and process 0 writes them."""
  if jax.process_count() == 1:
    return mesh, lambda params: params
  local = sharding.make_mesh(jax.local_devices())
  return local, lambda params: jax.device_put(jax.device_get(params), sharding.replicated(local))


def _raise_if_not_finite(stats: list[tuple[int, dict]], manager: ocp.CheckpointManager,
                         prefix: str = "") -> None:
  """Stops at the first step with a non-finite statistic: the loss, or the gradient norm, which
  turns a step before the loss does (a NaN gradient makes every parameter NaN). Weight statistics
  may be NaN by definition (a level absent from the batch) and are not checked."""
  for step, values in stats:
    bad = {k: float(v) for k, v in values.items()
           if k.startswith(("loss/", "grad_norm", "param_norm")) and not np.isfinite(v)}
    if bad:
      raise FloatingPointError(
          f"{prefix}non-finite {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; "
          f"stopping. {_kept_checkpoint(manager)}")


def _kept_checkpoint(manager: ocp.CheckpointManager) -> str:
  last = manager.latest_step()
  return ("No checkpoint had been written yet." if last is None else
          f"The last good checkpoint (step {last}) is kept.")


@jax.jit
def _params_finite(params) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(params)]))


def _set_aside_newer(manager: ocp.CheckpointManager, workdir: str, step: int,
                     writes: bool = True) -> None:
  """Moves the checkpoints newer than the restored `step` (damaged ones, skipped by
  experiment.restore_newest) to WORKDIR/damaged_checkpoints, so that the resumed run can save
  those steps again; they are kept for inspection, not deleted. Of several processes, all list
  them before the writing one moves them, and all reload after."""
  newer = [s for s in manager.all_steps() if s > step]
  _barrier("listed the checkpoints")
  for s in newer if writes else []:
    target = os.path.join(workdir, "damaged_checkpoints",
                          f"{s}-{time.strftime('%Y%m%dT%H%M%S')}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(manager.directory, str(s)), target)
    logging.warning("Moved the damaged checkpoint of step %d to %s.", s, target)
  _barrier("set aside the damaged checkpoints")
  if newer:
    manager.reload()


def _load_sources(data_config, writes: bool) -> dict:
  """pipeline.load_sources; of several processes, process 0 first (building the dataset on first
  use) and the others after it, so that processes sharing a data_dir never build it together."""
  sources = pipeline.load_sources(data_config) if writes else None
  _barrier("loaded the dataset")
  return sources or pipeline.load_sources(data_config)


def _barrier(name: str) -> None:
  """Waits for all processes of a multi-process run to get here (nothing for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _truncate_metrics(workdir: str, step: int, writes: bool = True) -> list[dict]:
  """Drops metric rows after the restored step, and the final test row (if `writes`): the resumed
  run rewrites them with the same values (but later times). Returns the rows kept (none if there
  is no metrics file)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  rows = [r for r in writers.read_metrics(workdir)
          if r["step"] <= step and not any(k.startswith("test/") for k in r)]
  if writes:
    writers.atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def _train_seconds_at(rows: list[dict], step: int) -> float:
  """The latest training time logged at or before `step`: where a resumed run's clock starts.
  0 if none is logged (a run of older code, whose rows lack the key)."""
  return max((r[writers.TRAIN_SECONDS] for r in rows
              if r["step"] <= step and writers.TRAIN_SECONDS in r), default=0.0)
