"""Tests for recon3d_jax.metrics against brute-force numpy, trimesh and hand-computed values."""
import itertools
import warnings

import numpy as np
import pytest
import trimesh
from scipy import spatial

from recon3d_jax import metrics

BOX = metrics.BOX_SIZE


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_cloud(rng, n):
  return rng.uniform(-0.5, 0.5, (n, 3)), _unit(rng.normal(size=(n, 3)))


def _lattice(spacing=0.1, n=5):
  """(n^3, 3) points on a cubic lattice: every point's nearest other point is `spacing` away."""
  axis = np.arange(n) * spacing
  return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def _sphere_grid(resolution, radius, centre=(0.0, 0.0, 0.0), soft_width=None):
  """Occupancy of a sphere on the metrics grid convention: index [x, y, z], linspace over the box."""
  x = np.linspace(-BOX / 2, BOX / 2, resolution)
  xyz = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
  signed = radius - np.linalg.norm(xyz - np.asarray(centre), axis=-1)  # > 0 inside
  if soft_width is None:
    return (signed > 0).astype(np.float64)
  return 1 / (1 + np.exp(-signed / soft_width))


# ------------------------------------------------------------------------------------------------
# Point clouds.
# ------------------------------------------------------------------------------------------------


def test_pointcloud_metrics_match_brute_force():
  rng = np.random.default_rng(0)
  gt, gt_n = _random_cloud(rng, 400)
  # A noisy partial copy of the GT, so the thresholds see fractions strictly between 0 and 1.
  pred = gt[:300] + rng.normal(scale=0.02, size=(300, 3))
  pred_n = _unit(rng.normal(size=(300, 3)))
  dist = np.linalg.norm(pred[:, None] - gt[None], axis=-1)  # (300, 400)
  d_pred, d_gt = dist.min(1), dist.min(0)
  nc = 0.5 * (np.abs(np.sum(pred_n * gt_n[dist.argmin(1)], -1)).mean()
              + np.abs(np.sum(gt_n * pred_n[dist.argmin(0)], -1)).mean())
  expected = {
      "chamfer_l1": 0.5 * (d_pred.mean() + d_gt.mean()),
      "chamfer_l2": 0.5 * ((d_pred**2).mean() + (d_gt**2).mean()),
      "normal_consistency": nc,
  }
  for t, key in zip(metrics.DEFAULT_THRESHOLDS, ("0.01", "0.02", "0.05")):
    p, r = (d_pred < t).mean(), (d_gt < t).mean()
    expected.update({f"precision@{key}": p, f"recall@{key}": r,
                     f"fscore@{key}": 2 * p * r / (p + r)})
  got = metrics.pointcloud_metrics(pred, pred_n, gt, gt_n)
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert isinstance(got[key], float)
    np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
  assert 0 < got["precision@0.02"] < 1 and 0 < got["recall@0.02"] < 1


def test_shifted_copy_has_known_distances():
  gt = _lattice()
  pred = gt + np.array([0.015, 0.0, 0.0])
  normals = np.tile([0.0, 0.0, 1.0], (len(gt), 1))
  got = metrics.pointcloud_metrics(pred, normals, gt, normals)
  np.testing.assert_allclose(got["chamfer_l1"], 0.015, rtol=1e-9)
  np.testing.assert_allclose(got["chamfer_l2"], 0.015**2, rtol=1e-9)
  assert got["precision@0.01"] == got["recall@0.01"] == got["fscore@0.01"] == 0.0
  for t in ("0.02", "0.05"):
    assert got[f"precision@{t}"] == got[f"recall@{t}"] == got[f"fscore@{t}"] == 1.0


def test_precision_and_recall_are_not_swapped():
  # The prediction covers half of the GT: everything predicted is right (precision 1), but half
  # of the GT is missed (recall 0.5). what3d's reference code would report these the other way.
  gt = np.stack([np.arange(10) * 0.1, np.zeros(10), np.zeros(10)], -1)
  pred = gt[:5]
  normals = np.tile([1.0, 0.0, 0.0], (10, 1))
  got = metrics.pointcloud_metrics(pred, normals[:5], gt, normals)
  assert got["precision@0.05"] == 1.0
  assert got["recall@0.05"] == 0.5
  np.testing.assert_allclose(got["fscore@0.05"], 2 / 3)
  # GT points at x = 0.5 ... 0.9 are 0.1 ... 0.5 from the prediction's last point at x = 0.4.
  np.testing.assert_allclose(got["chamfer_l1"], 0.5 * (0.1 + 0.2 + 0.3 + 0.4 + 0.5) / 10)


def test_normal_consistency():
  rng = np.random.default_rng(1)
  points, normals = _random_cloud(rng, 200)
  same = metrics.pointcloud_metrics(points, normals, points, normals)
  flipped = metrics.pointcloud_metrics(points, -normals, points, normals)
  assert same["normal_consistency"] == pytest.approx(1.0)
  assert flipped["normal_consistency"] == pytest.approx(1.0)
  # Normals 60 degrees apart at every point: |cos 60| = 0.5 in both directions.
  gt_n = np.tile([1.0, 0.0, 0.0], (200, 1))
  pred_n = np.tile([0.5, np.sqrt(3) / 2, 0.0], (200, 1))
  tilted = metrics.pointcloud_metrics(points, pred_n, points, gt_n)
  assert tilted["normal_consistency"] == pytest.approx(0.5)


def test_empty_prediction_has_defined_values_without_warnings():
  rng = np.random.default_rng(2)
  gt, gt_n = _random_cloud(rng, 50)
  empty = np.zeros((0, 3))
  with warnings.catch_warnings(), np.errstate(all="raise"):
    warnings.simplefilter("error")
    got = metrics.pointcloud_metrics(empty, empty, gt, gt_n)
  assert all(np.isfinite(v) for v in got.values())
  assert got["chamfer_l1"] == pytest.approx(np.sqrt(3) * BOX)
  assert got["chamfer_l2"] == pytest.approx(3 * BOX**2)
  assert got["normal_consistency"] == 0.0
  for t in ("0.01", "0.02", "0.05"):
    assert got[f"precision@{t}"] == got[f"recall@{t}"] == got[f"fscore@{t}"] == 0.0


def test_empty_prediction_scores_worse_than_any_prediction():
  """The empty prediction's Chamfer distances are the padded box's largest point distance (brute
  force over its corners), above the worst non-empty prediction: every predicted point at a corner
  of the box plus a marching-cubes cell, the ground truth at the opposite corner of the unit cube."""
  corners = np.array(list(itertools.product((-BOX / 2, BOX / 2), repeat=3)))
  diagonal = np.max(np.linalg.norm(corners[:, None] - corners[None], axis=-1))
  gt, gt_n = _random_cloud(np.random.default_rng(7), 50)
  empty = metrics.pointcloud_metrics(np.zeros((0, 3)), np.zeros((0, 3)), gt, gt_n)
  assert empty["chamfer_l1"] == pytest.approx(diagonal)
  assert empty["chamfer_l2"] == pytest.approx(diagonal**2)
  cell = BOX / 31  # The coarsest grid meshed: 32^3 points over the box.
  far = np.full((4, 3), BOX / 2 + cell)
  unit = np.tile([0.0, 0.0, 1.0], (4, 1))
  worst = metrics.pointcloud_metrics(far, unit, np.full((4, 3), -0.5), unit)
  assert worst["chamfer_l1"] == pytest.approx(np.sqrt(3) * (BOX / 2 + cell + 0.5))
  assert worst["chamfer_l1"] < empty["chamfer_l1"] and worst["chamfer_l2"] < empty["chamfer_l2"]


@pytest.mark.parametrize("which", ["pred_normals", "gt_normals"])
@pytest.mark.parametrize("scale", [0.5, 2.0, 0.0, np.nan])
def test_non_unit_normals_are_rejected_by_name(which, scale):
  points, normals = _random_cloud(np.random.default_rng(8), 20)
  bad = normals.copy()
  bad[3] *= scale
  args = dict(pred_normals=normals, gt_normals=normals)
  args[which] = bad
  with pytest.raises(ValueError, match=rf"{which}\[3\] has norm {abs(scale):.6g}"):
    metrics.pointcloud_metrics(points, args["pred_normals"], points + 0.01, args["gt_normals"])


def test_float32_unit_normals_are_accepted():
  """Unit normals stored in float32 (as the datasets do) give the float64 brute-force value."""
  rng = np.random.default_rng(9)
  points, normals = _random_cloud(rng, 100)
  pred_n = _unit(rng.normal(size=(100, 3)))
  got = metrics.pointcloud_metrics(points, pred_n.astype(np.float32), points,
                                   normals.astype(np.float32))
  expected = np.mean(np.abs(np.sum(pred_n * normals, -1)))  # Same points: each is its own NN.
  assert got["normal_consistency"] == pytest.approx(expected, abs=1e-6)


def test_empty_ground_truth_raises():
  points, normals = _random_cloud(np.random.default_rng(3), 10)
  with pytest.raises(ValueError, match="gt_points is empty"):
    metrics.pointcloud_metrics(points, normals, np.zeros((0, 3)), np.zeros((0, 3)))


def test_mismatched_normals_raise():
  points, normals = _random_cloud(np.random.default_rng(4), 10)
  with pytest.raises(ValueError, match="equal shapes"):
    metrics.pointcloud_metrics(points, normals[:5], points, normals)


# ------------------------------------------------------------------------------------------------
# Meshes and surface samples.
# ------------------------------------------------------------------------------------------------


def test_sphere_mesh_vertices_lie_within_a_cell_of_the_radius():
  resolution, radius, centre = 48, 0.3, np.array([0.1, -0.05, 0.02])
  cell = BOX / (resolution - 1)
  verts, faces = metrics.mesh_from_occupancy(_sphere_grid(resolution, radius, centre), 0.5)
  assert verts.shape[1] == 3 and faces.shape[1] == 3 and len(faces) > 0
  # The offset centre checks the [x, y, z] indexing and the world mapping, not just the scale.
  np.testing.assert_array_less(np.abs(np.linalg.norm(verts - centre, axis=-1) - radius), cell)
  np.testing.assert_allclose(verts.mean(0), centre, atol=cell / 4)
  mesh = trimesh.Trimesh(verts, faces, process=True)
  assert mesh.is_watertight
  assert mesh.volume > 0  # faces wound outward
  np.testing.assert_allclose(mesh.volume, 4 / 3 * np.pi * radius**3, rtol=0.05)


def test_sphere_surface_samples_match_analytic_sphere():
  resolution, radius = 64, 0.35
  grid = _sphere_grid(resolution, radius, soft_width=0.02)
  verts, faces = metrics.mesh_from_occupancy(grid, 0.5)
  rng = np.random.default_rng(5)
  points, normals = metrics.sample_surface(verts, faces, 20000, rng)
  gt_n = _unit(rng.normal(size=(20000, 3)))
  got = metrics.pointcloud_metrics(points, normals, radius * gt_n, gt_n)
  assert got["chamfer_l1"] < BOX / (resolution - 1)
  assert got["fscore@0.02"] > 0.99
  assert got["normal_consistency"] > 0.99


def test_mesh_is_closed_where_the_shape_touches_the_box():
  # Occupied half box: without padding, marching cubes would leave it open at the box faces.
  resolution = 16
  x = np.linspace(-BOX / 2, BOX / 2, resolution)
  grid = np.broadcast_to((x < 0.05)[:, None, None], (resolution,) * 3).astype(np.float64)
  verts, faces = metrics.mesh_from_occupancy(grid, 0.5)
  mesh = trimesh.Trimesh(verts, faces, process=True)
  assert mesh.is_watertight and mesh.volume > 0
  cell = BOX / (resolution - 1)
  np.testing.assert_array_less(np.abs(verts), BOX / 2 + cell)


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_grid_without_crossing_gives_empty_mesh(value):
  verts, faces = metrics.mesh_from_occupancy(np.full((8, 8, 8), value), 0.3 if value else 0.5)
  assert verts.shape == (0, 3) and faces.shape == (0, 3)
  points, normals = metrics.sample_surface(verts, faces, 100, np.random.default_rng(0))
  assert points.shape == normals.shape == (0, 3)


def test_mesh_from_occupancy_rejects_bad_input():
  with pytest.raises(ValueError, match="threshold"):
    metrics.mesh_from_occupancy(np.zeros((4, 4, 4)), 1.0)
  with pytest.raises(ValueError, match=r"\(R, R, R\)"):
    metrics.mesh_from_occupancy(np.zeros((4, 4, 5)), 0.5)


def test_sample_surface_is_area_uniform():
  # Two disjoint triangles with areas 0.5 and 1.5.
  s = np.sqrt(3)
  verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [s, 0, 1], [0, s, 1]], float)
  faces = np.array([[0, 1, 2], [3, 4, 5]])
  points, normals = metrics.sample_surface(verts, faces, 40000, np.random.default_rng(6))
  on_first = points[:, 2] == 0
  assert on_first.mean() == pytest.approx(0.25, abs=0.01)
  first = points[on_first]
  assert np.all(first[:, :2] >= 0) and np.all(first.sum(1) <= 1 + 1e-12)
  # Uniform within the triangle: the corner triangle x + y < 0.5 holds a quarter of its area.
  assert np.mean(first.sum(1) < 0.5) == pytest.approx(0.25, abs=0.02)
  np.testing.assert_allclose(normals, np.tile([0.0, 0.0, 1.0], (len(points), 1)))


def test_sample_surface_on_cube_matches_trimesh_normals():
  mesh = trimesh.creation.box(extents=(1, 1, 1))
  points, normals = metrics.sample_surface(mesh.vertices, mesh.faces, 60000,
                                           np.random.default_rng(7))
  np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0)
  # Each sample's normal is the outward axis of the cube face it lies on.
  axis = np.abs(points).argmax(1)
  expected = np.zeros_like(points)
  expected[np.arange(len(points)), axis] = np.sign(points[np.arange(len(points)), axis])
  np.testing.assert_allclose(normals, expected, atol=1e-12)
  # Every returned normal is one of trimesh's face normals.
  closest = np.max(normals @ mesh.face_normals.T, axis=1)
  np.testing.assert_allclose(closest, 1.0)
  face_id = axis * 2 + (points[np.arange(len(points)), axis] > 0)
  assert np.bincount(face_id, minlength=6) / len(points) == pytest.approx(np.full(6, 1 / 6),
                                                                         abs=0.01)


# ------------------------------------------------------------------------------------------------
# Occupancy.
# ------------------------------------------------------------------------------------------------


def test_occupancy_metrics_hand_case():
  probs = np.array([0.9, 0.6, 0.5, 0.4, 0.1])
  labels = np.array([1, 0, 1, 1, 0], bool)
  # probs >= 0.5 predicts [1, 1, 1, 0, 0]: intersection {0, 2}, union {0, 1, 2, 3}.
  got = metrics.occupancy_metrics(probs, labels)
  assert got == {"iou": 0.5, "accuracy": pytest.approx(0.6)}


def test_occupancy_metrics_match_confusion_counts():
  rng = np.random.default_rng(8)
  probs = rng.random(1000)
  labels = rng.random(1000) < probs
  pred = probs >= 0.3
  tp, fp = np.sum(pred & labels), np.sum(pred & ~labels)
  fn, tn = np.sum(~pred & labels), np.sum(~pred & ~labels)
  got = metrics.occupancy_metrics(probs, labels, threshold=0.3)
  assert got["iou"] == pytest.approx(tp / (tp + fp + fn))
  assert got["accuracy"] == pytest.approx((tp + tn) / 1000)


def test_occupancy_metrics_empty_cases():
  labels = np.array([1, 1, 0, 0], bool)
  assert metrics.occupancy_metrics(np.zeros(4), labels)["iou"] == 0.0
  assert metrics.occupancy_metrics(np.ones(4), np.zeros(4, bool))["iou"] == 0.0
  both_empty = metrics.occupancy_metrics(np.zeros(4), np.zeros(4, bool))
  assert both_empty == {"iou": 1.0, "accuracy": 1.0}


def test_iou_is_scipy_jaccard_similarity_empty_cases_included():
  """IoU = 1 - scipy's Jaccard dissimilarity, which defines two empty sets as identical."""
  rng = np.random.default_rng(10)
  for pred_rate, gt_rate in [(0.3, 0.5), (0.0, 0.5), (0.5, 0.0), (0.0, 0.0)]:
    pred, labels = rng.random(200) < pred_rate, rng.random(200) < gt_rate
    got = metrics.occupancy_metrics(pred.astype(np.float64), labels)["iou"]
    assert got == pytest.approx(1 - spatial.distance.jaccard(pred, labels))


def test_ece_hand_case():
  # Bin of 0.1: mean label 0.5 (gap 0.4); bin of 0.9: mean label 1 (gap 0.1); each holds half.
  probs = np.array([0.1, 0.1, 0.9, 0.9])
  labels = np.array([0, 1, 1, 1], bool)
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.25)


def test_ece_matches_reference_and_is_small_when_calibrated():
  rng = np.random.default_rng(9)
  probs = rng.random(200000)
  labels = rng.random(200000) < probs
  assert metrics.expected_calibration_error(probs, labels) < 0.01
  # Miscalibrated on purpose, against an explicit per-bin loop over bin edges.
  squashed = 0.5 + 0.5 * (probs - 0.5)
  edges = np.linspace(0, 1, 16)
  reference = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (squashed >= lo) & ((squashed < hi) | (hi == 1))
    if in_bin.any():
      reference += in_bin.mean() * abs(labels[in_bin].mean() - squashed[in_bin].mean())
  got = metrics.expected_calibration_error(squashed, labels)
  assert got == pytest.approx(reference, rel=1e-9)
  assert got > 0.1


def test_occupancy_inputs_are_validated():
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.expected_calibration_error(np.array([1.5]), np.array([True]))
  with pytest.raises(ValueError, match="equal shapes"):
    metrics.occupancy_metrics(np.zeros(3), np.zeros(4, bool))


def test_select_threshold():
  probs = [np.array([0.2, 0.4, 0.6, 0.8]), np.array([0.35, 0.45, 0.9])]
  labels = [np.array([0, 1, 1, 1], bool), np.array([1, 1, 1], bool)]
  # Mean IoU: 0.3 -> (1 + 2/3) / 2, 0.5 -> (2/3 + 1/3) / 2, 0.7 -> (1/3 + 1/3) / 2.
  assert metrics.select_threshold(probs, labels, [0.5, 0.7, 0.3]) == 0.3
  # Every candidate separates perfectly: the tie goes to the one closest to 0.5.
  easy_p, easy_l = [np.array([0.05, 0.95])], [np.array([0, 1], bool)]
  assert metrics.select_threshold(easy_p, easy_l, [0.2, 0.45, 0.6, 0.8]) == 0.45
  assert metrics.select_threshold(easy_p, easy_l, [0.6, 0.4]) == 0.4


# ------------------------------------------------------------------------------------------------
# 2.5D maps.
# ------------------------------------------------------------------------------------------------


def test_depth_metrics_hand_case():
  gt = np.array([[1.0, 2.0], [4.0, 0.0]])
  pred = np.array([[1.1, 1.5], [4.0, 9.0]])  # the masked-out pixel must not count
  got = metrics.depth_metrics(pred, gt, gt > 0)
  # Errors 0.1, -0.5, 0; relative 0.1, 0.25, 0; ratios 1.1, 4/3, 1.
  assert got["depth_abs_rel"] == pytest.approx(0.35 / 3)
  assert got["depth_rmse"] == pytest.approx(np.sqrt(0.26 / 3))
  assert got["depth_delta1"] == pytest.approx(2 / 3)


def test_depth_metrics_nonpositive_prediction_and_bad_input():
  gt, mask = np.ones((2, 2)), np.ones((2, 2), bool)
  with warnings.catch_warnings(), np.errstate(all="raise"):
    warnings.simplefilter("error")
    got = metrics.depth_metrics(np.array([[0.0, -1.0], [1.0, 1.0]]), gt, mask)
  assert got["depth_delta1"] == 0.5
  assert got["depth_abs_rel"] == pytest.approx(0.75)
  with pytest.raises(ValueError, match="mask is empty"):
    metrics.depth_metrics(gt, gt, np.zeros((2, 2), bool))
  with pytest.raises(ValueError, match="gt depth must be > 0"):
    metrics.depth_metrics(gt, np.zeros((2, 2)), mask)


def test_normals_rotated_by_ten_degrees():
  rng = np.random.default_rng(10)
  gt = _unit(rng.normal(size=(16, 16, 3)))
  axis = _unit(np.cross(gt, rng.normal(size=gt.shape)))  # perpendicular to each normal
  angle = np.radians(10.0)
  pred = np.cos(angle) * gt + np.sin(angle) * np.cross(axis, gt)  # Rodrigues, axis ⟂ gt
  pred *= rng.uniform(0.5, 2.0, size=(16, 16, 1))  # lengths must not matter
  got = metrics.normal_metrics(pred, gt, np.ones((16, 16), bool))
  assert got["normal_mean_deg"] == pytest.approx(10.0, abs=1e-6)
  assert got["normal_median_deg"] == pytest.approx(10.0, abs=1e-6)
  assert got["normal_within_11.25"] == got["normal_within_22.5"] == got["normal_within_30"] == 1.0


def test_normal_metrics_hand_case():
  gt = np.tile([0.0, 0.0, 1.0], (1, 5, 1))
  # Errors 0, 45, 90 (zero-length prediction), 180 degrees; the last pixel is masked out.
  pred = np.array([[[0, 0, 2], [0, 1, 1], [0, 0, 0], [0, 0, -1], [1, 0, 0]]], float)
  mask = np.array([[True, True, True, True, False]])
  got = metrics.normal_metrics(pred, gt, mask)
  assert got["normal_mean_deg"] == pytest.approx(78.75)
  assert got["normal_median_deg"] == pytest.approx(67.5)
  assert got["normal_within_11.25"] == got["normal_within_22.5"] == got["normal_within_30"] == 0.25
  with pytest.raises(ValueError, match="mask is empty"):
    metrics.normal_metrics(pred, gt, np.zeros((1, 5), bool))
