"""Model shapes, purity, the encode/decode split, the registry, and a tiny overfitting run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recon3d_jax import losses
from recon3d_jax import models
from recon3d_jax.models.resnet import ResNetEncoder

B, S, M = 2, 16, 32
TINY = dict(encoder='resnet10', encoder_width=8, code_dim=16, head_width=8, decoder_hidden=16,
            decoder_blocks=2)
# The 'rbg' PRNG compiles several times faster than threefry on CPU; it only seeds the init here.
KEY = jax.random.key(0, impl='rbg')


def make_inputs(channels=3, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  images = jax.random.uniform(k1, (B, S, S, channels))
  points = jax.random.uniform(k2, (B, M, 3), minval=-0.55, maxval=0.55)
  return images, points


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, outputs, images, points) of a tiny ResNet-10 model."""
  model = models.ReconModel(**TINY)
  images, points = make_inputs()
  outputs, variables = jax.jit(model.init_with_output)(KEY, images, points)
  return model, variables, outputs, images, points


@pytest.fixture(scope='module')
def training(tiny):
  """300 Adam steps on one fixed batch: (per-step occupancy loss, per-step |grad| sums)."""
  model, variables, _, images, points = tiny
  radius = jnp.array([[0.2], [0.4]])  # A different "shape" per image.
  batch = dict(occ=(jnp.linalg.norm(points, axis=-1) < radius).astype(jnp.float32),
               depth=jnp.full((B, S, S), 2.0), normal=jnp.zeros((B, S, S, 3)).at[..., 2].set(1.0),
               mask=(images[..., 0] > 0.5).astype(jnp.float32))
  tx = optax.adam(3e-3)
  weights = losses.arm_weights('both')

  def loss_fn(params):
    return losses.total_loss(model.apply({'params': params}, images, points), batch, weights)

  def step(state, _):
    params, opt_state = state
    grads, stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    grad_sums = jax.tree.map(lambda g: jnp.abs(g).sum(), grads)
    return (optax.apply_updates(params, updates), opt_state), (stats['loss/occupancy'], grad_sums)

  @jax.jit
  def train(params):
    return jax.lax.scan(step, (params, tx.init(params)), length=300)[1]

  return train(variables['params'])


def test_output_shapes_and_dtypes(tiny):
  model, _, out, *_ = tiny
  shapes = dict(depth=(B, S, S), normal=(B, S, S, 3), mask_logits=(B, S, S), occ_logits=(B, M),
                code=(B, 16))
  assert {k: v.shape for k, v in out.items()} == shapes
  assert all(v.dtype == jnp.float32 and np.isfinite(v).all() for v in out.values())
  np.testing.assert_allclose(np.linalg.norm(out['normal'], axis=-1), 1.0, atol=1e-5)
  # The depth head starts at the camera distance.
  np.testing.assert_allclose(out['depth'], model.depth_offset)


def test_model_is_stateless(tiny):
  _, variables, *_ = tiny
  assert set(variables) == {'params'}  # No batch statistics: train and eval are identical.


def test_encode_then_decode_matches_call(tiny):
  model, variables, out, images, points = tiny
  code = jax.jit(lambda v, x: model.apply(v, x, method=models.ReconModel.encode))(variables, images)
  logits = model.apply(variables, code, points, method=models.ReconModel.decode_occupancy)
  np.testing.assert_allclose(code, out['code'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, out['occ_logits'], rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_and_reach_every_parameter(training):
  _, grad_sums = training
  for path, g in jax.tree_util.tree_leaves_with_path(grad_sums):
    assert np.isfinite(g).all(), path
    assert g[0] > 0, path  # Already at the first step.


def test_overfits_a_tiny_batch(training):
  occupancy, _ = training
  assert occupancy[-1] < occupancy[0] / 5, (occupancy[0], occupancy[-1])


def test_resnet18_feature_pyramid():
  encoder = models.get_encoder('resnet18', width=8, code_dim=16)
  images, _ = make_inputs()
  (code, features), _ = jax.eval_shape(encoder.init_with_output, KEY, images)
  assert code.shape == (B, 16) and code.dtype == jnp.float32
  assert [f.shape for f in features] == [(B, 8, 8, 8), (B, 4, 4, 16), (B, 2, 2, 32),
                                         (B, 1, 1, 64)]


def test_seven_channel_input():
  model = models.ReconModel(**TINY)
  out, variables = jax.eval_shape(model.init_with_output, KEY, *make_inputs(channels=7))
  assert variables['params']['backbone']['ResNetStages_0']['stem']['kernel'].shape == (3, 3, 7, 8)
  assert out['depth'].shape == (B, S, S) and out['occ_logits'].shape == (B, M)


def test_registry():
  encoder = models.get_encoder('resnet34', width=8, code_dim=4)
  assert isinstance(encoder, ResNetEncoder) and encoder.stage_sizes == (3, 4, 6, 3)
  with pytest.raises(ValueError, match=r"unknown encoder 'resnet50'.*'resnet10', 'resnet18'"):
    models.get_encoder('resnet50', width=8, code_dim=4)
  model = models.ReconModel(**dict(TINY, encoder='vit_q'))
  with pytest.raises(ValueError, match="unknown encoder 'vit_q'"):
    jax.eval_shape(model.init, KEY, *make_inputs())


def test_rejects_bad_shapes(tiny):
  model, variables, _, images, points = tiny
  with pytest.raises(ValueError, match='expected images'):
    model.apply(variables, images[0], points)
