"""Tests of geometry/mesh.py and data/meshes.py against trimesh, numpy and scipy references.

Meshes come from the set bundled with the repo (assets/meshes), rotated to a generic pose in numpy.
The binned fast paths run by default; pairs_per_item=0 (no pair budget) forces the tiled slow paths.
Each jitted function compiles once per face-count bucket, so the tests use few buckets.
"""
import functools
import itertools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from scipy import stats

from benchmarks import reference_caster
from recon3d_jax.data import builder, meshes, synth, variants
from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import mesh

MESH_DIR = builder.BUNDLED_MESH_DIR
# Different face-count buckets (512, 4096): an axis-aligned CAD part and a scanned animal.
IMAGE_SIZE = 32
EYE_DISTANCE = 2.2
FOV_DEG = 45.0

_render = jax.jit(mesh.render, static_argnums=2, static_argnames="pairs_per_item")
_contains = jax.jit(mesh.contains, static_argnames="pairs_per_item")
_voxelize = jax.jit(mesh.voxelize, static_argnums=1, static_argnames="pairs_per_item")
PATHS = [("cross.off", 4), ("elk.off", 4), ("elk.off", 0)]  # (mesh, pairs_per_item): 0 = slow.


@pytest.fixture(scope="module")
def mesh_set():
  return meshes.load_meshes(MESH_DIR)


def _rotation(azimuth, elevation):
  """World->camera rotation of a look-at camera in numpy (rows: right, down, forward)."""
  back = np.array([np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
                   np.cos(elevation) * np.cos(azimuth)])
  right = np.array([np.cos(azimuth), 0.0, -np.sin(azimuth)])
  return np.stack([right, np.cross(-back, right), -back])


@functools.lru_cache(maxsize=None)
def _posed(name):
  """(F, 3, 3) float32 triangles of a shared mesh, turned to a generic pose, in the unit cube."""
  tri = meshes.load_mesh(os.path.join(MESH_DIR, name)).astype(np.float64)
  tri = tri @ _rotation(0.7, 0.4).T
  lo, hi = tri.reshape(-1, 3).min(0), tri.reshape(-1, 3).max(0)
  return ((tri - (lo + hi) / 2) / np.max(hi - lo)).astype(np.float32)


def _trimesh(tri):
  """A watertight trimesh of a triangle soup (process=True merges the shared vertices)."""
  return trimesh.Trimesh(tri.reshape(-1, 3).astype(np.float64),
                         np.arange(3 * len(tri)).reshape(-1, 3))


def _trimesh_render(tri, image_size):
  """Reference depth, normal, mask of a camera at (0, 0, -EYE_DISTANCE) looking along +z."""
  origins, directions = reference_caster.eye_rays(image_size, FOV_DEG, EYE_DISTANCE)
  mask, depth, normal = reference_caster.trimesh_render(_trimesh(tri), origins, directions)
  shape = (image_size, image_size)
  return depth.reshape(shape), normal.reshape(shape + (3,)), mask.reshape(shape)


@pytest.mark.parametrize("name,pairs_per_item", PATHS)
def test_render_matches_trimesh_ray_caster(name, pairs_per_item):
  tri = _posed(name)
  cam = camera_lib.Camera(jnp.eye(3), jnp.array([0.0, 0.0, -EYE_DISTANCE]), jnp.asarray(FOV_DEG))
  out = jax.device_get(_render(jnp.asarray(tri), cam, IMAGE_SIZE, pairs_per_item=pairs_per_item))
  depth, normal, mask = _trimesh_render(tri, IMAGE_SIZE)
  assert 0.1 < mask.mean() < 0.9
  # Masks: a ray may graze an edge differently in float32; allow one pixel.
  assert np.sum(out["mask"] != mask) <= 1
  both = out["mask"] & mask
  assert np.mean(np.abs(out["depth"][both] - depth[both]) < 1e-3) >= 0.99
  cosine = np.clip(np.sum(out["normal"][both] * normal[both], -1), -1, 1)
  assert np.median(np.rad2deg(np.arccos(cosine))) < 0.5
  # Background: depth 0, normal 0; foreground normals unit and facing the camera.
  assert np.all(out["depth"][~out["mask"]] == 0) and np.all(out["normal"][~out["mask"]] == 0)
  np.testing.assert_allclose(np.linalg.norm(out["normal"][out["mask"]], axis=-1), 1, atol=1e-5)
  assert np.mean(out["normal"][out["mask"]][:, 2] < 0) > 0.99


@pytest.mark.parametrize("name,pairs_per_item", PATHS)
def test_contains_and_voxels_match_trimesh(name, pairs_per_item):
  tri = _posed(name)
  tm = _trimesh(tri)
  assert tm.is_watertight
  rng = np.random.default_rng(0)
  uniform = rng.uniform(-0.55, 0.55, (1000, 3))
  near = tm.sample(1000, seed=1) + 0.01 * rng.normal(size=(1000, 3))
  points = np.concatenate([uniform, near]).astype(np.float32)
  inside = np.asarray(_contains(jnp.asarray(tri), jnp.asarray(points),
                                pairs_per_item=pairs_per_item))
  reference = tm.contains(points.astype(np.float64))
  assert 0.05 < reference.mean() < 0.95
  assert np.mean(inside == reference) >= 0.999

  res = 12
  c = (np.arange(res) + 0.5) / res - 0.5
  grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
  voxels = np.asarray(_voxelize(jnp.asarray(tri), res, pairs_per_item=pairs_per_item))
  assert np.mean(voxels == tm.contains(grid).reshape(res, res, res)) >= 0.999


def test_voxels_of_a_box_are_indexed_xyz():
  """Closed form: an axis-aligned box of half extents (0.4, 0.22, 0.09) (the longest side is x)."""
  half = np.array([0.4, 0.22, 0.09])
  box = trimesh.creation.box(extents=2 * half)
  tri = jnp.asarray(box.triangles, jnp.float32)
  res = 16
  c = (np.arange(res) + 0.5) / res - 0.5
  grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
  np.testing.assert_array_equal(np.asarray(_voxelize(tri, res)),
                                np.all(np.abs(grid) < half, axis=-1))


def test_surface_samples_are_area_uniform_with_face_normals():
  # Two faces of areas 1/2 and 3/2 (ratio 1:3), padded with inert faces.
  tri = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]],
                  [[0, 0, 1], [0, 3, 1], [1, 0, 1]]], np.float32)
  padded = mesh.pad_triangles(jnp.asarray(tri), 512)
  n = 4000
  points, normals = jax.device_get(jax.jit(mesh.sample_surface, static_argnums=2)(
      padded, jax.random.key(3), n))
  on_first = points[:, 2] == 0
  assert np.all(on_first | np.isclose(points[:, 2], 1, atol=1e-6))  # On one of the two faces.
  assert stats.binomtest(int(on_first.sum()), n, 0.25).pvalue > 1e-3
  expected = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)  # (0, 0, 1) and (0, 0, -1).
  np.testing.assert_allclose(normals, np.where(on_first[:, None], expected[0], expected[1]))
  # Inside the faces, uniform: the mean is the centroid (3-sigma of the sample mean).
  first = points[on_first, :2]
  assert np.all(first >= -1e-6) and np.all(first.sum(-1) <= 1 + 1e-6)
  sigma = np.sqrt(1 / 18) / np.sqrt(len(first))  # sd of one coordinate of a unit right triangle.
  np.testing.assert_allclose(first.mean(0), [1 / 3, 1 / 3], atol=3 * sigma)


def test_load_meshes_normalises_into_the_unit_cube(mesh_set):
  assert len(mesh_set) == 25 and list(mesh_set.names) == sorted(mesh_set.names)
  for tri, num_faces in zip(mesh_set.triangles, mesh_set.num_faces):
    vertices = tri.reshape(-1, 3)
    lo, hi = vertices.min(0), vertices.max(0)
    np.testing.assert_allclose(np.max(hi - lo), 1.0, atol=1e-6)
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)
    assert len(tri) == meshes.bucket_size(num_faces) and len(tri) & (len(tri) - 1) == 0
    # Outward: the enclosed volume (divergence theorem) is positive.
    assert np.sum(tri[:num_faces, 0] * np.cross(tri[:num_faces, 1], tri[:num_faces, 2])) > 0


def _write_bad_meshes(folder):
  """Writes one good and four bad mesh files; returns {file name: expected reason}."""
  good = trimesh.creation.icosphere(subdivisions=1)
  good.export(os.path.join(folder, "a_good.obj"))
  box = trimesh.creation.box()
  trimesh.Trimesh(box.vertices, box.faces[2:], process=False).export(
      os.path.join(folder, "open_box.off"))
  with open(os.path.join(folder, "empty.off"), "w") as f:
    f.write("OFF\n0 0 0\n")
  with open(os.path.join(folder, "nan_vertex.obj"), "w") as f:
    f.write("v 0 0 0\nv 1 0 0\nv 0 nan 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
  with open(os.path.join(folder, "garbage.ply"), "w") as f:
    f.write("this is not a mesh\n")
  return {"open_box.off": "not watertight", "empty.off": "empty", "nan_vertex.obj": "NaN",
          "garbage.ply": "cannot be parsed"}


def test_bad_meshes_fail_with_the_file_and_the_reason(tmp_path):
  bad = _write_bad_meshes(tmp_path)
  os.remove(tmp_path / "a_good.obj")
  for name, reason in bad.items():
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    os.rename(tmp_path / name, folder / name)
    with pytest.raises(meshes.MeshError, match=rf"{name}.*{reason}"):
      meshes.load_meshes(str(folder))
  with pytest.raises(meshes.MeshError, match="none of its 1 mesh files is valid"):
    meshes.load_meshes(str(tmp_path / "empty_off"), on_error="skip")
  with pytest.raises(meshes.MeshError, match="has no"):
    meshes.load_meshes(str(tmp_path))  # Only sub-folders: no mesh files.
  with pytest.raises(ValueError, match="on_error='ignore'"):
    meshes.load_meshes(str(tmp_path), on_error="ignore")


def test_bad_meshes_are_skipped_and_counted(tmp_path, caplog):
  bad = _write_bad_meshes(tmp_path)
  with caplog.at_level(logging.WARNING):
    mesh_set = meshes.load_meshes(str(tmp_path), on_error="skip")
  assert mesh_set.names == ("a_good.obj",)
  assert "skipped 4 of 5 meshes" in caplog.text
  for name, reason in bad.items():
    assert name in caplog.text and reason in caplog.text


SIZES = dict(image_size=IMAGE_SIZE, num_surface_points=64, num_uniform_points=128,
             num_near_points=64, voxel_resolution=8)


@pytest.fixture(scope="module")
def batch(mesh_set):
  """Two instances of the smallest mesh (cross.off), the same key twice, and a third key."""
  mesh_id = mesh_set.names.index("cross.off")
  keys = jax.random.split(jax.random.key(0), 2)
  keys = jnp.stack([keys[0], keys[0], keys[1]])
  return meshes.generate_batch(mesh_set, np.full(3, mesh_id), keys,
                               variant=variants.get_variant("default"), **SIZES), mesh_id


def test_generate_batch_has_the_fields_of_an_sdf_sample(batch):
  sample, _ = batch
  def primitive_sample(key):
    shape = synth.DOMAINS["primitives"].sample(key, None)
    return synth.make_sample(shape, key, variant=variants.get_variant("default"), **SIZES)
  sdf = jax.eval_shape(jax.vmap(primitive_sample), jax.random.split(jax.random.key(0), 3))
  assert set(sample) == set(sdf)
  for name, spec in sdf.items():
    assert (sample[name].shape, sample[name].dtype) == (spec.shape, spec.dtype), name


def test_generate_batch_is_deterministic_and_consistent(batch):
  sample, mesh_id = batch
  for name, value in sample.items():
    assert value[0].tobytes() == value[1].tobytes(), name
  assert not np.array_equal(sample["image"][0], sample["image"][2])
  np.testing.assert_array_equal(sample["kind"], mesh_id)
  mask = sample["mask"].astype(bool)
  assert np.all(sample["depth"][mask] > 0) and np.all(sample["depth"][~mask] == 0)
  np.testing.assert_allclose(np.linalg.norm(sample["normal"][mask], axis=-1), 1, atol=1e-5)
  # Viewer frame: the 3D targets fill the unit cube (longest side 1) up to sampling.
  surface = sample["surface_points"]
  assert np.all(np.abs(surface) <= 0.5 + 1e-6)
  assert np.all(np.abs(sample["points_uniform"]) <= 0.55)
  # Near points straddle the surface; uniform points are mostly outside a thin cross.
  assert 0.2 < sample["occ_near"].mean() < 0.8 and sample["occ_uniform"].mean() < 0.5


def test_generate_batch_rejects_bad_arguments(mesh_set):
  keys = jax.random.split(jax.random.key(0), 2)
  kwargs = dict(variant=variants.get_variant("default"), **SIZES)
  with pytest.raises(ValueError, match=r"mesh_ids \[25\]"):
    meshes.generate_batch(mesh_set, np.array([0, 25]), keys, **kwargs)
  with pytest.raises(ValueError, match="1 keys for 2 mesh_ids"):
    meshes.generate_batch(mesh_set, np.array([0, 1]), keys[:1], **kwargs)
  with pytest.raises(ValueError, match="image_size=0"):
    meshes.generate_batch(mesh_set, np.array([0, 1]), keys, **{**kwargs, "image_size": 0})


# Watertightness (issue 23): dense rays through the jitted renderer, against an independent
# float64 caster (benchmarks/reference_caster.py), must never return a farther hit (the back of the
# object, through a gap between faces), a nearer one, or a miss where the float64 caster robustly
# hits the front surface.
LEAK_MESHES = ("cross.off", "joint.off", "elk.off")  # Axis-aligned CAD (exact ties), knobbly, animal.
LEAK_VIEWS = ((0.0, 0.0), (0.7, 0.4), (2.1, -0.3), (-1.2, 0.9))
LEAK_SIZE = 128
AIMED_SIZE = 33  # Odd: the centre pixel's ray is the optical axis, aimed at a vertex or an edge.
AIMED_SPACINGS = (1e-4, 1e-7)  # Image-plane pixel spacing of the zoomed views: 1e-7 ~ float32 ulp.
AIMED_TARGETS = 6


def _leaks(tri, num_faces, rotation, position, fov_deg, size):
  """(misses, farther, nearer, robust rays) of the jitted renderer against the float64 caster."""
  cam = camera_lib.Camera(jnp.asarray(rotation), jnp.asarray(position), jnp.asarray(fov_deg))
  out = jax.device_get(_render(jnp.asarray(tri), cam, size))
  u, v = reference_caster.pixel_plane_coords(size, fov_deg)
  robust, depth = reference_caster.robust_foreground(
      reference_caster.camera_frame(tri[:num_faces], rotation, position), u, v)
  errors = reference_caster.count_errors(out["depth"].reshape(-1), out["mask"].reshape(-1),
                                         depth, robust)
  return errors + (int(robust.sum()),)


@pytest.mark.parametrize("name", LEAK_MESHES)
def test_render_is_watertight(mesh_set, name):
  i = mesh_set.names.index(name)
  tri, num_faces = mesh_set.triangles[i], mesh_set.num_faces[i]
  rng = np.random.default_rng(0)
  errors, robust = np.zeros(3, int), []
  for azimuth, elevation in LEAK_VIEWS:
    view = camera_lib.look_at_camera(azimuth, elevation, EYE_DISTANCE, FOV_DEG)
    rotation, position = np.asarray(view.rotation), np.asarray(view.position)
    *e, n = _leaks(tri, num_faces, rotation, position, FOV_DEG, LEAK_SIZE)
    errors += e
    robust.append(n)
    # Rays at and around vertices and edges of visible faces.
    u, v = reference_caster.pixel_plane_coords(LEAK_SIZE, FOV_DEG)
    _, faces = reference_caster.cast(
        reference_caster.camera_frame(tri[:num_faces], rotation, position), u, v)
    for target in reference_caster.visible_targets(faces, tri, rng, AIMED_TARGETS):
      aimed = reference_caster.aimed_camera(position, target)
      for spacing in AIMED_SPACINGS:
        fov = float(np.rad2deg(2 * np.arctan(spacing * AIMED_SIZE / 2)))
        *e, n = _leaks(tri, num_faces, *aimed, fov, AIMED_SIZE)
        errors += e
        robust.append(n)
  assert tuple(errors) == (0, 0, 0), f"{name}: (misses, farther, nearer) = {tuple(errors)}"
  # The check has teeth: most rays are in the robust foreground, aimed ones included.
  assert min(robust[0::1 + 2 * AIMED_TARGETS]) > 0.05 * LEAK_SIZE ** 2
  assert np.mean(np.array(robust) > 0) > 0.9


def _octahedron():
  """(8, 3, 3) float32 outward faces of |x| + |y| + |z| <= 0.5."""
  faces = []
  for sx, sy, sz in itertools.product((1, -1), repeat=3):
    a, b, c = np.diag([0.5 * sx, 0.5 * sy, 0.5 * sz])
    faces.append([a, b, c] if sx * sy * sz > 0 else [a, c, b])
  return np.array(faces, np.float32)


@pytest.mark.parametrize("pairs_per_item", [4, 0])
def test_parity_counts_rays_through_edges_and_vertices_once(pairs_per_item):
  """Axis rays from points on the axes of an octahedron cross it exactly at its vertices or its
  edges (4 and 2 faces meet there); the inside test and the voxels (grid lines through vertices
  and edges at resolution 5) must still count one crossing: closed forms."""
  tri = jnp.asarray(_octahedron())
  s = np.linspace(-0.45, 0.45, 7, dtype=np.float32)
  zero = np.zeros_like(s)
  points = np.concatenate([np.stack(p, -1) for p in ((s, zero, zero), (zero, s, zero),
                                                     (zero, zero, s), (s, s, zero))])
  inside = np.asarray(_contains(tri, jnp.asarray(points), pairs_per_item=pairs_per_item))
  np.testing.assert_array_equal(inside, np.abs(points).sum(-1) < 0.5)
  res = 5
  c = (np.arange(res, dtype=np.float32) + 0.5) / res - 0.5
  grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
  np.testing.assert_array_equal(np.asarray(_voxelize(tri, res, pairs_per_item=pairs_per_item)),
                                np.abs(grid).sum(-1) < 0.5)
