"""End-to-end training: artifacts, exact resume, data parallelism, NaN stop, bad input."""
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import conftest  # tests/, beside this file

from recon3d_jax import config_lib, evaluate, experiment, metrics, sharding, train, writers
from recon3d_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy(config, **overrides):
  return config_lib.apply_overrides(config, overrides)


@pytest.fixture(scope="module")
def uninterrupted(tiny_config, tmp_path_factory):
  """One full tiny run: (workdir, final state)."""
  workdir = str(tmp_path_factory.mktemp("run_a"))
  return workdir, train.train_and_evaluate(tiny_config, workdir)


def _assert_train_seconds_monotone(rows):
  """Every metrics row carries the cumulative training time, never going back."""
  seconds = [r[writers.TRAIN_SECONDS] for r in rows]
  assert seconds[0] >= 0 and seconds == sorted(seconds)


@pytest.mark.slow
def test_run_writes_logs_checkpoints_and_evaluation(uninterrupted, tiny_config):
  workdir, state = uninterrupted
  assert int(state["step"]) == tiny_config.total_steps
  rows = writers.read_metrics(workdir)
  _assert_train_seconds_monotone(rows)
  assert os.path.getsize(os.path.join(workdir, "eval", "learning_curves.png")) > 10_000
  train_steps = [r["step"] for r in rows if "train/loss/total" in r]
  assert train_steps == list(range(2, tiny_config.total_steps + 1, 2))
  assert any("val/iou@0.5" in r for r in rows)
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["arm"] == tiny_config.arm
  for split in ("validation", "test"):
    with open(os.path.join(workdir, "eval", f"{split}.jsonl")) as f:
      instance_rows = [json.loads(line) for line in f]
    assert len(instance_rows) == 8
    assert len({r["index"] for r in instance_rows}) == 8
    for r in instance_rows:
      assert all(np.isfinite(v) for v in r.values())
      assert 0 <= r["iou"] <= 1 and 0 <= r["fscore@0.02"] <= 1
      assert 9**3 <= r["mise_points"] <= 17**3  # The coarse grid, at most the whole fine one.
    assert os.path.getsize(os.path.join(workdir, "eval", f"{split}.png")) > 10_000
  with open(os.path.join(workdir, "eval", "summary.json")) as f:
    summary = json.load(f)
  assert summary["threshold"] in tiny_config.eval.threshold_candidates
  assert summary["test"]["num_instances"] == 8
  assert summary["mesh_grid"] == dict(resolution0=8, upsampling_steps=1, points_per_side=17,
                                      grid_points=17**3)
  # The recognition baselines' test means sit beside the model's, their rows in their own file.
  assert summary["baselines"]["retrieval"]["num_instances"] == 8
  with open(os.path.join(workdir, "eval", "baselines_test.jsonl")) as f:
    assert len(f.readlines()) == 3 * 8


@pytest.mark.slow
def test_evaluation_mise_mesh_matches_the_dense_grid(uninterrupted):
  """On the trained tiny model, at the run's threshold: MISE's grid without upsampling is the
  directly decoded dense grid, and MISE to 33 points per side meshes like the dense 33^3 grid."""
  workdir, _ = uninterrupted
  model, params, config = experiment.load(workdir)
  with open(os.path.join(workdir, "eval", "summary.json")) as f:
    threshold = json.load(f)["threshold"]
  mesh = sharding.make_mesh()
  batch = next(iter(pipeline.eval_batches(pipeline.load_sources(config.data)["test"], 8, 8)))
  grids = {}
  for resolution0, steps in ((32, 0), (8, 2)):
    eval_config = ml_collections.ConfigDict(dict(mise_resolution0=resolution0,
                                                 mise_upsampling_steps=steps))
    grids[steps], evaluated = evaluate.mesh_grids([(model, params)], batch, mesh, threshold,
                                                  eval_config)
  axis = np.linspace(-metrics.BOX_SIZE / 2, metrics.BOX_SIZE / 2, 33, dtype=np.float32)
  lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
  direct = evaluate._probs_at(model, lattice)(params, batch["image"])
  np.testing.assert_allclose(grids[0], direct, atol=1e-5)
  assert np.all(evaluated < 33**3)
  unit = lambda v: np.full_like(v, 1 / np.sqrt(3))
  for dense, refined in zip(grids[0], grids[2]):
    va, fa = metrics.mesh_from_occupancy(dense, threshold)
    vb, fb = metrics.mesh_from_occupancy(refined, threshold)
    assert (len(fa) == 0) == (len(fb) == 0)
    if len(fa):
      assert metrics.pointcloud_metrics(va, unit(va), vb, unit(vb))["chamfer_l1"] < 1e-3


def test_older_configs_get_the_current_eval_settings(tiny_config, tmp_path):
  """A run saved before MISE (eval.grid_resolution, no mise_* keys) still loads: the retired
  key is dropped and the defaults filled in."""
  saved = tiny_config.to_dict()
  del saved["eval"]["mise_resolution0"], saved["eval"]["mise_upsampling_steps"]
  saved["eval"]["grid_resolution"] = 32
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  config = experiment.load_config(str(tmp_path))
  assert "grid_resolution" not in config.eval
  assert (config.eval.mise_resolution0, config.eval.mise_upsampling_steps) == (32, 2)
  experiment.validate(config)
  from configs import default
  current = default.get_config().eval
  assert config_lib.EVAL_DEFAULTS == {k: current[k] for k in config_lib.EVAL_DEFAULTS}


@pytest.mark.slow
def test_full_arm_with_voxel_decoder_end_to_end(uninterrupted, tiny_config, tmp_path):
  """3D-R-DEP on mixed-quality supervision, encoder from an earlier run, voxel decoder: weight
  statistics are logged and every evaluation metric (ECE included) is finite."""
  workdir_a, state_a = uninterrupted
  config = _copy(tiny_config, arm="full", init_from=workdir_a,
                 **{"model.decoder": "voxel", "data.supervision": "minimal:0.5,extreme:0.5"})
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert "voxels" in state["params"] and "scorer" in state["params"]
  rows = [r for r in writers.read_metrics(workdir) if "train/loss/total" in r]
  assert [r["step"] for r in rows] == list(range(2, config.total_steps + 1, 2))
  for r in rows:
    assert 0 < r["train/weights/entropy"] <= np.log(config.batch_size) + 1e-5
    assert 1 / config.batch_size - 1e-6 <= r["train/weights/max"] <= 1
    assert -1 <= r["train/weights/corr_level"] <= 1 and r["train/loss/kl"] >= 0
  with open(os.path.join(workdir, "eval", "test.jsonl")) as f:
    instance_rows = [json.loads(line) for line in f]
  assert len(instance_rows) == 8
  for r in instance_rows:
    assert all(np.isfinite(v) for v in r.values()) and 0 <= r["ece"] <= 1


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_parameters(uninterrupted, tiny_config, tmp_path,
                                                         monkeypatch):
  workdir_a, state_a = uninterrupted
  workdir = str(tmp_path / "run_b")
  # Killed while validating at the last step (8): the checkpoint of step 8 must not exist yet,
  # or the resumed run would skip that validation row.
  conftest.crash_metric_writes_at(monkeypatch, 8, prefix="val/")
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(tiny_config, workdir)
  assert experiment.checkpoint_manager(workdir, tiny_config).latest_step() == 4
  monkeypatch.undo()

  state_b = train.train_and_evaluate(tiny_config, workdir)  # The same call resumes.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a["params"]),
               jax.device_get(state_b["params"]))
  # The resumed run's log has every row once, with the uninterrupted run's values.
  untimed = lambda w: [{k: v for k, v in r.items() if k not in ("time", writers.TRAIN_SECONDS)}
                       for r in writers.read_metrics(w)]
  assert untimed(workdir) == untimed(workdir_a)
  # Its clock continued from the restored step: training time stays monotone over the restart.
  _assert_train_seconds_monotone(writers.read_metrics(workdir))


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tiny_config,
                                                                  tmp_path, caplog):
  """A half-copied run: its newest checkpoint (step 8) lacks a file and metrics.jsonl ends in a
  torn line. Loading it for evaluation and resuming it both fall back to step 4 with a warning
  naming step 8; the resumed run reaches the uninterrupted run's parameters."""
  workdir_a, state_a = uninterrupted
  workdir = str(tmp_path / "copy")
  shutil.copytree(workdir_a, workdir)
  os.remove(os.path.join(workdir, "checkpoints", "8", "state", "manifest.ocdbt"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 8, "train/lo')

  params = lambda **kw: jax.device_get(experiment.load(workdir, **kw)[1])
  jax.tree.map(np.testing.assert_array_equal, params(), params(step=4))
  assert "Checkpoint step 8 " in caplog.text and "damaged" in caplog.text

  caplog.clear()
  state = train.train_and_evaluate(tiny_config, workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state_a["params"]),
               jax.device_get(state["params"]))
  assert "Checkpoint step 8 " in caplog.text
  assert "Moved the damaged checkpoint of step 8" in caplog.text
  assert [d.split("-")[0] for d in os.listdir(os.path.join(workdir, "damaged_checkpoints"))] == [
      "8"]
  loss = lambda w: [(r["step"], r["train/loss/total"]) for r in writers.read_metrics(w)
                    if "train/loss/total" in r]
  assert loss(workdir) == loss(workdir_a)


def test_one_and_eight_devices_give_the_same_step(tiny_config):
  assert jax.device_count() == 8
  config = tiny_config
  source = pipeline.load_sources(config.data)["train"]
  batch = next(iter(pipeline.train_loader(source, global_batch_size=8,
                                          points_per_step=config.data.points_per_step, seed=0)))
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  step_fn = experiment.make_train_step(model, tx, experiment.loss_weights_for(config))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    state = experiment.create_train_state(config, model, tx, mesh)
    step = experiment.jit_train_step(step_fn, mesh)
    state, stats = step(state, sharding.shard_batch(batch, mesh))
    results.append((jax.device_get(stats), jax.device_get(state["params"])))
  (stats1, params1), (stats8, params8) = results
  for key in stats1:
    np.testing.assert_allclose(stats1[key], stats8[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params1, params8)


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tiny_config, tmp_path,
                                                                        monkeypatch):
  make_step = experiment.make_train_step

  def poisoned(*args):
    step_fn = make_step(*args)

    def step(state, batch):
      new_state, stats = step_fn(state, batch)
      bad = state["step"] >= 4  # Steps 5+ report NaN.
      stats["loss/total"] = jax.numpy.where(bad, jax.numpy.nan, stats["loss/total"])
      return new_state, stats
    return step

  monkeypatch.setattr(experiment, "make_train_step", poisoned)
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match="at step 5"):
    train.train_and_evaluate(tiny_config, workdir)
  assert experiment.checkpoint_manager(workdir, tiny_config).latest_step() == 4
  _, params, _ = experiment.load(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params)))


def test_a_run_failing_before_its_first_checkpoint_leaves_no_config(tiny_config, tmp_path,
                                                                    monkeypatch):
  """Its config.json would disagree with the corrected config, with no checkpoint to protect."""
  monkeypatch.setattr(pipeline, "load_sources", lambda data: {}["train"])
  with pytest.raises(KeyError):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")
  corrected = _copy(tiny_config, **{"optimizer.learning_rate": 1e-3})
  train.check_compatible(str(tmp_path), corrected,
                         experiment.checkpoint_manager(str(tmp_path), corrected))


@pytest.mark.slow
def test_exploding_update_stops_before_it_reaches_a_checkpoint(tiny_config, tmp_path):
  """At learning rate 1e2 the gradient norm turns non-finite a step before the loss would: the
  run stops at that step, names it, and every parameter of the kept checkpoint is finite."""
  config = _copy(tiny_config, **{"optimizer.learning_rate": 1e2, "checkpoint_every_steps": 1,
                                 "log_every_steps": 1, "total_steps": 40})
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match=r"non-finite grad_norm=\S+ at step") as error:
    train.train_and_evaluate(config, workdir)
  step = int(str(error.value).split(" at step ")[1].split(";")[0])
  assert experiment.checkpoint_manager(workdir, config).latest_step() == step - 1
  if step > 1:
    _, params, _ = experiment.load(workdir)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(params)))
  else:
    assert "No checkpoint had been written yet." in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    ({"arm": "normals"}, "config.arm='normals': expected one of"),
    ({"model.encoder": "resnet99"}, "config.model.encoder='resnet99': expected one of"),
    ({"data.num_train": -5}, "config.data.num_train=-5: expected a positive integer"),
    ({"batch_size": 6}, "config.batch_size=6: expected a multiple of the device count 8"),
    ({"data.supervision": "medium-rare"}, "config.data.supervision='medium-rare': Unknown level"),
    ({"eval.mise_resolution0": 1}, "config.eval.mise_resolution0=1: expected an integer >= 2"),
    ({"eval.mise_upsampling_steps": -1},
     "config.eval.mise_upsampling_steps=-1: expected an integer >= 0"),
])
def test_bad_config_values_are_named(tiny_config, tmp_path, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
    train.train_and_evaluate(_copy(tiny_config, **overrides), str(tmp_path))


def test_misspelt_override_key_is_named(tiny_config):
  with pytest.raises(config_lib.ConfigError, match="'data.num_trian' .*did you mean 'data.num_train'"):
    _copy(tiny_config, **{"data.num_trian": 5})


def test_unwritable_workdir(tiny_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(config_lib.ConfigError, match="cannot be created"):
    train.train_and_evaluate(tiny_config, str(blocker / "run"))


@pytest.mark.slow
def test_incompatible_checkpoint_is_refused(uninterrupted, tiny_config):
  workdir, _ = uninterrupted
  other = _copy(tiny_config, **{"model.encoder_width": 16})
  with pytest.raises(config_lib.ConfigError,
                     match="incompatible config.*model.encoder_width: checkpoint has 8"):
    train.train_and_evaluate(other, workdir)


@pytest.mark.slow
def test_copied_workdir_without_config_json_is_checked_against_its_checkpoint(
    uninterrupted, tiny_config, tmp_path):
  """A half-copied run (checkpoints, no config.json) resumed under another arm is refused from
  the config its checkpoint carries, and nothing in the workdir is rewritten."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(uninterrupted[0], workdir)
  os.remove(os.path.join(workdir, "config.json"))
  with pytest.raises(config_lib.ConfigError, match="arm: checkpoint has 'normal', config has "
                                                   "'depth'"):
    train.train_and_evaluate(_copy(tiny_config, arm="depth"), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def _main(*args, module="recon3d_jax.main"):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line_errors_exit_non_zero_with_one_message(tmp_path):
  bad_key = _main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}",
                  "--config.data.num_trian=5")
  assert bad_key.returncode != 0
  assert "num_trian" in bad_key.stderr
  bad_arm = _main("--config=configs/default.py:runlocal,arm=telepathy", f"--workdir={tmp_path}")
  assert bad_arm.returncode != 0
  assert bad_arm.stderr.strip().splitlines()[-1] == (
      "error: config.arm='telepathy': expected one of "
      "['both', 'depth', 'full', 'normal', 'oracle', 'sketch', 'stage1', 'vanilla']")
  not_a_run = _main(f"--workdir={tmp_path}", module="recon3d_jax.evaluate")
  assert not_a_run.returncode != 0
  assert not_a_run.stderr.strip().splitlines()[-1] == (
      f"error: workdir {str(tmp_path)!r} has no config.json; expected the workdir of a training run")
