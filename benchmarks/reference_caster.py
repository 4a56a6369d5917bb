"""An independent float64 ray caster in numpy: the reference of the mesh renderer's leak checks.

Rays leave a pinhole camera's eye through points (u, v) of its image plane z = 1 (camera frame,
docs/DESIGN.md section 3), i.e. along (u, v, 1): the ray parameter of a hit is its z-depth. A ray
meets a face iff the 2D edge functions of the face's vertices, sheared so that the ray is the z
axis, share a sign; edges are inclusive (a ray on an edge hits both faces), so a float64 ray
never slips between faces. Faces are culled by their image-plane boxes on a grid of cells.
Also trimesh's ray caster (`trimesh_render`), the second reference of the renderer's accuracy.
Used by tests/test_mesh.py, benchmarks/mesh_watertight.py and benchmarks/mesh_render.py.
"""
import numpy as np
from trimesh.ray import ray_triangle

# Edge functions below EDGE_TOL times the face's scale count as zero (inclusive edges).
EDGE_TOL = 1e-12
# A ray is in the robust foreground when 4 rays offset by PERTURBATION on the image plane (10x
# the float32 rounding of a vertex's image) hit within ROBUST_DEPTH of its own depth: away from
# silhouettes and occlusion boundaries, where float32 and float64 may rightly disagree.
PERTURBATION = 1e-6
ROBUST_DEPTH = 1e-3


def camera_frame(triangles, rotation, position):
  """(F, 3, 3) world triangles -> float64 camera-frame triangles R (p - position)."""
  return (np.asarray(triangles, np.float64) - np.asarray(position, np.float64)) @ np.asarray(
      rotation, np.float64).T


def pixel_plane_coords(image_size, fov_deg):
  """(S * S,) u, v of the pixel centres, row-major (as camera.camera_rays)."""
  c = ((np.arange(image_size) + 0.5) / image_size * 2 - 1) * np.tan(np.deg2rad(fov_deg) / 2)
  u, v = np.meshgrid(c, c, indexing="xy")
  return u.reshape(-1), v.reshape(-1)


def eye_rays(image_size, fov_deg, distance):
  """(origins, directions), each (S * S, 3) float64, of the unit rays through the pixel centres of
  a camera at (0, 0, -distance) looking along +z (the datasets' viewer camera), row-major."""
  u, v = pixel_plane_coords(image_size, fov_deg)
  directions = np.stack([u, v, np.ones_like(u)], -1)
  directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
  return np.broadcast_to([0.0, 0.0, -distance], directions.shape), directions


def trimesh_render(tm, origins, directions):
  """trimesh's ray caster on a trimesh.Trimesh, for rays (N, 3) of a camera looking along +z: an
  implementation independent of both geometry/mesh.py and `cast`.

  Returns:
    mask: (N,) bool, the ray hits.
    depth: (N,) z-depth of the nearest hit (its z minus the origin's), 0 on a miss.
    normal: (N, 3) unit normal of the hit face, 0 on a miss.
  """
  faces, rays, locations = ray_triangle.RayMeshIntersector(tm).intersects_id(
      origins, directions, multiple_hits=False, return_locations=True)
  mask = np.zeros(len(directions), bool)
  mask[rays] = True
  depth = np.zeros(len(directions))
  depth[rays] = locations[:, 2] - origins[rays, 2]
  normal = np.zeros((len(directions), 3))
  normal[rays] = tm.face_normals[faces]
  return mask, depth, normal


def _pairs(cam, u, v, grid=64):
  """(face, ray) pairs whose face's image-plane box contains the ray's point (with a margin)."""
  if np.any(cam[..., 2] <= 0):
    raise ValueError("every vertex must lie in front of the eye (z > 0)")
  plane = cam[..., :2] / cam[..., 2:]  # (F, 3, 2)
  lo, hi = plane.min(1) - 1e-9, plane.max(1) + 1e-9
  points = np.stack([u, v], -1)
  origin = points.min(0)
  cell = max(np.ptp(points, 0).max(), 1e-12) / grid * (1 + 1e-9)
  first = np.clip(np.floor((lo - origin) / cell), 0, grid - 1).astype(np.int64)
  last = np.clip(np.floor((hi - origin) / cell), 0, grid - 1).astype(np.int64)
  outside = np.any((hi < origin) | (lo > origin + grid * cell), axis=1)
  span = np.where(outside[:, None], 0, last - first + 1)
  face = np.repeat(np.arange(len(cam)), span[:, 0] * span[:, 1])
  rank = np.arange(len(face)) - np.repeat(np.cumsum(span[:, 0] * span[:, 1]) - span[:, 0]
                                          * span[:, 1], span[:, 0] * span[:, 1])
  columns = np.maximum(span[face, 1], 1)
  cells = (first[face, 0] + rank // columns) * grid + first[face, 1] + rank % columns
  ray_cell = np.minimum(((points - origin) // cell).astype(np.int64), grid - 1)
  ray_cell = ray_cell[:, 0] * grid + ray_cell[:, 1]
  order = np.argsort(ray_cell, kind="stable")
  start = np.searchsorted(ray_cell[order], np.arange(grid * grid), side="left")
  count = np.searchsorted(ray_cell[order], np.arange(grid * grid), side="right") - start
  n = count[cells]
  pair_face = np.repeat(face, n)
  offset = np.arange(len(pair_face)) - np.repeat(np.cumsum(n) - n, n)
  pair_ray = order[np.repeat(start[cells], n) + offset]
  keep = ((u[pair_ray] >= lo[pair_face, 0]) & (u[pair_ray] <= hi[pair_face, 0])
          & (v[pair_ray] >= lo[pair_face, 1]) & (v[pair_ray] <= hi[pair_face, 1]))
  return pair_face[keep], pair_ray[keep]


def cast(cam, u, v):
  """Nearest hits of rays (u, v, 1) from the eye on camera-frame triangles.

  Args:
    cam: (F, 3, 3) float64 camera-frame triangles (all vertices at z > 0), no padding.
    u, v: (N,) image-plane points of the rays.

  Returns:
    depth: (N,) z-depth of the nearest hit, inf on a miss; face: (N,) its face, -1 on a miss.
  """
  face, ray = _pairs(cam, u, v)
  tri = cam[face]
  x = tri[..., 0] - u[ray, None] * tri[..., 2]  # (pairs, 3) sheared vertices: the ray is x = y = 0.
  y = tri[..., 1] - v[ray, None] * tri[..., 2]
  nx, ny = np.roll(x, -1, 1), np.roll(y, -1, 1)
  px, py = np.roll(x, -2, 1), np.roll(y, -2, 1)
  w = nx * py - ny * px  # Edge functions, w[:, k] of the edge opposite vertex k.
  scale = EDGE_TOL * (np.abs(x).max(1) + np.abs(y).max(1)) ** 2
  w = np.where(np.abs(w) <= scale[:, None], 0.0, w)
  det = w.sum(1)
  inside = (np.all(w >= 0, 1) | np.all(w <= 0, 1)) & (det != 0)
  z = np.sum(w * tri[..., 2], 1) / np.where(det != 0, det, 1.0)
  hit = inside & (z > 0)
  depth = np.full(len(u), np.inf)
  np.minimum.at(depth, ray[hit], z[hit])
  nearest = hit & (z == depth[ray])
  first = np.full(len(u), len(cam))
  np.minimum.at(first, ray[nearest], face[nearest])
  return depth, np.where(first < len(cam), first, -1)


def robust_foreground(cam, u, v):
  """(N,) bool: the ray hits, and so do 4 rays PERTURBATION away on the image plane, within
  ROBUST_DEPTH of its depth; also returns its depth (N,)."""
  depth, _ = cast(cam, u, v)
  robust = np.isfinite(depth)
  for du, dv in ((1, 0), (-1, 0), (0, 1), (0, -1)):
    near, _ = cast(cam, u + du * PERTURBATION, v + dv * PERTURBATION)
    with np.errstate(invalid="ignore"):  # inf - inf: a miss is not robust.
      robust &= np.abs(near - depth) < ROBUST_DEPTH
  return robust, depth


def count_errors(depth, mask, reference_depth, robust, tol=1e-3):
  """Leaks among the robust foreground rays: (misses, farther hits, nearer hits) of a renderer's
  depth (N,) and mask (N,) against the reference depth (N,), with a tolerance `tol`."""
  miss = robust & ~mask
  farther = robust & mask & (depth > reference_depth + tol)
  nearer = robust & mask & (depth < reference_depth - tol)
  return int(miss.sum()), int(farther.sum()), int(nearer.sum())


def aimed_camera(eye, target):
  """float32 (rotation (3, 3), position (3,)) of a camera at `eye` whose optical axis, the ray of
  the centre pixel of an odd-sized image, runs through `target` (up to float32 rounding)."""
  eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
  forward = (target - eye) / np.linalg.norm(target - eye)
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  return (np.stack([right, np.cross(forward, right), forward]).astype(np.float32),
          eye.astype(np.float32))


def visible_targets(faces, triangles, rng, count):
  """`count` points of the faces hit at random foreground pixels (faces: (N,) hit face or -1):
  alternately a vertex and the midpoint of an edge of a hit face, float32 (count, 3)."""
  hit = faces[faces >= 0]
  chosen = triangles[rng.choice(hit, count)]
  k = rng.integers(0, 3, count)
  vertex = chosen[np.arange(count), k]
  midpoint = (vertex + chosen[np.arange(count), (k + 1) % 3]) / 2
  return np.where((np.arange(count) % 2 == 0)[:, None], vertex, midpoint).astype(np.float32)
