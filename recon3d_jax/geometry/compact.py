"""Stream compaction: work on the entries of a mask only, in fixed-size chunks.

Sphere tracing needs the SDF at a small, data-dependent subset of many points
(the rays still marching, the hits). Jitted shapes are static, so the
subset's entries are found by rank (ranks, select: the index of the r-th
True) and processed chunk by chunk in a while loop (map_where). Under vmap
the loop runs as many chunks as the largest subset in the batch needs.
Surface sampling needs the first k Trues for large k (true_first).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

_SCAN_BLOCK = 32


def _block_sums(values):
  """(n,) float32 -> (ceil(n / B), B) inclusive running sums within each block
  of B = _SCAN_BLOCK entries (zero-padded): a product with a triangular
  matrix of ones."""
  blocks = jnp.pad(values, (0, -values.shape[0] % _SCAN_BLOCK)).reshape(-1, _SCAN_BLOCK)
  return blocks @ jnp.triu(jnp.ones((_SCAN_BLOCK, _SCAN_BLOCK), jnp.float32))


def running_sum(values):
  """(n,) float32 -> (n,) inclusive running sums, exact for integer counts below 2^24.

  Running sums per block (_block_sums) plus the running sum of the block
  totals (recursively). XLA's CPU cumsum (an associative scan) was several
  times slower (benchmarks/RESULTS.md, "Figures behind code comments").
  """
  n = values.shape[0]
  within = _block_sums(values)
  if within.shape[0] > 1:
    totals = within[:, -1]
    within = within + (running_sum(totals) - totals)[:, None]
  return within.reshape(-1)[:n]


def running_count(mask):
  """(n,) bool -> (n,) int32 number of True up to and including each index."""
  return running_sum(mask.astype(jnp.float32)).astype(jnp.int32)


class Ranks(NamedTuple):
  """Where the True entries of an (n,) mask are, for `select` (see `ranks`).

  within: (nb, B) float32 inclusive count of Trues in each block of B entries.
  start: (nb,) float32 Trues before each block.
  block: (n,) int32 the block holding the True of each rank (rank r = the
    (r+1)-th True); past `count`, the last block.
  count: () int32 number of Trues.
  """
  within: jax.Array
  start: jax.Array
  block: jax.Array
  count: jax.Array


def ranks(mask) -> Ranks:
  """(n,) bool -> Ranks: counts per block and the block of each rank.

  The block of rank r is the last block starting at or before r: a running
  count of block starts, marked by a scatter of only n / B entries. `select`
  then costs B comparisons per rank, which pays for the few ranks of a
  map_where chunk; for many ranks true_first's permutation was cheaper.
  """
  n = mask.shape[0]
  within = _block_sums(mask.astype(jnp.float32))
  totals = within[:, -1]
  start = running_sum(totals) - totals
  marks = jnp.zeros(n + 1, jnp.float32).at[jnp.minimum(start, n).astype(jnp.int32)].add(1.0)
  block = running_sum(marks)[:n].astype(jnp.int32) - 1
  return Ranks(within, start, block, jnp.sum(totals).astype(jnp.int32))


def select(r: Ranks, rank):
  """(m,) int32 ranks -> (m,) int32 indices of the Trues of those ranks, in
  [0, n); ranks must lie in [0, n), and indices for ranks >= r.count are
  arbitrary."""
  block = r.block[rank]
  local = (rank - r.start[block]).astype(jnp.float32)
  # Position in the block of the (local + 1)-th True: entries counting fewer.
  position = jnp.sum(r.within[block] <= local[:, None], axis=-1)
  return jnp.minimum(block * _SCAN_BLOCK + position, r.block.shape[0] - 1)


def true_first(mask, k: int):
  """(n,) bool -> (k,) int32 the first k of the indices of True in order,
  then of False in order (static k <= n).

  A permutation by running counts and one scatter of n entries: for the
  surface sampler's sizes (k from n / 8 to n, n up to 49,152, vmapped batches
  of 16-32) cheaper on CPU than k selects (benchmarks/RESULTS.md).
  """
  n = mask.shape[0]
  count = running_count(mask)
  # The mask read back from its counts: where the mask itself was used here,
  # XLA fused its producer (a compound's whole SDF for the surface sampler's
  # candidates) into this index computation and evaluated it again, there
  # unvectorised: a large share of a compound's ground truth (found with
  # benchmarks/profile_samples.py; figures in benchmarks/RESULTS.md).
  is_true = count > jnp.pad(count[:-1], (1, 0))
  position = jnp.where(is_true, count - 1, count[-1] + jnp.arange(n) - count)
  order = jnp.zeros(n, jnp.int32).at[position].set(jnp.arange(n, dtype=jnp.int32),
                                                   unique_indices=True)
  return order[:k]


def map_where(fn, mask, values, chunk: int):
  """Replaces the entries of `values` where `mask` holds by fn of them.

  Args:
    fn: maps a pytree like `values` with leading axis `chunk` to one of the
      same structure and shapes; entries are independent (it may see padding
      entries, whose results are dropped).
    mask: (n,) bool, the entries to update.
    values: pytree of arrays with leading axis n.
    chunk: static number of entries per call of fn.

  Returns:
    `values` with the masked entries updated, the others unchanged.
  """
  n = mask.shape[0]
  masked = ranks(mask)
  slot = jnp.arange(chunk, dtype=jnp.int32)

  def body(state):
    start, values = state
    rank = jnp.minimum(start + slot, n - 1)
    index = select(masked, rank)
    # Ranks past the count are unmasked entries: their results go to distinct
    # indices past the end, which are dropped.
    target = jnp.where(start + slot < masked.count, index, n + slot)
    updated = fn(jax.tree.map(lambda v: v[index], values))
    return start + chunk, jax.tree.map(
        lambda v, u: v.at[target].set(u, mode='drop', unique_indices=True), values, updated)

  _, values = jax.lax.while_loop(lambda state: state[0] < masked.count, body, (0, values))
  return values
