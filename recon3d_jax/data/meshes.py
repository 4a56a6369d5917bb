"""The real-mesh domain: load and validate meshes, and make samples exactly like the SDF domains'.

Loading (`load_meshes`): every .obj/.off/.ply file of a folder, sorted by name, each checked
(parses, has faces, finite vertices, watertight, consistently wound, encloses a volume), oriented
outward and normalised into the unit cube (longest bounding-box side 1, centred at the origin).

Samples (`generate_batch`) follow synth.make_sample field for field, in the same viewer-centred
frame: the mesh is rotated into the axes of a camera at a random azimuth/elevation, renormalised
to the unit cube in that frame, and ray cast from a camera with identity rotation at
(0, 0, -CAMERA_DISTANCE). View and lighting come from `variants` and shading from
`geometry.shading`, so a variant means the same for meshes as for SDF domains.

Compiled shapes. Face counts differ between meshes (76 to ~30k in the shared set); each mesh is
padded with inert degenerate faces (geometry/mesh.py) to the next power of two (at least
MIN_BUCKET), so one jit compilation serves every mesh of a bucket: a handful of compilations for a
whole set. The padding costs next to nothing: the ray caster and inside tests cull whole chunks of
faces by bounding box, and chunks of padding have empty boxes. Faces are sorted along a Morton
curve of their centroids at load time so that each chunk is spatially compact (tight boxes, good
culling). Instances run one at a time (a Python loop over the batch): batching several meshes would
pad all of them to the largest one's bucket, and culling skips work only outside vmap.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from absl import logging

from recon3d_jax.data import synth, variants
from recon3d_jax.geometry import camera, mesh, shading

MESH_EXTENSIONS = (".obj", ".off", ".ply")
ON_ERROR = ("fail", "skip")
NEAR_SIGMA = 0.01  # Gaussian offset of near-surface query points, as groundtruth.occupancy_points.
UNIFORM_HALF_SIDE = 0.55  # Uniform query points fill the padded box of side 1.1.
MIN_BUCKET = 512  # Smallest padded face count: fewer compilations for the many small meshes.
MORTON_BITS = 10  # Per axis: a 1024^3 grid of centroid cells.


class MeshError(ValueError):
  """A mesh file that cannot be used, or a folder without usable meshes."""


@dataclasses.dataclass(frozen=True)
class MeshSet:
  """Validated meshes in the unit cube, ready for generate_batch.

  Attributes:
    names: file names, sorted; mesh id i is names[i].
    triangles: per mesh (F_padded, 3, 3) float32 outward-wound triangles in the unit cube,
      in Morton order, padded with inert faces to a power-of-two bucket.
    num_faces: per mesh, the real face count F.
  """
  names: tuple[str, ...]
  triangles: tuple[np.ndarray, ...]
  num_faces: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.names)


def bucket_size(num_faces: int) -> int:
  """The padded face count: the next power of two, at least MIN_BUCKET."""
  return max(MIN_BUCKET, 1 << (num_faces - 1).bit_length())


def morton_order(triangles: np.ndarray) -> np.ndarray:
  """(F,) permutation sorting (F, 3, 3) unit-cube faces along a 3D Morton (Z-order) curve of
  their centroids, so that consecutive faces are close in space (in any rotated frame too)."""
  cells = np.clip(((triangles.mean(axis=1) + 0.5) * 2 ** MORTON_BITS).astype(np.int64), 0,
                  2 ** MORTON_BITS - 1)  # (F, 3)
  code = np.zeros(len(triangles), np.int64)
  for bit in range(MORTON_BITS):
    for axis in range(3):
      code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
  return np.argsort(code, kind="stable")


def _open_edges(tm: trimesh.Trimesh) -> int:
  """Number of edges not shared by exactly two faces (0 for a watertight mesh)."""
  _, counts = np.unique(tm.edges_sorted, axis=0, return_counts=True)
  return int(np.sum(counts != 2))


def load_mesh(path: str) -> np.ndarray:
  """Reads and validates one mesh file.

  Returns:
    (F, 3, 3) float32 triangles, wound so normals point outward, in the unit cube.

  Raises:
    MeshError naming the file and the reason.
  """
  try:
    tm = trimesh.load(path, force="mesh", process=False)
  except Exception as e:  # trimesh raises many types on malformed files.
    raise MeshError(f"{path}: cannot be parsed ({type(e).__name__}: {e})") from e
  if not isinstance(tm, trimesh.Trimesh):
    raise MeshError(f"{path}: cannot be parsed as a triangle mesh (got {type(tm).__name__})")
  if len(tm.faces) == 0:
    raise MeshError(f"{path}: empty mesh ({len(tm.vertices)} vertices, no faces)")
  bad = np.flatnonzero(~np.all(np.isfinite(tm.vertices), axis=1))
  if bad.size:
    raise MeshError(f"{path}: {bad.size} vertices with NaN/inf coordinates (first: vertex "
                    f"{bad[0]} = {tm.vertices[bad[0]].tolist()})")
  tm.merge_vertices()  # Formats that split vertices at seams (OBJ normals, uvs) still close up.
  if not tm.is_watertight:
    raise MeshError(f"{path}: not watertight ({_open_edges(tm)} edges are not shared by "
                    "exactly two faces)")
  if not tm.is_winding_consistent:
    raise MeshError(f"{path}: inconsistent face winding (neighbouring faces disagree on "
                    "which side is outside)")
  extent = float(np.max(tm.bounds[1] - tm.bounds[0]))
  volume = float(tm.volume)
  if not abs(volume) > 1e-9 * extent ** 3:
    raise MeshError(f"{path}: encloses no volume (volume {volume:.3g}, extent {extent:.3g})")
  faces = tm.faces if volume > 0 else tm.faces[:, ::-1]  # Inside-out -> outward normals.
  lo, hi = tm.bounds
  return ((tm.vertices[faces] - (lo + hi) / 2) / extent).astype(np.float32)  # In float64.


def load_meshes(mesh_dir: str, on_error: str = "fail") -> MeshSet:
  """Loads every mesh file (.obj, .off, .ply) of a folder, sorted by file name.

  Args:
    mesh_dir: the folder.
    on_error: "fail" raises MeshError on the first bad file; "skip" logs a warning per bad
      file, leaves it out and logs how many were skipped.

  Returns:
    A MeshSet of the valid meshes.

  Raises:
    MeshError: a bad file (on_error="fail"), a missing folder, or no valid mesh at all.
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
  if not os.path.isdir(mesh_dir):
    raise MeshError(f"mesh folder {mesh_dir!r} does not exist")
  files = sorted(f for f in os.listdir(mesh_dir) if f.lower().endswith(MESH_EXTENSIONS))
  if not files:
    raise MeshError(f"mesh folder {mesh_dir!r} has no {'/'.join(MESH_EXTENSIONS)} files")
  names, triangles, num_faces, skipped = [], [], [], []
  for name in files:
    try:
      tri = load_mesh(os.path.join(mesh_dir, name))
    except MeshError as e:
      if on_error == "fail":
        raise
      logging.warning("skipping mesh: %s", e)
      skipped.append(name)
      continue
    tri = tri[morton_order(tri)]
    names.append(name)
    num_faces.append(len(tri))
    # Inert padding (see geometry/mesh.py): degenerate faces at the first vertex.
    filler = np.broadcast_to(tri[0, 0], (bucket_size(len(tri)) - len(tri), 3, 3))
    triangles.append(np.concatenate([tri, filler]))
  if skipped:
    logging.warning("skipped %d of %d meshes: %s", len(skipped), len(files), ", ".join(skipped))
  if not names:
    raise MeshError(f"mesh folder {mesh_dir!r}: none of its {len(files)} mesh files is valid")
  logging.info("loaded %d meshes from %s", len(names), mesh_dir)
  return MeshSet(tuple(names), tuple(triangles), tuple(num_faces))


@functools.partial(jax.jit, static_argnames=(
    "variant", "image_size", "num_surface_points", "num_uniform_points", "num_near_points",
    "voxel_resolution"))
def make_sample(triangles: jax.Array, mesh_id: jax.Array, key: jax.Array, *,
                variant: variants.Variant, image_size: int, num_surface_points: int,
                num_uniform_points: int, num_near_points: int,
                voxel_resolution: int) -> dict[str, jax.Array]:
  """One sample of a unit-cube mesh (F, 3, 3): the fields of synth.make_sample, kind = mesh_id.

  Returns (H = W = image_size, N/Mu/Mn/R the point counts and voxel resolution):
    image (H,W,3) uint8; depth (H,W) z-depth, 0 off the object; normal (H,W,3) camera-frame unit
    face normals, 0 off the object; mask (H,W) uint8; surface_points/surface_normals (N,3)
    area-uniform with face normals; points_uniform (Mu,3) in the 1.1 box with occ_uniform (Mu,)
    uint8; points_near (Mn,3) surface samples + N(0, NEAR_SIGMA^2) offsets with occ_near (Mn,);
    voxels (R,R,R) uint8 indexed [x,y,z]; kind () int32; azimuth, elevation () radians.
    All 3D quantities are in the viewer frame (camera axes, object renormalised to the unit cube).
  """
  k_view, k_light, k_surface, k_uniform, k_near, k_noise = jax.random.split(key, 6)
  azimuth, elevation = variants.sample_view(k_view, variant)
  world_camera = camera.look_at_camera(azimuth, elevation, synth.CAMERA_DISTANCE, synth.FOV_DEG)
  view = mesh.normalize_triangles(
      jnp.einsum("fvk,jk->fvj", triangles, world_camera.rotation, precision="highest"))

  appearance = variants.sample_appearance(k_light, variant)
  # World directions -> the viewer frame, as synth.make_sample (stripes stay on the object).
  for name in ("light_dir", "stripe_dir"):
    appearance[name] = world_camera.rotation @ appearance[name]
  images = mesh.render(view, synth.viewer_camera(), image_size)
  rgb = shading.shade(images["points"], images["normal"], images["mask"], appearance,
                       variant.texture)

  surface_points, surface_normals = mesh.sample_surface(view, k_surface, num_surface_points)
  points_uniform = jax.random.uniform(k_uniform, (num_uniform_points, 3),
                                      minval=-UNIFORM_HALF_SIDE, maxval=UNIFORM_HALF_SIDE)
  near_surface, _ = mesh.sample_surface(view, k_near, num_near_points)
  points_near = near_surface + NEAR_SIGMA * jax.random.normal(k_noise, near_surface.shape)
  occupancy = mesh.contains(view, jnp.concatenate([points_uniform, points_near]))
  return dict(
      image=jnp.round(rgb * 255).astype(jnp.uint8),
      depth=images["depth"].astype(jnp.float32),
      normal=images["normal"].astype(jnp.float32),
      mask=images["mask"].astype(jnp.uint8),
      surface_points=surface_points,
      surface_normals=surface_normals,
      points_uniform=points_uniform,
      occ_uniform=occupancy[:num_uniform_points].astype(jnp.uint8),
      points_near=points_near,
      occ_near=occupancy[num_uniform_points:].astype(jnp.uint8),
      voxels=mesh.voxelize(view, voxel_resolution).astype(jnp.uint8),
      kind=jnp.asarray(mesh_id, jnp.int32),
      azimuth=azimuth,
      elevation=elevation,
  )


def generate_batch(mesh_set: MeshSet, mesh_ids: np.ndarray, keys: jax.Array, *,
                   variant: variants.Variant, image_size: int, num_surface_points: int,
                   num_uniform_points: int, num_near_points: int,
                   voxel_resolution: int) -> dict[str, np.ndarray]:
  """Samples of meshes mesh_ids (B,) with per-instance PRNG keys (B,).

  Instance i depends only on (mesh_set.triangles[mesh_ids[i]], keys[i]): same inputs, same bytes.

  Returns:
    dict of numpy arrays, the fields of `make_sample` with a leading B axis.
  """
  mesh_ids = np.asarray(mesh_ids)
  if mesh_ids.ndim != 1 or not mesh_ids.size or not np.issubdtype(mesh_ids.dtype, np.integer):
    raise ValueError(f"mesh_ids of shape {mesh_ids.shape} and dtype {mesh_ids.dtype}: expected "
                     "a non-empty 1-D integer array")
  out_of_range = mesh_ids[(mesh_ids < 0) | (mesh_ids >= len(mesh_set))]
  if out_of_range.size:
    raise ValueError(f"mesh_ids {sorted(set(out_of_range.tolist()))}: expected ids in "
                     f"[0, {len(mesh_set)}) of the mesh set")
  if not isinstance(variant, variants.Variant):
    raise ValueError(f"variant={variant!r}: expected a variants.Variant")
  if len(keys) != len(mesh_ids):
    raise ValueError(f"{len(keys)} keys for {len(mesh_ids)} mesh_ids: expected one key each")
  sizes = dict(image_size=image_size, num_surface_points=num_surface_points,
               num_uniform_points=num_uniform_points, num_near_points=num_near_points,
               voxel_resolution=voxel_resolution)
  for name, value in sizes.items():
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name}={value!r}: expected a positive integer")
  samples = [jax.device_get(make_sample(mesh_set.triangles[i], i, key, variant=variant, **sizes))
             for i, key in zip(mesh_ids.tolist(), keys)]
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}
