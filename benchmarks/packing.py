"""Packed training vs separate runs: per-model train-step time, compile time and memory.

    python benchmarks/packing.py [--config=configs/study/main.py:runlocal] [--ks=1,2,4]
        [--steps=20]

For each K: K separate jitted steps (one program per run, as separate processes run them, timed
one after another), and one packed step over K models (experiment.make_packed_train_step), in
this process, side by side. Prints one JSON object
per measurement: seconds per model-step (median of `steps` timed steps after a warm-up), the
first call's seconds (compilation), and the compiled program's temporary memory. Synthetic
batches of the run's shapes; the models are the core arms (loss weights differ, programs equal).
"""
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from recon3d_jax import arms, config_lib, cost, experiment, sharding  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/study/main.py:runlocal",
                                          "Base config of the packed runs.")
_KS = flags.DEFINE_list("ks", ["1", "2", "4"], "Numbers of models per pack.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement (after one warm-up).")


def _timed(step, state, batch, steps: int) -> tuple[float, float]:
  """(first call's seconds, median seconds of the next `steps` calls)."""
  start = time.perf_counter()
  state, stats = step(state, batch)
  jax.block_until_ready(stats)
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, stats = step(state, batch)
    jax.block_until_ready(stats)
    times.append(time.perf_counter() - start)
  return first, float(np.median(times))


def _temp_bytes(jitted, *args) -> int:
  analysis = jitted.lower(*args).compile().memory_analysis()
  return int(getattr(analysis, "temp_size_in_bytes", -1)) if analysis else -1


def measure(base, k: int, steps: int) -> list[dict]:
  mesh = sharding.make_mesh()
  configs = [config_lib.apply_overrides(base, {"seed": i // 4, "arm": arms.core_arms()[i % 4]})
             for i in range(k)]
  model, tx = experiment.build_model(base), experiment.make_optimizer(base)
  init = experiment.init_fn(base, model, tx, mesh)
  batch = cost.synthetic_batch(base, base.batch_size)
  common = dict(k=k, batch_size=base.batch_size, image_size=base.data.image_size,
                points_per_step=base.data.points_per_step, steps=steps,
                backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                machine=platform.processor() or platform.machine())
  rows = []

  # K separate runs: each its own jitted program (compiled K times, as K processes would).
  firsts, medians = [], []
  for c in configs:
    step = experiment.train_step_for(c, model, tx, mesh)
    first, median = _timed(step, init(c.seed), sharding.shard_batch(batch, mesh), steps)
    firsts.append(first)
    medians.append(median)
  rows.append(dict(common, mode="separate", s_per_model_step=float(np.mean(medians)),
                   first_call_s=float(np.sum(firsts))))

  # One pack: every model reads its own stream (the worst case: no stream shared).
  packed_batch = sharding.shard_batch({n: np.stack([x] * k) for n, x in batch.items()}, mesh,
                                      axis=1)
  step = experiment.packed_train_step_for(configs, model, tx, mesh, list(range(k)))
  states = jax.tree.map(lambda *x: jax.numpy.stack(x), *[init(c.seed) for c in configs])
  raw = jax.jit(experiment.make_packed_train_step(model, tx, list(range(k))))
  weights = {t: np.zeros((k,), np.float32) for t in experiment.loss_weights_for(base)}
  memory = _temp_bytes(raw, states, packed_batch, weights)
  first, median = _timed(step, states, packed_batch, steps)
  rows.append(dict(common, mode="packed", s_per_model_step=median / k, first_call_s=first,
                   temp_bytes=memory))
  return rows


def main(argv) -> None:
  del argv
  for k in map(int, _KS.value):
    for row in measure(_CONFIG.value, k, _STEPS.value):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
