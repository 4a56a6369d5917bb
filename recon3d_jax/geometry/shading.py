"""Shading of surface hits: the one formula every renderer (sphere tracing for SDF domains, ray
casting for meshes) colours its pixels with, so an appearance means the same in every domain."""
import jax
import jax.numpy as jnp

from recon3d_jax.geometry import vec

STRIPE_FREQUENCY = 6 * jnp.pi  # Three light/dark periods across the unit cube.


def shade(points: jax.Array, normals: jax.Array, hit: jax.Array, appearance: dict,
          texture: float) -> jax.Array:
  """Lambertian + ambient shading with optional stripe texture.

  rgb = albedo * stripes(p) * (ambient + (1 - ambient) * max(0, n . light_dir)) on hits, the
  background elsewhere; stripes(p) = 1 - texture * (0.5 + 0.5 sin(f p . stripe_dir)).

  Args:
    points: (..., 3) surface points in the frame of `light_dir` and `stripe_dir`.
    normals: (..., 3) unit outward normals, same frame.
    hit: (...,) bool foreground.
    appearance: dict with light_dir (3,), albedo (3,), ambient (), background (3,) and
      stripe_dir (3,), e.g. from data.variants.sample_appearance.
    texture: static stripe amplitude (data.variants.Variant.texture).

  Returns:
    rgb (..., 3) float32 in [0, 1].
  """
  a = appearance
  lambert = jnp.maximum(vec.dot(normals, a["light_dir"]), 0.0)
  light = a["ambient"] + (1 - a["ambient"]) * lambert
  stripes = 1.0 - texture * (0.5 + 0.5 * jnp.sin(STRIPE_FREQUENCY * vec.dot(points, a["stripe_dir"])))
  rgb = a["albedo"] * (stripes * light)[..., None]
  rgb = jnp.where(hit[..., None], rgb, a["background"])
  return jnp.clip(rgb, 0.0, 1.0).astype(jnp.float32)
