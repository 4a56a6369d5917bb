"""Instance scorer of adaptive instance weighting (3D-R-DEP): projected features -> a score."""
import flax.linen as nn
import jax


class InstanceScorer(nn.Module):
  """features (B,D) -> scores (B,): Dense(hidden), ReLU, Dense(1).

  The last layer starts at zero, so every instance starts with the same score: the initial
  weights are uniform and the weighted loss starts as the plain batch mean.

  Attributes:
    hidden: width of the hidden layer.
  """
  hidden: int

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden)(features))
    return nn.Dense(1, kernel_init=nn.initializers.zeros, name='score')(h)[..., 0]
