"""Multiresolution iso-surface extraction (MISE, Occupancy Networks, Mescheder et al. 2019).

Fills a fine occupancy grid while querying the model only near the iso-surface:

  1. evaluate the coarse grid of resolution0 + 1 points per side everywhere;
  2. mark the cells whose 8 corners straddle the threshold (some >= threshold, some below), grow
     that set by `dilation` cells in every direction (so a feature that pokes into a cell without
     reaching any of its corners is still refined), and split every marked cell in 2 x 2 x 2;
  3. evaluate the points of the split cells not evaluated yet; every other point of the new level
     takes the trilinear interpolation of the level before (for a dyadic refinement: the mean of
     its 2, 4 or 8 coarse neighbours);
  4. repeat 2-3 `upsampling_steps` times. The grid is then ready for
     metrics.mesh_from_occupancy at the same threshold.

Everything is batched: each instance has its own refined region, and the driver pads the lists
of points so that occupancy_fn always sees arrays of exactly (batch_size, chunk, 3) and a jitted
decoder compiles once. Plain numpy on the host; only occupancy_fn runs the model.

Where every point within one cell of the surface gets evaluated, the mesh is exactly that of the
dense grid (tests/test_mise.py). What the coarse grid misses entirely - a feature thinner than a
coarse cell that contains no coarse point and crosses no cell next to one that straddles - stays
missing, as in the original method.
"""
from __future__ import annotations

import numbers
from typing import Callable

import numpy as np

from recon3d_jax.metrics import BOX_SIZE

OccupancyFn = Callable[[np.ndarray], np.ndarray]


def _check_int(name, value, minimum):
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def _check_arguments(batch_size, threshold, resolution0, upsampling_steps, box_size, chunk,
                     dilation):
  _check_int("batch_size", batch_size, 1)
  _check_int("resolution0", resolution0, 1)
  _check_int("upsampling_steps", upsampling_steps, 0)
  _check_int("chunk", chunk, 1)
  _check_int("dilation", dilation, 0)
  if not 0.0 < threshold < 1.0:  # Also rejects NaN.
    raise ValueError(f"threshold={threshold!r}: expected a value in (0, 1)")
  if not box_size > 0.0:
    raise ValueError(f"box_size={box_size!r}: expected a positive side length")


# ---------------------------------------------------------------------------------------------
# Grid operations. Grids are (B, n, n, n): axis 0 is the instance, axes 1-3 are x, y, z.
# ---------------------------------------------------------------------------------------------
def _along(axis, index):
  """Index tuple selecting `index` along `axis` and everything on the other axes."""
  return (slice(None),) * axis + (index,)


def _pairwise(grid, op):
  """(B, n, n, n) point values -> (B, n-1, n-1, n-1) op over each cell's 8 corners.

  op (np.minimum / np.maximum) is applied to neighbours along one axis at a time, so the 8
  corners cost 3 passes instead of 7.
  """
  for axis in (1, 2, 3):
    grid = op(grid[_along(axis, slice(None, -1))], grid[_along(axis, slice(1, None))])
  return grid


def straddling_cells(grid, threshold):
  """(B, n, n, n) values -> (B, n-1, n-1, n-1) bool: cells the iso-surface crosses.

  A cell is crossed when some corner is inside (>= threshold, as in mesh_from_occupancy) and some
  is outside: exactly the cells in which marching cubes puts triangles.
  """
  return (_pairwise(grid, np.maximum) >= threshold) & (_pairwise(grid, np.minimum) < threshold)


def _dilate(mask, cells):
  """(B, n, n, n) bool -> same shape: True within `cells` steps (Chebyshev distance) of a True.

  One step along each axis in turn gives the 3 x 3 x 3 neighbourhood; repeating it grows it.
  """
  for _ in range(cells):
    for axis in (1, 2, 3):
      grown = mask.copy()
      grown[_along(axis, slice(1, None))] |= mask[_along(axis, slice(None, -1))]
      grown[_along(axis, slice(None, -1))] |= mask[_along(axis, slice(1, None))]
      mask = grown
  return mask


def _cell_corners(cells):
  """(B, n, n, n) bool cells -> (B, n+1, n+1, n+1) bool: points that are a corner of a True cell."""
  for axis in (1, 2, 3):
    shape = list(cells.shape)
    shape[axis] += 1
    points = np.zeros(shape, bool)
    points[_along(axis, slice(None, -1))] |= cells
    points[_along(axis, slice(1, None))] |= cells
    cells = points
  return cells


def _split_cells(cells):
  """(B, n, n, n) bool -> (B, 2n, 2n, 2n) bool: each cell's 8 children take its value."""
  for axis in (1, 2, 3):
    cells = np.repeat(cells, 2, axis=axis)
  return cells


def upsample(grid):
  """(B, n, n, n) values -> (B, 2n-1, 2n-1, 2n-1): trilinear interpolation at the midpoints.

  Even indices keep the old values and odd ones take the mean of their two neighbours, one axis
  at a time; the composition is exact trilinear interpolation of the coarse grid. The innermost
  axis goes first, while the array is smallest, as its strided writes are the slowest; the means
  are written in place (together about 1.5x faster on a batch of 129^3 grids).
  """
  for axis in (3, 2, 1):
    shape = list(grid.shape)
    shape[axis] = 2 * shape[axis] - 1
    fine = np.empty(shape, grid.dtype)
    fine[_along(axis, slice(None, None, 2))] = grid
    odd = fine[_along(axis, slice(1, None, 2))]
    np.add(grid[_along(axis, slice(None, -1))], grid[_along(axis, slice(1, None))], out=odd)
    odd *= 0.5
    grid = fine
  return grid


def _spread(known):
  """(B, n, n, n) bool -> (B, 2n-1, 2n-1, 2n-1): the same points on the next finer grid."""
  fine = np.zeros((known.shape[0],) + tuple(2 * s - 1 for s in known.shape[1:]), bool)
  fine[:, ::2, ::2, ::2] = known
  return fine


# ---------------------------------------------------------------------------------------------
# Querying the model.
# ---------------------------------------------------------------------------------------------
def padded_indices(mask, chunk):
  """(B, N) bool -> (B, M) int flat indices of each row's True entries, padded; and (B,) counts.

  M is the largest count rounded up to a multiple of chunk (0 when nothing is True), so every
  instance fills the same number of fixed-shape chunks. Row b lists its indices in increasing
  order, then repeats its first one (index 0, the grid's corner, for an empty row): padding costs
  queries but never asks about a point the instance does not evaluate anyway.
  """
  counts = mask.sum(axis=1)
  width = -(-int(counts.max(initial=0)) // chunk) * chunk
  rows, cols = np.nonzero(mask)  # Row-major: grouped by row, increasing within a row.
  rank = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
  first = np.zeros(len(mask), np.int64)
  first[rows[rank == 0]] = cols[rank == 0]
  indices = np.repeat(first[:, None], width, axis=1)
  indices[rows, rank] = cols
  return indices, counts


def _query(occupancy_fn, mask, axis, stride, chunk):
  """Evaluates occupancy_fn at the True points of mask, chunk by chunk.

  Args:
    occupancy_fn: (B, chunk, 3) float32 points -> (B, chunk) probabilities.
    mask: (B, n, n, n) bool, points of the current level to evaluate.
    axis: (R,) float32 coordinates of the finest grid along each axis.
    stride: finest-grid steps per step of the current level, so that the current level's point
      i sits at axis[i * stride] and shares its coordinates bit for bit with the finest grid.
    chunk: points per instance and call.

  Returns:
    (B, M) values at padded_indices(mask.reshape(B, -1), chunk), and those indices and counts.
  """
  batch_size, n = mask.shape[0], mask.shape[1]
  indices, counts = padded_indices(mask.reshape(batch_size, -1), chunk)
  values = np.empty(indices.shape, np.float32)
  for start in range(0, indices.shape[1], chunk):
    i, j, k = np.unravel_index(indices[:, start:start + chunk], (n, n, n))
    points = np.stack([axis[i * stride], axis[j * stride], axis[k * stride]], axis=-1)
    out = np.asarray(occupancy_fn(points))
    if out.shape != (batch_size, chunk):
      raise ValueError(f"occupancy_fn returned shape {out.shape} for points of shape "
                       f"{points.shape}; expected {(batch_size, chunk)}")
    values[:, start:start + chunk] = out
  return values, indices, counts


def _fill(grid, known, to_evaluate, occupancy_fn, axis, stride, chunk):
  """Queries the points of to_evaluate and writes them into grid and known (in place).

  Returns (B,) int: points queried per instance, padding excluded.
  """
  values, indices, counts = _query(occupancy_fn, to_evaluate, axis, stride, chunk)
  valid = np.arange(indices.shape[1]) < counts[:, None]
  # Flat indices into the (B, n, n, n) arrays; np.put writes in place whatever the layout.
  flat = np.nonzero(valid)[0] * to_evaluate[0].size + indices[valid]
  np.put(grid, flat, values[valid])
  np.put(known, flat, True)
  return counts


def extract_grid(occupancy_fn: OccupancyFn, batch_size: int, threshold: float,
                 resolution0: int = 32, upsampling_steps: int = 2, box_size: float = BOX_SIZE,
                 chunk: int = 8192, dilation: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Occupancy grids refined only near the `threshold` iso-surface (MISE).

  Args:
    occupancy_fn: points (batch_size, chunk, 3) float32 -> (batch_size, chunk) probabilities in
      [0, 1]; row b of the points belongs to instance b. Always called with exactly this shape.
      Padding rows repeat points of the same instance; their values are ignored.
    batch_size: B, number of instances.
    threshold: iso-level in (0, 1); points with probability >= threshold are inside. Use the
      level that metrics.mesh_from_occupancy will use: refinement follows this level only.
    resolution0: cells per side of the coarse grid, which is evaluated everywhere.
    upsampling_steps: number of 2x refinements; 0 gives the dense (resolution0 + 1)^3 grid.
    box_size: side of the cube the grid spans, centred at the origin.
    chunk: points per instance and call of occupancy_fn.
    dilation: cells (of the level being refined) by which the crossed cells are grown before
      splitting. 0 refines only crossed cells and can miss features thinner than a cell.

  Returns:
    grid: (B, R, R, R) float32 probabilities, R = resolution0 * 2**upsampling_steps + 1;
      grid[b, i, j, k] is at (x_i, x_j, x_k) with x = np.linspace(-box_size/2, box_size/2, R)
      (the convention of metrics.mesh_from_occupancy). Evaluated points hold occupancy_fn's value,
      the others the trilinear interpolation of the level they were not refined beyond.
    num_evaluated: (B,) int64, points queried per instance (padding excluded); at most R^3.

  Raises:
    ValueError: on invalid arguments or when occupancy_fn returns the wrong shape.
  """
  _check_arguments(batch_size, threshold, resolution0, upsampling_steps, box_size, chunk, dilation)
  size = resolution0 * 2**upsampling_steps + 1
  axis = np.linspace(-box_size / 2, box_size / 2, size).astype(np.float32)

  n = resolution0 + 1
  grid = np.zeros((batch_size, n, n, n), np.float32)
  known = np.zeros(grid.shape, bool)
  num_evaluated = _fill(grid, known, np.ones(grid.shape, bool), occupancy_fn, axis,
                        2**upsampling_steps, chunk)
  for level in range(1, upsampling_steps + 1):
    refined = _split_cells(_dilate(straddling_cells(grid, threshold), dilation))
    grid, known = upsample(grid), _spread(known)
    to_evaluate = _cell_corners(refined) & ~known
    num_evaluated = num_evaluated + _fill(grid, known, to_evaluate, occupancy_fn, axis,
                                          2**(upsampling_steps - level), chunk)
  return grid, num_evaluated.astype(np.int64)
