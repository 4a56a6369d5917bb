"""Every encoder x every 3D decoder: build, initialise and run real train steps on tiny inputs.

18 compilations: tiny widths, 32 px, batch 2, unoptimised XLA (this checks shapes, values and
tracing, not speed), and shallow variants of the transformer encoders: every registered name with
its own module, head count and patch size, but fewer blocks (SHALLOW). The full-depth
architectures are traced in test_encoders.py.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recon3d_jax import arms, experiment, models

B, S, M, R = 2, 32, 16, 8
TINY = dict(encoder_width=8, code_dim=16, head_width=8, decoder_hidden=16, decoder_blocks=2,
            voxel_resolution=R)
KEY = jax.random.key(0, impl='rbg')  # Compiles faster than threefry on CPU; only seeds init.
# The fewest transformer blocks each family allows (ViT reads 4 taps, the hybrid 2) and one
# block per stem stage; the ResNets keep their registered depth.
SHALLOW = dict(vit_ti=dict(depth=4), vit_s=dict(depth=4), vit_b=dict(depth=4),
               hybrid_s=dict(depth=2), hybrid_m=dict(stage_sizes=(1, 1, 1), depth=2),
               hybrid_l=dict(stage_sizes=(1, 1, 1), depth=2))
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)
# 18 compilations: slow (run by `make test`, skipped by `make test-fast`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(0)
  points = rng.uniform(-0.55, 0.55, (B, M, 3)).astype(np.float32)
  mask = np.zeros((B, S, S), np.float32)
  mask[:, 8:24, 8:24] = 1
  normal = np.zeros((B, S, S, 3), np.float32)
  normal[..., 2] = -mask
  centres = (np.arange(R) + 0.5) / R - 0.5
  grid = np.stack(np.meshgrid(centres, centres, centres, indexing='ij'), -1)
  return dict(
      image=rng.uniform(size=(B, S, S, 3)).astype(np.float32), mask=mask,
      depth=np.where(mask > 0, 2.0, 0.0).astype(np.float32), normal=normal,
      points=points, occ=(np.linalg.norm(points, axis=-1) < 0.3).astype(np.float32),
      voxels=np.broadcast_to(np.linalg.norm(grid, axis=-1) < 0.3, (B, R, R, R)).astype(np.uint8),
      level=np.zeros(B, np.int32))


@pytest.mark.parametrize('encoder, decoder', itertools.product(sorted(models.ENCODERS),
                                                               models.DECODERS))
def test_train_step(encoder, decoder, batch):
  shallow = tuple(SHALLOW.get(encoder, {}).items())
  model = models.ReconModel(encoder=encoder, decoder=decoder, encoder_kwargs=shallow, **TINY)
  # Eagerly, op by op: no whole-init compilation (the ops' executables are shared by all cases).
  out, variables = model.init_with_output(KEY, batch['image'], batch['points'])
  params = variables['params']
  shapes = dict(depth=(B, S, S), normal=(B, S, S, 3), mask_logits=(B, S, S), occ_logits=(B, M),
                code=(B, TINY['code_dim']))
  if decoder == 'voxel':
    shapes['voxel_logits'] = (B, R, R, R)
  assert {k: v.shape for k, v in out.items()} == shapes

  assert all(np.isfinite(v).all() for v in out.values())
  tx = optax.adam(1e-3)
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  step_fn = experiment.make_train_step(model, tx, arms.loss_weights('both'))
  traces = []

  def counted(state, batch):
    traces.append(1)
    return step_fn(state, batch)

  step = jax.jit(counted, compiler_options=FAST_COMPILE)
  losses_seen = []
  for _ in range(2):
    state, stats = step(state, batch)
    losses_seen.append(float(stats['loss/total']))
    assert np.isfinite(stats['grad_norm']) and stats['grad_norm'] > 0
  assert len(traces) == 1  # The second step reuses the compiled step.
  assert np.isfinite(losses_seen).all() and losses_seen[1] != losses_seen[0]
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params,
                       jax.device_get(state['params']))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state['params'])))
  assert all(jax.tree.leaves(moved)), [jax.tree_util.keystr(p) for p, m in
                                       jax.tree_util.tree_leaves_with_path(moved) if not m]
