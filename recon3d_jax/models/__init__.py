"""Models, and the encoder registry: the one place an encoder name resolves to its module."""
import functools

import flax.linen as nn

from recon3d_jax.models.resnet import ResNetEncoder

# name -> encoder constructor; each takes width and code_dim, and maps images (B,H,W,C) to
# (code (B,code_dim), feature maps fine to coarse).
ENCODERS = {
    'resnet10': functools.partial(ResNetEncoder, stage_sizes=(1, 1, 1, 1)),
    'resnet18': functools.partial(ResNetEncoder, stage_sizes=(2, 2, 2, 2)),
    'resnet34': functools.partial(ResNetEncoder, stage_sizes=(3, 4, 6, 3)),
}


def get_encoder(name: str, **kwargs) -> nn.Module:
  """The registered encoder `name`, built with `kwargs` (e.g. width, code_dim)."""
  if name not in ENCODERS:
    raise ValueError(f'unknown encoder {name!r}; expected one of {sorted(ENCODERS)}')
  return ENCODERS[name](**kwargs)


# Imported last: model.py resolves encoder names through the registry above.
from recon3d_jax.models.model import ReconModel  # noqa: E402

__all__ = ['ENCODERS', 'ReconModel', 'get_encoder']
