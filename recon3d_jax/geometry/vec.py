"""3-vector arithmetic written out by component.

XLA on CPU runs `points @ rotation` with a (3, 3) rotation, and sums or
reductions over a trailing axis of size 3, as tiny batched dots and
reductions that do not fuse with the surrounding elementwise code: measured
about 30x (matmul) and 6x (sum) slower per point than the same arithmetic
written as three broadcast products, which fuse into one vectorised loop.
The geometry evaluates these per point, millions of times per sample.
"""
import jax.numpy as jnp


def dot(a, b):
  """Dot product over the last axis of (..., 3) a and b -> (...,)."""
  return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def norm(v):
  """Euclidean norm of (..., 3) v -> (...,), with a finite gradient at 0
  (which jnp.linalg.norm lacks; under vmap unselected switch branches need it)."""
  return jnp.sqrt(jnp.maximum(dot(v, v), 1e-36))


def normalize(v):
  """(..., 3) v scaled to unit length."""
  return v / norm(v)[..., None]


def matmul(v, m):
  """v @ m for row vectors (..., 3) and a matrix (3, 3) -> (..., 3)."""
  return v[..., 0:1] * m[0] + v[..., 1:2] * m[1] + v[..., 2:3] * m[2]
