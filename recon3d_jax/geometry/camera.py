"""Pinhole cameras looking at the origin, and their pixel rays.

Conventions (docs/DESIGN.md section 3):
  * World frame: right-handed, +y up; shapes are normalised into the unit cube.
  * The eye sits at azimuth/elevation (radians) on a sphere of radius `distance`
    around the origin: azimuth 0, elevation 0 puts it on the +z axis; positive
    azimuth turns it towards +x; positive elevation raises it towards +y.
  * Camera frame is OpenCV style: +x right in the image, +y down in the image,
    +z forward along the optical axis (towards the origin).
  * Depth is z-depth along the optical axis, not distance along the ray.
  * Pixel (i, j) is row i, column j; rays pass through pixel centres. Images are
    square with equal horizontal and vertical field of view `fov_deg`.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from recon3d_jax.geometry import vec


class Camera(NamedTuple):
  """A pinhole camera.

  Attributes:
    rotation: (3, 3) world->camera rotation; rows are the camera x (right),
      y (down) and z (forward) axes in world coordinates.
    position: (3,) eye position in world coordinates.
    fov_deg: () full field of view in degrees, vertical = horizontal.
  """
  rotation: jax.Array
  position: jax.Array
  fov_deg: jax.Array


def look_at_camera(azimuth, elevation, distance=2.2, fov_deg=45.0) -> Camera:
  """Camera at (azimuth, elevation, distance) looking at the world origin.

  The eye is at distance * (cos(el) sin(az), sin(el), cos(el) cos(az)), so
  (0, 0) is on +z. The image x axis stays horizontal (no roll), which also holds
  at elevation +-pi/2. The defaults (2.2, 45 degrees) keep the bounding sphere of
  the unit cube (radius sqrt(3)/2) inside the view.

  Args:
    azimuth: () radians.
    elevation: () radians, in [-pi/2, pi/2].
    distance: () distance from the eye to the origin.
    fov_deg: () field of view in degrees.

  Returns:
    A Camera; jit- and vmap-able in all arguments.
  """
  az = jnp.asarray(azimuth, jnp.float32)
  el = jnp.asarray(elevation, jnp.float32)
  backward = jnp.stack([jnp.cos(el) * jnp.sin(az), jnp.sin(el),
                        jnp.cos(el) * jnp.cos(az)])
  forward = -backward
  # forward x world-up, normalised in closed form: horizontal for every elevation.
  right = jnp.stack([jnp.cos(az), jnp.zeros_like(az), -jnp.sin(az)])
  down = jnp.cross(forward, right)
  return Camera(
      rotation=jnp.stack([right, down, forward]),
      position=jnp.asarray(distance, jnp.float32) * backward,
      fov_deg=jnp.asarray(fov_deg, jnp.float32))


def camera_rays(camera: Camera, image_size: int):
  """World-frame rays through the pixel centres of a square image.

  Args:
    camera: the Camera.
    image_size: static int H = W.

  Returns:
    origins: (H, W, 3) the eye position, repeated.
    directions: (H, W, 3) unit ray directions in the world frame.
  """
  tan_half = jnp.tan(jnp.deg2rad(camera.fov_deg) / 2)
  # Pixel centres in normalised image coordinates [-1, 1].
  c = (jnp.arange(image_size, dtype=jnp.float32) + 0.5) / image_size * 2 - 1
  x, y = jnp.meshgrid(c * tan_half, c * tan_half, indexing='xy')  # x: column j, y: row i
  d_cam = jnp.stack([x, y, jnp.ones_like(x)], axis=-1)
  directions = vec.matmul(vec.normalize(d_cam), camera.rotation)  # R^T d for row vectors
  origins = jnp.broadcast_to(camera.position, directions.shape)
  return origins, directions


def world_to_camera_points(camera: Camera, p):
  """Full rigid transform R (p - position) of (..., 3) world points to camera frame."""
  return vec.matmul(p - camera.position, camera.rotation.T)


def rotate_to_camera(camera: Camera, v):
  """Rotation only, R v, of (..., 3) world vectors (normals, or viewer-centred
  3D targets: the object stays centred at the origin, the frame turns with the camera)."""
  return vec.matmul(v, camera.rotation.T)
