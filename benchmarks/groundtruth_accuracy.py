"""Accuracy of the SDF domains' numerical ground truth, against dense references.

    python benchmarks/groundtruth_accuracy.py [--domains=compounds,organic] [--num_shapes=128]

Per domain, for `num_shapes` shapes normalised as groundtruth.normalize does (the box from
4096 surface samples, csg.aabb), prints one JSON object with
  * the bounding box: each face's gap to the extreme, along its axis, of 60,000 surface samples
    that lie on the surface (|sdf| < 1e-4), relative to the box's longest side (positive: the
    samples reach beyond the box, i.e. the box is too small there); its maximum, 99th
    percentile, and the number of shapes with a gap above 1/500;
  * those 4096 surface samples (as the datasets use), in unit-cube units: the fraction with
    |sdf| > 1e-4 and with |sdf| / |grad sdf| > 1e-3, and the largest |sdf|;
  * the sampler's supply: shell candidates per sample in its gradient pool
    (groundtruth.bound_shell_pool), the smallest over the shapes (below 1: samples that are not
    area-uniform).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from recon3d_jax.data import synth
from recon3d_jax.geometry import csg, groundtruth

_DOMAINS = flags.DEFINE_list("domains", ["compounds", "organic"], "SDF domains.")
_NUM_SHAPES = flags.DEFINE_integer("num_shapes", 128, "Shapes per domain.")

_REFERENCE_POINTS = 60_000
_ON_SURFACE = 1e-4


def _reference_extent(c, key):
  points, _ = groundtruth.surface_points(c, key, _REFERENCE_POINTS)
  on = (jnp.abs(csg.csg_sdf(c, points)) < _ON_SURFACE)[:, None]
  return (jnp.min(jnp.where(on, points, jnp.inf), 0),
          jnp.max(jnp.where(on, points, -jnp.inf), 0))


def _measure_one(c, key):
  """As groundtruth.normalize: the shape normalised by its conservative box, its 4096 surface
  samples and the box found from them; then the references. Distances are divided by the
  box's longest side, i.e. in the units of the final unit-cube shape."""
  sample_key, reference_key = jax.random.split(key)
  c = csg.normalize(c, csg.bounding_box(c))
  points, _ = groundtruth.surface_points(c, sample_key, 4096)
  lo, hi = csg.aabb(c, points)
  ref_lo, ref_hi = _reference_extent(c, reference_key)
  size = jnp.max(hi - lo)
  value, grad = csg.csg_sdf_and_grad(c, points)
  value = jnp.abs(value) / size
  gap = jnp.concatenate([lo - ref_lo, ref_hi - hi]) / size
  *_, shell = groundtruth.bound_shell_pool(c, sample_key, 4096)
  return (gap, value, value / jnp.maximum(jnp.linalg.norm(grad, axis=-1), 1e-6),
          jnp.sum(shell) / 4096)


def measure(domain: str, num_shapes: int) -> dict:
  keys = jax.random.split(jax.random.PRNGKey(5), num_shapes)
  shapes = jax.jit(jax.vmap(lambda k: synth.DOMAINS[domain].sample(k, None)))(keys)
  gap, value, distance, supply = map(np.asarray,
                                     jax.jit(jax.vmap(_measure_one))(shapes, keys))
  return dict(benchmark="groundtruth_accuracy", domain=domain, num_shapes=num_shapes,
              aabb_gap_max=float(gap.max()), aabb_gap_p99=float(np.percentile(gap, 99)),
              aabb_shapes_gap_over_1_500=int((gap.max(-1) > 1 / 500).sum()),
              surface_frac_sdf_over_1e4=float((value > 1e-4).mean()),
              surface_frac_distance_over_1e3=float((distance > 1e-3).mean()),
              surface_max_sdf=float(value.max()),
              shell_candidates_per_point_min=float(supply.min()))


def main(argv):
  del argv
  for domain in _DOMAINS.value:
    print(json.dumps(measure(domain, _NUM_SHAPES.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
