"""Tests for recon3d_jax.mise against dense-grid extraction of analytic shapes (numpy), and of
the evaluation's MISE path (evaluate.mesh_grids) with parameter-free models of such shapes.

Occupancy is p = sigmoid(-sdf / 0.01) of exact signed distances, so the 0.5 iso-surface is the
shape's surface. The reference is the same function evaluated on the full (R, R, R) grid.
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import interpolate, special

from recon3d_jax import evaluate, metrics, mise, sharding

BOX = metrics.BOX_SIZE
THRESHOLD = 0.5


def _rotation(ax, ay, az):
  """Rotation about x, then y, then z (angles in radians)."""
  cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
  rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
  return rz @ ry @ rx


def _sphere(p):
  return np.linalg.norm(p - np.array([0.02, -0.01, 0.03]), axis=-1) - 0.3


def _box_sdf(p, half, rotation, centre=(0.0, 0.0, 0.0)):
  q = np.abs((p - np.asarray(centre)) @ rotation) - np.asarray(half)
  return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)


def _box(p):
  return _box_sdf(p, (0.3, 0.2, 0.25), _rotation(0.3, 0.2, 0.1))


def _torus(p):
  p = p @ _rotation(0.4, 0.1, 0.0)
  q = np.stack([np.linalg.norm(p[..., :2], axis=-1) - 0.3, p[..., 2]], -1)
  return np.linalg.norm(q, axis=-1) - 0.1


def _plate(thickness_cells, tilt, resolution0):
  """A 0.6 x 0.6 plate `thickness_cells` coarse cells thick, tilted by `tilt` about x, centred
  half a coarse cell above the origin so that, untilted, it would lie between two coarse planes."""
  cell = BOX / resolution0
  return lambda p: _box_sdf(p, (0.3, 0.3, thickness_cells * cell / 2), _rotation(tilt, 0, 0),
                            centre=(0, 0, cell / 2))


SHAPES = {"sphere": _sphere, "box": _box, "torus": _torus}


def _probability(sdf):
  return lambda p: special.expit(-sdf(p) / 0.01)


class _Batched:
  """occupancy_fn over one shape per instance; records every array it is called with."""

  def __init__(self, fns):
    self.fns, self.calls = fns, []

  def __call__(self, points):
    self.calls.append(points.copy())
    return np.stack([f(points[b].astype(np.float64)) for b, f in enumerate(self.fns)])


def _dense(fn, size):
  """fn on the full (size, size, size) grid of the mesh_from_occupancy convention."""
  x = np.linspace(-BOX / 2, BOX / 2, size).astype(np.float32)
  points = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
  return fn(points.astype(np.float64)).astype(np.float32)


def _near_surface(grid):
  """(R, R, R) bool: corners of the cells the iso-surface crosses, by brute force over 8 corners."""
  r = grid.shape[0] - 1
  corners = [grid[i:i + r, j:j + r, k:k + r] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
  inside = np.stack(corners) >= THRESHOLD
  crossed = inside.any(0) & ~inside.all(0)
  near = np.zeros(grid.shape, bool)
  for i in (0, 1):
    for j in (0, 1):
      for k in (0, 1):
        near[i:i + r, j:j + r, k:k + r] |= crossed
  return near


def _vertex_chamfer(grid_a, grid_b):
  """Chamfer-L1 between the vertex sets of the two grids' meshes (normals unused)."""
  va, _ = metrics.mesh_from_occupancy(grid_a, THRESHOLD)
  vb, _ = metrics.mesh_from_occupancy(grid_b, THRESHOLD)
  ones = lambda v: np.ones_like(v) / np.sqrt(3)
  return metrics.pointcloud_metrics(va, ones(va), vb, ones(vb))["chamfer_l1"]


def _queried(calls, batch_size):
  """Per instance, the set of distinct points occupancy_fn was asked about."""
  points = np.concatenate(calls, axis=1)
  return [set(map(tuple, points[b])) for b in range(batch_size)]


@pytest.fixture(scope="module")
def shapes_16_2():
  """MISE of sphere, box and torus in one batch at resolution0=16, 2 steps (65^3), and dense."""
  fns = [_probability(f) for f in SHAPES.values()]
  occupancy = _Batched(fns)
  grid, num_evaluated = mise.extract_grid(occupancy, len(fns), THRESHOLD, resolution0=16,
                                          upsampling_steps=2, chunk=4096)
  dense = np.stack([_dense(f, 65) for f in fns])
  return grid, num_evaluated, dense, occupancy.calls


def test_matches_dense_extraction(shapes_16_2):
  grid, _, dense, _ = shapes_16_2
  assert grid.shape == dense.shape == (3, 65, 65, 65) and grid.dtype == np.float32
  for b, name in enumerate(SHAPES):
    near = _near_surface(dense[b])
    assert near.sum() > 1000, name
    # Every point within one cell of the surface was evaluated, so both grids hold the same
    # value there, and inside/outside agrees everywhere: marching cubes gives the same mesh.
    np.testing.assert_array_equal(grid[b][near], dense[b][near], err_msg=name)
    np.testing.assert_array_equal(grid[b] >= THRESHOLD, dense[b] >= THRESHOLD, err_msg=name)
    assert _vertex_chamfer(grid[b], dense[b]) < 1e-3, name
    # And the usual evaluation path: area-uniform samples with the same seed.
    samples = [metrics.sample_surface(*metrics.mesh_from_occupancy(g, THRESHOLD), 4096,
                                      np.random.default_rng(0)) for g in (grid[b], dense[b])]
    assert metrics.pointcloud_metrics(*samples[0], *samples[1])["chamfer_l1"] < 1e-3, name


def test_evaluates_far_fewer_points_than_dense(shapes_16_2):
  """Here 17.6-19.5% of 65^3. At resolution0=32, 2 steps (129^3, the ratio that matters for
  evaluation) the same shapes take 9.7-10.8% of the dense queries (next test): the refined
  shell shrinks relative to the volume as the resolution grows."""
  _, num_evaluated, _, calls = shapes_16_2
  assert num_evaluated.shape == (3,) and np.all(num_evaluated >= 17**3)
  assert np.all(num_evaluated < 0.25 * 65**3), num_evaluated / 65**3
  # num_evaluated counts distinct points: no point is queried twice (padding repeats points
  # of the same instance), and every query is a point of the 65^3 grid.
  assert [len(q) for q in _queried(calls, 3)] == list(num_evaluated)
  axis = np.linspace(-BOX / 2, BOX / 2, 65).astype(np.float32)
  assert np.all(np.isin(np.concatenate(calls), axis))


def test_ratio_at_the_evaluation_resolution():
  """resolution0=32, 2 steps (129^3 = 2,146,689 points): MISE queries 208,966 (9.7%, sphere),
  231,693 (10.8%, box) and 212,087 (9.9%, torus). Of that the coarse 33^3 level is 1.7%; without
  the dilation it would be 5.0-5.5%, with 2 cells 14.5-16.1%."""
  fns = [_probability(f) for f in SHAPES.values()]
  _, num_evaluated = mise.extract_grid(_Batched(fns), 3, THRESHOLD)
  assert np.all(num_evaluated < 0.12 * 129**3), num_evaluated / 129**3


def test_calls_occupancy_only_with_the_fixed_shape(shapes_16_2):
  _, num_evaluated, _, calls = shapes_16_2
  assert {(c.shape, c.dtype) for c in calls} == {((3, 4096, 3), np.dtype(np.float32))}
  # Level 0: 17^3 points in 2 chunks; each refinement: enough chunks for its busiest instance.
  assert 2 + 2 <= len(calls) <= 2 + 2 * np.ceil(num_evaluated.max() / 4096)


def test_unevaluated_points_are_interpolated_from_the_coarser_level():
  """Reference: scipy's trilinear interpolation of each level, with the function's values at
  exactly the points the driver queried."""
  fns = [_probability(_torus), _probability(_sphere)]
  occupancy = _Batched(fns)
  grid, _ = mise.extract_grid(occupancy, 2, THRESHOLD, resolution0=8, upsampling_steps=2,
                              chunk=1000)
  queried = _queried(occupancy.calls, 2)
  for b, fn in enumerate(fns):
    level = _dense(fn, 9)
    for size in (17, 33):
      x = np.linspace(-BOX / 2, BOX / 2, size).astype(np.float32)
      points = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
      coarse_x = np.linspace(-BOX / 2, BOX / 2, level.shape[0]).astype(np.float32)
      level = interpolate.RegularGridInterpolator((coarse_x,) * 3, level.astype(np.float64))(
          points.astype(np.float64))
      evaluated = np.array([tuple(p) in queried[b] for p in points.reshape(-1, 3)])
      evaluated = evaluated.reshape(level.shape)
      level[evaluated] = fn(points[evaluated].astype(np.float64))
      level = level.astype(np.float32)
    np.testing.assert_allclose(grid[b], level, rtol=0, atol=1e-6)


def test_no_upsampling_is_the_dense_grid():
  fns = [_probability(_box), _probability(_torus)]
  occupancy = _Batched(fns)
  grid, num_evaluated = mise.extract_grid(occupancy, 2, THRESHOLD, resolution0=12,
                                          upsampling_steps=0, chunk=1000)
  np.testing.assert_array_equal(grid, np.stack([_dense(f, 13) for f in fns]))
  np.testing.assert_array_equal(num_evaluated, [13**3, 13**3])
  assert len(occupancy.calls) == 3  # ceil(2197 / 1000)


def test_empty_and_full_functions_give_constant_grids_without_faces():
  occupancy = _Batched([lambda p: np.full(p.shape[:-1], 0.2), lambda p: np.full(p.shape[:-1], 0.9),
                        _probability(lambda p: _sphere(p) + 0.3)])  # Below 0.5, not constant.
  grid, num_evaluated = mise.extract_grid(occupancy, 3, THRESHOLD, resolution0=8,
                                          upsampling_steps=2, chunk=512)
  assert grid.shape == (3, 33, 33, 33)
  np.testing.assert_array_equal(grid[0], np.float32(0.2))
  np.testing.assert_array_equal(grid[1], np.float32(0.9))
  assert grid[2].max() < THRESHOLD
  np.testing.assert_array_equal(num_evaluated, [9**3] * 3)  # Nothing to refine.
  assert len(occupancy.calls) == 2  # ceil(729 / 512), the coarse level only.
  for g in grid:
    vertices, faces = metrics.mesh_from_occupancy(g, THRESHOLD)
    assert vertices.shape == faces.shape == (0, 3)


def test_thin_plates_are_found_thanks_to_the_dilation():
  """A plate 0.6 coarse cells thick, tilted by 0.15 rad, falls between the coarse grid's planes
  over part of its extent: only the dilation around the cells where the coarse grid sees it
  refines the rest. (A plate thicker than a cell has a corner inside every cell its faces cross,
  so 1.5 cells are found with or without dilation; an untilted plate thinner than a cell that
  misses every coarse point is invisible to MISE at any dilation.)"""
  fns = [_probability(_plate(0.6, 0.15, 8)), _probability(_plate(1.5, 0.15, 8))]
  dense = np.stack([_dense(f, 33) for f in fns])
  grid, _ = mise.extract_grid(_Batched(fns), 2, THRESHOLD, resolution0=8, upsampling_steps=2)
  undilated, _ = mise.extract_grid(_Batched(fns), 2, THRESHOLD, resolution0=8,
                                   upsampling_steps=2, dilation=0)
  for b in range(2):
    np.testing.assert_array_equal(grid[b] >= THRESHOLD, dense[b] >= THRESHOLD)
    assert _vertex_chamfer(grid[b], dense[b]) < 1e-3
  # Without dilation the thinner plate has holes.
  assert _vertex_chamfer(undilated[0], dense[0]) > 2e-3
  assert _vertex_chamfer(undilated[1], dense[1]) < 1e-3


def test_upsample_is_trilinear_interpolation():
  rng = np.random.default_rng(0)
  coarse = rng.random((2, 4, 5, 3)).astype(np.float64)
  fine = mise.upsample(coarse)
  assert fine.shape == (2, 7, 9, 5)
  axes = [np.arange(n, dtype=np.float64) for n in coarse.shape[1:]]
  points = np.stack(np.meshgrid(*[np.arange(2 * n - 1) / 2 for n in coarse.shape[1:]],
                                indexing="ij"), -1)
  for b in range(2):
    expected = interpolate.RegularGridInterpolator(axes, coarse[b])(points)
    np.testing.assert_allclose(fine[b], expected, rtol=0, atol=1e-12)


def test_padded_indices_pad_every_row_to_the_same_chunk_multiple():
  mask = np.zeros((3, 10), bool)
  mask[0, [2, 5, 7]] = True
  mask[1, [1]] = True
  indices, counts = mise.padded_indices(mask, chunk=2)
  np.testing.assert_array_equal(counts, [3, 1, 0])
  np.testing.assert_array_equal(indices, [[2, 5, 7, 2], [1, 1, 1, 1], [0, 0, 0, 0]])
  empty, counts = mise.padded_indices(np.zeros((2, 5), bool), chunk=4)
  assert empty.shape == (2, 0) and counts.tolist() == [0, 0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=0.0), "threshold=0.0: expected a value in \\(0, 1\\)"),
    (dict(threshold=1.0), "threshold"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(resolution0=0), "resolution0=0: expected an integer >= 1"),
    (dict(resolution0=8.0), "resolution0=8.0"),
    (dict(upsampling_steps=-1), "upsampling_steps=-1: expected an integer >= 0"),
    (dict(chunk=0), "chunk=0: expected an integer >= 1"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(dilation=-1), "dilation=-1"),
    (dict(box_size=0.0), "box_size=0.0"),
])
def test_rejects_invalid_arguments(kwargs, message):
  args = dict(batch_size=1, threshold=0.5, resolution0=4, upsampling_steps=1) | kwargs
  with pytest.raises(ValueError, match=message):
    mise.extract_grid(lambda p: np.zeros(p.shape[:2]), **args)


def test_rejects_occupancy_of_the_wrong_shape():
  with pytest.raises(ValueError, match=r"returned shape \(64,\).*expected \(1, 64\)"):
    mise.extract_grid(lambda p: np.zeros(p.shape[1]), 1, 0.5, resolution0=4, chunk=64)


# ---------------------------------------------------------------------------------------------
# The final evaluation's mesh path (evaluate.mesh_grids): encode once, decode fixed chunks on
# the device mesh, MISE on the host.
# ---------------------------------------------------------------------------------------------
class _SphereField(nn.Module):
  """A parameter-free 'model': a sphere around SPHERE_CENTRE whose radius is 0.15 + 0.3 x the
  image mean, logits -sdf / 0.01 + shift (a member of an ensemble shifts its logits)."""
  input_maps: bool = False
  depth_offset: float = 2.2
  shift: float = 0.0

  def encode(self, images):
    return dict(radius=0.15 + 0.3 * images.mean(axis=(1, 2, 3)))

  def decode_occupancy(self, latent, points):
    distance = jnp.linalg.norm(points - jnp.asarray(SPHERE_CENTRE), axis=-1)
    return (latent["radius"][:, None] - distance) / 0.01 + self.shift


SPHERE_CENTRE = (0.02, -0.01, 0.03)


def _sphere_probs(images, shift, size):
  """The _SphereField's probabilities on the dense (size,)*3 grid, in numpy (float64)."""
  x = np.linspace(-BOX / 2, BOX / 2, size).astype(np.float32).astype(np.float64)
  points = np.stack(np.meshgrid(x, x, x, indexing="ij"), -1)
  distance = np.linalg.norm(points - np.array(SPHERE_CENTRE), axis=-1)
  radius = 0.15 + 0.3 * images.astype(np.float64).mean(axis=(1, 2, 3))
  return special.expit((radius[:, None, None, None] - distance) / 0.01 + shift)


def _eval_config(resolution0, steps):
  return ml_collections.ConfigDict(dict(mise_resolution0=resolution0,
                                        mise_upsampling_steps=steps))


@pytest.fixture(scope="module")
def images():
  """3 images (not a multiple of the 8 test devices: the batch gets padded)."""
  return np.random.default_rng(7).random((3, 4, 4, 3)).astype(np.float32)


def test_evaluation_grid_without_upsampling_is_the_dense_field(images):
  grid, evaluated = evaluate.mesh_grids([(_SphereField(), {})], {"image": images},
                                        sharding.make_mesh(), THRESHOLD, _eval_config(12, 0))
  assert grid.shape == (3, 13, 13, 13)
  np.testing.assert_allclose(grid, _sphere_probs(images, 0.0, 13), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(evaluated, [13**3] * 3)


def test_evaluation_mise_matches_the_dense_grid_at_the_same_resolution(images):
  mesh = sharding.make_mesh()
  grid, evaluated = evaluate.mesh_grids([(_SphereField(), {})], {"image": images}, mesh,
                                        THRESHOLD, _eval_config(8, 2))
  dense, _ = evaluate.mesh_grids([(_SphereField(), {})], {"image": images}, mesh, THRESHOLD,
                                 _eval_config(32, 0))
  assert grid.shape == dense.shape == (3, 33, 33, 33)
  assert np.all(evaluated < 0.5 * 33**3)
  for b in range(3):
    assert _vertex_chamfer(grid[b], dense[b]) < 1e-3


def test_ensemble_refines_the_mean_probability(images):
  """Members disagree (their logits are shifted by -+2): MISE follows their mean's surface, so
  without upsampling it is the mean of the dense fields, and refined it meshes like that mean."""
  members = [(_SphereField(shift=-2.0), {}), (_SphereField(shift=2.0), {})]
  mean = np.mean([_sphere_probs(images, s, 33) for s in (-2.0, 2.0)], axis=0)
  mesh = sharding.make_mesh()
  dense, _ = evaluate.mesh_grids(members, {"image": images}, mesh, THRESHOLD, _eval_config(32, 0))
  np.testing.assert_allclose(dense, mean, rtol=1e-4, atol=1e-6)
  grid, _ = evaluate.mesh_grids(members, {"image": images}, mesh, THRESHOLD, _eval_config(8, 2))
  for b in range(3):
    assert _vertex_chamfer(grid[b], mean[b]) < 1e-3
