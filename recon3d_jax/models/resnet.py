"""ResNet-style image encoder with GroupNorm (no mutable state: train and eval are identical)."""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm(channels: int) -> nn.GroupNorm:
  """GroupNorm with up to 8 groups; gcd keeps it valid for any channel count."""
  return nn.GroupNorm(num_groups=math.gcd(8, channels))


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection: (B,H,W,C) -> (B,H/s,W/s,features)."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.features, (3, 3), strides=self.strides, use_bias=False)(x)
    y = nn.relu(group_norm(self.features)(y))
    y = group_norm(self.features)(nn.Conv(self.features, (3, 3), use_bias=False)(y))
    if x.shape[-1] != self.features or self.strides != 1:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False)(x)
      x = group_norm(self.features)(x)
    return nn.relu(x + y)


class ResNetStages(nn.Module):
  """Stride-2 3x3 stem, then stages of basic blocks: (B,H,W,C) -> feature maps fine to coarse.

  Stage i has `stage_sizes[i]` blocks and width * 2**i channels; the first stage keeps the stem's
  resolution (H/2), every later one halves it. Shared by the ResNet and hybrid encoders.
  """
  stage_sizes: Sequence[int]
  width: int

  @nn.compact
  def __call__(self, images: jax.Array) -> list[jax.Array]:
    x = nn.Conv(self.width, (3, 3), strides=2, use_bias=False, name='stem')(images)
    x = nn.relu(group_norm(self.width)(x))
    features = []
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(self.width * 2**i, strides)(x)
      features.append(x)
    return features


class ResNetEncoder(nn.Module):
  """Image -> global code and a pyramid of feature maps.

  A stride-2 3x3 stem, then one stage per entry of `stage_sizes` (that many basic blocks); the
  first stage keeps the stem's resolution, every later one halves it and doubles the channels.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    width: channels of the stem and first stage; stage i has width * 2**i.
    code_dim: size of the global code (mean-pooled last stage, then a Dense layer).
  """
  stage_sizes: Sequence[int]
  width: int
  code_dim: int

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images (B,H,W,C), any C -> (code (B,code_dim), features fine to coarse).

    features[i] has shape (B, H/2**(i+1), W/2**(i+1), width * 2**i) (sizes rounded up).
    """
    features = ResNetStages(self.stage_sizes, self.width)(images)
    code = nn.Dense(self.code_dim, name='code')(jnp.mean(features[-1], axis=(1, 2)))
    return code, features
