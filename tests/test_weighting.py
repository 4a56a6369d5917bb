"""Instance-weighting math against numpy/scipy, and its independence of the device count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from recon3d_jax import sharding, weighting

B = 16


@pytest.fixture(scope="module")
def scores():
  return np.random.default_rng(0).normal(0, 2, B).astype(np.float32)


def test_softmax_weights_match_numpy_and_sum_to_one(scores):
  for tau in (0.3, 1.0, 5.0):
    w = weighting.softmax_weights(jnp.asarray(scores), tau)
    z = np.exp(np.float64(scores) / tau)
    np.testing.assert_allclose(w, z / z.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-6)


def test_weights_become_uniform_as_temperature_grows(scores):
  gaps = [np.ptp(np.asarray(weighting.softmax_weights(jnp.asarray(scores), tau)))
          for tau in (1.0, 10.0, 1e3, 1e6)]
  assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
  np.testing.assert_allclose(weighting.softmax_weights(jnp.asarray(scores), 1e6), 1 / B,
                             rtol=1e-5)


def test_entropy_and_kl_match_scipy(scores):
  w = np.asarray(weighting.softmax_weights(jnp.asarray(scores), 1.0), np.float64)
  np.testing.assert_allclose(weighting.entropy(jnp.asarray(w)), stats.entropy(w), rtol=1e-5)
  uniform = np.full(B, 1 / B)
  np.testing.assert_allclose(weighting.kl_to_uniform(jnp.asarray(w, jnp.float32)),
                             np.sum(special.rel_entr(w, uniform)), rtol=1e-4)
  # A weight of exactly 0 contributes 0 (0 log 0 = 0), with a finite gradient.
  one_hot = jnp.zeros(B).at[3].set(1.0)
  assert float(weighting.entropy(one_hot)) == 0.0
  np.testing.assert_allclose(weighting.kl_to_uniform(one_hot), np.log(B), rtol=1e-6)
  assert np.isfinite(jax.grad(weighting.entropy)(one_hot)).all()


def test_kl_is_zero_at_uniform_and_positive_otherwise(scores):
  np.testing.assert_allclose(weighting.kl_to_uniform(jnp.full(B, 1 / B)), 0.0, atol=1e-6)
  for tau in (0.5, 2.0, 20.0):
    assert weighting.kl_to_uniform(weighting.softmax_weights(jnp.asarray(scores), tau)) > 0


def test_pearson_matches_scipy_and_is_zero_for_constant_input(scores):
  levels = np.random.default_rng(1).integers(-1, 5, B)
  np.testing.assert_allclose(weighting.pearson(jnp.asarray(scores), jnp.asarray(levels, float)),
                             stats.pearsonr(scores, levels).statistic, rtol=1e-5)
  for constant in (np.full(B, -1), np.full(B, 3)):  # All clean / all one level.
    w = weighting.softmax_weights(jnp.asarray(scores), 1.0)
    got = weighting.weight_stats(w, jnp.asarray(constant, jnp.int32))["weights/corr_level"]
    assert float(got) == 0.0
    assert np.isfinite(jax.grad(lambda x: weighting.pearson(x, constant * 1.0))(w)).all()


def test_weight_stats(scores):
  w = weighting.softmax_weights(jnp.asarray(scores), 1.0)
  levels = np.arange(B) % 5
  got = weighting.weight_stats(w, jnp.asarray(levels, jnp.int32))
  np.testing.assert_allclose(got["weights/max"], np.max(w), rtol=1e-6)
  np.testing.assert_allclose(got["weights/entropy"], stats.entropy(np.asarray(w)), rtol=1e-5)
  np.testing.assert_allclose(got["weights/corr_level"], stats.pearsonr(w, levels).statistic,
                             rtol=1e-4)


def test_one_and_eight_devices_give_identical_weights(scores):
  """The softmax over a batch sharded on 8 devices normalises over the global batch."""
  assert jax.device_count() == 8
  levels = (np.arange(B) % 5).astype(np.int32)

  def fn(s, lv):
    w = weighting.softmax_weights(s, 0.7)
    return w, weighting.kl_to_uniform(w), weighting.weight_stats(w, lv)

  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    batch = sharding.shard_batch(dict(s=scores, lv=levels), mesh)
    out = jax.jit(fn, out_shardings=sharding.replicated(mesh))(batch["s"], batch["lv"])
    results.append(jax.device_get(out))
  (w1, kl1, st1), (w8, kl8, st8) = results
  np.testing.assert_allclose(np.sum(w8), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w1, w8, rtol=1e-6)
  np.testing.assert_allclose(kl1, kl8, rtol=1e-5, atol=1e-7)
  for key in st1:
    np.testing.assert_allclose(st1[key], st8[key], rtol=1e-5, err_msg=key)


def test_scaled_weight_by_level_against_numpy(scores):
  w = np.asarray(weighting.softmax_weights(jnp.asarray(scores), 1.0))
  levels = np.arange(B) % 3  # Levels 0, 1, 2 present; 3 and 4 absent.
  got = np.asarray(weighting.scaled_weight_by_level(jnp.asarray(w), jnp.asarray(levels), 5))
  for level in range(3):
    np.testing.assert_allclose(got[level], np.mean(B * w[levels == level]), rtol=1e-5)
  assert np.isnan(got[3:]).all()
  named = weighting.weight_stats(jnp.asarray(w), jnp.asarray(levels), ("a", "b", "c"))
  np.testing.assert_allclose(named["weights/scaled_b"], got[1], rtol=1e-6)
