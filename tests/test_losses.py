"""Losses against independent numpy formulas; weighting and arm bookkeeping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recon3d_jax import losses

B, H, W, M = 3, 5, 6, 40


def np_bce(x, z):
  x, z = np.float64(x), np.float64(z)
  p = 1.0 / (1.0 + np.exp(-x))
  return -(z * np.log(p) + (1 - z) * np.log1p(-p))


def np_masked_mean(values, valid):
  return np.array([v[m > 0].mean() if (m > 0).any() else 0.0 for v, m in zip(values, valid)])


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  mask = (rng.uniform(size=(B, H, W)) > 0.4).astype(np.float32)
  mask[1] = 0.0  # An instance with no foreground pixel.
  outputs = dict(
      occ_logits=rng.normal(0, 3, (B, M)).astype(np.float32),
      depth=rng.uniform(1.5, 3.0, (B, H, W)).astype(np.float32),
      normal=rng.normal(size=(B, H, W, 3)).astype(np.float32),
      mask_logits=rng.normal(0, 2, (B, H, W)).astype(np.float32),
  )
  batch = dict(
      occ=(rng.uniform(size=(B, M)) > 0.5).astype(np.float32),
      depth=rng.uniform(1.5, 3.0, (B, H, W)).astype(np.float32),
      normal=rng.normal(size=(B, H, W, 3)).astype(np.float32),
      mask=mask,
  )
  return outputs, batch


def test_occupancy_loss_matches_numpy(data):
  outputs, batch = data
  got = losses.occupancy_loss(outputs['occ_logits'], batch['occ'])
  assert got.shape == (B,)
  np.testing.assert_allclose(got, np_bce(outputs['occ_logits'], batch['occ']).mean(-1), rtol=1e-5)


def test_bce_is_stable_for_large_logits():
  logits = jnp.array([[100.0, -100.0, 100.0, -100.0]])
  labels = jnp.array([[1.0, 0.0, 0.0, 1.0]])
  np.testing.assert_allclose(losses.occupancy_loss(logits, labels), [50.0], rtol=1e-6)
  grad = jax.grad(lambda x: losses.occupancy_loss(x, labels).sum())(logits)
  assert np.isfinite(grad).all()


def test_silhouette_loss_matches_numpy(data):
  outputs, batch = data
  got = losses.silhouette_loss(outputs['mask_logits'], batch['mask'])
  want = np_bce(outputs['mask_logits'], batch['mask']).mean((1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_depth_loss_matches_numpy(data):
  outputs, batch = data
  got = losses.depth_loss(outputs['depth'], batch['depth'], batch['mask'])
  want = np_masked_mean(np.abs(outputs['depth'] - batch['depth']), batch['mask'])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[1] == 0.0  # The instance without valid pixels.


def test_normal_loss_matches_numpy(data):
  outputs, batch = data
  p, t = np.float64(outputs['normal']), np.float64(batch['normal'])
  cos = (p * t).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(t, axis=-1)
  got = losses.normal_loss(outputs['normal'], batch['normal'], batch['mask'])
  np.testing.assert_allclose(got, np_masked_mean(1 - cos, batch['mask']), rtol=1e-5, atol=1e-6)
  assert got[1] == 0.0


def test_holes_never_reach_loss_or_gradient(data):
  outputs, batch = data
  valid = batch['mask'].copy()
  valid[0, 0, :] = 0.0
  depth = batch['depth'].copy()
  depth[0, 0, :] = np.nan
  normal = batch['normal'].copy()
  normal[0, 0, :] = np.nan

  def loss(pred_depth, pred_normal):
    return (losses.depth_loss(pred_depth, depth, valid).sum()
            + losses.normal_loss(pred_normal, normal, valid).sum())

  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(outputs['depth'], outputs['normal'])
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
  assert not grads[0][0, 0].any() and not grads[1][0, 0].any()


def _weights(occupancy=1.0, normal=1.0, depth=1.0, silhouette=0.1):
  return dict(occupancy=occupancy, normal=normal, depth=depth, silhouette=silhouette)


VANILLA = _weights(normal=0.0, depth=0.0, silhouette=0.0)


def test_total_loss_is_weighted_sum_of_terms(data):
  outputs, batch = data
  weights = _weights(normal=0.5, depth=2.0, silhouette=0.3)
  loss, stats = losses.total_loss(outputs, batch, weights)
  terms = dict(
      occupancy=losses.occupancy_loss(outputs['occ_logits'], batch['occ']),
      normal=losses.normal_loss(outputs['normal'], batch['normal'], batch['mask']),
      depth=losses.depth_loss(outputs['depth'], batch['depth'], batch['mask']),
      silhouette=losses.silhouette_loss(outputs['mask_logits'], batch['mask']),
  )
  per_instance = sum(weights[k] * np.asarray(v) for k, v in terms.items())
  np.testing.assert_allclose(loss, per_instance.mean(), rtol=1e-5)
  assert set(stats) == {'loss/occupancy', 'loss/normal', 'loss/depth', 'loss/silhouette',
                        'loss/total'}
  for k, v in terms.items():
    np.testing.assert_allclose(stats[f'loss/{k}'], np.mean(v), rtol=1e-5)

  instance_weights = np.array([0.7, 0.1, 0.2], np.float32)
  weighted, _ = losses.total_loss(outputs, batch, weights, instance_weights)
  np.testing.assert_allclose(weighted, (instance_weights * per_instance).sum(), rtol=1e-5)
  uniform, _ = losses.total_loss(outputs, batch, weights, np.full(B, 1 / B, np.float32))
  np.testing.assert_allclose(uniform, loss, rtol=1e-5)


def test_zero_weight_terms_are_logged_but_inert(data):
  outputs, batch = data
  grad_fn = jax.grad(losses.total_loss, has_aux=True)
  grads, stats = grad_fn(outputs, batch, VANILLA)
  for k in ('depth', 'normal', 'mask_logits'):
    assert not np.asarray(grads[k]).any(), k
  assert stats['loss/depth'] > 0 and stats['loss/normal'] > 0
  # Changing the 2.5D predictions leaves the vanilla loss unchanged.
  other = dict(outputs, depth=outputs['depth'] + 1.0, mask_logits=-outputs['mask_logits'])
  np.testing.assert_array_equal(losses.total_loss(other, batch, VANILLA)[0],
                                losses.total_loss(outputs, batch, VANILLA)[0])
  grads, _ = grad_fn(outputs, batch, _weights())
  assert all(np.asarray(grads[k]).any() for k in ('depth', 'normal', 'mask_logits'))


def test_validity_masks_default_to_mask(data):
  outputs, batch = data
  weights = _weights()
  explicit = dict(batch, depth_valid=batch['mask'], normal_valid=batch['mask'])
  np.testing.assert_array_equal(losses.total_loss(outputs, explicit, weights)[0],
                                losses.total_loss(outputs, batch, weights)[0])
  holes = dict(batch, depth_valid=np.zeros_like(batch['mask']))
  assert losses.total_loss(outputs, holes, weights)[1]['loss/depth'] == 0.0


def test_weights_must_name_every_term(data):
  outputs, batch = data
  with pytest.raises(ValueError, match='exactly the keys'):
    losses.total_loss(outputs, batch, dict(occupancy=1.0, normals=1.0))


def test_voxel_loss_replaces_the_point_loss_for_the_voxel_decoder(data):
  outputs, batch = data
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (B, 4, 4, 4)).astype(np.float32)
  voxels = (rng.uniform(size=(B, 4, 4, 4)) > 0.5).astype(np.uint8)
  want = np_bce(logits, voxels).mean((1, 2, 3))
  np.testing.assert_allclose(losses.voxel_loss(logits, voxels), want, rtol=1e-5)
  terms = losses.loss_terms(dict(outputs, voxel_logits=logits), dict(batch, voxels=voxels))
  np.testing.assert_allclose(terms['occupancy'], want, rtol=1e-5)
  with pytest.raises(ValueError, match=r'voxel decoder needs batch\["voxels"\]'):
    losses.loss_terms(dict(outputs, voxel_logits=logits), batch)


def test_instance_weights_multiply_only_the_weighted_terms(data):
  outputs, batch = data
  weights = _weights(normal=0.5, depth=2.0, silhouette=0.3)
  terms = {k: np.asarray(v, np.float64) for k, v in losses.loss_terms(outputs, batch).items()}
  w = np.array([0.6, 0.3, 0.1], np.float32)
  got, _ = losses.total_loss(outputs, batch, weights, w, weighted_terms=('normal', 'depth'))
  weighted = weights['normal'] * terms['normal'] + weights['depth'] * terms['depth']
  plain = weights['occupancy'] * terms['occupancy'] + weights['silhouette'] * terms['silhouette']
  np.testing.assert_allclose(got, (w * weighted).sum() + plain.mean(), rtol=1e-5)
  # B * w_i multiplies the per-instance loss: uniform weights give the plain mean.
  uniform, _ = losses.total_loss(outputs, batch, weights, np.full(B, 1 / B, np.float32),
                                 weighted_terms=('normal',))
  np.testing.assert_allclose(uniform, losses.total_loss(outputs, batch, weights)[0], rtol=1e-5)
  with pytest.raises(ValueError, match="weighted_terms must be among"):
    losses.total_loss(outputs, batch, weights, w, weighted_terms=('normals',))

