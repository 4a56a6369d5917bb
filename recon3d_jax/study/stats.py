"""Statistics for comparing arms over seeds and instances (docs/DESIGN.md section 8).

Pure numpy/scipy functions of arrays: nothing here reads configs or flags or uses JAX.

Conventions:
- Paired data are two arrays `x`, `y` of shape (n,): `x[i]` and `y[i]` are the same unit (a seed,
  or a seed/instance) under two arms. Differences are always `x - y`.
- Confidence intervals are two-sided and equal-tailed at `confidence_level`.
- Randomness comes only from `rng`: a `numpy.random.Generator`, or an int seed passed to
  `numpy.random.default_rng`. The same inputs and seed give identical results.
- Results are frozen dataclasses that name the method, the variant and n, so a report can print
  e.g. "paired bootstrap (BCa), n=5" and "Holm-corrected".

Degenerate inputs:
- Fewer than 2 pairs (or seeds): ValueError saying at least 2 are needed.
- NaN or inf in the data: ValueError giving how many and where. There is no `nan_policy`: a
  missing run should be noticed, not silently dropped. P-values given to `adjust_pvalues` are the
  exception: NaNs there are skipped (see that function).
- Paired arrays of different shapes: ValueError giving both shapes.
- Zero variance (all differences exactly equal c): bootstrap CIs and the t-interval collapse to the point
  c; BCa then reports the variant "BC" (the jackknife is degenerate, so the acceleration is 0);
  the t statistic and d_z are +-inf for c != 0 and nan for c == 0 (0/0 is undefined, as in
  scipy.stats.ttest_rel); the permutation p-value is 1 when all differences are 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats
from numpy.typing import ArrayLike

# Below this many pairs (or seeds) a Student t-interval is reported beside each bootstrap CI:
# bootstrap intervals under-cover badly at n = 3-5.
SMALL_N = 10

# Resampling works in batches of about this many array elements to bound memory.
_BATCH_ELEMENTS = 2**20

_ALTERNATIVES = ("two-sided", "greater", "less")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BootstrapCI:
  """Bootstrap confidence interval of a mean (or mean difference).

  `method` names the resampling scheme (e.g. "paired bootstrap"), `variant` the interval
  ("BCa", "percentile" or a named fallback), `n` the number of resampled units at the top level
  (pairs, seeds, or instances for the stratified metric). When `small_n` is true (n < SMALL_N),
  `t_interval` is the Student t-interval of the same mean, to report beside the bootstrap one.
  """

  estimate: float
  low: float
  high: float
  confidence_level: float
  n: int
  n_resamples: int
  method: str
  variant: str
  small_n: bool = False
  t_interval: tuple[float, float] | None = None


@dataclasses.dataclass(frozen=True)
class TTestResult:
  """Paired t-test of mean(x - y) = 0 with the matching confidence interval of the mean."""

  estimate: float
  statistic: float
  df: int
  pvalue: float
  low: float
  high: float
  confidence_level: float
  alternative: str
  n: int
  method: str = "paired t-test"


@dataclasses.dataclass(frozen=True)
class PermutationTestResult:
  """Sign-flip permutation test of mean(x - y).

  `variant` is "exact" (all 2^n sign flips) or "randomized" (`n_permutations` random ones).
  `p_floor` is the smallest p-value the test can return: 2^(1-n) two-sided and 2^-n one-sided
  when exact, 1/(B+1) when randomized. A p-value at the floor means "as small as n allows".
  """

  statistic: float
  pvalue: float
  p_floor: float
  n: int
  n_permutations: int
  alternative: str
  variant: str
  method: str = "paired sign-flip permutation test"


@dataclasses.dataclass(frozen=True, eq=False)
class AdjustedPValues:
  """Multiplicity-adjusted p-values, (k,) in input order; NaN where the input was NaN.

  `m` is the number of tests counted (non-NaN inputs); `reject` is adjusted p <= `alpha`.
  """

  pvalues: np.ndarray
  reject: np.ndarray
  method: str
  m: int
  alpha: float


@dataclasses.dataclass(frozen=True)
class EffectSize:
  """Standardised mean difference of paired data; `variant` is "d_z" or "d_av"."""

  value: float
  variant: str
  n: int
  method: str = "Cohen's d"


@dataclasses.dataclass(frozen=True, eq=False)
class LevelCorrelation:
  """Pearson correlation of supervision level vs a metric, per seed, and its mean over seeds.

  `r` and `pvalue` have shape (seeds,): each seed's r and two-sided p. `mean_r` is the mean of
  the per-seed r with a bootstrap CI over seeds (seed x level points are not independent).
  """

  r: np.ndarray
  pvalue: np.ndarray
  mean_r: BootstrapCI


# ----------------------------------------------------------------------------------------------
# Bootstrap intervals from a bootstrap distribution
# ----------------------------------------------------------------------------------------------


def percentile_interval(bootstrap: ArrayLike, confidence_level: float) -> tuple[float, float]:
  """Percentile interval: the alpha/2 and 1 - alpha/2 quantiles of `bootstrap` (B,)."""
  alpha = (1 - confidence_level) / 2
  low, high = np.quantile(np.asarray(bootstrap, dtype=float), [alpha, 1 - alpha])
  return float(low), float(high)


def bca_interval(
    estimate: float, bootstrap: ArrayLike, jackknife: ArrayLike, confidence_level: float
) -> tuple[float, float, str]:
  """Bias-corrected and accelerated interval (Efron & Tibshirani 1993, ch. 14).

  Args:
    estimate: the statistic on the original data.
    bootstrap: (B,) the statistic on each bootstrap resample.
    jackknife: (n,) the statistic with each observation left out in turn; it gives the
      acceleration.
    confidence_level: e.g. 0.95.

  Returns:
    (low, high, variant). `variant` is "BCa", or names the fallback taken:
    "BC (jackknife degenerate: acceleration 0)" when all jackknife values are equal, and
    "percentile (BCa undefined: estimate outside the bootstrap distribution)" when the bias
    correction is infinite.
  """
  bootstrap = np.asarray(bootstrap, dtype=float)
  jackknife = np.asarray(jackknife, dtype=float)
  # Ties count half, as in scipy.stats.bootstrap; matters for small n where means repeat.
  rank = np.count_nonzero(bootstrap < estimate) + np.count_nonzero(bootstrap <= estimate)
  z0 = scipy.special.ndtri(rank / (2 * bootstrap.size))
  if not np.isfinite(z0):
    low, high = percentile_interval(bootstrap, confidence_level)
    return low, high, "percentile (BCa undefined: estimate outside the bootstrap distribution)"
  if np.ptp(jackknife) == 0:
    accel, variant = 0.0, "BC (jackknife degenerate: acceleration 0)"
  else:
    u = jackknife.mean() - jackknife
    accel, variant = np.sum(u**3) / (6 * np.sum(u**2) ** 1.5), "BCa"
  alpha = (1 - confidence_level) / 2
  z = scipy.special.ndtri(np.array([alpha, 1 - alpha]))
  levels = scipy.special.ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
  low, high = np.quantile(bootstrap, levels)
  return float(low), float(high), variant


# ----------------------------------------------------------------------------------------------
# Bootstrap CIs
# ----------------------------------------------------------------------------------------------


def bootstrap_mean_ci(
    values: ArrayLike,
    *,
    rng: np.random.Generator | int,
    method: str = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> BootstrapCI:
  """Bootstrap CI of the mean of `values` (n,), e.g. one arm's metric over seeds.

  `method` is "bca" or "percentile". For n < SMALL_N the t-interval is reported beside it.
  """
  values = _finite("values", values)
  _require_two(values.size, "values")
  return _mean_ci(values, "bootstrap", method, confidence_level, n_resamples, rng)


def paired_bootstrap_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    rng: np.random.Generator | int,
    method: str = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> BootstrapCI:
  """Bootstrap CI of mean(x - y) over pairs; x, y: (n,).

  Pairs are resampled together, which is the bootstrap of the differences. `method` is "bca"
  (jackknife acceleration) or "percentile". For n < SMALL_N the paired t-interval is reported
  beside it (`small_n=True`).
  """
  d = _differences(x, y)
  return _mean_ci(d, "paired bootstrap", method, confidence_level, n_resamples, rng)


def two_level_paired_bootstrap_ci(
    x: Sequence[ArrayLike],
    y: Sequence[ArrayLike],
    *,
    rng: np.random.Generator | int,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> BootstrapCI:
  """Hierarchical bootstrap CI of the mean difference: resample seeds, then instances.

  Args:
    x, y: sequences over seeds; `x[s]`, `y[s]` have shape (n_s,): the per-instance metric of
      seed s under the two arms (instance i of seed s is one pair). n_s may differ by seed.

  The statistic is the mean over seeds of the per-seed mean difference (every seed weighs the
  same, as seeds are the replicates; it is the grand mean when all n_s are equal). A resample
  draws S seeds with replacement and then, independently for each draw, n_s of that seed's
  instances with replacement. Percentile interval; `n` is the number of seeds, and for
  n < SMALL_N the t-interval over per-seed mean differences is reported beside it.
  """
  _check_level(confidence_level)
  _check_resamples(n_resamples)
  diffs = _paired_groups(x, y)
  gen = _generator(rng)
  n_seeds = len(diffs)
  picks = gen.integers(0, n_seeds, size=(n_resamples, n_seeds))
  draw_means = np.empty((n_resamples, n_seeds))
  for seed, d in enumerate(diffs):
    drawn = picks == seed
    draw_means[drawn] = _resample_means(d, int(drawn.sum()), gen)
  seed_means = np.array([d.mean() for d in diffs])
  low, high = percentile_interval(draw_means.mean(axis=1), confidence_level)
  return _bootstrap_ci(
      seed_means, float(seed_means.mean()), low, high, confidence_level, n_resamples,
      "two-level paired bootstrap (seeds, then instances)", "percentile",
  )


def stratified_mean_ci(
    values: Sequence[ArrayLike],
    weights: ArrayLike,
    *,
    rng: np.random.Generator | int,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> BootstrapCI:
  """Importance-weighted metric M = sum_s w_s mu_s over strata, with a bootstrap CI.

  Args:
    values: sequence over strata; `values[s]` (n_s,) holds the per-instance metric in stratum s
      (empty is allowed when its weight is 0).
    weights: (strata,) non-negative target probability of each stratum; normalised to sum 1.

  mu_s is the stratum mean. Resampling is within strata (each keeps its n_s), so the CI reflects
  only within-stratum sampling noise; a stratum with one instance contributes none. Percentile
  interval; `n` is the total number of instances in strata with positive weight.
  """
  _check_level(confidence_level)
  _check_resamples(n_resamples)
  strata = [_finite(f"values[{s}]", v) for s, v in enumerate(values)]
  w = _finite("weights", weights)
  if w.size != len(strata):
    raise ValueError(f"weights has {w.size} entries but there are {len(strata)} strata")
  if np.any(w < 0) or w.sum() == 0:
    raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
  w = w / w.sum()
  active = np.flatnonzero(w > 0)
  empty = [int(s) for s in active if strata[s].size == 0]
  if empty:
    raise ValueError(f"strata {empty} have positive weight but no data")
  gen = _generator(rng)
  estimate = sum(w[s] * strata[s].mean() for s in active)
  boot = sum(w[s] * _resample_means(strata[s], n_resamples, gen) for s in active)
  low, high = percentile_interval(boot, confidence_level)
  return BootstrapCI(
      estimate=float(estimate), low=low, high=high, confidence_level=confidence_level,
      n=int(sum(strata[s].size for s in active)), n_resamples=n_resamples,
      method="stratified importance-weighted bootstrap (within strata)", variant="percentile",
  )


# ----------------------------------------------------------------------------------------------
# Hypothesis tests
# ----------------------------------------------------------------------------------------------


def paired_t_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    confidence_level: float = 0.95,
    alternative: str = "two-sided",
) -> TTestResult:
  """Paired t-test of mean(x - y) = 0 and its confidence interval; x, y: (n,).

  Same numbers as scipy.stats.ttest_rel and its confidence_interval(); with zero variance the
  interval is the point and t is +-inf (p = 0) or nan (all differences 0, p = nan).
  `alternative` "greater" means mean(x - y) > 0; one-sided intervals are open on one side.
  """
  _check_level(confidence_level)
  _check_choice("alternative", alternative, _ALTERNATIVES)
  d = _differences(x, y)
  t, p, low, high = _t_test(d, confidence_level, alternative)
  return TTestResult(
      estimate=float(d.mean()), statistic=t, df=d.size - 1, pvalue=p, low=low, high=high,
      confidence_level=confidence_level, alternative=alternative, n=d.size,
  )


def paired_permutation_test(
    x: ArrayLike,
    y: ArrayLike,
    *,
    alternative: str = "two-sided",
    rng: np.random.Generator | int | None = None,
    n_resamples: int = 9999,
    max_exact: int = 2**16,
) -> PermutationTestResult:
  """Sign-flip permutation test of mean(x - y) = 0; x, y: (n,).

  Under the null each difference is as likely to have either sign. The statistic is mean(x - y).
  Exact (all 2^n sign vectors, p = count / 2^n) when 2^n <= `max_exact`; otherwise randomized
  with `n_resamples` random sign vectors and p = (count + 1) / (B + 1), which needs `rng`.
  Two-sided counts |mean| >= |observed|; "greater" means mean(x - y) > 0. All-zero differences
  give p = 1. See `PermutationTestResult.p_floor` for the smallest attainable p.
  """
  _check_resamples(n_resamples)
  _check_choice("alternative", alternative, _ALTERNATIVES)
  d = _differences(x, y)
  n = d.size
  observed = float(d.mean())
  if 2**n <= max_exact:
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    count = _count_extreme(signs @ d / n, observed, alternative)
    # The identity (and, two-sided, the all-flipped) sign vector always counts.
    p_floor = 2.0 ** (1 - n) if alternative == "two-sided" else 2.0**-n
    return PermutationTestResult(
        statistic=observed, pvalue=count / 2**n, p_floor=p_floor, n=n, n_permutations=2**n, alternative=alternative, variant="exact",
    )
  if rng is None:
    raise ValueError(
        f"2^{n} sign flips exceed max_exact={max_exact}, so the test is randomized and needs "
        "rng (a numpy.random.Generator or an int seed)"
    )
  gen = _generator(rng)
  count = 0
  for size in _batch_sizes(n_resamples, n):
    signs = 1 - 2 * gen.integers(0, 2, size=(size, n))
    count += _count_extreme(signs @ d / n, observed, alternative)
  return PermutationTestResult(
      statistic=observed, pvalue=(count + 1) / (n_resamples + 1), p_floor=1 / (n_resamples + 1),
      n=n, n_permutations=n_resamples, alternative=alternative, variant="randomized",
  )


# ----------------------------------------------------------------------------------------------
# Multiple comparisons
# ----------------------------------------------------------------------------------------------


def adjust_pvalues(pvalues: ArrayLike, method: str, *, alpha: float = 0.05) -> AdjustedPValues:
  """Bonferroni or Holm adjusted p-values for a family of tests; pvalues: (k,).

  NaN p-values (tests that could not be run) are dropped before counting m and stay NaN in the
  output, at their positions, with reject False. `method` is "bonferroni" or "holm" (Holm's
  step-down Bonferroni). Note statsmodels' multipletests defaults to Holm-Sidak, not Holm.
  """
  adjusters = {"bonferroni": ("Bonferroni", _bonferroni), "holm": ("Holm", _holm)}
  _check_choice("method", method, list(adjusters))
  p = np.asarray(pvalues, dtype=float)
  if p.ndim != 1:
    raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
  valid = ~np.isnan(p)
  out_of_range = np.flatnonzero(valid & ((p < 0) | (p > 1)))
  if out_of_range.size:
    raise ValueError(
        f"p-values must lie in [0, 1]; got {p[out_of_range].tolist()} at index "
        f"{out_of_range.tolist()}"
    )
  name, adjust = adjusters[method]
  adjusted = np.full_like(p, np.nan)
  adjusted[valid] = adjust(p[valid])
  return AdjustedPValues(
      pvalues=adjusted, reject=adjusted <= alpha, method=name, m=int(valid.sum()), alpha=alpha
  )


def _bonferroni(p: np.ndarray) -> np.ndarray:
  return np.minimum(1.0, p.size * p)


def _holm(p: np.ndarray) -> np.ndarray:
  # The i-th smallest p (0-based) is scaled by (m - i); the running max keeps the order.
  order = np.argsort(p)
  scaled = (p.size - np.arange(p.size)) * p[order]
  adjusted = np.empty_like(p)
  adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
  return adjusted


# ----------------------------------------------------------------------------------------------
# Effect sizes and correlation
# ----------------------------------------------------------------------------------------------


def cohens_d(x: ArrayLike, y: ArrayLike, variant: str = "d_z") -> EffectSize:
  """Cohen's d for paired data x, y: (n,); SDs use ddof=1.

  "d_z" = mean(x - y) / sd(x - y): the paired-test effect size.
  "d_av" = mean(x - y) / ((sd(x) + sd(y)) / 2): comparable with between-subject d.
  A zero denominator gives +-inf, or nan when the mean difference is also 0.
  """
  _check_choice("variant", variant, ("d_z", "d_av"))
  x, y = _paired(x, y)
  d = x - y
  scale = _sd(d) if variant == "d_z" else (_sd(x) + _sd(y)) / 2
  with np.errstate(divide="ignore", invalid="ignore"):
    value = np.float64(d.mean()) / scale
  return EffectSize(value=float(value), variant=variant, n=d.size)


def paired_t_power(effect: float, sd: float, n: int, *, alpha: float = 0.05) -> float:
  """Power of the two-sided paired t-test at level alpha with n pairs, when the true mean
  difference is `effect` and the SD of the differences is `sd` (noncentral t, exact)."""
  _require_two(n, "pairs")
  _check_power_args(sd, alpha)
  df = n - 1
  noncentrality = abs(effect) / sd * np.sqrt(n)  # Power is symmetric in the effect's sign.
  critical = scipy.stats.t.ppf(1 - alpha / 2, df)
  # The wrong-side tail; scipy returns nan for it at large noncentrality, where it is < 1e-100.
  wrong_side = np.nan_to_num(scipy.stats.nct.cdf(-critical, df, noncentrality))
  return float(scipy.stats.nct.sf(critical, df, noncentrality) + wrong_side)


def minimum_detectable_effect(sd: float, n: int, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
  """The smallest |mean difference| that the two-sided paired t-test with n pairs detects with
  probability `power` at level alpha, given the SD of the differences (same units as sd)."""
  _require_two(n, "pairs")
  _check_power_args(sd, alpha, power)
  f = lambda effect: paired_t_power(effect, sd, n, alpha=alpha) - power  # noqa: E731
  high = sd
  while f(high) < 0:  # Bracket the root; power rises to 1 as the effect grows.
    high *= 2
  return float(scipy.optimize.brentq(f, 0.0, high, xtol=1e-12 * high))


def pairs_needed(effect: float, sd: float, *, alpha: float = 0.05, power: float = 0.8,
                 max_n: int = 100_000) -> int | None:
  """The fewest pairs (seeds) for which the two-sided paired t-test detects a true mean difference
  `effect` with probability `power`, given the SD of the differences; None above max_n."""
  _check_power_args(sd, alpha, power)
  if effect == 0:
    return None
  has_power = lambda n: paired_t_power(effect, sd, n, alpha=alpha) >= power  # noqa: E731
  if not has_power(max_n):
    return None
  low, high = 2, max_n  # Power rises with n: bisect for the first n that has it.
  while low < high:
    mid = (low + high) // 2
    low, high = (low, mid) if has_power(mid) else (mid + 1, high)
  return low


def level_correlation(
    metric: ArrayLike,
    levels: ArrayLike,
    *,
    rng: np.random.Generator | int,
    method: str = "bca",
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
) -> LevelCorrelation:
  """Pearson r of level vs metric for each seed, then a bootstrap over seeds of the mean r.

  Args:
    metric: (seeds, levels) metric of each seed at each supervision level.
    levels: (levels,) numeric level values (e.g. 0..4).

  Each seed's r comes with its two-sided p (scipy.stats.pearsonr). A seed whose metric is
  constant over levels has no correlation: ValueError naming it.
  """
  metric = _finite("metric", metric, ndim=2)
  levels = _finite("levels", levels)
  if metric.shape[1] != levels.size:
    raise ValueError(
        f"metric has {metric.shape[1]} levels per seed but levels has {levels.size} values"
    )
  _require_two(levels.size, "levels")
  _require_two(metric.shape[0], "seeds")
  if np.ptp(levels) == 0:
    raise ValueError(f"levels are all equal ({levels[0]}); correlation is undefined")
  constant = np.flatnonzero(np.ptp(metric, axis=1) == 0)
  if constant.size:
    raise ValueError(
        f"metric is constant over levels for seeds {constant.tolist()}; Pearson r is undefined"
    )
  fits = [scipy.stats.pearsonr(levels, row) for row in metric]
  r = np.array([fit.statistic for fit in fits])
  mean_r = _mean_ci(
      r, "bootstrap over seeds of the mean per-seed Pearson r", method, confidence_level,
      n_resamples, rng,
  )
  return LevelCorrelation(r=r, pvalue=np.array([fit.pvalue for fit in fits]), mean_r=mean_r)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _mean_ci(values, method_name, method, confidence_level, n_resamples, rng) -> BootstrapCI:
  """Bootstrap CI of mean(values); values (n,) finite with n >= 2."""
  _check_level(confidence_level)
  _check_resamples(n_resamples)
  _check_choice("method", method, ("bca", "percentile"))
  estimate = float(values.mean())
  boot = _resample_means(values, n_resamples, _generator(rng))
  if method == "percentile":
    low, high = percentile_interval(boot, confidence_level)
    variant = "percentile"
  else:
    # Leave-one-out means in closed form.
    jackknife = (values.sum() - values) / (values.size - 1)
    low, high, variant = bca_interval(estimate, boot, jackknife, confidence_level)
  return _bootstrap_ci(
      values, estimate, low, high, confidence_level, n_resamples, method_name, variant
  )


def _bootstrap_ci(
    units, estimate, low, high, confidence_level, n_resamples, method, variant
) -> BootstrapCI:
  """Packs a CI over `units` (n,), adding the t-interval of their mean when n < SMALL_N."""
  small_n = units.size < SMALL_N
  t_interval = _t_test(units, confidence_level, "two-sided")[2:] if small_n else None
  return BootstrapCI(
      estimate=estimate, low=low, high=high, confidence_level=confidence_level, n=units.size,
      n_resamples=n_resamples, method=method, variant=variant, small_n=small_n,
      t_interval=t_interval,
  )


def _resample_means(values: np.ndarray, n_resamples: int, gen: np.random.Generator) -> np.ndarray:
  """Means of `n_resamples` bootstrap resamples of `values` (n,) -> (n_resamples,)."""
  means = np.empty(n_resamples)
  start = 0
  for size in _batch_sizes(n_resamples, values.size):
    idx = gen.integers(0, values.size, size=(size, values.size))
    means[start : start + size] = values[idx].mean(axis=1)
    start += size
  return means


def _batch_sizes(total: int, row_length: int) -> list[int]:
  """Splits `total` rows of `row_length` elements into batches of about _BATCH_ELEMENTS."""
  rows = max(1, _BATCH_ELEMENTS // max(row_length, 1))
  return [min(rows, total - start) for start in range(0, total, rows)]


def _t_test(d: np.ndarray, confidence_level: float, alternative: str):
  """One-sample t-test of mean(d) = 0 -> (t, p, low, high), as scipy.stats.ttest_1samp."""
  mean = np.float64(d.mean())
  se = _sd(d) / np.sqrt(d.size)
  dist = scipy.stats.t(d.size - 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = mean / se
  if alternative == "two-sided":
    q = dist.ppf((1 + confidence_level) / 2)
    return float(t), float(2 * dist.sf(abs(t))), float(mean - q * se), float(mean + q * se)
  q = dist.ppf(confidence_level)
  if alternative == "greater":
    return float(t), float(dist.sf(t)), float(mean - q * se), np.inf
  return float(t), float(dist.cdf(t)), -np.inf, float(mean + q * se)


def _count_extreme(null: np.ndarray, observed: float, alternative: str) -> int:
  """Number of null statistics at least as extreme as `observed`."""
  # Relative slack so values equal to the observed in exact arithmetic count despite rounding
  # (the same slack as scipy.stats.permutation_test).
  slack = 100 * np.finfo(float).eps * abs(observed)
  if alternative == "two-sided":
    return int(np.count_nonzero(np.abs(null) >= abs(observed) - slack))
  if alternative == "greater":
    return int(np.count_nonzero(null >= observed - slack))
  return int(np.count_nonzero(null <= observed + slack))


def _sd(v: np.ndarray) -> float:
  """Sample SD (ddof=1), exactly 0 for constant data (rounding would otherwise leave ~1e-17)."""
  return 0.0 if np.all(v == v[0]) else float(np.std(v, ddof=1))


def _generator(rng) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return np.random.default_rng(rng)
  raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {rng!r}")


def _finite(name: str, values: ArrayLike, ndim: int = 1) -> np.ndarray:
  """`values` as a float array of `ndim` dims; ValueError naming any NaN/inf and where."""
  arr = np.asarray(values, dtype=float)
  if arr.ndim != ndim:
    raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
  bad = np.argwhere(~np.isfinite(arr))
  if bad.size:
    where = bad[:, 0].tolist() if ndim == 1 else [tuple(i) for i in bad.tolist()]
    shown = where[:10] + (["..."] if len(where) > 10 else [])
    raise ValueError(
        f"{name} has {len(where)} NaN/inf value(s) at index {shown}; drop or fix those runs "
        "before computing statistics"
    )
  return arr


def _require_two(n: int, what: str) -> None:
  if n < 2:
    raise ValueError(f"at least 2 {what} are needed, got {n}")


def _paired(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """x, y as finite 1-D float arrays of the same shape with at least 2 pairs."""
  x, y = _finite("x", x), _finite("y", y)
  if x.shape != y.shape:
    raise ValueError(f"x and y must be paired (same shape), got {x.shape} and {y.shape}")
  _require_two(x.size, "pairs")
  return x, y


def _differences(x: ArrayLike, y: ArrayLike) -> np.ndarray:
  x, y = _paired(x, y)
  return x - y


def _paired_groups(x: Sequence[ArrayLike], y: Sequence[ArrayLike]) -> list[np.ndarray]:
  """Per-seed differences x[s] - y[s] for at least 2 seeds, each with at least 1 instance."""
  if len(x) != len(y):
    raise ValueError(f"x and y must list the same seeds, got {len(x)} and {len(y)}")
  _require_two(len(x), "seeds")
  diffs = []
  for s, (xs, ys) in enumerate(zip(x, y)):
    xs, ys = _finite(f"x[{s}]", xs), _finite(f"y[{s}]", ys)
    if xs.shape != ys.shape:
      raise ValueError(
          f"x[{s}] and y[{s}] must be paired (same shape), got {xs.shape} and {ys.shape}"
      )
    if xs.size == 0:
      raise ValueError(f"seed {s} has no instances")
    diffs.append(xs - ys)
  return diffs


def _check_power_args(sd: float, alpha: float, power: float = 0.5) -> None:
  if not (np.isfinite(sd) and sd > 0):
    raise ValueError(f"sd={sd!r}: expected the positive, finite SD of the paired differences")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha={alpha!r}: expected a level in (0, 1)")
  if not 0 < power < 1:
    raise ValueError(f"power={power!r}: expected a probability in (0, 1)")


def _check_level(confidence_level: float) -> None:
  if not 0 < confidence_level < 1:
    raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")


def _check_resamples(n_resamples: int) -> None:
  if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
    raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"unknown {name} {value!r}; expected one of {list(choices)}")
