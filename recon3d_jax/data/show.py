r"""A visual check of a benchmark: renders a few samples (no dataset build needed) into a PNG.

    python -m recon3d_jax.data.show --benchmark=compounds --out=compounds.png
    python -m recon3d_jax.data.show --benchmark=meshes --levels --out=levels.png

Without --levels: one row per sample with image, depth, normals, mask, the 3D surface points and
the voxels. With --levels: the first sample's depth and normal training targets, clean and at
each of the five supervision levels (corrupt.py; holes drawn white).
"""
from __future__ import annotations

import os

import numpy as np
from absl import flags, logging

from recon3d_jax import cli, visualize
from recon3d_jax.config_lib import ConfigError
from recon3d_jax.data import benchmarks, builder, corrupt, pipeline

FLAGS = flags.FLAGS



def render_samples(benchmark: str, image_size: int, split: str, num: int,
                   mesh_dir: str = "") -> dict[str, np.ndarray]:
  """The first `num` records of a split of the benchmark, exactly as the builder makes them."""
  spec = dict(benchmarks.DEFAULT_SIZES, benchmark=benchmark, image_size=image_size,
              build_seed=0, mesh_dir=mesh_dir, on_bad_mesh="skip")
  generator = builder.Generator(builder.SynthConfig.from_data_config(spec))
  return generator.generate(split, np.arange(num))


def level_targets(record: dict, seed: int = 0) -> dict[str, dict]:
  """Clean and per-level 2.5D targets of one record, as the training loader corrupts them."""
  mask = record["mask"].astype(np.float32)
  clean = dict(depth=record["depth"], depth_valid=mask, normal=record["normal"],
               normal_valid=mask)
  targets = {"clean": clean}
  for level, name in enumerate(corrupt.LEVELS):
    depth, depth_valid, normal, normal_valid = pipeline.corrupt_targets(
        record["depth"], record["normal"], mask, level, np.random.default_rng([seed, level]))
    targets[name] = dict(depth=depth, depth_valid=depth_valid, normal=normal,
                         normal_valid=normal_valid)
  return targets


def _define_flags() -> None:
  """Defined when run as a command, so notebooks and tests can import this module."""
  flags.DEFINE_string("benchmark", None, "Benchmark name (data/benchmarks.py).")
  flags.DEFINE_integer("image_size", 64, "Image size.")
  flags.DEFINE_enum("split", "train", list(builder.SPLITS), "Split to draw from.")
  flags.DEFINE_integer("num", 6, "Samples to show.")
  flags.DEFINE_bool("levels", False, "Show the targets at every supervision level.")
  flags.DEFINE_string("out", "show.png", "Output PNG.")
  flags.DEFINE_string("mesh_dir", "", "Mesh folder ('' = bundled assets/meshes).")


def main(argv) -> None:
  cli.no_arguments(argv)
  if FLAGS.benchmark is None or FLAGS.benchmark not in benchmarks.BENCHMARKS:
    raise ConfigError(f"--benchmark={FLAGS.benchmark!r}: expected one of "
                      f"{sorted(benchmarks.BENCHMARKS)}")
  if FLAGS.num < 1 or FLAGS.num > builder.GENERATION_CHUNK:
    raise ConfigError(f"--num={FLAGS.num}: expected 1..{builder.GENERATION_CHUNK}")
  if FLAGS.image_size <= 0 or FLAGS.image_size % 16:
    raise ConfigError(f"--image_size={FLAGS.image_size}: expected a positive multiple of 16")
  if FLAGS.mesh_dir and not os.path.isdir(FLAGS.mesh_dir):
    raise ConfigError(f"--mesh_dir={FLAGS.mesh_dir!r}: expected an existing folder of "
                      ".off/.obj/.ply meshes (or '' for the bundled ones)")
  records = render_samples(FLAGS.benchmark, FLAGS.image_size, FLAGS.split, FLAGS.num,
                           FLAGS.mesh_dir)
  title = f"{FLAGS.benchmark}-{FLAGS.image_size}, {FLAGS.split} split"
  if FLAGS.levels:
    first = {k: v[0] for k, v in records.items()}
    visualize.save_level_grid(FLAGS.out, first, level_targets(first),
                              f"{title}, instance 0: 2.5D training targets by level")
  else:
    visualize.save_sample_grid(FLAGS.out, records, title)
  logging.info("Wrote %s", FLAGS.out)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
