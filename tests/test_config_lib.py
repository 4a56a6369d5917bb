"""Which keys differ between two configs, and which do not define a run."""
from configs import default
from recon3d_jax import config_lib


def test_differing_keys_nested_flat_and_one_sided():
  a = {"model": {"encoder": "resnet10", "width": 8}, "seed": 0, "log_every_steps": 10}
  b = {"model.encoder": "resnet18", "model.width": 8, "arm": "depth", "log_every_steps": 50}
  assert config_lib.differing_keys(a, b) == ["arm", "model.encoder", "seed"]
  assert config_lib.differing_keys(a, b, ignore=()) == [
      "arm", "log_every_steps", "model.encoder", "seed"]
  assert config_lib.differing_keys(a, a) == []


def test_keys_that_do_not_define_a_run_are_config_keys():
  keys = set(config_lib.flatten(default.get_config().to_dict()))
  retired = {f"eval.{k}" for k in config_lib.RETIRED_EVAL_KEYS}
  assert set(config_lib.NON_DEFINING_KEYS) <= keys | retired
