"""Supervision-quality levels: corrupted depth and normal training targets (docs/DESIGN.md
section 5).

Real 2.5D labels come from estimators and sensors, so the study's independent variable is the
quality of the depth / normal *training targets*. A level corrupts one instance's targets on the
host (numpy, deterministic given a `numpy.random.Generator`); input images and evaluation targets
are never corrupted.

Conventions (as in recon3d_jax.geometry.camera): OpenCV camera frame (+x right, +y down, +z
forward); depth is z-depth, 0 off the object; normals are unit camera-frame vectors, visible
surfaces have n_z < 0; square pinhole images with field of view `fov_deg`, f = (H/2)/tan(fov/2),
pixel (i, j) centred at (j + 0.5, i + 0.5), principal point at the image centre. A pixel's ray is
r = (u, v, 1) with normalised image coordinates u = (j + 0.5 - W/2)/f, v = (i + 0.5 - H/2)/f, so
the 3D point of depth z is z r.

Corruptions, in this order:
  1. blur: normalised Gaussian blur inside the foreground (background never leaks in); normals
     are re-normalised. It stands for an estimator's loss of detail at creases and silhouettes.
  2. noise: a spatially correlated Gaussian field (kernel std NOISE_CORRELATION_PX at 64 px).
     Normals: rotated by the exponential map of a tangent vector with per-axis std
     `normal_noise_deg` (angle ~ Rayleigh, median 1.177 sigma). Depth: log z += depth_noise * g.
  3. structured bias: a planar tilt of log-depth, log z += tan(bias_deg) (d . (u, v)) with a
     random unit direction d. Normals get the *exact* normals of the so-tilted surface (derived
     below), so the bias is matched between the modalities by construction; at a fronto-parallel
     surface it tilts the normal by bias_deg, elsewhere by a smoothly varying angle.
  4. holes: blobs (smoothed noise thresholded at its foreground quantile, so exactly
     `hole_fraction` of the foreground is lost); there targets are 0 and `valid` is False.
Blur and noise correlation are fractions of the image size (stated in pixels at 64 px), so a
level means the same thing in image space at every resolution.

Matched difficulty: each level's `depth_noise` is calibrated offline (data/calibration.py) so
that depth and normal targets of a level are equally hard.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

LEVELS = ("minimal", "low", "medium", "high", "extreme")
FOV_DEG = 45.0
# Image size at which pixel-valued parameters are stated; they scale with H / REFERENCE_SIZE.
REFERENCE_SIZE = 64
# Std (pixels at 64 px) of the Gaussian kernel that correlates the noise fields. Large enough that
# central differences mostly resolve the depth noise's slopes down to 32 px (1.5 px there).
NOISE_CORRELATION_PX = 3.0
# Std (pixels at 64 px) of the smoothing that turns white noise into hole blobs.
HOLE_CORRELATION_PX = 4.0
# Default mixture name: every level equally often.
UNIFORM = "uniform"


@dataclasses.dataclass(frozen=True)
class LevelParams:
  """One supervision-quality level. Pixel values are at REFERENCE_SIZE and scale with the image.

  Attributes:
    normal_noise_deg: per-axis std of the tangent-plane rotation of normals, degrees.
    blur_px: std of the masked Gaussian blur, pixels at 64 px.
    hole_fraction: fraction of foreground pixels lost to holes.
    bias_deg: structured tilt, degrees (tan of it is the log-depth slope per unit of u, v).
    depth_noise: std of the log-depth noise field (~ relative depth noise); calibrated.
  """
  normal_noise_deg: float
  blur_px: float
  hole_fraction: float
  bias_deg: float
  depth_noise: float

  def __post_init__(self):
    if min(dataclasses.astuple(self)) < 0 or self.hole_fraction >= 1:
      raise ValueError(f"LevelParams must be >= 0 with hole_fraction < 1, got {self}.")


# depth_noise is the output of calibration.calibrate_depth_noise() (64 px, 64 scenes, seed 0): the
# log-depth noise that gives depth-derived normals the median angular error of this level's normals.
LEVEL_PARAMS = {
    "minimal": LevelParams(normal_noise_deg=2.0, blur_px=0.5, hole_fraction=0.01, bias_deg=1.0,
                           depth_noise=0.00259),
    "low": LevelParams(normal_noise_deg=5.0, blur_px=0.75, hole_fraction=0.03, bias_deg=3.0,
                       depth_noise=0.00647),
    "medium": LevelParams(normal_noise_deg=10.0, blur_px=1.0, hole_fraction=0.08, bias_deg=6.0,
                          depth_noise=0.0141),
    "high": LevelParams(normal_noise_deg=20.0, blur_px=1.5, hole_fraction=0.15, bias_deg=10.0,
                        depth_noise=0.0298),
    "extreme": LevelParams(normal_noise_deg=35.0, blur_px=2.0, hole_fraction=0.3, bias_deg=15.0,
                           depth_noise=0.0598),
}


# ------------------------------------------------------------------------------------------------
# Levels by name.
# ------------------------------------------------------------------------------------------------


def level_index(level: str | int) -> int:
  """Index in LEVELS (0 = minimal) of a level name or index; anything else is a ValueError."""
  if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
    if 0 <= level < len(LEVELS):
      return int(level)
  elif level in LEVELS:
    return LEVELS.index(level)
  raise ValueError(f"Unknown supervision level {level!r}; expected one of {LEVELS} "
                   f"or an index in [0, {len(LEVELS)}).")


def level_params(level: str | int | LevelParams) -> LevelParams:
  """The LevelParams of a level name or index; a LevelParams passes through (custom levels)."""
  if isinstance(level, LevelParams):
    return level
  return LEVEL_PARAMS[LEVELS[level_index(level)]]


# ------------------------------------------------------------------------------------------------
# Building blocks (H, W from the inputs; pixel sizes already scaled to the image).
# ------------------------------------------------------------------------------------------------


def _scale_px(value_px: float, image_size: int) -> float:
  return value_px * image_size / REFERENCE_SIZE


def pixel_rays(height: int, width: int, fov_deg: float = FOV_DEG) -> np.ndarray:
  """(H, W, 3) float64 rays r = (u, v, 1) through the pixel centres; the point at depth z is z r."""
  f = (height / 2) / np.tan(np.deg2rad(fov_deg) / 2)
  u = (np.arange(width) + 0.5 - width / 2) / f
  v = (np.arange(height) + 0.5 - height / 2) / f
  uu, vv = np.meshgrid(u, v, indexing="xy")
  return np.stack([uu, vv, np.ones_like(uu)], axis=-1)


def _gaussian_field(shape, sigma_px: float, rng: np.random.Generator) -> np.ndarray:
  """Unit-variance stationary Gaussian random field of `shape` (H, W[, C]), correlated over H, W.

  White noise smoothed by a periodic Gaussian of std sigma_px, divided by the filtered noise's
  exact std (the kernel's L2 norm), so its amplitude does not depend on sigma_px.
  """
  sigma = (sigma_px, sigma_px) + (0,) * (len(shape) - 2)
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
  delta = np.zeros(2 * int(4 * sigma_px + 0.5) + 1)
  delta[len(delta) // 2] = 1.0
  # The separable 2D kernel's squared L2 norm is the 1D one's squared: the std is the 1D one.
  std = np.sum(ndimage.gaussian_filter1d(delta, sigma_px, mode="constant")**2)
  return field / std


def _masked_blur(x: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
  """Gaussian blur of (H, W[, C]) x using only pixels where the (H, W) bool mask is set."""
  if sigma_px <= 0:
    return x
  sigma = (sigma_px, sigma_px) + (0,) * (x.ndim - 2)
  m = mask.astype(np.float64).reshape(mask.shape + (1,) * (x.ndim - 2))
  num = ndimage.gaussian_filter(np.where(m > 0, x, 0.0), sigma, mode="constant")  # NaN-proof
  den = ndimage.gaussian_filter(np.broadcast_to(m, x.shape), sigma, mode="constant")
  return np.where(m > 0, num / np.maximum(den, 1e-12), 0.0)


def normalize(v: np.ndarray) -> np.ndarray:
  """(..., 3) vectors scaled to unit length; zero vectors stay zero."""
  norm = np.linalg.norm(v, axis=-1, keepdims=True)
  return v / np.where(norm > 0, norm, 1.0)


def _rotate_normals(normal: np.ndarray, tangent_field: np.ndarray) -> np.ndarray:
  """Exponential map: moves (H, W, 3) unit normals along the tangent part of (H, W, 3) vectors.

  The angle moved is the tangent part's length (radians).
  """
  t = tangent_field - np.sum(tangent_field * normal, -1, keepdims=True) * normal
  angle = np.linalg.norm(t, axis=-1, keepdims=True)
  return np.cos(angle) * normal + np.sin(angle) * normalize(t)


def _tilt(rays: np.ndarray, bias_deg: float, rng: np.random.Generator):
  """Planar log-depth tilt b = tan(bias) d . (u, v) with a random unit direction d.

  Returns:
    log_scale: (H, W) b, to add to log-depth.
    normal_shift: (H, W, 3) h = (b_u, b_v, -(u b_u + v b_v)), for `_tilt_normals`.
  """
  angle = rng.uniform(0, 2 * np.pi)
  grad = np.tan(np.deg2rad(bias_deg)) * np.array([np.cos(angle), np.sin(angle)])
  log_scale = rays[..., 0] * grad[0] + rays[..., 1] * grad[1]
  normal_shift = np.concatenate(
      [np.broadcast_to(grad, rays.shape[:2] + (2,)), -log_scale[..., None]], axis=-1)
  return log_scale, normal_shift


def _tilt_normals(normal: np.ndarray, rays: np.ndarray, normal_shift: np.ndarray) -> np.ndarray:
  """Exact normals of the surface z r -> z exp(b) r, for (H, W, 3) normals, rays and h of `_tilt`.

  The map P -> exp(b) P, with b a function of (u, v) = (P_x, P_y) / P_z, has Jacobian
  J = exp(b) (I + P g^T) with g = grad_P b = h / P_z, and g . P = 0. Normals map by J^-T, which by
  Sherman-Morrison is proportional to I - g P^T, so n' ~ n - h (r . n): depth drops out.
  """
  r_dot_n = np.sum(rays * normal, -1, keepdims=True)
  return normalize(normal - normal_shift * r_dot_n)


def _holes(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
  """(H, W) bool blobs covering `fraction` of the (H, W) bool foreground mask."""
  field = _gaussian_field(mask.shape, _scale_px(HOLE_CORRELATION_PX, mask.shape[0]), rng)
  if fraction <= 0 or not mask.any():
    return np.zeros_like(mask)
  return mask & (field > np.quantile(field[mask], 1 - fraction))


def check_map(name: str, x, mask) -> tuple[np.ndarray, np.ndarray]:
  """(x as float64, mask as bool), or a ValueError naming the map if their (H, W) differ."""
  x, mask = np.asarray(x), np.asarray(mask)
  if mask.ndim != 2 or x.shape[:2] != mask.shape:
    raise ValueError(f"{name} {x.shape} and mask {mask.shape} must share (H, W).")
  return x.astype(np.float64), mask > 0


# ------------------------------------------------------------------------------------------------
# Corruption.
# ------------------------------------------------------------------------------------------------


def _acquisition(shape: tuple[int, ...], mask: np.ndarray, p: LevelParams,
                 rng: np.random.Generator, fov_deg: float):
  """The random draws of one simulated 2.5D acquisition, always in this order, so that one rng
  state gives the depth and the normal map the same tilt and holes.

  Returns rays (H,W,3), log_scale (H,W) and normal_shift (H,W,3) of the tilt, holes (H,W) bool,
  and a unit-variance noise field of `shape` (the map's shape).
  """
  rays = pixel_rays(*mask.shape, fov_deg)
  log_scale, normal_shift = _tilt(rays, p.bias_deg, rng)
  holes = _holes(mask, p.hole_fraction, rng)
  noise = _gaussian_field(shape, _scale_px(NOISE_CORRELATION_PX, mask.shape[0]), rng)
  return rays, log_scale, normal_shift, holes, noise


def corrupt_normals(normal, mask, level: str | int | LevelParams, rng: np.random.Generator,
                    fov_deg: float = FOV_DEG):
  """Normal-map target at a supervision level (blur, correlated angular noise, tilt, holes).

  Args:
    normal: (H, W, 3) unit camera-frame normals, any values off the mask.
    mask: (H, W) foreground, {0, 1} or bool.
    level: a name in LEVELS, its index, or a LevelParams.
    rng: numpy Generator; the output is a deterministic function of its state.
    fov_deg: field of view, for the rays the tilt depends on.

  Returns:
    normal: (H, W, 3) float32, unit where valid, 0 elsewhere.
    valid: (H, W) bool, mask minus holes.
  """
  p = level_params(level)
  normal, mask = check_map("normal", normal, mask)
  if normal.ndim != 3 or normal.shape[-1] != 3:
    raise ValueError(f"normal must have shape (H, W, 3), got {normal.shape}.")
  if not np.all(np.isfinite(normal[mask])):
    raise ValueError("normal must be finite on the mask.")
  size = mask.shape[0]
  rays, _, normal_shift, holes, noise = _acquisition(normal.shape, mask, p, rng, fov_deg)
  out = normalize(_masked_blur(normal, mask, _scale_px(p.blur_px, size)))
  out = _rotate_normals(out, np.deg2rad(p.normal_noise_deg) * noise)
  out = _tilt_normals(out, rays, normal_shift)
  valid = mask & ~holes
  return np.where(valid[..., None], out, 0.0).astype(np.float32), valid


def corrupt_depth(depth, mask, level: str | int | LevelParams, rng: np.random.Generator,
                  fov_deg: float = FOV_DEG):
  """Depth-map target at a supervision level (blur, correlated log-depth noise, tilt, holes).

  Args:
    depth: (H, W) z-depth, > 0 on the mask.
    mask: (H, W) foreground, {0, 1} or bool.
    level: a name in LEVELS, its index, or a LevelParams.
    rng: numpy Generator; the output is a deterministic function of its state.
    fov_deg: field of view, for the rays the tilt depends on.

  Returns:
    depth: (H, W) float32, > 0 where valid, 0 elsewhere.
    valid: (H, W) bool, mask minus holes.
  """
  p = level_params(level)
  depth, mask = check_map("depth", depth, mask)
  if depth.ndim != 2:
    raise ValueError(f"depth must have shape (H, W), got {depth.shape}.")
  if not np.all(depth[mask] > 0):
    raise ValueError("depth must be finite and > 0 on the mask.")
  size = mask.shape[0]
  _, log_scale, _, holes, noise = _acquisition(depth.shape, mask, p, rng, fov_deg)
  out = _masked_blur(depth, mask, _scale_px(p.blur_px, size))
  # Multiplicative in log-depth: relative noise, and depth stays positive at any level.
  out = out * np.exp(p.depth_noise * noise + log_scale)
  valid = mask & ~holes
  return np.where(valid, out, 0.0).astype(np.float32), valid


# ------------------------------------------------------------------------------------------------
# Levels per instance.
# ------------------------------------------------------------------------------------------------


def level_mixture(spec: str | dict[str, float], num_instances: int,
                  rng: np.random.Generator) -> np.ndarray:
  """Level index of each instance of a dataset.

  Counts follow the spec's proportions exactly (largest-remainder rounding), in a random order,
  so a 1K set at 'uniform' has exactly 200 instances per level and level is not confounded with
  sampling luck.

  Args:
    spec: a level name (every instance at that level), 'uniform' (equal shares), or a dict
      level name -> probability (non-negative, summing to 1; missing levels get 0).
    num_instances: N >= 0.
    rng: numpy Generator for the order.

  Returns:
    (N,) int64 indices into LEVELS.
  """
  if num_instances < 0:
    raise ValueError(f"num_instances must be >= 0, got {num_instances}.")
  quota = _mixture_probabilities(spec) * num_instances
  counts = np.floor(quota).astype(np.int64)
  # The remaining instances go to the largest fractional parts (stable: ties to the easier level).
  order = np.argsort(-(quota - counts), kind="stable")
  counts[order[:num_instances - counts.sum()]] += 1
  return rng.permutation(np.repeat(np.arange(len(LEVELS)), counts))


def _mixture_probabilities(spec) -> np.ndarray:
  """(len(LEVELS),) probabilities of a level_mixture spec."""
  if isinstance(spec, dict):
    probs = np.zeros(len(LEVELS))
    for name, p in spec.items():
      probs[level_index(name)] = p
    if np.any(probs < 0) or not np.isclose(probs.sum(), 1.0, atol=1e-6):
      raise ValueError(f"Level probabilities must be >= 0 and sum to 1, got {spec}.")
    return probs / probs.sum()  # exact sum, so the rounding below hands out N in all
  if spec == UNIFORM:
    return np.full(len(LEVELS), 1 / len(LEVELS))
  if spec in LEVELS:
    return np.eye(len(LEVELS))[LEVELS.index(spec)]
  raise ValueError(f"Unknown level mixture {spec!r}; expected a level in {LEVELS}, {UNIFORM!r} "
                   f"or a dict level name -> probability.")


def curriculum_order(levels, rng: np.random.Generator) -> np.ndarray:
  """Instance order for a curriculum: (N,) level indices -> (N,) permutation, easy to hard.

  Instances of the same level come in random order.
  """
  levels = np.asarray(levels)
  return np.lexsort((rng.permutation(len(levels)), levels))


def filter_max_level(levels, max_level: str | int) -> np.ndarray:
  """(N,) bool: which instances of (N,) level indices are at or below `max_level` (kept)."""
  return np.asarray(levels) <= level_index(max_level)
