"""Recognition baselines (Tatarchenko et al., "What Do Single-view 3D Reconstruction Networks
Learn?", CVPR 2019), scored exactly like the models.

    from recon3d_jax import baselines
    result = baselines.cached_baselines(pipeline.load_sources(config.data), config)
    python -m recon3d_jax.evaluate --baselines_only --config=configs/default.py --out=DIR

Three reference predictions per test instance, none of them trained:
- mean_shape: the mean occupancy of the training split's voxels (viewer-centred, as the data),
  thresholded at the level that maximises mean IoU on the validation split (over
  config.eval.threshold_candidates, like the models' threshold). Its surface: marching cubes of
  the mean grid at that level, config.eval.num_pred_points area-uniform samples. It is one
  prediction for every instance, so its surface is sampled once (numpy seed SURFACE_SEED).
- retrieval: the training instance whose input image is nearest to the test image in a fixed
  embedding (`image_embedding`: grayscale, area-downsampled to 16x16, each image standardised to
  zero mean and unit L2 norm so global brightness and albedo do not dominate; nearest by L2 =
  largest cosine). It reads no 3D ground truth of the test instance. Its prediction: that
  training instance's stored voxels and its stored (exact) surface samples.
- retrieval_oracle: the training instance with the highest voxel IoU to the test shape. It reads
  the test ground truth: an upper bound for any retrieval or clustering method, not a method.

Metrics are those of the models' final evaluation (evaluate.py), on the same points:
occupancy IoU, accuracy and ECE at the R^3 voxel centres of the unit cube against the stored
`voxels`, and metrics.pointcloud_metrics against the stored surface samples. The instances are
the split's first config.eval.max_instances (pipeline.eval_batches order); rows carry the dataset
`index`, so they pair with a run's eval/test.jsonl rows. The baselines use the whole training
split (a run's data.max_level does not change them).
Caveat when reading F@τ at small τ: the retrievals' surfaces are exact samples of a true shape,
while a model's and the mean shape's come from marching cubes on a grid (spacing ~0.03), which
alone costs points within τ = 0.01.
"""
from __future__ import annotations

import hashlib
import json
import os

import ml_collections
import numpy as np
from absl import logging

from recon3d_jax import metrics, writers
from recon3d_jax.data import pipeline

BASELINES = ("mean_shape", "retrieval", "retrieval_oracle")
EMBEDDING_SIZE = 16  # Side of the downsampled grayscale image of the retrieval embedding.
# ITU-R BT.601 luma weights: RGB -> grayscale.
LUMA = np.array([0.299, 0.587, 0.114])
BLOCK = 512  # Training shapes per block: float32 products of the IoU matrix, embeddings.
SURFACE_SEED = 0  # numpy seed of the mean shape's surface samples.
# Bump when the baselines' numbers change, so caches written by older code are not reused.
CACHE_VERSION = 1
_NON_METRICS = ("index", "kind", "baseline", "train_index")
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Retrieval embedding.
# ---------------------------------------------------------------------------------------------
def area_weights(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of area resampling along one axis: output cell i averages the input
  cells it overlaps, weighted by overlap length (any n_in, n_out; rows sum to 1)."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  cells = np.arange(n_in)
  overlap = (np.minimum(edges[1:, None], cells[None] + 1)
             - np.maximum(edges[:-1, None], cells[None]))
  return np.maximum(overlap, 0.0) * (n_out / n_in)


def image_embedding(images, size: int = EMBEDDING_SIZE) -> np.ndarray:
  """images (N,H,W,3), any scale -> (N, size*size) float64 zero-mean, unit-norm embeddings.

  Grayscale, area-downsampled to size x size, then each vector standardised: subtracting its
  mean and dividing by its norm removes global brightness and contrast (albedo, light), so
  neighbours differ by silhouette and shading pattern. A constant image embeds to zeros.
  """
  images = np.asarray(images, dtype=np.float64)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}.")
  gray = images @ LUMA
  small = (area_weights(gray.shape[1], size) @ gray
           @ area_weights(gray.shape[2], size).T).reshape(len(gray), -1)
  small -= small.mean(axis=1, keepdims=True)
  return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), _EPS)


def nearest(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """queries (T,D), keys (N,D) -> (T,) index of each query's nearest key by L2 (first on ties)."""
  sq = (np.sum(queries**2, axis=1)[:, None] - 2 * queries @ keys.T
        + np.sum(keys**2, axis=1)[None])
  return np.argmin(sq, axis=1)


# ---------------------------------------------------------------------------------------------
# Voxel IoU.
# ---------------------------------------------------------------------------------------------
def iou_matrix(a, b, block: int = BLOCK) -> np.ndarray:
  """a (T,V), b (N,V) bool occupancies -> (T,N) float64 IoU of every pair.

  Intersections are float32 matrix products over blocks of `block` rows of b (exact: counts
  below 2^24 are integers in float32); unions = |a| + |b| - intersection. Two empty shapes have
  IoU 1, as in metrics.occupancy_metrics.
  """
  a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"a and b must have shapes (T, V) and (N, V), got {a.shape} and {b.shape}.")
  if a.shape[1] >= 2**24:
    raise ValueError(f"{a.shape[1]} voxels per shape: float32 counts are exact below 2^24.")
  a32 = a.astype(np.float32)
  inter = np.empty((len(a), len(b)))
  for start in range(0, len(b), block):
    inter[:, start:start + block] = a32 @ b[start:start + block].astype(np.float32).T
  union = a.sum(1)[:, None] + b.sum(1)[None] - inter
  return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# ---------------------------------------------------------------------------------------------
# Mean shape.
# ---------------------------------------------------------------------------------------------
def mean_shape_surface(mean_grid, threshold: float, num_points: int, rng: np.random.Generator):
  """Area-uniform samples (points, normals: (num_points,3) each) of the `threshold` isosurface of
  a voxel-centre grid (R,R,R): its samples span [-0.5 + 0.5/R, 0.5 - 0.5/R], hence the box."""
  resolution = np.shape(mean_grid)[0]
  vertices, faces = metrics.mesh_from_occupancy(mean_grid, threshold, box_size=1 - 1 / resolution)
  return metrics.sample_surface(vertices, faces, num_points, rng)


# ---------------------------------------------------------------------------------------------
# Per-instance metrics and the driver.
# ---------------------------------------------------------------------------------------------
def instance_metrics(probs, labels, threshold: float, points, normals, example: dict) -> dict:
  """The models' 3D metrics (evaluate.instance_metrics) of one baseline prediction: probs and
  labels (V,) at the voxel centres; points, normals (K,3) its surface samples; example the
  test record (surface_points, surface_normals). A 0/1 prediction's ECE is 1 - accuracy."""
  row = dict(metrics.occupancy_metrics(probs, labels, threshold))
  row["ece"] = metrics.expected_calibration_error(probs, labels)
  row.update(metrics.pointcloud_metrics(points, normals, example["surface_points"],
                                        example["surface_normals"]))
  return row


def voxel_labels(batch: dict) -> np.ndarray:
  """(B,R^3) bool stored occupancy at the voxel centres, raveled in [x,y,z] order."""
  return np.asarray(batch["voxels"]).reshape(len(batch["voxels"]), -1) > 0


def read_training(source) -> dict:
  """One pass over the training split: voxels (N,V) bool (V = R^3, [x,y,z] raveled), embeddings
  (N,D), index (N,) int dataset indices, shape (R,R,R)."""
  voxels, images, index = [], [], []
  for i in range(len(source)):
    record = source[i]
    voxels.append(np.asarray(record["voxels"]).ravel() > 0)
    images.append(np.asarray(record["image"]))
    index.append(int(record["index"]))
  if not voxels:
    raise ValueError("the training split is empty: the baselines need training shapes.")
  embeddings = np.concatenate([image_embedding(np.stack(images[s:s + BLOCK]))
                               for s in range(0, len(images), BLOCK)])
  return dict(voxels=np.stack(voxels), embeddings=embeddings, index=np.array(index),
              shape=np.shape(source[0]["voxels"]))


def _retrieve(source, config, train: dict) -> dict:
  """Training positions (T,) picked for the split's first eval.max_instances instances by
  retrieval (images only) and retrieval_oracle (test voxels); one IoU matrix for the split, so
  the training voxels are converted to float32 once per block, not once per batch."""
  voxels, embeddings = [], []
  for batch in pipeline.eval_batches(source, config.eval.batch_size, config.eval.max_instances):
    voxels.append(voxel_labels(batch))
    embeddings.append(image_embedding(batch["image"]))
  return dict(retrieval=nearest(np.concatenate(embeddings), train["embeddings"]),
              retrieval_oracle=iou_matrix(np.concatenate(voxels), train["voxels"]).argmax(axis=1))


def _means(rows: list[dict]) -> dict:
  keys = [k for k in rows[0] if k not in _NON_METRICS]
  return dict({k: float(np.mean([r[k] for r in rows])) for k in keys}, num_instances=len(rows))


def evaluate_baselines(sources, config: ml_collections.ConfigDict,
                       splits=("test",)) -> dict:
  """The three baselines on `splits` of a dataset.

  sources: split -> random-access records (pipeline.load_sources); config: the run's config
  (eval.max_instances, batch_size, threshold_candidates, num_pred_points are read).
  Returns {"mean_shape_threshold": t, "num_train": N, "rows": {split: [row, ...]},
  "means": {split: {baseline: {metric: mean, num_instances}}}}; a row is {baseline, index,
  kind, [train_index: dataset index of the retrieved shape], metrics...}.
  """
  train_source = sources["train"]
  train = read_training(train_source)
  mean_grid = train["voxels"].mean(axis=0).reshape(train["shape"])
  validation = pipeline.eval_batches(sources["validation"], config.eval.batch_size,
                                     config.eval.max_instances)
  labels = [row for batch in validation for row in voxel_labels(batch)]
  threshold = metrics.select_threshold([mean_grid.ravel()] * len(labels), labels,
                                       list(config.eval.threshold_candidates))
  mean_surface = mean_shape_surface(mean_grid, threshold, config.eval.num_pred_points,
                                    np.random.default_rng(SURFACE_SEED))
  surfaces = {}  # Training position -> its stored surface samples, read when first retrieved.

  def surface(j):
    if j not in surfaces:
      record = train_source[int(j)]
      surfaces[j] = (record["surface_points"], record["surface_normals"])
    return surfaces[j]

  result = dict(mean_shape_threshold=threshold, num_train=len(train["voxels"]), rows={},
                means={})
  for split in splits:
    picks, rows, position = _retrieve(sources[split], config, train), [], 0
    for batch in pipeline.eval_batches(sources[split], config.eval.batch_size,
                                       config.eval.max_instances):
      for i, voxels in enumerate(voxel_labels(batch)):
        example = {k: v[i] for k, v in batch.items()}
        key = dict(index=int(example["index"]), kind=int(example["kind"]))
        rows.append(dict(baseline="mean_shape", **key, **instance_metrics(
            mean_grid.ravel(), voxels, threshold, *mean_surface, example)))
        for name, chosen in picks.items():
          j = int(chosen[position])
          rows.append(dict(baseline=name, **key, train_index=int(train["index"][j]),
                           **instance_metrics(train["voxels"][j].astype(np.float64), voxels,
                                              0.5, *surface(j), example)))
        position += 1
    result["rows"][split] = rows
    result["means"][split] = {name: _means([r for r in rows if r["baseline"] == name])
                              for name in BASELINES}
  return result


def summary(result: dict, split: str = "test") -> dict:
  """The eval/summary.json entry: {baseline: metric means of `split`, mean_shape_threshold}."""
  return dict(result["means"][split], mean_shape_threshold=result["mean_shape_threshold"])


def log_summary(result: dict, split: str = "test") -> None:
  means = result["means"][split]
  logging.info("Baselines (%s, n=%d): IoU %s; F@0.02 %s; F@0.01 %s.", split,
               means["mean_shape"]["num_instances"],
               *(", ".join(f"{name} {means[name][key]:.4f}" for name in BASELINES)
                 for key in ("iou", "fscore@0.02", "fscore@0.01")))


# ---------------------------------------------------------------------------------------------
# Cache: the baselines depend only on the dataset and the evaluation settings.
# ---------------------------------------------------------------------------------------------
def cache_path(config: ml_collections.ConfigDict, splits=("test",)) -> str:
  """DATA_DIR/baselines/<dataset config>-<version>-<hash of the settings>.json."""
  builder = pipeline.get_builder(config.data)
  settings = dict(dataset=builder.builder_config.name, version=str(builder.version),
                  splits=list(splits), max_instances=int(config.eval.max_instances),
                  threshold_candidates=[float(t) for t in config.eval.threshold_candidates],
                  num_pred_points=int(config.eval.num_pred_points),
                  embedding_size=EMBEDDING_SIZE, surface_seed=SURFACE_SEED,
                  cache_version=CACHE_VERSION)
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(config.data.data_dir, "baselines",
                      f"{settings['dataset']}-{settings['version']}-{digest}.json")


def cached_baselines(sources, config: ml_collections.ConfigDict, splits=("test",)) -> dict:
  """`evaluate_baselines`, read from / written to `cache_path` (a failed write only warns)."""
  path = cache_path(config, splits)
  if os.path.exists(path):
    with open(path) as f:
      logging.info("Baselines read from %s.", path)
      return json.load(f)
  result = evaluate_baselines(sources, config, splits)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writers.atomic_write(path, json.dumps(result))
  except OSError as e:
    logging.warning("Baselines not cached (%s).", e)
  return result


def write_rows(eval_dir: str, result: dict) -> None:
  """EVAL_DIR/baselines_<split>.jsonl: one row per (baseline, instance)."""
  for split, rows in result["rows"].items():
    writers.atomic_write(os.path.join(eval_dir, f"baselines_{split}.jsonl"),
                         "".join(json.dumps(r) + "\n" for r in rows))
