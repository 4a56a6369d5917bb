"""MISE against the dense grid on analytic shapes: points queried, wall time, mesh agreement.

    python benchmarks/mise_points.py [--resolution0=32] [--upsampling_steps=2] [--repeats=3]

Occupancy is p = sigmoid(-sdf / 0.01) of a sphere (radius 0.3), a rotated box (half sides 0.3,
0.2, 0.25) and a rotated torus (radii 0.3, 0.1), numpy on the host. For each shape, one instance
(batch 1), prints one JSON object per line:
  * num_evaluated / dense_points and their ratio (dense: the full R^3 grid,
    R = resolution0 * 2**upsampling_steps + 1);
  * mise_s / dense_s: best of --repeats wall times of mise.extract_grid and of the dense grid
    (the same driver with resolution0 = R - 1 and no upsampling), and mise_host_s: MISE's time
    outside the occupancy function, i.e. the cost of the method itself;
  * same_inside: whether both grids agree on inside / outside at every point, and chamfer_l1
    between the vertex sets of their meshes (metrics.mesh_from_occupancy at 0.5).
Then one line with the same timings for the three shapes in one batch of 3.
"""
import json
import platform
import time

import numpy as np
from absl import app, flags
from scipy import special

from recon3d_jax import metrics, mise

_RESOLUTION0 = flags.DEFINE_integer("resolution0", 32, "Cells per side of the coarse grid.")
_STEPS = flags.DEFINE_integer("upsampling_steps", 2, "Number of 2x refinements.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timing repeats (best is reported).")
_CHUNK = flags.DEFINE_integer("chunk", 8192, "Points per instance and occupancy call.")
THRESHOLD = 0.5


def _rotation(ax, ay, az):
  cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _sphere(p):
  return np.linalg.norm(p - np.array([0.02, -0.01, 0.03]), axis=-1) - 0.3


def _box(p):
  q = np.abs(p @ _rotation(0.3, 0.2, 0.1)) - np.array([0.3, 0.2, 0.25])
  return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def _torus(p):
  p = p @ _rotation(0.4, 0.1, 0.0)
  q = np.stack([np.linalg.norm(p[..., :2], axis=-1) - 0.3, p[..., 2]], -1)
  return np.linalg.norm(q, axis=-1) - 0.1


SHAPES = {"sphere": _sphere, "box": _box, "torus": _torus}


class _Timed:
  """occupancy_fn over one shape per instance, accumulating the time spent inside it."""

  def __init__(self, sdfs):
    self.sdfs, self.seconds = sdfs, 0.0

  def __call__(self, points):
    start = time.perf_counter()
    out = np.stack([special.expit(-f(points[b].astype(np.float64)) / 0.01)
                    for b, f in enumerate(self.sdfs)])
    self.seconds += time.perf_counter() - start
    return out


def _run(sdfs, resolution0, steps):
  """Best-of-repeats (total seconds, seconds outside occupancy_fn) and the last result."""
  best = (np.inf, np.inf)
  for _ in range(_REPEATS.value):
    fn = _Timed(sdfs)
    start = time.perf_counter()
    result = mise.extract_grid(fn, len(sdfs), THRESHOLD, resolution0, steps, chunk=_CHUNK.value)
    total = time.perf_counter() - start
    best = min(best, (total, total - fn.seconds))
  return best, result


def _vertex_chamfer(grid_a, grid_b):
  va, _ = metrics.mesh_from_occupancy(grid_a, THRESHOLD)
  vb, _ = metrics.mesh_from_occupancy(grid_b, THRESHOLD)
  unit = lambda v: np.full_like(v, 1 / np.sqrt(3))
  return metrics.pointcloud_metrics(va, unit(va), vb, unit(vb))["chamfer_l1"]


def main(argv):
  del argv
  resolution0, steps = _RESOLUTION0.value, _STEPS.value
  size = resolution0 * 2**steps + 1
  common = dict(resolution0=resolution0, upsampling_steps=steps, grid=size,
                machine=platform.machine(), processor=platform.processor())
  for name, sdf in SHAPES.items():
    (mise_s, host_s), (grid, num_evaluated) = _run([sdf], resolution0, steps)
    (dense_s, _), (dense, _) = _run([sdf], size - 1, 0)
    print(json.dumps(dict(
        common, shape=name, batch_size=1, num_evaluated=int(num_evaluated[0]),
        dense_points=size**3, ratio=round(float(num_evaluated[0]) / size**3, 4),
        mise_s=round(mise_s, 3), mise_host_s=round(host_s, 3), dense_s=round(dense_s, 3),
        same_inside=bool(np.array_equal(grid[0] >= THRESHOLD, dense[0] >= THRESHOLD)),
        chamfer_l1=_vertex_chamfer(grid[0], dense[0]))), flush=True)
  sdfs = list(SHAPES.values())
  (mise_s, host_s), (_, num_evaluated) = _run(sdfs, resolution0, steps)
  (dense_s, _), _ = _run(sdfs, size - 1, 0)
  print(json.dumps(dict(
      common, shape="+".join(SHAPES), batch_size=len(sdfs),
      ratio=[round(float(n) / size**3, 4) for n in num_evaluated], mise_s=round(mise_s, 3),
      mise_host_s=round(host_s, 3), dense_s=round(dense_s, 3))), flush=True)


if __name__ == "__main__":
  app.run(main)
