"""3D-R-DEP (arm=full): encoder initialised from a stage-1 checkpoint, parameter overhead,
ablation switches, and the weighted train step on 1 vs 8 devices."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recon3d_jax import config_lib, experiment, losses, sharding, train, weighting

B, S, M = 8, 32, 64


def _config(tiny_config, **overrides):
  return config_lib.apply_overrides(tiny_config, overrides)


def _fake_stage1_run(config, workdir, seed):
  """A stage-1 run's workdir: its config.json and a checkpoint of its initial state."""
  config = _config(config, arm="stage1", seed=seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  mesh = sharding.make_mesh()
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  state = experiment.create_train_state(config, model, tx, mesh)
  manager = experiment.checkpoint_manager(workdir, config)
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.wait_until_finished()
  return state


@pytest.fixture(scope="module")
def stage1_run(tiny_config, tmp_path_factory):
  """(workdir, params) of a fake stage-1 run, seed 1."""
  workdir = str(tmp_path_factory.mktemp("stage1"))
  return workdir, jax.device_get(_fake_stage1_run(tiny_config, workdir, seed=1)["params"])


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _param_shapes(config):
  model = experiment.build_model(config)
  images = jnp.zeros((1, S, S, 7 if config.arm == "oracle" else 3))
  return jax.eval_shape(model.init, jax.random.key(0, impl="rbg"), images,
                        jnp.zeros((1, M, 3)))["params"]


def test_feature_extraction_needs_a_stage1_run(tiny_config, tmp_path):
  with pytest.raises(config_lib.ConfigError, match="needs a stage-1 run: train one with "
                     "arm=stage1, then pass its workdir as --config.init_from=WORKDIR"):
    train.train_and_evaluate(_config(tiny_config, arm="full"), str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match="init_from='/x' is only used by arm='full'"):
    experiment.validate(_config(tiny_config, init_from="/x"))


def test_init_from_loads_the_stage1_encoder_and_nothing_else(tiny_config, stage1_run):
  workdir, stage1 = stage1_run
  config = _config(tiny_config, arm="full", init_from=workdir)
  mesh = sharding.make_mesh()
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  fresh = experiment.create_train_state(config, model, tx, mesh)
  fresh_params = jax.device_get(fresh["params"])
  loaded = jax.device_get(experiment.init_encoder_from(fresh, config.init_from, mesh)["params"])
  jax.tree.map(np.testing.assert_array_equal, loaded["backbone"], stage1["backbone"])
  assert not np.array_equal(fresh_params["backbone"]["code"]["kernel"],
                            stage1["backbone"]["code"]["kernel"])  # Seeds differ: a real load.
  for name in set(fresh_params) - {"backbone"}:
    jax.tree.map(np.testing.assert_array_equal, loaded[name], fresh_params[name])


def test_init_from_errors_name_the_problem(tiny_config, stage1_run, tmp_path):
  mesh = sharding.make_mesh()
  config = _config(tiny_config, arm="full", **{"model.encoder_width": 16})
  state = jax.eval_shape(lambda: experiment.create_train_state(
      config, experiment.build_model(config), experiment.make_optimizer(config), mesh))
  with pytest.raises(config_lib.ConfigError, match="init_from='/nonexistent'.*no config.json"):
    experiment.init_encoder_from(state, "/nonexistent", mesh)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text(_config(tiny_config, arm="stage1").to_json())
  with pytest.raises(config_lib.ConfigError, match="has no checkpoint"):
    experiment.init_encoder_from(state, str(empty), mesh)
  with pytest.raises(config_lib.ConfigError,  # A model twice as wide as the stage-1 run.
                     match=r"does not match this model's at backbone\['ResNetStages_0'\]\[.*"
                     r"checkpoint has \([0-9, ]*8\), this model has \([0-9, ]*16\)"):
    experiment.init_encoder_from(state, stage1_run[0], mesh)


def test_parameter_counts_across_arms(tiny_config):
  counts = {arm: _num_params(_param_shapes(_config(tiny_config, arm=arm)))
            for arm in ("vanilla", "normal", "depth", "both", "stage1")}
  assert len(set(counts.values())) == 1, counts  # Same model in the controlled comparison.
  base = counts["both"]
  full = _param_shapes(_config(tiny_config, arm="full"))
  d, p = tiny_config.model.code_dim, tiny_config.rdep.projection_dim
  h = tiny_config.rdep.scorer_hidden
  assert d == p  # With projection_dim == code_dim the decoder keeps its size.
  projection, scorer = d * p + p, p * h + h + h + 1
  assert _num_params(full["projection"]) == projection
  assert _num_params(full["scorer"]) == scorer
  assert _num_params(full) == base + projection + scorer, (projection, scorer)
  # The oracle differs only in the stem's 4 extra input channels (3x3 kernel, no bias).
  oracle = _num_params(_param_shapes(_config(tiny_config, arm="oracle")))
  assert oracle == base + 3 * 3 * 4 * tiny_config.model.encoder_width


@pytest.mark.parametrize("ablation, projection, scorer, kl", [
    ({}, True, True, True),
    ({"rdep.feature_extraction": False}, False, True, True),
    ({"rdep.adaptive_weighting": False}, True, False, None),
    ({"rdep.regularization": False}, True, True, False),
    ({"rdep.feature_extraction": False, "rdep.adaptive_weighting": False,
      "rdep.regularization": False}, False, False, None),
])
def test_ablation_switches(tiny_config, ablation, projection, scorer, kl):
  config = _config(tiny_config, arm="full", init_from="/stage1", **ablation)
  model = experiment.build_model(config)
  assert bool(model.projection_dim) == projection and bool(model.scorer_hidden) == scorer
  weighting_config = experiment.instance_weighting_for(config)
  if kl is None:
    assert weighting_config is None
  else:
    assert (weighting_config.kl_weight > 0) == kl
    assert weighting_config.weighted_terms == tuple(config.rdep.weighted_terms)


@pytest.mark.parametrize("overrides, message", [
    ({"rdep.temperature": 0.0}, "config.rdep.temperature=0.0: expected > 0"),
    ({"rdep.weighted_terms": ("occupancy", "normals")}, "config.rdep.weighted_terms="),
    ({"model.decoder": "mesh"}, "config.model.decoder='mesh': expected one of"),
    ({"model.decoder": "voxel", "model.pixel_aligned": True}, "pixel_aligned=True: expected"),
])
def test_bad_rdep_and_model_values_are_named(tiny_config, overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
    experiment.validate(_config(tiny_config, **overrides))


def _synthetic_batch(levels):
  rng = np.random.default_rng(0)
  points = rng.uniform(-0.55, 0.55, (B, M, 3)).astype(np.float32)
  mask = (rng.uniform(size=(B, S, S)) > 0.5).astype(np.float32)
  normal = rng.normal(size=(B, S, S, 3)).astype(np.float32)
  return dict(image=rng.uniform(size=(B, S, S, 3)).astype(np.float32), mask=mask,
              depth=rng.uniform(1.8, 2.6, (B, S, S)).astype(np.float32), normal=normal,
              depth_valid=mask, normal_valid=mask, points=points,
              occ=(np.linalg.norm(points, axis=-1) < 0.3).astype(np.float32),
              level=np.asarray(levels, np.int32))


def test_weighted_step_is_the_same_on_one_and_eight_devices(tiny_config):
  assert jax.device_count() == 8
  config = _config(tiny_config, arm="full", **{"rdep.feature_extraction": False})
  batch = _synthetic_batch([0, 4, 0, 4, 1, 3, 0, 4])
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  step_fn = experiment.make_train_step(model, tx, experiment.loss_weights_for(config),
                                  experiment.instance_weighting_for(config))

  def weights_and_terms(params, batch):  # What the step sees, recomputed eagerly from its parts.
    out = model.apply({"params": params}, batch["image"], batch["points"])
    return (weighting.softmax_weights(out["score"], config.rdep.temperature),
            losses.loss_terms(out, batch))

  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh(devices)
    state = experiment.create_train_state(config, model, tx, mesh)
    # A random scorer output layer: non-uniform weights from the first step.
    kernel = state["params"]["scorer"]["score"]["kernel"]
    noise = jax.random.normal(jax.random.key(1), kernel.shape)
    state["params"]["scorer"]["score"]["kernel"] = jax.device_put(noise, kernel.sharding)
    initial = jax.device_get(state["params"])
    step = experiment.jit_train_step(step_fn, mesh)
    state, stats = step(state, sharding.shard_batch(batch, mesh))
    results.append((initial, jax.device_get(stats), jax.device_get(state["params"])))
  (initial, stats1, params1), (_, stats8, params8) = results
  for key in ("weights/entropy", "weights/max", "weights/corr_level", "loss/kl", "loss/total"):
    np.testing.assert_allclose(stats1[key], stats8[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params1, params8)
  # The logged values against numpy: max, KL, Pearson, and the objective
  # sum_i w_i L_i (all terms weighted by default) + kl_weight * KL(w || uniform).
  w, terms1 = jax.device_get(weights_and_terms(initial, batch))
  w = w.astype(np.float64)
  assert np.ptp(w) > 1e-3  # Really non-uniform.
  kl = np.sum(w * np.log(w * B))
  np.testing.assert_allclose(stats1["weights/max"], w.max(), rtol=1e-5)
  np.testing.assert_allclose(stats1["loss/kl"], kl, rtol=1e-3, atol=1e-7)
  np.testing.assert_allclose(stats1["weights/corr_level"],
                             np.corrcoef(w, batch["level"])[0, 1], rtol=1e-4)
  loss_weights = experiment.loss_weights_for(config)
  per_instance = sum(loss_weights[k] * np.asarray(terms1[k], np.float64) for k in losses.TERMS)
  np.testing.assert_allclose(stats1["loss/total"],
                             np.sum(w * per_instance) + config.rdep.kl_weight * kl, rtol=1e-5)


def test_oracle_state_is_created_with_seven_input_channels(tiny_config):
  """create_train_state initialises the oracle's stem for image + depth + normal channels."""
  config = _config(tiny_config, arm="oracle")
  model, tx = experiment.build_model(config), experiment.make_optimizer(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = experiment.create_train_state(config, model, tx, mesh)
  stem = state["params"]["backbone"]["ResNetStages_0"]["stem"]["kernel"]
  assert stem.shape[2] == 7
  batch = dict(_synthetic_batch([0] * B), depth_clean=np.full((B, S, S), 2.0, np.float32),
               normal_clean=np.zeros((B, S, S, 3), np.float32))
  step = experiment.jit_train_step(
      experiment.make_train_step(model, tx, experiment.loss_weights_for(config)), mesh)
  _, stats = step(state, sharding.shard_batch(batch, mesh))
  assert np.isfinite(float(stats["loss/total"]))
