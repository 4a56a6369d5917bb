"""Training: create_train_state, make_train_step, train_and_evaluate.

Data parallel over all devices: batches sharded over the mesh's `data` axis, state replicated
(see sharding.py). The loop is one readable function; periodic actions go through `_is_time`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh
from tqdm import tqdm

from recon3d_jax import (config_lib, evaluate, losses, models, sharding, visualize, weighting,
                         writers)
from recon3d_jax.data import corrupt, pipeline

State = dict[str, Any]  # {"step": int32 scalar, "params": pytree, "opt_state": pytree}

# Config keys that may change when a run is resumed; anything else must match the checkpoint.
RESUMABLE_KEYS = ("data.data_dir", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints",
                  # The final mesh grid (renamed since older runs were written): eval only.
                  "eval.grid_resolution", "eval.mise_resolution0", "eval.mise_upsampling_steps")


# ---------------------------------------------------------------------------------------------
# Model, optimizer and state.
# ---------------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict) -> models.ReconModel:
  """The model of config.arm (see models/model.py for what each arm switches on)."""
  full = config.arm == "full"
  rdep = config.get("rdep") if full else None  # Configs of older runs may lack `rdep`.
  return models.ReconModel(
      **config.model, voxel_resolution=config.data.voxel_resolution,
      input_maps=config.arm == "oracle", sketch=config.arm == "sketch",
      projection_dim=rdep.projection_dim if full and rdep.feature_extraction else 0,
      scorer_hidden=rdep.scorer_hidden if full and rdep.adaptive_weighting else 0)


class InstanceWeighting(NamedTuple):
  """Adaptive instance weighting of 3D-R-DEP (recon3d_jax.weighting)."""
  temperature: float  # w = softmax(scores / temperature) over the global batch.
  kl_weight: float  # lambda of + lambda * KL(w || uniform); 0 without regularisation.
  weighted_terms: Sequence[str]  # Loss terms (losses.TERMS) that the weights multiply.


def instance_weighting_for(config: ml_collections.ConfigDict) -> InstanceWeighting | None:
  """The run's instance weighting, or None (plain batch mean) unless arm=full with
  rdep.adaptive_weighting."""
  if config.arm != "full" or not config.rdep.adaptive_weighting:
    return None
  r = config.rdep
  return InstanceWeighting(temperature=r.temperature,
                           kl_weight=r.kl_weight if r.regularization else 0.0,
                           weighted_terms=tuple(r.weighted_terms))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup + cosine decay, after global-norm gradient clipping."""
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=config.total_steps, end_value=o.learning_rate * 0.01)
  return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(schedule, weight_decay=o.weight_decay))


def create_train_state(config: ml_collections.ConfigDict, model: models.ReconModel,
                       tx: optax.GradientTransformation, mesh: Mesh) -> State:
  """Initialises parameters from config.seed, replicated over the mesh."""
  size = config.data.image_size
  blank = dict(image=jnp.zeros((1, size, size, 3)), mask=jnp.zeros((1, size, size)),
               depth=jnp.zeros((1, size, size)), normal=jnp.zeros((1, size, size, 3)))
  images = models.input_images(blank, model.input_maps, model.depth_offset)  # 3 or 7 channels.
  points = jnp.zeros((1, config.data.points_per_step, 3), jnp.float32)

  def init():
    # The rbg PRNG compiles init several times faster than threefry on CPU.
    params = model.init(jax.random.key(config.seed, impl="rbg"), images, points)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def make_train_step(model: models.ReconModel, tx: optax.GradientTransformation,
                    loss_weights: dict[str, float],
                    instance_weighting: InstanceWeighting | None = None,
                    ) -> Callable[[State, dict], tuple[State, dict]]:
  """Returns train_step(state, batch) -> (new state, scalar stats). Pure; jit it.

  With instance_weighting (the model must have a scorer), the weights w = softmax(scores / tau)
  are computed on the global batch; the objective is sum_i w_i L_i over the weighted terms (the
  plain mean over the others) + kl_weight * KL(w || uniform). The scorer is trained by this same
  objective, which on its own would put all weight on the easiest instance; the KL term is what
  keeps the weights spread (see recon3d_jax.weighting).
  """

  def train_step(state: State, batch: dict) -> tuple[State, dict]:
    def loss_fn(params):
      images = models.input_images(batch, model.input_maps, model.depth_offset)
      outputs = model.apply({"params": params}, images, batch["points"])
      if instance_weighting is None:
        return losses.total_loss(outputs, batch, loss_weights)
      w = weighting.softmax_weights(outputs["score"], instance_weighting.temperature)
      loss, stats = losses.total_loss(outputs, batch, loss_weights, w,
                                      instance_weighting.weighted_terms)
      kl = weighting.kl_to_uniform(w)
      loss = loss + instance_weighting.kl_weight * kl
      stats.update(weighting.weight_stats(w, batch["level"], corrupt.LEVELS))
      stats.update({"loss/kl": kl, "loss/total": loss})
      return loss, stats

    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    stats = dict(stats, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, stats

  return train_step


def jit_train_step(train_step, mesh: Mesh):
  """Jits train_step over the mesh: state replicated and donated, batch sharded on `data`."""
  replicated = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, sharding.data_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def loss_weights_for(config: ml_collections.ConfigDict) -> dict[str, float]:
  return losses.arm_weights(config.arm, normal_weight=config.loss.normal_weight,
                            depth_weight=config.loss.depth_weight,
                            silhouette_weight=config.loss.silhouette_weight)


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------
def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Atomic Orbax checkpoints of {state, data iterator} in WORKDIR/checkpoints."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


def init_encoder_from(state: State, workdir: str, mesh: Mesh) -> State:
  """Replaces the encoder parameters of `state` by those of the run in `workdir` (its latest
  checkpoint, restored through Orbax); the rest of the state is unchanged.

  Raises ConfigError if workdir holds no trained run, or if its encoder's parameter names or
  shapes differ from this model's (naming the first differing path and both shapes).
  """
  try:
    _, params, stage1_config = evaluate.load(workdir, mesh=mesh)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"config.init_from={workdir!r}: {e}") from None
  if stage1_config.arm != "stage1":
    logging.warning("config.init_from=%r is a run of arm=%r, not a stage-1 (arm=stage1) run.",
                    workdir, stage1_config.arm)
  ours = dict(jax.tree_util.tree_flatten_with_path(state["params"]["backbone"])[0])
  theirs = dict(jax.tree_util.tree_flatten_with_path(params["backbone"])[0])
  for path in sorted(set(ours) | set(theirs), key=jax.tree_util.keystr):
    mine = ours[path].shape if path in ours else "missing"
    other = theirs[path].shape if path in theirs else "missing"
    if mine != other:
      raise config_lib.ConfigError(
          f"config.init_from={workdir!r}: its encoder does not match this model's at "
          f"backbone{jax.tree_util.keystr(path)}: checkpoint has {other}, this model has "
          f"{mine}; expected a stage-1 run of the same encoder, width and input channels")
  logging.info("Encoder initialised from %s (%d parameters).", workdir,
               count_params(params["backbone"]))
  return dict(state, params=dict(state["params"], backbone=params["backbone"]))


def check_compatible(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError if WORKDIR/config.json (of an earlier run) differs where it matters."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = config_lib.flatten(json.load(f))
  current = config_lib.flatten(json.loads(config.to_json()))
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
  if differing:
    details = ", ".join(f"{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
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
                       mesh: Mesh | None = None) -> State:
  """Trains (resuming from WORKDIR's latest checkpoint if any), then evaluates on test."""
  config_lib.validate(config)
  config_lib.check_workdir(workdir)
  mesh = mesh or sharding.make_mesh()
  if config.batch_size % mesh.size:
    raise config_lib.ConfigError(f"config.batch_size={config.batch_size}: expected a multiple "
                                 f"of the device count {mesh.size}")
  check_compatible(workdir, config)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))

  # ----------------------------------------------------------------------------- data + state
  sources = pipeline.load_sources(config.data)
  loader = pipeline.train_loader(sources["train"], global_batch_size=config.batch_size,
                                 points_per_step=config.data.points_per_step, seed=config.seed,
                                 supervision=config.data.supervision,
                                 max_level=config.data.max_level,
                                 curriculum=config.data.curriculum,
                                 total_steps=config.total_steps)
  data_iter = iter(loader)
  model, tx = build_model(config), make_optimizer(config)
  state = create_train_state(config, model, tx, mesh)
  logging.info("Model parameters: %d (%s)", count_params(state["params"]), ", ".join(
      f"{name} {count_params(subtree)}" for name, subtree in state["params"].items()))

  manager = checkpoint_manager(workdir, config)
  start = manager.latest_step() or 0
  seconds_before = 0.0  # Training seconds of earlier sessions of this run (see below).
  if not start and config.arm == "full" and config.rdep.feature_extraction:
    state = init_encoder_from(state, config.init_from, mesh)
  if start:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=grain.PyGrainCheckpointRestore(data_iter)))
    state = restored["state"]
    kept_rows = _truncate_metrics(workdir, start)
    # The clock continues from the restored step's logged time, so time/train_s stays monotone
    # and measures the time to reach each step; the seconds after that row up to the crash are
    # not counted, as their work is redone (the rows that logged it were dropped above).
    seconds_before = _train_seconds_at(kept_rows, start)
    logging.info("Resumed from step %d.", start)

  train_step = jit_train_step(make_train_step(model, tx, loss_weights_for(config),
                                              instance_weighting_for(config)), mesh)
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
          manager.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), data=grain.PyGrainCheckpointSave(data_iter)))
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
  for step, values in stats:
    if not np.isfinite(values["loss/total"]):
      raise FloatingPointError(
          f"non-finite loss ({values['loss/total']}) at step {step}; stopping. The last good "
          f"checkpoint (step {manager.latest_step()}) is kept.")


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
