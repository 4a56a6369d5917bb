"""Cost of the nine registered encoders at the default config, via recon3d_jax.cost.measure.

    python benchmarks/architectures.py [--config=configs/default.py] [--repeats=3]
        [--encoders=resnet10,vit_s] [--image_size=128]

For each encoder (models.ENCODERS) the config's model is built with that encoder and freshly
initialised parameters; the rest of the config (widths, batch, points, arm) is unchanged. Prints
one JSON object per encoder (machine-readable), then a Markdown table of the same numbers.
Encoders are measured one after another, so compare them within one run.
"""
import json

import jax
from absl import app, flags
from ml_collections import config_flags

from recon3d_jax import config_lib, cost, experiment, models, sharding

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per measurement (after a warm-up).")
_ENCODERS = flags.DEFINE_list("encoders", sorted(models.ENCODERS), "Encoders to measure.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image size (default: the config's).")


def markdown_table(rows: list[dict]) -> str:
  """cost.measure rows (with an `encoder` key) -> a Markdown table."""
  lines = ["| encoder | params | train step (s) | inference b=1 (ms) | inference b=B (ms) | "
           "peak memory (MiB) |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['encoder']} | {r['params']:,} | {r['train_step_s']:.3f} | "
                 f"{1e3 * r['infer_latency_b1_s']:.1f} | {1e3 * r['infer_latency_batch_s']:.1f} "
                 f"| {r['peak_memory_bytes'] / 2**20:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  unknown = sorted(set(_ENCODERS.value) - set(models.ENCODERS))
  if unknown:
    raise app.UsageError(f"--encoders: unknown {unknown}; expected names among "
                         f"{sorted(models.ENCODERS)}")
  config = _CONFIG.value
  if _IMAGE_SIZE.value:
    config = config_lib.apply_overrides(config, {"data.image_size": _IMAGE_SIZE.value})
  mesh = sharding.make_mesh()
  rows = []
  for name in _ENCODERS.value:
    c = config_lib.apply_overrides(config, {"model.encoder": name})
    model, tx = experiment.build_model(c), experiment.make_optimizer(c)
    params = experiment.create_train_state(c, model, tx, mesh)["params"]
    row = dict(benchmark="architecture_cost", encoder=name, image_size=c.data.image_size,
               batch_size=c.batch_size, eval_batch_size=c.eval.batch_size,
               points_per_step=c.data.points_per_step, arm=c.arm,
               **cost.measure(c, model, params, mesh, tx,
                              experiment.train_step_for(c, model, tx, mesh),
                              repeats=_REPEATS.value))
    print(json.dumps(row), flush=True)
    rows.append(row)
    del params
    jax.clear_caches()  # Nine models' executables need not stay in memory.
  print(markdown_table(rows))


if __name__ == "__main__":
  app.run(main)
