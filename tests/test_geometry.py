"""Tests of recon3d_jax.geometry against closed forms and independent references.

Compilation dominates on CPU, so each jitted function is compiled once, on one
batch that mixes the closed-form cases with random primitives of every kind,
and the tests read their slices of the cached results.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from recon3d_jax.data import variants
from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import compact
from recon3d_jax.geometry import families
from recon3d_jax.geometry import groundtruth
from recon3d_jax.geometry import render as render_lib
from recon3d_jax.geometry import sdf as sdf_lib

KINDS = sdf_lib.PRIMITIVE_KINDS
IMAGE_SIZE = 40
NUM_SURFACE = 4096
PER_KIND = 3
NUM_RANDOM = PER_KIND * len(KINDS)

_own_kind_sdf = jax.jit(sdf_lib.shape_sdf, static_argnums=2)


def _sdf(shape, points):
  """A single shape's SDF by its own kind's (exact) formula."""
  return _own_kind_sdf(shape, points, (int(shape.kind),))


_batch_sdf = jax.jit(jax.vmap(sdf_lib.shape_sdf))


def _stack(shapes):
  return jax.tree.map(lambda *x: jnp.stack(x), *shapes)


def _take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


@functools.lru_cache(maxsize=None)
def _random_shapes():
  """PER_KIND random primitives of each kind, sorted by kind."""
  shapes = jax.jit(jax.vmap(families.random_primitive))(
      jax.random.split(jax.random.PRNGKey(7), 128))
  kinds = np.asarray(shapes.kind)
  index = np.concatenate(
      [np.flatnonzero(kinds == k)[:PER_KIND] for k in range(len(KINDS))])
  assert len(index) == PER_KIND * len(KINDS)
  return _take(shapes, index)


def _kind_slice(kind):
  k = KINDS.index(kind)
  return slice(PER_KIND * k, PER_KIND * (k + 1))


# Closed-form surface cases, at batch indices BOX, CYLINDER, BIG_SPHERE after
# the random shapes.
_BOX_HALF = np.array([0.5, 0.3, 0.15])
_CYLINDER = (0.3, 0.45)  # radius, half height
_BIG_RADIUS = 5.0  # far outside the unit cube
BOX, CYLINDER, BIG_SPHERE = NUM_RANDOM, NUM_RANDOM + 1, NUM_RANDOM + 2


@functools.lru_cache(maxsize=None)
def _surface_batch():
  """Surface samples of [random shapes, box, cylinder, big sphere]."""
  shapes = _stack([_take(_random_shapes(), i) for i in range(NUM_RANDOM)] + [
      sdf_lib.make_shape('box', [*_BOX_HALF, 0]),
      sdf_lib.make_shape('cylinder', [*_CYLINDER, 0, 0]),
      sdf_lib.make_shape('sphere', [_BIG_RADIUS, 0, 0, 0])])
  keys = jax.random.split(jax.random.PRNGKey(1), len(shapes.kind))
  points, normals = jax.jit(jax.vmap(
      lambda s, k: groundtruth.surface_points(s, k, NUM_SURFACE)))(shapes, keys)
  return shapes, np.asarray(points), np.asarray(normals)


_GREY_LIGHT = dict(light_dir=np.array([0.0, 1.0, 0.0], np.float32),
                   albedo=np.array([0.8, 0.6, 0.4], np.float32),
                   ambient=np.float32(0.2),
                   background=np.array([0.1, 0.2, 0.3], np.float32),
                   stripe_dir=np.array([1.0, 0.0, 0.0], np.float32))
# (shape, azimuth, elevation) for the closed-form renders, batch indices 0..3.
_RENDER_CASES = [
    (sdf_lib.make_shape('sphere', [0.5, 0, 0, 0]), 0.3, 0.5),
    (sdf_lib.make_shape('sphere', [0.35, 0, 0, 0]), 2.5, -0.4),
    (sdf_lib.make_shape('box', [0.5, 0.3, 0.2, 0]), 0.6, 0.45),
    (sdf_lib.make_shape('box', [0.5, 0.3, 0.2, 0]), -2.0, 1.2),
]


@functools.lru_cache(maxsize=None)
def _render_batch():
  """Renders of the closed-form cases, then of the random shapes."""
  closed_form = (_stack([shape for shape, _, _ in _RENDER_CASES]),
                 _stack([camera_lib.look_at_camera(az, el) for _, az, el in _RENDER_CASES]),
                 _stack([_GREY_LIGHT] * len(_RENDER_CASES)))
  view_key, light_key = jax.random.split(jax.random.PRNGKey(2))
  az, el = jax.random.uniform(view_key, (2, NUM_RANDOM), minval=-1.0, maxval=1.0)
  random = (_random_shapes(),
            jax.vmap(camera_lib.look_at_camera)(np.pi * az, 0.7 * el),
            jax.vmap(lambda k: variants.sample_appearance(k, variants.Variant()))(
                jax.random.split(light_key, NUM_RANDOM)))
  batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), closed_form, random)
  out = jax.jit(jax.vmap(lambda s, c, l: render_lib.render(s, c, IMAGE_SIZE, l)))(*batch)
  return batch, jax.tree.map(np.asarray, out)


def _numpy_rays(camera, n):
  """Pinhole rays rebuilt in numpy from the documented camera model."""
  rotation = np.asarray(camera.rotation, np.float64)
  tan_half = np.tan(np.deg2rad(float(camera.fov_deg)) / 2)
  c = ((np.arange(n) + 0.5) / n * 2 - 1) * tan_half
  d_cam = np.stack([np.broadcast_to(c[None, :], (n, n)),  # column j -> +x
                    np.broadcast_to(c[:, None], (n, n)),  # row i -> +y (down)
                    np.ones((n, n))], axis=-1)
  d_cam /= np.linalg.norm(d_cam, axis=-1, keepdims=True)
  return np.asarray(camera.position, np.float64), d_cam @ rotation, rotation


def _angle_deg(a, b):
  return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1.0, 1.0)))


# ------------------------------------------------------------------ camera


def test_camera_conventions():
  az, el, dist = 0.7, 0.4, 2.2
  cam = camera_lib.look_at_camera(az, el, dist)
  rot = np.asarray(cam.rotation)
  np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
  assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
  expected_eye = dist * np.array([np.cos(el) * np.sin(az), np.sin(el),
                                  np.cos(el) * np.cos(az)])
  np.testing.assert_allclose(cam.position, expected_eye, atol=1e-6)
  # The origin lies on the optical axis at z-depth = distance.
  np.testing.assert_allclose(camera_lib.world_to_camera_points(cam, jnp.zeros(3)),
                             [0.0, 0.0, dist], atol=1e-6)
  # World up appears up in the image (camera +y is down), with no roll.
  up = np.asarray(camera_lib.rotate_to_camera(cam, jnp.array([0.0, 1.0, 0.0])))
  assert up[1] < 0 and abs(up[0]) < 1e-6
  # Azimuth 0, elevation 0: eye on +z, world +x is image right.
  front = camera_lib.look_at_camera(0.0, 0.0)
  np.testing.assert_allclose(front.position, [0.0, 0.0, 2.2], atol=1e-6)
  np.testing.assert_allclose(front.rotation, np.diag([1.0, -1.0, -1.0]), atol=1e-6)
  # Viewer-centred rotation keeps the origin fixed and preserves lengths.
  v = jnp.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1]])
  w = np.asarray(camera_lib.rotate_to_camera(cam, v))
  np.testing.assert_allclose(w[0], 0.0, atol=1e-7)
  np.testing.assert_allclose(np.linalg.norm(w[1]), np.linalg.norm(v[1]), rtol=1e-6)


def test_camera_rays_project_back_to_their_pixels():
  cam = camera_lib.look_at_camera(-1.1, 0.3, fov_deg=40.0)
  origins, dirs = camera_lib.camera_rays(cam, 16)
  assert origins.shape == dirs.shape == (16, 16, 3)
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
  p_cam = np.asarray(camera_lib.world_to_camera_points(cam, origins + 1.7 * dirs))
  focal = 8 / np.tan(np.deg2rad(20.0))  # in pixels
  col = focal * p_cam[..., 0] / p_cam[..., 2] + 8 - 0.5
  row = focal * p_cam[..., 1] / p_cam[..., 2] + 8 - 0.5
  jj, ii = np.meshgrid(np.arange(16), np.arange(16))
  np.testing.assert_allclose(col, jj, atol=1e-3)
  np.testing.assert_allclose(row, ii, atol=1e-3)


# --------------------------------------------------------------- rendering


@pytest.mark.parametrize('case', [0, 1])
def test_render_sphere_matches_closed_form(case):
  (shapes, cameras, _), out = _render_batch()
  radius = float(shapes.params[case, 0])
  o, d, rot = _numpy_rays(_take(cameras, case), IMAGE_SIZE)
  b = d @ o
  disc = b * b - (o @ o - radius ** 2)
  hit = disc > 0
  t = -b - np.sqrt(np.maximum(disc, 0))
  mask = out['mask'][case]
  assert np.sum(mask != hit) <= 4  # grazing rays at the silhouette
  both = mask & hit
  assert both.sum() > 100
  np.testing.assert_allclose(out['depth'][case][both], (t * (d @ rot[2]))[both],
                             atol=1e-3)
  normal = ((o + t[..., None] * d) / radius) @ rot.T
  assert _angle_deg(out['normal'][case][both], normal[both]).max() < 0.5
  # Background: zero depth and normals, the background colour.
  assert np.all(out['depth'][case][~mask] == 0)
  assert np.all(out['normal'][case][~mask] == 0)
  np.testing.assert_allclose(out['rgb'][case][~mask],
                             np.broadcast_to(_GREY_LIGHT['background'],
                                             (np.sum(~mask), 3)), atol=1e-6)


@pytest.mark.parametrize('case', [2, 3])
def test_render_box_matches_slab_method(case):
  (shapes, cameras, _), out = _render_batch()
  half = np.asarray(shapes.params[case, :3], np.float64)
  o, d, rot = _numpy_rays(_take(cameras, case), IMAGE_SIZE)
  with np.errstate(divide='ignore'):
    t1, t2 = (-half - o) / d, (half - o) / d
  t_near = np.minimum(t1, t2).max(-1)
  hit = t_near < np.maximum(t1, t2).min(-1)
  mask = out['mask'][case]
  assert np.sum(mask != hit) <= 4
  both = mask & hit
  assert both.sum() > 100
  np.testing.assert_allclose(out['depth'][case][both],
                             (t_near * (d @ rot[2]))[both], atol=1e-3)
  # Face normals: the entry face is the slab that set t_near.
  point = o + t_near[..., None] * d
  axis = np.argmax(np.minimum(t1, t2), axis=-1)
  face = np.eye(3)[axis] * np.sign(np.take_along_axis(point, axis[..., None], -1))
  # Within 2e-3 of an edge a pixel may see a blend of the two face normals.
  off_edge = np.sort(np.abs(np.abs(point) - half), axis=-1)[..., 1] > 2e-3
  sel = both & off_edge
  assert _angle_deg(out['normal'][case][sel], (face @ rot.T)[sel]).max() < 0.5


def test_render_shading():
  (_, cameras, lights), out = _render_batch()
  for i in range(len(_RENDER_CASES), len(out['mask'])):
    mask, light = out['mask'][i], _take(lights, i)
    n_world = out['normal'][i] @ np.asarray(cameras.rotation[i])
    shade = light['ambient'] + (1 - light['ambient']) * np.maximum(
        n_world @ np.asarray(light['light_dir']), 0)
    expected = np.where(mask[..., None], np.asarray(light['albedo']) * shade[..., None],
                        np.asarray(light['background']))
    np.testing.assert_allclose(out['rgb'][i], expected, atol=1e-5)


def test_render_batch_of_mixed_kinds():
  (shapes, _, _), out = _render_batch()
  n = len(out['mask'])
  assert len(set(np.asarray(shapes.kind[len(_RENDER_CASES):]).tolist())) == 8
  assert out['rgb'].shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert out['rgb'].dtype == np.float32
  assert out['depth'].shape == out['mask'].shape == (n, IMAGE_SIZE, IMAGE_SIZE)
  assert out['normal'].shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert out['mask'].dtype == bool
  for x in out.values():
    assert np.all(np.isfinite(x))
  mask = out['mask']
  assert np.all(mask.sum((1, 2)) > 50)
  assert np.all(out['depth'][mask] > 0) and out['rgb'].min() >= 0 and out['rgb'].max() <= 1
  np.testing.assert_allclose(np.linalg.norm(out['normal'][mask], axis=-1), 1.0, atol=1e-5)
  # Visible surfaces face the camera (n_z < 0), up to grazing silhouette pixels.
  assert np.mean(out['normal'][mask][:, 2] < 0.05) > 0.995


def test_rendered_normals_match_sdf_gradient_at_hit_points():
  """Normals of the random renders vs central differences of the SDF at the hit points
  rebuilt from the depth with numpy rays: catches constant or stale normal maps."""
  (shapes, cameras, _), out = _render_batch()
  h = 1e-3
  for i in range(len(_RENDER_CASES), len(out['mask'])):
    o, d, rot = _numpy_rays(_take(cameras, i), IMAGE_SIZE)
    mask = out['mask'][i]
    points = (o + (out['depth'][i] / (d @ rot[2]))[..., None] * d)[mask].astype(np.float32)
    shape = _take(shapes, i)
    fd = np.stack([np.asarray(_sdf(shape, points + h * e)) - np.asarray(_sdf(shape, points - h * e))
                   for e in np.eye(3, dtype=np.float32)], -1) / (2 * h)
    # Off edges, tips and the torus' inner ring the differences are a unit gradient.
    smooth = np.abs(np.linalg.norm(fd, axis=-1) - 1) < 1e-2
    assert smooth.mean() > 0.8, i
    expected = (fd / np.linalg.norm(fd, axis=-1, keepdims=True)) @ rot.T
    angle = _angle_deg(out['normal'][i][mask][smooth], expected[smooth])
    assert np.percentile(angle, 95) < 2.0, (i, KINDS[int(shape.kind)])


def test_sphere_trace_plane():
  # The plane y = 0 seen at 30 degrees from height 1 is hit at ray length 2.
  origins = jnp.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
  dirs = jnp.array([[np.cos(np.pi / 6), -0.5, 0.0], [1.0, 0.0, 0.0]])
  t, hit = render_lib.sphere_trace(lambda p: p[..., 1], origins, dirs, 0.0, 5.0)
  assert hit.tolist() == [True, False]
  assert float(t[0]) == pytest.approx(2.0, abs=1e-5)


# ------------------------------------------------------------ ground truth


@functools.lru_cache(maxsize=None)
def _occupancy_batch():
  """Occupancy samples and 16^3 voxels of [sphere, box, random shapes]."""
  half = np.array([0.5, 0.35, 0.2])
  closed_form = [
      (sdf_lib.make_shape('sphere', [0.4, 0, 0, 0]),
       lambda p: np.linalg.norm(p, axis=-1) < 0.4),
      (sdf_lib.make_shape('box', [*half, 0]),
       lambda p: np.all(np.abs(p) < half, axis=-1))]
  shapes = _stack([s for s, _ in closed_form] +
                  [_take(_random_shapes(), i) for i in range(0, NUM_RANDOM, PER_KIND)])
  keys = jax.random.split(jax.random.PRNGKey(3), len(shapes.kind))
  def occupancy(s, k):
    surface_key, occ_key = jax.random.split(k)
    surface, _ = groundtruth.surface_points(s, surface_key, 4096)
    return groundtruth.occupancy_points(s, occ_key, 4096, surface)
  occ = jax.jit(jax.vmap(occupancy))(shapes, keys)
  voxels = jax.jit(jax.vmap(lambda s: groundtruth.voxelize(s, 16)))(shapes)
  return [f for _, f in closed_form], jax.tree.map(np.asarray, occ), np.asarray(voxels)


def test_occupancy_and_voxels_closed_form():
  inside_fns, occ, voxels = _occupancy_batch()
  c = (np.arange(16) + 0.5) / 16 - 0.5
  grid = np.stack(np.meshgrid(c, c, c, indexing='ij'), axis=-1)
  for i, inside in enumerate(inside_fns):
    pu, pn = occ['points_uniform'][i], occ['points_near'][i]
    assert np.all(np.abs(pu) <= 0.55)
    np.testing.assert_array_equal(occ['occ_uniform'][i], inside(pu))
    np.testing.assert_array_equal(occ['occ_near'][i], inside(pn))
    np.testing.assert_array_equal(voxels[i], inside(grid))
  # Near-surface points of the sphere: surface samples plus N(0, 0.01^2) noise.
  offset = np.linalg.norm(occ['points_near'][0], axis=-1) - 0.4
  assert np.std(offset) == pytest.approx(0.01, rel=0.05)
  assert abs(np.mean(offset)) < 1e-3


def test_occupancy_batch_of_mixed_kinds():
  _, occ, voxels = _occupancy_batch()
  n = len(voxels)
  assert occ['points_uniform'].shape == occ['points_near'].shape == (n, 4096, 3)
  assert occ['occ_uniform'].shape == occ['occ_near'].shape == (n, 4096)
  assert occ['occ_uniform'].dtype == occ['occ_near'].dtype == bool
  assert voxels.shape == (n, 16, 16, 16) and voxels.dtype == bool
  assert np.all(np.isfinite(occ['points_near']))
  # Every shape has inside and outside points, and near points are ~half inside.
  assert np.all(occ['occ_uniform'].mean(1) > 0.01) and np.all(occ['occ_uniform'].mean(1) < 0.9)
  assert np.all(np.abs(occ['occ_near'].mean(1) - 0.5) < 0.1)
  assert np.all(voxels.any((1, 2, 3)))


def test_surface_points_on_surface_with_unit_normals():
  shapes, points, normals = _surface_batch()
  assert points.shape == normals.shape == (NUM_RANDOM + 3, NUM_SURFACE, 3)
  dist = np.asarray(_batch_sdf(shapes, points))
  assert np.abs(dist).max() < 1e-4
  np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
  # Outward: a step along the normal leaves the shape.
  outside = np.asarray(_batch_sdf(shapes, points + 3e-3 * normals))
  assert np.all(outside > 0)


def test_surface_points_area_uniform_on_box():
  _, points, normals = _surface_batch()
  points, normals = points[BOX], normals[BOX]
  # Face = the axis (and sign) along which the point touches the box.
  axis = np.argmax(np.abs(points) / _BOX_HALF, axis=-1)
  positive = np.take_along_axis(points, axis[:, None], -1)[:, 0] > 0
  counts = np.bincount(2 * axis + positive, minlength=6)
  h = _BOX_HALF
  area = np.repeat([h[1] * h[2], h[0] * h[2], h[0] * h[1]], 2)
  assert stats.chisquare(counts, NUM_SURFACE * area / area.sum()).pvalue > 1e-3
  # Normals are the face normals, except on edges (where they are bisectors).
  on_edge = np.sort(np.abs(np.abs(points) - h), axis=-1)[:, 1] < 1e-4
  assert on_edge.mean() < 0.02
  normal_along_axis = normals[np.arange(NUM_SURFACE), axis]
  np.testing.assert_allclose(normal_along_axis[~on_edge],
                             np.where(positive, 1.0, -1.0)[~on_edge], atol=1e-4)


def test_surface_points_area_uniform_on_cylinder():
  _, points, _ = _surface_batch()
  points = points[CYLINDER]
  radius, half_height = _CYLINDER
  on_cap = np.abs(np.abs(points[:, 1]) - half_height) < 1e-4
  # Caps 2 pi r^2 of the total 2 pi r^2 + 4 pi r h.
  cap_fraction = radius / (radius + 2 * half_height)
  sigma = np.sqrt(cap_fraction * (1 - cap_fraction) / NUM_SURFACE)
  assert abs(on_cap.mean() - cap_fraction) < 3.5 * sigma
  # Uniform in angle around the axis, and along it on the side.
  angle = np.arctan2(points[:, 2], points[:, 0])
  assert stats.kstest(angle, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3
  side_y = points[~on_cap, 1]
  assert stats.kstest(side_y, stats.uniform(-half_height, 2 * half_height).cdf).pvalue > 1e-3


def test_surface_points_on_a_large_sphere():
  # Candidate cells scale with the shape's box: a radius-5 sphere is sampled
  # like a unit one.
  _, points, normals = _surface_batch()
  radius = np.linalg.norm(points[BIG_SPHERE], axis=-1)
  np.testing.assert_allclose(radius, _BIG_RADIUS, atol=1e-5 * _BIG_RADIUS)
  np.testing.assert_allclose(normals[BIG_SPHERE], points[BIG_SPHERE] / radius[:, None],
                             atol=1e-4)


# ------------------------------------------------------ shapes and bounds


def test_normalize_shape_fits_unit_cube():
  shapes, points, _ = _surface_batch()
  shapes = _take(shapes, slice(0, NUM_RANDOM))
  lo, hi = jax.vmap(sdf_lib.shape_aabb)(shapes)
  lo, hi = np.asarray(lo), np.asarray(hi)
  np.testing.assert_allclose(np.max(hi - lo, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(hi + lo, 0.0, atol=1e-5)
  # Dense surface samples never cross the box faces ...
  assert np.all(points[:NUM_RANDOM].min(1) >= lo - 1e-4)
  assert np.all(points[:NUM_RANDOM].max(1) <= hi + 1e-4)
  # ... and the shape touches every face: on a 201^2 grid over each face the
  # SDF has minimum ~0 (below 0 it would cross the face, above it would not
  # reach it). The tolerance is the grid's half-diagonal.
  g = np.linspace(0.0, 1.0, 201)
  u, v = (x.ravel() for x in np.meshgrid(g, g))
  unit_faces = []
  for axis in range(3):
    others = [a for a in range(3) if a != axis]
    for side in (0.0, 1.0):
      face = np.empty((len(u), 3))
      face[:, axis], face[:, others[0]], face[:, others[1]] = side, u, v
      unit_faces.append(face)
  unit_faces = np.concatenate(unit_faces)
  grid = lo[:, None] + (hi - lo)[:, None] * unit_faces
  face_min = np.asarray(_batch_sdf(shapes, grid)).reshape(NUM_RANDOM, 6, -1).min(-1)
  assert face_min.min() > -1e-4
  assert face_min.max() < 0.0036


def test_aabb_of_rotated_box_matches_corners():
  half = np.array([0.4, 0.25, 0.1])
  rot = np.asarray(families.random_rotation(jax.random.PRNGKey(6)))
  t = np.array([0.1, -0.2, 0.3])
  box = sdf_lib.make_shape('box', [*half, 0], rot, 1.5, t)
  corners = np.stack(np.meshgrid(*[[-h, h] for h in half]), -1).reshape(-1, 3)
  world = t + 1.5 * corners @ rot.T
  lo, hi = sdf_lib.shape_aabb(box)
  np.testing.assert_allclose(lo, world.min(0), atol=1e-5)
  np.testing.assert_allclose(hi, world.max(0), atol=1e-5)
  np.testing.assert_allclose(_sdf(box, world), 0.0, atol=1e-5)


def test_random_rotation_is_uniform_rotation():
  rots = np.asarray(jax.jit(jax.vmap(families.random_rotation))(
      jax.random.split(jax.random.PRNGKey(8), 512)))
  np.testing.assert_allclose(rots @ np.swapaxes(rots, 1, 2),
                             np.broadcast_to(np.eye(3), rots.shape), atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-5)
  # Uniform on SO(3): each entry has mean 0 and variance 1/3.
  assert np.abs(rots.mean(0)).max() < 0.1
  np.testing.assert_allclose(rots.var(0), 1 / 3, atol=0.06)


@functools.lru_cache(maxsize=None)
def _gradients():
  """Finite-difference, autodiff and branch-local gradients at random points."""
  shapes = _random_shapes()
  points = jax.random.uniform(jax.random.PRNGKey(4), (len(shapes.kind), 1000, 3),
                              minval=-0.8, maxval=0.8)
  h = 1e-3
  fd = jnp.stack([_batch_sdf(shapes, points + h * e) - _batch_sdf(shapes, points - h * e)
                  for e in jnp.eye(3)], -1) / (2 * h)
  autodiff = jax.jit(jax.vmap(jax.grad(lambda s, p: jnp.sum(sdf_lib.shape_sdf(s, p)),
                                       argnums=1)))(shapes, points)
  value, branch_grad = jax.jit(jax.vmap(sdf_lib.shape_sdf_and_grad))(shapes, points)
  return tuple(np.asarray(x) for x in (
      fd, autodiff, branch_grad, value, _batch_sdf(shapes, points)))


@pytest.mark.parametrize('kind', KINDS)
def test_sdf_is_lipschitz(kind):
  fd, autodiff, branch_grad, value, sdf = (x[_kind_slice(kind)] for x in _gradients())
  assert np.linalg.norm(fd, axis=-1).max() < 1 + 1e-2
  assert np.linalg.norm(autodiff, axis=-1).max() < 1 + 1e-5
  # shape_sdf_and_grad agrees with shape_sdf and its autodiff gradient.
  np.testing.assert_allclose(value, sdf, atol=1e-6)
  np.testing.assert_allclose(branch_grad, autodiff, atol=1e-5)


def test_ellipsoid_sdf_is_exact():
  radii = np.array([0.5, 0.25, 0.17])
  shape = sdf_lib.make_shape('ellipsoid', [*radii, 0])
  points = np.asarray(jax.random.uniform(jax.random.PRNGKey(9), (200, 3),
                                         minval=-0.8, maxval=0.8), np.float64)

  def reference(p):
    # Closest point x = r^2 p / (t + r^2) on |x / r| = 1, with t from brentq.
    def g(t):
      return np.sum((radii * p / (t + radii ** 2)) ** 2) - 1
    inside = np.sum((p / radii) ** 2) < 1
    lo = -np.min(radii) ** 2 + 1e-12
    t = optimize.brentq(g, lo, 0.0) if inside else optimize.brentq(g, 0.0, 10.0)
    d = np.linalg.norm(p - radii ** 2 * p / (t + radii ** 2))
    return -d if inside else d

  expected = [reference(p) for p in points]
  np.testing.assert_allclose(_sdf(shape, points.astype(np.float32)), expected, atol=1e-5)


def test_cone_sdf_is_exact():
  r, h = 0.3, 0.4
  shape = sdf_lib.make_shape('cone', [r, h, 0, 0])
  points = np.asarray(jax.random.uniform(jax.random.PRNGKey(10), (500, 3),
                                         minval=-0.7, maxval=0.7))
  # Distance in the (rho, y) profile to densely sampled boundary segments.
  s = np.linspace(0, 1, 5001)[:, None]
  boundary = np.concatenate([(1 - s) * [0, h] + s * [r, -h],
                             (1 - s) * [0, -h] + s * [r, -h]])
  q = np.stack([np.hypot(points[:, 0], points[:, 2]), points[:, 1]], -1)
  dist = np.min(np.linalg.norm(q[:, None] - boundary[None], axis=-1), axis=1)
  inside = (q[:, 1] > -h) & (q[:, 0] < r * (h - q[:, 1]) / (2 * h))
  np.testing.assert_allclose(_sdf(shape, points), np.where(inside, -dist, dist),
                             atol=1e-4)


def test_vmapped_switch_matches_single_shapes():
  """A batch of mixed kinds (one formula for the six profile kinds) against each shape's own
  kind's formula alone, values and gradients."""
  shapes = _random_shapes()
  query = jax.random.uniform(jax.random.PRNGKey(12), (64, 3), minval=-0.6, maxval=0.6)
  value, grad = jax.jit(jax.vmap(sdf_lib.shape_sdf_and_grad, (0, None)))(shapes, query)
  alone = jax.jit(sdf_lib.shape_sdf_and_grad, static_argnums=2)
  assert not sdf_lib.is_exact(tuple(range(8))) and sdf_lib.is_exact((7,))
  for i in range(len(shapes.kind)):
    kind = int(shapes.kind[i])
    own_value, own_grad = alone(_take(shapes, i), query, (kind,))
    if KINDS[kind] != 'ellipsoid':
      np.testing.assert_allclose(value[i], own_value, atol=1e-6, err_msg=KINDS[kind])
      np.testing.assert_allclose(grad[i], own_grad, atol=1e-5, err_msg=KINDS[kind])
      continue
    # Mixed, the ellipsoid is a bound of the exact distance, with its sign.
    assert np.all(np.sign(value[i]) == np.sign(own_value))
    assert np.all(np.abs(value[i]) <= np.abs(own_value) + 1e-6)
    shape = _take(shapes, i)
    q = (np.asarray(query) - np.asarray(shape.translation)) @ np.asarray(shape.rotation)
    r = np.asarray(shape.params[:3]) * float(shape.scale)
    np.testing.assert_allclose(value[i], r.min() * (np.linalg.norm(q / r, axis=-1) - 1),
                               atol=1e-6)


@pytest.mark.parametrize("size,fraction", [(1, 0.3), (31, 0.3), (33, 0.3), (1000, 0.3),
                                           (49157, 0.3), (100, 0.0), (100, 1.0)])
def test_running_count_matches_cumsum(size, fraction):
  mask = np.random.default_rng(size).random(size) < fraction
  np.testing.assert_array_equal(compact.running_count(jnp.asarray(mask)), np.cumsum(mask))
  expected = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
  for k in {1, size // 3 + 1, size}:
    np.testing.assert_array_equal(compact.true_first(jnp.asarray(mask), k), expected[:k])


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_map_where_updates_exactly_the_masked_entries(chunk):
  rng = np.random.default_rng(chunk)
  x = rng.normal(size=(3, 50)).astype(np.float32)
  masks = rng.random((3, 50)) < np.array([[0.0], [0.3], [1.0]])
  # Vmapped: the three rows have 0, ~15 and 50 masked entries.
  fn = lambda m, v: compact.map_where(lambda c: (c[0] ** 2 + 1, c[1]), m, v, chunk)
  squared, same = jax.jit(jax.vmap(fn))(jnp.asarray(masks), (jnp.asarray(x), jnp.asarray(x)))
  np.testing.assert_allclose(squared, np.where(masks, x ** 2 + 1, x), rtol=1e-6)
  np.testing.assert_array_equal(same, x)


def test_hash_uniforms_are_uniform_and_independent():
  u = np.asarray(groundtruth._hash_uniform(jax.random.PRNGKey(3), (20000, 4)))
  other = np.asarray(groundtruth._hash_uniform(jax.random.PRNGKey(4), (20000, 4)))
  for column in (u[:, 0], u[:, 3], other[:, 1]):
    assert stats.kstest(column, "uniform").pvalue > 1e-3
  # Columns, consecutive draws and different keys are uncorrelated (|r| ~ 1/sqrt(n) = 0.007).
  for a, b in ((u[:, 0], u[:, 1]), (u[:-1, 2], u[1:, 2]), (u[:, 0], other[:, 0])):
    assert abs(stats.pearsonr(a, b)[0]) < 0.03
  counts, _, _ = np.histogram2d(u[:, 1], u[:, 2], bins=10)
  assert stats.chisquare(counts.ravel()).pvalue > 1e-3
