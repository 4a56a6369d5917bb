"""TFDS builder for the procedurally rendered datasets (array_record; TensorFlow not needed).

    builder = Recon3dSynth(config=SynthConfig.from_data_config(config.data),
                           data_dir=config.data.data_dir, file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source()["train"]   # random access, numpy records

Every instance is a pure function of (build seed, split, index), so a dataset is reproducible
bit for bit, and its config name encodes everything that changes its contents. TFDS writes into an
`incomplete.*` folder and renames it at the end, so an interrupted build never looks complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from recon3d_jax.data import synth

GENERATION_CHUNK = 32  # Samples rendered per jitted call.


@dataclasses.dataclass(eq=False)
class SynthConfig(tfds.core.BuilderConfig):
  """Everything that determines a synthetic dataset's contents."""
  domain: str = "primitives"
  image_size: int = 64
  num_train: int = 2000
  num_validation: int = 100
  num_test: int = 200
  num_surface_points: int = 2048
  num_uniform_points: int = 2048
  num_near_points: int = 2048
  voxel_resolution: int = 32
  build_seed: int = 0

  @classmethod
  def from_data_config(cls, data) -> "SynthConfig":
    """Builds the TFDS config from `config.data`; the name is readable plus a content hash."""
    fields = {f.name: data[f.name] for f in dataclasses.fields(cls)
              if f.name not in {f2.name for f2 in dataclasses.fields(tfds.core.BuilderConfig)}}
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    name = f"{fields['domain']}-{fields['image_size']}px-{fields['num_train']}-{digest}"
    return cls(name=name, **fields)

  @property
  def sizes(self) -> dict[str, int]:
    return dict(image_size=self.image_size, num_surface_points=self.num_surface_points,
                num_uniform_points=self.num_uniform_points, num_near_points=self.num_near_points,
                voxel_resolution=self.voxel_resolution)


def _tensor(shape, dtype):
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)


class Recon3dSynth(tfds.core.GeneratorBasedBuilder):
  """Rendered images + depth/normal/mask + surface points, occupancy points and voxels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Primitives domain."}
  BUILDER_CONFIGS = [SynthConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    h, n, mu, mn, r = (c.image_size, c.num_surface_points, c.num_uniform_points,
                       c.num_near_points, c.voxel_resolution)
    return tfds.core.DatasetInfo(
        builder=self,
        description="Procedurally generated single-image 3D reconstruction data (viewer-centred,"
                    " unit-cube objects).",
        features=tfds.features.FeaturesDict({
            "index": np.int64,
            "image": _tensor((h, h, 3), np.uint8),
            "depth": _tensor((h, h), np.float32),
            "normal": _tensor((h, h, 3), np.float32),
            "mask": _tensor((h, h), np.uint8),
            "surface_points": _tensor((n, 3), np.float32),
            "surface_normals": _tensor((n, 3), np.float32),
            "points_uniform": _tensor((mu, 3), np.float32),
            "occ_uniform": _tensor((mu,), np.uint8),
            "points_near": _tensor((mn, 3), np.float32),
            "occ_near": _tensor((mn,), np.uint8),
            "voxels": _tensor((r, r, r), np.uint8),
            "kind": np.int32,
            "azimuth": np.float32,
            "elevation": np.float32,
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: everything is rendered.
    c = self.builder_config
    return {split: self._generate_examples(split, count) for split, count in
            (("train", c.num_train), ("validation", c.num_validation), ("test", c.num_test))}

  def _generate_examples(self, split: str, count: int):
    c = self.builder_config
    for start in range(0, count, GENERATION_CHUNK):
      indices = np.arange(start, min(start + GENERATION_CHUNK, count))
      # Pad to a fixed chunk so the jitted generator compiles once.
      padded = np.pad(indices, (0, GENERATION_CHUNK - len(indices)), mode="edge")
      keys = synth.sample_keys(c.build_seed, split, jnp.asarray(padded))
      batch = jax.device_get(synth.generate_batch(keys, domain=c.domain, **c.sizes))
      for row, index in enumerate(indices):
        example = {k: np.asarray(v[row]) for k, v in batch.items()}
        example["index"] = int(index)
        yield int(index), example
