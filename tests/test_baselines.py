"""Recognition baselines against direct numpy computations on a tiny in-memory dataset."""
import json
import os

import flax.linen as nn
import ml_collections
import numpy as np
import pytest

from recon3d_jax import baselines, config_lib, evaluate
from recon3d_jax.data import pipeline

R = 6  # Voxel grid side of the synthetic records.
H = 32  # Image side: the embedding area-downsamples 2x2 blocks.
K = 24  # Surface samples per record.
CANDIDATES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _record(rng, index):
  """A box-shaped instance: voxels (R,R,R), a random image, surface samples near the origin."""
  lo, hi = np.sort(rng.integers(0, R + 1, size=(2, 3)), axis=0)
  inside = [(np.arange(R) >= lo[a]) & (np.arange(R) < max(hi[a], lo[a] + 1)) for a in range(3)]
  voxels = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
  normals = rng.normal(size=(K, 3))
  return dict(voxels=voxels.astype(np.uint8), image=rng.integers(0, 256, (H, H, 3), np.uint8),
              mask=np.ones((H, H), np.uint8), index=np.int64(index), kind=np.int64(index % 3),
              surface_points=rng.uniform(-0.05, 0.05, (K, 3)).astype(np.float32),
              surface_normals=(normals / np.linalg.norm(normals, axis=1, keepdims=True)))


def _sources(seed=0):
  """Lists of records (random access like a TFDS source); dataset indices differ from
  positions, as in the hashed storage order of the real splits."""
  rng = np.random.default_rng(seed)
  sizes = dict(train=9, validation=4, test=5)
  return {split: [_record(rng, 100 * (s + 1) + 7 * (n - i)) for i in range(n)]
          for s, (split, n) in enumerate(sizes.items())}


def _config():
  return ml_collections.ConfigDict(dict(eval=dict(
      batch_size=3, max_instances=4, threshold_candidates=CANDIDATES, num_pred_points=64)))


def _iou(a, b):
  a, b = np.asarray(a, bool).ravel(), np.asarray(b, bool).ravel()
  union = np.sum(a | b)
  return np.sum(a & b) / union if union else 1.0


def _embedding(image):
  """Grayscale, 2x2 block means (32 -> 16), minus the mean, over the norm."""
  gray = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  small = gray.reshape(16, 2, 16, 2).mean(axis=(1, 3)).ravel()
  small = small - small.mean()
  return small / np.linalg.norm(small)


def _ece(probs, labels, bins=15):
  total = 0.0
  for b in range(bins):
    upper = probs <= 1.0 if b == bins - 1 else probs < (b + 1) / bins
    members = (probs >= b / bins) & upper
    total += abs(labels[members].sum() - probs[members].sum())
  return total / len(probs)


def _cloud_metrics(pred, gt):
  """Chamfer-L1/L2 and F@0.05 of two point sets by brute-force pairwise distances."""
  d = np.linalg.norm(pred[:, None] - gt[None], axis=-1)
  p, r = np.mean(d.min(1) < 0.05), np.mean(d.min(0) < 0.05)
  return {"chamfer_l1": 0.5 * (d.min(1).mean() + d.min(0).mean()),
          "chamfer_l2": 0.5 * ((d.min(1)**2).mean() + (d.min(0)**2).mean()),
          "fscore@0.05": 2 * p * r / (p + r) if p + r else 0.0}


def _expected_threshold(mean, validation):
  """Best mean validation IoU; ties to the candidate closest to 0.5, then the smaller."""
  scores = [(-np.mean([_iou(mean >= t, r["voxels"]) for r in validation]), abs(t - 0.5), t)
            for t in CANDIDATES]
  return min(scores)[2]


@pytest.fixture(scope="module")
def result():
  return _sources(), baselines.evaluate_baselines(_sources(), _config())


def test_iou_matrix_matches_brute_force():
  rng = np.random.default_rng(1)
  a, b = rng.random((4, 50)) < 0.3, rng.random((7, 50)) < 0.5
  a[0], b[2] = False, False  # An empty pair has IoU 1.
  expected = np.array([[_iou(x, y) for y in b] for x in a])
  np.testing.assert_allclose(baselines.iou_matrix(a, b, block=3), expected)
  assert baselines.iou_matrix(a, b)[0, 2] == 1.0


def test_embedding_and_nearest_match_direct_computation():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (5, H, H, 3)).astype(np.uint8)
  np.testing.assert_allclose(baselines.image_embedding(images),
                             [_embedding(im) for im in images], atol=1e-12)
  # Brightness and contrast do not move an image in the embedding.
  np.testing.assert_allclose(baselines.image_embedding(images * 0.5 + 40),
                             baselines.image_embedding(images), atol=1e-12)
  queries, keys = rng.normal(size=(6, 4)), rng.normal(size=(9, 4))
  brute = [min(range(9), key=lambda j: np.sum((q - keys[j])**2)) for q in queries]
  np.testing.assert_array_equal(baselines.nearest(queries, keys), brute)


@pytest.mark.parametrize("n_in, n_out", [(20, 16), (12, 16), (7, 3)])
def test_area_weights_average_the_covered_area(n_in, n_out):
  signal = np.random.default_rng(3).normal(size=n_in)
  # Each input cell split into n_out equal pieces; output cell i is the mean of n_in pieces.
  fine = np.repeat(signal, n_out)
  expected = [fine[i * n_in:(i + 1) * n_in].mean() for i in range(n_out)]
  np.testing.assert_allclose(baselines.area_weights(n_in, n_out) @ signal, expected)


def test_mean_shape_surface_lies_on_the_voxel_centre_isosurface():
  """A grid that falls linearly with the distance from a sphere of radius 0.35, sampled at the
  voxel centres: its 0.5-isosurface samples lie on the sphere, with outward normals."""
  resolution, radius = 32, 0.35
  c = (np.arange(resolution) + 0.5) / resolution - 0.5
  xyz = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
  grid = np.clip(0.5 - 2 * (np.linalg.norm(xyz, axis=-1) - radius), 0, 1)
  points, normals = baselines.mean_shape_surface(grid, 0.5, 500, np.random.default_rng(0))
  assert points.shape == normals.shape == (500, 3)
  # Flat triangles sag inside the sphere by ~ edge^2 / (8 radius) < 1e-3; a grid placed on
  # linspace(-0.5, 0.5, R) instead of the voxel centres would be off by radius / (R - 1) = 0.011.
  np.testing.assert_allclose(np.linalg.norm(points, axis=1), radius, atol=2e-3)
  assert np.all(np.sum(points * normals, axis=1) > 0)


def test_mean_shape_matches_direct_computation(result):
  sources, out = result
  train, validation = sources["train"], sources["validation"][:4]
  mean = sum(r["voxels"].astype(np.float64) for r in train) / len(train)
  threshold = _expected_threshold(mean, validation)
  assert out["mean_shape_threshold"] == threshold and out["num_train"] == 9
  points, _ = baselines.mean_shape_surface(mean, threshold, 64, np.random.default_rng(0))
  rows = [r for r in out["rows"]["test"] if r["baseline"] == "mean_shape"]
  assert [r["index"] for r in rows] == [int(r["index"]) for r in sources["test"][:4]]
  for row, record in zip(rows, sources["test"]):
    labels = record["voxels"].ravel() > 0
    assert row["iou"] == pytest.approx(_iou(mean >= threshold, labels))
    assert row["accuracy"] == pytest.approx(np.mean((mean.ravel() >= threshold) == labels))
    assert row["ece"] == pytest.approx(_ece(mean.ravel(), labels))
    assert row["kind"] == record["kind"]
    if len(points):
      expected = _cloud_metrics(points, record["surface_points"].astype(np.float64))
      assert {k: row[k] for k in expected} == pytest.approx(expected)


def test_retrievals_match_brute_force_neighbours(result):
  sources, out = result
  train = sources["train"]
  for name in ("retrieval", "retrieval_oracle"):
    rows = [r for r in out["rows"]["test"] if r["baseline"] == name]
    assert len(rows) == 4
    for row, record in zip(rows, sources["test"]):
      assert row["index"] == record["index"]
      if name == "retrieval":
        e = _embedding(record["image"])
        j = min(range(len(train)), key=lambda j: np.sum((e - _embedding(train[j]["image"]))**2))
      else:
        j = max(range(len(train)), key=lambda j: _iou(train[j]["voxels"], record["voxels"]))
      assert row["train_index"] == train[j]["index"]
      assert row["iou"] == pytest.approx(_iou(train[j]["voxels"], record["voxels"]))
      assert row["ece"] == pytest.approx(1 - row["accuracy"])  # A 0/1 prediction.
      expected = _cloud_metrics(train[j]["surface_points"].astype(np.float64),
                                record["surface_points"].astype(np.float64))
      assert {k: row[k] for k in expected} == pytest.approx(expected)
    means = out["means"]["test"][name]
    assert means["num_instances"] == 4
    assert means["iou"] == pytest.approx(np.mean([r["iou"] for r in rows]))
  oracle = [r["iou"] for r in out["rows"]["test"] if r["baseline"] == "retrieval_oracle"]
  others = [r["iou"] for r in out["rows"]["test"] if r["baseline"] != "retrieval_oracle"]
  assert min(oracle) > 0 and np.mean(oracle) >= np.mean(others)


def test_retrieval_reads_no_test_voxels(result):
  """Giving a test instance another training shape's voxels moves the oracle to that shape, and
  leaves the image retrieval's choice alone."""
  sources, out = result
  picks = lambda res, name: [r["train_index"] for r in res["rows"]["test"]
                             if r["baseline"] == name]
  by_index = {int(r["index"]): r for r in sources["train"]}
  old = by_index[picks(out, "retrieval_oracle")[0]]
  target = next(r for r in sources["train"] if _iou(r["voxels"], old["voxels"]) < 1)
  changed = _sources()
  changed["test"][0]["voxels"] = target["voxels"].copy()
  again = baselines.evaluate_baselines(changed, _config())
  assert picks(again, "retrieval") == picks(out, "retrieval")
  assert _iou(by_index[picks(again, "retrieval_oracle")[0]]["voxels"], target["voxels"]) == 1


class _Field(nn.Module):
  """A parameter-free 'model': logits = 10x + 3y - z + the image mean, at any points."""

  def encode(self, images):
    return dict(code=images.mean(axis=(1, 2, 3)))

  def decode_occupancy(self, latent, points):
    return 10 * points[..., 0] + 3 * points[..., 1] - points[..., 2] + latent["code"][:, None]


def test_probabilities_at_voxel_centres_match_direct_decoding(monkeypatch):
  monkeypatch.setattr(evaluate, "GRID_CHUNK", 16)  # 125 points: 8 chunks, the last padded.
  images = np.random.default_rng(4).random((2, 4, 4, 3)).astype(np.float32)
  probs = np.asarray(evaluate._probs_at(_Field(), evaluate.voxel_centres(5))({}, images))
  assert probs.shape == (2, 5, 5, 5)
  for b in range(2):
    for i, j, k in np.ndindex(5, 5, 5):
      x, y, z = ((np.array([i, j, k]) + 0.5) / 5 - 0.5)
      logit = 10 * x + 3 * y - z + images[b].mean()
      assert probs[b, i, j, k] == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)


@pytest.mark.parametrize("flags, message", [
    (dict(workdir=None), "expected --workdir=DIR (a training run), or --baselines_only"),
    (dict(workdir="w", out="o"), "--config and --out go with --baselines_only"),
    (dict(workdir="w", config=object()), "--config and --out go with --baselines_only"),
    (dict(baselines_only=True), "expected exactly one of --workdir=DIR"),
    (dict(baselines_only=True, workdir="w", config=object()), "expected exactly one of"),
    (dict(baselines_only=True, workdir="w", untrained=True), "and no --untrained"),
    (dict(baselines_only=True, config=object()), "expected --out=DIR for the results"),
])
def test_bad_flag_combinations_are_named(flags, message):
  args = dict(workdir=None, config=None, out=None, baselines_only=False, untrained=False)
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(
      ")", r"\)")):
    evaluate.check_flags(**dict(args, **flags))


def test_baselines_only_writes_rows_and_keeps_the_summary(tiny_config, tmp_path):
  """The --baselines_only path on the tiny built dataset: rows of the model's test instances,
  the summary entry merged into an existing summary.json, then served from the cache."""
  eval_dir = str(tmp_path / "eval")
  os.makedirs(eval_dir)
  with open(os.path.join(eval_dir, "summary.json"), "w") as f:
    json.dump({"threshold": 0.4, "test": {"iou": 0.5}}, f)
  entry = evaluate.write_baselines_only(tiny_config, eval_dir)
  with open(os.path.join(eval_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["threshold"] == 0.4 and summary["test"] == {"iou": 0.5}
  assert summary["baselines"] == entry
  assert entry["mean_shape_threshold"] in tiny_config.eval.threshold_candidates
  with open(os.path.join(eval_dir, "baselines_test.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  test = pipeline.load_sources(tiny_config.data)["test"]
  indices = [int(test[i]["index"]) for i in range(tiny_config.eval.max_instances)]
  for name in baselines.BASELINES:
    named = [r for r in rows if r["baseline"] == name]
    assert [r["index"] for r in named] == indices
    assert entry[name]["num_instances"] == len(indices)
    assert entry[name]["iou"] == pytest.approx(np.mean([r["iou"] for r in named]))
    assert all(0 <= r["iou"] <= 1 and 0 <= r["fscore@0.02"] <= 1 for r in named)
  assert os.path.exists(baselines.cache_path(tiny_config))
  assert evaluate.write_baselines_only(tiny_config, str(tmp_path / "again")) == entry
