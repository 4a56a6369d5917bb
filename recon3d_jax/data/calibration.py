"""Offline calibration of matched difficulty between depth and normal targets (docs/DESIGN.md
section 5): the numbers behind corrupt.LEVEL_PARAMS' depth_noise, and the tools that check them.
Nothing here runs in training; corrupt.py holds the corruption itself.

Matched difficulty. Normals derived from the corrupted depth by finite differences
(`normals_from_depth`) have the same median angular error, against normals derived from the clean
depth, as the corrupted normals against the true normals. The reference for depth is the clean
depth's finite-difference normals, not the true normals: it isolates what the corruption does to
the depth from the error the finite-difference operator makes on clean depth at creases,
silhouettes and occlusion boundaries, which is not a property of the supervision, exists at zero
corruption (so `minimal` could not be matched) and depends on resolution and scene. Only
`depth_noise` is calibrated (`calibrate_depth_noise`); blur, bias and holes are shared. Tolerance:
+-15% relative, or +-1 degree where errors are small.

Resolution dependence. Calibrated at 64 px. On 64 held-out scenes the depth-derived median error
is within 5% of the normals' at 64 and 128 px (-2..-5% and +1..-2%). At 32 px depth targets are
easier: -26, -23, -13, -6, -6% from minimal to extreme (0.6 and 1.4 degrees at the two lowest
levels), because central differences span 2 px against a 1.5-px noise correlation there and miss
part of its slope. Noise correlation and blur scale with the image so the rest is resolution-free.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize

from recon3d_jax.data import corrupt


# ------------------------------------------------------------------------------------------------
# Normals from depth.
# ------------------------------------------------------------------------------------------------


def _shift(x: np.ndarray, offset: int, axis: int, fill) -> np.ndarray:
  """y[..., k, ...] = x[..., k + offset, ...] along `axis`, `fill` past the edge (|offset| = 1)."""
  y = np.full_like(x, fill)
  src = [slice(None)] * x.ndim
  dst = [slice(None)] * x.ndim
  src[axis], dst[axis] = (slice(1, None), slice(None, -1)) if offset > 0 else (
      slice(None, -1), slice(1, None))
  y[tuple(dst)] = x[tuple(src)]
  return y


def _derivative(points: np.ndarray, valid: np.ndarray, axis: int):
  """Finite-difference derivative of (H, W, 3) points along image axis 0 or 1 (per pixel).

  Central where both neighbours are valid, else one-sided towards the valid one.

  Returns:
    (H, W, 3) derivative, and (H, W) bool: the pixel and its stencil are valid.
  """
  forward = _shift(points, 1, axis, 0.0) - points
  backward = points - _shift(points, -1, axis, 0.0)
  ok_f = valid & _shift(valid, 1, axis, False)
  ok_b = valid & _shift(valid, -1, axis, False)
  d = np.where((ok_f & ok_b)[..., None], (forward + backward) / 2,
               np.where(ok_f[..., None], forward, backward))
  return d, ok_f | ok_b


def normals_from_depth(depth, valid, fov_deg: float = corrupt.FOV_DEG):
  """Camera-frame normals of a z-depth map by finite differences of its back-projected points.

  Like any finite-difference operator it differences across depth discontinuities inside `valid`
  (occlusion boundaries), and one-sided stencils are first order.

  Args:
    depth: (H, W) z-depth.
    valid: (H, W) pixels whose depth may be used.
    fov_deg: field of view of the square pinhole camera.

  Returns:
    normal: (H, W, 3) float32 unit normals facing the camera (n_z <= 0), 0 where not valid.
    valid: (H, W) bool, where the pixel and the stencil in both image directions are valid.
  """
  depth, valid = corrupt.check_map("depth", depth, valid)
  if depth.ndim != 2:
    raise ValueError(f"depth must have shape (H, W), got {depth.shape}.")
  points = depth[..., None] * corrupt.pixel_rays(*depth.shape, fov_deg)
  d_row, ok_row = _derivative(points, valid, axis=0)
  d_col, ok_col = _derivative(points, valid, axis=1)
  normal = np.cross(d_row, d_col)  # y-down x x-right = -z for a fronto-parallel plane
  normal = np.where(normal[..., 2:] > 0, -normal, normal)
  out_valid = ok_row & ok_col & (np.linalg.norm(normal, axis=-1) > 0)
  normal = np.where(out_valid[..., None], corrupt.normalize(normal), 0.0)
  return normal.astype(np.float32), out_valid


def angular_error_deg(a, b) -> np.ndarray:
  """Angle in degrees between (..., 3) vectors a and b (any nonzero length); stable near 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.rad2deg(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, -1)))


# ------------------------------------------------------------------------------------------------
# Calibration of matched difficulty.
# ------------------------------------------------------------------------------------------------


def _ray_box(rays, centre, rotation, half_size):
  """Slab test of (H, W, 3) rays from the origin against a box; rotation rows are its axes.

  Returns (H, W) hit distance t (inf on a miss; the point is t r) and (H, W, 3) face normals.
  """
  origin = rotation @ -centre  # the camera centre in the box frame
  d = rays @ rotation.T
  with np.errstate(divide="ignore", invalid="ignore"):
    t1, t2 = (-half_size - origin) / d, (half_size - origin) / d
  t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
  t_enter, t_exit = t_near.max(-1), t_far.min(-1)
  hit = (t_enter <= t_exit) & (t_enter > 0)
  face = np.eye(3)[t_near.argmax(-1)] * -np.sign(np.take_along_axis(
      d, t_near.argmax(-1)[..., None], -1))
  return np.where(hit, t_enter, np.inf), face @ rotation


def _ray_sphere(rays, centre, radius):
  """(H, W) hit distance t of origin rays on a sphere (inf on a miss), and (H, W, 3) normals."""
  a = np.sum(rays * rays, -1)
  b = rays @ centre
  disc = b**2 - a * (centre @ centre - radius**2)
  t = np.where(disc >= 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
  return t, (t[..., None] * rays - centre) / radius


def synthetic_scene(image_size: int, rng: np.random.Generator,
                    fov_deg: float = corrupt.FOV_DEG):
  """A random sphere and a randomly rotated box, ray cast in closed form (calibration data).

  The box occludes part of the sphere or the other way round, so the scene has smooth curvature,
  planes, creases, silhouettes and occlusion boundaries, around depth 2.2 as in the datasets.

  Returns:
    depth: (H, W) float32 z-depth, 0 off the objects.
    normal: (H, W, 3) float32 true unit normals, 0 off the objects.
    mask: (H, W) float32 {0, 1}.
  """
  rays = corrupt.pixel_rays(image_size, image_size, fov_deg)
  t_sphere, n_sphere = _ray_sphere(
      rays, np.array([-0.2, 0.0, 2.2]) + rng.uniform(-0.1, 0.1, 3), rng.uniform(0.3, 0.4))
  q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  t_box, n_box = _ray_box(rays, np.array([0.25, 0.0, 2.2]) + rng.uniform(-0.1, 0.1, 3), q,
                          rng.uniform(0.15, 0.25, 3))
  t = np.minimum(t_sphere, t_box)
  mask = np.isfinite(t)
  normal = np.where((t_box < t_sphere)[..., None], n_box, n_sphere)
  return (np.where(mask, t, 0.0).astype(np.float32),
          np.where(mask[..., None], normal, 0.0).astype(np.float32), mask.astype(np.float32))


def median_normal_error(scenes, level: str | int | corrupt.LevelParams, seed: int,
                        fov_deg: float = corrupt.FOV_DEG) -> float:
  """Median angular error (degrees) of a level's normal targets against the true normals.

  Args:
    scenes: sequence of (depth, normal, mask) as from `synthetic_scene`.
    level: a name in corrupt.LEVELS, its index, or a corrupt.LevelParams.
    seed: scene k is corrupted with Generator([seed, k]).

  Returns:
    The median over the valid pixels of all scenes, pooled.
  """
  errors = []
  for k, (_, normal, mask) in enumerate(scenes):
    rng = np.random.default_rng([seed, k])
    n, valid = corrupt.corrupt_normals(normal, mask, level, rng, fov_deg)
    errors.append(angular_error_deg(n[valid], normal[valid]))
  return float(np.median(np.concatenate(errors)))


def median_depth_error(scenes, level: str | int | corrupt.LevelParams, seed: int,
                       fov_deg: float = corrupt.FOV_DEG) -> float:
  """Median angular error (degrees) of normals derived from a level's depth targets.

  The reference is normals_from_depth of the clean depth; pixels valid in both count. Same
  arguments and pooling as `median_normal_error`. With the same seed both modalities share the
  tilt and the holes, and the depth noise field does not depend on depth_noise (common random
  numbers), so the error is a smooth increasing function of depth_noise.
  """
  errors = []
  for k, (depth, _, mask) in enumerate(scenes):
    clean, clean_valid = normals_from_depth(depth, mask, fov_deg)
    rng = np.random.default_rng([seed, k])
    d, d_valid = corrupt.corrupt_depth(depth, mask, level, rng, fov_deg)
    derived, derived_valid = normals_from_depth(d, d_valid, fov_deg)
    both = clean_valid & derived_valid
    errors.append(angular_error_deg(derived[both], clean[both]))
  return float(np.median(np.concatenate(errors)))


def calibrate_depth_noise(levels=corrupt.LEVELS, image_size: int = corrupt.REFERENCE_SIZE,
                          num_scenes: int = 64, seed: int = 0) -> dict[str, float]:
  """Per level, the depth_noise at which depth and normal targets have equal median error.

  For each level, the target is the corrupted normals' median error (`median_normal_error`);
  Brent's method finds the log-depth noise std at which `median_depth_error` equals it, with all
  other corruptions (blur, tilt, holes) at the level's values. With the defaults this generated
  the depth_noise column of corrupt.LEVEL_PARAMS (rounded to 3 significant digits).

  Args:
    levels: level names to calibrate.
    image_size: H = W of the synthetic scenes.
    num_scenes: number of `synthetic_scene`s, scene k from Generator([seed, k]).
    seed: int, for the scenes and their corruption.

  Returns:
    level name -> depth_noise.
  """
  scenes = [synthetic_scene(image_size, np.random.default_rng([seed, k]))
            for k in range(num_scenes)]
  noise = {}
  for name in levels:
    params = corrupt.level_params(name)
    target = median_normal_error(scenes, params, seed)

    def gap(depth_noise, params=params, target=target):
      level = dataclasses.replace(params, depth_noise=depth_noise)
      return median_depth_error(scenes, level, seed) - target

    noise[name] = float(f"{optimize.brentq(gap, 0.0, 0.5, xtol=1e-7, rtol=1e-4):.3g}")
  return noise
