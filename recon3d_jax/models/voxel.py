"""Voxel decoder: global code -> 3D transposed convolutions -> occupancy logits on a voxel grid,
and trilinear interpolation of its probabilities at arbitrary query points.

Grid convention (the dataset's voxels, geometry.groundtruth.voxelize): voxel [i, j, k] is centred
at ((i, j, k) + 0.5) / R - 0.5, covering the unit cube [-0.5, 0.5]^3 and indexed [x, y, z].
Objects are normalised into the unit cube, so the part of the 1.1 box outside it is empty: the
interpolation treats the grid as surrounded by one layer of empty (probability 0) voxels, which
lets every metric evaluate the voxel decoder at the same query points as the implicit one.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from recon3d_jax.models.resnet import group_norm

BASE_RESOLUTION = 4  # Side of the first grid, made by a Dense layer from the code.


class VoxelDecoder(nn.Module):
  """code (B,C) -> voxel logits (B,R,R,R), indexed [x,y,z] over the unit cube.

  A Dense layer makes a 4^3 grid of `hidden` channels; each stride-2 transposed conv (kernel 4:
  every output voxel gets the same number of taps, no checkerboard) doubles the side and halves
  the channels, until `resolution`; a 1x1x1 conv gives the logits.

  Attributes:
    hidden: channels of the 4^3 grid.
    resolution: R, 4 times a power of 2 (32: the dataset's voxels).
  """
  hidden: int
  resolution: int

  @nn.compact
  def __call__(self, code: jax.Array) -> jax.Array:
    steps = (self.resolution // BASE_RESOLUTION).bit_length() - 1
    if self.resolution != BASE_RESOLUTION * 2**steps:
      raise ValueError(f'voxel resolution {self.resolution}: expected 4 times a power of 2')
    r = BASE_RESOLUTION
    x = nn.Dense(r**3 * self.hidden, name='grid')(code).reshape(-1, r, r, r, self.hidden)
    x = nn.relu(group_norm(self.hidden)(x))
    for i in range(steps):
      channels = max(self.hidden // 2**(i + 1), 1)
      x = nn.ConvTranspose(channels, (4, 4, 4), strides=(2, 2, 2), padding='SAME',
                           use_bias=False)(x)
      x = nn.relu(group_norm(channels)(x))
    return nn.Conv(1, (1, 1, 1), name='logits')(x)[..., 0]


def interpolate_probabilities(probs: jax.Array, points: jax.Array) -> jax.Array:
  """Trilinear interpolation of voxel probabilities at query points.

  Args:
    probs: (B,R,R,R) occupancy probabilities, voxel centres at ((i,j,k) + 0.5) / R - 0.5.
    points: (B,M,3) query points (x, y, z).

  Returns:
    (B,M) probabilities; the grid is padded with one layer of zeros (empty space outside the unit
    cube), and points beyond that layer get 0.
  """
  resolution = probs.shape[-1]
  padded = jnp.pad(probs, ((0, 0), (1, 1), (1, 1), (1, 1)))
  # Continuous index into the padded grid: centre i of the unpadded grid is at i + 1.
  t = jnp.clip((points + 0.5) * resolution + 0.5, 0.0, resolution + 1.0)
  lo = jnp.minimum(jnp.floor(t).astype(jnp.int32), resolution)
  frac = t - lo
  batch = jnp.arange(probs.shape[0])[:, None]
  result = 0.0
  for corner in range(8):
    offset = jnp.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
    index = lo + offset
    weight = jnp.prod(jnp.where(offset == 1, frac, 1.0 - frac), axis=-1)
    result = result + weight * padded[batch, index[..., 0], index[..., 1], index[..., 2]]
  return result


def probabilities_to_logits(probs: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Logits whose sigmoid is probs, clipped to [eps, 1 - eps] so empty space stays finite."""
  probs = jnp.clip(probs, eps, 1.0 - eps)
  return jnp.log(probs) - jnp.log1p(-probs)
