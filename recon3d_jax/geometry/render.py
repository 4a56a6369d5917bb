"""Sphere tracing of SDFs and shaded rendering of primitives.

Conventions (DESIGN.md section 3, see camera.py): depth is z-depth along the
optical axis (not ray length), normals are unit outward vectors in the OpenCV
camera frame (+x right, +y down, +z forward; visible surfaces have n_z < 0).
Background pixels have depth 0 and normal 0.
"""
import jax
import jax.numpy as jnp

from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import sdf as sdf_lib

# Radius of a sphere around the unit cube (half its diagonal, plus a margin);
# rays are traced only inside it.
_BOUNDING_RADIUS = 0.5 * 3 ** 0.5 + 0.01
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


def _bounding_interval(origins, directions, radius):
  """Ray parameters (near, far) where unit rays cross a sphere at the origin.

  Rays that miss it get near = far, i.e. an empty interval.
  """
  b = jnp.sum(origins * directions, axis=-1)
  c = jnp.sum(origins * origins, axis=-1) - radius ** 2
  half_chord = jnp.sqrt(jnp.maximum(b * b - c, 0.0))
  far = jnp.maximum(-b + half_chord, 0.0)
  near = jnp.clip(-b - half_chord, 0.0, far)
  return near, far


def render(shape: sdf_lib.Shape, camera: camera_lib.Camera, image_size: int,
           light_dir, albedo, ambient, background):
  """Renders a primitive that lies in the unit cube (see normalize_shape).

  Shading is Lambertian plus ambient with a directional light:
  rgb = albedo * (ambient + (1 - ambient) * max(0, n_world . light_dir)).

  Args:
    shape: the Shape, inside the unit cube.
    camera: the Camera.
    image_size: static int H = W.
    light_dir: (3,) unit direction towards the light, world frame.
    albedo: (3,) surface colour in [0, 1].
    ambient: () ambient fraction in [0, 1].
    background: (3,) background colour in [0, 1].

  Returns:
    dict with rgb (H, W, 3) float32 in [0, 1]; depth (H, W) z-depth, 0 on the
    background; normal (H, W, 3) unit, camera frame, 0 on the background;
    mask (H, W) bool foreground.
  """
  origins, directions = camera_lib.camera_rays(camera, image_size)
  near, far = _bounding_interval(origins, directions, _BOUNDING_RADIUS)
  t, hit = sphere_trace(lambda p: sdf_lib.shape_sdf(shape, p), origins,
                        directions, near, far)
  normal_world = sdf_lib.shape_normal(shape, origins + t[..., None] * directions)
  forward = camera.rotation[2]
  depth = t * (directions @ forward)
  shade = ambient + (1 - ambient) * jnp.maximum(normal_world @ light_dir, 0.0)
  rgb = jnp.where(hit[..., None], albedo * shade[..., None], background)
  return dict(
      rgb=jnp.clip(rgb, 0.0, 1.0).astype(jnp.float32),
      depth=jnp.where(hit, depth, 0.0),
      normal=jnp.where(hit[..., None],
                       camera_lib.rotate_to_camera(camera, normal_world), 0.0),
      mask=hit)


def random_lighting(key):
  """Random appearance: a light from the upper hemisphere on average, colours.

  Returns:
    dict with light_dir (3,) unit world direction towards the light (Gaussian
    direction biased towards +y), albedo (3,) in [0.3, 1], ambient () in
    [0.1, 0.4], background (3,) constant colour in [0, 1].
  """
  light_key, albedo_key, ambient_key, background_key = jax.random.split(key, 4)
  light = jax.random.normal(light_key, (3,)) + jnp.array([0.0, 1.0, 0.0])
  return dict(
      light_dir=light / jnp.linalg.norm(light),
      albedo=jax.random.uniform(albedo_key, (3,), minval=0.3, maxval=1.0),
      ambient=jax.random.uniform(ambient_key, (), minval=0.1, maxval=0.4),
      background=jax.random.uniform(background_key, (3,)))
