"""Watertightness, accuracy and speed of the mesh ray caster, side by side with another version.

    git show main:recon3d_jax/geometry/mesh.py > /tmp/mesh_main.py
    python benchmarks/mesh_watertight.py --baseline=/tmp/mesh_main.py

Runs every check on geometry/mesh.py ("current") and, given --baseline, on another version of that
file ("baseline") with the same rays, references and meshes (all 25 of assets/meshes), and prints
one JSON object per line:
  * leaks: rays that the float64 caster (reference_caster.py) finds robustly hitting the front
    surface, but the jitted renderer misses or hits farther (or nearer) by more than 1e-3; over
    --leak_views look-at views at each of --sizes, plus rays aimed at vertices and edges of
    visible faces (33 px views of pixel spacing 1e-4 and 1e-7 centred on each target);
  * accuracy against trimesh's ray caster, as benchmarks/mesh_render.py (the mesh turned to
    azimuth 0.7, elevation 0.4, the viewer camera) at each of --sizes: fraction of pixels hit by
    both within 1e-3 depth, mask agreement, normal angle percentiles (degrees), pooled over the
    meshes;
  * throughput: renders, inside tests (4096 points) and 32^3 voxelisations per second over all
    the meshes, the two versions alternating in --rounds rounds (medians), after compiling.
"""
import importlib.util
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from absl import app, flags

import reference_caster
from recon3d_jax.data import builder, meshes, synth
from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import mesh

_BASELINE = flags.DEFINE_string("baseline", "", "Path of another version of geometry/mesh.py.")
_MESH_DIR = flags.DEFINE_string("mesh_dir", builder.BUNDLED_MESH_DIR, "Folder of mesh files.")
_SIZES = flags.DEFINE_list("sizes", ["64", "128"], "Image sizes.")
_LEAK_VIEWS = flags.DEFINE_integer("leak_views", 6, "Look-at views per mesh of the leak check.")
_TARGETS = flags.DEFINE_integer("targets", 6, "Aimed vertex/edge targets per mesh and view.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Throughput rounds (versions alternate).")
_SECTIONS = flags.DEFINE_list("sections", ["leaks", "accuracy", "throughput"], "What to run.")

AIMED_SIZE = 33
AIMED_SPACINGS = (1e-4, 1e-7)
POINTS = 4096
VOXELS = 32


def _emit(**record):
  print(json.dumps(record), flush=True)


def _load(path):
  spec = importlib.util.spec_from_file_location("mesh_baseline", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _jitted(module):
  return dict(render=jax.jit(module.render, static_argnums=2), contains=jax.jit(module.contains),
              voxelize=jax.jit(module.voxelize, static_argnums=1))


def _views(count):
  """Look-at (azimuth, elevation): an axis-aligned one, then a golden-angle spiral."""
  views = [(0.0, 0.0)]
  for i in range(1, count):
    views.append((float(i * 2.399963 % (2 * np.pi)), float(np.arcsin(2 * (i + 0.5) / count - 1))))
  return views


def _leaks(versions, mesh_set):
  rng = np.random.default_rng(0)
  totals = {name: np.zeros(4, int) for name in versions}
  aimed_totals = {name: np.zeros(4, int) for name in versions}
  start = time.perf_counter()
  for tri, num_faces in zip(mesh_set.triangles, mesh_set.num_faces):
    for azimuth, elevation in _views(_LEAK_VIEWS.value):
      view = camera_lib.look_at_camera(azimuth, elevation)
      rotation, position = np.asarray(view.rotation), np.asarray(view.position)
      cam = reference_caster.camera_frame(tri[:num_faces], rotation, position)
      checks = []
      for size in map(int, _SIZES.value):
        checks.append((totals, rotation, position, synth.FOV_DEG, size))
      u, v = reference_caster.pixel_plane_coords(128, synth.FOV_DEG)
      _, faces = reference_caster.cast(cam, u, v)
      for target in reference_caster.visible_targets(faces, tri, rng, _TARGETS.value):
        aimed = reference_caster.aimed_camera(position, target)
        for spacing in AIMED_SPACINGS:
          fov = float(np.rad2deg(2 * np.arctan(spacing * AIMED_SIZE / 2)))
          checks.append((aimed_totals, *aimed, fov, AIMED_SIZE))
      for into, rot, pos, fov, size in checks:
        u, v = reference_caster.pixel_plane_coords(size, fov)
        robust, depth = reference_caster.robust_foreground(
            reference_caster.camera_frame(tri[:num_faces], rot, pos), u, v)
        camera = camera_lib.Camera(jnp.asarray(rot), jnp.asarray(pos), jnp.asarray(fov))
        for name, fns in versions.items():
          out = jax.device_get(fns["render"](jnp.asarray(tri), camera, size))
          errors = reference_caster.count_errors(out["depth"].reshape(-1),
                                                 out["mask"].reshape(-1), depth, robust)
          into[name] += np.array(errors + (int(robust.sum()),))
  for name in versions:
    for kind, t in (("views", totals[name]), ("aimed", aimed_totals[name])):
      _emit(benchmark="mesh_leaks", version=name, rays=kind, sizes=_SIZES.value,
            views_per_mesh=_LEAK_VIEWS.value, misses=int(t[0]), farther=int(t[1]),
            nearer=int(t[2]), robust_rays=int(t[3]))
  _emit(benchmark="mesh_leaks_time", seconds=round(time.perf_counter() - start, 1))


def _posed(tri, num_faces):
  """As benchmarks/mesh_render.py: turned to (0.7, 0.4), renormalised, float32."""
  rotation = np.asarray(camera_lib.look_at_camera(0.7, 0.4).rotation, np.float64)
  tri = tri[:num_faces].astype(np.float64) @ rotation.T
  lo, hi = tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)
  return ((tri - (lo + hi) / 2) / np.max(hi - lo)).astype(np.float32)


def _accuracy(versions, mesh_set, size):
  cam = synth.viewer_camera()
  origins, directions = reference_caster.eye_rays(size, synth.FOV_DEG, synth.CAMERA_DISTANCE)
  pooled = {name: dict(depth_ok=[], angle=[], mask_same=[], per_mesh=[]) for name in versions}
  for tri, num_faces in zip(mesh_set.triangles, mesh_set.num_faces):
    posed = _posed(tri, num_faces)
    tm = trimesh.Trimesh(posed.reshape(-1, 3).astype(np.float64),
                         np.arange(3 * num_faces).reshape(-1, 3))
    ref_mask, ref_depth, ref_normal = reference_caster.trimesh_render(tm, origins, directions)
    padded = mesh.pad_triangles(jnp.asarray(posed), len(tri))
    for name, fns in versions.items():
      out = jax.device_get(fns["render"](padded, cam, size))
      mask = out["mask"].reshape(-1)
      both = mask & ref_mask
      depth_ok = np.abs(out["depth"].reshape(-1)[both] - ref_depth[both]) < 1e-3
      cosine = np.clip(np.sum(out["normal"].reshape(-1, 3)[both] * ref_normal[both], -1), -1, 1)
      p = pooled[name]
      p["depth_ok"].append(depth_ok)
      p["angle"].append(np.rad2deg(np.arccos(cosine)))
      p["mask_same"].append(mask == ref_mask)
      p["per_mesh"].append(np.mean(depth_ok))
  for name, p in pooled.items():
    depth_ok, angle, same = (np.concatenate(p[k]) for k in ("depth_ok", "angle", "mask_same"))
    _emit(benchmark="mesh_accuracy_vs_trimesh", version=name, image_size=size,
          meshes=len(p["per_mesh"]), pixels_hit_by_both=int(len(depth_ok)),
          depth_within_1e3=float(np.mean(depth_ok)), depth_off=int(np.sum(~depth_ok)),
          depth_within_1e3_worst_mesh=float(np.min(p["per_mesh"])),
          mask_agreement=float(np.mean(same)),
          normal_deg={f"p{q}": float(np.percentile(angle, q)) for q in (50, 99, 99.9)}
          | {"max": float(angle.max())})


def _throughput(versions, mesh_set):
  key = jax.random.key(0)
  points = [jax.random.uniform(jax.random.fold_in(key, i), (POINTS, 3), minval=-0.55,
                               maxval=0.55) for i in range(len(mesh_set))]
  triangles = [jnp.asarray(t) for t in mesh_set.triangles]
  cam = synth.viewer_camera()
  tasks = {f"render_{s}px": (lambda fns, t, p, s=s: fns["render"](t, cam, s))
           for s in map(int, _SIZES.value)}
  tasks["contains_4096"] = lambda fns, t, p: fns["contains"](t, p)
  tasks[f"voxelize_{VOXELS}"] = lambda fns, t, p: fns["voxelize"](t, VOXELS)

  def run(fns, task):
    start = time.perf_counter()
    for t, p in zip(triangles, points):
      jax.block_until_ready(task(fns, t, p))
    return time.perf_counter() - start

  for task_name, task in tasks.items():
    for fns in versions.values():
      run(fns, task)  # Compiles every bucket.
    seconds = {name: [] for name in versions}
    for r in range(_ROUNDS.value):
      order = list(versions) if r % 2 == 0 else list(versions)[::-1]
      for name in order:
        seconds[name].append(run(versions[name], task))
    _emit(benchmark="mesh_throughput", task=task_name, meshes=len(triangles), rounds=_ROUNDS.value,
          per_s={name: round(len(triangles) / float(np.median(s)), 2)
                 for name, s in seconds.items()},
          ratio_current_over_baseline=(round(float(np.median(seconds["baseline"])
                                                   / np.median(seconds["current"])), 3)
                                       if "baseline" in seconds else None))


def main(argv):
  del argv
  _emit(benchmark="machine", backend=jax.default_backend(), cpu_count=os.cpu_count(),
        platform=platform.platform(), load=os.getloadavg())
  versions = {"current": _jitted(mesh)}
  if _BASELINE.value:
    versions = {"baseline": _jitted(_load(_BASELINE.value)), **versions}
  mesh_set = meshes.load_meshes(_MESH_DIR.value)
  if "leaks" in _SECTIONS.value:
    _leaks(versions, mesh_set)
  if "accuracy" in _SECTIONS.value:
    for size in map(int, _SIZES.value):
      _accuracy(versions, mesh_set, size)
  if "throughput" in _SECTIONS.value:
    _throughput(versions, mesh_set)
  _emit(benchmark="done", load=os.getloadavg())


if __name__ == "__main__":
  app.run(main)
