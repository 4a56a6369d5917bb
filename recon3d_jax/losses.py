"""Losses: pure functions of arrays. Each term returns PER-INSTANCE values (B,), so that
instance weights (adaptive instance weighting) can multiply them before the batch reduction.

Depth and normal targets may have holes (missing pixels of a corrupted 2.5D label); validity
masks exclude them, and whatever the holes hold (even NaN) never reaches the loss or its gradient.
"""
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

# `occupancy` is the 3D loss of either decoder (query-point or voxel cross-entropy, `loss_terms`).
# Which terms an arm weights, and by how much, is recon3d_jax.arms.
TERMS = ('occupancy', 'normal', 'depth', 'silhouette')


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean of values (B,H,W) over valid (B,H,W) pixels -> (B,); 0 where none is valid."""
  valid = valid > 0
  total = jnp.sum(jnp.where(valid, values, 0.0), axis=(1, 2))
  return total / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)


def occupancy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean binary cross-entropy with logits over query points: (B,M), (B,M) in [0,1] -> (B,)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)


def voxel_loss(logits: jax.Array, voxels: jax.Array) -> jax.Array:
  """Mean binary cross-entropy with logits over voxels: (B,R,R,R), (B,R,R,R) in {0,1} -> (B,)."""
  bce = optax.sigmoid_binary_cross_entropy(logits, voxels.astype(logits.dtype))
  return jnp.mean(bce, axis=(1, 2, 3))


def depth_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean L1 over valid pixels: (B,H,W) x3 -> (B,); 0 for an instance with no valid pixel."""
  target = jnp.where(valid > 0, target, 0.0)  # Holes may hold NaN; keep values finite.
  return _masked_mean(jnp.abs(pred - target), valid)


def normal_loss(pred: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean (1 - cosine similarity) over valid pixels: (B,H,W,3), (B,H,W,3), (B,H,W) -> (B,)."""
  target = jnp.where(valid[..., None] > 0, target, 0.0)
  dot = jnp.sum(pred * target, axis=-1)
  norms = jnp.sum(pred * pred, axis=-1) * jnp.sum(target * target, axis=-1)
  cos = dot * jax.lax.rsqrt(jnp.maximum(norms, 1e-12))
  return _masked_mean(1.0 - cos, valid)


def silhouette_loss(mask_logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean binary cross-entropy with logits over all pixels: (B,H,W), (B,H,W) -> (B,)."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(mask_logits, mask), axis=(1, 2))


def loss_terms(outputs: Mapping[str, jax.Array],
               batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Every term of TERMS per instance, (B,) each; inputs as in `total_loss`.

  The 3D term `occupancy` is the voxel cross-entropy when the outputs hold voxel_logits (the
  voxel decoder), else the cross-entropy at the query points.
  """
  mask = batch['mask']
  if 'voxel_logits' in outputs:
    if 'voxels' not in batch:
      raise ValueError('the voxel decoder needs batch["voxels"] (B,R,R,R) targets; the batch has '
                       f'only {sorted(batch)}')
    three_d = voxel_loss(outputs['voxel_logits'], batch['voxels'])
  else:
    three_d = occupancy_loss(outputs['occ_logits'], batch['occ'])
  return dict(
      occupancy=three_d,
      normal=normal_loss(outputs['normal'], batch['normal'], batch.get('normal_valid', mask)),
      depth=depth_loss(outputs['depth'], batch['depth'], batch.get('depth_valid', mask)),
      silhouette=silhouette_loss(outputs['mask_logits'], mask),
  )


def total_loss(outputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
               weights: Mapping[str, float], instance_weights: jax.Array | None = None,
               weighted_terms: Sequence[str] = TERMS,
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of all loss terms.

  Args:
    outputs: model outputs: occ_logits (B,M), depth (B,H,W), normal (B,H,W,3), mask_logits (B,H,W);
      voxel_logits (B,R,R,R) for the voxel decoder.
    batch: targets: occ (B,M) labels, depth (B,H,W), normal (B,H,W,3), mask (B,H,W) in {0,1};
      optional depth_valid / normal_valid (B,H,W), defaulting to mask; voxels (B,R,R,R) for the
      voxel decoder.
    weights: one weight per term in TERMS (see `arms.loss_weights`).
    instance_weights: optional (B,) weights summing to 1; default: the plain batch mean.
      sum_i w_i L_i = mean_i (B w_i) L_i, so uniform weights give the plain mean.
    weighted_terms: the terms instance_weights multiply; the others are plain batch means.

  Returns:
    (scalar loss, stats): stats has 'loss/<term>' (batch mean, logged even when its weight is 0,
    so arms stay comparable) and 'loss/total'.
  """
  if set(weights) != set(TERMS):
    raise ValueError(
        f'loss weights must have exactly the keys {list(TERMS)}; got {sorted(weights)}')
  if not set(weighted_terms) <= set(TERMS):
    raise ValueError(f'weighted_terms must be among {list(TERMS)}; got {list(weighted_terms)}')
  terms = loss_terms(outputs, batch)
  if instance_weights is None:
    loss = jnp.mean(sum(weights[k] * terms[k] for k in TERMS))
  else:
    weighted = sum(weights[k] * terms[k] for k in TERMS if k in weighted_terms)
    plain = sum(weights[k] * terms[k] for k in TERMS if k not in weighted_terms)
    loss = jnp.sum(instance_weights * weighted) + jnp.mean(plain)
  stats = {f'loss/{k}': jnp.mean(v) for k, v in terms.items()}
  stats['loss/total'] = loss
  return loss, stats
