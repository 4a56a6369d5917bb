"""Appearance and viewpoint variants: the ranges a benchmark samples cameras and lighting from.

A variant is data (a frozen dataclass, hashable so it can be a static jit argument). Every
renderer (sphere tracing for SDF domains, ray casting for meshes) draws its view with
`sample_view` and its lighting with `sample_appearance`, and shades hits with
`geometry.shading.shade`, so the same variant means the same thing in every domain.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

BACKGROUNDS = ("random", "white", "black")


@dataclasses.dataclass(frozen=True)
class Variant:
  """Sampling ranges of one appearance/viewpoint variant.

  Attributes:
    elevation_deg: camera elevation range (degrees above the horizon); azimuth is uniform.
    light_bias: upward (+y) bias of the Gaussian light direction; 0 = light from anywhere.
    ambient: range of the ambient fraction of the shading.
    albedo: range of each albedo channel.
    background: "random" (a uniform colour per sample), "white" or "black".
    texture: amplitude in [0, 1) of procedural stripes modulating the albedo (0 = plain).
  """
  elevation_deg: tuple[float, float] = (-15.0, 45.0)
  light_bias: float = 1.0
  ambient: tuple[float, float] = (0.1, 0.4)
  albedo: tuple[float, float] = (0.3, 1.0)
  background: str = "random"
  texture: float = 0.0

  def __post_init__(self):
    if self.background not in BACKGROUNDS:
      raise ValueError(f"background={self.background!r}: expected one of {BACKGROUNDS}")
    if not 0.0 <= self.texture < 1.0:
      raise ValueError(f"texture={self.texture}: expected an amplitude in [0, 1)")


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "harsh_light": Variant(light_bias=0.0, ambient=(0.0, 0.1)),  # Strong, any-direction shadows.
    "white_bg": Variant(background="white"),
    "textured": Variant(texture=0.6),
    "high_elevation": Variant(elevation_deg=(30.0, 75.0)),
}


def get_variant(name: str) -> Variant:
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; valid variants: {sorted(VARIANTS)}")
  return VARIANTS[name]


def sample_view(key: jax.Array, variant: Variant) -> tuple[jax.Array, jax.Array]:
  """Random camera direction -> (azimuth (), elevation ()) in radians."""
  k_az, k_el = jax.random.split(key)
  azimuth = jax.random.uniform(k_az, (), minval=0.0, maxval=2 * jnp.pi)
  lo, hi = jnp.deg2rad(jnp.array(variant.elevation_deg))
  return azimuth, jax.random.uniform(k_el, (), minval=lo, maxval=hi)


def sample_appearance(key: jax.Array, variant: Variant) -> dict[str, jax.Array]:
  """Random lighting and colours.

  Returns dict: light_dir (3,) unit world direction towards the light; albedo (3,); ambient ();
  background (3,); stripe_dir (3,) unit object-frame direction of the texture stripes.
  """
  k_light, k_albedo, k_ambient, k_bg, k_stripe = jax.random.split(key, 5)
  light = jax.random.normal(k_light, (3,)) + jnp.array([0.0, variant.light_bias, 0.0])
  stripe = jax.random.normal(k_stripe, (3,))
  background = {"random": jax.random.uniform(k_bg, (3,)), "white": jnp.ones(3),
                "black": jnp.zeros(3)}[variant.background]
  return dict(
      light_dir=light / jnp.linalg.norm(light),
      albedo=jax.random.uniform(k_albedo, (3,), minval=variant.albedo[0],
                                maxval=variant.albedo[1]),
      ambient=jax.random.uniform(k_ambient, (), minval=variant.ambient[0],
                                 maxval=variant.ambient[1]),
      background=background,
      stripe_dir=stripe / jnp.linalg.norm(stripe))

