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
from scipy import ndimage, optimize

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


# depth_noise is the output of calibrate_depth_noise() (64 px, 64 scenes, seed 0): the log-depth
# noise that gives depth-derived normals the median angular error of this level's normals.
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


def _normalize(v: np.ndarray) -> np.ndarray:
  """(..., 3) vectors scaled to unit length; zero vectors stay zero."""
  norm = np.linalg.norm(v, axis=-1, keepdims=True)
  return v / np.where(norm > 0, norm, 1.0)


def _rotate_normals(normal: np.ndarray, tangent_field: np.ndarray) -> np.ndarray:
  """Exponential map: moves (H, W, 3) unit normals along the tangent part of (H, W, 3) vectors.

  The angle moved is the tangent part's length (radians).
  """
  t = tangent_field - np.sum(tangent_field * normal, -1, keepdims=True) * normal
  angle = np.linalg.norm(t, axis=-1, keepdims=True)
  return np.cos(angle) * normal + np.sin(angle) * _normalize(t)


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
  return _normalize(normal - normal_shift * r_dot_n)


def _holes(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
  """(H, W) bool blobs covering `fraction` of the (H, W) bool foreground mask."""
  field = _gaussian_field(mask.shape, _scale_px(HOLE_CORRELATION_PX, mask.shape[0]), rng)
  if fraction <= 0 or not mask.any():
    return np.zeros_like(mask)
  return mask & (field > np.quantile(field[mask], 1 - fraction))


def _check_map(name: str, x, mask) -> tuple[np.ndarray, np.ndarray]:
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
  normal, mask = _check_map("normal", normal, mask)
  if normal.ndim != 3 or normal.shape[-1] != 3:
    raise ValueError(f"normal must have shape (H, W, 3), got {normal.shape}.")
  if not np.all(np.isfinite(normal[mask])):
    raise ValueError("normal must be finite on the mask.")
  size = mask.shape[0]
  rays, _, normal_shift, holes, noise = _acquisition(normal.shape, mask, p, rng, fov_deg)
  out = _normalize(_masked_blur(normal, mask, _scale_px(p.blur_px, size)))
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
  depth, mask = _check_map("depth", depth, mask)
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


def normals_from_depth(depth, valid, fov_deg: float = FOV_DEG):
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
  depth, valid = _check_map("depth", depth, valid)
  if depth.ndim != 2:
    raise ValueError(f"depth must have shape (H, W), got {depth.shape}.")
  points = depth[..., None] * pixel_rays(*depth.shape, fov_deg)
  d_row, ok_row = _derivative(points, valid, axis=0)
  d_col, ok_col = _derivative(points, valid, axis=1)
  normal = np.cross(d_row, d_col)  # y-down x x-right = -z for a fronto-parallel plane
  normal = np.where(normal[..., 2:] > 0, -normal, normal)
  out_valid = ok_row & ok_col & (np.linalg.norm(normal, axis=-1) > 0)
  return np.where(out_valid[..., None], _normalize(normal), 0.0).astype(np.float32), out_valid


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


def synthetic_scene(image_size: int, rng: np.random.Generator, fov_deg: float = FOV_DEG):
  """A random sphere and a randomly rotated box, ray cast in closed form (calibration data).

  The box occludes part of the sphere or the other way round, so the scene has smooth curvature,
  planes, creases, silhouettes and occlusion boundaries, around depth 2.2 as in the datasets.

  Returns:
    depth: (H, W) float32 z-depth, 0 off the objects.
    normal: (H, W, 3) float32 true unit normals, 0 off the objects.
    mask: (H, W) float32 {0, 1}.
  """
  rays = pixel_rays(image_size, image_size, fov_deg)
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


def median_normal_error(scenes, level: str | int | LevelParams, seed: int,
                        fov_deg: float = FOV_DEG) -> float:
  """Median angular error (degrees) of a level's normal targets against the true normals.

  Args:
    scenes: sequence of (depth, normal, mask) as from `synthetic_scene`.
    level: a name in LEVELS, its index, or a LevelParams.
    seed: scene k is corrupted with Generator([seed, k]).

  Returns:
    The median over the valid pixels of all scenes, pooled.
  """
  errors = []
  for k, (_, normal, mask) in enumerate(scenes):
    n, valid = corrupt_normals(normal, mask, level, np.random.default_rng([seed, k]), fov_deg)
    errors.append(angular_error_deg(n[valid], normal[valid]))
  return float(np.median(np.concatenate(errors)))


def median_depth_error(scenes, level: str | int | LevelParams, seed: int,
                       fov_deg: float = FOV_DEG) -> float:
  """Median angular error (degrees) of normals derived from a level's depth targets.

  The reference is normals_from_depth of the clean depth; pixels valid in both count. Same
  arguments and pooling as `median_normal_error`. With the same seed both modalities share the
  tilt and the holes, and the depth noise field does not depend on depth_noise (common random
  numbers), so the error is a smooth increasing function of depth_noise.
  """
  errors = []
  for k, (depth, _, mask) in enumerate(scenes):
    clean, clean_valid = normals_from_depth(depth, mask, fov_deg)
    d, d_valid = corrupt_depth(depth, mask, level, np.random.default_rng([seed, k]), fov_deg)
    derived, derived_valid = normals_from_depth(d, d_valid, fov_deg)
    both = clean_valid & derived_valid
    errors.append(angular_error_deg(derived[both], clean[both]))
  return float(np.median(np.concatenate(errors)))


def calibrate_depth_noise(levels=LEVELS, image_size: int = REFERENCE_SIZE, num_scenes: int = 64,
                          seed: int = 0) -> dict[str, float]:
  """Per level, the depth_noise at which depth and normal targets have equal median error.

  For each level, the target is the corrupted normals' median error (`median_normal_error`);
  Brent's method finds the log-depth noise std at which `median_depth_error` equals it, with all
  other corruptions (blur, tilt, holes) at the level's values. With the defaults this generated
  the depth_noise column of LEVEL_PARAMS (rounded to 3 significant digits).

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
    params = level_params(name)
    target = median_normal_error(scenes, params, seed)

    def gap(depth_noise, params=params, target=target):
      level = dataclasses.replace(params, depth_noise=depth_noise)
      return median_depth_error(scenes, level, seed) - target

    noise[name] = float(f"{optimize.brentq(gap, 0.0, 0.5, xtol=1e-7, rtol=1e-4):.3g}")
  return noise


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
