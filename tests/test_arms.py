"""The arms table (recon3d_jax.arms): each existing arm means what it did before the table, and
adding an arm is one entry that validation, loss weights, the model and the study configs read."""
import dataclasses
import importlib
import types

import pytest

from configs.study import common
from configs.study import main as main_study
from recon3d_jax import arms, config_lib, experiment, losses

# What each arm weighted before the table existed (the former losses.ARMS), in TERMS order:
# occupancy, normal, depth, silhouette.
FORMER_SWITCHES = {
    "vanilla": (1, 0, 0, 0),
    "normal": (1, 1, 0, 1),
    "depth": (1, 0, 1, 1),
    "both": (1, 1, 1, 1),
    "full": (1, 1, 1, 1),
    "oracle": (1, 1, 1, 1),
    "sketch": (1, 1, 1, 1),
    "stage1": (0, 1, 1, 1),
}
# Model switches of the former train.build_model: (input_maps, sketch, projection, scorer).
FORMER_MODEL = {arm: (False, False, False, False) for arm in FORMER_SWITCHES}
FORMER_MODEL.update(oracle=(True, False, False, False), sketch=(False, True, False, False),
                    full=(False, False, True, True))


def _config(tiny_config, **overrides):
  return config_lib.apply_overrides(tiny_config, overrides)


def _model_switches(config):
  model = experiment.build_model(config)
  return (model.input_maps, model.sketch, model.projection_dim > 0, model.scorer_hidden > 0)


def test_table_names_the_former_arms_and_loss_terms():
  assert set(arms.ARMS) == set(FORMER_SWITCHES)
  assert arms.ALL_TERMS == set(losses.TERMS)
  assert all(arm.supervised <= arms.ALL_TERMS for arm in arms.ARMS.values())


@pytest.mark.parametrize("arm", sorted(FORMER_SWITCHES))
def test_loss_weights_are_the_former_ones(arm):
  scale = dict(occupancy=1.0, normal=0.5, depth=0.25, silhouette=0.2)
  want = {k: on * scale[k] for k, on in zip(losses.TERMS, FORMER_SWITCHES[arm])}
  assert arms.loss_weights(arm, 0.5, 0.25, 0.2) == want
  defaults = dict(occupancy=1.0, normal=1.0, depth=1.0, silhouette=0.1)
  assert arms.loss_weights(arm) == {k: on * defaults[k]
                                    for k, on in zip(losses.TERMS, FORMER_SWITCHES[arm])}


def test_config_loss_weights_scale_the_arm(tiny_config):
  config = _config(tiny_config, arm="depth", **{"loss.depth_weight": 2.0})
  assert experiment.loss_weights_for(config) == dict(occupancy=1.0, normal=0.0, depth=2.0,
                                                     silhouette=0.1)


@pytest.mark.parametrize("arm", sorted(FORMER_MODEL))
def test_model_and_weighting_switches_are_the_former_ones(tiny_config, arm):
  config = _config(tiny_config, arm=arm)
  assert _model_switches(config) == FORMER_MODEL[arm]
  assert (experiment.instance_weighting_for(config) is not None) == (arm == "full")
  assert experiment.needs_stage1_run(config) == (arm == "full")
  no_fe = _config(config, **{"rdep.feature_extraction": False})
  assert not experiment.needs_stage1_run(no_fe)
  assert _model_switches(no_fe)[2] is False


@pytest.mark.parametrize("arm", sorted(FORMER_SWITCHES))
def test_only_full_takes_init_from(tiny_config, arm):
  config = _config(tiny_config, arm=arm, init_from="/stage1")
  if arm == "full":
    experiment.validate(config)
  else:
    with pytest.raises(config_lib.ConfigError, match="only used by arm='full'"):
      experiment.validate(config)


def test_study_groups_are_the_former_ones():
  assert arms.study_arms() == common.ARMS == (
      "vanilla", "normal", "depth", "both", "full", "oracle", "sketch")
  assert arms.core_arms() == common.CORE_ARMS == ("vanilla", "normal", "depth", "both")
  assert arms.pretraining_arm() == "stage1"
  assert common.with_stage1({"arm": "full", "seed": 2}) == [
      {"arm": "stage1", "seed": 2}, {"arm": "full", "seed": 2,
                                     "init_from": {"arm": "stage1", "seed": 2}}]
  assert common.with_stage1({"arm": "full", "rdep.feature_extraction": False}) == [
      {"arm": "full", "rdep.feature_extraction": False}]
  assert common.with_stage1({"arm": "oracle"}) == [{"arm": "oracle"}]


def test_unknown_arm_lists_the_table(tiny_config):
  with pytest.raises(ValueError, match=r"unknown arm 'nromal'.*'both', 'depth', 'full', 'normal'"):
    arms.loss_weights("nromal")
  with pytest.raises(config_lib.ConfigError, match=r"config.arm='nromal': expected one of "
                     r"\['both', 'depth', 'full', 'normal', 'oracle', 'sketch', 'stage1'"):
    experiment.validate(_config(tiny_config, arm="nromal"))


def test_table_is_frozen():
  with pytest.raises(TypeError):
    arms.ARMS["new"] = arms.ARMS["both"]  # type: ignore[index]
  with pytest.raises(dataclasses.FrozenInstanceError):
    arms.ARMS["both"].core = False  # type: ignore[misc]


# A new core arm: depth without the silhouette.
NEW_ARM = arms.Arm(supervised=frozenset(("occupancy", "depth")), core=True)


@pytest.fixture
def with_new_arm(monkeypatch):
  """The table with NEW_ARM added, and the study configs re-read from it; restored after."""
  monkeypatch.setattr(arms, "ARMS", types.MappingProxyType({**arms.ARMS, "depth_only": NEW_ARM}))
  importlib.reload(common)
  yield
  monkeypatch.undo()
  importlib.reload(common)


def test_adding_an_arm_is_one_table_entry(tiny_config, with_new_arm):
  config = _config(tiny_config, arm="depth_only")
  experiment.validate(config)
  assert experiment.loss_weights_for(config) == dict(occupancy=1.0, normal=0.0, depth=1.0,
                                                     silhouette=0.0)
  assert _model_switches(config) == (False, False, False, False)
  assert experiment.instance_weighting_for(config) is None
  assert not experiment.needs_stage1_run(config)
  assert common.CORE_ARMS[-1] == common.ARMS[-1] == "depth_only"
  runs = list(main_study.sweep("runlocal,seeds=1"))
  assert {"arm": "depth_only", "seed": 0, "data.benchmark": "primitives"} in runs
