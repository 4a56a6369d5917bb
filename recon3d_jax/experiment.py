"""What a config means: its validation, model, loss weights, instance weighting, optimizer, train
state and step, checkpoints, and `load(workdir)`.

Training (train.py), evaluation (evaluate.py), cost and notebooks read a config through these
functions, so each decision about a config is made in one place and evaluation never needs to
import training.

    from recon3d_jax import experiment
    model, params, config = experiment.load("DIR")
"""
from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from recon3d_jax import arms, config_lib, losses, models, sharding, weighting, writers
from recon3d_jax.data import benchmarks, corrupt, pipeline

State = dict[str, Any]  # {"step": int32 scalar, "params": pytree, "opt_state": pytree}
_require = config_lib.require


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------
def validate(config: ml_collections.ConfigDict) -> None:
  """Checks names, sizes and divisibility; raises ConfigError naming the bad value."""
  _require(config.arm in arms.ARMS,
           f"config.arm={config.arm!r}: expected one of {sorted(arms.ARMS)}")
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
  if needs_stage1_run(config):
    _require(bool(config.init_from),
             f"config.arm={config.arm!r} with config.rdep.feature_extraction=True needs a stage-1 "
             f"run: train one with arm={arms.pretraining_arm()}, then pass its workdir as "
             "--config.init_from=WORKDIR (or set config.rdep.feature_extraction=False to train "
             "the encoder from scratch)")
  _require(not config.init_from or arms.get(config.arm).rdep,
           f"config.init_from={config.init_from!r} is only used by arm="
           f"{' or '.join(map(repr, arms.rdep_arms()))}; got arm={config.arm!r} (expected "
           "init_from='')")
  try:
    pipeline.parse_supervision(config.data.supervision)
  except ValueError as e:
    raise config_lib.ConfigError(
        f"config.data.supervision={config.data.supervision!r}: {e}") from None
  _require(config.data.max_level in ("",) + corrupt.LEVELS,
           f"config.data.max_level={config.data.max_level!r}: expected '' or one of "
           f"{corrupt.LEVELS}")
  _require(config.data.supervision != pipeline.CLEAN
           or not (config.data.max_level or config.data.curriculum),
           "config.data.max_level / config.data.curriculum act on supervision levels: expected "
           "config.data.supervision to be a level or a mixture, not 'clean'")
  _require(bool(config.data.data_dir),
           f"config.data.data_dir={config.data.data_dir!r}: expected the folder of the datasets "
           "(e.g. ./data_dir; built there on first use)")
  data_dir = config.data.data_dir
  _require(not os.path.lexists(data_dir) or os.path.isdir(data_dir),
           f"config.data.data_dir={data_dir!r}: "
           + (f"a broken symbolic link to {os.readlink(data_dir)!r}" if os.path.islink(data_dir)
              else "not a folder") + "; expected the folder of the datasets (or a link to one)")
  _require(config.data.on_bad_mesh in ("fail", "skip"),
           f"config.data.on_bad_mesh={config.data.on_bad_mesh!r}: expected 'fail' or 'skip'")
  _require(not config.data.mesh_dir or os.path.isdir(config.data.mesh_dir),
           f"config.data.mesh_dir={config.data.mesh_dir!r}: expected an existing folder of "
           ".off/.obj/.ply meshes (or '' for the bundled ones)")
  config_lib.positive_ints(config, [
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
  config_lib.validate_eval(config)
  _require(isinstance(config.eval.cost_repeats, int) and config.eval.cost_repeats >= 0,
           f"config.eval.cost_repeats={config.eval.cost_repeats!r}: expected an integer >= 0")
  for key in ("optimizer.learning_rate", "optimizer.weight_decay", "optimizer.clip_norm",
              "loss.normal_weight", "loss.depth_weight", "loss.silhouette_weight"):
    value = config_lib.flatten(config.to_dict())[key]
    _require(isinstance(value, (int, float)) and value >= 0,
             f"config.{key}={value!r}: expected a non-negative number")
  _require(0 <= config.optimizer.warmup_steps < config.total_steps,
           f"config.optimizer.warmup_steps={config.optimizer.warmup_steps}: expected 0 <= "
           f"warmup_steps < total_steps={config.total_steps}")


def needs_stage1_run(config: ml_collections.ConfigDict) -> bool:
  """Whether the run starts from the encoder of the stage-1 run in config.init_from."""
  return arms.needs_stage1(config.arm, config.rdep.feature_extraction)


# ---------------------------------------------------------------------------------------------
# Model, objective, optimizer and state.
# ---------------------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict) -> models.ReconModel:
  """The model of config.arm (recon3d_jax.arms says what each arm switches on)."""
  arm = arms.get(config.arm)
  rdep = config.get("rdep") if arm.rdep else None  # Configs of older runs may lack `rdep`.
  return models.ReconModel(
      **config.model, voxel_resolution=config.data.voxel_resolution,
      input_maps=arm.input_maps, sketch=arm.sketch,
      projection_dim=rdep.projection_dim if arm.rdep and rdep.feature_extraction else 0,
      scorer_hidden=rdep.scorer_hidden if arm.rdep and rdep.adaptive_weighting else 0)


def loss_weights_for(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Loss weights of config.arm at config.loss's scales."""
  return arms.loss_weights(config.arm, normal_weight=config.loss.normal_weight,
                           depth_weight=config.loss.depth_weight,
                           silhouette_weight=config.loss.silhouette_weight)


class InstanceWeighting(NamedTuple):
  """Adaptive instance weighting of 3D-R-DEP (recon3d_jax.weighting)."""
  temperature: float  # w = softmax(scores / temperature) over the global batch.
  kl_weight: float  # lambda of + lambda * KL(w || uniform); 0 without regularisation.
  weighted_terms: Sequence[str]  # Loss terms (losses.TERMS) that the weights multiply.


def instance_weighting_for(config: ml_collections.ConfigDict) -> InstanceWeighting | None:
  """The run's instance weighting, or None (plain batch mean) unless an rdep arm with
  rdep.adaptive_weighting."""
  if not arms.get(config.arm).rdep or not config.rdep.adaptive_weighting:
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
  return init_fn(config, model, tx, mesh)(config.seed)


def init_fn(config: ml_collections.ConfigDict, model: models.ReconModel,
            tx: optax.GradientTransformation, mesh: Mesh) -> Callable[[int], State]:
  """Jitted seed -> initial state, replicated over the mesh: one compilation for any seed."""
  size = config.data.image_size
  blank = dict(image=jnp.zeros((1, size, size, 3)), mask=jnp.zeros((1, size, size)),
               depth=jnp.zeros((1, size, size)), normal=jnp.zeros((1, size, size, 3)))
  images = models.input_images(blank, model.input_maps, model.depth_offset)  # 3 or 7 channels.
  points = jnp.zeros((1, config.data.points_per_step, 3), jnp.float32)

  def init(seed):
    # The rbg PRNG compiles init several times faster than threefry on CPU.
    params = model.init(jax.random.key(seed, impl="rbg"), images, points)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  return jax.jit(init, out_shardings=sharding.replicated(mesh))


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


def train_step_for(config: ml_collections.ConfigDict, model: models.ReconModel,
                   tx: optax.GradientTransformation, mesh: Mesh):
  """The run's jitted train step: config.arm's loss weights and instance weighting."""
  return jit_train_step(make_train_step(model, tx, loss_weights_for(config),
                                        instance_weighting_for(config)), mesh)


def make_packed_train_step(model: models.ReconModel, tx: optax.GradientTransformation,
                           stream_of: Sequence[int],
                           ) -> Callable[[State, dict, dict], tuple[State, dict]]:
  """Returns step(states, batches, weights) -> (states, stats) for K packed models. Pure.

  states and stats carry a leading model axis K; batches (S, B, ...) hold one batch per data
  stream, and model k reads stream stream_of[k]; weights {term: (K,)} are each model's loss
  weights. The single-run step is vmapped over the models; lax.map (one model after another
  inside the program) was much slower on CPU (benchmarks/packing.py in benchmarks/RESULTS.md).
  """
  index = np.asarray(stream_of)

  def one(state, batch, weights):
    return make_train_step(model, tx, weights)(state, batch)

  def step(states: State, batches: dict, weights: dict) -> tuple[State, dict]:
    batches = jax.tree.map(lambda x: x[index], batches)  # (K, B, ...)
    return jax.vmap(one)(states, batches, weights)

  return step


def packed_train_step_for(configs: Sequence[ml_collections.ConfigDict],
                          model: models.ReconModel, tx: optax.GradientTransformation, mesh: Mesh,
                          stream_of: Sequence[int]):
  """The pack's jitted step(states, batches): each config's loss weights, states replicated and
  donated, batches (S, B, ...) sharded on `data` along B."""
  weights = [loss_weights_for(c) for c in configs]
  weights = {t: jnp.asarray([w[t] for w in weights], jnp.float32) for t in weights[0]}
  replicated = sharding.replicated(mesh)
  step = jax.jit(make_packed_train_step(model, tx, stream_of),
                 in_shardings=(replicated, sharding.data_sharded(mesh, axis=1), replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)
  return lambda states, batches: step(states, batches, weights)


def count_params(params) -> int:
  """Scalars in a parameter pytree: the size that the log and cost.measure report."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# Checkpoints and trained runs.
# ---------------------------------------------------------------------------------------------
def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """Atomic Orbax checkpoints of {state, data iterator} in WORKDIR/checkpoints."""
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json; eval settings of older runs are brought up to date (upgrade_eval), with
  a logged note, so that any finished run can be re-evaluated."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise config_lib.ConfigError(f"workdir {workdir!r} has no config.json; expected the "
                                 "workdir of a training run")
  config = ml_collections.ConfigDict(writers.read_json(path, "the config of a training run"))
  for note in config_lib.upgrade_eval(config):
    logging.info("%s: %s", path, note)
  return config


def load(workdir: str, step: int | None = None, mesh=None, untrained: bool = False):
  """Restores a run: returns (model, params, config).

  Latest checkpoint unless `step` is given; `untrained=True` gives the run's initial parameters
  instead (seed config.seed), a chance-level baseline.
  """
  config = load_config(workdir)
  mesh = mesh or sharding.make_mesh()
  model, tx = build_model(config), make_optimizer(config)
  if untrained:
    return model, create_train_state(config, model, tx, mesh)["params"], config
  manager = checkpoint_manager(workdir, config)
  abstract = jax.eval_shape(lambda: create_train_state(config, model, tx, mesh))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated(mesh)),
      abstract)
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
  if step is None:
    step, restored = restore_newest(manager, args)
    if step is None:
      raise config_lib.ConfigError(f"workdir {workdir!r} has no checkpoint; expected a trained "
                                   "run")
  else:
    restored = manager.restore(step, args=args)
  return model, restored["state"]["params"], config


def restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite):
  """(step, restored) of the newest checkpoint that restores, or (None, None) if there is none.

  A newer one that does not (a partial copy, a missing or garbled file) is skipped with a warning
  naming its step; if none restores, raises ConfigError naming them.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      return step, manager.restore(step, args=args)
    except Exception as e:  # pylint: disable=broad-except  (each damage raises its own kind)
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      logging.warning("Checkpoint step %d in %s is damaged and skipped (%s: %s).", step,
                      manager.directory, type(e).__name__, reason)
  if steps:
    raise config_lib.ConfigError(
        f"no checkpoint in {manager.directory} can be read (steps {sorted(steps)} are damaged; "
        "see the warnings above); expected at least one complete checkpoint, or delete the "
        "folder to start the run again")
  return None, None


def init_encoder_from(state: State, workdir: str, mesh: Mesh) -> State:
  """Replaces the encoder parameters of `state` by those of the run in `workdir` (its latest
  checkpoint, restored through Orbax); the rest of the state is unchanged.

  Raises ConfigError if workdir holds no trained run, or if its encoder's parameter names or
  shapes differ from this model's (naming the first differing path and both shapes).
  """
  try:
    _, params, stage1_config = load(workdir, mesh=mesh)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"config.init_from={workdir!r}: {e}") from None
  if stage1_config.arm != arms.pretraining_arm():
    logging.warning("config.init_from=%r is a run of arm=%r, not a stage-1 (arm=%s) run.",
                    workdir, stage1_config.arm, arms.pretraining_arm())
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
