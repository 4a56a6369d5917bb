"""Compound shapes: a fixed number of primitive parts combined by CSG operations.

A Csg holds P parts stacked along a leading axis (a fixed-size pytree, so
batches of compounds jit and vmap) and folds them left to right:

  d = d_0;  d = op_i(d, d_i) for each active part i >= 1

with op_i one of OPS:
  union         min(d, d_i): exact outside, a bound inside.
  subtract      max(d, -d_i): a bound.
  intersect     max(d, d_i): a bound.
  smooth_union  polynomial smooth minimum with blend radius k_i:
                h = clip(1/2 + (d_i - d) / (2 k), 0, 1),
                d <- d_i (1 - h) + d h - k h (1 - h) <= min(d, d_i);
                its gradient h grad d + (1 - h) grad d_i has norm <= 1.
Each operation keeps the result 1-Lipschitz when its inputs are, so
|f(p)| <= distance(p, surface) and sphere tracing never overshoots. Where the
result is only a bound, its zero set is still the exact surface and its
normalised gradient the exact normal, which is all the renderer and the ground
truth use (surface sampling corrects for |grad f| < 1, see groundtruth.py).

A single primitive is the P = 1 case. `normalize` maps a compound into the
unit cube (longest bounding-box side 1, centred at the origin) using
`aabb`, which is exact from support functions for P = 1 and found numerically
from surface samples otherwise (the parts' boxes are not the result's; see
groundtruth.normalize).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from recon3d_jax.geometry import sdf as sdf_lib
from recon3d_jax.geometry import vec

OPS = ('union', 'subtract', 'intersect', 'smooth_union')
UNION, SUBTRACT, INTERSECT, SMOOTH_UNION = range(len(OPS))


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=['parts', 'ops', 'blend', 'active', 'family'],
                   meta_fields=['kinds'])
@dataclasses.dataclass(frozen=True)
class Csg:
  """P primitive parts folded by CSG operations (see the module docstring).

  Attributes:
    parts: sdf.Shape whose fields have a leading (P,) axis, world frame.
    ops: (P,) int32 index into OPS combining part i into parts < i (ops[0]
      is unused).
    blend: (P,) float32 smooth-union radius of part i, world units.
    active: (P,) bool; inactive parts are skipped (active[0] must be True).
    family: () int32 family id of the shape within its domain.
    kinds: static tuple of the sdf.KINDS indices the parts may have; under
      vmap every listed kind's SDF is evaluated, so short lists are faster.
  """
  parts: sdf_lib.Shape
  ops: jax.Array
  blend: jax.Array
  active: jax.Array
  family: jax.Array
  kinds: tuple[int, ...] = sdf_lib.ALL_KINDS

  @property
  def num_parts(self) -> int:
    return self.ops.shape[-1]


def from_primitive(shape: sdf_lib.Shape, family=None,
                   kinds: tuple[int, ...] = sdf_lib.ALL_KINDS) -> Csg:
  """The P = 1 compound of a primitive; family defaults to its kind."""
  return Csg(parts=jax.tree.map(lambda x: x[None], shape),
             ops=jnp.zeros(1, jnp.int32), blend=jnp.zeros(1, jnp.float32),
             active=jnp.ones(1, bool),
             family=jnp.asarray(shape.kind if family is None else family, jnp.int32),
             kinds=kinds)


def part(c: Csg, i: int) -> sdf_lib.Shape:
  return jax.tree.map(lambda x: x[i], c.parts)


def transform(c: Csg, rotation, scale, translation) -> Csg:
  """The compound moved by p -> scale * rotation @ p + translation."""
  parts = c.parts
  return dataclasses.replace(
      c, blend=scale * c.blend,
      parts=parts._replace(
          rotation=rotation @ parts.rotation,
          scale=scale * parts.scale,
          translation=scale * parts.translation @ rotation.T + translation))


def _combine(op, k, a, b, ga=None, gb=None):
  """op(a, b) of distances (...,) and, given gradients (..., 3), its gradient."""
  smooth_k = jnp.maximum(k, 1e-6)
  h = jnp.clip(0.5 + 0.5 * (b - a) / smooth_k, 0.0, 1.0)
  values = (jnp.minimum(a, b), jnp.maximum(a, -b), jnp.maximum(a, b),
            b * (1 - h) + a * h - smooth_k * h * (1 - h))
  d = jnp.select([op == i for i in range(len(OPS))], values)
  if ga is None:
    return d
  take_b = jnp.select([op == UNION, op == SUBTRACT, op == INTERSECT],
                      [b < a, -b > a, b > a], False)
  hard = jnp.where(take_b[..., None], jnp.where(op == SUBTRACT, -gb, gb), ga)
  smooth = h[..., None] * ga + (1 - h[..., None]) * gb
  return d, jnp.where(op == SMOOTH_UNION, smooth, hard)


def csg_sdf(c: Csg, points):
  """Signed distance bound (negative inside) at (..., 3) points -> (...,)."""
  # Parts unrolled: vmapped over parts, the fold below made XLA on CPU
  # evaluate the parts' SDFs more than once (compiling takes longer unrolled;
  # benchmarks/RESULTS.md, "Figures behind code comments").
  d_all = [sdf_lib.shape_sdf(part(c, i), points, c.kinds) for i in range(c.num_parts)]
  d = d_all[0]
  for i in range(1, c.num_parts):
    d = jnp.where(c.active[i], _combine(c.ops[i], c.blend[i], d, d_all[i]), d)
  return d


def csg_sdf_and_grad(c: Csg, points):
  """csg_sdf and its gradient: (..., 3) -> ((...,), (..., 3))."""
  d_all, g_all = zip(*[sdf_lib.shape_sdf_and_grad(part(c, i), points, c.kinds)
                        for i in range(c.num_parts)])
  d, g = d_all[0], g_all[0]
  for i in range(1, c.num_parts):
    d_new, g_new = _combine(c.ops[i], c.blend[i], d, d_all[i], g, g_all[i])
    d = jnp.where(c.active[i], d_new, d)
    g = jnp.where(c.active[i], g_new, g)
  return d, g


def csg_normal(c: Csg, points):
  """Unit outward normals (..., 3): the normalised gradient."""
  _, grad = csg_sdf_and_grad(c, points)
  return vec.normalize(grad)


# Numerical bounding box of a compound from points on its surface (area-
# uniform samples, see groundtruth.normalize): per axis direction u (+-x,
# +-y, +-z), the _AABB_ASCENT_POINTS samples on the surface (|f| <
# _AABB_SURFACE_TOL) that reach furthest along u climb by gradient ascent on
# the surface: step along u's tangential part, project back, accept only
# surface points that reach further. Every point stays on the surface, so the
# box never exceeds the true one. Steps start at _AABB_FIRST_STEP of the
# samples' extent, double after a success and halve after a failure, so a
# narrow tip (a cone's apex), which few samples come near, is still reached.
_AABB_SURFACE_TOL = 1e-5
_AABB_ASCENT_POINTS = 4
_AABB_ASCENT_STEPS = 10
_AABB_FIRST_STEP = 1 / 64
# Newton steps onto the surface (project_to_surface): from |f| < 0.01 two
# leave all but ~0.2% of compounds' surface samples within 1e-4.
PROJECTION_STEPS = 2
# |grad f| = 1 except on ties (edges), at singular points and in bounds (a
# superquadric's falls with its aspect ratio). The floor gives exact Newton
# steps where |grad f| >= 1/8 and keeps the others within 8 |f|; a floor of
# 1/4 left 3.9% of organic surface samples more than 1e-4 off (|f|) after two
# steps rather than 0.02%.
_MIN_PROJECTION_GRAD_SQ = 1 / 64


def _conservative_box(c: Csg):
  """A box that contains the compound: the parts' boxes, padded for blends.

  Intersections and subtractions lie inside their first part, so the union
  of the parts' boxes always holds the result. A smooth union reaches where
  min(d, d_i) <= k / 4; for bounds that are not exact (superquadrics, aspect
  up to ~8 here) that is up to 2 k from the part.
  """
  lo, hi = jax.vmap(lambda s: sdf_lib.shape_aabb(s, c.kinds))(c.parts)
  pad = 2 * jnp.max(jnp.where(c.active & (c.ops == SMOOTH_UNION), c.blend, 0.0))
  first = jnp.arange(c.num_parts) == 0
  use = (c.active | first)[:, None]
  return (jnp.min(jnp.where(use, lo, jnp.inf), axis=0) - pad,
          jnp.max(jnp.where(use, hi, -jnp.inf), axis=0) + pad)


def newton_step(points, value, grad):
  """One Newton step p <- p - f(p) grad f(p) / |grad f(p)|^2 towards the zero
  set, from f (...,) and its gradient (..., 3) at points (..., 3)."""
  grad_sq = jnp.maximum(vec.dot(grad, grad), _MIN_PROJECTION_GRAD_SQ)
  return points - (value / grad_sq)[..., None] * grad


def project_to_surface(sdf_and_grad, points, steps=PROJECTION_STEPS):
  """`steps` Newton steps (newton_step) onto the zero set."""
  return jax.lax.fori_loop(0, steps, lambda _, p: newton_step(p, *sdf_and_grad(p)), points)


def _surface_aabb(c: Csg, surface):
  """(lo, hi) from surface points (M, 3) refined by ascent (see above)."""
  dirs = jnp.asarray(np.concatenate([np.eye(3), -np.eye(3)]), jnp.float32)  # (6, 3)
  on_surface = jnp.abs(csg_sdf(c, surface)) < _AABB_SURFACE_TOL
  reach = jnp.where(on_surface[:, None], vec.dot(surface[:, None], dirs), -jnp.inf)  # (M, 6)
  score, best = jax.lax.top_k(reach.T, _AABB_ASCENT_POINTS)  # (6, K)
  sdf_and_grad = functools.partial(csg_sdf_and_grad, c)
  u = dirs[:, None, :]

  def ascend(_, carry):
    p, score, step = carry
    _, grad = sdf_and_grad(p)
    n = vec.normalize(grad)
    tangent = u - vec.dot(u, n)[..., None] * n
    q = project_to_surface(sdf_and_grad, p + step[..., None] * tangent, PROJECTION_STEPS + 1)
    reach = vec.dot(q, u)
    better = (jnp.abs(csg_sdf(c, q)) < _AABB_SURFACE_TOL) & (reach > score)
    step = jnp.where(better, 2.0 * step, 0.5 * step)
    return jnp.where(better[..., None], q, p), jnp.where(better, reach, score), step

  extent = jnp.max(jnp.max(surface, axis=0) - jnp.min(surface, axis=0))
  first_step = jnp.full(score.shape, _AABB_FIRST_STEP * extent)
  _, score, _ = jax.lax.fori_loop(0, _AABB_ASCENT_STEPS, ascend,
                                  (surface[best], score, first_step))
  extreme = jnp.max(score, axis=1)
  return -extreme[3:], extreme[:3]


def aabb(c: Csg, surface=None):
  """Axis-aligned bounding box of the compound -> (lo (3,), hi (3,)).

  P = 1: exact (support functions). Otherwise found numerically from
  `surface` (M, 3), points on the surface (see _surface_aabb): each face is
  the furthest point of the surface found along its axis, never outside the
  true box. From the 4,096 samples of groundtruth.normalize, against the
  extremes of 60,000 surface samples per shape, faces were within 1/500 of
  the shape's size for all of 256 organic shapes and 256 compounds, the
  largest gap 0.20% (benchmarks/groundtruth_accuracy.py --num_shapes=256).
  """
  if c.num_parts == 1:
    return sdf_lib.shape_aabb(part(c, 0), c.kinds)
  if surface is None:
    raise ValueError(f"aabb of a compound of {c.num_parts} parts needs surface points "
                     "(surface=(M, 3)), e.g. from groundtruth.surface_points; "
                     "groundtruth.normalize does both")
  return _surface_aabb(c, surface)


def unit_cube_transform(lo, hi):
  """(scale, translation) of p -> scale * p + translation mapping the box
  [lo, hi] to longest side 1, centred at the origin."""
  size = jnp.max(hi - lo)
  return 1 / size, -(lo + hi) / (2 * size)


def normalize(c: Csg, box=None) -> Csg:
  """Rescales and translates so the box (default: aabb(c), which needs P = 1)
  has longest side 1 and is centred at 0."""
  lo, hi = aabb(c) if box is None else box
  scale, translation = unit_cube_transform(lo, hi)
  return transform(c, jnp.eye(3), scale, translation)


def as_csg(shape) -> Csg:
  """A Csg as is; an sdf.Shape as its P = 1 compound."""
  return shape if isinstance(shape, Csg) else from_primitive(shape)


def is_exact(c: Csg) -> bool:
  """Whether the SDF is exact (not just a bound) near the whole surface.

  Static: a single primitive whose kinds' SDFs are exact (sdf.is_exact).
  Hard CSG is exact except near creases; smooth unions, superquadrics and
  ellipsoids in a mix of kinds are not.
  """
  return c.num_parts == 1 and sdf_lib.is_exact(c.kinds)


def bounding_box(c: Csg):
  """A box containing the compound -> (lo, hi): exact for P = 1, otherwise
  the cheap conservative box of the parts."""
  if c.num_parts == 1:
    return aabb(c)
  return _conservative_box(c)
