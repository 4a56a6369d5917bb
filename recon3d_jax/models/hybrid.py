"""Hybrid image encoder: a ResNet-style convolutional stem, then a transformer on its H/8 map."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from recon3d_jax.models.resnet import ResNetStages
from recon3d_jax.models.vit import Reassemble, Transformer


class HybridEncoder(nn.Module):
  """Image -> global code and a pyramid of feature maps, through conv stages and a transformer.

  The stem is the first three stages of a ResNet (stride-2 3x3 conv, then basic blocks at H/2,
  H/4 and H/8 with width, 2*width and 4*width channels). Each pixel of the H/8 map is a token
  (H/8 rather than ViT-hybrid's H/16: a 64 px image still gives 8x8 = 64 tokens). The two fine
  feature maps are the stem's H/2 and H/4 stages; the two coarse ones are the transformer's
  middle and last outputs re-assembled at H/8 and H/16.

  Each head has `width` channels, so tokens have num_heads * width (as in ViTEncoder).

  Attributes:
    width: channels of the stem and first stage, and per attention head.
    code_dim: size of the global code (mean token, then a Dense layer).
    stage_sizes: basic blocks in each of the three stem stages, e.g. (1, 1, 1).
    depth: transformer blocks (>= 2).
    num_heads: attention heads.
  """
  width: int
  code_dim: int
  stage_sizes: Sequence[int]
  depth: int
  num_heads: int

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images (B,H,W,C), any C -> (code (B,code_dim), features fine to coarse).

    features[i] has shape (B, H/2**(i+1), W/2**(i+1), width * 2**i) (H, W divisible by 16).
    """
    stages = ResNetStages(self.stage_sizes, self.width)(images)
    tokens = nn.Dense(self.num_heads * self.width, name='token_embed')(stages[-1])
    middle, last = Transformer(self.depth, self.num_heads, num_outputs=2)(tokens)
    features = stages[:2] + [Reassemble(self.width * 4, 1)(middle),
                             Reassemble(self.width * 8, 0.5)(last)]
    code = nn.Dense(self.code_dim, name='code')(jnp.mean(last, axis=(1, 2)))
    return code, features
