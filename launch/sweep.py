"""Launches a study's sweep: python launch/sweep.py --config=configs/study/main.py[:arg] ...

    python launch/sweep.py --config=configs/study/main.py:runlocal --sweep_dir=/tmp/study \
        --backend=local --workers=2 --pack_size=4
    python launch/sweep.py --config=configs/study/main.py --sweep_dir=/data/study --backend=slurm \
        --slurm_partition=gpu --slurm_gpus=1 --slurm_array_parallelism=32
    python launch/sweep.py ... --backend=slurm --slurm_nodes=2 --slurm_tasks_per_node=4 \
        --slurm_gpus=4   # Each run on 2 nodes x 4 GPUs: 8 jax.distributed processes.
    python launch/sweep.py --config=configs/study/main.py:runlocal --sweep_dir=/tmp/study --status
    python -m recon3d_jax.study.report --sweep_dir=/tmp/study

Every override (its key, and its value as part of the run's config) is checked before anything
runs; the launcher exits non-zero if a run failed (local backend). Relaunching the same
command skips finished runs, resumes interrupted ones from their checkpoints and retries failed
ones. See recon3d_jax/study/sweeps.py for the layout of SWEEP_DIR. This process never imports JAX: the
datasets are built and the runs executed in spawned processes (or Slurm jobs).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from absl import flags, logging  # noqa: E402

from recon3d_jax import cli, config_lib  # noqa: E402
from recon3d_jax.study import sweeps  # noqa: E402

_CONFIG = flags.DEFINE_string("config", None, "Study config file[:arg].")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Directory of the sweep's runs.")
_BACKEND = flags.DEFINE_enum("backend", "local", ["local", "slurm"], "Where runs execute.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Local backend: runs at a time (CPU threads are "
                                "split evenly between them).", lower_bound=1)
_PACK_SIZE = flags.DEFINE_integer(
    "pack_size", 1, "Most runs trained as one program (recon3d_jax/packing.py): runs that differ "
    "only in seed and core arm share a process, compilation and data loading. 1: one run per "
    "process.", lower_bound=1)
_STATUS = flags.DEFINE_bool("status", False, "Print done/running/failed/pending counts and exit.")
_BUILD_DATA = flags.DEFINE_bool("build_data", True, "Build the sweep's datasets once before the "
                                "runs start.")
_SLURM_PARTITION = flags.DEFINE_string("slurm_partition", None, "Slurm partition.")
_SLURM_TIME = flags.DEFINE_integer("slurm_time_min", 240, "Slurm time limit per job (minutes); "
                                   "a job that reaches it is requeued and resumes.")
_SLURM_GPUS = flags.DEFINE_integer("slurm_gpus", 1, "GPUs per node of a job.")
_SLURM_CPUS = flags.DEFINE_integer("slurm_cpus", 8, "CPUs per task of a job.")
_SLURM_MEM = flags.DEFINE_integer("slurm_mem_gb", 32, "Memory per node of a job (GB).")
_SLURM_NODES = flags.DEFINE_integer("slurm_nodes", 1, "Nodes per job.", lower_bound=1)
_SLURM_TASKS = flags.DEFINE_integer(
    "slurm_tasks_per_node", 1, "Tasks per node of a job: a job's nodes x tasks are the "
    "jax.distributed processes of its runs (on GPUs: one per GPU, = --slurm_gpus).",
    lower_bound=1)
_SLURM_PARALLELISM = flags.DEFINE_integer("slurm_array_parallelism", 32,
                                          "Most runs of one array running at once.")
flags.mark_flags_as_required(["config", "sweep_dir"])


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; expected only --flags")
  sweep_dir = os.path.abspath(_SWEEP_DIR.value)
  try:
    if _STATUS.value:
      print(sweeps.format_status(sweep_dir))
      return
    study = sweeps.load_study(_CONFIG.value)
    sweeps.check_values(study, sweep_dir)
    manifest = sweeps.write_manifest(sweep_dir, study)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  logging.info("Sweep %s: %d runs in %s.", _CONFIG.value, len(study.runs), sweep_dir)
  if _BUILD_DATA.value:
    sweeps.prepare_data(manifest, sweep_dir)
  failed = []  # Runs that failed in this launch (the local backend waits for them).
  if _BACKEND.value == "local":
    failed = sweeps.run_local(sweep_dir, _WORKERS.value, _PACK_SIZE.value)["failed"]
  else:
    executor = sweeps.slurm_executor(
        sweep_dir, partition=_SLURM_PARTITION.value, time_min=_SLURM_TIME.value,
        gpus=_SLURM_GPUS.value, cpus=_SLURM_CPUS.value, mem_gb=_SLURM_MEM.value,
        array_parallelism=_SLURM_PARALLELISM.value, nodes=_SLURM_NODES.value,
        tasks_per_node=_SLURM_TASKS.value)
    try:
      sweeps.submit_slurm(sweep_dir, executor, _PACK_SIZE.value)
    except sweeps.SubmissionError as e:
      sys.exit(f"error: {e}")
  print(sweeps.format_status(sweep_dir))
  if failed:
    sys.exit(f"error: {len(failed)} of {len(study.runs)} runs failed (listed above)")


if __name__ == "__main__":
  cli.run(main)
