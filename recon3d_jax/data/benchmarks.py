"""The named benchmark suite: domain x appearance/viewpoint variant x split (docs/DESIGN.md
section 4).

A benchmark name picks what is rendered; `config.data.image_size` picks the resolution. Every
benchmark at 64 and 128 px with the default sizes below is a registered TFDS builder config named
`<benchmark>-<size>`:

    import tensorflow_datasets as tfds
    from recon3d_jax.data import builder  # registers recon3d_synth
    ds = tfds.builder("recon3d_synth/primitives-64", data_dir=DIR)

Names:
  <domain>                      in-distribution, default variant (e.g. "compounds")
  <domain>-<variant>            another appearance/viewpoint variant (e.g. "primitives-textured")
  <domain>-ood                  out-of-distribution: the test split holds shape families (mesh
                                files for `meshes`) never seen in training or validation
"""
from __future__ import annotations

import dataclasses

from recon3d_jax.data import variants

DOMAIN_NAMES = ("primitives", "compounds", "organic", "meshes")
REGISTERED_IMAGE_SIZES = (64, 128)
# Sizes of a registered benchmark (docs/DESIGN.md section 4): the default training set has 10k
# samples.
DEFAULT_SIZES = dict(num_train=10000, num_validation=500, num_test=1000,
                     num_surface_points=2048, num_uniform_points=2048, num_near_points=2048,
                     voxel_resolution=32)

# Held-out families of the -ood benchmarks (names of synth.DOMAINS[d].families, or mesh files).
# Chosen so the held-out families differ in kind from everything seen in training: a genus-1
# shape and a pointed apex; compounds built with the intersection op; a biped among the animals
# and a dumbbell among the tools; meshes of categories (knot, hand, elk, rotor, femur) absent
# from the training meshes.
OOD_TEST_FAMILIES = {
    "primitives": ("torus", "cone"),
    "compounds": ("intersect",),
    "organic": ("biped", "dumbbell"),
    "meshes": ("elk", "femur", "hand", "knot", "rotor"),
}


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """What a benchmark renders.

  Attributes:
    domain: one of DOMAIN_NAMES.
    variant: a key of variants.VARIANTS.
    test_families: None (every split draws from all families) or the family names that only the
      test split uses (train and validation draw from the others).
  """
  domain: str
  variant: str = "default"
  test_families: tuple[str, ...] | None = None

  def split_families(self, split: str, all_families: tuple[str, ...]) -> tuple[int, ...] | None:
    """Family ids a split draws from (None = all), given the domain's family names."""
    if self.test_families is None:
      return None
    unknown = sorted(set(self.test_families) - set(all_families))
    if unknown:
      raise ValueError(f"held-out families {unknown} are not families of domain "
                       f"{self.domain!r}; expected names from {list(all_families)}")
    held_out = split == "test"
    return tuple(i for i, name in enumerate(all_families)
                 if (name in self.test_families) == held_out)


def _registry() -> dict[str, Benchmark]:
  suite = {}
  for domain in DOMAIN_NAMES:
    suite[domain] = Benchmark(domain)
    suite[f"{domain}-ood"] = Benchmark(domain, test_families=OOD_TEST_FAMILIES[domain])
    for variant in variants.VARIANTS:
      if variant != "default":
        suite[f"{domain}-{variant}"] = Benchmark(domain, variant)
  return suite


BENCHMARKS: dict[str, Benchmark] = _registry()


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; valid benchmarks: {sorted(BENCHMARKS)}")
  return BENCHMARKS[name]


def registered_names() -> list[str]:
  """TFDS config names of the registered suite: <benchmark>-<image size>."""
  return [f"{name}-{size}" for name in BENCHMARKS for size in REGISTERED_IMAGE_SIZES]
