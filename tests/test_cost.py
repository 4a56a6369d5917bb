"""cost.measure on the tiny config: keys, an independent parameter count, sane times and memory."""
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recon3d_jax import config_lib, cost, experiment, sharding

KEYS = {"params", "train_step_s", "infer_latency_b1_s", "infer_latency_batch_s",
        "peak_memory_bytes", "peak_memory_source", "platform", "device_kind", "num_devices"}


@pytest.fixture(scope="module")
def measured(tiny_config):
  """(config, model, params, params before measuring as numpy, mesh, result of measure)."""
  mesh = sharding.make_mesh()
  model, tx = experiment.build_model(tiny_config), experiment.make_optimizer(tiny_config)
  state = experiment.create_train_state(tiny_config, model, tx, mesh)
  before = jax.tree.map(np.asarray, state["params"])
  step = experiment.train_step_for(tiny_config, model, tx, mesh)
  result = cost.measure(tiny_config, model, state["params"], mesh, tx, step, repeats=2)
  return tiny_config, model, state["params"], before, mesh, result


def test_keys_and_platform(measured):
  *_, mesh, result = measured
  assert set(result) == KEYS
  assert result["platform"] == "cpu" and result["num_devices"] == mesh.size == 8
  assert result["peak_memory_source"] == "compiled_train_step"  # CPU tracks no peak.


def test_params_match_an_independent_count(measured):
  config, model, *_ = measured
  size = config.data.image_size
  # Shapes only (eval_shape): an eager init would take longer than the whole measurement.
  variables = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((1, size, size, 3)),
                             jnp.zeros((1, config.data.points_per_step, 3)))
  expected = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  assert measured[-1]["params"] == expected


def test_timings_positive_finite_and_ordered(measured):
  result = measured[-1]
  for key in ("train_step_s", "infer_latency_b1_s", "infer_latency_batch_s"):
    assert math.isfinite(result[key]) and result[key] > 0, key
  # A train step (forward + backward + update at batch 8) costs more than one forward image.
  assert result["train_step_s"] > result["infer_latency_b1_s"]


def test_memory_holds_params_and_adam_moments(measured):
  """Every device holds the replicated state: parameters and AdamW's two moments, float32."""
  result = measured[-1]
  assert result["peak_memory_bytes"] >= 3 * 4 * result["params"]


def test_caller_params_are_untouched(measured):
  _, _, params, before, _, _ = measured
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), before)


def test_compiled_peak_bytes_closed_form():
  x = jnp.ones((250, 1000), jnp.float32)  # 1e6 bytes.
  plain = jax.jit(lambda a: a * 2).lower(x).compile()
  assert cost.compiled_peak_bytes(plain) == 2_000_000  # Argument + output.
  donated = jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile()
  assert cost.compiled_peak_bytes(donated) == 1_000_000  # The output reuses the argument.


def test_median_seconds_times_the_call():
  assert 0.02 <= cost.median_seconds(lambda: time.sleep(0.02), repeats=3) < 1.0
  with pytest.raises(ValueError, match="repeats=0"):
    cost.median_seconds(lambda: None, repeats=0)


def test_batch_not_divisible_by_devices_is_an_error(measured):
  config, model, params, _, mesh, _ = measured
  bad = config_lib.apply_overrides(config, {"batch_size": 12})
  with pytest.raises(ValueError, match="batch_size=12.*multiple of the device count 8"):
    tx = experiment.make_optimizer(bad)
    cost.measure(bad, model, params, mesh, tx, experiment.train_step_for(bad, model, tx, mesh))
