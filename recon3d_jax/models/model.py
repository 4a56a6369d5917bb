"""The reconstruction model: one encoder feeding a 2.5D head and an occupancy decoder.

Every study arm uses this same model (same parameters); arms differ only in loss weights.
"""
import flax.linen as nn
import jax

from recon3d_jax import models
from recon3d_jax.models.heads import DepthNormalHead
from recon3d_jax.models.occupancy import OccupancyDecoder


class ReconModel(nn.Module):
  """Single image -> {2.5D maps, occupancy logits at query points}.

  Attributes:
    encoder: registered encoder name (see `models.ENCODERS`), e.g. 'resnet10'.
    encoder_width: the encoder's base width.
    code_dim: size of the global shape code.
    head_width: channels of the 2.5D decoder.
    decoder_hidden: width of the occupancy decoder.
    decoder_blocks: residual blocks of the occupancy decoder.
    depth_offset: camera distance; the depth head predicts an offset from it.
  """
  encoder: str
  encoder_width: int
  code_dim: int
  head_width: int
  decoder_hidden: int
  decoder_blocks: int
  depth_offset: float = 2.2

  def setup(self):
    self.backbone = models.get_encoder(
        self.encoder, width=self.encoder_width, code_dim=self.code_dim)
    self.head = DepthNormalHead(self.head_width, self.depth_offset)
    self.occupancy = OccupancyDecoder(self.decoder_hidden, self.decoder_blocks)

  def __call__(self, images: jax.Array, points: jax.Array) -> dict[str, jax.Array]:
    """images (B,H,W,C) float32 in [0,1]; points (B,M,3) in the viewer-centred object frame ->
    dict(depth (B,H,W), normal (B,H,W,3), mask_logits (B,H,W), occ_logits (B,M),
    code (B,code_dim))."""
    if images.ndim != 4 or points.ndim != 3 or points.shape[-1] != 3:
      raise ValueError(f'expected images (B,H,W,C) and points (B,M,3); got images '
                       f'{images.shape} and points {points.shape}')
    code, features = self.backbone(images)
    outputs = self.head(features, images.shape[1:3])
    outputs.update(occ_logits=self.occupancy(points, code), code=code)
    return outputs

  def encode(self, images: jax.Array) -> jax.Array:
    """images (B,H,W,C) -> code (B,code_dim); encode once, then query points in chunks."""
    return self.backbone(images)[0]

  def decode_occupancy(self, code: jax.Array, points: jax.Array) -> jax.Array:
    """code (B,code_dim), points (B,M,3) -> occupancy logits (B,M)."""
    return self.occupancy(points, code)
