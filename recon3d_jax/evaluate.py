"""Evaluation: per-instance 3D and 2.5D metrics and the eval-only entry.

    python -m recon3d_jax.evaluate --workdir=DIR              # re-evaluates a trained run
    python -m recon3d_jax.evaluate --workdir=DIR --untrained  # same config, initial parameters
    python -m recon3d_jax.evaluate --workdir=DIR --baselines_only  # only the baselines, no model
    python -m recon3d_jax.evaluate --baselines_only --config=configs/default.py --out=DIR

A trained run for a notebook: `experiment.load(workdir)` -> (model, params, config).

Protocol (docs/DESIGN.md section 7): the occupancy threshold - used for IoU and as the
marching-cubes level - is chosen on the validation split only, by mean IoU over
config.eval.threshold_candidates.
`iou`, `accuracy` and `ece` are measured at the R^3 voxel centres of the unit cube
(R = config.data.voxel_resolution, centres (arange(R) + 0.5) / R - 0.5 per axis) against the
record's stored `voxels`, the exact occupancy there. Objects are normalised into the unit cube,
so the rest of the 1.1 box is empty for every shape: `iou` is a regular-grid estimate of the
volumetric IoU with exact labels, on the same points for every model and for the recognition
baselines (recon3d_jax/baselines.py), which may predict any training shape. (The training-time
val/iou@0.5 stays at the stored uniform query points of the 1.1 box.)
Each instance's occupancy is also extracted at that threshold by MISE (recon3d_jax/mise.py) on a
grid of R = eval.mise_resolution0 * 2**eval.mise_upsampling_steps + 1 points per side spanning the
1.1 box (129 in the default: 128^3 cells of 0.0086, finer than tau = 0.01), meshed by marching
cubes, and eval.num_pred_points area-uniform samples of the mesh are compared with the stored
ground-truth surface samples; each row's `mise_points` says how many points MISE evaluated.
Results: WORKDIR/eval/<split>.jsonl (one row per instance, keyed by its dataset index so arms can
be paired), eval/summary.json (means per split, the threshold, the mesh grid under "mesh_grid",
and under "baselines" the baselines' test means),
eval/baselines_test.jsonl (the baselines' rows) and eval/<split>.png.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from recon3d_jax import (baselines, cli, config_lib, cost, distributed, experiment, losses,
                         metrics, mise, models, sharding, visualize, writers)
from recon3d_jax.data import pipeline

GRID_CHUNK = 8192  # Query points per decoder call at a fixed point set (voxel centres).
MISE_CHUNK = 8192  # Query points per instance and decoder call of the mesh extraction.


# ---------------------------------------------------------------------------------------------
# Jitted model calls (cached per model so repeated evaluations do not retrace).
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _forward(model):
  return jax.jit(lambda params, images, points: model.apply({"params": params}, images, points))


def _decode_probs(model, params, latent, points):
  """latent (from encode), points (B,N,3) -> (B,N) occupancy probabilities: the one decode every
  evaluation query (voxel centres, MISE) goes through."""
  return jax.nn.sigmoid(model.apply({"params": params}, latent, points,
                                    method=type(model).decode_occupancy))


@functools.lru_cache(maxsize=None)
def _encode(model):
  """Jitted fn(params, images (B,H,W,C)) -> latent; MISE encodes a batch once, then decodes."""
  return jax.jit(lambda params, images: model.apply({"params": params}, images,
                                                    method=type(model).encode))


@functools.lru_cache(maxsize=None)
def _decode(model):
  """Jitted _decode_probs. MISE always queries (B, chunk, 3) points, so it compiles once per
  model and batch shape."""
  return jax.jit(functools.partial(_decode_probs, model))


def _lattice(axis: np.ndarray) -> np.ndarray:
  """(R,) coordinates -> (R,R,R,3) points, indexed [x,y,z] like the dataset's voxels."""
  return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)


def voxel_centres(resolution: int) -> np.ndarray:
  """(R,R,R,3) float32 voxel centres of the unit cube, where the records' `voxels` are exact."""
  return _lattice((np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5)


def _probs_at(model, points: np.ndarray):
  """Returns fn(params, images (B,H,W,C)) -> (B, *points.shape[:-1]) occupancy probabilities at
  the fixed `points` (...,3). Encodes once, then decodes GRID_CHUNK points per step
  (jax.lax.map), so memory stays bounded however many points there are."""
  flat = points.reshape(-1, 3)
  pad = -len(flat) % GRID_CHUNK
  chunks = np.pad(flat, ((0, pad), (0, 0))).reshape(-1, GRID_CHUNK, 3)

  @jax.jit
  def fn(params, images):
    latent = model.apply({"params": params}, images, method=type(model).encode)
    batch_size = images.shape[0]

    def decode(chunk):
      return _decode_probs(model, params, latent,
                           jnp.broadcast_to(chunk, (batch_size,) + chunk.shape))

    probs = jax.lax.map(decode, chunks)  # (num_chunks, B, GRID_CHUNK)
    probs = jnp.moveaxis(probs, 1, 0).reshape(batch_size, -1)[:, :len(flat)]
    return probs.reshape((batch_size,) + points.shape[:-1])

  return fn


@functools.lru_cache(maxsize=None)
def _voxel_probs(model, resolution: int):
  """Returns fn(params, images (B,H,W,3)) -> occupancy probabilities (B,R,R,R) at the voxel
  centres (`voxel_centres`), the points of the final IoU/accuracy/ECE."""
  return _probs_at(model, voxel_centres(resolution))


def predict(model, params, batch: dict, mesh, voxel_resolution: int | None = None) -> dict:
  """Model outputs for an eval batch on the mesh, as numpy, padding removed.

  Returns depth, normal, mask_logits (B,H,W[,3]), occ_logits and occ_prob (B,Mu) at
  batch["points_uniform"], voxel_logits (B,R,R,R) for the voxel decoder and, if
  voxel_resolution is given, voxel_prob (B,R,R,R) at the voxel centres (like batch["voxels"]).
  The oracle's input maps are the batch's (clean) depth and normals. The mesh grid needs the
  threshold, so it comes from `mesh_grids`.
  """
  images = np.asarray(models.input_images(batch, model.input_maps, model.depth_offset))
  padded, n = sharding.pad_batch({"image": images, "points": batch["points_uniform"]}, mesh.size)
  sharded = sharding.shard_batch(padded, mesh)
  out = _forward(model)(params, sharded["image"], sharded["points"])
  result = dict(depth=out["depth"], normal=out["normal"], mask_logits=out["mask_logits"],
                occ_logits=out["occ_logits"], occ_prob=jax.nn.sigmoid(out["occ_logits"]))
  if "voxel_logits" in out:
    result["voxel_logits"] = out["voxel_logits"]
  if voxel_resolution:
    result["voxel_prob"] = _voxel_probs(model, voxel_resolution)(params, sharded["image"])
  return {k: np.asarray(v)[:n] for k, v in result.items()}


def occupancy_fn(members, batch: dict, mesh) -> mise.OccupancyFn:
  """MISE's occupancy_fn for one eval batch of n instances: points (n, chunk, 3) -> (n, chunk),
  the mean occupancy probability of `members`, (model, params) pairs (one for a run, K for an
  ensemble: averaging probabilities before refining keeps MISE following the ensemble's own
  surface). Each member encodes the batch once; points are padded and sharded like the batch."""
  n = len(batch["image"])
  latents = []
  for model, params in members:
    images = np.asarray(models.input_images(batch, model.input_maps, model.depth_offset))
    padded, _ = sharding.pad_batch({"image": images}, mesh.size)
    latents.append(_encode(model)(params, sharding.shard_batch(padded, mesh)["image"]))

  def fn(points):
    padded, _ = sharding.pad_batch({"points": points}, mesh.size)
    sharded = sharding.shard_batch(padded, mesh)["points"]
    probs = [_decode(model)(params, latent, sharded)
             for (model, params), latent in zip(members, latents)]
    return np.mean([np.asarray(p)[:n] for p in probs], axis=0)

  return fn


def mesh_grids(members, batch: dict, mesh, threshold: float,
               eval_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """(n,R,R,R) occupancy grids of the batch for marching cubes at `threshold` and (n,) the points
  evaluated per instance (per member): `mise_grids` of the model's occupancy. members: as in
  `occupancy_fn`."""
  return mise_grids(occupancy_fn(members, batch, mesh), len(batch["image"]), threshold,
                    eval_config)


def mise_grids(fn: mise.OccupancyFn, batch_size: int, threshold: float,
               eval_config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
  """mise.extract_grid of any occupancy function as the evaluation meshes predictions: with
  eval.mise_resolution0 and eval.mise_upsampling_steps (0: the dense grid)."""
  resolution0 = eval_config.mise_resolution0
  # One fixed query shape; no bigger than the coarse grid, so tiny grids are not mostly padding.
  chunk = min(MISE_CHUNK, (resolution0 + 1)**3)
  return mise.extract_grid(fn, batch_size, threshold, resolution0,
                           eval_config.mise_upsampling_steps, chunk=chunk)


# ---------------------------------------------------------------------------------------------
# During training: validation losses and IoU.
# ---------------------------------------------------------------------------------------------
def validation_losses(model, params, config: ml_collections.ConfigDict, source, mesh) -> dict:
  """Mean loss terms (all arms' terms, unweighted) and IoU@0.5 over the validation split."""
  rows = []
  for batch, pred in _split_predictions(model, params, config, source, mesh, voxels=False):
    occ = batch["occ_uniform"].astype(np.float32)
    terms = losses.loss_terms(pred, dict(occ=occ, depth=batch["depth"], normal=batch["normal"],
                                         mask=batch["mask"], voxels=batch["voxels"]))
    for i in range(len(occ)):
      row = {f"val/loss/{k}": float(v[i]) for k, v in terms.items()}
      row["val/iou@0.5"] = metrics.occupancy_metrics(pred["occ_prob"][i], occ[i] > 0)["iou"]
      rows.append(row)
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# ---------------------------------------------------------------------------------------------
# Final evaluation.
# ---------------------------------------------------------------------------------------------
def instance_metrics(pred: dict, example: dict, threshold: float, num_pred_points: int,
                     rng: np.random.Generator) -> dict:
  """All metrics of one instance. pred: outputs of `predict` for it (voxel_prob included) with
  its `mesh_grids` grid and, if given, mise_points; example: its record. Occupancy metrics at
  the voxel centres (module docstring)."""
  labels = np.asarray(example["voxels"]).ravel() > 0
  probs = np.asarray(pred["voxel_prob"]).ravel()
  row = dict(metrics.occupancy_metrics(probs, labels, threshold))
  row["ece"] = metrics.expected_calibration_error(probs, labels)
  vertices, faces = metrics.mesh_from_occupancy(pred["grid"], threshold)
  points, normals = metrics.sample_surface(vertices, faces, num_pred_points, rng)
  row.update(metrics.pointcloud_metrics(points, normals, example["surface_points"],
                                        example["surface_normals"]))
  foreground = example["mask"] > 0.5
  row.update(metrics.depth_metrics(pred["depth"], example["depth"], foreground))
  row.update(metrics.normal_metrics(pred["normal"], example["normal"], foreground))
  if "mise_points" in pred:
    row["mise_points"] = int(pred["mise_points"])
  return row


def _split_predictions(model, params, config, source, mesh, voxels: bool):
  """Yields (batch, predictions) over the split's first eval.max_instances instances; with the
  voxel-centre probabilities if `voxels`."""
  for batch in pipeline.eval_batches(source, config.eval.batch_size, config.eval.max_instances):
    yield batch, predict(model, params, batch, mesh,
                         config.data.voxel_resolution if voxels else None)


def choose_threshold(model, params, config, validation_source, mesh) -> float:
  """Occupancy threshold maximising mean validation IoU at the voxel centres (never looks at
  test)."""
  probs, labels = [], []
  for batch, pred in _split_predictions(model, params, config, validation_source, mesh,
                                        voxels=True):
    probs.extend(pred["voxel_prob"].reshape(len(pred["voxel_prob"]), -1))
    labels.extend(baselines.voxel_labels(batch))
  return metrics.select_threshold(probs, labels, list(config.eval.threshold_candidates))


def evaluate_split(model, params, config, source, mesh, threshold: float) -> tuple[list, dict]:
  """Per-instance rows of one split, plus the first batch's data for the picture."""
  rows, picture = [], None
  for batch, pred in _split_predictions(model, params, config, source, mesh, voxels=True):
    grid, evaluated = mesh_grids([(model, params)], batch, mesh, threshold, config.eval)
    pred = dict(pred, grid=grid, mise_points=evaluated)
    for i in range(len(batch["image"])):
      example = {k: v[i] for k, v in batch.items()}
      rng = np.random.default_rng([config.seed, int(example["index"])])
      row = {"index": int(example["index"]), "kind": int(example["kind"])}
      row.update(instance_metrics({k: v[i] for k, v in pred.items()}, example, threshold,
                                  config.eval.num_pred_points, rng))
      rows.append(row)
    if picture is None:
      picture = (batch, pred)
  return rows, picture


def unsupervised_heads(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Prediction heads whose loss weight is 0 in the run (e.g. depth in the `normal` arm)."""
  weights = experiment.loss_weights_for(config)
  return tuple(head for head in visualize.HEAD_COLUMNS if weights[head] == 0)


def evaluate_and_write(model, params, config: ml_collections.ConfigDict, workdir: str, sources,
                       mesh, splits=("validation", "test"), subdir: str = "eval") -> dict:
  """Chooses the threshold on validation, evaluates `splits`, writes WORKDIR/<subdir>/*, with the
  recognition baselines' test rows and means (baselines.cached_baselines).

  Returns the test summary: metric means plus threshold and instance count.
  """
  config_lib.validate_eval(config)
  eval_dir = os.path.join(workdir, subdir)
  os.makedirs(eval_dir, exist_ok=True)
  writes = distributed.is_writer()  # Every process of a run evaluates (train.py); one writes.
  threshold = choose_threshold(model, params, config, sources["validation"], mesh)
  logging.info("Occupancy threshold chosen on validation: %.2f", threshold)
  summary = {"threshold": threshold, "mesh_grid": mesh_grid_summary(config.eval)}
  for split in splits:
    rows, (batch, pred) = evaluate_split(model, params, config, sources[split], mesh, threshold)
    if writes:
      writers.atomic_write(os.path.join(eval_dir, f"{split}.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in rows))
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("index", "kind")}
    summary[split] = dict(means, num_instances=len(rows))
    if writes:
      visualize.save_prediction_grid(os.path.join(eval_dir, f"{split}.png"), batch, pred,
                                     threshold, config.eval.num_picture_instances,
                                     unsupervised_heads(config))
    logging.info("%s: IoU %.4f, F@0.02 %.4f, Chamfer-L1 %.4f (n=%d); MISE evaluated %.0f of "
                 "%d grid points per instance", split, means["iou"], means["fscore@0.02"],
                 means["chamfer_l1"], len(rows), means["mise_points"],
                 summary["mesh_grid"]["grid_points"])
  summary["baselines"] = _baselines(config, sources, eval_dir, writes)
  if config.eval.cost_repeats:
    tx = experiment.make_optimizer(config)
    summary["cost"] = cost.measure(config, model, params, mesh, tx,
                                   experiment.train_step_for(config, model, tx, mesh),
                                   repeats=config.eval.cost_repeats)
    logging.info("Cost: %s", summary["cost"])
  if writes:
    writers.atomic_write(os.path.join(eval_dir, "summary.json"), json.dumps(summary, indent=2))
  return dict(summary["test"], threshold=threshold) if "test" in summary else summary


def mesh_grid_summary(eval_config: ml_collections.ConfigDict) -> dict:
  """The summary.json entry saying which grid the meshes came from, so mise_points has a scale."""
  side = eval_config.mise_resolution0 * 2**eval_config.mise_upsampling_steps + 1
  return dict(resolution0=eval_config.mise_resolution0,
              upsampling_steps=eval_config.mise_upsampling_steps, points_per_side=side,
              grid_points=side**3)


def _baselines(config: ml_collections.ConfigDict, sources, eval_dir: str,
               write_rows: bool = True) -> dict:
  """Computes (or reads the cached) baselines, writes EVAL_DIR/baselines_test.jsonl (if
  write_rows), logs one line, and returns the summary.json entry."""
  result = baselines.cached_baselines(sources, config)
  if write_rows:
    baselines.write_rows(eval_dir, result)
  baselines.log_summary(result)
  return baselines.summary(result)


def write_baselines_only(config: ml_collections.ConfigDict, eval_dir: str) -> dict:
  """The baselines of config.data's dataset without a model: EVAL_DIR/baselines_test.jsonl, and
  the "baselines" entry of EVAL_DIR/summary.json (created, or updated keeping its other keys)."""
  os.makedirs(eval_dir, exist_ok=True)
  entry = _baselines(config, pipeline.load_sources(config.data), eval_dir)
  path = os.path.join(eval_dir, "summary.json")
  summary = {}
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  summary["baselines"] = entry
  writers.atomic_write(path, json.dumps(summary, indent=2))
  return entry


FLAGS = flags.FLAGS


def check_flags(workdir: str | None, config, out: str | None, baselines_only: bool,
                untrained: bool) -> None:
  """Raises ConfigError naming the first bad combination of the command-line flags."""
  if not baselines_only:
    if config is not None or out is not None:
      raise config_lib.ConfigError("--config and --out go with --baselines_only; to evaluate a "
                                   "run, pass --workdir=DIR alone")
    if workdir is None:
      raise config_lib.ConfigError("expected --workdir=DIR (a training run), or "
                                   "--baselines_only with --workdir=DIR or --config=FILE --out=DIR")
  elif untrained or (workdir is None) == (config is None):
    raise config_lib.ConfigError(
        "--baselines_only: expected exactly one of --workdir=DIR (writes DIR/eval) or "
        "--config=FILE with --out=DIR, and no --untrained")
  elif config is not None and out is None:
    raise config_lib.ConfigError("--baselines_only --config=FILE: expected --out=DIR for the "
                                 "results")


def main(argv) -> None:
  cli.no_arguments(argv)
  writers.setup_logging()
  check_flags(FLAGS.workdir, _CONFIG.value, FLAGS.out, FLAGS.baselines_only, FLAGS.untrained)
  if FLAGS.baselines_only:
    config = experiment.load_config(FLAGS.workdir) if _CONFIG.value is None else _CONFIG.value
    write_baselines_only(config, FLAGS.out or os.path.join(FLAGS.workdir, "eval"))
    return
  model, params, config = experiment.load(FLAGS.workdir, untrained=FLAGS.untrained)
  evaluate_and_write(model, params, config, FLAGS.workdir, pipeline.load_sources(config.data),
                     sharding.make_mesh(), subdir="eval_untrained" if FLAGS.untrained else "eval")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Workdir of a training run to (re-)evaluate.")
  flags.DEFINE_bool("untrained", False, "Evaluate the run's initial parameters instead, into "
                    "WORKDIR/eval_untrained (a chance-level baseline).")
  flags.DEFINE_bool("baselines_only", False, "Only the recognition baselines (no model) of the "
                    "dataset of --workdir's run (into WORKDIR/eval) or of --config (into --out).")
  _CONFIG = config_flags.DEFINE_config_file("config", None, "With --baselines_only: experiment "
                                            "config file[:arg] whose dataset to use.")
  flags.DEFINE_string("out", None, "With --baselines_only --config: output directory.")
  cli.run(main)
