"""TFDS builder for the rendered benchmark datasets (array_record; TensorFlow not needed).

    builder = make_builder(SynthConfig.from_data_config(config.data), config.data.data_dir)
    builder.download_and_prepare()
    source = builder.as_data_source()["train"]   # random access, numpy records

The registered suite (data/benchmarks.py) is also reachable by name once this module is imported:
`tfds.builder("recon3d_synth/primitives-64", data_dir=DIR)`.

Every instance is a pure function of (build seed, split, index), so a dataset is reproducible
bit for bit, and its config name encodes everything that changes its contents: the registered
name `<benchmark>-<size>` for the default sizes, plus the training-set size and a content hash
otherwise. A dataset's first N training instances are the same whatever its total size, and its
validation/test instances do not depend on the training size. TFDS writes into an `incomplete.*`
folder and renames it at the end, so an interrupted build never looks complete.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import shuffle as tfds_shuffle

from recon3d_jax.data import benchmarks, synth, variants

GENERATION_CHUNK = 32  # Samples rendered per jitted call (padded to it: one compilation).
# Samples per Generator.generate call where synth renders family by family (primitives):
# enough that every family fills its synth.FAMILY_BATCH calls; not padded.
FAMILY_CHUNK = 256
# Chunks rendered at once in worker threads (XLA releases the GIL). One compiled sample program
# leaves part of a 2-core CPU idle; two in flight render more samples per second
# (benchmarks/render_throughput.py: `value` against `one_thread`; see benchmarks/RESULTS.md).
RENDER_THREADS = 2
# The 25 real meshes shipped with the repository (see assets/meshes/README.md).
BUNDLED_MESH_DIR = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "assets",
                                "meshes")
SPLITS = ("train", "validation", "test")
# Domains whose data changed after Recon3dSynth.VERSION: their configs carry their own version
# (see RELEASE_NOTES), so the other domains' datasets keep theirs, and their files.
DOMAIN_VERSIONS = {"meshes": "2.5.0"}
# TFDS's writer holds a split's records in memory up to 1 GB and beyond that spills them to
# temporary files through tf.io.gfile, i.e. it then needs TensorFlow, which this package does not
# use (a 10k-instance split is ~1 GB at 64 px, ~1.3 GB at 128 px). Splits stay in memory instead.
WRITER_MEMORY_BYTES = 1 << 40


def _serialize_sorted(self, example) -> bytes:
  """ExampleSerializer.serialize_example with sorted feature keys: a tf.train.Example's feature
  map otherwise serialises in an order that differs between processes, and the same seed would
  not give byte-identical files."""
  return self.get_tf_example(example).SerializeToString(deterministic=True)


def patch_tfds_writer() -> None:
  """Makes TFDS write splits in memory and records with sorted keys (see above); idempotent.

  Called when a dataset is written rather than on import, so importing this module leaves TFDS
  as it is for anyone else in the process.
  """
  tfds_shuffle.MAX_MEM_BUFFER_SIZE = WRITER_MEMORY_BYTES
  example_serializer.ExampleSerializer.serialize_example = _serialize_sorted


@dataclasses.dataclass(eq=False)
class SynthConfig(tfds.core.BuilderConfig):
  """Everything that determines a rendered dataset's contents (plus how to treat bad meshes)."""
  benchmark: str = "primitives"
  image_size: int = 64
  num_train: int = benchmarks.DEFAULT_SIZES["num_train"]
  num_validation: int = benchmarks.DEFAULT_SIZES["num_validation"]
  num_test: int = benchmarks.DEFAULT_SIZES["num_test"]
  num_surface_points: int = benchmarks.DEFAULT_SIZES["num_surface_points"]
  num_uniform_points: int = benchmarks.DEFAULT_SIZES["num_uniform_points"]
  num_near_points: int = benchmarks.DEFAULT_SIZES["num_near_points"]
  voxel_resolution: int = benchmarks.DEFAULT_SIZES["voxel_resolution"]
  build_seed: int = 0
  mesh_dir: str = ""  # `meshes` domain: a folder of .off/.obj/.ply files; "" = bundled meshes.
  on_bad_mesh: str = "fail"  # "fail" or "skip" a mesh that cannot be used (not in the name).

  @classmethod
  def from_data_config(cls, data) -> "SynthConfig":
    """Builds the TFDS config from `config.data`: the registered name if the sizes are the
    registered defaults, else the name plus training size and a hash of the contents."""
    fields = {f.name: data[f.name] for f in dataclasses.fields(cls)
              if f.name not in {f2.name for f2 in dataclasses.fields(tfds.core.BuilderConfig)}}
    domain = benchmarks.get(fields["benchmark"]).domain  # Validates the name.
    return cls(name=_config_name(fields), version=DOMAIN_VERSIONS.get(domain), **fields)

  @property
  def sizes(self) -> dict[str, int]:
    return dict(image_size=self.image_size, num_surface_points=self.num_surface_points,
                num_uniform_points=self.num_uniform_points, num_near_points=self.num_near_points,
                voxel_resolution=self.voxel_resolution)

  def split_size(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}[split]


def _config_name(fields: dict) -> str:
  base = f"{fields['benchmark']}-{fields['image_size']}"
  content = {k: v for k, v in fields.items() if k != "on_bad_mesh"}
  if fields["mesh_dir"]:
    content["mesh_dir"] = mesh_folder_digest(fields["mesh_dir"])
  registered = (fields["image_size"] in benchmarks.REGISTERED_IMAGE_SIZES
                and all(fields[k] == v for k, v in benchmarks.DEFAULT_SIZES.items())
                and fields["build_seed"] == 0 and not fields["mesh_dir"])
  if registered:
    return base
  digest = hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
  return f"{base}-n{fields['num_train']}-{digest}"


def mesh_folder_digest(mesh_dir: str) -> str:
  """Hash of a mesh folder's file names and bytes, so edited meshes make a new dataset."""
  if not os.path.isdir(mesh_dir):
    raise ValueError(f"mesh_dir {mesh_dir!r} is not a directory; expected a folder of "
                     ".off/.obj/.ply files")
  digest = hashlib.sha1()
  for name in sorted(os.listdir(mesh_dir)):
    path = os.path.join(mesh_dir, name)
    if os.path.isfile(path):
      digest.update(name.encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()[:12]


def _tensor(shape, dtype, compress=True):
  """A fixed-shape array feature. Images, masks and voxels compress 5-50x with zlib; random
  float32 point coordinates by only 8%, for most of a record's encoding time, so those are
  stored as raw bytes (the build's time: benchmarks/RESULTS.md)."""
  encoding = tfds.features.Encoding.ZLIB if compress else tfds.features.Encoding.BYTES
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)


def features(c: SynthConfig) -> tfds.features.FeaturesDict:
  """The record schema (identical for every domain)."""
  h, n, mu, mn, r = (c.image_size, c.num_surface_points, c.num_uniform_points,
                     c.num_near_points, c.voxel_resolution)
  return tfds.features.FeaturesDict({
      "index": np.int64,
      "image": _tensor((h, h, 3), np.uint8),
      "depth": _tensor((h, h), np.float32),
      "normal": _tensor((h, h, 3), np.float32),
      "mask": _tensor((h, h), np.uint8),
      "surface_points": _tensor((n, 3), np.float32, compress=False),
      "surface_normals": _tensor((n, 3), np.float32, compress=False),
      "points_uniform": _tensor((mu, 3), np.float32, compress=False),
      "occ_uniform": _tensor((mu,), np.uint8),
      "points_near": _tensor((mn, 3), np.float32, compress=False),
      "occ_near": _tensor((mn,), np.uint8),
      "voxels": _tensor((r, r, r), np.uint8),
      "kind": np.int32,  # Shape family within the domain (the mesh id for `meshes`).
      "azimuth": np.float32,
      "elevation": np.float32,
  })


def generation_chunk(domain: str) -> int:
  """Instances per Generator.generate call for a domain: FAMILY_CHUNK where synth renders family
  by family, else GENERATION_CHUNK."""
  by_family = domain != "meshes" and synth.DOMAINS[domain].per_family_kinds
  return FAMILY_CHUNK if by_family else GENERATION_CHUNK


class Generator:
  """Renders instances of one dataset config: `generate(split, indices)` -> batch of records."""

  def __init__(self, c: SynthConfig):
    self.config = c
    self.benchmark = benchmarks.get(c.benchmark)
    self.variant = variants.get_variant(self.benchmark.variant)
    if self.benchmark.domain == "meshes":
      from recon3d_jax.data import meshes  # Local: only mesh datasets need trimesh parsing.
      self.meshes = meshes.load_meshes(c.mesh_dir or BUNDLED_MESH_DIR, on_error=c.on_bad_mesh)
      self.family_names = tuple(self.meshes.names)
    else:
      self.family_names = synth.DOMAINS[self.benchmark.domain].families
    self.chunk = generation_chunk(self.benchmark.domain)

  def families(self, split: str) -> tuple[int, ...] | None:
    return self.benchmark.split_families(split, self.family_names)

  def generate(self, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    """indices (B,) -> dict of (B, ...) numpy fields; B <= self.chunk, padded to GENERATION_CHUNK
    inside, where synth does not batch by family, so the jitted renderers compile once."""
    c = self.config
    padded = indices if self.chunk == FAMILY_CHUNK else np.pad(
        indices, (0, GENERATION_CHUNK - len(indices)), mode="edge")
    keys = synth.sample_keys(c.build_seed, split, jnp.asarray(padded))
    families = self.families(split)
    if self.benchmark.domain == "meshes":
      from recon3d_jax.data import meshes
      allowed = np.arange(len(self.family_names)) if families is None else np.array(families)
      batch = meshes.generate_batch(self.meshes, allowed[padded % len(allowed)], keys,
                                    variant=self.variant, **c.sizes)
    else:
      batch = synth.generate_batch(keys, domain=self.benchmark.domain, variant=self.variant,
                                   families=families, **c.sizes)
    batch = jax.device_get(batch)
    out = {k: np.asarray(v)[:len(indices)] for k, v in batch.items()}
    out["index"] = indices.astype(np.int64)
    return out


class Recon3dSynth(tfds.core.GeneratorBasedBuilder):
  """Rendered images + depth/normal/mask + surface points, occupancy points and voxels."""

  VERSION = tfds.core.Version("2.4.0")
  RELEASE_NOTES = {"1.0.0": "Primitives domain.",
                   "2.0.0": "Four domains, appearance variants, held-out families.",
                   "2.1.0": "Point arrays stored uncompressed (faster to write and read).",
                   "2.2.0": "Compacted sphere tracing; ellipsoids in a mix of kinds use a "
                            "scaled-sphere bound; tighter numerical bounding boxes and "
                            "surface projection (values differ slightly from 2.1.0).",
                   "2.3.0": "Compounds and organic shapes are normalised by a bounding box "
                            "found from their surface samples (values differ slightly from "
                            "2.2.0; primitives and meshes are unchanged).",
                   "2.4.0": "Closed-form gradients of the CSG domains' SDFs and a smaller "
                            "gradient pool in the surface sampler: compounds' and organic "
                            "samples differ from 2.3.0; primitives' normals only at edges.",
                   "2.5.0": "Meshes only (the other domains stay at 2.4.0, byte for byte): "
                            "watertight ray casting and inside tests (geometry/mesh.py, issue "
                            "23). No more back-surface depths and normals where a ray met a "
                            "front face near an edge it shares; lines through shared edges "
                            "and vertices count one crossing; depth, normals and points differ "
                            "from 2.4.0 by float32 rounding elsewhere."}
  BUILDER_CONFIGS = [
      SynthConfig.from_data_config(dict(
          benchmark=name, image_size=size, build_seed=0, mesh_dir="", on_bad_mesh="fail",
          **benchmarks.DEFAULT_SIZES))
      for name in benchmarks.BENCHMARKS for size in benchmarks.REGISTERED_IMAGE_SIZES]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Rendered single-image 3D reconstruction data (viewer-centred, unit-cube "
                    "objects); see recon3d_jax/data/benchmarks.py.",
        features=features(self.builder_config))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: everything is rendered.
    patch_tfds_writer()  # Every way of building (make_builder, tfds.builder by name) passes here.
    generator = Generator(self.builder_config)
    return {split: self._generate_examples(generator, split) for split in SPLITS}

  def _generate_examples(self, generator: Generator, split: str) -> Iterator:
    count = self.builder_config.split_size(split)
    chunks = [np.arange(start, min(start + generator.chunk, count))
              for start in range(0, count, generator.chunk)]
    for batch in generate_in_order(functools.partial(generator.generate, split), chunks):
      for row, index in enumerate(batch["index"]):
        yield int(index), {k: v[row] for k, v in batch.items()}


def generate_in_order(generate: Callable[[np.ndarray], dict], chunks: list[np.ndarray],
                      threads: int = RENDER_THREADS) -> Iterator[dict]:
  """Yields generate(chunk) for each chunk, in order, with `threads` chunks rendering in worker
  threads while the caller consumes (TFDS encodes and writes) the previous one.

  The first chunk renders alone: it compiles the programs, which concurrent first calls would
  each compile again.
  """
  with concurrent.futures.ThreadPoolExecutor(threads) as workers:
    pending = collections.deque()
    for i, chunk in enumerate(chunks):
      pending.append(workers.submit(generate, chunk))
      if i == 0 or len(pending) > threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def make_builder(config: SynthConfig, data_dir: str) -> Recon3dSynth:
  """The builder of `config` in `data_dir`, writing array_record files.

  A registered config is passed by name: TFDS refuses a config object that shares a registered
  config's name, and the name encodes the contents (see SynthConfig.from_data_config).
  """
  registered = {c.name for c in Recon3dSynth.BUILDER_CONFIGS}
  return Recon3dSynth(config=config.name if config.name in registered else config,
                      data_dir=data_dir, file_format="array_record")
