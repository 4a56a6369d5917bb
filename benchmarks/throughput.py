"""Throughput of the default config on this machine: dataset rendering and train steps.

    python benchmarks/throughput.py [--config=configs/default.py[:arg]] [--repeats=5]

Prints one JSON object per measurement (machine-readable). Rendering includes all 3D ground
truth (surface samples, occupancy points, voxels); train steps use the default model, batch and
resolution on a synthetic batch of the right shapes (the input pipeline is measured separately
by the rendering figure and is not the bottleneck).
"""
import json
import platform
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from recon3d_jax import cost, experiment, sharding
from recon3d_jax.data import builder

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Config file.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (after one warm-up).")


def _time(fn, repeats: int) -> list[float]:
  jax.block_until_ready(fn())  # Warm-up: compilation.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def rendering(config, repeats: int) -> dict:
  generator = builder.Generator(builder.SynthConfig.from_data_config(config.data))
  indices = np.arange(generator.chunk)  # One call of the builder.
  times = _time(lambda: generator.generate("train", indices), repeats)
  return dict(benchmark="render_samples_per_s", dataset=generator.config.name,
              value=generator.chunk / float(np.median(times)), times_s=times)


def train_step(config, repeats: int) -> dict:
  mesh = sharding.make_mesh()
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  state = experiment.create_train_state(config, model, tx, mesh)
  step = experiment.jit_train_step(
      experiment.make_train_step(model, tx, experiment.loss_weights_for(config)), mesh)
  b, h, m = config.batch_size, config.data.image_size, config.data.points_per_step
  batch = sharding.shard_batch(cost.synthetic_batch(config, b), mesh)
  holder = {"state": state}

  def run():
    holder["state"], stats = step(holder["state"], batch)
    return stats

  times = _time(run, repeats)
  return dict(benchmark="train_images_per_s", encoder=config.model.encoder, batch_size=b,
              image_size=h, points_per_step=m, params=experiment.count_params(state["params"]),
              value=b / float(np.median(times)), step_s_median=float(np.median(times)),
              times_s=times)


def main(argv):
  del argv
  machine = dict(platform=platform.platform(), devices=[str(d) for d in jax.devices()])
  print(json.dumps(dict(benchmark="machine", **machine)))
  print(json.dumps(rendering(_CONFIG.value, _REPEATS.value)))
  print(json.dumps(train_step(_CONFIG.value, _REPEATS.value)))


if __name__ == "__main__":
  app.run(main)
