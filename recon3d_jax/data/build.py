r"""Builds named benchmarks into a TFDS data dir (idempotent; safe to interrupt).

    python -m recon3d_jax.data.build --benchmark=primitives --data_dir=./data_dir
    python -m recon3d_jax.data.build --benchmark=all --image_sizes=64,128 --workers=2

A finished dataset is reported as such and not rebuilt. TFDS writes each dataset into an
`incomplete.*` folder and renames it when done, so an interrupted build is simply started again
and never loads as complete. With --workers > 1, datasets build in parallel spawned processes
(one dataset per process, XLA limited to its share of the cores).
"""
from __future__ import annotations

import multiprocessing
import os
import time

from absl import flags, logging

from recon3d_jax import cli
from recon3d_jax.config_lib import ConfigError
from recon3d_jax.data import benchmarks

FLAGS = flags.FLAGS



def dataset_specs(names: str, image_sizes: str, data_dir: str, **overrides) -> list[dict]:
  """Expands the flags into one `config.data`-like dict per dataset to build."""
  chosen = list(benchmarks.BENCHMARKS) if names == "all" else names.split(",")
  unknown = [name for name in chosen if name not in benchmarks.BENCHMARKS]
  if unknown:
    raise ConfigError(f"--benchmark={names!r}: unknown {unknown}; expected 'all' or names among "
                      f"{sorted(benchmarks.BENCHMARKS)}")
  try:
    sizes = [int(s) for s in image_sizes.split(",")]
  except ValueError:
    raise ConfigError(f"--image_sizes={image_sizes!r}: expected comma-separated integers") from None
  if any(s <= 0 or s % 16 for s in sizes):
    raise ConfigError(f"--image_sizes={image_sizes!r}: expected positive multiples of 16")
  if not data_dir:
    raise ConfigError("--data_dir='': expected the folder to build the datasets in")
  base = dict(benchmarks.DEFAULT_SIZES, build_seed=0, mesh_dir="", on_bad_mesh="fail",
              data_dir=data_dir)
  base.update(overrides)
  return [dict(base, benchmark=name, image_size=size) for name in chosen for size in sizes]


def build(spec: dict) -> tuple[str, str, float]:
  """Builds one dataset unless it is complete -> (config name, 'built'|'exists', seconds)."""
  from recon3d_jax.data import builder as builder_lib  # Imported in the worker process.
  config = builder_lib.SynthConfig.from_data_config(spec)
  dataset = builder_lib.make_builder(config, spec["data_dir"])
  if dataset.is_prepared():
    return config.name, "exists", 0.0
  start = time.perf_counter()
  dataset.download_and_prepare()
  return config.name, "built", time.perf_counter() - start


def _limit_threads(workers: int) -> None:
  """Each of `workers` processes gets its share of the cores (inherited by spawned children)."""
  threads = max(1, (os.cpu_count() or 1) // workers)
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
                             f" intra_op_parallelism_threads={threads}").strip()


def _define_flags() -> None:
  """Defined when run as a command, so notebooks and tests can import this module."""
  flags.DEFINE_string("benchmark", None,
                      "Benchmark name, comma-separated names, or 'all' (data/benchmarks.py).")
  flags.DEFINE_string("image_sizes", "64", "Comma-separated image sizes.")
  flags.DEFINE_string("data_dir", "./data_dir", "TFDS data dir.")
  flags.DEFINE_integer("workers", 1, "Datasets built in parallel processes.", lower_bound=1)
  flags.DEFINE_integer("num_train", benchmarks.DEFAULT_SIZES["num_train"],
                       "Training-set size (the registered default unless set).", lower_bound=1)
  flags.DEFINE_enum("on_bad_mesh", "fail", ["fail", "skip"],
                    "What to do with a mesh that cannot be used.")
  flags.DEFINE_string("mesh_dir", "",
                      "Mesh folder for `meshes` benchmarks ('' = the bundled assets/meshes).")


def main(argv) -> None:
  cli.no_arguments(argv)
  if FLAGS.benchmark is None:
    raise ConfigError(f"--benchmark is required: a name, names, or 'all'; valid names: "
                      f"{sorted(benchmarks.BENCHMARKS)}")
  specs = dataset_specs(FLAGS.benchmark, FLAGS.image_sizes, FLAGS.data_dir,
                        num_train=FLAGS.num_train, on_bad_mesh=FLAGS.on_bad_mesh,
                        mesh_dir=FLAGS.mesh_dir)
  logging.info("Building %d dataset(s) into %s with %d worker(s)", len(specs), FLAGS.data_dir,
               FLAGS.workers)
  start = time.perf_counter()
  if FLAGS.workers > 1:
    _limit_threads(FLAGS.workers)
    with multiprocessing.get_context("spawn").Pool(FLAGS.workers) as pool:
      results = pool.imap_unordered(build, specs)
      for done, (name, status, seconds) in enumerate(results, 1):
        logging.info("[%d/%d] %s: %s (%.1f s)", done, len(specs), name, status, seconds)
  else:
    for done, spec in enumerate(specs, 1):
      name, status, seconds = build(spec)
      logging.info("[%d/%d] %s: %s (%.1f s)", done, len(specs), name, status, seconds)
  logging.info("All %d dataset(s) ready in %.1f s", len(specs), time.perf_counter() - start)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
