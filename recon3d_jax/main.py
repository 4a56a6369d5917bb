"""Entry point: python -m recon3d_jax.main --config=configs/default.py[:arg] --workdir=DIR.

`--config.key=value` overrides any config field; unknown keys are rejected. Re-running the same
command resumes from the workdir's latest checkpoint.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from recon3d_jax import config_lib, train, writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; expected only --flags")
  writers.setup_logging()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
