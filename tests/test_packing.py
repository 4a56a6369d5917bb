"""Packed training: which runs pack, the packed step against separate steps, packed runs end to
end against the same runs trained alone, and resume."""
import json
import shutil

import jax
import numpy as np
import pytest

import conftest  # tests/, beside this file

from recon3d_jax import config_lib, cost, experiment, packing, sharding, train, writers
from recon3d_jax.study import sweeps


def _config(tiny_config, **overrides):
  return config_lib.apply_overrides(tiny_config, overrides)


def _relative_difference(a, b) -> float:
  """||a - b|| / ||b|| over all parameters of two pytrees.

  After a few Adam steps this is ~6e-4 between the same run on 1 and on 8 devices (Adam turns
  float rounding in near-zero gradients into whole steps), so that is the scale of "equal"."""
  sq = lambda tree: sum(float(np.sum(np.square(np.asarray(x)))) for x in jax.tree.leaves(tree))
  return (sq(jax.tree.map(lambda x, y: np.asarray(x) - np.asarray(y), a, b)) / sq(b)) ** 0.5


# ---------------------------------------------------------------------------------------------
# Which runs pack.
# ---------------------------------------------------------------------------------------------
def test_group_packs_equal_keys_in_order_and_leaves_none_alone():
  assert packing.group(["a", "b", "a", None, "a", "a"], 2) == [[0, 2], [1], [3], [4, 5]]
  assert packing.group(["a", "a", "a"], 1) == [[0], [1], [2]]
  assert packing.group([], 4) == []
  with pytest.raises(config_lib.ConfigError, match="pack_size=0: expected a positive"):
    packing.group(["a"], 0)


def test_core_arms_and_seeds_pack_other_differences_do_not(tiny_config):
  sig = lambda **o: packing.signature(_config(tiny_config, **o).to_dict())
  assert sig(arm="vanilla", seed=0) == sig(arm="depth", seed=3) == sig(arm="both", seed=1)
  assert sig(arm="normal", **{"loss.normal_weight": 2.0}) == sig(arm="normal")
  assert sig(arm="oracle") != sig(arm="both")  # 7 input channels: another model.
  assert sig(arm="sketch") != sig(arm="both")
  assert sig(arm="full") is None  # 3D-R-DEP: instance weights and a stage-1 encoder per run.
  assert sig(**{"data.benchmark": "compounds"}) != sig()
  assert sig(**{"optimizer.learning_rate": 1e-4}) != sig()
  with pytest.raises(config_lib.ConfigError, match=r"cannot pack .*differ at \['data.benchmark'"):
    packing.check_packable([_config(tiny_config).to_dict(),
                            _config(tiny_config, **{"data.benchmark": "compounds"}).to_dict()])


def test_sweep_packs_only_runs_at_the_same_step_without_dependencies_or_failures(tmp_path,
                                                                                 tiny_config):
  runs = [{"arm": a, "seed": s} for s in (0, 1) for a in ("vanilla", "depth")]
  runs += [{"arm": "oracle", "seed": 0}, {"arm": "stage1", "seed": 0},
           {"arm": "full", "seed": 0, "init_from": {"arm": "stage1", "seed": 0}}]
  study = sweeps.Study("fake", type("M", (), dict(PRIMARY_METRIC="f", BASELINE_ARM="vanilla",
                                                  OURS_ARM="full", TABLES=())),
                       tiny_config, tuple(sweeps.expand(tiny_config, runs)))
  manifest = sweeps.write_manifest(str(tmp_path), study)
  ids = [sweeps.run_id(r) for r in runs]
  plan = lambda size: sweeps.plan_packs(manifest, str(tmp_path), ids, size)
  assert plan(4) == [ids[:4], [ids[4]], [ids[5]], [ids[6]]]
  # stage1 builds the core arms' model, so it packs with them once the first pack is full.
  assert plan(3) == [ids[:3], [ids[3], ids[5]], [ids[4]], [ids[6]]]
  (tmp_path / "runs" / ids[1] / "checkpoints" / "4").mkdir(parents=True)  # Resumes at step 4.
  sweeps.mark_failed(str(tmp_path), ids[2], "boom")
  assert plan(4)[:3] == [[ids[0], ids[3], ids[5]], [ids[1]], [ids[2]]]


# ---------------------------------------------------------------------------------------------
# The packed step.
# ---------------------------------------------------------------------------------------------
def test_packed_step_matches_separate_steps(tiny_config):
  """Three models (two arms of seed 0, one of seed 1): two data streams, three loss weights."""
  configs = [_config(tiny_config, arm="vanilla", seed=0), _config(tiny_config, arm="depth", seed=0),
             _config(tiny_config, arm="both", seed=1)]
  stream_of = [0, 0, 1]
  mesh = sharding.make_mesh()
  model, tx = experiment.build_model(tiny_config), experiment.make_optimizer(tiny_config)
  init = experiment.init_fn(tiny_config, model, tx, mesh)
  streams = [[cost.synthetic_batch(tiny_config, tiny_config.batch_size, seed=10 * s + t)
              for t in range(2)] for s in range(2)]

  separate = []
  for c, s in zip(configs, stream_of):
    state, step = init(c.seed), experiment.train_step_for(c, model, tx, mesh)
    for batch in streams[s]:
      state, stats = step(state, sharding.shard_batch(batch, mesh))
    separate.append((jax.device_get(state), jax.device_get(stats)))

  states = jax.tree.map(lambda *x: jax.numpy.stack(x), *[init(c.seed) for c in configs])
  step = experiment.packed_train_step_for(configs, model, tx, mesh, stream_of)
  for t in range(2):
    batches = jax.tree.map(lambda *x: np.stack(x), *[streams[s][t] for s in range(2)])
    states, stats = step(states, sharding.shard_batch(batches, mesh, axis=1))
  states, stats = jax.device_get((states, stats))
  for k, (state, run_stats) in enumerate(separate):
    for name, value in run_stats.items():
      np.testing.assert_allclose(stats[name][k], value, rtol=1e-5, err_msg=name)
    assert _relative_difference(jax.tree.map(lambda x: x[k], states["params"]),
                                state["params"]) < 1e-4  # As 1 vs 8 devices.
  # The models really differ: their own init and data.
  assert _relative_difference(separate[0][0]["params"], separate[2][0]["params"]) > 1e-2


# ---------------------------------------------------------------------------------------------
# Packed runs end to end.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pack_of_four(tiny_config, tmp_path_factory):
  """2 seeds x 2 arms trained packed: (configs, workdirs, final states)."""
  configs = [_config(tiny_config, arm=a, seed=s) for s in (0, 1) for a in ("vanilla", "depth")]
  workdirs = [str(tmp_path_factory.mktemp(f"packed{k}")) for k in range(4)]
  return configs, workdirs, train.train_and_evaluate_pack(configs, workdirs)


def _rows(workdir, split="test"):
  with open(f"{workdir}/eval/{split}.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_packed_runs_match_the_same_runs_trained_alone(pack_of_four, tmp_path):
  configs, workdirs, packed = pack_of_four
  differences = []
  for k, config in enumerate(configs):
    alone = train.train_and_evaluate(config, str(tmp_path / f"alone{k}"))
    differences.append(_relative_difference(packed[k]["params"], alone["params"]))
    loss = lambda w: [r["train/loss/total"] for r in writers.read_metrics(w)
                      if "train/loss/total" in r]
    np.testing.assert_allclose(loss(workdirs[k]), loss(str(tmp_path / f"alone{k}")), rtol=1e-3)
    for ours, theirs in zip(_rows(workdirs[k]), _rows(str(tmp_path / f"alone{k}"))):
      assert ours["index"] == theirs["index"]
      for name in ("iou", "fscore@0.02", "chamfer_l1"):  # Meshes of nearly equal fields.
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-2, err_msg=name)
  print(f"relative parameter difference, packed vs alone: {max(differences):.2e}")
  assert max(differences) < 2e-3
  # Each run's workdir is a single run's: config.json of its own arm and seed, DONE-ready files.
  for config, workdir in zip(configs, workdirs):
    with open(f"{workdir}/config.json") as f:
      assert (json.load(f)["arm"], config.seed) == (config.arm, config.seed)


@pytest.mark.slow
def test_interrupted_pack_resumes_to_identical_parameters(pack_of_four, tmp_path, monkeypatch):
  configs, _, packed = pack_of_four
  workdirs = [str(tmp_path / f"run{k}") for k in range(4)]
  conftest.crash_metric_writes_at(monkeypatch, 6)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate_pack(configs, workdirs)
  monkeypatch.undo()
  for config, workdir in zip(configs, workdirs):
    assert experiment.checkpoint_manager(workdir, config).latest_step() == 4
  shutil.copytree(workdirs[3], tmp_path / "alone")

  resumed = train.train_and_evaluate_pack(configs, workdirs)  # The same pack: bit for bit.
  for ours, theirs in zip(resumed, packed):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(ours["params"]),
                 jax.device_get(theirs["params"]))
  # A packed run's workdir is a single run's: it resumes alone too (another program, so to
  # float tolerance).
  alone = train.train_and_evaluate(configs[3], str(tmp_path / "alone"))
  assert _relative_difference(alone["params"], packed[3]["params"]) < 2e-3


def test_a_pack_of_runs_at_different_steps_is_refused(tiny_config, tmp_path):
  configs = [_config(tiny_config, seed=s) for s in (0, 1)]
  (tmp_path / "a" / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "b").mkdir()
  # An empty step folder is no checkpoint to Orbax; a real one is needed for a real step.
  with pytest.raises(config_lib.ConfigError, match="pack|checkpoint|step"):
    train.train_and_evaluate_pack(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
