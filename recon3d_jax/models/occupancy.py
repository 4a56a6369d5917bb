"""Occupancy Networks-style implicit decoder: (query points, global code) -> occupancy logits."""
import flax.linen as nn
import jax
import jax.numpy as jnp


def _per_point(dense: nn.Dense, x: jax.Array) -> jax.Array:
  """dense applied to (B,M,F) as one (B*M,F) matrix product -> (B,M,D).

  The same result as dense(x), but XLA on CPU runs the backward pass of a dot with two batch-like
  contracting dimensions (B and M, for the kernel's gradient) slower than the 2-D one
  (benchmarks/torch_peer.py; figures in benchmarks/RESULTS.md).
  """
  return dense(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], dense.features)


class FiLMBlock(nn.Module):
  """Residual FC block, modulated by the code: h (B,M,D), code (B,C) -> (B,M,D)."""
  hidden: int

  @nn.compact
  def __call__(self, h: jax.Array, code: jax.Array) -> jax.Array:
    scale, shift = jnp.split(nn.Dense(2 * self.hidden, name='film')(code)[:, None], 2, -1)
    y = _per_point(nn.Dense(self.hidden), nn.relu(h))
    # 1 + scale: a zero modulation is the identity, so the code's effect starts small.
    y = y * (1 + scale) + shift
    y = _per_point(nn.Dense(self.hidden), nn.relu(y))
    return h + y


def fourier_features(points: jax.Array, num_frequencies: int) -> jax.Array:
  """points (...,3) -> (..., 3 + 6 L): the points, then sin and cos of 2^k pi p for k < L.

  An MLP of raw coordinates learns sharp occupancy boundaries slowly (spectral bias); sinusoids
  of increasing frequency let it place them early in training (NeRF, Tancik et al. 2020).
  """
  if not num_frequencies:
    return points
  scaled = points[..., None, :] * (jnp.pi * 2.0 ** jnp.arange(num_frequencies))[:, None]
  scaled = scaled.reshape(*points.shape[:-1], -1)
  return jnp.concatenate([points, jnp.sin(scaled), jnp.cos(scaled)], axis=-1)


class OccupancyDecoder(nn.Module):
  """Points embedded by a Dense layer, `num_blocks` FiLM residual blocks, Dense to one logit.

  Optional per-point local features (e.g. pixel-aligned image features) are concatenated to the
  (optionally Fourier-encoded) point coordinates before the embedding.

  Attributes:
    hidden: width of every layer.
    num_blocks: number of code-conditioned residual blocks.
    frequencies: octaves of `fourier_features` of the points (0: raw coordinates).
  """
  hidden: int
  num_blocks: int
  frequencies: int = 0

  @nn.compact
  def __call__(self, points: jax.Array, code: jax.Array,
               local: jax.Array | None = None) -> jax.Array:
    """points (B,M,3) in the viewer-centred object frame, code (B,C), optional local features
    (B,M,F) -> logits (B,M)."""
    inputs = fourier_features(points, self.frequencies)
    inputs = inputs if local is None else jnp.concatenate([inputs, local], axis=-1)
    h = _per_point(nn.Dense(self.hidden, name='embed'), inputs)
    for _ in range(self.num_blocks):
      h = FiLMBlock(self.hidden)(h, code)
    return _per_point(nn.Dense(1, name='out'), nn.relu(h))[..., 0]
