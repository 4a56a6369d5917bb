"""The nine registered encoders: shapes through ReconModel, a real gradient step for the smallest
transformer and hybrid, size ordering within each family, and the registry's error message."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recon3d_jax import arms, losses
from recon3d_jax import models

FAMILIES = dict(cnn=('resnet10', 'resnet18', 'resnet34'), vit=('vit_ti', 'vit_s', 'vit_b'),
                hybrid=('hybrid_s', 'hybrid_m', 'hybrid_l'))  # Each smallest to largest.
NAMES = sum(FAMILIES.values(), ())
B, S, M, WIDTH, CODE = 2, 32, 16, 8, 16
TINY = dict(encoder_width=WIDTH, code_dim=CODE, head_width=8, decoder_hidden=16,
            decoder_blocks=2)
KEY = jax.random.key(0, impl='rbg')  # Compiles faster than threefry on CPU; only seeds init.
# The gradient check is about values, not speed: unoptimised XLA about halves its compile time.
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def make_inputs():
  k1, k2 = jax.random.split(jax.random.key(0))
  return (jax.random.uniform(k1, (B, S, S, 3)),
          jax.random.uniform(k2, (B, M, 3), minval=-0.55, maxval=0.55))


def num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_nine_encoders_are_registered():
  assert sorted(models.ENCODERS) == sorted(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_shapes(name):
  """eval_shape only: traces init and apply, compiles nothing."""
  images, points = make_inputs()
  encoder = models.get_encoder(name, width=WIDTH, code_dim=CODE)
  (code, features), _ = jax.eval_shape(encoder.init_with_output, KEY, images)
  assert code.shape == (B, CODE)
  assert [f.shape[:3] for f in features] == [(B, S // 2**i, S // 2**i) for i in range(1, 5)]

  model = models.ReconModel(encoder=name, **TINY)
  out, variables = jax.eval_shape(model.init_with_output, KEY, images, points)
  assert set(variables) == {'params'}  # Stateless: apply is a function of (params, inputs).
  assert {k: v.shape for k, v in out.items()} == dict(
      depth=(B, S, S), normal=(B, S, S, 3), mask_logits=(B, S, S), occ_logits=(B, M),
      code=(B, CODE))


@pytest.mark.parametrize('name', ['vit_ti', 'hybrid_s'])
def test_gradients_are_finite_and_reach_every_parameter(name):
  model = models.ReconModel(encoder=name, **TINY)
  images, points = make_inputs()
  batch = dict(occ=(jnp.linalg.norm(points, axis=-1) < 0.3).astype(jnp.float32),
               depth=jnp.full((B, S, S), 2.0), normal=jnp.zeros((B, S, S, 3)).at[..., 2].set(1.0),
               mask=(images[..., 0] > 0.5).astype(jnp.float32))

  def loss_fn(params):
    outputs = model.apply({'params': params}, images, points)
    return losses.total_loss(outputs, batch, arms.loss_weights('both'))[0]

  def init_and_grad():  # One compilation for init and the gradient.
    return jax.value_and_grad(loss_fn)(model.init(KEY, images, points)['params'])

  loss, grads = jax.jit(init_and_grad).lower().compile(compiler_options=FAST_COMPILE)()
  assert np.isfinite(loss)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.isfinite(g).all() and np.abs(g).sum() > 0, jax.tree_util.keystr(path)


def test_sizes_grow_within_each_family():
  """At the default config (width 32, code 128, 64 px)."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  for family, names in FAMILIES.items():
    counts = [num_params(jax.eval_shape(models.get_encoder(n, width=32, code_dim=128).init, KEY,
                                        images)) for n in names]
    assert counts == sorted(set(counts)), (family, dict(zip(names, counts)))


def test_unknown_encoder_lists_all_names():
  with pytest.raises(ValueError, match="unknown encoder 'vit_xl'") as error:
    models.get_encoder('vit_xl', width=8, code_dim=4)
  assert set(re.findall(r"'(\w+)'", str(error.value))) == set(NAMES) | {'vit_xl'}
