"""3-vector arithmetic written out by component.

XLA on CPU runs `points @ rotation` with a (3, 3) rotation, and sums or
reductions over a trailing axis of size 3, as tiny batched dots and
reductions that do not fuse with the surrounding elementwise code: many times
slower per point than the same arithmetic written as three broadcast products,
which fuse into one vectorised loop (figures in benchmarks/RESULTS.md).
The geometry evaluates these per point, millions of times per sample.
"""
import jax.numpy as jnp


def dot(a, b):
  """Dot product over the last axis of (..., 3) a and b -> (...,)."""
  return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def length(*components):
  """Euclidean norm of components, each (...,) -> (...,), with a finite gradient at 0 (which
  jnp.linalg.norm lacks; under vmap the unselected switch branches need it). The floor is tiny
  so that points 1e-10 off a surface still get a gradient."""
  return jnp.sqrt(jnp.maximum(sum(c * c for c in components), 1e-36))


def norm(v):
  """Euclidean norm of (..., 3) v -> (...,): `length` of its components."""
  return length(v[..., 0], v[..., 1], v[..., 2])


def normalize(v):
  """(..., 3) v scaled to unit length."""
  return v / norm(v)[..., None]


def matmul(v, m):
  """v @ m for row vectors (..., 3) and a matrix (3, 3) -> (..., 3)."""
  return v[..., 0:1] * m[0] + v[..., 1:2] * m[1] + v[..., 2:3] * m[2]
