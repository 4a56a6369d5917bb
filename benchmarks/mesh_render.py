"""Real-mesh samples: throughput, and accuracy against trimesh's ray caster and inside test.

    python benchmarks/mesh_render.py [--mesh_dir=assets/meshes] [--grid_png=PATH]

Prints one JSON object per line:
  * throughput at each --image_sizes: samples/s over one sample of every mesh, with all ground
    truth (2048 surface, 2048 uniform, 2048 near points, 32^3 voxels), after a warm-up pass that
    compiles each face-count bucket once (its time is reported apart);
  * accuracy per mesh at --accuracy_size px, and their summary: fraction of pixels hit by both
    renderers whose depths agree within 1e-3 (depth_within_tol), mask agreement, median normal
    angle (degrees), occupancy agreement with trimesh `contains` on uniform + near-surface points.
trimesh (pure-python ray caster, rtree candidates) is the independent reference.
"""
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import trimesh
from absl import app, flags

import reference_caster
from recon3d_jax.data import builder, meshes, synth, variants
from recon3d_jax.geometry import camera, mesh

_MESH_DIR = flags.DEFINE_string(
    "mesh_dir", builder.BUNDLED_MESH_DIR, "Folder of mesh files.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["64", "128"], "Throughput image sizes.")
_ACCURACY_SIZE = flags.DEFINE_integer("accuracy_size", 64, "Image size of the accuracy check.")
_ACCURACY_POINTS = flags.DEFINE_integer("accuracy_points", 1000,
                                        "Occupancy points per mesh (half uniform, half near).")
_GRID_PNG = flags.DEFINE_string("grid_png", "/tmp/meshes_grid.png",
                                "Where to save a picture of rendered samples ('' for none).")

SIZES = dict(num_surface_points=2048, num_uniform_points=2048, num_near_points=2048,
             voxel_resolution=32)


def _emit(**record):
  print(json.dumps(record), flush=True)


def _throughput(mesh_set, image_size):
  ids = np.arange(len(mesh_set))
  keys = jax.random.split(jax.random.key(0), len(ids))
  kwargs = dict(variant=variants.get_variant("default"), image_size=image_size, **SIZES)
  start = time.perf_counter()
  meshes.generate_batch(mesh_set, ids, keys, **kwargs)  # Compiles every bucket.
  warm_up = time.perf_counter() - start
  start = time.perf_counter()
  batch = meshes.generate_batch(mesh_set, ids, keys, **kwargs)
  seconds = time.perf_counter() - start
  _emit(benchmark="mesh_samples", image_size=image_size, meshes=len(ids),
        samples_per_s=round(len(ids) / seconds, 3), seconds=round(seconds, 2),
        warm_up_s=round(warm_up, 2), buckets=sorted({len(t) for t in mesh_set.triangles}))
  return batch


def _accuracy(mesh_set, image_size, num_points):
  cam = synth.viewer_camera()
  render = jax.jit(mesh.render, static_argnums=2)
  contains = jax.jit(mesh.contains)
  rotation = np.asarray(camera.look_at_camera(0.7, 0.4).rotation, np.float64)
  origins, directions = reference_caster.eye_rays(image_size, synth.FOV_DEG,
                                                  synth.CAMERA_DISTANCE)
  rng = np.random.default_rng(0)
  rows = []
  for name, tri, num_faces in zip(mesh_set.names, mesh_set.triangles, mesh_set.num_faces):
    bucket = len(tri)
    tri = tri[:num_faces].astype(np.float64) @ rotation.T
    lo, hi = tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)
    tri = ((tri - (lo + hi) / 2) / np.max(hi - lo)).astype(np.float32)
    tm = trimesh.Trimesh(tri.reshape(-1, 3).astype(np.float64),
                         np.arange(3 * num_faces).reshape(-1, 3))  # Merges shared vertices.
    padded = mesh.pad_triangles(jnp.asarray(tri), bucket)
    out = jax.device_get(render(padded, cam, image_size))
    ref_mask, ref_depth, ref_normal = reference_caster.trimesh_render(tm, origins, directions)
    mask = out["mask"].reshape(-1)
    both = mask & ref_mask
    depth_ok = np.abs(out["depth"].reshape(-1)[both] - ref_depth[both]) < 1e-3
    cosine = np.clip(np.sum(out["normal"].reshape(-1, 3)[both] * ref_normal[both], -1), -1, 1)
    points = np.concatenate([rng.uniform(-0.55, 0.55, (num_points // 2, 3)),
                             tm.sample(num_points - num_points // 2, seed=1)
                             + 0.01 * rng.normal(size=(num_points - num_points // 2, 3))])
    inside = np.asarray(contains(padded, jnp.asarray(points, jnp.float32)))
    row = dict(mesh=name, faces=num_faces, depth_within_tol=float(np.mean(depth_ok)),
               mask_agreement=float(np.mean(mask == ref_mask)),
               median_normal_deg=float(np.median(np.rad2deg(np.arccos(cosine)))),
               occupancy_agreement=float(np.mean(inside == tm.contains(points))))
    _emit(benchmark="mesh_accuracy", image_size=image_size, **row)
    rows.append(row)
  summary = {k: dict(min=min(r[k] for r in rows), mean=float(np.mean([r[k] for r in rows])),
                     max=max(r[k] for r in rows))
             for k in ("depth_within_tol", "mask_agreement", "median_normal_deg",
                       "occupancy_agreement")}
  _emit(benchmark="mesh_accuracy_summary", image_size=image_size, meshes=len(rows), **summary)


def _save_grid(batch, names, path, count=8):
  """Rows: image, normal map ((n + 1) / 2), depth (near = bright), one column per mesh."""
  count = min(count, len(names))
  fig, axes = plt.subplots(3, count, figsize=(2 * count, 6.3))
  for j in range(count):
    depth = batch["depth"][j]
    fg = depth > 0
    near = np.where(fg, 1 - (depth - depth[fg].min()) / max(np.ptp(depth[fg]), 1e-6), 0)
    for i, picture in enumerate([batch["image"][j], np.where(fg[..., None],
                                                             (batch["normal"][j] + 1) / 2, 0),
                                 near]):
      axes[i, j].imshow(picture, cmap="gray")
      axes[i, j].axis("off")
    axes[0, j].set_title(names[j], fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv):
  del argv
  _emit(benchmark="machine", backend=jax.default_backend(), devices=len(jax.devices()),
        cpu_count=os.cpu_count(), platform=platform.platform())
  start = time.perf_counter()
  mesh_set = meshes.load_meshes(_MESH_DIR.value)
  _emit(benchmark="mesh_load", meshes=len(mesh_set), seconds=round(time.perf_counter() - start, 2),
        faces=dict(zip(mesh_set.names, mesh_set.num_faces)))
  for size in map(int, _IMAGE_SIZES.value):
    batch = _throughput(mesh_set, size)
    if _GRID_PNG.value and size == int(_IMAGE_SIZES.value[-1]):
      _save_grid(batch, mesh_set.names, _GRID_PNG.value)
  _accuracy(mesh_set, _ACCURACY_SIZE.value, _ACCURACY_POINTS.value)


if __name__ == "__main__":
  app.run(main)
