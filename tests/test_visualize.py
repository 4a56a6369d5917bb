"""Prediction pictures: an unsupervised head's column says so instead of showing its output.
Learning curves: drawn from metrics rows, also rows of older runs that lack keys."""
import matplotlib.image
import numpy as np
import pytest

from recon3d_jax import visualize


def _example(size=16, grid=12):
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:size, :size]
  mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
  depth = np.where(mask, 2.0 + xx / size, 0.0)
  normal = np.where(mask[..., None], [0.0, 0.0, -1.0], 0.0)
  batch = dict(image=rng.uniform(size=(1, size, size, 3)), depth=depth[None], normal=normal[None],
               mask=mask[None].astype(np.float32),
               surface_points=rng.normal(size=(1, 256, 3)) * 0.2)
  c = np.linspace(-0.55, 0.55, grid)
  radius = np.sqrt(sum(np.square(a) for a in np.meshgrid(c, c, c, indexing="ij")))
  pred = dict(depth=rng.uniform(2.0, 3.0, (1, size, size)),
              normal=rng.normal(size=(1, size, size, 3)),
              grid=(radius < 0.3).astype(np.float32)[None])
  return batch, pred


def _coloured_fraction(png, column):
  """Fraction of saturated (non-grey) pixels in the middle of column `column` of COLUMNS."""
  image = matplotlib.image.imread(png)[..., :3]
  width = image.shape[1] / len(visualize.COLUMNS)
  strip = image[:, int((column + 0.3) * width):int((column + 0.7) * width)]
  return np.mean(strip.max(-1) - strip.min(-1) > 0.2)


def test_unsupervised_heads_are_labelled_not_drawn(tmp_path):
  batch, pred = _example()
  depth_pred, depth_true = (visualize.COLUMNS.index(c) for c in ("depth (pred)", "depth (true)"))
  drawn, labelled = str(tmp_path / "drawn.png"), str(tmp_path / "labelled.png")
  visualize.save_prediction_grid(drawn, batch, pred, 0.5, 1)
  visualize.save_prediction_grid(labelled, batch, pred, 0.5, 1, unsupervised=("depth",))
  assert _coloured_fraction(drawn, depth_pred) > 0.1
  assert _coloured_fraction(labelled, depth_pred) == 0.0
  assert _coloured_fraction(labelled, depth_true) > 0.1
  mesh = visualize.COLUMNS.index("3D (pred)")
  visualize.save_prediction_grid(labelled, batch, pred, 0.5, 1, unsupervised=("occupancy",))
  assert _coloured_fraction(drawn, mesh) > 0.01
  assert _coloured_fraction(labelled, mesh) == 0.0
  with pytest.raises(ValueError, match="unsupervised=.*silhouette"):
    visualize.save_prediction_grid(labelled, batch, pred, 0.5, 1, unsupervised=("silhouette",))


def _metrics_rows(with_time=True, with_val=True):
  """Rows as train.py writes them: train rows every 2 steps, val rows every 10, a test row."""
  rows = []
  for step in range(2, 41, 2):
    seconds = {"time/train_s": 3.0 * step} if with_time else {}
    rows.append({"step": step, "train/loss/total": 2.0 / step, "train/loss/occupancy": 1.0 / step,
                 **seconds})
    if with_val and step % 10 == 0:
      rows.append({"step": step, "val/loss/total": 1.0 / step, "val/iou@0.5": step / 50,
                   **seconds})
  rows.append({"step": 40, "test/iou": 0.7})
  return rows


def _saturated_fraction(png, left):
  """Fraction of coloured (non-grey) pixels in the left or right half: drawn curves."""
  image = matplotlib.image.imread(png)[..., :3]
  half = image[:, :image.shape[1] // 2] if left else image[:, image.shape[1] // 2:]
  return np.mean(half.max(-1) - half.min(-1) > 0.2)


def test_learning_curves_against_step_and_wall_time(tmp_path):
  path = str(tmp_path / "curves.png")
  visualize.save_learning_curves(path, _metrics_rows(), arm="normal")
  image = matplotlib.image.imread(path)
  assert image.shape[1] > 1.5 * image.shape[0] > 300  # Two panels side by side.
  assert _saturated_fraction(path, left=True) > 0.002
  assert _saturated_fraction(path, left=False) > 0.002


def test_learning_curves_skip_missing_keys(tmp_path):
  path = str(tmp_path / "curves.png")
  visualize.save_learning_curves(path, _metrics_rows(with_time=False))  # Older run: no time.
  assert _saturated_fraction(path, left=True) > 0.002
  assert _saturated_fraction(path, left=False) == 0.0
  visualize.save_learning_curves(path, _metrics_rows(with_val=False))  # Losses only.
  assert _saturated_fraction(path, left=True) > 0.002
  assert _saturated_fraction(path, left=False) == 0.0
  visualize.save_learning_curves(path, [{"step": 0}, {"step": 2, "train/loss/total": None}])
  assert _saturated_fraction(path, left=True) == 0.0
