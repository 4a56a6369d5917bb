"""Sphere tracing of SDFs and shaded rendering of primitives and compounds.

Conventions (docs/DESIGN.md section 3, see camera.py): depth is z-depth along the
optical axis (not ray length), normals are unit outward vectors in the OpenCV
camera frame (+x right, +y down, +z forward; visible surfaces have n_z < 0).
Background pixels have depth 0 and normal 0.
"""
import jax
import jax.numpy as jnp

from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import compact
from recon3d_jax.geometry import csg
from recon3d_jax.geometry import shading
from recon3d_jax.geometry import vec

# Rays are traced only inside the shape's bounding box (within the unit cube),
# padded by this margin.
_BOX_MARGIN = 1e-3
# Sphere-tracing schedule: (steps, rays per chunk as a fraction 1/k of all
# rays). Each stage marches only the rays not yet done (|sdf| < eps or past
# the box), packed into chunks (compact.map_where): most finish within a few
# steps. For compounds at 64 px, of the ~1900 rays (of 4096) that cross the
# box, ~400 are left after 8 steps, ~120 after 16, ~26 after 32 and ~6 after
# 64, so the stages march ~15x fewer rays than 64 steps of every ray.
TRACE_STAGES = ((8, 8), (8, 16), (16, 32), (32, 64))
# A single primitive of one kind is cheap enough per evaluation that the
# compaction's bookkeeping is not worth it: sphere_trace_dense marches every
# ray for this many steps, in the image's (H, W) layout (flattened to (H W,),
# the same loop was much slower; figures in benchmarks/RESULTS.md, "Figures
# behind code comments").
DENSE_TRACE_STEPS = 64
# Newton refinement: steps, forward-difference step for the slope, and where it
# is trusted (non-grazing slope, short jump).
_NEWTON_STEPS = 3
_SLOPE_STEP = 1e-4
_MIN_NEWTON_SLOPE = 0.01
_MAX_NEWTON_JUMP = 0.02
# Rays per chunk for the Newton steps and the normals (1/k of all rays).
_HIT_CHUNK = 8


def _chunk(num_rays: int, fraction: int) -> int:
  return max(num_rays // fraction, 1)


def _newton(ray_sdf, t, far):
  """_NEWTON_STEPS trusted Newton steps (else sphere-tracing steps) on
  ray_sdf(t) = 0, with ray_sdf mapping ray parameters (2, ...) -> (2, ...)."""
  def step(_, t):
    dist, dist_ahead = ray_sdf(jnp.stack([t, t + _SLOPE_STEP]))
    slope = (dist_ahead - dist) / _SLOPE_STEP
    jump = -dist / jnp.minimum(slope, -_MIN_NEWTON_SLOPE)
    trusted = (slope < -_MIN_NEWTON_SLOPE) & (jnp.abs(jump) < _MAX_NEWTON_JUMP)
    return jnp.minimum(t + jnp.where(trusted, jump, dist), far)
  return jax.lax.fori_loop(0, _NEWTON_STEPS, step, t)


def sphere_trace_dense(sdf_fn, origins, directions, near, far, eps=1e-4,
                       steps=DENSE_TRACE_STEPS):
  """sphere_trace without compaction: `steps` steps of every ray, then the
  Newton steps, all in the rays' own layout (..., 3). Same arguments and
  results as sphere_trace; sdf_fn maps (..., 3) -> (...,)."""
  far = jnp.broadcast_to(jnp.asarray(far, origins.dtype), origins.shape[:-1])
  t = jnp.broadcast_to(jnp.asarray(near, origins.dtype), origins.shape[:-1])

  def ray_sdf(t):
    return sdf_fn(origins + t[..., None] * directions)

  t = jax.lax.fori_loop(0, steps, lambda _, t: jnp.minimum(t + ray_sdf(t), far), t)
  t = _newton(ray_sdf, t, far)
  return t, (jnp.abs(ray_sdf(t)) < eps) & (t < far)


def sphere_trace(sdf_fn, origins, directions, near, far, eps=1e-4, stages=TRACE_STAGES):
  """Sphere traces rays against a 1-Lipschitz SDF.

  Steps t <- t + sdf (clamped to `far`) for at most sum(steps of `stages`)
  steps per ray, each stage only for the rays not yet done (|sdf| < eps or
  t = far), then Newton steps on sdf(o + t d) = 0 along the rays that stopped
  short of `far`, to finish rays that approach the surface at an angle (plain
  sphere tracing converges only linearly there). The slope d sdf / dt comes
  from a forward difference (one stacked sdf_fn call, far cheaper to compile
  than differentiating sdf_fn). Newton is trusted only for short jumps
  (< 0.02) where the ray meets the surface at a slope below -0.01, so it
  cannot skip a thin part; other rays keep taking sphere-tracing steps.

  Args:
    sdf_fn: maps points (m, 3) to signed distances (m,).
    origins: (..., 3) ray origins.
    directions: (..., 3) unit ray directions.
    near: (...,) or scalar start parameter.
    far: (...,) or scalar end parameter.
    eps: hit tolerance on |sdf| at the final point.
    stages: static ((steps, k), ...): the schedule, chunks of 1/k of the rays.

  Returns:
    t: (...,) ray parameter of the hit (ray length for unit directions).
    hit: (...,) bool, |sdf| < eps and t < far.
  """
  batch_shape = origins.shape[:-1]
  origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
  n = origins.shape[0]
  far = jnp.broadcast_to(jnp.asarray(far, origins.dtype), batch_shape).reshape(n)
  t = jnp.broadcast_to(jnp.asarray(near, origins.dtype), batch_shape).reshape(n)

  def ray_sdf(o, d, t):
    return sdf_fn(o + t[..., None] * d)

  def march(steps):
    def fn(ray):
      o, d, far, t, dist = ray
      def step(_, carry):
        t, _ = carry
        dist = ray_sdf(o, d, t)
        return jnp.minimum(t + dist, far), dist
      t, dist = jax.lax.fori_loop(0, steps, step, (t, dist))
      return o, d, far, t, dist
    return fn

  def newton(ray):
    o, d, far, t, _ = ray
    t = _newton(lambda t: ray_sdf(o, d, t), t, far)
    return o, d, far, t, ray_sdf(o, d, t)

  # dist: the SDF where the ray last stepped from; inf = not evaluated yet.
  ray = (origins, directions, far, t, jnp.full(n, jnp.inf, origins.dtype))
  for steps, fraction in stages:
    t, dist = ray[3], ray[4]
    marching = (jnp.abs(dist) >= eps) & (t < far)
    ray = compact.map_where(march(steps), marching, ray, _chunk(n, fraction))
  ray = compact.map_where(newton, ray[3] < far, ray, _chunk(n, _HIT_CHUNK))
  t, dist = ray[3], ray[4]
  hit = (jnp.abs(dist) < eps) & (t < far)
  return t.reshape(batch_shape), hit.reshape(batch_shape)


def _box_interval(origins, directions, lo, hi):
  """Ray parameters (near, far) where unit rays cross the box [lo, hi] (slabs).

  Rays that miss it get near = far, i.e. an empty interval.
  """
  inv = 1 / jnp.where(jnp.abs(directions) < 1e-12, 1e-12, directions)
  t1, t2 = (lo - origins) * inv, (hi - origins) * inv
  far = jnp.maximum(jnp.min(jnp.maximum(t1, t2), axis=-1), 0.0)
  near = jnp.clip(jnp.max(jnp.minimum(t1, t2), axis=-1), 0.0, far)
  return near, far


def render(shape, camera: camera_lib.Camera, image_size: int, appearance: dict,
           texture: float = 0.0):
  """Renders a shape that lies in the unit cube (see csg.normalize).

  Shading is shading.shade (Lambertian plus ambient, optional stripes) of
  the hit points and normals in the shape's frame.

  Args:
    shape: an sdf.Shape or csg.Csg inside the unit cube.
    camera: the Camera.
    image_size: static int H = W.
    appearance: dict from data.variants.sample_appearance, its directions in the
      shape's frame.
    texture: static stripe amplitude (data.variants.Variant.texture).

  Returns:
    dict with rgb (H, W, 3) float32 in [0, 1]; depth (H, W) z-depth, 0 on the
    background; normal (H, W, 3) unit, camera frame, 0 on the background;
    mask (H, W) bool foreground.
  """
  c = csg.as_csg(shape)
  origins, directions = camera_lib.camera_rays(camera, image_size)
  lo, hi = csg.bounding_box(c)
  lo = jnp.maximum(lo, -0.5) - _BOX_MARGIN
  hi = jnp.minimum(hi, 0.5) + _BOX_MARGIN
  near, far = _box_interval(origins, directions, lo, hi)
  dense = c.num_parts == 1 and len(c.kinds) == 1
  trace = sphere_trace_dense if dense else sphere_trace
  t, hit = trace(lambda p: csg.csg_sdf(c, p), origins, directions, near, far)
  points = origins + t[..., None] * directions
  if dense:
    normal = csg.csg_normal(c, points)
  else:
    # Normals only at the hits (a gradient costs several SDF evaluations).
    flat_points = points.reshape(-1, 3)
    _, normal = compact.map_where(
        lambda pn: (pn[0], csg.csg_normal(c, pn[0])), hit.reshape(-1),
        (flat_points, jnp.zeros_like(flat_points)), _chunk(flat_points.shape[0], _HIT_CHUNK))
    normal = normal.reshape(points.shape)
  forward = camera.rotation[2]
  depth = t * vec.dot(directions, forward)
  rgb = shading.shade(points, normal, hit, appearance, texture)
  return dict(
      rgb=rgb,
      depth=jnp.where(hit, depth, 0.0),
      normal=jnp.where(hit[..., None], camera_lib.rotate_to_camera(camera, normal), 0.0),
      mask=hit)
