"""Cost of a model (docs/DESIGN.md section 7): parameters, train-step time, inference latency,
memory.

    from recon3d_jax import cost, experiment
    tx = experiment.make_optimizer(config)
    step = experiment.train_step_for(config, model, tx, mesh)
    cost.measure(config, model, params, mesh, tx, step)
    # {'params': 1615110, 'train_step_s': ..., 'infer_latency_b1_s': ..., ...}

Timings are wall-clock medians over `repeats` calls after one warm-up call (compilation is done
before, and not timed), on synthetic inputs of the configured shapes: the cost of a step does not
depend on the values. Absolute times only mean something on a quiet machine; compare models
measured side by side.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh

from recon3d_jax import experiment, models, sharding


def synthetic_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0) -> dict:
  """A training batch of the configured shapes and dtypes (see recon3d_jax.data.pipeline), as
  numpy, with H = config.data.image_size, M = config.data.points_per_step,
  R = config.data.voxel_resolution: image (B,H,H,3), depth, mask, depth_valid, normal_valid
  (B,H,H), normal (B,H,H,3) unit, points (B,M,3), occ (B,M), voxels (B,R,R,R) uint8, level (B,)
  int32 supervision levels."""
  b, h, m = batch_size, config.data.image_size, config.data.points_per_step
  r = config.data.voxel_resolution
  rng = np.random.default_rng(seed)
  normal = rng.standard_normal((b, h, h, 3)).astype(np.float32)
  mask = (rng.random((b, h, h)) > 0.5).astype(np.float32)
  return dict(
      image=rng.random((b, h, h, 3), np.float32),
      depth=rng.random((b, h, h), np.float32) + 2.0,
      normal=normal / np.linalg.norm(normal, axis=-1, keepdims=True),
      mask=mask, depth_valid=mask, normal_valid=mask,
      points=rng.random((b, m, 3), np.float32) - 0.5,
      occ=(rng.random((b, m)) > 0.5).astype(np.float32),
      voxels=(rng.random((b, r, r, r)) > 0.5).astype(np.uint8),
      level=rng.integers(0, 5, b).astype(np.int32))


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall-clock seconds of fn() (its result blocked on) over `repeats` calls after one
  warm-up call."""
  if repeats < 1:
    raise ValueError(f"repeats={repeats}: expected at least 1")
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def compiled_peak_bytes(compiled) -> int:
  """Per-device bytes of a compiled computation: arguments + outputs + temporaries, minus the
  outputs that alias donated arguments (counted once). XLA's static buffer assignment."""
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def _device_peak_bytes(devices) -> int | None:
  """Largest `peak_bytes_in_use` over `devices` since the process started; None where the
  runtime does not track it (CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  return None if None in peaks else int(max(peaks))


def measure(config: ml_collections.ConfigDict, model: nn.Module, params, mesh: Mesh,
            tx: optax.GradientTransformation,
            train_step: Callable[[experiment.State, dict], tuple[experiment.State, dict]],
            repeats: int = 5) -> dict[str, Any]:
  """Measures the cost of `model` with `params` (replicated over `mesh`, as in training).

  Args:
    config: the run's config (batch sizes, image size, points per step).
    model: the run's model (experiment.build_model(config)).
    params: its parameters; not modified (the timed train steps update a copy).
    mesh: the data-parallel mesh (sharding.make_mesh()).
    tx: the run's optimizer (experiment.make_optimizer(config)), whose state the step updates.
    train_step: the run's jitted train step (experiment.train_step_for(config, model, tx, mesh)):
      the caller's, so that what is timed is what trains.
    repeats: timed calls per measurement, after one warm-up call each.

  Returns:
    params: number of parameters.
    train_step_s: median seconds of one jitted train step (forward, backward, optimizer update;
      config's arm and optimizer) at config.batch_size, sharded over the mesh.
    infer_latency_b1_s: median seconds of the jitted forward pass (image -> depth, normal,
      silhouette maps + occupancy logits at config.data.points_per_step points) on one image,
      on one device.
    infer_latency_batch_s: the same at config.eval.batch_size, sharded over the mesh (padded to
      a multiple of the device count, as the evaluation does).
    peak_memory_bytes: on devices that track it (GPU, TPU), the runtime's peak bytes in use
      since the process started (max over the mesh's devices; includes anything run before);
      otherwise (CPU) the train step's per-device compiled size: arguments + outputs +
      temporaries, minus donated-and-aliased outputs.
    peak_memory_source: "device_peak_bytes_in_use" or "compiled_train_step".
    platform, device_kind: of the mesh's devices; num_devices: mesh size.
  """
  if config.batch_size % mesh.size:
    raise ValueError(f"config.batch_size={config.batch_size}: expected a multiple of the "
                     f"device count {mesh.size}")
  replicated = sharding.replicated(mesh)

  # Train step, on a copy of the parameters: the jitted step donates its state.
  state_params = jax.device_put(params, replicated, may_alias=False)
  state = {"step": jax.device_put(np.int32(0), replicated), "params": state_params,
           "opt_state": jax.jit(tx.init, out_shardings=replicated)(state_params)}
  batch = sharding.shard_batch(synthetic_batch(config, config.batch_size), mesh)
  compiled_step = train_step.lower(state, batch).compile()
  holder = {"state": state}

  def run_step():
    holder["state"], stats = compiled_step(holder["state"], batch)
    return stats

  train_step_s = median_seconds(run_step, repeats)
  del holder

  # Forward pass at batch 1 (one device) and at the eval batch size (sharded, padded). The
  # inputs are what the train step feeds the model (RGB, plus the true maps for the oracle).
  def forward(p, batch):
    images = models.input_images(batch, model.input_maps, model.depth_offset)
    return model.apply({"params": p}, images, batch["points"])

  forward = jax.jit(forward)

  def latency(params_on, inputs) -> float:
    compiled = forward.lower(params_on, inputs).compile()
    return median_seconds(lambda: compiled(params_on, inputs), repeats)

  def forward_inputs(batch_size):
    return {k: v for k, v in synthetic_batch(config, batch_size).items()
            if k in ("image", "points", "depth", "normal", "mask", "depth_valid", "normal_valid")}

  device = mesh.devices.flat[0]
  infer_b1_s = latency(jax.device_put(params, device), jax.device_put(forward_inputs(1), device))
  padded, _ = sharding.pad_batch(forward_inputs(config.eval.batch_size), mesh.size)
  infer_batch_s = latency(jax.device_put(params, replicated), sharding.shard_batch(padded, mesh))

  device_peak = _device_peak_bytes(mesh.devices.flat)
  return dict(
      params=experiment.count_params(params),
      train_step_s=train_step_s,
      infer_latency_b1_s=infer_b1_s,
      infer_latency_batch_s=infer_batch_s,
      peak_memory_bytes=(device_peak if device_peak is not None
                         else compiled_peak_bytes(compiled_step)),
      peak_memory_source=("device_peak_bytes_in_use" if device_peak is not None
                          else "compiled_train_step"),
      platform=device.platform,
      device_kind=device.device_kind,
      num_devices=mesh.size)
