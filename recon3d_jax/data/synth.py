"""One procedurally generated training sample: shape + viewpoint + light -> images and 3D labels.

Frames. The camera looks at the origin from a random azimuth/elevation at a fixed distance.
Targets are viewer-centred: every 3D quantity is expressed in the camera's axes (OpenCV:
+x right, +y down, +z forward), with the object centred at the origin, so a network cannot win by
recognising a canonical pose. The object is normalised into the unit cube *in this frame*
(longest bounding-box side 1, centred), so the unit-cube / 1.1-box conventions of the metrics hold
for exactly the targets the network predicts. Rendering the viewer-frame shape from a camera with
identity rotation at (0, 0, -distance) is the same image as rendering the world shape from the
rotated camera.
"""
from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np

from recon3d_jax.data import variants
from recon3d_jax.geometry import camera, csg, groundtruth, render
from recon3d_jax.geometry import families as families_lib

CAMERA_DISTANCE = 2.2
FOV_DEG = 45.0
# Instances per compiled call when a batch is rendered family by family (generate_batch), and
# calls made at once in threads: two at a time compile the eight primitive programs faster
# than one at a time (XLA compiles and runs outside the GIL; benchmarks/RESULTS.md).
FAMILY_BATCH = 16
FAMILY_THREADS = 2

# Domain name -> families_lib.Domain: `.families` (names; a sample's `kind` is its index) and
# `.sample(key, families) -> csg.Csg` in its world frame.
DOMAINS: dict[str, families_lib.Domain] = dict(families_lib.DOMAINS)


def viewer_camera() -> camera.Camera:
  """Camera whose axes are the viewer frame's axes, at distance CAMERA_DISTANCE on -z."""
  return camera.Camera(rotation=jnp.eye(3), position=jnp.array([0.0, 0.0, -CAMERA_DISTANCE]),
                           fov_deg=jnp.asarray(FOV_DEG))


def posed_shape(shape: csg.Csg, key: jax.Array, *, variant: variants.Variant, num_points: int,
                num_normals: int):
  """make_sample's shape seen from its drawn viewpoint: (view_shape, points (num_points, 3),
  normals (num_normals, 3), world_camera, (azimuth, elevation)). view_shape is the shape in camera
  axes normalised to the unit cube; points one draw of its surface samples (the targets, then the
  seeds of the near-surface query points). key: make_sample's key."""
  k_view, _, k_surface, _ = jax.random.split(key, 4)
  azimuth, elevation = variants.sample_view(k_view, variant)
  world_camera = camera.look_at_camera(azimuth, elevation, CAMERA_DISTANCE, FOV_DEG)
  view_shape, points, normals = groundtruth.normalize(
      csg.transform(shape, world_camera.rotation, 1.0, jnp.zeros(3)), k_surface, num_points,
      num_normals=num_normals)
  return view_shape, points, normals, world_camera, (azimuth, elevation)


def make_sample(shape: csg.Csg, key: jax.Array, *, variant: variants.Variant, image_size: int,
                num_surface_points: int, num_uniform_points: int, num_near_points: int,
                voxel_resolution: int) -> dict[str, jax.Array]:
  """Renders a world-frame shape from a viewpoint and lighting drawn from `variant` and
  computes its 3D ground truth.

  Returns (H = W = image_size, N/Mu/Mn/R the point counts and voxel resolution):
    image (H,W,3) uint8; depth (H,W) z-depth, 0 off the object; normal (H,W,3) camera-frame unit
    normals, 0 off the object; mask (H,W) uint8; surface_points/surface_normals (N,3);
    points_uniform (Mu,3) with occ_uniform (Mu,) uint8; points_near (Mn,3) with occ_near (Mn,);
    voxels (R,R,R) uint8 indexed [x,y,z]; kind () int32 the shape's family id in its domain;
    azimuth, elevation (radians).
  """
  _, k_light, _, k_occ = jax.random.split(key, 4)
  view_shape, points, surface_normals, world_camera, (azimuth, elevation) = posed_shape(
      shape, key, variant=variant, num_points=num_surface_points + num_near_points,
      num_normals=num_surface_points)
  appearance = variants.sample_appearance(k_light, variant)
  # World directions -> the viewer frame the shape is rendered in (stripes stay on the object).
  for name in ("light_dir", "stripe_dir"):
    appearance[name] = world_camera.rotation @ appearance[name]
  images = render.render(view_shape, viewer_camera(), image_size, appearance, variant.texture)

  surface_points = points[:num_surface_points]
  occupancy = groundtruth.occupancy_points(view_shape, k_occ, num_uniform_points,
                                           points[num_surface_points:])
  return dict(
      image=jnp.round(images["rgb"] * 255).astype(jnp.uint8),
      depth=images["depth"].astype(jnp.float32),
      normal=images["normal"].astype(jnp.float32),
      mask=images["mask"].astype(jnp.uint8),
      surface_points=surface_points,
      surface_normals=surface_normals,
      points_uniform=occupancy["points_uniform"],
      occ_uniform=occupancy["occ_uniform"].astype(jnp.uint8),
      points_near=occupancy["points_near"],
      occ_near=occupancy["occ_near"].astype(jnp.uint8),
      voxels=groundtruth.voxelize(view_shape, voxel_resolution).astype(jnp.uint8),
      kind=view_shape.family.astype(jnp.int32),
      azimuth=azimuth,
      elevation=elevation,
  )


def generate_batch(keys: jax.Array, *, domain: str, variant: variants.Variant,
                   families: tuple[int, ...] | None, image_size: int, num_surface_points: int,
                   num_uniform_points: int, num_near_points: int,
                   voxel_resolution: int) -> dict[str, np.ndarray]:
  """Samples of one domain for keys (B,): make_sample vmapped, every field with a leading B axis.

  `families` restricts the shapes to these family ids of the domain (None: all of them), e.g.
  to hold whole families out of a training split. Everything but `keys` is static.

  Where a domain's SDF kinds follow from the family (primitives), the keys are rendered family
  by family in calls of FAMILY_BATCH (the last one padded), so each family compiles once and
  evaluates one SDF kind: under vmap a switch over kinds evaluates every kind at every point,
  which made a batch of primitives many times slower (benchmarks/render_throughput.py;
  benchmarks/RESULTS.md). Pass many keys (builder.FAMILY_CHUNK) so
  that the groups fill their calls; FAMILY_THREADS calls run at once. Instance i's sample
  depends only on keys[i] either way.
  """
  if domain not in DOMAINS:
    raise ValueError(f"domain={domain!r}: expected one of {sorted(DOMAINS)}")
  if not isinstance(variant, variants.Variant):
    raise ValueError(f"variant={variant!r}: expected a variants.Variant")
  families = _check_families(domain, families)
  sizes = dict(image_size=image_size, num_surface_points=num_surface_points,
               num_uniform_points=num_uniform_points, num_near_points=num_near_points,
               voxel_resolution=voxel_resolution)
  if not DOMAINS[domain].per_family_kinds:
    return jax.device_get(_generate_batch(keys, domain=domain, variant=variant,
                                          families=families, **sizes))
  family = np.asarray(_family_ids(keys, domain=domain, families=families))
  groups = [(int(f), np.flatnonzero(family == f)) for f in np.unique(family)]
  # Each family's first call, then each family's second, ...
  calls = [(f, group[start:start + FAMILY_BATCH]) for start in range(0, len(keys), FAMILY_BATCH)
           for f, group in groups if start < len(group)]

  def render(call):
    f, index = call
    return jax.device_get(_generate_batch(keys[np.resize(index, FAMILY_BATCH)], domain=domain,
                                          variant=variant, families=(f,), **sizes))

  out = {}
  with concurrent.futures.ThreadPoolExecutor(FAMILY_THREADS) as pool:
    # The first call of each family compiles its program; those run together, then the rest
    # (a program's first calls in two threads would each compile it).
    results = list(pool.map(render, calls[:len(groups)]))
    results += pool.map(render, calls[len(groups):])
  for (_, index), values in zip(calls, results):
    for k, v in values.items():
      out.setdefault(k, np.empty((len(keys),) + v.shape[1:], v.dtype))[index] = v[:len(index)]
  return out


@functools.partial(jax.jit, static_argnames=("domain", "families"))
def _family_ids(keys, *, domain, families):
  """(B,) family id of each key's shape, drawn as _generate_batch draws it."""
  return jax.vmap(lambda key: _shape_and_key(key, domain, families)[0].family)(keys)


def _check_families(domain: str, ids) -> tuple[int, ...]:
  return families_lib.check_families(domain, DOMAINS[domain], ids)


@functools.partial(jax.jit, static_argnames=("domain", "variant", "families", "image_size",
                                             "num_surface_points", "num_uniform_points",
                                             "num_near_points", "voxel_resolution"))
def _generate_batch(keys, *, domain, variant, families, **sizes):
  def one(key):
    return make_sample(*_shape_and_key(key, domain, families), variant=variant, **sizes)
  return jax.vmap(one)(keys)


def _shape_and_key(key, domain, families):
  """An instance's key -> (its world-frame shape, the key of make_sample)."""
  k_shape, k_sample = jax.random.split(key)
  return DOMAINS[domain].sample(k_shape, families), k_sample


def instance_shape(key, *, domain, variant, families, num_points, num_normals):
  """posed_shape of the instance that generate_batch renders from `key` (a sample_keys key) with
  num_points = num_surface_points + num_near_points and num_normals = num_surface_points: its
  exact unit-cube shape, e.g. to score a perfect prediction (benchmarks/metric_ceiling.py)."""
  families = _check_families(domain, families)
  if DOMAINS[domain].per_family_kinds:  # Rendered with its family's kinds only, as there.
    families = (int(_family_ids(key[None], domain=domain, families=families)[0]),)
  return _posed_instance(key, domain=domain, variant=variant, families=families,
                         num_points=num_points, num_normals=num_normals)


@functools.partial(jax.jit, static_argnames=("domain", "variant", "families", "num_points",
                                             "num_normals"))
def _posed_instance(key, *, domain, variant, families, num_points, num_normals):
  return posed_shape(*_shape_and_key(key, domain, families), variant=variant,
                     num_points=num_points, num_normals=num_normals)


def sample_keys(seed: int, split: str, indices: jax.Array) -> jax.Array:
  """Per-instance keys: instance i of a split depends only on (seed, split, i)."""
  split_id = {"train": 0, "validation": 1, "test": 2}[split]
  base = jax.random.fold_in(jax.random.key(seed), split_id)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
