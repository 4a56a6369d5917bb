"""3D and 2.5D reconstruction metrics, per instance.

Plain numpy in, python floats out: these run on the host after the model. All 3D quantities are in
unit-cube units (object normalised so its bounding box's longest side is 1, centred at the origin;
occupancy query points uniform in the padded box of side `BOX_SIZE`).

Conventions worth knowing when comparing with published numbers:
- Chamfer distances are reported raw, in unit-cube units. Occupancy Networks reports Chamfer-L1
  multiplied by 10; we do not.
- Precision is measured on predicted points and recall on ground-truth points (the usual meaning).
  The what3d reference code swaps these two labels.
- Distance thresholds are strict: a point counts at τ when its distance is < τ (as in what3d).
- An empty prediction gets defined worst-case values, never NaN (see `pointcloud_metrics`): a
  Chamfer distance no non-empty prediction can reach, so predicting nothing never pays.
- IoU is 1 when prediction and ground truth are both empty (`occupancy_metrics`).
- Normals must be unit vectors (within UNIT_NORMAL_TOLERANCE): normal consistency rejects others
  with a ValueError naming the array, the first bad row and its norm, rather than return a
  silently scaled number.
"""
import numpy as np
from scipy import spatial
from skimage import measure

DEFAULT_THRESHOLDS = (0.01, 0.02, 0.05)
BOX_SIZE = 1.1
# The Chamfer-L1 of an empty prediction: the padded box's diagonal, the largest distance between
# two of its points. Ground-truth samples lie in the unit cube and predicted ones in the box (up to
# a marching-cubes cell beyond it), so every non-empty prediction scores below it (at most
# sqrt(3) (0.5 + 0.55 + cell)); a constant keeps means and paired tests finite.
MAX_DISTANCE = float(np.sqrt(3.0) * BOX_SIZE)
# Largest | |n| - 1 | accepted for a normal: float32 storage rounds unit normals by ~1e-7.
UNIT_NORMAL_TOLERANCE = 1e-3
NORMAL_ANGLE_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
# Floor for predicted depths in δ<1.25, so a zero or negative prediction gives a finite ratio.
_MIN_DEPTH = 1e-6
_EPS = 1e-12


def _empty_cloud():
  return np.zeros((0, 3)), np.zeros((0, 3))


def _check_points(name, points):
  if points.ndim != 2 or points.shape[1] != 3:
    raise ValueError(f"{name} must have shape (N, 3), got {points.shape}.")


def _check_unit_normals(name, normals):
  """Rejects (N, 3) normals that are not unit vectors, naming the first offender."""
  norms = np.linalg.norm(normals, axis=-1)
  bad = np.flatnonzero(~(np.abs(norms - 1) <= UNIT_NORMAL_TOLERANCE))  # NaN is bad too.
  if len(bad):
    raise ValueError(
        f"{name} must be unit vectors (norm within {UNIT_NORMAL_TOLERANCE:g} of 1) for normal "
        f"consistency: {name}[{bad[0]}] has norm {norms[bad[0]]:.6g} ({len(bad)} of "
        f"{len(norms)} rows are off); normalise them first (a zero normal has no direction).")


def _check_same_shape(names, *arrays):
  if any(a.shape != arrays[0].shape for a in arrays):
    shapes = ", ".join(f"{n}={a.shape}" for n, a in zip(names, arrays))
    raise ValueError(f"Expected equal shapes, got {shapes}.")


# ------------------------------------------------------------------------------------------------
# Meshes and surface samples.
# ------------------------------------------------------------------------------------------------


def mesh_from_occupancy(grid, threshold, box_size=BOX_SIZE):
  """Extracts the `threshold` isosurface of an occupancy grid with marching cubes.

  Args:
    grid: (R, R, R) occupancy probabilities; grid[i, j, k] is sampled at
      (x_i, y_j, z_k) with x = y = z = np.linspace(-box_size / 2, box_size / 2, R).
    threshold: isovalue in (0, 1); points with probability >= threshold are inside.
    box_size: side of the cube the grid spans.

  Returns:
    vertices: (V, 3) float64 world coordinates.
    faces: (F, 3) int64 vertex indices, wound so face normals point outward (towards lower
      occupancy). A grid entirely above or entirely below the threshold has no isosurface inside
      the box and gives (0, 3) arrays for both.
  """
  grid = np.asarray(grid, dtype=np.float64)
  if grid.ndim != 3 or len(set(grid.shape)) != 1 or grid.shape[0] < 2:
    raise ValueError(f"grid must have shape (R, R, R) with R >= 2, got {grid.shape}.")
  if not 0.0 < threshold < 1.0:
    raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
  if grid.min() >= threshold or grid.max() < threshold:
    return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
  # Pad with one cell of zeros (outside) so shapes touching the box boundary get closed surfaces.
  padded = np.pad(grid, 1, constant_values=0.0)
  spacing = box_size / (grid.shape[0] - 1)
  # Occupancy increases towards the inside, hence "ascent" for outward-facing triangles.
  verts, faces, _, _ = measure.marching_cubes(
      padded, level=threshold, spacing=(spacing,) * 3, gradient_direction="ascent",
      allow_degenerate=False)
  # Padded index 1 is grid index 0, which sits at -box_size / 2.
  vertices = verts.astype(np.float64) - spacing - box_size / 2
  return vertices, faces.astype(np.int64)


def sample_surface(vertices, faces, num_points, rng):
  """Samples points uniformly by area on a triangle mesh.

  Args:
    vertices: (V, 3) float.
    faces: (F, 3) int vertex indices.
    num_points: N, number of samples.
    rng: numpy Generator.

  Returns:
    points: (N, 3) samples.
    normals: (N, 3) unit normals of the faces the samples lie on (orientation follows the winding).
    A mesh with no faces or zero total area gives (0, 3) arrays for both.
  """
  vertices = np.asarray(vertices, dtype=np.float64)
  faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
  if len(faces) == 0:
    return _empty_cloud()
  tri = vertices[faces]  # (F, 3 corners, 3)
  cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  areas = np.linalg.norm(cross, axis=-1)  # twice the areas; only ratios matter
  if areas.sum() <= 0:
    return _empty_cloud()
  face_idx = rng.choice(len(faces), size=num_points, p=areas / areas.sum())
  # sqrt on one coordinate makes the barycentric samples uniform over each triangle.
  s = np.sqrt(rng.random((num_points, 1)))
  v = rng.random((num_points, 1))
  a, b, c = tri[face_idx, 0], tri[face_idx, 1], tri[face_idx, 2]
  points = (1 - s) * a + s * (1 - v) * b + s * v * c
  # Sampled faces have positive area, so the division is safe.
  normals = cross[face_idx] / areas[face_idx, None]
  return points, normals


# ------------------------------------------------------------------------------------------------
# Point clouds.
# ------------------------------------------------------------------------------------------------


def _fscore(precision, recall):
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _empty_prediction_metrics(thresholds):
  """Worst-case values for a prediction with no points: all distances at the box diagonal."""
  metrics = {
      "chamfer_l1": MAX_DISTANCE,
      "chamfer_l2": MAX_DISTANCE**2,
      "normal_consistency": 0.0,
  }
  for t in thresholds:
    metrics.update({f"precision@{t:g}": 0.0, f"recall@{t:g}": 0.0, f"fscore@{t:g}": 0.0})
  return metrics


def pointcloud_metrics(pred_points, pred_normals, gt_points, gt_normals,
                       thresholds=DEFAULT_THRESHOLDS):
  """Chamfer distances, precision/recall/F-score and normal consistency of two point clouds.

  Args:
    pred_points: (N, 3) predicted surface samples; N may be 0.
    pred_normals: (N, 3) their unit normals (norm within UNIT_NORMAL_TOLERANCE of 1).
    gt_points: (K, 3) ground-truth surface samples, K > 0.
    gt_normals: (K, 3) their unit normals (likewise).
    thresholds: distances τ for precision, recall and F-score.

  Returns:
    dict of floats:
      chamfer_l1: ½(mean_p min_g ||p - g|| + mean_g min_p ||g - p||), raw unit-cube units (not ×10).
      chamfer_l2: the same with squared distances.
      normal_consistency: ½(mean |n_pred · n_gt(NN)| + mean |n_gt · n_pred(NN)|); sign-invariant.
      precision@τ: fraction of predicted points with distance < τ to the ground truth.
      recall@τ: fraction of ground-truth points with distance < τ to the prediction.
      fscore@τ: 2PR / (P + R), and 0 when P + R = 0.
    Keys use the threshold as written, e.g. "fscore@0.01". An empty prediction gets
    chamfer_l1 = sqrt(3) * BOX_SIZE (the padded box diagonal, above what any non-empty
    prediction can score: see MAX_DISTANCE), chamfer_l2 = its square, and 0 for normal
    consistency, precision, recall and F-score.

  Raises:
    ValueError: on an empty ground truth, mismatched shapes, or normals that are not unit.
  """
  pred_points, pred_normals, gt_points, gt_normals = (
      np.asarray(a, dtype=np.float64) for a in (pred_points, pred_normals, gt_points, gt_normals))
  _check_points("pred_points", pred_points)
  _check_points("gt_points", gt_points)
  _check_same_shape(("pred_points", "pred_normals"), pred_points, pred_normals)
  _check_same_shape(("gt_points", "gt_normals"), gt_points, gt_normals)
  if len(gt_points) == 0:
    raise ValueError("gt_points is empty: metrics need at least one ground-truth surface point.")
  _check_unit_normals("gt_normals", gt_normals)
  _check_unit_normals("pred_normals", pred_normals)
  if len(pred_points) == 0:
    return _empty_prediction_metrics(thresholds)

  # Distances from each predicted point to the GT (precision side) and back (recall side).
  dist_pred, nn_in_gt = spatial.cKDTree(gt_points).query(pred_points)
  dist_gt, nn_in_pred = spatial.cKDTree(pred_points).query(gt_points)

  normal_pred = np.abs(np.sum(pred_normals * gt_normals[nn_in_gt], axis=-1))
  normal_gt = np.abs(np.sum(gt_normals * pred_normals[nn_in_pred], axis=-1))
  metrics = {
      "chamfer_l1": 0.5 * float(dist_pred.mean() + dist_gt.mean()),
      "chamfer_l2": 0.5 * float(np.mean(dist_pred**2) + np.mean(dist_gt**2)),
      "normal_consistency": 0.5 * float(normal_pred.mean() + normal_gt.mean()),
  }
  for t in thresholds:
    precision = float(np.mean(dist_pred < t))
    recall = float(np.mean(dist_gt < t))
    metrics[f"precision@{t:g}"] = precision
    metrics[f"recall@{t:g}"] = recall
    metrics[f"fscore@{t:g}"] = _fscore(precision, recall)
  return metrics


# ------------------------------------------------------------------------------------------------
# Occupancy.
# ------------------------------------------------------------------------------------------------


def _check_occupancy(probs, labels):
  probs = np.asarray(probs, dtype=np.float64)
  labels = np.asarray(labels, dtype=bool)
  if probs.ndim != 1 or probs.shape != labels.shape or len(probs) == 0:
    raise ValueError(
        f"probs and labels must have equal shapes (M,) with M > 0, got {probs.shape} and "
        f"{labels.shape}.")
  if probs.min() < 0 or probs.max() > 1:
    raise ValueError(
        f"probs must lie in [0, 1], got range [{probs.min()}, {probs.max()}].")
  return probs, labels


def occupancy_metrics(probs, labels, threshold=0.5):
  """IoU and accuracy of thresholded occupancy on the query points.

  Args:
    probs: (M,) predicted occupancy probabilities.
    labels: (M,) bool ground-truth occupancy.
    threshold: a point is predicted occupied when probs >= threshold.

  Returns:
    dict(iou, accuracy), floats in [0, 1]. IoU = |pred ∩ gt| / |pred ∪ gt|; an empty prediction
    with non-empty GT gives 0. When both are empty the prediction agrees with the GT everywhere,
    so IoU is 1.0, like accuracy (the Jaccard convention of scipy.spatial.distance.jaccard), not
    NaN, which would drop the instance from means, nor 0, which would punish a right answer.
  """
  probs, labels = _check_occupancy(probs, labels)
  pred = probs >= threshold
  union = np.sum(pred | labels)
  iou = float(np.sum(pred & labels) / union) if union > 0 else 1.0
  return {"iou": iou, "accuracy": float(np.mean(pred == labels))}


def expected_calibration_error(probs, labels, num_bins=15):
  """Expected calibration error of binary occupancy probabilities.

  Binary (positive-class) definition: the predicted probability p of "occupied" is binned into
  `num_bins` equal-width bins [k/B, (k+1)/B) over [0, 1] (the last bin includes 1), and

    ECE = Σ_b (n_b / M) |mean(labels in b) - mean(p in b)|.

  This differs from the top-label ECE of classifiers, which bins max(p, 1 - p) against accuracy.

  Args:
    probs: (M,) predicted occupancy probabilities.
    labels: (M,) bool ground-truth occupancy.
    num_bins: B.

  Returns:
    ECE as a float in [0, 1].
  """
  probs, labels = _check_occupancy(probs, labels)
  bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
  # n_b |mean(y_b) - mean(p_b)| = |sum(y_b) - sum(p_b)|, which also avoids dividing by empty bins.
  sum_labels = np.bincount(bins, weights=labels.astype(np.float64), minlength=num_bins)
  sum_probs = np.bincount(bins, weights=probs, minlength=num_bins)
  return float(np.sum(np.abs(sum_labels - sum_probs)) / len(probs))


def select_threshold(probs_list, labels_list, candidates):
  """Chooses the occupancy threshold with the best mean IoU.

  The evaluation calls this on the validation split only, and uses the result both for IoU and
  as the marching-cubes isovalue on the test split.

  Args:
    probs_list: sequence of (M_i,) occupancy probabilities, one per validation instance.
    labels_list: matching sequence of (M_i,) bool labels.
    candidates: thresholds to try.

  Returns:
    The candidate maximising mean IoU over instances; ties go to the candidate closest to 0.5,
    then to the smaller one.
  """
  if len(probs_list) == 0 or len(probs_list) != len(labels_list):
    raise ValueError(
        f"Need equally many (> 0) probs and labels, got {len(probs_list)} and {len(labels_list)}.")
  if len(candidates) == 0:
    raise ValueError("candidates is empty: need at least one threshold to choose from.")

  def mean_iou(t):
    return np.mean([occupancy_metrics(p, l, t)["iou"] for p, l in zip(probs_list, labels_list)])

  scored = [(-mean_iou(t), abs(t - 0.5), t) for t in candidates]
  return float(min(scored)[2])


# ------------------------------------------------------------------------------------------------
# 2.5D maps.
# ------------------------------------------------------------------------------------------------


def _check_mask(mask, shape):
  mask = np.asarray(mask, dtype=bool)
  if mask.shape != shape:
    raise ValueError(f"mask must have shape {shape}, got {mask.shape}.")
  if not mask.any():
    raise ValueError("mask is empty: 2.5D metrics need at least one foreground pixel.")
  return mask


def depth_metrics(pred, gt, mask):
  """Depth errors on foreground pixels.

  Args:
    pred: (H, W) predicted depth.
    gt: (H, W) ground-truth depth, > 0 wherever mask is set.
    mask: (H, W) bool foreground.

  Returns:
    dict of floats:
      depth_abs_rel: mean |p - g| / g.
      depth_rmse: sqrt(mean (p - g)^2), in depth units.
      depth_delta1: fraction of pixels with max(p / g, g / p) < 1.25, with p clipped to >= 1e-6
        so non-positive predictions count as wrong rather than giving inf or NaN.
  """
  pred = np.asarray(pred, dtype=np.float64)
  gt = np.asarray(gt, dtype=np.float64)
  _check_same_shape(("pred", "gt"), pred, gt)
  mask = _check_mask(mask, gt.shape)
  p, g = pred[mask], gt[mask]
  if g.min() <= 0:
    raise ValueError(f"gt depth must be > 0 on the mask, got minimum {g.min()}.")
  p_pos = np.maximum(p, _MIN_DEPTH)
  ratio = np.maximum(p_pos / g, g / p_pos)
  return {
      "depth_abs_rel": float(np.mean(np.abs(p - g) / g)),
      "depth_rmse": float(np.sqrt(np.mean((p - g)**2))),
      "depth_delta1": float(np.mean(ratio < 1.25)),
  }


def normal_metrics(pred, gt, mask):
  """Angular errors of surface normals on foreground pixels.

  Args:
    pred: (H, W, 3) predicted normals, any length (normalised here; a zero vector counts as 90°).
    gt: (H, W, 3) ground-truth normals (also normalised here).
    mask: (H, W) bool foreground.

  Returns:
    dict of floats: normal_mean_deg, normal_median_deg (angular error in degrees) and
    normal_within_{11.25,22.5,30}: fraction of pixels with error < that many degrees.
  """
  pred = np.asarray(pred, dtype=np.float64)
  gt = np.asarray(gt, dtype=np.float64)
  _check_same_shape(("pred", "gt"), pred, gt)
  if gt.ndim != 3 or gt.shape[-1] != 3:
    raise ValueError(f"normals must have shape (H, W, 3), got {gt.shape}.")
  mask = _check_mask(mask, gt.shape[:2])
  p, g = pred[mask], gt[mask]
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), _EPS)
  g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), _EPS)
  # Rounding can push the dot product of unit vectors slightly outside [-1, 1].
  cos = np.clip(np.sum(p * g, axis=-1), -1.0, 1.0)
  err = np.degrees(np.arccos(cos))
  metrics = {"normal_mean_deg": float(err.mean()), "normal_median_deg": float(np.median(err))}
  for t in NORMAL_ANGLE_THRESHOLDS_DEG:
    metrics[f"normal_within_{t:g}"] = float(np.mean(err < t))
  return metrics
