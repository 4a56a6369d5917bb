"""ViT-style image encoder with small patches and a DPT-style re-assembled feature pyramid.

The transformer pieces (`TransformerBlock`, `Transformer`, `Reassemble`) are shared with the
hybrid encoder (hybrid.py). LayerNorm only, no dropout: apply is a pure function of
(params, inputs).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class TransformerBlock(nn.Module):
  """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)); (B,N,D) -> (B,N,D).

  Attributes:
    num_heads: attention heads; D must be divisible by it.
    mlp_ratio: hidden width of the MLP, as a multiple of D.
  """
  num_heads: int
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(nn.LayerNorm()(x))
    y = nn.gelu(nn.Dense(self.mlp_ratio * dim)(nn.LayerNorm()(x)))
    return x + nn.Dense(dim)(y)


class Transformer(nn.Module):
  """Learned position embeddings, then `depth` blocks over a token grid.

  Returns `num_outputs` grids, taken after evenly spaced blocks (the last after the final
  block), each LayerNormed: as in DPT, the fine feature maps are read from shallow blocks.

  Attributes:
    depth: number of transformer blocks (>= num_outputs).
    num_heads: attention heads per block.
    num_outputs: how many intermediate grids to return.
  """
  depth: int
  num_heads: int
  num_outputs: int

  @nn.compact
  def __call__(self, grid: jax.Array) -> list[jax.Array]:
    """grid (B,h,w,D) -> num_outputs grids (B,h,w,D), shallow to deep.

    The position embedding has h*w entries, so the input size is fixed at init.
    """
    b, h, w, dim = grid.shape
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (h * w, dim))
    x = grid.reshape(b, h * w, dim) + pos
    taps = {(k + 1) * self.depth // self.num_outputs for k in range(self.num_outputs)}
    outputs = []
    for i in range(1, self.depth + 1):
      x = TransformerBlock(self.num_heads)(x)
      if i in taps:
        outputs.append(nn.LayerNorm()(x).reshape(b, h, w, dim))
    return outputs


class Reassemble(nn.Module):
  """Token grid -> feature map, projected and resampled by `factor` in one layer (DPT).

  factor > 1: a transposed conv, factor < 1: a strided conv, both with kernel = stride
  (non-overlapping windows: no checkerboard artefacts from uneven overlap); factor 1: a 1x1
  projection.

  Attributes:
    features: output channels.
    factor: resampling factor, a power of 2 (e.g. 2, 1, 0.5).
  """
  features: int
  factor: float

  @nn.compact
  def __call__(self, grid: jax.Array) -> jax.Array:
    """grid (B,h,w,D) -> (B, h*factor, w*factor, features) (sizes rounded up)."""
    if self.factor > 1:
      f = int(self.factor)
      return nn.ConvTranspose(self.features, (f, f), strides=(f, f))(grid)
    if self.factor < 1:
      s = round(1 / self.factor)
      return nn.Conv(self.features, (s, s), strides=s)(grid)
    return nn.Dense(self.features)(grid)


class ViTEncoder(nn.Module):
  """Image -> global code and a pyramid of feature maps, through a plain ViT.

  Non-overlapping patch_size x patch_size patches are embedded by a strided conv; the
  transformer's outputs after blocks depth/4, depth/2, 3*depth/4 and depth are re-assembled
  into feature maps at H/2, H/4, H/8 and H/16 (fine maps from shallow blocks, as in DPT).

  Each head has `width` channels, so tokens have num_heads * width; at width=64 the registered
  sizes are exactly ViT-Ti/S/B (192/384/768 wide, 3/6/12 heads, 12 blocks), and the default
  width=32 halves them for the CPU.

  Attributes:
    width: channels per attention head; feature map i has width * 2**i channels.
    code_dim: size of the global code (mean token, then a Dense layer).
    depth: transformer blocks (>= 4).
    num_heads: attention heads.
    patch_size: patch side in pixels, a power of 2 (4: a 64 px image is 16x16 tokens).
  """
  width: int
  code_dim: int
  depth: int
  num_heads: int
  patch_size: int = 4

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """images (B,H,W,C), any C -> (code (B,code_dim), features fine to coarse).

    features[i] has shape (B, H/2**(i+1), W/2**(i+1), width * 2**i) (H, W divisible by 16
    and by patch_size).
    """
    p = self.patch_size
    grid = nn.Conv(self.num_heads * self.width, (p, p), strides=p, name='patch_embed')(images)
    outputs = Transformer(self.depth, self.num_heads, num_outputs=4)(grid)
    # Output i goes to scale H/2**(i+1); the token grid is at H/p.
    features = [Reassemble(self.width * 2**i, p / 2**(i + 1))(out)
                for i, out in enumerate(outputs)]
    code = nn.Dense(self.code_dim, name='code')(jnp.mean(outputs[-1], axis=(1, 2)))
    return code, features
