"""Tests for recon3d_jax.study.stats against scipy.stats / statsmodels and closed forms."""
import types

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from recon3d_jax.study import stats


def _mean_diff(x, y, axis=-1):
  return np.mean(x, axis=axis) - np.mean(y, axis=axis)


@pytest.fixture
def paired_data():
  rng = np.random.default_rng(1)
  return rng.gamma(2.0, size=30) + 0.3, rng.gamma(2.0, size=30)


# ----------------------------------------------------------------------------------------------
# Bootstrap CIs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_paired_bootstrap_ci_matches_scipy_within_monte_carlo_error(paired_data, method):
  x, y = paired_data
  ours = stats.paired_bootstrap_ci(x, y, rng=0, method=method)
  ref = scipy.stats.bootstrap(
      (x, y), _mean_diff, paired=True, vectorized=True, method=method, n_resamples=9999, rng=1
  ).confidence_interval
  # The endpoints' Monte-Carlo SD is ~1% of the width at B = 9999 (measured); allow ~4 SD.
  tol = 0.06 * (ref.high - ref.low)
  assert ours.low == pytest.approx(ref.low, abs=tol)
  assert ours.high == pytest.approx(ref.high, abs=tol)
  assert ours.estimate == pytest.approx(np.mean(x - y))
  assert (ours.method, ours.n, ours.n_resamples) == ("paired bootstrap", 30, 9999)
  assert ours.variant == {"bca": "BCa", "percentile": "percentile"}[method]
  assert not ours.small_n and ours.t_interval is None


@pytest.mark.parametrize("confidence_level", [0.9, 0.95])
def test_intervals_equal_scipy_on_the_same_bootstrap_distribution(paired_data, confidence_level):
  x, y = paired_data
  d = x - y
  boot = d[np.random.default_rng(2).integers(0, d.size, (2000, d.size))].mean(axis=1)
  jackknife = (d.sum() - d) / (d.size - 1)
  given = types.SimpleNamespace(bootstrap_distribution=boot)
  for method, ours in [
      ("BCa", stats.bca_interval(d.mean(), boot, jackknife, confidence_level)[:2]),
      ("percentile", stats.percentile_interval(boot, confidence_level)),
  ]:
    ref = scipy.stats.bootstrap(
        (d,), np.mean, n_resamples=0, bootstrap_result=given, method=method,
        confidence_level=confidence_level,
    ).confidence_interval
    np.testing.assert_allclose(ours, (ref.low, ref.high), rtol=1e-10)


def test_small_n_reports_paired_t_interval():
  rng = np.random.default_rng(3)
  x, y = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 1.0, 5)
  ci = stats.paired_bootstrap_ci(x, y, rng=0, n_resamples=999)
  ref = scipy.stats.ttest_rel(x, y).confidence_interval(0.95)
  assert ci.small_n
  np.testing.assert_allclose(ci.t_interval, (ref.low, ref.high), rtol=1e-12)


def test_bca_falls_back_to_percentile_when_estimate_is_outside_the_distribution():
  low, high, variant = stats.bca_interval(0.0, [1.0, 2.0, 3.0], [0.0, 1.0], 0.9)
  assert variant.startswith("percentile")
  assert (low, high) == stats.percentile_interval([1.0, 2.0, 3.0], 0.9)


def test_two_level_bootstrap_covers_the_true_difference():
  # Each seed has its own true difference (seed effect); instances add noise within a seed.
  rng = np.random.default_rng(4)
  true_diff, covered = 0.5, 0
  for rep in range(100):
    seed_effects = rng.normal(true_diff, 0.3, size=6)
    x = [rng.normal(1.0, 0.5, size=rng.integers(15, 25)) for _ in seed_effects]
    y = [xs - rng.normal(e, 0.5, size=xs.size) for xs, e in zip(x, seed_effects)]
    ci = stats.two_level_paired_bootstrap_ci(x, y, rng=rep, n_resamples=499)
    covered += ci.low <= true_diff <= ci.high
  # Percentile bootstrap over 6 seeds under-covers a little; the instance level adds width.
  assert covered >= 85
  assert ci.method.startswith("two-level") and ci.n == 6 and ci.small_n


def test_two_level_with_one_instance_per_seed_matches_single_level():
  rng = np.random.default_rng(5)
  x, y = rng.normal(1.0, 1.0, 12), rng.normal(0.0, 1.0, 12)
  two = stats.two_level_paired_bootstrap_ci([[v] for v in x], [[v] for v in y], rng=0)
  one = stats.paired_bootstrap_ci(x, y, rng=1, method="percentile")
  tol = 0.04 * (one.high - one.low)
  assert two.estimate == pytest.approx(one.estimate)
  assert two.low == pytest.approx(one.low, abs=tol)
  assert two.high == pytest.approx(one.high, abs=tol)


def test_stratified_mean_matches_hand_computation():
  values = [[1.0, 2.0, 3.0], [10.0, 20.0], []]
  ci = stats.stratified_mean_ci(values, [1.0, 3.0, 0.0], rng=0, n_resamples=999)
  assert ci.estimate == pytest.approx(0.25 * 2.0 + 0.75 * 15.0)
  assert ci.low <= ci.estimate <= ci.high
  assert ci.n == 5


def test_stratified_ci_covers_the_target_mean():
  # Target distribution over 3 strata differs from the sample's; M = sum_s w_s mu_s.
  rng = np.random.default_rng(6)
  means, weights = np.array([0.2, 0.5, 0.9]), np.array([0.5, 0.3, 0.2])
  true_m, covered = float(weights @ means), 0
  for rep in range(100):
    values = [rng.normal(mu, 0.2, size=n) for mu, n in zip(means, (30, 60, 90))]
    ci = stats.stratified_mean_ci(values, weights, rng=rep, n_resamples=499)
    covered += ci.low <= true_m <= ci.high
  # Nominal 95; percentile intervals under-cover slightly (measured ~93%).
  assert covered >= 85


# ----------------------------------------------------------------------------------------------
# Tests of a difference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("confidence_level", [0.9, 0.95])
def test_paired_t_test_matches_scipy(paired_data, alternative, confidence_level):
  x, y = paired_data
  ours = stats.paired_t_test(x, y, alternative=alternative, confidence_level=confidence_level)
  ref = scipy.stats.ttest_rel(x, y, alternative=alternative)
  ref_ci = ref.confidence_interval(confidence_level)
  assert ours.df == ref.df
  np.testing.assert_allclose(
      [ours.statistic, ours.pvalue, ours.low, ours.high],
      [ref.statistic, ref.pvalue, ref_ci.low, ref_ci.high],
      rtol=1e-12,
  )


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_exact_sign_flip_matches_scipy_permutation_test(alternative, data_seed):
  rng = np.random.default_rng(data_seed)
  # Integer-valued data, so ties between sign patterns occur and the slack is exercised.
  x, y = rng.integers(0, 6, 9).astype(float), rng.integers(0, 5, 9).astype(float)
  ours = stats.paired_permutation_test(x, y, alternative=alternative)
  ref = scipy.stats.permutation_test(
      (x, y), _mean_diff, permutation_type="samples", vectorized=True, alternative=alternative
  )
  assert ours.variant == "exact" and ours.n_permutations == 2**9
  assert ours.pvalue == ref.pvalue


def test_exact_p_floor_is_attained_when_all_differences_share_a_sign():
  x, y = np.arange(1.0, 7.0), np.zeros(6)
  res = stats.paired_permutation_test(x, y)
  assert res.p_floor == 2.0 ** (1 - 6) == res.pvalue
  assert stats.paired_permutation_test(x, y, alternative="greater").p_floor == 2.0**-6


def test_randomized_sign_flip_within_monte_carlo_error():
  rng = np.random.default_rng(7)
  x, y = rng.normal(0.5, 1.0, 14), rng.normal(0.0, 1.0, 14)
  exact = stats.paired_permutation_test(x, y)
  randomized = stats.paired_permutation_test(x, y, rng=0, max_exact=0)
  assert randomized.variant == "randomized" and randomized.p_floor == 1 / 10000
  sd = np.sqrt(exact.pvalue * (1 - exact.pvalue) / 9999)
  assert abs(randomized.pvalue - exact.pvalue) < 4 * sd + 1e-4
  with pytest.raises(ValueError, match="needs rng"):
    stats.paired_permutation_test(x, y, max_exact=0)


# ----------------------------------------------------------------------------------------------
# Multiple comparisons
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bonferroni", "holm"])
def test_adjust_pvalues_matches_statsmodels_with_nans_dropped(method):
  p = np.random.default_rng(8).uniform(0.0, 0.05, 12) ** 1.5
  p[[2, 7]] = np.nan
  valid = ~np.isnan(p)
  ours = stats.adjust_pvalues(p, method)
  ref_reject, ref_p, _, _ = multipletests(p[valid], alpha=0.05, method=method)
  assert ours.m == 10 and ours.method == method.capitalize()
  np.testing.assert_allclose(ours.pvalues[valid], ref_p, rtol=1e-12)
  np.testing.assert_array_equal(ours.reject[valid], ref_reject)
  assert np.isnan(ours.pvalues[~valid]).all() and not ours.reject[~valid].any()


def test_adjust_pvalues_rejects_out_of_range():
  with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
    stats.adjust_pvalues([0.1, 1.5], "holm")


# ----------------------------------------------------------------------------------------------
# Effect sizes and level correlation
# ----------------------------------------------------------------------------------------------


def test_cohens_d_closed_forms(paired_data):
  x, y = paired_data
  d = x - y
  d_z = stats.cohens_d(x, y, "d_z")
  d_av = stats.cohens_d(x, y, "d_av")
  assert d_z.value == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
  assert d_av.value == pytest.approx(
      d.mean() / ((x.std(ddof=1) + y.std(ddof=1)) / 2), rel=1e-12
  )
  assert (d_z.variant, d_av.variant, d_z.n) == ("d_z", "d_av", 30)


def test_level_correlation_matches_pearsonr_per_seed():
  rng = np.random.default_rng(9)
  levels = np.arange(5.0)
  metric = 0.8 - 0.05 * levels + rng.normal(0.0, 0.05, (5, 5))
  res = stats.level_correlation(metric, levels, rng=0, n_resamples=1999)
  for seed in range(5):
    ref = scipy.stats.pearsonr(levels, metric[seed])
    assert res.r[seed] == pytest.approx(ref.statistic, rel=1e-12)
    assert res.pvalue[seed] == pytest.approx(ref.pvalue, rel=1e-12)
  assert res.mean_r.estimate == pytest.approx(res.r.mean())
  assert res.mean_r.low <= res.mean_r.estimate <= res.mean_r.high
  assert res.mean_r.n == 5 and res.mean_r.small_n


def test_level_correlation_rejects_constant_seed():
  metric = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
  with pytest.raises(ValueError, match=r"constant over levels for seeds \[1\]"):
    stats.level_correlation(metric, [0, 1, 2], rng=0)


# ----------------------------------------------------------------------------------------------
# Degenerate inputs and determinism
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: stats.paired_bootstrap_ci(x, y, rng=0),
        lambda x, y: stats.paired_t_test(x, y),
        lambda x, y: stats.paired_permutation_test(x, y),
        lambda x, y: stats.cohens_d(x, y),
    ],
)
def test_single_pair_is_an_error(call):
  with pytest.raises(ValueError, match="at least 2 pairs are needed, got 1"):
    call([1.0], [0.0])


def test_single_seed_is_an_error():
  with pytest.raises(ValueError, match="at least 2 seeds are needed, got 1"):
    stats.two_level_paired_bootstrap_ci([[1.0, 2.0]], [[0.0, 1.0]], rng=0)


def test_nan_is_an_error_naming_count_and_position():
  with pytest.raises(ValueError, match=r"y has 2 NaN/inf value\(s\) at index \[1, 3\]"):
    stats.paired_bootstrap_ci([1.0, 2, 3, 4], [0.0, np.nan, 1, np.inf], rng=0)
  with pytest.raises(ValueError, match=r"x\[1\] has 1 NaN/inf value\(s\) at index \[0\]"):
    stats.two_level_paired_bootstrap_ci([[1.0], [np.nan]], [[0.0], [0.0]], rng=0)
  with pytest.raises(ValueError, match=r"metric has 1 NaN/inf value\(s\) at index \[\(1, 2\)\]"):
    stats.level_correlation([[0.1, 0.2, 0.3], [0.1, 0.2, np.nan]], [0, 1, 2], rng=0)


def test_length_mismatch_is_an_error():
  with pytest.raises(ValueError, match=r"same shape.*\(3,\) and \(2,\)"):
    stats.paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="same seeds, got 2 and 3"):
    stats.two_level_paired_bootstrap_ci([[1.0], [2.0]], [[1.0], [2.0], [3.0]], rng=0)


@pytest.mark.parametrize("c", [0.25, 0.0])
def test_constant_differences(c):
  # Dyadic values, so every difference is exactly c.
  y = np.array([0.5, 0.125, 1.0, 2.0])
  x = y + c
  for method in ["bca", "percentile"]:
    ci = stats.paired_bootstrap_ci(x, y, rng=0, method=method, n_resamples=999)
    assert ci.low == ci.high == ci.estimate
    assert ci.t_interval == (ci.estimate, ci.estimate)
  assert stats.paired_bootstrap_ci(x, y, rng=0).variant.startswith("BC (jackknife degenerate")
  t = stats.paired_t_test(x, y)
  d_z = stats.cohens_d(x, y).value
  if c:
    assert t.statistic == np.inf and t.pvalue == 0.0 and d_z == np.inf
  else:
    assert np.isnan(t.statistic) and np.isnan(t.pvalue) and np.isnan(d_z)
    assert stats.paired_permutation_test(x, y).pvalue == 1.0
    assert stats.paired_permutation_test(x, y, rng=0, max_exact=0).pvalue == 1.0


def test_stratified_rejects_positive_weight_without_data():
  with pytest.raises(ValueError, match=r"strata \[1\] have positive weight but no data"):
    stats.stratified_mean_ci([[1.0, 2.0], []], [0.5, 0.5], rng=0)


def test_same_seed_gives_identical_results(paired_data):
  x, y = paired_data
  assert stats.paired_bootstrap_ci(x, y, rng=3) == stats.paired_bootstrap_ci(x, y, rng=3)
  assert stats.paired_bootstrap_ci(
      x, y, rng=np.random.default_rng(3)
  ) == stats.paired_bootstrap_ci(x, y, rng=3)
  assert stats.paired_permutation_test(x, y, rng=3, max_exact=0) == (
      stats.paired_permutation_test(x, y, rng=3, max_exact=0)
  )
  groups = ([x[:10], x[10:]], [y[:10], y[10:]])
  assert stats.two_level_paired_bootstrap_ci(*groups, rng=3) == (
      stats.two_level_paired_bootstrap_ci(*groups, rng=3)
  )
  assert stats.stratified_mean_ci(groups[0], [1, 1], rng=3) == (
      stats.stratified_mean_ci(groups[0], [1, 1], rng=3)
  )
  assert stats.paired_bootstrap_ci(x, y, rng=3) != stats.paired_bootstrap_ci(x, y, rng=4)


# ----------------------------------------------------------------------------------------------
# Power of the paired t-test
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,effect_size", [(3, 1.5), (10, 0.5), (10, 1.2), (40, 0.3)])
def test_paired_t_power_matches_statsmodels(n, effect_size):
  from statsmodels.stats.power import TTestPower
  sd = 0.02
  expected = TTestPower().power(effect_size=effect_size, nobs=n, alpha=0.05,
                                alternative="two-sided")
  assert stats.paired_t_power(effect_size * sd, sd, n) == pytest.approx(expected, abs=1e-6)


def test_paired_t_power_matches_simulated_t_tests():
  rng = np.random.default_rng(0)
  sd, effect, n = 0.03, 0.025, 10
  d = rng.normal(effect, sd, size=(20_000, n))
  rejected = np.mean(scipy.stats.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05)
  assert stats.paired_t_power(effect, sd, n) == pytest.approx(rejected, abs=0.01)


@pytest.mark.parametrize("n", [3, 10, 25])
def test_minimum_detectable_effect_matches_statsmodels(n):
  from statsmodels.stats.power import TTestPower
  sd = 0.017
  expected = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
  assert stats.minimum_detectable_effect(sd, n) == pytest.approx(expected * sd, rel=1e-5)


def test_minimum_detectable_effect_approaches_the_normal_formula_for_many_pairs():
  sd, n = 1.0, 5000
  z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
  assert stats.minimum_detectable_effect(sd, n) == pytest.approx(z * sd / np.sqrt(n), rel=1e-3)


def test_pairs_needed_is_the_first_n_with_enough_power():
  from statsmodels.stats.power import TTestPower
  sd, effect = 0.02, 0.01
  n = stats.pairs_needed(effect, sd)
  solved = TTestPower().solve_power(effect_size=effect / sd, alpha=0.05, power=0.8)
  assert n == int(np.ceil(solved))
  assert stats.paired_t_power(effect, sd, n) >= 0.8 > stats.paired_t_power(effect, sd, n - 1)
  assert stats.pairs_needed(0.0, sd) is None
  assert stats.pairs_needed(1e-6, sd, max_n=1000) is None


@pytest.mark.parametrize("kwargs,match", [(dict(sd=0.0), "sd=0.0"), (dict(sd=np.nan), "sd=nan"),
                                          (dict(alpha=1.5), "alpha=1.5"),
                                          (dict(power=1.0), "power=1.0")])
def test_power_functions_name_bad_arguments(kwargs, match):
  args = dict(sd=0.02, alpha=0.05, power=0.8) | kwargs
  with pytest.raises(ValueError, match=match):
    stats.minimum_detectable_effect(args["sd"], 10, alpha=args["alpha"], power=args["power"])
