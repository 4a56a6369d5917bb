"""Adaptive instance weighting (3D-R-DEP): the pure math.

A learned scorer gives each instance a score s_i; its weight is w = softmax(s / tau) over the
GLOBAL batch (B instances, all devices). Computed on the globally-shaped array inside the jitted
train step, the softmax's reductions span every device (jit inserts the collectives), so one
device and eight give the same weights.

The weighted objective is sum_i w_i L_i = mean_i (B w_i) L_i: uniform weights (w_i = 1/B)
reproduce the plain batch mean. Minimising it over w alone puts all weight on the easiest
instance; lambda * KL(w || uniform) counters that, and the minimiser over w of
sum_i w_i L_i + lambda KL(w || uniform) is w_i proportional to exp(-L_i / lambda): lambda sets how
sharply weight moves away from high-loss (e.g. badly labelled) instances.
"""
import jax
import jax.numpy as jnp


def softmax_weights(scores: jax.Array, temperature: float) -> jax.Array:
  """scores (B,) -> weights (B,) = softmax(scores / temperature), summing to 1."""
  return jax.nn.softmax(scores / temperature)


def entropy(weights: jax.Array) -> jax.Array:
  """Shannon entropy (nats) of weights (B,) summing to 1; 0 log 0 = 0. log B at uniform."""
  return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(jnp.where(weights > 0, weights, 1.0)),
                            0.0))


def kl_to_uniform(weights: jax.Array) -> jax.Array:
  """KL(w || uniform) = log B - entropy(w) for weights (B,): 0 at uniform, > 0 otherwise."""
  return jnp.log(weights.shape[0]) - entropy(weights)


def pearson(x: jax.Array, y: jax.Array) -> jax.Array:
  """Pearson correlation of x (B,) and y (B,); 0 (no measurable linear association) when either
  is constant, e.g. a batch whose supervision levels are all equal or all clean."""
  x = x - jnp.mean(x)
  y = y - jnp.mean(y)
  variances = jnp.sum(x * x) * jnp.sum(y * y)
  defined = variances > 0
  # The inner where keeps the value and the gradient finite where it is not defined.
  return jnp.where(defined, jnp.sum(x * y) * jax.lax.rsqrt(jnp.where(defined, variances, 1.0)),
                   0.0)


def scaled_weight_by_level(weights: jax.Array, levels: jax.Array, num_levels: int) -> jax.Array:
  """Mean of B * w_i over the instances of each level 0..num_levels-1 -> (num_levels,); 1 means
  the uniform weight, NaN for a level absent from the batch."""
  scaled = weights * weights.shape[0]
  onehot = levels[:, None] == jnp.arange(num_levels)
  counts = jnp.sum(onehot, axis=0)
  sums = jnp.sum(jnp.where(onehot, scaled[:, None], 0.0), axis=0)
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), jnp.nan)


def weight_stats(weights: jax.Array, levels: jax.Array,
                 level_names: tuple[str, ...] = ()) -> dict[str, jax.Array]:
  """Scalars to log: entropy, max weight, the correlation of weights (B,) with the instances'
  supervision levels (B,) int (-1 = clean, 0 = minimal ... 4 = extreme), and the mean scaled
  weight B * w of each named level (`scaled_weight_by_level`)."""
  stats = {"weights/entropy": entropy(weights), "weights/max": jnp.max(weights),
           "weights/corr_level": pearson(weights, levels.astype(weights.dtype))}
  by_level = scaled_weight_by_level(weights, levels, len(level_names))
  stats.update({f"weights/scaled_{name}": by_level[i] for i, name in enumerate(level_names)})
  return stats
