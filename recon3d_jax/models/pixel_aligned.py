"""Pixel-aligned local features: project query points into the image, sample a feature map.

The camera is the dataset's fixed viewer camera (data/synth.py, geometry/camera.py): the 3D
targets are in the viewer frame, the eye at (0, 0, -distance) with identity rotation, OpenCV axes
(+x right, +y down, +z forward), square images with field of view fov_deg; pixel centres sit at
normalised coordinates (index + 0.5) / size * 2 - 1.
"""
import jax
import jax.numpy as jnp

CAMERA_DISTANCE = 2.2  # data.synth.CAMERA_DISTANCE (models do not import the data package).
FOV_DEG = 45.0  # data.synth.FOV_DEG.


def project(points: jax.Array, distance: float = CAMERA_DISTANCE,
            fov_deg: float = FOV_DEG) -> jax.Array:
  """Viewer-frame points (...,3) -> normalised image coordinates (...,2) = (column, row) in
  [-1, 1] across the image (pixel centres at (index + 0.5) / size * 2 - 1)."""
  tan_half = jnp.tan(jnp.deg2rad(fov_deg) / 2)
  z = jnp.maximum(points[..., 2] + distance, 1e-6)  # Depth in front of the eye.
  return points[..., :2] / (z[..., None] * tan_half)


def bilinear_sample(features: jax.Array, coords: jax.Array) -> jax.Array:
  """Samples feature maps at normalised image coordinates, clamping at the border.

  Args:
    features: (B,h,w,C) a feature map covering the whole image (its pixel centres at
      (index + 0.5) / size * 2 - 1, as for the image).
    coords: (B,M,2) (column, row) normalised coordinates.

  Returns:
    (B,M,C) bilinearly interpolated features.
  """
  _, h, w, _ = features.shape
  size = jnp.array([w, h], features.dtype)
  t = jnp.clip((coords + 1) / 2 * size - 0.5, 0.0, size - 1)  # Continuous (column, row) index.
  lo = jnp.minimum(jnp.floor(t).astype(jnp.int32), jnp.array([w, h]) - 2).clip(0)
  frac = t - lo
  batch = jnp.arange(features.shape[0])[:, None]
  result = 0.0
  for dc, dr in ((0, 0), (0, 1), (1, 0), (1, 1)):
    column = jnp.minimum(lo[..., 0] + dc, w - 1)
    row = jnp.minimum(lo[..., 1] + dr, h - 1)
    weight = ((frac[..., 0] if dc else 1 - frac[..., 0])
              * (frac[..., 1] if dr else 1 - frac[..., 1]))
    result = result + weight[..., None] * features[batch, row, column]
  return result


def pixel_aligned_features(features: jax.Array, points: jax.Array) -> jax.Array:
  """features (B,h,w,C), viewer-frame points (B,M,3) -> (B,M,C) features under each point."""
  return bilinear_sample(features, project(points))
