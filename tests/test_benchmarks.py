"""The named benchmark suite, the TFDS registration, and the build / show command lines."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from recon3d_jax.data import benchmarks, build, builder, show

TINY = dict(num_train=8, num_validation=4, num_test=4, num_surface_points=64,
            num_uniform_points=64, num_near_points=64, voxel_resolution=8)


def test_registry_names_and_unknown_names():
  assert {"primitives", "compounds", "organic", "meshes", "primitives-ood",
          "meshes-textured"} <= set(benchmarks.BENCHMARKS)
  assert "primitives-64" in benchmarks.registered_names()
  with pytest.raises(ValueError, match="valid benchmarks: .*compounds"):
    benchmarks.get("compund")


def test_ood_benchmarks_hold_out_whole_families():
  b = benchmarks.get("primitives-ood")
  names = ("sphere", "box", "torus", "cone")
  assert b.split_families("test", names) == (2, 3)
  assert b.split_families("train", names) == b.split_families("validation", names) == (0, 1)
  assert benchmarks.get("primitives").split_families("test", names) is None
  with pytest.raises(ValueError, match="torus"):
    b.split_families("test", ("sphere", "box"))


def test_registered_configs_are_tfds_builders(tmp_path):
  dataset = tfds.builder("recon3d_synth/compounds-harsh_light-128", data_dir=str(tmp_path))
  c = dataset.builder_config
  assert (c.benchmark, c.image_size, c.num_train) == ("compounds-harsh_light", 128, 10000)
  assert not dataset.is_prepared()
  # Other sizes or seeds are other datasets, never a registered name.
  custom = builder.SynthConfig.from_data_config(dict(
      benchmarks.DEFAULT_SIZES, benchmark="primitives", image_size=64, build_seed=1,
      mesh_dir="", on_bad_mesh="fail"))
  assert custom.name.startswith("primitives-64-n10000-")
  # The build CLI and the loader reach a registered dataset from `config.data` (TFDS refuses a
  # second config object under a registered name).
  default = builder.make_builder(builder.SynthConfig.from_data_config(dict(
      benchmarks.DEFAULT_SIZES, benchmark="primitives", image_size=64, build_seed=0,
      mesh_dir="", on_bad_mesh="fail")), str(tmp_path))
  assert default.builder_config.name == "primitives-64" and not default.is_prepared()


def _spec(tmp_path, name="primitives"):
  return build.dataset_specs(name, "32", str(tmp_path), **TINY)[0]


def test_generate_in_order_keeps_order_and_renders_the_first_chunk_alone():
  lock, running, events = threading.Lock(), [0], []

  def generate(chunk):
    with lock:
      running[0] += 1
      events.append(("start", int(chunk[0]), running[0]))
    time.sleep(0.02 * (1 + int(chunk[0]) % 3))  # Later chunks may finish first.
    with lock:
      running[0] -= 1
      events.append(("end", int(chunk[0]), running[0]))
    return {"index": chunk}

  chunks = [np.array([i, i]) for i in range(7)]
  out = list(builder.generate_in_order(generate, chunks, threads=2))
  assert [int(o["index"][0]) for o in out] == list(range(7))
  assert events[:2] == [("start", 0, 1), ("end", 0, 0)]  # Compiles alone.
  concurrency = [n for kind, _, n in events if kind == "start"]
  assert max(concurrency) == 2


def test_build_is_idempotent(tmp_path):
  # organic: one compiled program (primitives compile one per family).
  name, status, _ = build.build(_spec(tmp_path, "organic"))
  assert status == "built" and name.startswith("organic-32-n8-")
  assert build.build(_spec(tmp_path, "organic"))[1] == "exists"
  with pytest.raises(ValueError, match="image_sizes"):
    build.dataset_specs("primitives", "30", str(tmp_path))


@pytest.mark.slow
def test_interrupted_build_never_loads_as_complete(tmp_path):
  """SIGKILL mid-build: the dataset the command was building is not prepared."""
  data_dir = tmp_path / "data"
  command = [sys.executable, "-m", "recon3d_jax.data.build", "--benchmark=organic",
             "--image_sizes=32", f"--data_dir={data_dir}", "--num_train=4000"]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and not list(data_dir.rglob("incomplete*")):
    time.sleep(0.5)
  time.sleep(2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert list(data_dir.rglob("incomplete*")), "the build never started writing"
  # The command's own dataset: its flags, the registered sizes otherwise.
  spec = build.dataset_specs("organic", "32", str(data_dir), num_train=4000)[0]
  config = builder.SynthConfig.from_data_config(spec)
  assert list((data_dir / "recon3d_synth" / config.name).rglob("incomplete*"))
  dataset = builder.make_builder(config, str(data_dir))
  assert not dataset.is_prepared()


def test_show_writes_sample_and_level_grids(tmp_path):
  records = show.render_samples("primitives-white_bg", 32, "test", 2)
  assert records["image"].shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(records["index"], [0, 1])
  background = records["mask"] == 0
  assert (records["image"][background] == 255).all()  # The white_bg variant.
  first = {k: v[0] for k, v in records.items()}
  targets = show.level_targets(first)
  assert list(targets) == ["clean", "minimal", "low", "medium", "high", "extreme"]
  show.visualize.save_sample_grid(str(tmp_path / "samples.png"), records, "test")
  assert os.path.getsize(tmp_path / "samples.png") > 10_000
  subprocess.run([sys.executable, "-m", "recon3d_jax.data.show", "--benchmark=primitives",
                  "--image_size=32", "--num=1", "--levels", f"--out={tmp_path / 'levels.png'}"],
                 check=True, capture_output=True)
  assert os.path.getsize(tmp_path / "levels.png") > 10_000


def test_only_changed_domains_get_a_new_dataset_version(tmp_path):
  """Meshes' data changed in 2.5.0 (watertight ray casting); the other domains keep 2.4.0 and
  with it their built files."""
  expected = {"meshes-64": "2.5.0", "meshes-textured-128": "2.5.0", "meshes-ood-64": "2.5.0",
              "compounds-64": "2.4.0", "organic-128": "2.4.0", "primitives-ood-64": "2.4.0"}
  for name, version in expected.items():
    dataset = tfds.builder(f"recon3d_synth/{name}", data_dir=str(tmp_path))
    assert str(dataset.version) == version, name
    assert version in dataset.release_notes
