"""Entry point: python -m recon3d_jax.main --config=configs/default.py[:arg] --workdir=DIR.

`--config.key=value` overrides any config field; unknown keys are rejected. Re-running the same
command resumes from the workdir's latest checkpoint. Errors end in one line (recon3d_jax/cli.py).
One run over several processes (hosts): the same command in each, with --coordinator_address,
--num_processes and --process_id, or as the tasks of a Slurm job step (recon3d_jax/distributed.py).
"""
from absl import flags, logging
from ml_collections import config_flags

from recon3d_jax import cli, distributed, train, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "HOST:PORT where process 0 serves jax.distributed (several "
    "processes; unset: from Slurm's environment, or one process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes of the run (with "
                                      "--coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0 to "
                                   "num_processes - 1 (with --coordinator_address).")
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", distributed.DEFAULT_TIMEOUT_S, "Seconds the processes wait for "
    "the coordinator and for each other before failing.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  cli.no_arguments(argv)
  writers.setup_logging()
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         _TIMEOUT.value)
  if not distributed.is_writer():
    logging.set_verbosity(logging.WARNING)  # Process 0 logs the run; the others only problems.
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
