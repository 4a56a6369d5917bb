"""Dataset and loader: determinism, batch contract, and 2.5D / 3D labels in one frame."""
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from recon3d_jax import config_lib
from recon3d_jax.data import pipeline, synth
from recon3d_jax.data.corrupt import LEVELS
from recon3d_jax.geometry import sdf


@pytest.fixture(scope="module")
def sources(tiny_config):
  return pipeline.load_sources(tiny_config.data)


def _records(source, n=8):
  return [source[i] for i in range(n)]


def _dataset_files(data_config) -> dict[str, bytes]:
  folder = pipeline.get_builder(data_config).data_path
  return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_samples(tiny_config, sources, tmp_path):
  # Built again in another process (another string-hash seed), every file is the same.
  again = config_lib.apply_overrides(tiny_config, {"data.data_dir": str(tmp_path / "again")})
  code = ("import sys; from configs import default; from recon3d_jax.data import pipeline; "
          "c = default.get_config('runlocal'); c.data.data_dir = sys.argv[1]; "
          "pipeline.load_sources(c.data)")
  subprocess.run([sys.executable, "-c", code, again.data.data_dir], check=True,
                 cwd=pathlib.Path(__file__).parents[1], capture_output=True)
  first, second = _dataset_files(tiny_config.data), _dataset_files(again.data)
  assert first.keys() == second.keys() and any("train.array_record" in k for k in first)
  for name in first:
    assert first[name] == second[name], name
  other = pipeline.load_sources(config_lib.apply_overrides(
      tiny_config, {"data.data_dir": str(tmp_path / "other"), "data.build_seed": 1}).data)
  images = {int(r["index"]): r["image"] for r in _records(sources["test"])}
  for r in _records(other["test"]):
    assert not np.array_equal(images[int(r["index"])], r["image"])


def test_records_are_viewer_centred_unit_cube_objects(sources):
  smooth = [sdf.PRIMITIVE_KINDS.index(k) for k in ("sphere", "ellipsoid", "capsule", "torus")]
  for r in _records(sources["train"], 16):
    points = r["surface_points"]
    extent = points.max(0) - points.min(0)
    # Normalised in the viewer frame: longest side 1. Samples reach the box on smooth kinds;
    # on boxes and cones the extreme corners have too little area to be sampled reliably.
    assert extent.max() <= 1.0 + 1e-4
    if r["kind"] in smooth:
      assert extent.max() > 0.98
      np.testing.assert_allclose((points.max(0) + points.min(0)) / 2, 0, atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(r["surface_normals"], axis=-1), 1, atol=1e-4)
    mask = r["mask"] > 0
    assert mask.any() and not mask.all()
    assert (r["depth"][mask] > 0).all() and (r["depth"][~mask] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(r["normal"][mask], axis=-1), 1, atol=1e-4)
    assert r["occ_uniform"].mean() < r["occ_near"].mean()  # Near points straddle the surface.


def test_surface_samples_project_onto_the_depth_map(sources):
  """Independent pinhole projection: front-facing 3D samples land on the rendered depth."""
  for r in _records(sources["train"]):
    size = r["depth"].shape[0]
    focal = (size / 2) / np.tan(np.deg2rad(synth.FOV_DEG / 2))
    p, n = r["surface_points"], r["surface_normals"]
    z = p[:, 2] + synth.CAMERA_DISTANCE  # Camera at (0, 0, -distance), axes = viewer frame.
    col = np.floor(focal * p[:, 0] / z + size / 2).astype(int)
    row = np.floor(focal * p[:, 1] / z + size / 2).astype(int)
    facing = -n[:, 2] > 0.8  # Within ~37 degrees of facing the camera.
    rendered = r["depth"][row[facing], col[facing]]
    # The depth at a point's pixel centre differs from the point's own depth by at most the
    # surface slope times a pixel (~0.06 here): nothing rendered lies behind a facing point ...
    assert (rendered <= z[facing] + 0.08).all()
    # ... and almost all are the visible surface itself.
    assert np.mean(np.abs(rendered - z[facing]) < 0.03) > 0.9


def test_training_batches_follow_the_documented_contract(tiny_config, sources):
  c = tiny_config
  loader = pipeline.train_loader(sources["train"], global_batch_size=c.batch_size,
                                 points_per_step=c.data.points_per_step, seed=0)
  batch = next(iter(loader))
  b, h, m = c.batch_size, c.data.image_size, c.data.points_per_step
  expected = {"image": (b, h, h, 3), "depth": (b, h, h), "normal": (b, h, h, 3),
              "mask": (b, h, h), "depth_valid": (b, h, h), "normal_valid": (b, h, h),
              "level": (b,), "points": (b, m, 3), "occ": (b, m), "index": (b,),
              "voxels": (b,) + (c.data.voxel_resolution,) * 3, "depth_clean": (b, h, h),
              "normal_clean": (b, h, h, 3)}
  assert {k: v.shape for k, v in batch.items()} == expected
  assert batch["image"].dtype == np.float32 and 0 <= batch["image"].min() <= 1
  assert set(np.unique(batch["mask"])) <= {0.0, 1.0} and set(np.unique(batch["occ"])) <= {0.0, 1.0}
  uniform = batch["points"][:, : m // 2]
  assert np.abs(uniform).max() <= 0.55 + 1e-6  # The padded 1.1 box.
  assert len(set(batch["index"].tolist())) == b


def test_supervision_levels_corrupt_only_training_targets(tiny_config, sources):
  c = tiny_config
  source = sources["train"]
  loader = lambda spec: iter(pipeline.train_loader(
      source, global_batch_size=c.batch_size, points_per_step=c.data.points_per_step, seed=0,
      supervision=spec))
  clean, noisy = next(loader("clean")), next(loader("extreme"))
  np.testing.assert_array_equal(clean["index"], noisy["index"])  # Same instances, same order.
  np.testing.assert_array_equal(clean["image"], noisy["image"])  # Inputs never corrupted ...
  np.testing.assert_array_equal(clean["depth"], noisy["depth_clean"])  # ... nor oracle inputs.
  np.testing.assert_array_equal(clean["normal_valid"], clean["mask"])
  assert (clean["level"] == -1).all() and (noisy["level"] == LEVELS.index("extreme")).all()
  for key in ("normal_valid", "depth_valid"):
    valid, mask = noisy[key] > 0, noisy["mask"] > 0
    assert not (valid & ~mask).any()  # Never valid off the object ...
    assert 0.5 < valid.sum() / mask.sum() < 0.9  # ... and extreme-level holes remove some.
  # One simulated acquisition per instance: depth and normals share their holes.
  np.testing.assert_array_equal(noisy["normal_valid"], noisy["depth_valid"])
  valid = noisy["normal_valid"] > 0
  angle = np.degrees(np.arccos(np.clip(np.sum(noisy["normal"] * clean["normal"], -1), -1, 1)))
  assert np.median(angle[valid]) > 20  # Extreme level: tens of degrees of error.
  np.testing.assert_allclose(np.linalg.norm(noisy["normal"][valid], axis=-1), 1, atol=1e-4)
  # Evaluation records are the stored clean targets whatever the training supervision.
  record = source[0]
  assert record["normal"].dtype == np.float32 and np.isin(record["mask"], [0, 1]).all()


def test_level_mixtures_are_exact_per_dataset(tiny_config):
  levels = pipeline.instance_levels("minimal:0.5,extreme:0.5", 48, seed=0)
  assert np.bincount(levels, minlength=5).tolist() == [24, 0, 0, 0, 24]
  np.testing.assert_array_equal(levels, pipeline.instance_levels("minimal:0.5,extreme:0.5",
                                                                 48, seed=0))
  assert pipeline.instance_levels("clean", 48, seed=0) is None
  with pytest.raises(ValueError, match="medium-rare"):
    pipeline.parse_supervision("medium-rare")


def _levels_of(batches, levels):
  return np.concatenate([levels[b["index"]] for b in batches])


def test_max_level_drops_harder_instances(tiny_config, sources):
  c = tiny_config
  spec = "uniform"
  levels = pipeline.instance_levels(spec, len(sources["train"]), seed=0)
  loader = iter(pipeline.train_loader(
      sources["train"], global_batch_size=c.batch_size, points_per_step=c.data.points_per_step,
      seed=0, supervision=spec, max_level="low"))
  seen = _levels_of([next(loader) for _ in range(12)], levels)
  kept = np.flatnonzero(levels <= LEVELS.index("low"))
  assert set(seen) <= {0, 1}
  # Every kept instance is still used (96 draws over the kept pool of ~19 instances).
  indices = np.concatenate([b["index"] for b in [next(loader) for _ in range(12)]])
  assert set(indices.tolist()) == set(kept.tolist())
  with pytest.raises(ValueError, match="clean"):
    pipeline.train_loader(sources["train"], global_batch_size=8, points_per_step=8, seed=0,
                          max_level="low")


def test_curriculum_unlocks_levels_easy_to_hard():
  levels = np.repeat([0, 2, 4], [10, 20, 30])
  rng = np.random.default_rng(0)
  record_levels = levels[rng.permutation(60)]
  sampler = pipeline.CurriculumSampler(record_levels, total_records=300, seed=3)
  keys = np.array([sampler[j].record_key for j in range(300)])
  stage_levels = record_levels[keys].reshape(3, 100)
  assert stage_levels[0].max() == 0 and stage_levels[1].max() == 2
  assert set(stage_levels[2]) == {0, 2, 4}
  # Within a stage the pool is visited as whole passes: the first 10 draws are 10 distinct
  # level-0 records; draws are a pure function of (seed, index), so resuming is exact.
  assert len(set(keys[:10])) == 10
  again = pipeline.CurriculumSampler(record_levels, total_records=300, seed=3)
  assert [again[j].record_key for j in (250, 7, 120)] == [keys[250], keys[7], keys[120]]
  assert sampler[299].record_key == keys[299]  # Beyond the schedule: the hardest stage.


def test_importing_the_builder_leaves_tfds_alone():
  # The writer patches apply when a dataset is written (their effect: test_same_seed_same_bytes_
  # other_seed_other_samples), and applying them again changes nothing.
  code = textwrap.dedent("""
      from tensorflow_datasets.core import example_serializer, shuffle
      def writer():
        return shuffle.MAX_MEM_BUFFER_SIZE, example_serializer.ExampleSerializer.serialize_example
      default = writer()
      from recon3d_jax.data import builder
      assert writer() == default, "importing the builder patched TFDS"
      builder.patch_tfds_writer()
      patched = writer()
      builder.patch_tfds_writer()
      assert patched != default and writer() == patched
  """)
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
