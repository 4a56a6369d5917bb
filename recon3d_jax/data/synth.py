"""One procedurally generated training sample: shape + viewpoint + light -> images and 3D labels.

Frames. The camera looks at the origin from a random azimuth/elevation at a fixed distance.
Targets are viewer-centred: every 3D quantity is expressed in the camera's axes (OpenCV:
+x right, +y down, +z forward), with the object centred at the origin, so a network cannot win by
recognising a canonical pose. The object is normalised into the unit cube *in this frame*
(longest bounding-box side 1, centred), so the unit-cube / 1.1-box conventions of the metrics hold
for exactly the targets the network predicts. Rendering the viewer-frame shape from a camera with
identity rotation at (0, 0, -distance) is the same image as rendering the world shape from the
rotated camera.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from recon3d_jax.geometry import camera, groundtruth, render, sdf

CAMERA_DISTANCE = 2.2
FOV_DEG = 45.0
ELEVATION_RANGE_DEG = (-15.0, 45.0)

# Domain name -> function(key) -> sdf.Shape in its world frame. Later domains register here.
DOMAINS: dict[str, Callable[[jax.Array], sdf.Shape]] = {
    "primitives": sdf.random_primitive}


def to_viewer_frame(shape: sdf.Shape, rotation: jax.Array) -> sdf.Shape:
  """Rotates a world-frame shape into camera axes and renormalises it to the unit cube."""
  rotated = shape._replace(rotation=rotation @ shape.rotation,
                           translation=rotation @ shape.translation)
  return sdf.normalize_shape(rotated)


def viewer_camera() -> camera.Camera:
  """Camera whose axes are the viewer frame's axes, at distance CAMERA_DISTANCE on -z."""
  return camera.Camera(rotation=jnp.eye(3), position=jnp.array([0.0, 0.0, -CAMERA_DISTANCE]),
                           fov_deg=jnp.asarray(FOV_DEG))


def make_sample(shape: sdf.Shape, key: jax.Array, *, image_size: int, num_surface_points: int,
                num_uniform_points: int, num_near_points: int,
                voxel_resolution: int) -> dict[str, jax.Array]:
  """Renders a world-frame shape from a random viewpoint and computes its 3D ground truth.

  Returns (H = W = image_size, N/Mu/Mn/R the point counts and voxel resolution):
    image (H,W,3) uint8; depth (H,W) z-depth, 0 off the object; normal (H,W,3) camera-frame unit
    normals, 0 off the object; mask (H,W) uint8; surface_points/surface_normals (N,3);
    points_uniform (Mu,3) with occ_uniform (Mu,) uint8; points_near (Mn,3) with occ_near (Mn,);
    voxels (R,R,R) uint8 indexed [x,y,z]; azimuth, elevation (radians).
  """
  k_view, k_light, k_surface, k_occ = jax.random.split(key, 4)
  k_az, k_el = jax.random.split(k_view)
  azimuth = jax.random.uniform(k_az, (), minval=0.0, maxval=2 * jnp.pi)
  lo, hi = jnp.deg2rad(jnp.array(ELEVATION_RANGE_DEG))
  elevation = jax.random.uniform(k_el, (), minval=lo, maxval=hi)
  world_camera = camera.look_at_camera(azimuth, elevation, CAMERA_DISTANCE, FOV_DEG)

  view_shape = to_viewer_frame(shape, world_camera.rotation)
  lighting = render.random_lighting(k_light)
  lighting["light_dir"] = world_camera.rotation @ lighting["light_dir"]
  images = render.render(view_shape, viewer_camera(), image_size, **lighting)

  surface_points, surface_normals = groundtruth.surface_points(
      view_shape, k_surface, num_surface_points)
  occupancy = groundtruth.occupancy_points(view_shape, k_occ, num_uniform_points, num_near_points)
  return dict(
      image=jnp.round(images["rgb"] * 255).astype(jnp.uint8),
      depth=images["depth"].astype(jnp.float32),
      normal=images["normal"].astype(jnp.float32),
      mask=images["mask"].astype(jnp.uint8),
      surface_points=surface_points,
      surface_normals=surface_normals,
      points_uniform=occupancy["points_uniform"],
      occ_uniform=occupancy["occ_uniform"].astype(jnp.uint8),
      points_near=occupancy["points_near"],
      occ_near=occupancy["occ_near"].astype(jnp.uint8),
      voxels=groundtruth.voxelize(view_shape, voxel_resolution).astype(jnp.uint8),
      kind=view_shape.kind.astype(jnp.int32),
      azimuth=azimuth,
      elevation=elevation,
  )


@functools.partial(jax.jit, static_argnames=("domain", "image_size", "num_surface_points",
                                             "num_uniform_points", "num_near_points",
                                             "voxel_resolution"))
def generate_batch(keys: jax.Array, *, domain: str, **sizes) -> dict[str, jax.Array]:
  """Vmapped make_sample over keys (B,) of one domain; every field gains a leading B axis."""
  def one(key):
    k_shape, k_sample = jax.random.split(key)
    return make_sample(DOMAINS[domain](k_shape), k_sample, **sizes)
  return jax.vmap(one)(keys)


def sample_keys(seed: int, split: str, indices: jax.Array) -> jax.Array:
  """Per-instance keys: instance i of a split depends only on (seed, split, i)."""
  split_id = {"train": 0, "validation": 1, "test": 2}[split]
  base = jax.random.fold_in(jax.random.key(seed), split_id)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
