"""The reconstruction model: one encoder feeding a 2.5D head and a 3D decoder.

The four arms of the controlled comparison (vanilla/normal/depth/both) use this same model with
the same parameters and differ only in loss weights. The other arms switch on parts that are off
by default (recon3d_jax.experiment.build_model):
  * oracle: `input_maps` - the true depth and normals are extra input channels (7 in all); only the
    encoder's first layer changes.
  * sketch (MarrNet-style two stages): the 3D decoder reads a second, small encoder (ResNet-10 at
    encoder_width) over the image and the *predicted* 2.5D maps, concat(image, depth, normals,
    silhouette probability) (8 channels); gradients flow through the predicted maps, so both
    stages train end to end (MarrNet fine-tunes its stages jointly the same way).
  * full (3D-R-DEP): `projection_dim` - a learned Dense projection of the encoder's code feeds the
    3D decoder; `scorer_hidden` - an instance scorer on the projected features (adaptive instance
    weighting, recon3d_jax.weighting).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recon3d_jax.models import encoders
from recon3d_jax.models import pixel_aligned as pixel_aligned_lib
from recon3d_jax.models import voxel
from recon3d_jax.models.heads import DepthNormalHead
from recon3d_jax.models.occupancy import OccupancyDecoder
from recon3d_jax.models.scorer import InstanceScorer

DECODERS = ('occupancy', 'voxel')


def input_images(batch: dict, input_maps: bool, depth_offset: float = 2.2) -> jax.Array:
  """The model's input images from a batch: image (B,H,W,3), or with input_maps (the oracle)
  concat(image, depth - depth_offset, normal) (B,H,W,7) of the ground-truth maps, zero off the
  object. Ground truth, never the corrupted training targets: training batches carry it as
  depth_clean / normal_clean; evaluation batches' depth / normal are clean."""
  if not input_maps:
    return batch['image']
  foreground = batch['mask'] > 0
  depth = jnp.where(foreground, batch.get('depth_clean', batch['depth']) - depth_offset, 0.0)
  normal = jnp.where(foreground[..., None], batch.get('normal_clean', batch['normal']), 0.0)
  return jnp.concatenate([batch['image'], depth[..., None], normal], axis=-1)


class ReconModel(nn.Module):
  """Single image -> {2.5D maps, occupancy logits at query points}.

  Attributes:
    encoder: registered encoder name (see `encoders.ENCODERS`), e.g. 'resnet10'.
    encoder_width: the encoder's base width.
    encoder_kwargs: (name, value) pairs overriding the registered encoder's other arguments,
      e.g. (('depth', 4),) for a shallower transformer; empty: the registered architecture.
    code_dim: size of the global shape code.
    head_width: channels of the 2.5D decoder.
    decoder_hidden: width of the occupancy decoder; channels of the voxel decoder's 4^3 grid.
    decoder_blocks: residual blocks of the occupancy decoder.
    decoder_frequencies: octaves of Fourier features of the points in the occupancy decoder.
    decoder: 3D decoder, one of DECODERS: 'occupancy' (implicit, at query points) or 'voxel'
      (a voxel_resolution^3 grid over the unit cube, interpolated at query points).
    pixel_aligned: the occupancy decoder also reads, under each point, the 2.5D head's last
      decoder level (U-Net features at H/2 with global context, the features the depth and
      normal losses shape; the encoder's own finest map alone did not train faster).
    voxel_resolution: side of the voxel decoder's grid (the dataset's voxels).
    input_maps: the images carry the true 2.5D maps as extra channels (see `input_images`).
    sketch: the 3D decoder reads a second encoder over the image and the predicted 2.5D maps.
    projection_dim: if > 0, a Dense projection to this size between code and 3D decoder.
    scorer_hidden: if > 0, an instance scorer with this hidden width (outputs['score']).
    depth_offset: camera distance; the depth head predicts an offset from it.
  """
  encoder: str
  encoder_width: int
  code_dim: int
  head_width: int
  decoder_hidden: int
  decoder_blocks: int
  encoder_kwargs: tuple[tuple[str, Any], ...] = ()
  decoder: str = 'occupancy'
  decoder_frequencies: int = 0
  pixel_aligned: bool = False
  voxel_resolution: int = 32
  input_maps: bool = False
  sketch: bool = False
  projection_dim: int = 0
  scorer_hidden: int = 0
  depth_offset: float = 2.2

  def setup(self):
    if self.decoder not in DECODERS:
      raise ValueError(f'unknown decoder {self.decoder!r}; expected one of {list(DECODERS)}')
    if self.pixel_aligned and self.decoder != 'occupancy':
      raise ValueError(f'pixel_aligned features need the occupancy decoder, not {self.decoder!r}')
    self.backbone = encoders.get_encoder(
        self.encoder, width=self.encoder_width, code_dim=self.code_dim,
        **dict(self.encoder_kwargs))
    self.head = DepthNormalHead(self.head_width, self.depth_offset)
    if self.sketch:
      self.sketch_backbone = encoders.get_encoder(
          'resnet10', width=self.encoder_width, code_dim=self.code_dim)
    if self.projection_dim:
      self.projection = nn.Dense(self.projection_dim)
    if self.scorer_hidden:
      self.scorer = InstanceScorer(self.scorer_hidden)
    if self.decoder == 'occupancy':
      self.occupancy = OccupancyDecoder(self.decoder_hidden, self.decoder_blocks,
                                        self.decoder_frequencies)
    else:
      self.voxels = voxel.VoxelDecoder(self.decoder_hidden, self.voxel_resolution)

  def __call__(self, images: jax.Array, points: jax.Array) -> dict[str, jax.Array]:
    """images (B,H,W,C) float32 (RGB in [0,1], then any extra channels); points (B,M,3) in the
    viewer-centred object frame -> dict(depth (B,H,W), normal (B,H,W,3), mask_logits (B,H,W),
    occ_logits (B,M), code (B,D): the 3D decoder's input code), plus voxel_logits (B,R,R,R)
    with the voxel decoder and score (B,) with a scorer."""
    if images.ndim != 4 or points.ndim != 3 or points.shape[-1] != 3:
      raise ValueError(f'expected images (B,H,W,C) and points (B,M,3); got images '
                       f'{images.shape} and points {points.shape}')
    outputs, latent = self._encode(images)
    outputs.update(occ_logits=self.decode_occupancy(latent, points), code=latent['code'])
    if 'voxel_logits' in latent:
      outputs['voxel_logits'] = latent['voxel_logits']
    if self.scorer_hidden:
      # The scorer learns from the weighted objective alone; its input features are trained by
      # the reconstruction losses, not bent towards what makes weights easy to score.
      outputs['score'] = self.scorer(jax.lax.stop_gradient(latent['code']))
    return outputs

  def _encode(self, images: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """images -> (2.5D maps, latent: everything the 3D decoder reads)."""
    code, features = self.backbone(images)
    maps = self.head(features, images.shape[1:3])
    head_features = maps.pop('features')
    if self.sketch:
      sketch = jnp.concatenate([images[..., :3], maps['depth'][..., None] - self.depth_offset,
                                maps['normal'], nn.sigmoid(maps['mask_logits'])[..., None]], -1)
      code, features = self.sketch_backbone(sketch)
    if self.projection_dim:
      code = self.projection(code)
    latent = dict(code=code)
    if self.pixel_aligned:
      latent['features'] = head_features
    if self.decoder == 'voxel':
      latent['voxel_logits'] = self.voxels(code)
    return maps, latent

  def encode(self, images: jax.Array) -> dict[str, jax.Array]:
    """images (B,H,W,C) -> latent dict (code (B,D), and the finest feature map (B,h,w,F) with
    pixel_aligned, voxel_logits (B,R,R,R) with the voxel decoder); encode once, then query
    points in chunks with `decode_occupancy`."""
    return self._encode(images)[1]

  def decode_occupancy(self, latent: dict[str, jax.Array], points: jax.Array) -> jax.Array:
    """latent (from `encode`), points (B,M,3) -> occupancy logits (B,M)."""
    if self.decoder == 'voxel':
      probs = voxel.interpolate_probabilities(nn.sigmoid(latent['voxel_logits']), points)
      return voxel.probabilities_to_logits(probs)
    local = None
    if self.pixel_aligned:
      local = pixel_aligned_lib.pixel_aligned_features(latent['features'], points)
    return self.occupancy(points, latent['code'], local)
