"""Entry point: python -m recon3d_jax.main --config=configs/default.py[:arg] --workdir=DIR.

`--config.key=value` overrides any config field; unknown keys are rejected. Re-running the same
command resumes from the workdir's latest checkpoint. Errors end in one line (recon3d_jax/cli.py).
"""
from absl import flags
from ml_collections import config_flags

from recon3d_jax import cli, train, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  cli.no_arguments(argv)
  writers.setup_logging()
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
