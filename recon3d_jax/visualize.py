"""Pictures of predictions: input, depth and normals (predicted / true), and the 3D shapes."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # Files only; no display.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402

from recon3d_jax import metrics  # noqa: E402

COLUMNS = ("input", "depth (pred)", "depth (true)", "normals (pred)", "normals (true)",
           "3D (pred)", "3D (true points)")


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


def save_prediction_grid(path: str, batch: dict, pred: dict, threshold: float,
                         num_instances: int) -> None:
  """Writes a PNG with one row per instance and the COLUMNS above.

  batch: eval batch (image, depth, normal, mask, surface_points); pred: `evaluate.predict`
  output including `grid`; the predicted mesh uses the validation-chosen threshold.
  """
  n = min(num_instances, len(batch["image"]))
  fig = plt.figure(figsize=(2.2 * len(COLUMNS), 2.2 * n))
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
      ax.imshow(panel, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
      ax.set_axis_off()
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
  plt.close(fig)
