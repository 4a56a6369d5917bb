"""Tests of the SDF domains: CSG and superquadric SDFs, bounding boxes, families, variants.

References are closed forms (sphere distances), finite differences, scipy.ndimage connected
components and skimage marching cubes. Each jitted function is compiled once per module.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import measure

from recon3d_jax.data import synth, variants
from recon3d_jax.geometry import csg, families, groundtruth
from recon3d_jax.geometry import sdf as sdf_lib

NUM_SHAPES = 12  # Per domain.


def _two_spheres(op, blend=0.0):
  """Spheres of radius 0.3 at x = -0.15 and radius 0.25 at x = +0.2, folded by op."""
  parts = jax.tree.map(lambda *x: jnp.stack(x), sdf_lib.make_shape(
      'sphere', [0.3, 0, 0, 0], translation=[-0.15, 0, 0]), sdf_lib.make_shape(
          'sphere', [0.25, 0, 0, 0], translation=[0.2, 0, 0]))
  return csg.Csg(parts=parts, ops=jnp.array([0, op], jnp.int32),
                 blend=jnp.array([0.0, blend], jnp.float32), active=jnp.ones(2, bool),
                 family=jnp.int32(0), kinds=(0,))


@functools.lru_cache(maxsize=None)
def _world_shapes():
  """NUM_SHAPES random compounds and organic shapes in their world frames."""
  keys = jax.random.split(jax.random.key(0), NUM_SHAPES)
  return {name: jax.jit(jax.vmap(lambda k, d=families.DOMAINS[name]: d.sample(k, None)))(keys)
          for name in ("compounds", "organic")}


@functools.lru_cache(maxsize=None)
def _normalized(name):
  keys = jax.random.split(jax.random.key(1), NUM_SHAPES)
  normalize = lambda s, k: groundtruth.normalize(s, k, 4096)[0]
  return jax.jit(jax.vmap(normalize))(_world_shapes()[name], keys)


_batch_sdf = jax.jit(jax.vmap(csg.csg_sdf))


# ------------------------------------------------------------------- SDFs


def test_csg_of_two_spheres_matches_closed_forms():
  p = np.random.default_rng(0).uniform(-0.7, 0.7, (2000, 3)).astype(np.float32)
  a = np.linalg.norm(p - [-0.15, 0, 0], axis=-1) - 0.3
  b = np.linalg.norm(p - [0.2, 0, 0], axis=-1) - 0.25
  k = 0.1
  shapes = jax.tree.map(lambda *x: jnp.stack(x), *[
      _two_spheres(csg.UNION), _two_spheres(csg.SUBTRACT), _two_spheres(csg.INTERSECT),
      _two_spheres(csg.SMOOTH_UNION, k)])
  union, subtract, intersect, smooth = np.asarray(
      jax.jit(jax.vmap(csg.csg_sdf, (0, None)))(shapes, p))
  np.testing.assert_allclose(union, np.minimum(a, b), atol=1e-6)
  np.testing.assert_allclose(subtract, np.maximum(a, -b), atol=1e-6)
  np.testing.assert_allclose(intersect, np.maximum(a, b), atol=1e-6)
  # Smooth union: below the union, by at most k / 4, and equal to it away from the blend.
  assert np.all(smooth <= np.minimum(a, b) + 1e-6)
  assert np.all(smooth >= np.minimum(a, b) - k / 4 - 1e-6)
  far = np.abs(a - b) >= k
  np.testing.assert_allclose(smooth[far], np.minimum(a, b)[far], atol=1e-6)
  # Gradients against central differences (away from the creases of the hard ops).
  _, grad = jax.jit(jax.vmap(csg.csg_sdf_and_grad, (0, None)))(shapes, p)
  h = 1e-3
  fd = np.stack([np.asarray(jax.vmap(csg.csg_sdf, (0, None))(shapes, p + h * e)) -
                 np.asarray(jax.vmap(csg.csg_sdf, (0, None))(shapes, p - h * e))
                 for e in np.eye(3, dtype=np.float32)], -1) / (2 * h)
  smooth_region = (np.abs(a - b) > 0.01) & (np.abs(a + b) > 0.01)  # a = -b: subtract's crease
  np.testing.assert_allclose(np.asarray(grad)[:, smooth_region], fd[:, smooth_region],
                             atol=2e-2)


def test_superquadric_is_a_bound_exact_on_the_surface():
  radii, e = np.array([0.4, 0.2, 0.15]), 3.0
  shape = sdf_lib.make_shape('superquadric', [*radii, e])
  rng = np.random.default_rng(1)
  # Surface points: scale random directions onto the level set N(p) = 1.
  v = rng.standard_normal((500, 3))
  surface = v / np.sum(np.abs(v / radii) ** e, -1, keepdims=True) ** (1 / e)
  sdf = jax.jit(sdf_lib.shape_sdf)
  np.testing.assert_allclose(sdf(shape, surface.astype(np.float32)), 0.0, atol=1e-6)
  # A bound: |f(p)| <= distance to the (densely sampled) surface, same sign.
  dense_v = rng.standard_normal((100_000, 3))
  dense = dense_v / np.sum(np.abs(dense_v / radii) ** e, -1, keepdims=True) ** (1 / e)
  p = rng.uniform(-0.6, 0.6, (300, 3))
  dist = np.min(np.linalg.norm(p[:, None] - dense[None], axis=-1), axis=1)
  inside = np.sum(np.abs(p / radii) ** e, -1) < 1
  f = np.asarray(sdf(shape, p.astype(np.float32)))
  assert np.all((f < 0) == inside)
  assert np.all(np.abs(f) <= dist + 2e-3)  # 2e-3: the dense samples' spacing.
  # Exact support function: the bounding box half extents are the radii.
  lo, hi = sdf_lib.shape_aabb(shape)
  np.testing.assert_allclose(hi, radii, atol=1e-5)
  np.testing.assert_allclose(lo, -radii, atol=1e-5)


@pytest.mark.parametrize("name", ["compounds", "organic"])
def test_domain_sdfs_are_lipschitz_and_gradients_match(name):
  shapes = _normalized(name)
  rng = np.random.default_rng(2)
  p = rng.uniform(-0.6, 0.6, (NUM_SHAPES, 2000, 3)).astype(np.float32)
  q = (p + rng.normal(0, 0.05, p.shape)).astype(np.float32)
  fp, fq = np.asarray(_batch_sdf(shapes, p)), np.asarray(_batch_sdf(shapes, q))
  assert np.all(np.abs(fp - fq) <= np.linalg.norm(p - q, axis=-1) * (1 + 1e-4) + 1e-6)
  value, grad = jax.jit(jax.vmap(csg.csg_sdf_and_grad))(shapes, p)
  np.testing.assert_allclose(value, fp, atol=1e-6)
  assert np.linalg.norm(grad, axis=-1).max() < 1 + 1e-4


# ------------------------------------------------------- bounding boxes


@functools.lru_cache(maxsize=None)
def _grid_values(name, n=129):
  """SDF of the normalised shapes on an n^3 grid over [-0.56, 0.56]^3 -> (grid axis, values)."""
  c = np.linspace(-0.56, 0.56, n, dtype=np.float32)
  grid = np.stack(np.meshgrid(c, c, c, indexing='ij'), -1)
  return c, np.array(_batch_sdf(_normalized(name), np.broadcast_to(grid, (NUM_SHAPES, *grid.shape))))


@pytest.mark.parametrize("name", ["compounds", "organic"])
def test_normalized_compounds_fill_the_unit_cube(name):
  """Grid bounds from the Lipschitz property: every grid point inside lies in the unit cube,
  and along the longest side the cells that may hold solid reach both faces. (Marching cubes
  clips the sharp edges and tips of compounds by up to ~1%; smooth shapes: the next test.)"""
  c, values = _grid_values(name)
  spacing = c[1] - c[0]
  grid = np.stack(np.meshgrid(c, c, c, indexing='ij'), -1)
  for i in range(NUM_SHAPES):
    inside = grid[values[i] <= 0]
    may_hold = grid[values[i] <= spacing * np.sqrt(3) / 2]
    assert np.abs(inside).max() <= 0.5 + 1e-3, (name, i)
    lo, hi = may_hold.min(0) - spacing / 2, may_hold.max(0) + spacing / 2
    longest = np.argmax(hi - lo)
    assert lo[longest] <= -0.5 and hi[longest] >= 0.5, (name, i, lo, hi)


def test_normalized_smooth_shapes_match_marching_cubes():
  """Organic shapes are smooth, so marching cubes (skimage) finds their box to ~1e-3."""
  c, values = _grid_values("organic")
  for i in range(NUM_SHAPES):
    verts, _, _, _ = measure.marching_cubes(values[i], 0.0, spacing=(c[1] - c[0],) * 3)
    verts = verts + c[0]
    lo, hi = verts.min(0), verts.max(0)
    assert np.max(hi - lo) == pytest.approx(1.0, abs=4e-3)
    np.testing.assert_allclose(hi + lo, 0.0, atol=4e-3)


@pytest.mark.parametrize("name", ["compounds", "organic"])
def test_shapes_are_connected_and_not_empty(name):
  shapes = _normalized(name)
  n = 64
  c = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
  grid = np.stack(np.meshgrid(c, c, c, indexing='ij'), -1)
  inside = np.asarray(_batch_sdf(shapes, np.broadcast_to(grid, (NUM_SHAPES, *grid.shape)))) < 0
  for i in range(NUM_SHAPES):
    _, count = ndimage.label(inside[i], structure=np.ones((3, 3, 3)))
    assert count == 1, (name, i, count)


# ------------------------------------------------------ families, samples

SIZES = dict(image_size=32, num_surface_points=128, num_uniform_points=128, num_near_points=128,
             voxel_resolution=16)
# One compile per domain: each also exercises a variant and a family filter.
CASES = {"primitives": ("white_bg", (1, 3, 5)), "compounds": ("high_elevation", (0, 3)),
         "organic": ("default", None)}
NUM_KEYS = 4


@functools.lru_cache(maxsize=None)
def _samples(domain, seed=0):
  variant, ids = CASES[domain]
  keys = synth.sample_keys(seed, "train", jnp.arange(NUM_KEYS))
  return jax.device_get(synth.generate_batch(
      keys, domain=domain, variant=variants.VARIANTS[variant], families=ids, **SIZES))


@pytest.mark.slow
def test_every_domain_has_the_same_fields():
  expected = {k: (v.shape, v.dtype) for k, v in _samples("primitives").items()}
  assert expected["image"] == ((NUM_KEYS, 32, 32, 3), np.uint8)
  assert expected["kind"] == ((NUM_KEYS,), np.int32)
  assert expected["voxels"] == ((NUM_KEYS, 16, 16, 16), np.uint8)
  for domain in ("compounds", "organic"):
    assert {k: (v.shape, v.dtype) for k, v in _samples(domain).items()} == expected
    for v in _samples(domain).values():
      assert np.all(np.isfinite(v))


@pytest.mark.parametrize("domain", [
    d if d == "primitives" else pytest.param(d, marks=pytest.mark.slow) for d in CASES])
def test_samples_are_deterministic_and_distinct(domain):
  again = jax.device_get(synth.generate_batch(
      synth.sample_keys(0, "train", jnp.arange(NUM_KEYS)), domain=domain,
      variant=variants.VARIANTS[CASES[domain][0]], families=CASES[domain][1], **SIZES))
  first = _samples(domain)
  for k in first:
    assert first[k].tobytes() == again[k].tobytes(), k
  images = first["image"].reshape(NUM_KEYS, -1)
  assert len({im.tobytes() for im in images}) == NUM_KEYS
  # Ground truth is consistent with the render: the surface fills the unit cube (up to the
  # numerical bounding box's measured accuracy, see csg.aabb).
  points = first["surface_points"]
  assert np.all(np.abs(points) <= 0.5 + 2e-3)
  mask = first["mask"] > 0
  assert np.all(mask.any((1, 2))) and not np.any(mask.all((1, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["primitives", "compounds"])
def test_instance_shape_is_the_shape_generate_batch_rendered(domain):
  """Regenerated from its key alone, each sample's shape draws the same surface samples as the
  rendered batch (primitives render family by family, with a mixed-kind shape's sampler they
  would not) and its SDF puts the stored inside voxels inside."""
  variant, ids = CASES[domain]
  keys = synth.sample_keys(0, "train", jnp.arange(NUM_KEYS))
  samples, n = _samples(domain), SIZES["num_surface_points"]
  for i in range(NUM_KEYS):
    shape, points, _, _, _ = synth.instance_shape(
        keys[i], domain=domain, variant=variants.VARIANTS[variant], families=ids,
        num_points=n + SIZES["num_near_points"], num_normals=n)
    np.testing.assert_allclose(points[:n], samples["surface_points"][i], atol=1e-5)
    inside = np.asarray(groundtruth.voxelize(shape, SIZES["voxel_resolution"]))
    assert np.mean(inside == samples["voxels"][i].astype(bool)) > 0.999


@pytest.mark.slow
def test_family_filter():
  assert set(_samples("primitives")["kind"]) <= {1, 3, 5}
  assert set(_samples("compounds")["kind"]) <= {0, 3}
  keys = jax.random.split(jax.random.key(3), 64)
  kinds = jax.jit(jax.vmap(lambda k: families.DOMAINS["organic"].sample(k, (2,)).family))(keys)
  assert set(np.asarray(kinds).tolist()) == {2}
  with pytest.raises(ValueError, match="families"):
    synth.generate_batch(jnp.zeros((1, 2), jnp.uint32), domain="organic",
                         variant=variants.Variant(), families=(4,), **SIZES)
  with pytest.raises(ValueError, match="domain"):
    synth.generate_batch(jnp.zeros((1, 2), jnp.uint32), domain="organics",
                         variant=variants.Variant(), families=None, **SIZES)


@pytest.mark.slow
def test_variants_reach_the_samples():
  white = _samples("primitives")
  background = white["mask"] == 0
  assert background.any()
  assert np.all(white["image"][background] == 255)
  elevation = np.rad2deg(_samples("compounds")["elevation"])
  lo, hi = variants.VARIANTS["high_elevation"].elevation_deg
  assert np.all((elevation >= lo) & (elevation <= hi))
