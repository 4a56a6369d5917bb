"""Model shapes, purity, the encode/decode split, the registry, and a tiny overfitting run."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import interpolate, ndimage

from recon3d_jax import arms, losses
from recon3d_jax import models
from recon3d_jax.data import synth
from recon3d_jax.geometry import camera
from recon3d_jax.models import occupancy, pixel_aligned, voxel
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
  weights = arms.loss_weights('both')

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


@pytest.mark.parametrize('variant', [dict(), dict(decoder='voxel', voxel_resolution=8),
                                     dict(pixel_aligned=True)])
def test_encode_then_decode_matches_call(variant):
  model = models.ReconModel(**TINY, **variant)
  images, points = make_inputs()
  out, variables = jax.jit(model.init_with_output)(KEY, images, points)
  latent = jax.jit(lambda v, x: model.apply(v, x, method=models.ReconModel.encode))(variables,
                                                                                      images)
  logits = model.apply(variables, latent, points, method=models.ReconModel.decode_occupancy)
  np.testing.assert_allclose(latent['code'], out['code'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, out['occ_logits'], rtol=1e-5, atol=1e-5)


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


def test_voxel_decoder_grid_and_interpolated_occupancy():
  model = models.ReconModel(**TINY, decoder='voxel', voxel_resolution=16)
  images, points = make_inputs()
  out, variables = jax.jit(model.init_with_output)(KEY, images, points)
  assert out['voxel_logits'].shape == (B, 16, 16, 16) and out['occ_logits'].shape == (B, M)
  want = _scipy_trilinear(np.asarray(jax.nn.sigmoid(out['voxel_logits'])), np.asarray(points))
  np.testing.assert_allclose(jax.nn.sigmoid(out['occ_logits']), want, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='voxel resolution 24: expected 4 times a power of 2'):
    jax.eval_shape(models.ReconModel(**TINY, decoder='voxel', voxel_resolution=24).init, KEY,
                   images, points)
  with pytest.raises(ValueError, match="unknown decoder 'mesh'"):
    jax.eval_shape(models.ReconModel(**TINY, decoder='mesh').init, KEY, images, points)


def _scipy_trilinear(probs, points):
  """Reference: scipy's RegularGridInterpolator over the dataset's voxel centres, with one layer
  of zeros around the unit cube and 0 beyond it."""
  r = probs.shape[-1]
  centres = (np.arange(-1, r + 1) + 0.5) / r - 0.5
  out = []
  for p, x in zip(probs, points):
    padded = np.pad(p, 1)
    f = interpolate.RegularGridInterpolator((centres,) * 3, padded, bounds_error=False,
                                            fill_value=0.0)
    out.append(f(x))
  return np.stack(out)


def test_trilinear_interpolation_matches_scipy():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(2, 8, 8, 8)).astype(np.float32)
  points = rng.uniform(-0.55, 0.55, (2, 500, 3)).astype(np.float32)
  # Exactly at voxel centres, on the unit cube's faces and outside the padding layer too.
  centres = (np.array([[0, 0, 0], [7, 3, 5], [2, 7, 1]]) + 0.5) / 8 - 0.5
  points[:, :3] = centres
  points[:, 3:5] = [[0.5, 0.1, -0.5], [0.6, 0.0, 0.0]]
  got = voxel.interpolate_probabilities(jnp.asarray(probs), jnp.asarray(points))
  np.testing.assert_allclose(got, _scipy_trilinear(probs, points), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[:, :3], probs[:, [0, 7, 2], [0, 3, 7], [0, 5, 1]], rtol=1e-6)
  assert np.all(np.asarray(got[:, 4]) == 0.0)  # Beyond the padding layer.
  np.testing.assert_allclose(jax.nn.sigmoid(voxel.probabilities_to_logits(got)), got, atol=2e-6)


def test_projection_inverts_the_dataset_camera():
  """Points along the viewer camera's ray through pixel (i, j) project to that pixel's centre."""
  size = 8
  origins, directions = camera.camera_rays(synth.viewer_camera(), size)
  for t in (1.7, 2.5):
    coords = pixel_aligned.project(origins + t * directions)
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    np.testing.assert_allclose(coords[..., 0], np.broadcast_to(centres, (size, size)), atol=1e-5)
    np.testing.assert_allclose(coords[..., 1], np.broadcast_to(centres[:, None], (size, size)),
                               atol=1e-5)
  assert pixel_aligned.CAMERA_DISTANCE == synth.CAMERA_DISTANCE
  assert pixel_aligned.FOV_DEG == synth.FOV_DEG


def test_bilinear_sampling_matches_scipy():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
  coords = rng.uniform(-1.2, 1.2, (2, 50, 2)).astype(np.float32)
  got = pixel_aligned.bilinear_sample(jnp.asarray(features), jnp.asarray(coords))
  for b in range(2):
    rows = (coords[b, :, 1] + 1) / 2 * 4 - 0.5
    cols = (coords[b, :, 0] + 1) / 2 * 6 - 0.5
    for c in range(3):
      want = ndimage.map_coordinates(features[b, ..., c], [rows, cols], order=1, mode='nearest')
      np.testing.assert_allclose(got[b, :, c], want, rtol=1e-5, atol=1e-5)


def test_pixel_aligned_decoder_reads_the_feature_under_each_point():
  """A point's logit depends on the pixel-aligned feature map only at the cells around the
  pixel it projects to: changing a far cell leaves it unchanged, changing the cell under it
  does not (the global code is held fixed)."""
  model = models.ReconModel(**TINY, pixel_aligned=True)
  images, points = make_inputs()
  variables = jax.jit(model.init)(KEY, images, points)
  assert variables['params']['occupancy']['embed']['kernel'].shape == (3 + TINY['head_width'], 16)
  latent = model.apply(variables, images, method=models.ReconModel.encode)
  h, w = latent['features'].shape[1:3]
  col, row = (np.asarray(pixel_aligned.project(points[0, 0])) + 1) / 2 * np.array([w, h]) - 0.5
  near = (int(np.clip(round(float(row)), 0, h - 1)), int(np.clip(round(float(col)), 0, w - 1)))
  far = ((near[0] + h // 2) % h, (near[1] + w // 2) % w)

  def logit(cell):
    features = latent['features'].at[0, cell[0], cell[1]].add(10.0)
    return model.apply(variables, dict(latent, features=features), points,
                       method=models.ReconModel.decode_occupancy)[0, 0]

  base = model.apply(variables, latent, points, method=models.ReconModel.decode_occupancy)[0, 0]
  assert float(logit(far)) == pytest.approx(float(base), abs=1e-6)
  assert abs(float(logit(near)) - float(base)) > 1e-4


def test_oracle_input_images():
  """The oracle reads the clean ground-truth maps, never the corrupted training targets."""
  images, _ = make_inputs()
  mask = np.zeros((B, S, S), np.float32)
  mask[:, 4:10, 4:10] = 1
  depth_clean = np.where(mask > 0, 2.0, 0.0).astype(np.float32)
  depth = depth_clean.copy()
  depth[:, 4, 4] = np.nan  # A hole of the corrupted target: never reaches the input.
  normal = np.zeros((B, S, S, 3), np.float32)
  normal[..., 2] = -mask
  batch = dict(image=images, mask=mask, depth=depth, depth_clean=depth_clean,
               normal=normal + 0.3, normal_clean=normal)
  np.testing.assert_array_equal(models.input_images(batch, False), images)
  got = np.asarray(models.input_images(batch, True))
  assert got.shape == (B, S, S, 7)
  np.testing.assert_array_equal(got[..., :3], images)
  want_depth = np.where(mask > 0, 2.0 - 2.2, 0.0)
  np.testing.assert_allclose(got[..., 3], want_depth, rtol=1e-6)
  np.testing.assert_array_equal(got[..., 4:], normal)
  # An evaluation record has only the (clean) depth / normal.
  record = dict(image=images, mask=mask, depth=depth_clean, normal=normal)
  np.testing.assert_array_equal(np.asarray(models.input_images(record, True)), got)


def test_fourier_features_are_the_stated_sinusoids():
  """Octave k of coordinate j is sin / cos(2^k pi p_j), after the raw coordinates."""
  points = np.array([[0.1, -0.25, 0.5], [0.0, 0.3, -0.55]], np.float32)
  got = np.asarray(occupancy.fourier_features(jnp.asarray(points), 3))
  assert got.shape == (2, 3 + 6 * 3)
  np.testing.assert_allclose(got[:, :3], points)
  for k in range(3):
    for j in range(3):
      angle = 2.0**k * np.pi * points[:, j]
      np.testing.assert_allclose(got[:, 3 + 3 * k + j], np.sin(angle), atol=1e-5)
      np.testing.assert_allclose(got[:, 3 + 9 + 3 * k + j], np.cos(angle), atol=1e-5)
  np.testing.assert_array_equal(occupancy.fourier_features(jnp.asarray(points), 0), points)
