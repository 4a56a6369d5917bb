"""Sweep results -> tables with confidence intervals (Markdown + LaTeX), report.json and plots.

    python -m recon3d_jax.study.report --sweep_dir=DIR [--out=DIR/report]

Reads DIR/manifest.json (launch/sweep.py), each finished run's eval/test.jsonl (one row per test
instance) and eval/summary.json, and DIR/ensembles/* (recon3d_jax.study.ensemble). Writes OUT/REPORT.md,
OUT/<table>.tex (one per table), OUT/report.json (every number, for scripts and tests) and PNGs.
The recognition baselines in the runs' eval/summary.json ("baselines": mean shape, retrieval,
retrieval oracle; recon3d_jax/baselines.py) are reference rows of the main table, not arms.

Statistics (docs/DESIGN.md section 8, recon3d_jax.study.stats):
- A cell's value is the mean over seeds of the seed's mean over test instances; its CI is a BCa
  bootstrap over seeds, with the Student t-interval beside it when there are fewer than 10 seeds.
- A comparison of arms A - B pairs runs by seed and instances by (seed, instance index): each seed
  gives one pair (its mean over the instances both runs evaluated). CI: paired bootstrap (BCa) over
  seeds, with the paired t-interval beside it below 10 pairs; p: exact sign-flip permutation test
  over seeds (smallest possible two-sided p: 2^(1-n)); effect size: Cohen's d_z. With a single
  seed the instances are the pairs instead (seed variance then ignored; the table says so).
- Each table's comparisons form one family: Holm-adjusted p-values (m stated).
The tables are those the study declared (its config's `TABLES`, kept in the manifest); each
appears only when the sweep has the runs it needs. Runs that are not done are listed, never
silently dropped, and a seed missing from one side of a comparison is named.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import flags, logging

from recon3d_jax import arms, cli, config_lib
from recon3d_jax.data.corrupt import LEVELS
from recon3d_jax.study import stats, sweeps

BENCHMARK_KEY = "data.benchmark"
RDEP_PREFIX = "rdep."
COST_KEYS = ("train_step_s", "infer_latency_b1_s", "infer_latency_batch_s", "peak_memory_bytes",
             "params")
VARIANT_KEYS = ("data.curriculum", "data.max_level")  # Negative results: variant vs plain run.
# Recognition baselines (recon3d_jax/baselines.py): reference rows of the main table, not arms.
REFERENCE_LABELS = {"mean_shape": "mean shape (reference)",
                    "retrieval": "retrieval (reference)",
                    "retrieval_oracle": "retrieval oracle (reference; uses test GT)"}

Units = dict  # seed (or ensemble) -> {instance key: value}


# ---------------------------------------------------------------------------------------------
# Collecting runs.
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
  id: str
  overrides: dict
  state: str
  rows: dict  # (benchmark, index) -> per-instance row of eval/test.jsonl
  summary: dict
  error: str = ""

  def value(self, key: str, base: dict):
    return self.overrides.get(key, base.get(key))


def collect(sweep_dir: str) -> tuple[dict, list[RunResult]]:
  """The manifest and every run's state and results."""
  manifest = sweeps.read_manifest(sweep_dir)
  base = flat_base(manifest)
  runs = []
  for rid, entry in manifest["runs"].items():
    overrides = entry["overrides"]
    workdir = sweeps.run_dir(sweep_dir, rid)
    state = sweeps.run_state(sweep_dir, rid)
    rows, summary, error = {}, {}, ""
    if state == "done":
      bench = overrides.get(BENCHMARK_KEY, base.get(BENCHMARK_KEY))
      rows = {(bench, r["index"]): r for r in _read_jsonl(os.path.join(workdir, "eval",
                                                                        "test.jsonl"))}
      with open(os.path.join(workdir, "eval", "summary.json")) as f:
        summary = json.load(f)
    elif state == "failed":
      error = sweeps.error_summary(sweep_dir, rid)
    runs.append(RunResult(rid, overrides, state, rows, summary, error))
  return manifest, runs


def flat_base(manifest: dict) -> dict:
  return config_lib.flatten(manifest["base"])


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def select(runs: list[RunResult], base: dict, free: set) -> list[RunResult]:
  """Finished runs (pretraining excluded) whose factors other than `free`, seed and links are
  at the base config's values."""
  out = []
  for run in runs:
    if run.state != "done" or run.value("arm", base) == arms.pretraining_arm():
      continue
    factors = set(run.overrides) - free - set(config_lib.REPLICATE_KEYS)
    if all(run.overrides[k] == base.get(k) for k in factors):
      out.append(run)
  return out


def units(runs: list[RunResult], metric: str, scale: float = 1.0) -> Units:
  """seed -> {(benchmark, index): metric * scale}, pooling a seed's runs (e.g. benchmarks)."""
  out: Units = {}
  for run in runs:
    seed = run.overrides.get("seed", 0)
    out.setdefault(seed, {}).update({k: r[metric] * scale for k, r in run.rows.items()})
  return out


def reference_means(runs: list[RunResult], base: dict) -> tuple[dict, dict, list]:
  """The recognition baselines of the runs' benchmarks, from eval/summary.json "baselines".

  They depend only on a benchmark's dataset, so one run per benchmark gives them. Returns
  (pooled {baseline: {metric: mean, num_instances}}, instance-weighted like the arms' pooled
  test instances; {benchmark: summary entry}; benchmarks whose runs have none). Nothing is
  pooled unless every benchmark has them.
  """
  per_benchmark, missing = {}, []
  for bench in distinct(runs, BENCHMARK_KEY, base):
    entries = [r.summary["baselines"] for r in runs
               if r.value(BENCHMARK_KEY, base) == bench and "baselines" in r.summary]
    if entries:
      per_benchmark[bench] = entries[0]
    else:
      missing.append(bench)
  pooled = {}
  for name in REFERENCE_LABELS if per_benchmark and not missing else ():
    entries = [e[name] for e in per_benchmark.values()]
    total = sum(e["num_instances"] for e in entries)
    keys = set.intersection(*(set(e) for e in entries)) - {"num_instances"}
    pooled[name] = {k: sum(e[k] * e["num_instances"] for e in entries) / total
                    for k in sorted(keys)}
    pooled[name]["num_instances"] = total
  return pooled, per_benchmark, missing


def distinct(runs: list[RunResult], key: str, base: dict) -> list:
  """Values of `key` among runs, in manifest order."""
  values = []
  for run in runs:
    v = run.value(key, base)
    if v not in values:
      values.append(v)
  return values


# ---------------------------------------------------------------------------------------------
# Statistics of cells and comparisons.
# ---------------------------------------------------------------------------------------------
def cell(u: Units, rng: np.random.Generator, n_resamples: int) -> dict | None:
  """Mean over seeds of per-seed instance means, with its bootstrap (and t) interval."""
  seed_means = np.array([np.mean(list(v.values())) for v in u.values() if v])
  if not seed_means.size:
    return None
  out = dict(mean=float(seed_means.mean()), n_seeds=int(seed_means.size),
             n_instances=int(sum(len(v) for v in u.values())))
  if seed_means.size >= 2:
    ci = stats.bootstrap_mean_ci(seed_means, rng=rng, n_resamples=n_resamples)
    out.update(low=ci.low, high=ci.high, variant=ci.variant)
    if ci.t_interval:
      out.update(t_low=ci.t_interval[0], t_high=ci.t_interval[1])
  return out


def compare(a: Units, b: Units, rng: np.random.Generator, n_resamples: int) -> dict | None:
  """Paired comparison a - b (see the module docstring). None if nothing pairs."""
  seeds = sorted(set(a) & set(b), key=str)
  unpaired = sorted(set(a) ^ set(b), key=str)
  pairs = {s: sorted(set(a[s]) & set(b[s]), key=str) for s in seeds}
  pairs = {s: k for s, k in pairs.items() if k}
  if not pairs:
    return None
  if len(pairs) >= 2:
    unit = "seeds"
    x = np.array([np.mean([a[s][k] for k in keys]) for s, keys in pairs.items()])
    y = np.array([np.mean([b[s][k] for k in keys]) for s, keys in pairs.items()])
  else:
    (s, keys), = pairs.items()
    unit = "instances (1 seed)"
    x, y = np.array([a[s][k] for k in keys]), np.array([b[s][k] for k in keys])
  out = dict(a=float(x.mean()), b=float(y.mean()), diff=float((x - y).mean()), n=int(x.size),
             unit=unit, unpaired_seeds=unpaired)
  if x.size < 2:
    return out
  ci = stats.paired_bootstrap_ci(x, y, rng=rng, n_resamples=n_resamples)
  t = stats.paired_t_test(x, y)
  perm = stats.paired_permutation_test(x, y, rng=rng, n_resamples=n_resamples)
  out.update(low=ci.low, high=ci.high, variant=ci.variant, t_low=t.low, t_high=t.high,
             t_p=t.pvalue, p=perm.pvalue, p_floor=perm.p_floor, p_variant=perm.variant,
             d_z=stats.cohens_d(x, y, "d_z").value)
  if unit == "seeds":
    sd = float(np.std(x - y, ddof=1))
    out.update(sd_diff=sd, mde=stats.minimum_detectable_effect(sd, x.size) if sd > 0 else 0.0)
    two = stats.two_level_paired_bootstrap_ci([[a[s][k] for k in keys] for s, keys in pairs.items()],
                                              [[b[s][k] for k in keys] for s, keys in pairs.items()],
                                              rng=rng, n_resamples=n_resamples)
    out.update(low_two_level=two.low, high_two_level=two.high)
  return out


def holm(comparisons: list[dict | None]) -> int:
  """Adds p_holm to each comparison with a p-value; returns the family size m."""
  ps = [c["p"] if c and "p" in c else np.nan for c in comparisons]
  if all(np.isnan(ps)):
    return 0
  adjusted = stats.adjust_pvalues(ps, "holm")
  for c, p in zip(comparisons, adjusted.pvalues):
    if c and not np.isnan(p):
      c["p_holm"] = float(p)
  return adjusted.m


# ---------------------------------------------------------------------------------------------
# Formatting.
# ---------------------------------------------------------------------------------------------
def fmt_cell(c: dict | None, digits: int = 3) -> str:
  if not c:
    return "—"
  text = f"{c['mean']:.{digits}f}"
  if "low" in c:
    text += f" [{c['low']:.{digits}f}, {c['high']:.{digits}f}]"
  return text + f" (n={c['n_seeds']})"


def fmt_reference(value: float | None, digits: int = 3) -> str:
  return "—" if value is None else f"{value:.{digits}f}"


def fmt_diff(c: dict | None, digits: int = 3) -> str:
  if not c:
    return "—"
  text = f"{c['diff']:+.{digits}f}"
  if "low" in c:
    text += f" [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"
    text += f" (t: [{c['t_low']:+.{digits}f}, {c['t_high']:+.{digits}f}])" if c["n"] < \
        stats.SMALL_N else ""
  return text + f" n={c['n']}" + ("" if c["unit"] == "seeds" else f" {c['unit']}")


def fmt_p(c: dict | None, key: str) -> str:
  if not c or key not in c:
    return "—"
  return f"{c[key]:.3g}" + ("*" if key == "p_holm" and c[key] <= 0.05 else "")


def fmt_d(c: dict | None) -> str:
  return f"{c['d_z']:+.2f}" if c and "d_z" in c else "—"


@dataclasses.dataclass
class Table:
  name: str
  title: str
  header: list[str]
  rows: list[list[str]]
  notes: list[str]
  data: list[dict]
  references: dict = dataclasses.field(default_factory=dict)  # Reference rows' numbers.
  comparisons: list = dataclasses.field(default_factory=list)  # (label, compare() or None).

  def markdown(self) -> str:
    lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
             "|" + "---|" * len(self.header)]
    lines += ["| " + " | ".join(r) + " |" for r in self.rows]
    return "\n".join(lines + [""] + [f"- {n}" for n in self.notes]) + "\n"

  def latex(self) -> str:
    def esc(s):
      for a, b in (("\\", r"\textbackslash{}"), ("%", r"\%"), ("_", r"\_"), ("&", r"\&"),
                   ("#", r"\#"), ("—", "--"), ("Δ", r"$\Delta$"), ("τ", r"$\tau$")):
        s = s.replace(a, b)
      return s
    lines = [f"% {self.title}", r"\begin{tabular}{l" + "c" * (len(self.header) - 1) + "}",
             r"\toprule", " & ".join(map(esc, self.header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(esc, r)) + r" \\" for r in self.rows]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


COMPARISON_NOTE = ("Δ: mean paired difference [95% BCa paired bootstrap over seeds] (t: paired "
                   "t-interval, given below 10 pairs); p: exact sign-flip permutation test over "
                   "seeds (floor 2^(1-n)); p (Holm): Holm-adjusted over the table's {m} "
                   "comparisons, * <= 0.05; d_z = mean(Δ)/sd(Δ).")


def _unpaired_notes(comparisons: list[tuple[str, dict | None]]) -> list[str]:
  return [f"{label}: seeds {c['unpaired_seeds']} lack a partner and are left out of the pairs."
          for label, c in comparisons if c and c["unpaired_seeds"]]


# ---------------------------------------------------------------------------------------------
# Tables (docs/DESIGN.md section 6).
# ---------------------------------------------------------------------------------------------
class Builder:
  """Builds the tables the study declared that the sweep has runs for."""

  def __init__(self, sweep_dir: str, manifest: dict, runs: list[RunResult], seed: int,
               n_resamples: int, metric: str | None = None, power_effect: float = 0.01):
    self.sweep_dir = sweep_dir
    self.base = flat_base(manifest)
    self.runs = runs
    self.study = manifest["study"]
    self.table_names = sweeps.study_tables(self.study)  # Checked before any computing.
    declared = self.study["primary_metric"]
    self.metric = metric or declared
    self.tau = declared.partition("@")[2]  # Precision/recall columns stay at the declared τ.
    self.baseline, self.ours = self.study["baseline_arm"], self.study["ours_arm"]
    self.rng = np.random.default_rng(seed)
    self.n_resamples = n_resamples
    self.power_effect = power_effect  # |Δ| the power table asks the seeds for.
    self.f_name = f"F@{self.tau}" if self.metric == declared and self.tau else self.metric
    measured = sorted({key for run in runs for row in run.rows.values() for key in row})
    if measured and self.metric not in measured:
      raise config_lib.ConfigError(f"metric {self.metric!r}: expected one of the per-instance "
                                   f"metrics of the finished runs, {measured}")

  def _overridden(self, key: str) -> bool:
    return any(key in r.overrides for r in self.runs)

  def _cell(self, runs, metric=None, scale=1.0):
    return cell(units(runs, metric or self.metric, scale), self.rng, self.n_resamples)

  def _compare(self, a_runs, b_runs):
    return compare(units(a_runs, self.metric), units(b_runs, self.metric), self.rng,
                   self.n_resamples)

  def main(self) -> Table | None:
    free = {"arm", BENCHMARK_KEY}
    selected = select(self.runs, self.base, free)
    arms = distinct(selected, "arm", self.base)
    if not arms:
      return None
    columns = [(f"precision@{self.tau}", 1.0), (f"recall@{self.tau}", 1.0), (self.metric, 1.0),
               ("accuracy", 100.0)]
    rows, data = [], []
    for arm in arms:
      arm_runs = [r for r in selected if r.value("arm", self.base) == arm]
      cells = [self._cell(arm_runs, m, s) for m, s in columns]
      rows.append([arm] + [fmt_cell(c, 1 if s == 100 else 3) for c, (_, s) in zip(cells, columns)])
      data.append(dict(arm=arm, **{m: c for c, (m, _) in zip(cells, columns)}))
    benches = distinct(selected, BENCHMARK_KEY, self.base)
    notes = [f"Test instances pooled over benchmarks {benches}; mean over seeds of each "
             "seed's instance mean [95% BCa bootstrap over seeds] (n = seeds).",
             (f"F1 is the study's primary metric {self.metric} (F-score at τ = {self.tau} "
              "in unit-cube units)" if self.f_name.startswith("F@") else
              f"{self.metric} is a secondary metric (not the study's declared one)")
             + "; accuracy is occupancy accuracy at the voxel centres of the unit cube (the "
             "stored voxels), x100."]
    pooled, per_benchmark, missing = reference_means(selected, self.base)
    for name, means in pooled.items():
      rows.append([REFERENCE_LABELS[name]] + [
          fmt_reference(means[m] * s if m in means else None, 1 if s == 100 else 3)
          for m, s in columns])
    if pooled:
      notes.append("Reference rows, not trained arms: the recognition baselines of Tatarchenko "
                   "et al. (CVPR 2019), computed from the dataset alone (recon3d_jax/baselines.py)"
                   " on the same test instances and points: the mean training shape; retrieval "
                   "of the training shape whose image is nearest the test image; the retrieval "
                   "oracle, the training shape with the highest IoU to the test shape - it reads "
                   "the test ground truth, an upper bound for retrieval. Deterministic (no seeds, "
                   "no CI); benchmarks pooled by instance count.")
    elif missing:
      notes.append(f"No reference rows: the runs of benchmarks {missing} have no baselines in "
                   "eval/summary.json (python -m recon3d_jax.evaluate --workdir=RUN "
                   "--baselines_only adds them).")
    return Table("table1_main", "Table 1: main results per method",
                 ["Method", f"Precision@{self.tau}", f"Recall@{self.tau}",
                  f"F1 ({self.f_name})" if self.f_name.startswith("F@") else self.metric,
                  "Accuracy (%)"], rows, notes, data,
                 dict(pooled=pooled, per_benchmark=per_benchmark) if pooled else {})

  def _pairs(self, arms: list) -> list[tuple[str, str]]:
    """The comparisons a table makes: normal vs depth (the question the study asks), then every
    other method vs the baseline."""
    pairs = [("normal", "depth")] if {"normal", "depth"} <= set(arms) else []
    return pairs + [(a, self.baseline) for a in arms if a != self.baseline and self.baseline in arms]

  def pairwise(self) -> Table | None:
    """Paired differences between methods, benchmarks pooled per seed."""
    selected = select(self.runs, self.base, {"arm", BENCHMARK_KEY})
    arms = distinct(selected, "arm", self.base)
    pairs = self._pairs(arms)
    if not pairs:
      return None
    by_arm = {a: [r for r in selected if r.value("arm", self.base) == a] for a in arms}
    comps = [(f"{a} − {b}", self._compare(by_arm[a], by_arm[b])) for a, b in pairs]
    m = holm([c for _, c in comps])
    rows = [[label, fmt_diff(c), fmt_p(c, "p"), fmt_p(c, "p_holm"), fmt_d(c)]
            for label, c in comps]
    return Table("table1b_pairwise", "Table 1b: paired differences between methods",
                 ["Comparison", f"Δ {self.f_name}", "p", "p (Holm)", "d_z"], rows,
                 ["Each seed's runs on every benchmark are pooled into one paired unit.",
                  COMPARISON_NOTE.format(m=m)] + _unpaired_notes(comps),
                 [dict(comparison=label, **(c or {})) for label, c in comps], comparisons=comps)

  def versus(self, key: str, name: str, title: str, label: str, gain: str) -> Table | None:
    """The comparisons of `_pairs` at each value of `key` (benchmark, training size, encoder)."""
    if not key or not self._overridden(key):
      return None
    selected = select(self.runs, self.base, {"arm", key})
    rows, data, comps = [], [], []
    for value in distinct(selected, key, self.base):
      runs = [r for r in selected if r.value(key, self.base) == value]
      by_arm = {a: [r for r in runs if r.value("arm", self.base) == a]
                for a in distinct(runs, "arm", self.base)}
      for a, b in self._pairs(list(by_arm)):
        cell_a, cell_b = self._cell(by_arm[a]), self._cell(by_arm[b])
        c = self._compare(by_arm[a], by_arm[b])
        rel = 100 * (cell_a["mean"] / cell_b["mean"] - 1) if cell_b["mean"] else float("nan")
        comps.append((f"{label}={value}: {a} − {b}", c))
        data.append(dict(value=value, arm=a, versus=b, a=cell_a, b=cell_b, relative_gain=rel,
                         comparison=c))
    if not data:
      return None
    m = holm([c for _, c in comps])
    for d in data:
      c = d["comparison"]
      rows.append([str(d["value"]), f"{d['arm']} − {d['versus']}", fmt_cell(d["a"]),
                   fmt_cell(d["b"]), f"{d['relative_gain']:+.1f}", fmt_diff(c), fmt_p(c, "p"),
                   fmt_p(c, "p_holm"), fmt_d(c)])
    return Table(name, title, [label, "A − B", f"A {self.f_name}", f"B {self.f_name}", gain, "Δ",
                               "p", "p (Holm)", "d_z"],
                 rows, [COMPARISON_NOTE.format(m=m), f"{gain} = 100 (A - B) / B, of the means."]
                 + _unpaired_notes(comps), data, comparisons=comps)

  def levels(self) -> Table | None:
    key = "data.supervision"
    selected = [r for r in select(self.runs, self.base, {"arm", key})
                if r.value(key, self.base) in LEVELS]
    levels = [lv for lv in LEVELS if lv in distinct(selected, key, self.base)]
    if not levels:
      return None
    arms = distinct(selected, "arm", self.base)
    by = lambda arm, lv: [r for r in selected if r.value("arm", self.base) == arm
                          and r.value(key, self.base) == lv]
    rows, data, comps = [], [], []
    for lv in levels:
      cells = {arm: self._cell(by(arm, lv)) for arm in arms}
      c = None
      if self.baseline in arms and self.ours in arms:
        c = self._compare(by(self.ours, lv), by(self.baseline, lv))
      comps.append((f"level={lv}", c))
      data.append(dict(level=lv, cells=cells, comparison=c))
    m = holm([c for _, c in comps])
    for d in data:
      c = d["comparison"]
      rows.append([d["level"]] + [fmt_cell(d["cells"][a]) for a in arms]
                  + [fmt_diff(c), fmt_d(c), fmt_p(c, "p_holm")])
    notes = [f"gap = {self.ours} - {self.baseline}. " + COMPARISON_NOTE.format(m=m)]
    correlations = {}
    for arm in arms:
      per_level = [units(by(arm, lv), self.metric) for lv in levels]
      seeds = sorted(set.intersection(*(set(u) for u in per_level)), key=str)
      if len(levels) < 2 or len(seeds) < 2:
        continue
      matrix = np.array([[np.mean(list(u[s].values())) for u in per_level] for s in seeds])
      try:
        corr = stats.level_correlation(matrix, np.arange(len(levels)), rng=self.rng,
                                       n_resamples=self.n_resamples)
      except ValueError as e:
        notes.append(f"Level correlation of {arm}: {e}.")
        continue
      ci = corr.mean_r
      correlations[arm] = dict(mean_r=ci.estimate, low=ci.low, high=ci.high,
                               r=corr.r.tolist(), p=corr.pvalue.tolist(), n_seeds=len(seeds))
      notes.append(f"Pearson r(level index 0-4, {self.f_name}) of {arm}: mean over {len(seeds)} "
                   f"seeds {ci.estimate:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}] (bootstrap over "
                   f"seeds); per seed {np.round(corr.r, 2).tolist()}, p "
                   f"{np.round(corr.pvalue, 3).tolist()}.")
    data.append(dict(correlations=correlations))
    return Table("table3_levels", "Table 3: metric by supervision level",
                 ["Level"] + [f"{a} {self.f_name}" for a in arms] + ["gap (Δ)", "d_z",
                                                                      "p (Holm)"],
                 rows, notes + _unpaired_notes(comps), data, comparisons=comps)

  def ablation(self) -> Table | None:
    keys = sorted({k for r in self.runs for k in r.overrides if k.startswith(RDEP_PREFIX)})
    selected = [r for r in select(self.runs, self.base, set(keys) | {"arm"})
                if r.value("arm", self.base) == self.ours]
    if not keys or not selected:
      return None
    configs = {}
    for r in selected:
      configs.setdefault(tuple(bool(r.value(k, self.base)) for k in keys), []).append(r)
    full = configs.get((True,) * len(keys))
    if not full:
      return None
    f_full = self._cell(full)
    rows, data, comps = [], [], []
    for switches, runs in configs.items():
      off = [k[len(RDEP_PREFIX):] for k, on in zip(keys, switches) if not on]
      name = ("full" if not off else "w/o all" if len(off) == len(keys)
              else "w/o " + ", ".join(off))
      c = None if runs is full else self._compare(runs, full)
      comps.append((name, c))
      data.append(dict(configuration=name, f=self._cell(runs) if runs is not full else f_full,
                       comparison=c))
    m = holm([c for _, c in comps])
    for d in data:
      c = d["comparison"]
      rows.append([d["configuration"], fmt_cell(d["f"]), fmt_diff(c), fmt_p(c, "p"),
                   fmt_p(c, "p_holm")])
    return Table("table4_ablation", "Table 4: ablation of 3D-R-DEP components",
                 ["Configuration", self.f_name, "Δ vs full", "p vs full", "p (Holm)"], rows,
                 [COMPARISON_NOTE.format(m=m)] + _unpaired_notes(comps), data,
                 comparisons=comps)

  def variants(self) -> Table | None:
    """Negative results: each variant (curriculum, filtering) vs the plain run, per arm."""
    rows, data, comps = [], [], []
    for key in VARIANT_KEYS:
      if not self._overridden(key):
        continue
      selected = select(self.runs, self.base, {"arm", key})
      for arm in distinct(selected, "arm", self.base):
        arm_runs = [r for r in selected if r.value("arm", self.base) == arm]
        plain = [r for r in arm_runs if r.value(key, self.base) == self.base[key]]
        for value in distinct(arm_runs, key, self.base):
          variant = [r for r in arm_runs if r.value(key, self.base) == value]
          if value == self.base[key] or not plain:
            continue
          c = self._compare(variant, plain)
          comps.append((f"{arm} {key}={value}", c))
          data.append(dict(arm=arm, key=key, value=value, variant=self._cell(variant),
                           plain=self._cell(plain), comparison=c))
    if not data:
      return None
    m = holm([c for _, c in comps])
    for d in data:
      c = d["comparison"]
      rows.append([d["arm"], f"{d['key']}={d['value']}", fmt_cell(d["variant"]),
                   fmt_cell(d["plain"]), fmt_diff(c), fmt_p(c, "p"), fmt_p(c, "p_holm")])
    return Table("negatives", "Negative results: training variants vs the plain run",
                 ["Arm", "Variant", f"variant {self.f_name}", f"plain {self.f_name}", "Δ", "p",
                  "p (Holm)"], rows, [COMPARISON_NOTE.format(m=m)] + _unpaired_notes(comps),
                 data, comparisons=comps)

  def overhead(self) -> Table | None:
    selected = [r for r in select(self.runs, self.base, {"arm"}) if "cost" in r.summary]
    arms = distinct(selected, "arm", self.base)
    if self.baseline not in arms:
      return None
    cost = lambda arm: {r.overrides.get("seed", 0): r.summary["cost"] for r in selected
                        if r.value("arm", self.base) == arm}
    base_cost = cost(self.baseline)
    rows, data = [], []
    for arm in arms:
      if arm == self.baseline:
        continue
      arm_cost, cells = cost(arm), {}
      seeds = sorted(set(arm_cost) & set(base_cost), key=str)
      for k in COST_KEYS:
        ratios = np.array([100 * (arm_cost[s][k] / base_cost[s][k] - 1) for s in seeds
                           if k in arm_cost[s] and base_cost[s].get(k)])
        if ratios.size:
          cells[k] = cell({i: {0: v} for i, v in enumerate(ratios)}, self.rng, self.n_resamples)
      rows.append([arm] + [fmt_cell(cells.get(k), 1) for k in COST_KEYS])
      data.append(dict(arm=arm, overhead_percent=cells))
    if not data:
      return None
    return Table("table6_overhead", "Table 6: overhead vs the baseline (%)",
                 ["Component", "Training step", "Inference (batch 1)", "Inference (batch B)",
                  "Peak memory", "Parameters"], rows,
                 [f"100 (arm / {self.baseline} - 1) per seed, mean [95% BCa bootstrap over "
                  "seeds] (n = seeds). Times are only comparable when measured on one machine."],
                 data)

  def ensembles(self) -> Table | None:
    root = os.path.join(self.sweep_dir, "ensembles")
    names = sorted(os.listdir(root)) if os.path.isdir(root) else []
    by_run = {r.id: r for r in self.runs}
    groups: dict[str, list] = {}
    for name in names:
      with open(os.path.join(root, name, "members.json")) as f:
        members = json.load(f)["members"]
      rows = _read_jsonl(os.path.join(root, name, "eval", "test.jsonl"))
      member_runs = [by_run[m] for m in members if m in by_run and by_run[m].state == "done"]
      if len(member_runs) != len(members):
        continue
      label = json.dumps({k: v for k, v in member_runs[0].overrides.items()
                          if k not in config_lib.REPLICATE_KEYS}, sort_keys=True)
      bench = next(iter(member_runs[0].rows))[0]
      ens = {(bench, r["index"]): r[self.metric] for r in rows}
      single = {k: float(np.mean([m.rows[k][self.metric] for m in member_runs]))
                for k in ens if all(k in m.rows for m in member_runs)}
      groups.setdefault(label, []).append((name, ens, single))
    if not groups:
      return None
    rows, data, comps = [], [], []
    for label, items in groups.items():
      a = {name: ens for name, ens, _ in items}
      b = {name: single for name, _, single in items}
      c = compare(a, b, self.rng, self.n_resamples)
      comps.append((label, c))
      data.append(dict(setting=json.loads(label), ensembles=[n for n, _, _ in items],
                       comparison=c))
    m = holm([c for _, c in comps])
    for d, (label, c) in zip(data, comps):
      rows.append([label, str(len(d["ensembles"])), f"{c['a']:.3f}", f"{c['b']:.3f}",
                   fmt_diff(c).replace(" seeds", " ensembles"), fmt_p(c, "p"),
                   fmt_p(c, "p_holm")])
    return Table("negatives_ensemble", "Negative results: ensemble vs its single models",
                 ["Setting", "Ensembles", f"ensemble {self.f_name}",
                  f"single-model {self.f_name}", "Δ", "p", "p (Holm)"], rows,
                 ["Single-model value: the mean of the members' metric on the same instance. "
                  "Pairs are ensembles when there are two or more per setting, else instances. "
                  + COMPARISON_NOTE.format(m=m)], data)

  def power(self, tables: list[Table]) -> Table | None:
    """The seed-level power of every paired comparison over seeds in the other tables."""
    rows, data = [], []
    for t in tables:
      for name, c in t.comparisons:
        if not c or "sd_diff" not in c:
          continue
        label, sd = f"{t.title.partition(':')[0]}: {name}", c["sd_diff"]
        needed = [stats.pairs_needed(e, sd) if sd > 0 else None
                  for e in (self.power_effect, c["diff"])]
        rows.append([label, fmt_diff(c), f"[{c['low_two_level']:+.3f}, {c['high_two_level']:+.3f}]",
                     f"{sd:.4f}", f"{c['mde']:.4f}", *(str(n) if n else "—" for n in needed)])
        data.append(dict(comparison=label, diff=c["diff"], n=c["n"], sd_diff=sd, mde=c["mde"],
                         low_two_level=c["low_two_level"], high_two_level=c["high_two_level"],
                         effect=self.power_effect, seeds_for_effect=needed[0],
                         seeds_for_observed=needed[1]))
    if not rows:
      return None
    return Table("power", "Power of the paired comparisons",
                 ["Comparison", f"Δ {self.f_name} [seed-level 95% CI]",
                  "two-level 95% CI (seeds, then instances)", "sd(Δ) over seeds",
                  "MDE (80% power, α = 0.05)", f"seeds for Δ = ±{self.power_effect:g}",
                  "seeds for the observed Δ"], rows,
                 ["sd(Δ): SD over seeds of the per-seed paired difference; MDE: the smallest "
                  "|Δ| the two-sided paired t-test over these seeds detects with 80% power at "
                  "α = 0.05 (noncentral t); seeds for an effect: the fewest seeds giving that "
                  "power at this sd(Δ) (— : none needed for Δ = 0, or more than 100,000). "
                  "sd(Δ) is estimated from the seeds at hand (n - 1 degrees of freedom): with "
                  "few seeds the MDE and the seed counts are rough.",
                  "Two-level CI: percentile bootstrap resampling seeds, then each drawn seed's "
                  "test instances; it adds the instance sampling noise to the seed-level one."],
                 data)

  def tables(self) -> list[Table]:
    """The study's tables that have the runs they need, in report order."""
    built = []
    for name in self.table_names:
      if (table := TABLES[name](self, built)) is not None:
        built.append(table)
    return built


# How each of sweeps.TABLE_NAMES is built: name -> function of the Builder and the tables built
# before it.
TABLES = {
    "table1_main": lambda b, _: b.main(),
    "table1b_pairwise": lambda b, _: b.pairwise(),
    "table2_benchmarks": lambda b, _: b.versus(BENCHMARK_KEY, "table2_benchmarks",
                                               "Table 2: per benchmark", "Benchmark",
                                               "Improvement (%)"),
    "table3_levels": lambda b, _: b.levels(),
    "table4_ablation": lambda b, _: b.ablation(),
    "table5_scaling": lambda b, _: b.versus("data.num_train", "table5_scaling",
                                            "Table 5: scaling with training size",
                                            "Training size", "Relative gain (%)"),
    "table6_overhead": lambda b, _: b.overhead(),
    "architectures": lambda b, _: b.versus("model.encoder", "architectures",
                                           "Architectures: methods per encoder", "Encoder",
                                           "Improvement (%)"),
    "negatives": lambda b, _: b.variants(),
    "negatives_ensemble": lambda b, _: b.ensembles(),
    "power": lambda b, built: b.power(built),
}


# ---------------------------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------------------------
def plot(tables: list[Table], out: str, f_name: str) -> list[str]:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  written = []
  by_name = {t.name: t for t in tables}

  def save(fig, name):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(name)

  if "table3_levels" in by_name:
    data = [d for d in by_name["table3_levels"].data if "level" in d]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in data[0]["cells"]:
      pts = [(i, d["cells"][arm]) for i, d in enumerate(data) if d["cells"][arm]]
      x = [i for i, _ in pts]
      ax.plot(x, [c["mean"] for _, c in pts], marker="o", label=arm)
      if all("low" in c for _, c in pts):
        ax.fill_between(x, [c["low"] for _, c in pts], [c["high"] for _, c in pts], alpha=0.2)
    ax.set_xticks(range(len(data)), [d["level"] for d in data])
    ax.set(xlabel="supervision level", ylabel=f"test {f_name}", title="Metric by level (95% CI)")
    ax.legend()
    save(fig, "levels.png")
  if "table5_scaling" in by_name:
    curves = {}  # arm -> {training size: cell}
    for d in by_name["table5_scaling"].data:
      curves.setdefault(d["arm"], {})[d["value"]] = d["a"]
      curves.setdefault(d["versus"], {})[d["value"]] = d["b"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, by_size in curves.items():
      x = sorted(by_size)
      ax.plot(x, [by_size[v]["mean"] for v in x], marker="o", label=arm)
      if all("low" in by_size[v] for v in x):
        ax.fill_between(x, [by_size[v]["low"] for v in x], [by_size[v]["high"] for v in x],
                        alpha=0.2)
    ax.set_xscale("log")
    ax.set(xlabel="training-set size", ylabel=f"test {f_name}", title="Scaling (95% CI)")
    ax.legend()
    save(fig, "scaling.png")
  # Forest: the pooled comparisons (the study's answer) first, then those per benchmark.
  forest = [(f"pooled: {d['comparison']}", d)
            for d in getattr(by_name.get("table1b_pairwise"), "data", []) if "diff" in d]
  forest += [(f"{d['value']}: {d['arm']} − {d['versus']}", d["comparison"])
             for d in getattr(by_name.get("table2_benchmarks"), "data", []) if d["comparison"]]
  if forest:
    fig, ax = plt.subplots(figsize=(7.5, 1.5 + 0.5 * len(forest)))
    for i, (label, c) in enumerate(forest):
      color = "C1" if label.startswith("pooled") else "C0"
      if "t_low" in c and c["n"] < stats.SMALL_N:  # As the tables: the bootstrap alone
        # understates the uncertainty of few seeds.
        ax.plot([c["t_low"], c["t_high"]], [i, i], color=color, alpha=0.25, lw=6)
      if "low" in c:
        ax.plot([c["low"], c["high"]], [i, i], color=color)
      ax.plot([c["diff"]], [i], "o", color=color)
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(forest)), [label for label, _ in forest])
    ax.invert_yaxis()
    ax.locator_params(axis="x", nbins=5)
    ax.set(xlabel=f"Δ {f_name}, 95% CI", title="Paired differences (line: bootstrap;\nband: "
           f"t-interval, below {stats.SMALL_N} seeds)")
    save(fig, "forest.png")
  return written


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------
def write_report(sweep_dir: str, out: str | None = None, seed: int = 0,
                 n_resamples: int = 9999, metric: str | None = None,
                 power_effect: float = 0.01) -> str:
  """Writes OUT/REPORT.md, OUT/<table>.tex, OUT/report.json and plots; returns OUT.

  metric: a per-instance metric to tabulate instead of the study's pre-declared primary metric
  (a secondary analysis; the report says so). power_effect: the |Δ| whose required seeds the
  power table gives.
  """
  manifest, runs = collect(sweep_dir)
  builder = Builder(sweep_dir, manifest, runs, seed, n_resamples, metric, power_effect)
  out = out or os.path.join(sweep_dir, "report")
  os.makedirs(out, exist_ok=True)
  tables = builder.tables()
  for t in tables:
    with open(os.path.join(out, f"{t.name}.tex"), "w") as f:
      f.write(t.latex())
  pictures = plot(tables, out, builder.f_name)
  counts = {s: sum(r.state == s for r in runs) for s in sweeps.STATES}
  lines = [f"# Report: {manifest['config']}", "",
           f"Runs: {len(runs)} ({', '.join(f'{s} {n}' for s, n in counts.items())}). "
           + (f"Primary metric: {builder.metric} (declared by the study config). "
              if metric in (None, manifest["study"]["primary_metric"]) else
              f"Metric: {metric}, a SECONDARY analysis (the study declared "
              f"{manifest['study']['primary_metric']}). ")
           + "Baseline arm: "
           f"{builder.baseline}; ours: {builder.ours}. Bootstrap: {n_resamples} resamples, "
           f"numpy seed {seed}.", ""]
  lines += [t.markdown() for t in tables] or ["No table has the finished runs it needs yet.\n"]
  lines += [f"![{p}]({p})\n" for p in pictures]
  missing = [r for r in runs if r.state != "done"]
  lines += ["## Runs not included", ""]
  lines += [f"- `{r.id}` {r.state}: {json.dumps(r.overrides)}" + (f" — {r.error}" if r.error
                                                                    else "") for r in missing]
  lines += ["" if missing else "None: every run of the manifest is done.", ""]
  with open(os.path.join(out, "REPORT.md"), "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(dict(config=manifest["config"], study=manifest["study"], counts=counts,
                   missing={r.id: r.state for r in missing},
                   tables={t.name: t.data for t in tables},
                   references={t.name: t.references for t in tables if t.references}), f,
              indent=2, default=str)
  logging.info("Report written to %s (%d tables).", out, len(tables))
  return out


FLAGS = flags.FLAGS


def main(argv) -> None:
  cli.no_arguments(argv)
  print(os.path.join(write_report(FLAGS.sweep_dir, FLAGS.out, FLAGS.seed, FLAGS.n_resamples,
                                  FLAGS.metric, FLAGS.power_effect), "REPORT.md"))


if __name__ == "__main__":
  flags.DEFINE_string("sweep_dir", None, "Sweep directory (launch/sweep.py --sweep_dir).")
  flags.DEFINE_string("out", None, "Output directory (default SWEEP_DIR/report).")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap and permutation resampling.")
  flags.DEFINE_integer("n_resamples", 9999, "Bootstrap resamples per interval.")
  flags.DEFINE_string("metric", None, "Tabulate this per-instance metric (e.g. iou) instead of "
                      "the study's declared primary metric: a secondary analysis.")
  flags.DEFINE_float("power_effect", 0.01, "The power table gives the seeds needed to detect "
                     "this |Δ| of the metric (80% power, α = 0.05).")
  flags.mark_flag_as_required("sweep_dir")
  cli.run(main)
