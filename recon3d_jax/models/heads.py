"""2.5D head: encoder feature pyramid -> depth, surface normals and silhouette at input size."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from recon3d_jax.models.resnet import group_norm


def safe_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Unit vectors along the last axis; a zero vector stays zero (finite value and gradient)."""
  return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps))


def _upsample(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize (B,h,w,C) -> (B,hw[0],hw[1],C)."""
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), 'bilinear')


class DepthNormalHead(nn.Module):
  """U-Net-style decoder: upsample coarse features, concatenate the skip, conv + GroupNorm.

  The maps are predicted at the finest feature resolution (H/2 for the ResNets) and upsampled
  bilinearly to the input size: a conv layer at full resolution would cost more than the rest of
  the head (and about as much as the encoder) for little gain at the image sizes used here.

  Attributes:
    width: channels of every decoder level.
    depth_offset: added to the raw depth output; the camera distance, so the initial prediction
      (the raw depth starts at exactly 0) is the depth of the object's centre.
  """
  width: int
  depth_offset: float = 2.2

  @nn.compact
  def __call__(self, features: list[jax.Array], out_hw: tuple[int, int]) -> dict[str, jax.Array]:
    """features fine to coarse [(B,h0,w0,c0), (B,h1,w1,c1), ...]; out_hw = (H, W) ->
    dict(depth (B,H,W), normal (B,H,W,3) unit length, mask_logits (B,H,W), features
    (B,h0,w0,width): the last decoder level, which the 2.5D maps are read from)."""
    x = features[-1]
    for skip in reversed(features[:-1]):
      x = _upsample(x, skip.shape[1:3])
      x = nn.Conv(self.width, (3, 3), use_bias=False)(jnp.concatenate([x, skip], axis=-1))
      x = nn.relu(group_norm(self.width)(x))
    depth = nn.Conv(1, (1, 1), kernel_init=nn.initializers.zeros, name='depth')(x)
    normal = nn.Conv(3, (1, 1), name='normal')(x)
    mask_logits = nn.Conv(1, (1, 1), name='mask')(x)
    maps = _upsample(jnp.concatenate([depth, normal, mask_logits], axis=-1), tuple(out_hw))
    return dict(depth=maps[..., 0] + self.depth_offset, normal=safe_normalize(maps[..., 1:4]),
                mask_logits=maps[..., 4], features=x)
