"""Sphere tracing of SDFs and shaded rendering of primitives and compounds.

Conventions (DESIGN.md section 3, see camera.py): depth is z-depth along the
optical axis (not ray length), normals are unit outward vectors in the OpenCV
camera frame (+x right, +y down, +z forward; visible surfaces have n_z < 0).
Background pixels have depth 0 and normal 0.
"""
import jax
import jax.numpy as jnp

from recon3d_jax.data import variants
from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import csg
from recon3d_jax.geometry import vec

# Rays are traced only inside the shape's bounding box (within the unit cube),
# padded by this margin.
_BOX_MARGIN = 1e-3
TRACE_STEPS = 64
# Newton refinement: steps, forward-difference step for the slope, and where it
# is trusted (non-grazing slope, short jump).
_NEWTON_STEPS = 3
_SLOPE_STEP = 1e-4
_MIN_NEWTON_SLOPE = 0.01
_MAX_NEWTON_JUMP = 0.02


def sphere_trace(sdf_fn, origins, directions, near, far, num_steps=64, eps=1e-4):
  """Sphere traces rays against a 1-Lipschitz SDF.

  A fixed number of steps t <- t + sdf (clamped to `far`) so it jits, then
  Newton steps on sdf(o + t d) = 0 along the ray to finish rays that approach
  the surface at an angle (plain sphere tracing converges only linearly there).
  The slope d sdf / dt comes from a forward difference (one stacked sdf_fn
  call, far cheaper to compile than differentiating sdf_fn). Newton is trusted
  only for short jumps (< 0.02) where the ray meets the surface at a slope
  below -0.01, so it cannot skip a thin part; other rays keep taking
  sphere-tracing steps.

  Args:
    sdf_fn: maps points (..., 3) to signed distances (...,).
    origins: (..., 3) ray origins.
    directions: (..., 3) unit ray directions.
    near: (...,) or scalar start parameter.
    far: (...,) or scalar end parameter.
    num_steps: number of sphere-tracing steps.
    eps: hit tolerance on |sdf| at the final point.

  Returns:
    t: (...,) ray parameter of the hit (ray length for unit directions).
    hit: (...,) bool, |sdf| < eps and t < far.
  """
  batch_shape = origins.shape[:-1]
  far = jnp.broadcast_to(jnp.asarray(far, origins.dtype), batch_shape)
  t = jnp.broadcast_to(jnp.asarray(near, origins.dtype), batch_shape)

  def ray_sdf(t):
    return sdf_fn(origins + t[..., None] * directions)

  def trace_step(_, t):
    return jnp.minimum(t + ray_sdf(t), far)

  def newton_step(_, t):
    d, d_ahead = ray_sdf(jnp.stack([t, t + _SLOPE_STEP]))
    slope = (d_ahead - d) / _SLOPE_STEP
    newton = -d / jnp.minimum(slope, -_MIN_NEWTON_SLOPE)
    trusted = (slope < -_MIN_NEWTON_SLOPE) & (jnp.abs(newton) < _MAX_NEWTON_JUMP)
    step = jnp.where(trusted, newton, d)
    return jnp.minimum(t + step, far)

  t = jax.lax.fori_loop(0, num_steps, trace_step, t)
  t = jax.lax.fori_loop(0, _NEWTON_STEPS, newton_step, t)
  hit = (jnp.abs(ray_sdf(t)) < eps) & (t < far)
  return t, hit


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
           texture: float = 0.0, num_steps: int = TRACE_STEPS):
  """Renders a shape that lies in the unit cube (see csg.normalize).

  Shading is variants.shade (Lambertian plus ambient, optional stripes) of
  the hit points and normals in the shape's frame.

  Args:
    shape: an sdf.Shape or csg.Csg inside the unit cube.
    camera: the Camera.
    image_size: static int H = W.
    appearance: dict from variants.sample_appearance, its directions in the
      shape's frame.
    texture: static stripe amplitude (variants.Variant.texture).
    num_steps: static number of sphere-tracing steps.

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
  t, hit = sphere_trace(lambda p: csg.csg_sdf(c, p), origins, directions, near, far,
                        num_steps)
  points = origins + t[..., None] * directions
  normal = csg.csg_normal(c, points)
  forward = camera.rotation[2]
  depth = t * vec.dot(directions, forward)
  rgb = variants.shade(points, normal, hit, appearance, texture)
  return dict(
      rgb=rgb,
      depth=jnp.where(hit, depth, 0.0),
      normal=jnp.where(hit[..., None], camera_lib.rotate_to_camera(camera, normal), 0.0),
      mask=hit)
