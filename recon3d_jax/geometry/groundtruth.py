"""3D ground truth of a shape: surface samples, occupancy samples, voxels.

Everything is in the world (object) frame, with the shape normalised into the
unit cube (longest bounding-box side 1, centred at the origin). The data
pipeline rotates the results into the viewer-centred frame with
camera.rotate_to_camera.
"""
import functools
import math

import jax
import jax.numpy as jnp

from recon3d_jax.geometry import compact
from recon3d_jax.geometry import csg
from recon3d_jax.geometry import vec

# Half-thickness of the shell |sdf| < eps from which surface points are drawn.
# Outside a convex edge the shell is a wedge whose points all project onto the
# edge: a fraction pi eps L / (8 A) of the samples (edge length L, area A;
# about 1% for a box). Thinner shells need more candidates.
SHELL_EPS = 0.01
# Candidates are drawn only in the cells of a CELL_GRID^3 grid over the
# shape's padded box that can reach the shell (the Lipschitz bound rules the
# others out), which is ~25% shell for the shapes in the unit cube but less
# for thin ones. Primitives (exact SDFs) with 8 candidates per point had at
# least 1.68 shell candidates per point (512 shapes). Where the SDF is only a
# bound, 8 left 37 of 256 organic shapes and 5 of 256 compounds short (down to
# 0.70 per point); 12 left none (down to 1.06).
CELL_GRID = 24
CANDIDATES_PER_POINT = 8
BOUND_CANDIDATES_PER_POINT = 12
# Where the SDF is only a bound, the gradient (for |f| / |grad f|) is computed
# for this many candidates per point (see bound_shell_pool). With 2, every one
# of 256 shapes had at least 1.16 shell candidates per point (organic;
# compounds 1.39; benchmarks/groundtruth_accuracy.py --num_shapes=256).
GRADIENTS_PER_POINT = 2


def _hash_uniform(key, shape):
  """Uniforms in [0, 1) with 24-bit resolution, i.i.d. in practice: a counter
  hashed (two rounds of the 'lowbias32' integer mixer, one per seed word) with
  a 64-bit seed drawn from `key`.

  jax.random's threefry, for the surface candidates' bits on CPU, took over
  half of a primitive's whole ground truth; this is several times cheaper
  (benchmarks/render_throughput.py; figures in benchmarks/RESULTS.md).
  Sampling positions needs uniformity and independence, not cryptographic
  strength.
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  x = jnp.arange(math.prod(shape), dtype=jnp.uint32)
  for word in seed:
    x = x ^ word
    for multiplier in (0x7FEB352D, 0x846CA68B):
      x = (x ^ (x >> 16)) * jnp.uint32(multiplier)
    x = x ^ (x >> 16)
  return ((x >> 8).astype(jnp.float32) / 2 ** 24).reshape(shape)


def _shell_candidates(c: csg.Csg, key, num_candidates: int):
  """(num_candidates, 3) i.i.d. points uniform in a union of cells holding the
  shell, and (num_candidates,) bool whether |f| < SHELL_EPS at each."""
  lo, hi = csg.bounding_box(c)
  lo, hi = lo - SHELL_EPS, hi + SHELL_EPS
  cell = (hi - lo) / CELL_GRID
  index = jnp.arange(CELL_GRID, dtype=jnp.float32)
  corners = jnp.stack(jnp.meshgrid(index, index, index, indexing='ij'), -1).reshape(-1, 3)
  corners = lo + corners * cell
  # A 1-Lipschitz f with |f(centre)| >= half-diagonal + eps has no shell
  # point in the cell.
  reach = jnp.abs(csg.csg_sdf(c, corners + cell / 2)) < vec.norm(cell) / 2 + SHELL_EPS
  reaching = compact.true_first(reach, reach.shape[0])  # The reaching cells first.
  num_reaching = jnp.sum(reach)
  u = _hash_uniform(key, (num_candidates, 4))
  # u[:, 0] picks one of the reaching cells uniformly, u[:, 1:] a point in it.
  pick = jnp.floor(u[:, 0] * num_reaching.astype(jnp.float32)).astype(jnp.int32)
  pick = jnp.clip(pick, 0, num_reaching - 1)
  candidates = corners[reaching[pick]] + u[:, 1:] * cell
  return candidates, jnp.abs(csg.csg_sdf(c, candidates)) < SHELL_EPS


def surface_points(shape, key, num_points: int, num_candidates: int | None = None,
                   num_normals: int | None = None):
  """Area-uniform samples on the surface, with outward normals.

  Candidates are drawn i.i.d. uniformly in the grid cells that can reach the
  shell |distance| < SHELL_EPS (so uniformly in a region holding the whole
  shell). Those in the shell are area-uniform: for an exact SDF the shell
  volume near a surface patch is proportional to its area, up to
  O(eps^2 curvature). Where the SDF is only a bound (CSG, superquadrics) the
  distance is taken to first order as |f| / |grad f|, which keeps the shell's
  thickness uniform. The first `num_points` shell candidates (a uniform choice,
  since candidates are i.i.d.) are projected onto the surface. If fewer than
  `num_points` candidates fall in the shell (rare with the default counts), the
  remainder are non-shell ones, which after projection still lie on the
  surface but are not area-uniform.

  Args:
    shape: an sdf.Shape or csg.Csg.
    key: PRNG key.
    num_points: static int N.
    num_candidates: static int, default CANDIDATES_PER_POINT * N for exact
      SDFs, BOUND_CANDIDATES_PER_POINT * N for bounds.
    num_normals: static int K <= N, default N: normals of the first K points
      only (the rest may be seeds that need none, e.g. of occupancy_points).

  Returns:
    points: (N, 3) on the surface: |sdf| < 1e-4 (in unit-cube units, drawn
      as groundtruth.normalize draws them) for all but 0.22% of compounds'
      and 0.04% of organic shapes' samples, where two Newton steps had not
      converged (compounds: at creases) (benchmarks/groundtruth_accuracy.py);
      ~1e-6 for primitives.
    normals: (K, 3) unit outward normals of points[:K].
  """
  c = csg.as_csg(shape)
  sdf_and_grad = functools.partial(csg.csg_sdf_and_grad, c)
  if csg.is_exact(c):
    candidates, near = _shell_candidates(
        c, key, num_candidates or CANDIDATES_PER_POINT * num_points)
    points = csg.project_to_surface(sdf_and_grad,
                                    candidates[compact.true_first(near, num_points)])
  else:
    pool, value, grad, shell = bound_shell_pool(c, key, num_points, num_candidates)
    # The pool's gradients also give the chosen points their first Newton step.
    index = compact.true_first(shell, num_points)
    points = csg.newton_step(pool[index], value[index], grad[index])
    points = csg.project_to_surface(sdf_and_grad, points, csg.PROJECTION_STEPS - 1)
  num_normals = num_points if num_normals is None else num_normals
  return points, csg.csg_normal(c, points[:num_normals])


def bound_shell_pool(c: csg.Csg, key, num_points: int, num_candidates: int | None = None):
  """surface_points' candidates where the SDF is a bound, with the shell test.

  The candidates with |f| < SHELL_EPS are a superset of the shell (|grad f|
  <= 1); the first GRADIENTS_PER_POINT * N of them (then others) form the
  pool, whose gradients decide which lie in the shell, |f| / |grad f| <
  SHELL_EPS.

  Returns:
    pool: (K, 3) candidates, K = min(GRADIENTS_PER_POINT N, num_candidates).
    value, grad: (K,) and (K, 3) the SDF and its gradient there.
    shell: (K,) bool, in the shell. Fewer than N Trues is a shortfall.
  """
  num_candidates = num_candidates or BOUND_CANDIDATES_PER_POINT * num_points
  candidates, near = _shell_candidates(c, key, num_candidates)
  pool = candidates[compact.true_first(near, min(GRADIENTS_PER_POINT * num_points,
                                                 num_candidates))]
  value, grad = csg.csg_sdf_and_grad(c, pool)
  return pool, value, grad, jnp.abs(value) < SHELL_EPS * jnp.maximum(vec.norm(grad), 1e-6)


def normalize(shape, key, num_points: int, num_normals: int | None = None):
  """Maps a shape into the unit cube, with area-uniform surface samples of the result.

  The samples double as the seeds of a compound's numerical bounding box
  (csg.aabb). They are drawn after a first normalisation by the conservative
  csg.bounding_box (exact for P = 1, so final), which puts the sampler's
  absolute tolerances (SHELL_EPS) at the same scale for every shape; the
  points are then mapped by the same transform as the shape (a uniform
  scale, so they stay area-uniform and the normals unchanged).

  Args:
    shape: an sdf.Shape or csg.Csg.
    key: PRNG key of the surface samples.
    num_points: static int N (4,096 in the data pipeline).
    num_normals: static int K <= N, as in surface_points.

  Returns:
    shape: the csg.Csg in the unit cube.
    points: (N, 3) its surface samples (as surface_points).
    normals: (K, 3) unit outward normals of points[:K].
  """
  c = csg.as_csg(shape)
  c = csg.normalize(c, csg.bounding_box(c))
  points, normals = surface_points(c, key, num_points, num_normals=num_normals)
  if c.num_parts == 1:
    return c, points, normals
  scale, translation = csg.unit_cube_transform(*csg.aabb(c, points))
  return (csg.transform(c, jnp.eye(3), scale, translation), scale * points + translation,
          normals)


def occupancy_points(shape, key, num_uniform: int, surface, near_sigma: float = 0.01):
  """Occupancy query points with inside (sdf < 0) labels.

  Args:
    shape: an sdf.Shape or csg.Csg, inside the unit cube.
    key: PRNG key.
    num_uniform: static int Mu, points uniform in the padded box
      [-0.55, 0.55]^3 (side 1.1).
    surface: (Mn, 3) area-uniform surface points (from surface_points, drawn
      independently of the surface samples used as targets); the near points
      are these plus isotropic Gaussian noise of standard deviation
      `near_sigma`.
    near_sigma: noise scale in unit-cube units.

  Returns:
    dict with points_uniform (Mu, 3), occ_uniform (Mu,) bool, points_near
    (Mn, 3), occ_near (Mn,) bool.
  """
  shape = csg.as_csg(shape)
  uniform_key, noise_key = jax.random.split(key)
  points_uniform = jax.random.uniform(uniform_key, (num_uniform, 3),
                                      minval=-0.55, maxval=0.55)
  points_near = surface + near_sigma * jax.random.normal(noise_key, surface.shape)
  occ = csg.csg_sdf(shape, jnp.concatenate([points_uniform, points_near])) < 0
  return dict(points_uniform=points_uniform, occ_uniform=occ[:num_uniform],
              points_near=points_near, occ_near=occ[num_uniform:])


def voxelize(shape, resolution: int = 32):
  """(R, R, R) bool occupancy (sdf < 0) at the voxel centres of the unit cube
  [-0.5, 0.5]^3, indexed [x, y, z]; `resolution` is static."""
  c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution - 0.5
  grid = jnp.stack(jnp.meshgrid(c, c, c, indexing='ij'), axis=-1)
  return csg.csg_sdf(csg.as_csg(shape), grid) < 0
