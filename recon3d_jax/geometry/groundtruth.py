"""3D ground truth of a shape: surface samples, occupancy samples, voxels.

Everything is in the world (object) frame, with the shape normalised into the
unit cube (longest bounding-box side 1, centred at the origin). The data
pipeline rotates the results into the viewer-centred frame with
camera.rotate_to_camera.
"""
import jax
import jax.numpy as jnp

from recon3d_jax.geometry import sdf as sdf_lib

# Half-thickness of the shell |sdf| < eps from which surface points are drawn.
# Outside a convex edge the shell is a wedge whose points all project onto the
# edge: a fraction pi eps L / (8 A) of the samples (edge length L, area A;
# about 1% for a box). Thinner shells need more candidates.
SHELL_EPS = 0.01
# Candidates per requested surface point. The worst primitive in the unit
# cube (a thin cone) has ~2.9% of its padded bounding box inside the shell,
# so 48 gives ~1.4x the points needed.
CANDIDATES_PER_POINT = 48
_PROJECTION_STEPS = 2


def _uniform_16bit(key, n):
  """(n, 4) uniforms in [0, 1) with 16-bit resolution, two per 32-bit draw.

  The PRNG dominates the cost of surface sampling on CPU, and candidate
  positions need no more than 1/65536 of the box (far below SHELL_EPS).
  """
  bits = jax.random.bits(key, (n, 2), jnp.uint32)
  halves = jnp.concatenate([bits >> 16, bits & 0xFFFF], axis=-1)
  return halves.astype(jnp.float32) / 65536


def _project_to_surface(shape, points):
  """Newton steps p <- p - sdf(p) grad(p) / |grad(p)|^2 onto the zero set."""
  def step(_, p):
    d, grad = sdf_lib.shape_sdf_and_grad(shape, p)
    # |grad| = 1 except on ties (edges) and singular points; the floor keeps
    # the step there within 4 |sdf|.
    grad_sq = jnp.maximum(jnp.sum(grad * grad, axis=-1), 0.25)
    return p - (d / grad_sq)[..., None] * grad
  return jax.lax.fori_loop(0, _PROJECTION_STEPS, step, points)


def surface_points(shape: sdf_lib.Shape, key, num_points: int,
                   num_candidates: int | None = None):
  """Area-uniform samples on the surface, with outward normals.

  Candidates are drawn uniformly in the shape's bounding box padded by
  SHELL_EPS (the whole shell lies inside it, and it wastes fewer candidates
  than the full 1.1 box). Those in the shell |sdf| < SHELL_EPS are kept: for
  an exact SDF the shell volume near a surface patch is proportional to its
  area, up to O(eps^2 curvature), so they are area-uniform. `num_points` of
  them are chosen by random priority and projected onto the surface.
  If fewer than `num_points` candidates fall in the shell (rare with the
  default count), the remainder are the non-shell candidates closest to the
  surface, which after projection still lie on it but are not area-uniform.

  Args:
    shape: the Shape.
    key: PRNG key.
    num_points: static int N.
    num_candidates: static int, default CANDIDATES_PER_POINT * N.

  Returns:
    points: (N, 3) on the surface (|sdf| ~ 1e-6).
    normals: (N, 3) unit outward normals.
  """
  if num_candidates is None:
    num_candidates = CANDIDATES_PER_POINT * num_points
  lo, hi = sdf_lib.shape_aabb(shape)
  lo, hi = lo - SHELL_EPS, hi + SHELL_EPS
  # One draw gives each candidate a position and a random priority.
  u = _uniform_16bit(key, num_candidates)
  candidates = lo + (hi - lo) * u[:, :3]
  dist = jnp.abs(sdf_lib.shape_sdf(shape, candidates))
  # Shell candidates get priorities in [1, 2), the others -dist < 0.
  priority = jnp.where(dist < SHELL_EPS, 1 + u[:, 3], -dist)
  _, index = jax.lax.top_k(priority, num_points)
  points = _project_to_surface(shape, candidates[index])
  return points, sdf_lib.shape_normal(shape, points)


def occupancy_points(shape: sdf_lib.Shape, key, num_uniform: int,
                     num_near: int, near_sigma: float = 0.01):
  """Occupancy query points with inside (sdf < 0) labels.

  Args:
    shape: the Shape, inside the unit cube.
    key: PRNG key.
    num_uniform: static int Mu, points uniform in the padded box
      [-0.55, 0.55]^3 (side 1.1).
    num_near: static int Mn, area-uniform surface points plus isotropic
      Gaussian noise of standard deviation `near_sigma`.
    near_sigma: noise scale in unit-cube units.

  Returns:
    dict with points_uniform (Mu, 3), occ_uniform (Mu,) bool, points_near
    (Mn, 3), occ_near (Mn,) bool.
  """
  uniform_key, surface_key, noise_key = jax.random.split(key, 3)
  points_uniform = jax.random.uniform(uniform_key, (num_uniform, 3),
                                      minval=-0.55, maxval=0.55)
  surface, _ = surface_points(shape, surface_key, num_near)
  points_near = surface + near_sigma * jax.random.normal(noise_key, surface.shape)
  return dict(
      points_uniform=points_uniform,
      occ_uniform=sdf_lib.shape_sdf(shape, points_uniform) < 0,
      points_near=points_near,
      occ_near=sdf_lib.shape_sdf(shape, points_near) < 0)


def voxelize(shape: sdf_lib.Shape, resolution: int = 32):
  """(R, R, R) bool occupancy (sdf < 0) at the voxel centres of the unit cube
  [-0.5, 0.5]^3, indexed [x, y, z]; `resolution` is static."""
  c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution - 0.5
  grid = jnp.stack(jnp.meshgrid(c, c, c, indexing='ij'), axis=-1)
  return sdf_lib.shape_sdf(shape, grid) < 0
