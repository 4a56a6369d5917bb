"""The encoder registry: the one place an encoder name resolves to its module."""
import functools

import flax.linen as nn

from recon3d_jax.models.hybrid import HybridEncoder
from recon3d_jax.models.resnet import ResNetEncoder
from recon3d_jax.models.vit import ViTEncoder

# name -> encoder constructor; each takes width and code_dim, and maps images (B,H,W,C) to
# (code (B,code_dim), feature maps fine to coarse).
ENCODERS = {
    'resnet10': functools.partial(ResNetEncoder, stage_sizes=(1, 1, 1, 1)),
    'resnet18': functools.partial(ResNetEncoder, stage_sizes=(2, 2, 2, 2)),
    'resnet34': functools.partial(ResNetEncoder, stage_sizes=(3, 4, 6, 3)),
    # ViT-Ti/S/B at width=64 (heads of `width` channels), 4 px patches.
    'vit_ti': functools.partial(ViTEncoder, depth=12, num_heads=3, patch_size=4),
    'vit_s': functools.partial(ViTEncoder, depth=12, num_heads=6, patch_size=4),
    'vit_b': functools.partial(ViTEncoder, depth=12, num_heads=12, patch_size=4),
    # ResNet-10/18/34 stems (first three stages) + ViT-Ti/S/B-wide transformers on H/8 tokens.
    'hybrid_s': functools.partial(HybridEncoder, stage_sizes=(1, 1, 1), depth=4, num_heads=3),
    'hybrid_m': functools.partial(HybridEncoder, stage_sizes=(2, 2, 2), depth=8, num_heads=6),
    'hybrid_l': functools.partial(HybridEncoder, stage_sizes=(3, 4, 6), depth=12, num_heads=12),
}


def get_encoder(name: str, **kwargs) -> nn.Module:
  """The registered encoder `name`, built with `kwargs` (e.g. width, code_dim)."""
  if name not in ENCODERS:
    raise ValueError(f'unknown encoder {name!r}; expected one of {sorted(ENCODERS)}')
  return ENCODERS[name](**kwargs)
