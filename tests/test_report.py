"""Report tables recomputed independently from synthetic per-instance rows of a fake sweep."""
import json
import os
import shutil

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from configs import default
from recon3d_jax import config_lib
from recon3d_jax.study import report, sweeps

SEEDS = range(5)
INSTANCES = range(6)
DOMAINS = ("primitives", "compounds")
# Per-seed improvement of "both" over "vanilla" on each benchmark (mixed signs on compounds).
DELTA = {"primitives": [0.05, 0.03, 0.04, 0.06, 0.02], "compounds": [0.01, -0.02, 0.03, 0.0, 0.02]}


def _value(domain, arm, seed, index):
  """Known F@0.02 of one instance: a seed effect, an instance effect and the arm's delta."""
  value = 0.3 + 0.02 * seed + 0.01 * index + (0.1 if domain == "compounds" else 0.0)
  return value + (DELTA[domain][seed] if arm == "both" else 0.0)


def _write_run(sweep_dir, overrides, rows=None, done=True, summary=None):
  rid = sweeps.run_id(overrides)
  eval_dir = os.path.join(sweeps.run_dir(sweep_dir, rid), "eval")
  os.makedirs(eval_dir)
  if done:
    with open(os.path.join(eval_dir, "test.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(eval_dir, "summary.json"), "w") as f:
      json.dump(summary or {"test": {}}, f)
    open(os.path.join(sweeps.run_dir(sweep_dir, rid), sweeps.DONE), "w").close()
  return rid


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
  """Two arms x two benchmarks x five seeds of known rows, plus one run never finished."""
  sweep_dir = str(tmp_path_factory.mktemp("sweep"))
  runs = {}
  for domain in DOMAINS:
    for arm in ("vanilla", "both"):
      for seed in SEEDS:
        overrides = {"arm": arm, "seed": seed, "data.benchmark": domain}
        rows = [{"index": i, "fscore@0.02": _value(domain, arm, seed, i),
                 "precision@0.02": 0.5, "recall@0.02": 0.25, "accuracy": 0.9}
                for i in INSTANCES]
        runs[_write_run(sweep_dir, overrides, rows)] = overrides
  pending = {"arm": "depth", "seed": 0, "data.benchmark": "primitives"}
  runs[_write_run(sweep_dir, pending, done=False)] = pending
  manifest = dict(config="fake", base=json.loads(default.get_config("runlocal").to_json()),
                  study=dict(primary_metric="fscore@0.02", baseline_arm="vanilla",
                             ours_arm="both"),
                  runs={rid: dict(overrides=o, depends_on=[]) for rid, o in runs.items()})
  with open(os.path.join(sweep_dir, sweeps.MANIFEST), "w") as f:
    json.dump(manifest, f)
  # Its study settings have no "tables", as in manifests written before studies declared them.
  out = report.write_report(sweep_dir, n_resamples=4999)
  with open(os.path.join(out, "report.json")) as f:
    return out, json.load(f), sweeps.run_id(pending)


def _per_seed(domain, arm):
  return np.array([np.mean([_value(domain, arm, s, i) for i in INSTANCES]) for s in SEEDS])


def test_per_benchmark_table_matches_scipy_and_statsmodels(fake_sweep):
  _, result, _ = fake_sweep
  table = {d["value"]: d for d in result["tables"]["table2_benchmarks"]}
  assert sorted(table) == sorted(DOMAINS)
  exact_p = []
  for domain in DOMAINS:
    x, y = _per_seed(domain, "both"), _per_seed(domain, "vanilla")
    c = table[domain]["comparison"]
    assert (table[domain]["arm"], table[domain]["versus"]) == ("both", "vanilla")
    assert table[domain]["b"]["mean"] == pytest.approx(y.mean())
    assert table[domain]["a"]["mean"] == pytest.approx(x.mean())
    assert c["diff"] == pytest.approx(np.mean(DELTA[domain]))
    assert table[domain]["relative_gain"] == pytest.approx(100 * (x.mean() / y.mean() - 1))
    assert c["n"] == 5 and c["unit"] == "seeds"
    t_ci = scipy.stats.ttest_rel(x, y).confidence_interval(0.95)
    assert (c["t_low"], c["t_high"]) == pytest.approx((t_ci.low, t_ci.high))
    boot = scipy.stats.bootstrap((x - y,), np.mean, method="BCa", n_resamples=4999,
                                 random_state=1).confidence_interval
    width = boot.high - boot.low
    assert c["low"] == pytest.approx(boot.low, abs=0.1 * width)
    assert c["high"] == pytest.approx(boot.high, abs=0.1 * width)
    perm = scipy.stats.permutation_test((x, y), lambda a, b: np.mean(a - b),
                                        permutation_type="samples", n_resamples=np.inf)
    assert c["p"] == pytest.approx(perm.pvalue)
    exact_p.append(perm.pvalue)
  holm = multipletests(exact_p, method="holm")[1]
  for domain, p in zip(DOMAINS, holm):
    assert table[domain]["comparison"]["p_holm"] == pytest.approx(p)


def test_main_table_pools_benchmarks_per_seed(fake_sweep):
  _, result, _ = fake_sweep
  rows = {d["arm"]: d for d in result["tables"]["table1_main"]}
  assert sorted(rows) == ["both", "vanilla"]  # The unfinished depth run has no cell.
  pooled = (_per_seed("primitives", "both") + _per_seed("compounds", "both")) / 2
  assert rows["both"]["fscore@0.02"]["mean"] == pytest.approx(pooled.mean())
  assert rows["both"]["fscore@0.02"]["n_seeds"] == 5
  assert rows["both"]["accuracy"]["mean"] == pytest.approx(90.0)
  assert rows["vanilla"]["recall@0.02"]["mean"] == pytest.approx(0.25)


def test_report_lists_missing_runs_and_writes_latex_and_plots(fake_sweep):
  out, result, pending_id = fake_sweep
  assert result["missing"] == {pending_id: "pending"}
  with open(os.path.join(out, "REPORT.md")) as f:
    text = f.read()
  assert f"`{pending_id}` pending" in text
  assert "p (Holm)" in text and "Table 3" not in text  # No levels in this sweep: no table 3.
  with open(os.path.join(out, "table2_benchmarks.tex")) as f:
    assert "\\begin{tabular}" in f.read()
  assert os.path.getsize(os.path.join(out, "forest.png")) > 5_000


def test_pairwise_table_pools_benchmarks_into_paired_seeds(fake_sweep):
  _, result, _ = fake_sweep
  (row,) = result["tables"]["table1b_pairwise"]  # Only "both" and "vanilla" finished.
  assert row["comparison"] == "both − vanilla"
  x = (_per_seed("primitives", "both") + _per_seed("compounds", "both")) / 2
  y = (_per_seed("primitives", "vanilla") + _per_seed("compounds", "vanilla")) / 2
  assert row["diff"] == pytest.approx(np.mean(x - y)) and row["n"] == 5
  perm = scipy.stats.permutation_test((x, y), lambda a, b: np.mean(a - b),
                                      permutation_type="samples", n_resamples=np.inf)
  assert row["p"] == pytest.approx(perm.pvalue)
  assert row["d_z"] == pytest.approx(np.mean(x - y) / np.std(x - y, ddof=1))


def test_secondary_metric_is_labelled_as_such(fake_sweep, tmp_path):
  out, _, _ = fake_sweep
  second = report.write_report(os.path.dirname(out), str(tmp_path), n_resamples=999,
                               metric="recall@0.02")
  with open(os.path.join(second, "report.json")) as f:
    rows = {d["arm"]: d for d in json.load(f)["tables"]["table1_main"]}
  assert rows["both"]["recall@0.02"]["mean"] == pytest.approx(0.25)
  with open(os.path.join(second, "REPORT.md")) as f:
    assert "Metric: recall@0.02, a SECONDARY analysis (the study declared fscore@0.02)" in f.read()


def _baselines(offset, n):
  """A summary.json "baselines" entry of n test instances whose values all shift by `offset`."""
  means = lambda v: {"precision@0.02": v, "recall@0.02": v + 0.1, "fscore@0.02": v + 0.2,
                     "accuracy": v + 0.3, "num_instances": n}
  return dict(mean_shape=means(offset), retrieval=means(offset + 0.01),
              retrieval_oracle=means(offset + 0.02), mean_shape_threshold=0.3)


def test_baselines_are_reference_rows_pooled_by_instances(tmp_path):
  """Each benchmark's baselines (identical in its runs) pooled by instance count into labelled
  rows of table 1, which stay out of the arms' data."""
  sweep_dir = str(tmp_path)
  runs = {}
  for domain, (offset, n) in zip(DOMAINS, ((0.1, 6), (0.4, 2))):
    for seed in (0, 1):
      overrides = {"arm": "vanilla", "seed": seed, "data.benchmark": domain}
      rows = [{"index": i, "fscore@0.02": 0.3, "precision@0.02": 0.5, "recall@0.02": 0.25,
               "accuracy": 0.9} for i in INSTANCES]
      summary = {"test": {}, "baselines": _baselines(offset, n)}
      runs[_write_run(sweep_dir, overrides, rows, summary=summary)] = overrides
  manifest = dict(config="fake", base=json.loads(default.get_config("runlocal").to_json()),
                  study=dict(primary_metric="fscore@0.02", baseline_arm="vanilla",
                             ours_arm="both"),
                  runs={rid: dict(overrides=o, depends_on=[]) for rid, o in runs.items()})
  with open(os.path.join(sweep_dir, sweeps.MANIFEST), "w") as f:
    json.dump(manifest, f)
  out = report.write_report(sweep_dir, n_resamples=999)
  with open(os.path.join(out, "report.json")) as f:
    result = json.load(f)
  assert [d["arm"] for d in result["tables"]["table1_main"]] == ["vanilla"]
  pooled = result["references"]["table1_main"]["pooled"]
  for name, shift in (("mean_shape", 0.0), ("retrieval", 0.01), ("retrieval_oracle", 0.02)):
    expected = (6 * (0.1 + shift) + 2 * (0.4 + shift)) / 8
    assert pooled[name]["precision@0.02"] == pytest.approx(expected)
    assert pooled[name]["fscore@0.02"] == pytest.approx(expected + 0.2)
    assert pooled[name]["num_instances"] == 8
  with open(os.path.join(out, "REPORT.md")) as f:
    text = f.read()
  oracle_f = (6 * 0.12 + 2 * 0.42) / 8 + 0.2
  oracle_accuracy = 100 * ((6 * 0.12 + 2 * 0.42) / 8 + 0.3)
  assert (f"| retrieval oracle (reference; uses test GT) | {(6 * 0.12 + 2 * 0.42) / 8:.3f} | "
          f"{(6 * 0.12 + 2 * 0.42) / 8 + 0.1:.3f} | {oracle_f:.3f} | {oracle_accuracy:.1f} |"
          in text)
  assert "| mean shape (reference) |" in text and "Reference rows, not trained arms" in text


def test_power_table_matches_statsmodels_for_the_pairwise_comparison(fake_sweep):
  """sd(Δ) over seeds, the minimum detectable effect and the seeds an effect needs, recomputed
  with statsmodels' paired t-test power (an independent noncentral-t implementation)."""
  from statsmodels.stats.power import TTestPower  # pylint: disable=import-outside-toplevel
  _, result, _ = fake_sweep
  rows = {d["comparison"]: d for d in result["tables"]["power"]}
  row = rows["Table 1b: both − vanilla"]
  x = (_per_seed("primitives", "both") + _per_seed("compounds", "both")) / 2
  y = (_per_seed("primitives", "vanilla") + _per_seed("compounds", "vanilla")) / 2
  sd = np.std(x - y, ddof=1)
  assert row["sd_diff"] == pytest.approx(sd) and row["n"] == 5
  mde = TTestPower().solve_power(nobs=5, alpha=0.05, power=0.8) * sd
  assert row["mde"] == pytest.approx(mde, rel=1e-4)
  needed = TTestPower().solve_power(effect_size=0.01 / sd, alpha=0.05, power=0.8)
  assert row["seeds_for_effect"] == int(np.ceil(needed))
  # The two-level interval (seeds, then instances) brackets the mean difference.
  assert row["low_two_level"] < row["diff"] < row["high_two_level"]
  assert {f"Table 2: Benchmark={d}: both − vanilla" for d in DOMAINS} < set(rows)


def test_manifest_without_tables_gets_every_table_it_has_runs_for(fake_sweep):
  """A manifest from before studies declared tables: the tables the report built then."""
  _, result, _ = fake_sweep
  assert list(result["tables"]) == ["table1_main", "table1b_pairwise", "table2_benchmarks",
                                    "power"]


def test_the_tables_declared_are_the_tables_built(fake_sweep, tmp_path):
  out, _, _ = fake_sweep
  sweep_dir = str(tmp_path / "sweep")
  shutil.copytree(os.path.dirname(out), sweep_dir, ignore=shutil.ignore_patterns("report"))
  manifest = sweeps.read_manifest(sweep_dir)
  manifest["study"]["tables"] = ["table2_benchmarks", "table1_main"]
  with open(os.path.join(sweep_dir, sweeps.MANIFEST), "w") as f:
    json.dump(manifest, f)
  with open(os.path.join(report.write_report(sweep_dir, n_resamples=99), "report.json")) as f:
    assert list(json.load(f)["tables"]) == ["table1_main", "table2_benchmarks"]  # Report order.


def test_a_study_declaring_an_unknown_table_is_refused_at_launch_and_by_the_report(tmp_path):
  """The launcher loads the study config and names the bad table; a manifest edited by hand is
  refused by the report the same way."""
  (tmp_path / "study.py").write_text(
      "from configs import default\n"
      "PRIMARY_METRIC, BASELINE_ARM, OURS_ARM = 'fscore@0.02', 'vanilla', 'normal'\n"
      "TABLES = ('table1_main',)\n"
      "get_config = lambda arg=None: default.get_config('runlocal')\n"
      "sweep = lambda arg=None: [{'arm': 'vanilla'}]\n")
  sweeps.write_manifest(str(tmp_path), sweeps.load_study(str(tmp_path / "study.py")))
  text = (tmp_path / "study.py").read_text()
  (tmp_path / "study.py").write_text(text.replace("('table1_main',)", "('table1_main', 'table7')"))
  with pytest.raises(config_lib.ConfigError, match=r"study.py.*\['table7'\].*table1_main"):
    sweeps.load_study(str(tmp_path / "study.py"))
  manifest = sweeps.read_manifest(str(tmp_path))
  manifest["study"]["tables"] = ["table1_main", "table7"]
  (tmp_path / sweeps.MANIFEST).write_text(json.dumps(manifest))
  with pytest.raises(config_lib.ConfigError, match=r"\['table7'\].*table1_main"):
    report.write_report(str(tmp_path))


def test_the_report_builds_every_table_a_study_may_declare():
  assert list(report.TABLES) == list(sweeps.TABLE_NAMES)
