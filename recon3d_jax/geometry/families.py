"""Random shapes of the SDF domains, by named family (for held-out-family splits).

Every sampler maps (key, families) to a csg.Csg in its world frame, of about
unit size (compounds and organic shapes are not normalised: that needs the
numerical bounding box, and synth normalises in the viewer frame anyway), with
`family` its family id in the domain; `families` is a
static tuple of allowed ids (None: all), drawn uniformly.

  primitives  one primitive of random sizes and rotation (random_primitive);
              families = sdf.PRIMITIVE_KINDS.
  compounds   2-4 primitives folded by one operation type; families = the
              operations (union, subtract, intersect, smooth_union).
  organic     smooth unions of superquadrics from templates: animals
              (quadruped, biped) and tools (hammer, dumbbell).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from recon3d_jax.geometry import csg
from recon3d_jax.geometry import sdf as sdf_lib
from recon3d_jax.geometry import vec


class Domain(NamedTuple):
  """A shape domain: family names and sample(key, families) -> csg.Csg.

  `per_family_kinds`: a shape's SDF kinds follow from its family, and
  sample(key, (f,)) is the shape sample(key, families) draws whenever that is
  of family f. Batches can then be rendered family by family with one SDF
  kind each instead of a switch over all of them (see synth.generate_batch).
  """
  families: tuple[str, ...]
  sample: Callable[[jax.Array, tuple[int, ...] | None], csg.Csg]
  per_family_kinds: bool = False


def check_families(domain_name: str, domain: Domain,
                   families: tuple[int, ...] | None) -> tuple[int, ...]:
  """The allowed family ids (all if None); a clear error for bad ones."""
  if families is None:
    return tuple(range(len(domain.families)))
  families = tuple(families)
  valid = range(len(domain.families))
  if not families or any(f not in valid for f in families):
    raise ValueError(
        f"families={families} for domain {domain_name!r}: expected a non-empty tuple of ids "
        f"in 0..{len(domain.families) - 1} ({', '.join(domain.families)})")
  return families


def _choose(key, allowed: tuple[int, ...]):
  return jnp.asarray(allowed, jnp.int32)[jax.random.randint(key, (), 0, len(allowed))]


def random_rotation(key):
  """(3, 3) rotation uniform on SO(3), from a normalised Gaussian quaternion."""
  q = jax.random.normal(key, (4,))
  w, x, y, z = q / vec.length(*q)
  return jnp.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


# ------------------------------------------------------------- primitives

_PRIMITIVE_IDS = tuple(range(len(sdf_lib.PRIMITIVE_KINDS)))


def _log_uniform(u, lo, hi):
  """Maps u in [0, 1) to a log-uniform value in [lo, hi)."""
  return lo * (hi / lo) ** u


# Random sizes from 4 uniforms u in [0, 1). The overall size is irrelevant
# (sdf.normalize_shape rescales); aspect ratios stay within ~3:1 (a torus 4:1) and
# the thinnest part (a torus tube) is at least 1/4 of the longest extent.
def _sphere_params(u):
  return jnp.array([0.5, 0.0, 0.0, 0.0])


def _box_params(u):
  return jnp.concatenate([0.5 * _log_uniform(u[:3], 1 / 3, 1), jnp.zeros(1)])


def _rounded_box_params(u):
  half = 0.5 * _log_uniform(u[:3], 1 / 3, 1)
  return jnp.concatenate([half, (0.1 + 0.4 * u[3:]) * jnp.min(half)])


def _torus_params(u):
  # Tube / ring radius in [1/3, 0.6]: a visible hole, box aspect 2.7:1 to 4:1.
  return jnp.array([0.5, 0.5 * (1 / 3 + (0.6 - 1 / 3) * u[0]), 0.0, 0.0])


def _capsule_params(u):
  # Half-length / radius in [0.2, 2]: total length / width in [1.2, 3].
  return jnp.array([0.25 * _log_uniform(u[0], 0.2, 2.0), 0.25, 0.0, 0.0])


def _cylinder_params(u):
  return jnp.array([0.25, 0.25 * _log_uniform(u[0], 1 / 3, 3.0), 0.0, 0.0])


def _cone_params(u):
  return jnp.array([0.25, 0.25 * _log_uniform(u[0], 1 / 3, 3.0), 0.0, 0.0])


def _ellipsoid_params(u):
  return jnp.concatenate([0.5 * _log_uniform(u[:3], 1 / 3, 1), jnp.zeros(1)])


_RANDOM_PARAMS = (_sphere_params, _box_params, _rounded_box_params,
                  _torus_params, _capsule_params, _cylinder_params,
                  _cone_params, _ellipsoid_params)


def random_primitive(key, kinds: tuple[int, ...] = _PRIMITIVE_IDS) -> sdf_lib.Shape:
  """Random primitive, normalised into the unit cube; jit- and vmap-able.

  Kind uniform over the (static) `kinds`, indices into sdf.PRIMITIVE_KINDS;
  random sizes (aspect up to ~3:1; a torus up to 4:1 so that its hole stays
  open), rotation uniform on SO(3).
  """
  kind_key, size_key, rot_key = jax.random.split(key, 3)
  kind = jnp.asarray(kinds, jnp.int32)[
      jax.random.randint(kind_key, (), 0, len(kinds), jnp.int32)]
  u = jax.random.uniform(size_key, (4,))
  params = jax.lax.switch(kind, _RANDOM_PARAMS, u).astype(jnp.float32)
  shape = sdf_lib.Shape(kind=kind, params=params, rotation=random_rotation(rot_key),
                        scale=jnp.ones((), jnp.float32),
                        translation=jnp.zeros(3, jnp.float32))
  return sdf_lib.normalize_shape(shape, kinds)


def _sample_primitive(key, families=None) -> csg.Csg:
  families = _PRIMITIVE_IDS if families is None else families
  return csg.from_primitive(random_primitive(key, families),
                            kinds=tuple(families))


# -------------------------------------------------------------- compounds

COMPOUND_PARTS = 4
# Kinds whose object origin is inside them and which are convex (every kind
# but the torus): bases, cutters and intersected parts. Unions may add tori.
_CONVEX = tuple(k for k in _PRIMITIVE_IDS if sdf_lib.PRIMITIVE_KINDS[k] != 'torus')
_TORUS = sdf_lib.PRIMITIVE_KINDS.index('torus')
# Per family: part size relative to the base (union-like families; cutters use
# the base's thinnest extent), and how far from the base centre towards its
# surface (0 = centre, 1 = on the surface) a part is anchored.
_PART_SCALE = {csg.UNION: (0.35, 0.7), csg.SMOOTH_UNION: (0.35, 0.7),
               csg.INTERSECT: (0.7, 1.1), csg.SUBTRACT: (0.5, 0.7)}
_ANCHOR_DEPTH = {csg.UNION: (0.6, 1.0), csg.SMOOTH_UNION: (0.6, 1.0),
                 csg.INTERSECT: (0.0, 0.3), csg.SUBTRACT: (1.0, 1.0)}
_BOUNDARY_STEPS = 24


def _interior_point(shape: sdf_lib.Shape):
  """A world point inside the primitive: its origin, or for a torus a point
  on the core circle."""
  local = jnp.where(shape.kind == _TORUS, jnp.array([1.0, 0.0, 0.0]) * shape.params[0], 0.0)
  return shape.translation + shape.scale * shape.rotation @ local


def _boundary_point(shape: sdf_lib.Shape, direction, kinds):
  """Surface point of a convex primitive containing the origin, along a unit
  direction: sphere tracing inwards from outside the unit cube."""
  def step(_, t):
    return t - sdf_lib.shape_sdf(shape, t * direction, kinds)
  return jax.lax.fori_loop(0, _BOUNDARY_STEPS, step, 1.0) * direction


def _place(shape: sdf_lib.Shape, scale, anchor, kinds) -> sdf_lib.Shape:
  """The normalised primitive scaled by `scale`, moved so that its interior
  point lies at `anchor`: every part then overlaps the base at the anchor."""
  shape = shape._replace(scale=scale * shape.scale, translation=scale * shape.translation)
  return shape._replace(translation=shape.translation + anchor - _interior_point(shape))


def _sample_compound(key, families=None) -> csg.Csg:
  """A base (convex, centred in the unit cube) and up to 3 more parts.

  Never empty and, by construction, connected: union-like parts contain an
  anchor inside the base; intersected parts are convex and contain an anchor
  near the base centre; cutters are centred on the base's surface and reach
  less than ~1/3 of its thinnest extent into it.
  """
  families = tuple(range(len(csg.OPS))) if families is None else families
  k_family, k_count, k_base, k_parts = jax.random.split(key, 4)
  op = _choose(k_family, families)
  num_active = jax.random.randint(k_count, (), 2, COMPOUND_PARTS + 1)
  base = random_primitive(k_base, _CONVEX)
  base_lo, base_hi = sdf_lib.shape_aabb(base, _CONVEX)
  thinnest = jnp.min(base_hi - base_lo)
  scale_range = jnp.array([_PART_SCALE[o] for o in range(len(csg.OPS))])[op]
  depth_range = jnp.array([_ANCHOR_DEPTH[o] for o in range(len(csg.OPS))])[op]

  def one_part(k):
    k_prim, k_dir, k_depth, k_scale, k_blend = jax.random.split(k, 5)
    # Union-like parts may be any primitive, the others convex ones.
    union_like = (op == csg.UNION) | (op == csg.SMOOTH_UNION)
    any_kind = random_primitive(k_prim, _PRIMITIVE_IDS)
    convex = random_primitive(k_prim, _CONVEX)
    prim = jax.tree.map(lambda a, b: jnp.where(union_like, a, b), any_kind, convex)
    direction = jax.random.normal(k_dir, (3,))
    direction = direction / jnp.linalg.norm(direction)
    depth = jax.random.uniform(k_depth, (), minval=depth_range[0], maxval=depth_range[1])
    anchor = depth * _boundary_point(base, direction, _CONVEX)
    size = jax.random.uniform(k_scale, (), minval=scale_range[0], maxval=scale_range[1])
    size = jnp.where(op == csg.SUBTRACT, size * thinnest, size)
    blend = jax.random.uniform(k_blend, (), minval=0.05, maxval=0.15)
    return _place(prim, size, anchor, _PRIMITIVE_IDS), blend

  extra, blend = jax.vmap(one_part)(jax.random.split(k_parts, COMPOUND_PARTS - 1))
  parts = jax.tree.map(lambda b, e: jnp.concatenate([b[None], e]), base, extra)
  compound = csg.Csg(
      parts=parts, ops=jnp.full(COMPOUND_PARTS, op, jnp.int32),
      blend=jnp.concatenate([jnp.zeros(1), blend]).astype(jnp.float32),
      active=jnp.arange(COMPOUND_PARTS) < num_active, family=op, kinds=_PRIMITIVE_IDS)
  return compound


# ---------------------------------------------------------------- organic

ORGANIC_FAMILIES = ('quadruped', 'biped', 'hammer', 'dumbbell')
ORGANIC_PARTS = 6
_SUPERQUADRIC = sdf_lib.KINDS.index('superquadric')


def _rot_z(angle):
  c, s = jnp.cos(angle), jnp.sin(angle)
  return jnp.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _quadruped(u):
  """Body along x, head in front and above, four legs below.

  Every part contains a point inside the body (e >= 2 bodies contain their
  ellipsoid): the head holds (0.85 bl, 0.5 bh, 0), each leg's top end lies at
  (+-0.6 bl, -0.3 bh, +-0.55 bw).
  """
  bl, bh, bw = 0.35 + 0.15 * u[0], 0.15 + 0.07 * u[1], 0.13 + 0.07 * u[2]
  hr, ll, lr = 0.12 + 0.06 * u[3], 0.15 + 0.1 * u[4], 0.045 + 0.025 * u[5]
  radii = [(bl, bh, bw), (1.2 * hr, hr, hr)] + [(lr, ll, lr)] * 4
  centres = [(0, 0, 0), (0.85 * bl + 0.5 * hr, 0.5 * bh + 0.3 * hr, 0)] + [
      (sx * 0.6 * bl, -0.3 * bh - ll, sz * 0.55 * bw) for sx in (-1, 1) for sz in (-1, 1)]
  return radii, centres, [0.0] * 6


def _biped(u):
  """Upright body, head on top, two legs below, two slanted arms.

  The head holds the body point (0, 0.95 bh, 0); legs and arms end inside
  the body at (+-0.5 bw, -0.6 bh, 0) and (+-0.7 bw, 0.5 bh, 0).
  """
  bw, bh, bd = 0.14 + 0.06 * u[0], 0.25 + 0.1 * u[1], 0.1 + 0.05 * u[2]
  hr, ll, ar = 0.1 + 0.05 * u[3], 0.15 + 0.1 * u[4], 0.04 + 0.02 * u[5]
  al, tilt = 0.6 * bh, 0.3 + 0.4 * u[6]
  # An arm tilted by angle a about z has its axis along (-sin a, cos a, 0).
  arm_x, arm_y = 0.7 * bw + al * jnp.sin(tilt), 0.5 * bh - al * jnp.cos(tilt)
  radii = [(bw, bh, bd), (hr, 1.1 * hr, hr), (ar, ll, ar), (ar, ll, ar),
           (ar, al, ar), (ar, al, ar)]
  centres = [(0, 0, 0), (0, bh + 0.8 * hr, 0), (-0.5 * bw, -0.6 * bh - ll, 0),
             (0.5 * bw, -0.6 * bh - ll, 0), (-arm_x, arm_y, 0), (arm_x, arm_y, 0)]
  return radii, centres, [0.0, 0.0, 0.0, 0.0, -tilt, tilt]


def _hammer(u):
  """Handle along y, a box-like head across its top end."""
  hl, hw = 0.35 + 0.15 * u[0], 0.035 + 0.02 * u[1]
  head_l, head_w = 0.2 + 0.1 * u[2], 0.07 + 0.04 * u[3]
  radii = [(hw, hl, hw), (head_l, head_w, head_w)] + [(hw, hl, hw)] * 4
  centres = [(0, 0, 0), (0.3 * head_l * (u[4] - 0.5), hl, 0)] + [(0, 0, 0)] * 4
  return radii, centres, [0.0] * 6


def _dumbbell(u):
  """Bar along x with a round weight at each end."""
  bl, bw = 0.3 + 0.15 * u[0], 0.04 + 0.02 * u[1]
  wr, wt = 0.12 + 0.08 * u[2], 0.06 + 0.05 * u[3]
  radii = [(bl, bw, bw), (wt, wr, wr), (wt, wr, wr)] + [(bl, bw, bw)] * 3
  centres = [(0, 0, 0), (bl - wt, 0, 0), (-bl + wt, 0, 0)] + [(0, 0, 0)] * 3
  return radii, centres, [0.0] * 6


# (template, number of active parts, exponent range of the first two parts).
_TEMPLATES = ((_quadruped, 6, (2.0, 2.5)), (_biped, 6, (2.0, 2.5)),
              (_hammer, 2, (2.0, 4.0)), (_dumbbell, 3, (2.0, 3.0)))


def _sample_organic(key, families=None) -> csg.Csg:
  """A template's parts with jittered sizes, smooth-unioned, randomly rotated.

  Parts overlap by construction (every limb or head is centred within its
  own size of the body's surface).
  """
  families = tuple(range(len(ORGANIC_FAMILIES))) if families is None else families
  k_family, k_size, k_exp, k_blend, k_rot = jax.random.split(key, 5)
  family = _choose(k_family, families)
  u = jax.random.uniform(k_size, (8,))
  exponent = jax.random.uniform(k_exp, (ORGANIC_PARTS,))

  def template(i):
    fn, num_active, (e_lo, e_hi) = _TEMPLATES[i]
    radii, centres, angles = fn(u)
    # Body and head take the template's exponent range; limbs are rounder.
    e = jnp.where(jnp.arange(ORGANIC_PARTS) < 2, e_lo + (e_hi - e_lo) * exponent,
                  2.0 + 0.5 * exponent)
    return (jnp.asarray(radii, jnp.float32), e, jnp.asarray(centres, jnp.float32),
            jnp.stack([_rot_z(a) for a in angles]),
            jnp.arange(ORGANIC_PARTS) < num_active)

  radii, e, centres, rotations, active = jax.lax.switch(
      family, [lambda i=i: template(i) for i in range(len(_TEMPLATES))])
  parts = sdf_lib.Shape(
      kind=jnp.full(ORGANIC_PARTS, _SUPERQUADRIC, jnp.int32),
      params=jnp.concatenate([radii, e[:, None]], axis=-1),
      rotation=rotations, scale=jnp.ones(ORGANIC_PARTS, jnp.float32), translation=centres)
  shape = csg.Csg(
      parts=parts, ops=jnp.full(ORGANIC_PARTS, csg.SMOOTH_UNION, jnp.int32),
      blend=jnp.full(ORGANIC_PARTS, 1.0, jnp.float32) *
      jax.random.uniform(k_blend, (), minval=0.03, maxval=0.07),
      active=active, family=family, kinds=(_SUPERQUADRIC,))
  return csg.transform(shape, random_rotation(k_rot), 1.0, jnp.zeros(3))


DOMAINS: dict[str, Domain] = {
    'primitives': Domain(sdf_lib.PRIMITIVE_KINDS, _sample_primitive, per_family_kinds=True),
    'compounds': Domain(csg.OPS, _sample_compound),
    'organic': Domain(ORGANIC_FAMILIES, _sample_organic),
}
