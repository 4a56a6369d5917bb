"""What a perfect model scores under the study's evaluation: the ceiling of F@tau and Chamfer.

    python benchmarks/metric_ceiling.py --config=configs/study/main.py:runlocal \
        --benchmarks=primitives,compounds [--pred_points=2048,16384]

The evaluation compares eval.num_pred_points samples of the predicted mesh with the record's
stored ground-truth surface samples (data.num_surface_points), so even the exact surface does not
reach F = 1 where the samples are sparser than tau. For each test instance (the first
eval.max_instances, as the evaluation reads them) this regenerates its exact unit-cube shape
(synth.instance_shape; checked against the stored samples) and scores, with the evaluation's own
functions:
  * `exact field`: occupancy sigmoid(-sdf / SDF_SCALE) meshed like a model's prediction (MISE at
    eval.mise_resolution0 / mise_upsampling_steps, marching cubes at 0.5), then
    eval.num_pred_points (and each --pred_points) area-uniform samples of that mesh;
  * `resampled surface`: an independent draw of as many exact surface samples as are stored, i.e.
    the sampling ceiling without meshing.
Prints one JSON line per benchmark and row: the means of F@0.01, F@0.02, Chamfer-L1 and normal
consistency, and the largest distance between regenerated and stored samples.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recon3d_jax import evaluate, metrics  # noqa: E402
from recon3d_jax.data import builder, pipeline, synth  # noqa: E402
from recon3d_jax.geometry import csg, groundtruth  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/study/main.py:runlocal",
                                          "Experiment config whose data and eval settings count.")
_BENCHMARKS = flags.DEFINE_list("benchmarks", ["primitives", "compounds"],
                                "Benchmarks (synthetic domains) to score.")
_PRED_POINTS = flags.DEFINE_list("pred_points", [], "More mesh sample counts to score besides "
                                 "eval.num_pred_points.")
# Occupancy of the exact field: a smooth monotone map of the SDF, nearly linear across a grid cell
# (cells of 0.017 at 65 points per side), so marching cubes puts vertices on sdf = 0.
SDF_SCALE = 0.1
RESAMPLE_SEED = 1  # Folded into an instance's key for the independent draw of surface samples.


def _means(rows: list[dict]) -> dict:
  keys = ("fscore@0.01", "fscore@0.02", "chamfer_l1", "normal_consistency")
  return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def score(config, benchmark: str, pred_points: list[int]) -> list[dict]:
  data = config.data.copy_and_resolve_references()
  data.benchmark = benchmark
  source = pipeline.load_sources(data)["test"]
  generator = builder.Generator(builder.SynthConfig.from_data_config(data))
  families = generator.families("test")
  num_surface = data.num_surface_points
  sdf = jax.jit(csg.csg_sdf)
  resample = jax.jit(groundtruth.surface_points, static_argnames=("num_points", "num_normals"))
  rows = {f"exact field, {n} mesh samples": [] for n in pred_points}
  rows["resampled surface"] = []
  largest_gap = 0.0
  count = min(len(source), config.eval.max_instances)
  for position in range(count):
    record = source[position]
    key = synth.sample_keys(data.build_seed, "test", jnp.asarray([record["index"]]))[0]
    shape, points, _, _, _ = synth.instance_shape(
        key, domain=generator.benchmark.domain, variant=generator.variant, families=families,
        num_points=num_surface + data.num_near_points, num_normals=num_surface)
    largest_gap = max(largest_gap, float(np.abs(np.asarray(points[:num_surface])
                                                - record["surface_points"]).max()))
    gt = (record["surface_points"], record["surface_normals"])

    def occupancy(p, shape=shape):
      return np.asarray(jax.nn.sigmoid(-sdf(shape, jnp.asarray(p[0])) / SDF_SCALE))[None]

    grid, _ = evaluate.mise_grids(occupancy, 1, 0.5, config.eval)
    vertices, faces = metrics.mesh_from_occupancy(grid[0], 0.5)
    rng = np.random.default_rng([config.seed, int(record["index"])])
    for n in pred_points:
      mesh_points, mesh_normals = metrics.sample_surface(vertices, faces, n, rng)
      rows[f"exact field, {n} mesh samples"].append(
          metrics.pointcloud_metrics(mesh_points, mesh_normals, *gt))
    fresh, fresh_normals = resample(shape, jax.random.fold_in(key, RESAMPLE_SEED),
                                    num_points=num_surface, num_normals=num_surface)
    rows["resampled surface"].append(
        metrics.pointcloud_metrics(np.asarray(fresh), np.asarray(fresh_normals), *gt))
  return [dict(benchmark=benchmark, row=name, instances=count, gt_points=num_surface,
               largest_regeneration_gap=largest_gap, **_means(r)) for name, r in rows.items()]


def main(argv):
  del argv
  config = _CONFIG.value
  pred_points = [config.eval.num_pred_points] + [int(n) for n in _PRED_POINTS.value]
  start = time.time()
  for benchmark in _BENCHMARKS.value:
    for line in score(config, benchmark, pred_points):
      print(json.dumps(line), flush=True)
  print(json.dumps(dict(wall_s=round(time.time() - start, 1))))


if __name__ == "__main__":
  app.run(main)
