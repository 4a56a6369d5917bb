"""Signed distance functions of analytic primitives.

Conventions (docs/DESIGN.md section 3):
  * World frame: right-handed, +y up. `normalize_shape` maps a shape into the
    unit cube: axis-aligned bounding box with longest side exactly 1, centred at
    the origin.
  * Distances are negative inside. Every primitive's own SDF here is exact, so
    it is 1-Lipschitz (sphere tracing never overshoots) and has a unit
    gradient on the surface (thin |sdf| < eps shells have uniform thickness).
    In a vmapped mix of kinds the ellipsoid is evaluated as a cheaper bound
    (see _rounded_profile and is_exact).

Primitives live in their own object frame, symmetry axis along y, and are
described by `params` (4,) (unused entries are ignored):
  sphere       (radius, -, -, -)
  box          (half_x, half_y, half_z, -)
  rounded_box  (half_x, half_y, half_z, radius): outer half extents, edges
               rounded with radius <= min(half extents)
  torus        (major_radius, minor_radius, -, -): ring in the xz plane
  capsule      (half_length, radius, -, -): segment from -y to +y, plus radius
  cylinder     (radius, half_height, -, -)
  cone         (radius, half_height, -, -): base disc at y = -half_height,
               apex at y = +half_height
  ellipsoid    (radius_x, radius_y, radius_z, -)
  superquadric (radius_x, radius_y, radius_z, exponent >= 2): the set
               (|x|/rx)^e + (|y|/ry)^e + (|z|/rz)^e <= 1; e = 2 is the
               ellipsoid, larger e tends to the box. Not a primitive-domain
               kind; its SDF is a bound (see _superquadric).
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recon3d_jax.geometry import vec

PRIMITIVE_KINDS = ('sphere', 'box', 'rounded_box', 'torus', 'capsule',
                   'cylinder', 'cone', 'ellipsoid')
# Every kind a Shape can have: the primitives, then the part-only kinds.
KINDS = PRIMITIVE_KINDS + ('superquadric',)
ALL_KINDS = tuple(range(len(KINDS)))


class Shape(NamedTuple):
  """A primitive placed in the world.

  World SDF: sdf(p) = scale * prim_sdf(R^T (p - translation) / scale).

  Attributes:
    kind: () int32 index into PRIMITIVE_KINDS.
    params: (4,) float32 primitive sizes (see the module docstring).
    rotation: (3, 3) object->world rotation R.
    scale: () uniform scale.
    translation: (3,) object origin in world coordinates.
  """
  kind: jax.Array
  params: jax.Array
  rotation: jax.Array
  scale: jax.Array
  translation: jax.Array


def make_shape(kind, params, rotation=None, scale=1.0, translation=None) -> Shape:
  """Shape with float32 / int32 fields; `kind` is an index or a name.

  Defaults: identity rotation, zero translation.
  """
  if isinstance(kind, str):
    kind = KINDS.index(kind)
  return Shape(
      kind=jnp.asarray(kind, jnp.int32),
      params=jnp.asarray(params, jnp.float32),
      rotation=jnp.eye(3, dtype=jnp.float32) if rotation is None
      else jnp.asarray(rotation, jnp.float32),
      scale=jnp.asarray(scale, jnp.float32),
      translation=jnp.zeros(3, jnp.float32) if translation is None
      else jnp.asarray(translation, jnp.float32))


# ----------------------------------------------------------------- helpers
# The SDFs work on coordinate components (each (...,)) rather than (..., 3)
# arrays: XLA on CPU vectorises elementwise code far better (see vec.py).


def _box_sdf_and_grad(q, b):
  """Exact SDF of an axis-aligned box and its gradient: components q (each
  (...,)), half extents b -> (value, [d/dq_i]).

  Where at most one component lies outside its slab (inside, or off a face) the
  distance is the largest plane distance, whose gradient is the face normal
  even exactly on the surface. Off edges and corners it is the length of the
  outside part.
  """
  d = [jnp.abs(qi) - bi for qi, bi in zip(q, b)]
  num_outside = sum((di > 0).astype(jnp.int32) for di in d)
  plane = functools.reduce(jnp.maximum, d)
  outside = [jnp.maximum(di, 0.0) for di in d]
  corner = vec.length(*outside)
  planar = num_outside <= 1
  grad, taken = [], False
  for qi, di, oi in zip(q, d, outside):
    face = (di == plane) & ~taken  # The first of tied faces.
    taken = taken | face
    grad.append(jnp.sign(qi) * jnp.where(planar, face.astype(qi.dtype), oi / corner))
  return jnp.where(planar, plane, corner), grad


def _box_sdf(q, b):
  return _box_sdf_and_grad(q, b)[0]


# ------------------------------------------------------- primitive SDFs
# Each maps object-frame components (x, y, z) and params (4,) to distances.


def _sphere(p, params):
  return vec.length(*p) - params[0]


def _box(p, params):
  return _box_sdf(p, params[:3])


def _rounded_box(p, params):
  r = params[3]
  return _box_sdf(p, params[:3] - r) - r


def _torus(p, params):
  x, y, z = p
  return vec.length(vec.length(x, z) - params[0], y) - params[1]


def _capsule(p, params):
  x, y, z = p
  return vec.length(x, y - jnp.clip(y, -params[0], params[0]), z) - params[1]


def _cylinder(p, params):
  x, y, z = p
  return _box_sdf((vec.length(x, z), y), params[:2])


# In a mix of kinds (see _switch), sphere, box, rounded box, torus, capsule,
# cylinder and ellipsoid are evaluated as one formula: a box with half
# extents b rounded by r, either in 3D (x, y, z) or in the profile (rho - c, y)
# of a solid of revolution about y (rho = |(x, z)|; its third extent is huge
# so that it never counts), in coordinates scaled per axis by a and the result
# scaled by m. A sphere is a point rounded by its radius, a capsule a segment,
# a torus a circle of radius c, all with a = m = 1; an ellipsoid is the unit
# sphere scaled by a = 1 / radii, m = min(radii): a 1-Lipschitz bound (|p / r|
# is a norm with Lipschitz constant 1 / min(r)), zero exactly on the surface
# and with its gradient normal there, instead of the exact distance, whose
# Newton steps dominated a compound's ground-truth time (benchmarks/RESULTS.md,
# "Figures behind code comments"). Under vmap that is
# one evaluation instead of seven; alone, each kind's own formula is faster.
# Its parameters are one (10,) vector, so that _switch can select them per kind
# like any kind's params; these name its slots: revolved (0 or 1), half
# extents b (3), ring radius c, rounding radius r, axis scales a (3) and the
# distance scale m.
_REVOLVED, _HALF, _RING, _ROUNDING, _AXIS_SCALE, _DIST_SCALE = (
    0, slice(1, 4), 4, 5, slice(6, 9), 9)
_NO_EXTENT = 1e6


def _pack_profile(revolved, half, ring, rounding, axis_scale, dist_scale):
  """_rounded_profile's (10,) parameter vector from its named slots."""
  return jnp.stack([revolved, *half, ring, rounding, *axis_scale, dist_scale])


def _rounded_profile_and_grad(p, g):
  """_rounded_profile and its gradient (d/dx, d/dy, d/dz), in closed form."""
  axis_scale, dist_scale = g[_AXIS_SCALE], g[_DIST_SCALE]
  x, y, z = [pi * ai for pi, ai in zip(p, axis_scale)]
  revolved = g[_REVOLVED] > 0.5
  rho = vec.length(x, z)
  q = (jnp.where(revolved, rho - g[_RING], x), y, jnp.where(revolved, 0.0, z))
  box, (g0, g1, g2) = _box_sdf_and_grad(q, g[_HALF])
  local = (jnp.where(revolved, g0 * x / rho, g0), g1, jnp.where(revolved, g0 * z / rho, g2))
  return (dist_scale * (box - g[_ROUNDING]),
          tuple(dist_scale * ai * gi for ai, gi in zip(axis_scale, local)))


def _rounded_profile(p, g):
  return _rounded_profile_and_grad(p, g)[0]


def _profile_params(kind):
  """Maps a kind's params (4,) to _rounded_profile's (10,)."""
  def convert(params):
    a, b, c, r = params[0], params[1], params[2], params[3]
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    far = zero + _NO_EXTENT
    slots = {
        'sphere': dict(revolved=zero, half=(zero, zero, zero), ring=zero, rounding=a),
        'box': dict(revolved=zero, half=(a, b, c), ring=zero, rounding=zero),
        'rounded_box': dict(revolved=zero, half=(a - r, b - r, c - r), ring=zero, rounding=r),
        'torus': dict(revolved=one, half=(zero, zero, far), ring=a, rounding=b),
        'capsule': dict(revolved=one, half=(zero, a, far), ring=zero, rounding=b),
        'cylinder': dict(revolved=one, half=(a, b, far), ring=zero, rounding=zero),
        'ellipsoid': dict(revolved=zero, half=(zero, zero, zero), ring=zero, rounding=one,
                          axis_scale=(1 / a, 1 / b, 1 / c),
                          dist_scale=jnp.minimum(jnp.minimum(a, b), c)),
    }[kind]
    return _pack_profile(**{'axis_scale': (one, one, one), 'dist_scale': one, **slots})
  return convert


def _cone_and_grad(p, params):
  """Exact SDF of a cone and its gradient (d/dx, d/dy, d/dz).

  In the (rho, y) profile the cone is the triangle apex A = (0, h), rim
  B = (r, -h), base centre C = (0, -h), with signed plane distances `slant`
  (line AB) and `base` (line CB). Inside, the distance is the nearer plane
  (the angles at A and B are acute, so the feet lie on the faces). Outside,
  it is the plane distance where the foot lies on a face, else the distance
  to the nearer vertex. Plane forms keep the gradient defined on the surface.
  """
  x, y, z = p
  r, h = params[0], params[1]
  rho = vec.length(x, z)
  slant_length = jnp.sqrt(4 * h * h + r * r)
  slant = (2 * h * rho + r * (y - h)) / slant_length
  base = -h - y
  # Position of the foot along AB: 0 at the apex, 1 at the rim.
  along = (r * rho - 2 * h * (y - h)) / (slant_length * slant_length)
  inside = (slant <= 0) & (base <= 0)
  off_slant = (slant > 0) & (along >= 0) & (along <= 1)
  off_base = (base > 0) & (rho <= r)
  planar = inside | off_slant | off_base
  to_apex = vec.length(rho, y - h)
  to_rim = vec.length(rho - r, y + h)
  vertex = jnp.minimum(to_apex, to_rim)
  on_slant = slant >= base
  apex = to_apex <= to_rim
  # Gradient in the profile: the plane's normal, or the unit vector from the vertex.
  d_rho = jnp.where(planar, jnp.where(on_slant, 2 * h / slant_length, 0.0),
                    jnp.where(apex, rho, rho - r) / vertex)
  d_y = jnp.where(planar, jnp.where(on_slant, r / slant_length, -1.0),
                  jnp.where(apex, y - h, y + h) / vertex)
  value = jnp.where(planar, jnp.maximum(slant, base), vertex)
  return value, (d_rho * x / rho, d_y, d_rho * z / rho)


def _cone(p, params):
  return _cone_and_grad(p, params)[0]


_ELLIPSOID_NEWTON_STEPS = 8


def _ellipsoid(p, params):
  # Exact distance via the closest point x_i = r_i^2 a_i / (t + r_i^2), where t
  # solves G(t) = sum_i (r_i a_i / (t + r_i^2))^2 - 1 = 0. G is convex and
  # decreasing for t > -min(r)^2, and G(t0) >= 0 at t0 = max_i(r_i a_i - r_i^2),
  # so Newton from t0 climbs monotonically to the root (6 steps reach float32
  # precision; 8 for margin). We work in the first octant, a = |p|; the floor
  # on a resolves the centre point.
  r = [params[i] for i in range(3)]
  r2 = [ri * ri for ri in r]
  a = [jnp.maximum(jnp.abs(pi), 1e-7) for pi in p]
  t0 = functools.reduce(jnp.maximum, [ri * ai - ri2 for ri, ai, ri2 in zip(r, a, r2)])

  def newton_step(_, t):
    u = [jnp.maximum(t + ri2, 1e-12) for ri2 in r2]
    w2 = [(ri * ai / ui) ** 2 for ri, ai, ui in zip(r, a, u)]
    g = sum(w2) - 1
    dg = -2 * sum(w2i / ui for w2i, ui in zip(w2, u))
    return jnp.maximum(t - g / dg, t0)

  t = jax.lax.fori_loop(0, _ELLIPSOID_NEWTON_STEPS, newton_step, t0)
  closest = [jax.lax.stop_gradient(ri2 * ai / jnp.maximum(t + ri2, 1e-12))
             for ri2, ai in zip(r2, a)]
  n = [ci / ri2 for ci, ri2 in zip(closest, r2)]
  n_len = vec.length(*n)
  # n . (a - closest) with n the unit outward normal at the closest point is the
  # signed distance; holding n and the closest point fixed makes its gradient
  # exactly that normal (through a = |p| it regains the octant signs).
  return sum(ni / n_len * (ai - ci) for ni, ai, ci in zip(n, a, closest))


def _superquadric_and_grad(p, params):
  """A superquadric's SDF bound and its gradient (d/dx, d/dy, d/dz).

  N(p) = ||p / r||_e is a norm of diag(1/r) p; for e >= 2 the l_e norm is at
  most the l_2 norm, so |N(p) - N(q)| <= |p - q| / min(r) and
  min(r) (N - 1) is 1-Lipschitz: a conservative bound (exact only for a
  sphere), zero exactly on the surface, whose gradient is normal there.
  With u_i = |p_i| / r_i and T = sum u_i^e, dN/dp_i = N / T u_i^e / u_i
  sign(p_i) / r_i.
  """
  r, e = params[:3], params[3]
  u = [jnp.maximum(jnp.abs(pi) / ri, 1e-12) for pi, ri in zip(p, r)]
  powers = [jnp.exp(e * jnp.log(ui)) for ui in u]
  total = jnp.maximum(sum(powers), 1e-30)
  n = jnp.exp(jnp.log(total) / e)
  min_r = jnp.min(r)
  common = min_r * n / total
  return min_r * (n - 1), tuple(
      common * wi / ui * jnp.sign(pi) / ri for pi, ri, ui, wi in zip(p, r, u, powers))


def _superquadric(p, params):
  return _superquadric_and_grad(p, params)[0]


def _identity(params):
  return params


_SDFS = (_sphere, _box, _rounded_box, _torus, _capsule, _cylinder, _cone,
         _ellipsoid, _superquadric)
# Per kind in a mix of kinds: (formula, its parameters from the kind's params).
_MIXED_SDFS = tuple((_rounded_profile, _profile_params(k)) for k in KINDS[:6]) + (
    (_cone, _identity), (_rounded_profile, _profile_params('ellipsoid')),
    (_superquadric, _identity))
# Kinds whose SDF is a bound: always, and in a mix of kinds.
_BOUND_KINDS = (KINDS.index('superquadric'),)
_MIXED_BOUND_KINDS = tuple(KINDS.index(k) for k in ('ellipsoid', 'superquadric'))


def _sdf_table(kinds):
  """Per kind (formula, params map) for a shape of the static `kinds`."""
  if len(kinds) == 1:
    return tuple((f, _identity) for f in _SDFS)
  return _MIXED_SDFS


def is_exact(kinds) -> bool:
  """Whether shape_sdf is the exact distance for shapes of the static `kinds`
  (else it is a 1-Lipschitz bound, exact only in its zero set and normals)."""
  bounds = _BOUND_KINDS if len(kinds) == 1 else _MIXED_BOUND_KINDS
  return not set(kinds) & set(bounds)


# Valid sizes for every kind. Under vmap, lax.switch evaluates all branches and
# selects; the unselected ones get these sizes so their gradients stay finite.
# numpy, not jnp: an array at import would start JAX's backend before
# jax.distributed.initialize can run.
_SAFE_PARAMS = np.array([
    [0.5, 0.0, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.0],
    [0.5, 0.5, 0.5, 0.1],
    [0.4, 0.1, 0.0, 0.0],
    [0.25, 0.25, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0],
    [0.5, 0.5, 0.0, 0.0],
    [0.5, 0.5, 0.5, 0.0],
    [0.5, 0.5, 0.5, 2.0],
], np.float32)


# ------------------------------------------------------- support functions
# h_K(v) = max_{x in K} <x, v> for object-frame directions v (..., 3). A
# nonconvex torus has the support function of its convex hull, which gives the
# same bounding box.


def _sphere_support(v, params):
  return params[0] * vec.norm(v)


def _box_support(v, params):
  return jnp.sum(params[:3] * jnp.abs(v), axis=-1)


def _rounded_box_support(v, params):
  r = params[3]
  return jnp.sum((params[:3] - r) * jnp.abs(v), axis=-1) + r * vec.norm(v)


def _torus_support(v, params):
  return params[0] * vec.length(v[..., 0], v[..., 2]) + params[1] * vec.norm(v)


def _capsule_support(v, params):
  return params[0] * jnp.abs(v[..., 1]) + params[1] * vec.norm(v)


def _cylinder_support(v, params):
  return params[0] * vec.length(v[..., 0], v[..., 2]) + params[1] * jnp.abs(v[..., 1])


def _cone_support(v, params):
  r, h = params[0], params[1]
  return jnp.maximum(r * vec.length(v[..., 0], v[..., 2]) - h * v[..., 1], h * v[..., 1])


def _ellipsoid_support(v, params):
  return vec.norm(params[:3] * v)


def _superquadric_support(v, params):
  # The dual norm of the l_e norm is the l_e* norm, 1/e + 1/e* = 1.
  e = params[3]
  dual = e / (e - 1)
  w = jnp.maximum(jnp.abs(params[:3] * v), 1e-20)
  return jnp.exp(jnp.log(jnp.sum(jnp.exp(dual * jnp.log(w)), axis=-1)) / dual)


_SUPPORTS = tuple((f, _identity) for f in (
    _sphere_support, _box_support, _rounded_box_support, _torus_support, _capsule_support,
    _cylinder_support, _cone_support, _ellipsoid_support, _superquadric_support))


def _switch(shape: Shape, fns, x, kinds=ALL_KINDS):
  """fn(x, to_params(params)) for (fn, to_params) = fns[shape.kind].

  `kinds` (static) lists the kinds the shape may have. Under vmap every
  branch is evaluated, one per distinct fn among them (kinds sharing a fn
  share its evaluation), so short lists are faster; a branch the shape's kind
  does not use gets safe sizes, so that its gradients stay finite.
  """
  groups = {}
  for k in kinds:
    groups.setdefault(fns[k][0], []).append(k)

  def branch(fn, members):
    params = fns[members[0]][1](jnp.asarray(_SAFE_PARAMS[members[0]]))
    for k in members:
      params = jnp.where(shape.kind == k, fns[k][1](shape.params), params)
    return lambda x: fn(x, params)

  branches = [branch(fn, members) for fn, members in groups.items()]
  if len(branches) == 1:
    return branches[0](x)
  index = sum(jnp.where(shape.kind == k, i, 0)
              for i, members in enumerate(groups.values()) for k in members)
  return jax.lax.switch(index, branches, x)


def _local_components(shape: Shape, points):
  """Object-frame coordinates (x, y, z), each (...,), of world points (..., 3):
  R^T (p - t) / s, written out by component (see vec.py)."""
  q = [(points[..., i] - shape.translation[i]) / shape.scale for i in range(3)]
  return tuple(sum(q[i] * shape.rotation[i, j] for i in range(3)) for j in range(3))


# Closed-form gradients, (value, (d/dx, d/dy, d/dz)), of the SDFs the CSG
# domains evaluate most; autodiff of these cost several times their value on
# CPU (benchmarks/render_throughput.py; benchmarks/RESULTS.md).
_WITH_GRAD = {_rounded_profile: _rounded_profile_and_grad, _cone: _cone_and_grad,
              _superquadric: _superquadric_and_grad}


def _local_sdf_and_grad(p, params, sdf_fn):
  """Value and gradient of one primitive at object-frame components
  p = (x, y, z), stacked: (4, ...) = (value, d/dx, d/dy, d/dz).

  In closed form where _WITH_GRAD has it, else by autodiff. By component,
  stacked, and behind an optimisation barrier: gradients as (..., 3) arrays,
  or left to XLA to fuse into their uses, ran much slower on CPU
  (benchmarks/RESULTS.md, "Figures behind code comments")."""
  if sdf_fn in _WITH_GRAD:
    d, grad = _WITH_GRAD[sdf_fn](p, params)
  else:
    d, vjp = jax.vjp(lambda *q: sdf_fn(q, params), *p)
    grad = vjp(jnp.ones_like(d))
  return jax.lax.optimization_barrier(jnp.stack((d,) + tuple(grad)))


# ----------------------------------------------------------------- public


def shape_sdf(shape: Shape, points, kinds=ALL_KINDS):
  """World-space signed distance (negative inside) of (..., 3) points -> (...,).

  1-Lipschitz (exact but for superquadrics). Works for a single shape under
  jit (one branch runs) and for a vmapped batch of shapes of the (static)
  `kinds`.
  """
  return shape.scale * _switch(shape, _sdf_table(kinds), _local_components(shape, points),
                               kinds)


def shape_sdf_and_grad(shape: Shape, points, kinds=ALL_KINDS):
  """shape_sdf and its world-frame gradient: (..., 3) -> ((...,), (..., 3)).

  Differentiates inside each branch, which compiles faster than
  differentiating through lax.switch.
  """
  table = _sdf_table(kinds)
  with_grad = {fn: functools.partial(_local_sdf_and_grad, sdf_fn=fn) for fn, _ in table}
  fns = [(with_grad[fn], to_params) for fn, to_params in table]
  d, *local_grad = _switch(shape, fns, _local_components(shape, points), kinds)
  # d/dp [s f(R^T (p - t) / s)] = R grad f.
  grad = [sum(shape.rotation[i, j] * local_grad[j] for j in range(3)) for i in range(3)]
  return shape.scale * d, jnp.stack(grad, axis=-1)


def shape_normal(shape: Shape, points, kinds=ALL_KINDS):
  """Unit outward normals (..., 3) in the world frame: normalised SDF gradient."""
  _, grad = shape_sdf_and_grad(shape, points, kinds)
  return vec.normalize(grad)


def shape_aabb(shape: Shape, kinds=ALL_KINDS):
  """Exact world axis-aligned bounding box -> (lo (3,), hi (3,)).

  From support functions: h_world(u) = u . t + s h_K(R^T u), and R^T e_i is
  row i of R.
  """
  dirs = shape.rotation
  hi = shape.translation + shape.scale * _switch(shape, _SUPPORTS, dirs, kinds)
  lo = shape.translation - shape.scale * _switch(shape, _SUPPORTS, -dirs, kinds)
  return lo, hi


def normalize_shape(shape: Shape, kinds=ALL_KINDS) -> Shape:
  """Rescale and translate so the AABB has longest side 1 and is centred at 0."""
  lo, hi = shape_aabb(shape, kinds)
  centre = (lo + hi) / 2
  size = jnp.max(hi - lo)
  return shape._replace(scale=shape.scale / size,
                        translation=(shape.translation - centre) / size)
