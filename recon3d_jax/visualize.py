"""Pictures of predictions: input, depth and normals (predicted / true), and the 3D shapes;
learning curves."""
from __future__ import annotations

import numpy as np
# Figures without pyplot: files only, and importing this module leaves the caller's backend
# (a notebook's inline display) alone.
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from recon3d_jax import metrics, writers

COLUMNS = ("input", "depth (pred)", "depth (true)", "normals (pred)", "normals (true)",
           "3D (pred)", "3D (true points)")
# The column showing each prediction head (losses.TERMS names).
HEAD_COLUMNS = {"depth": "depth (pred)", "normal": "normals (pred)", "occupancy": "3D (pred)"}


def normals_to_rgb(normals: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
  """(H,W,3) unit normals -> (H,W,3) colours in [0,1]; white where mask is False."""
  rgb = np.clip(normals * 0.5 + 0.5, 0, 1)
  if mask is not None:
    rgb = np.where(mask[..., None], rgb, 1.0)
  return rgb


def _draw_mesh(ax, vertices: np.ndarray, faces: np.ndarray) -> None:
  """Lambert-shaded mesh, drawn in the plot frame of `_to_plot`."""
  if not len(faces):
    ax.text2D(0.3, 0.5, "empty", transform=ax.transAxes)
    return
  triangles = _to_plot(vertices)[faces]
  normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
  normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
  light = np.array([-0.4, -0.6, 0.7]) / np.linalg.norm([-0.4, -0.6, 0.7])
  shade = 0.3 + 0.7 * np.abs(normals @ light)
  colors = shade[:, None] * np.array([0.3, 0.5, 0.9])
  ax.add_collection3d(Poly3DCollection(triangles, facecolors=colors, edgecolors="none"))


def _to_plot(points: np.ndarray) -> np.ndarray:
  # Camera frame is +x right, +y down, +z forward; plot (x, z, -y) so "up" is up and, with
  # `_setup_3d`'s view, the viewer looks along +z as in the input image.
  return points[:, [0, 2, 1]] * np.array([1, 1, -1])


def _draw_points(ax, points: np.ndarray) -> None:
  p = _to_plot(points)
  ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=0.5, c=p[:, 2], cmap="viridis")


def _setup_3d(ax) -> None:
  half = metrics.BOX_SIZE / 2
  ax.set(xlim=(-half, half), ylim=(-half, half), zlim=(-half, half))
  ax.set_box_aspect((1, 1, 1))
  ax.view_init(elev=10, azim=-90)  # Looking along +z (the camera's direction).
  ax.set_axis_off()


def _draw_unsupervised(ax) -> None:
  ax.text(0.5, 0.5, "head not trained\n(loss weight 0)", ha="center", va="center", fontsize=8,
          color="0.4", transform=ax.transAxes)
  ax.set_axis_off()


def save_prediction_grid(path: str, batch: dict, pred: dict, threshold: float,
                         num_instances: int, unsupervised: tuple[str, ...] = ()) -> None:
  """Writes a PNG with one row per instance and the COLUMNS above.

  batch: eval batch (image, depth, normal, mask, surface_points); pred: `evaluate.predict`
  output including `grid`; the predicted mesh uses the validation-chosen threshold.
  unsupervised: heads (keys of HEAD_COLUMNS) that the run's loss never trained, e.g. depth in
  the `normal` arm; their columns say so instead of showing an untrained output.
  """
  unknown = set(unsupervised) - set(HEAD_COLUMNS)
  if unknown:
    raise ValueError(f"unsupervised={unsupervised!r}: expected heads among {sorted(HEAD_COLUMNS)}")
  blank = {HEAD_COLUMNS[h] for h in unsupervised}
  n = min(num_instances, len(batch["image"]))
  fig = Figure(figsize=(2.2 * len(COLUMNS), 2.2 * n))
  for i in range(n):
    mask = batch["mask"][i] > 0.5
    fg_depth = batch["depth"][i][mask]
    lo, hi = (fg_depth.min(), fg_depth.max()) if fg_depth.size else (1.0, 3.0)
    panels = [
        batch["image"][i],
        np.ma.masked_where(~mask, pred["depth"][i]),
        np.ma.masked_where(~mask, batch["depth"][i]),
        normals_to_rgb(pred["normal"][i], mask),
        normals_to_rgb(batch["normal"][i], mask),
    ]
    for j, panel in enumerate(panels):
      ax = fig.add_subplot(n, len(COLUMNS), i * len(COLUMNS) + j + 1)
      if COLUMNS[j] in blank:
        _draw_unsupervised(ax)
        continue
      ax.imshow(panel, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
      ax.set_axis_off()
    if "3D (pred)" in blank:
      _draw_unsupervised(fig.add_subplot(n, len(COLUMNS), i * len(COLUMNS) + 6))
    else:
      ax = fig.add_subplot(n, len(COLUMNS), i * len(COLUMNS) + 6, projection="3d")
      _draw_mesh(ax, *metrics.mesh_from_occupancy(pred["grid"][i], threshold))
      _setup_3d(ax)
    ax = fig.add_subplot(n, len(COLUMNS), i * len(COLUMNS) + 7, projection="3d")
    _draw_points(ax, batch["surface_points"][i])
    _setup_3d(ax)
  for j, title in enumerate(COLUMNS):
    fig.axes[j].set_title(title, fontsize=9)
  fig.suptitle("depth and normals shown on the true foreground", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


SAMPLE_COLUMNS = ("image", "depth", "normals", "mask", "3D surface points", "voxels")


def _depth_range(depth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  fg = depth[mask]
  return (float(fg.min()), float(fg.max())) if fg.size else (1.0, 3.0)


def save_sample_grid(path: str, records: dict, title: str) -> None:
  """Writes a PNG with one row per dataset record and the SAMPLE_COLUMNS above.

  records: dict of (B, ...) record fields (image, depth, normal, mask, surface_points, voxels).
  """
  n = len(records["image"])
  cols = len(SAMPLE_COLUMNS)
  fig = Figure(figsize=(2.2 * cols, 2.2 * n))
  for i in range(n):
    mask = records["mask"][i] > 0
    lo, hi = _depth_range(records["depth"][i], mask)
    panels = [(records["image"][i], {}),
              (np.ma.masked_where(~mask, records["depth"][i]), dict(vmin=lo, vmax=hi)),
              (normals_to_rgb(records["normal"][i], mask), {}),
              (mask, dict(cmap="gray"))]
    for j, (panel, kwargs) in enumerate(panels):
      ax = fig.add_subplot(n, cols, i * cols + j + 1)
      ax.imshow(panel, interpolation="nearest", **{"cmap": "viridis", **kwargs})
      ax.set_axis_off()
    ax = fig.add_subplot(n, cols, i * cols + 5, projection="3d")
    _draw_points(ax, records["surface_points"][i])
    _setup_3d(ax)
    ax = fig.add_subplot(n, cols, i * cols + 6, projection="3d")
    voxels = records["voxels"][i]
    centres = (np.argwhere(voxels > 0) + 0.5) / voxels.shape[0] * metrics.BOX_SIZE
    _draw_points(ax, centres - metrics.BOX_SIZE / 2)
    _setup_3d(ax)
  for j, name in enumerate(SAMPLE_COLUMNS):
    fig.axes[j].set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def save_level_grid(path: str, record: dict, targets: dict[str, dict], title: str) -> None:
  """Writes a PNG of one record's 2.5D training targets at several supervision levels.

  targets: level name -> dict(depth (H,W), depth_valid (H,W), normal (H,W,3), normal_valid);
  holes (invalid pixels) are drawn white.
  """
  mask = record["mask"] > 0
  lo, hi = _depth_range(record["depth"], mask)
  names = list(targets)
  fig = Figure(figsize=(2.2 * (len(names) + 1), 4.6))
  axes = fig.subplots(2, len(names) + 1)
  axes[0, 0].imshow(record["image"], interpolation="nearest")
  axes[0, 0].set_title("image", fontsize=9)
  axes[1, 0].set_axis_off()
  for j, name in enumerate(names, 1):
    t = targets[name]
    axes[0, j].imshow(np.ma.masked_where(t["depth_valid"] < 0.5, t["depth"]), cmap="viridis",
                      vmin=lo, vmax=hi, interpolation="nearest")
    axes[0, j].set_title(f"depth: {name}", fontsize=9)
    axes[1, j].imshow(normals_to_rgb(t["normal"], t["normal_valid"] > 0.5),
                      interpolation="nearest")
    axes[1, j].set_title(f"normals: {name}", fontsize=9)
  for ax in axes.flat:
    ax.set_axis_off()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


VAL_IOU = "val/iou@0.5"
LOSS_CURVES = ("train/loss/total", "train/loss/occupancy")
IOU_LIMITS = (-0.02, 1.02)  # IoU's [0, 1], with room for markers at 0 and 1.


def _series(rows: list[dict], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of the rows holding both keys as numbers: rows of older runs may lack either."""
  pairs = [(r[x_key], r[y_key]) for r in rows
           if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))]
  return tuple(np.array(pairs, dtype=float).reshape(-1, 2).T)


def _note(ax, text: str) -> None:
  ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4",
          transform=ax.transAxes)


def save_learning_curves(path: str, rows: list[dict], arm: str | None = None) -> None:
  """Writes a PNG of validation IoU and training losses against the step (left) and validation
  IoU against training wall time (right), from metrics rows (writers.read_metrics).

  Missing keys are skipped, not errors, so runs of older code (no time/train_s) still plot.
  Losses get their own axis: their scale has nothing to do with IoU's [0, 1].
  """
  fig = Figure(figsize=(11, 4))
  by_step, by_time = fig.subplots(1, 2)
  handles = []
  steps, iou = _series(rows, "step", VAL_IOU)
  if len(iou):
    handles += by_step.plot(steps, iou, "o-", color="C0", label="val IoU@0.5")
  by_step.set(xlabel="step", ylabel="validation IoU@0.5", ylim=IOU_LIMITS, title="against step")
  loss_ax = by_step.twinx()
  for i, key in enumerate(LOSS_CURVES):
    steps, loss = _series(rows, "step", key)
    if len(loss):
      handles += loss_ax.plot(steps, loss, color=f"C{i + 1}", label=key)
  loss_ax.set_ylabel("training loss")
  if handles:
    by_step.legend(handles=handles, loc="upper right", fontsize=8)
  else:
    _note(by_step, "no validation IoU or training loss logged")

  seconds, iou = _series(rows, writers.TRAIN_SECONDS, VAL_IOU)
  if len(iou):
    by_time.plot(seconds / 60, iou, "o-", color="C0", label="val IoU@0.5")
    by_time.legend(loc="lower right", fontsize=8)
  else:
    _note(by_time, f"no validation rows with {writers.TRAIN_SECONDS}")
  by_time.set(xlabel="training wall time (min)", ylabel="validation IoU@0.5", ylim=IOU_LIMITS,
              title="against wall time")
  fig.suptitle(f"learning curves: arm={arm}" if arm else "learning curves", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
