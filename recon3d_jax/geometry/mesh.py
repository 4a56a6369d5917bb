"""Triangle meshes in pure jnp: exact ray casting, inside tests, surface sampling.

A mesh is a triangle soup `triangles` (F, 3, 3): F faces, 3 vertices, xyz, wound
counter-clockwise seen from outside (outward normals), closed (watertight).
Conventions are those of docs/DESIGN.md section 3 (see camera.py): depth is z-depth
along the optical axis, normals are unit outward face normals in the OpenCV
camera frame, background pixels have depth 0 and normal 0.

Padding. Degenerate faces whose three vertices are the same mesh vertex are
inert everywhere here: their edge vectors b - a and c - a are exactly zero, so
they have zero area (never sampled), and all their edge functions (below) are
exactly zero, so no ray or line ever meets them. They leave the bounding box
alone. `pad_triangles` uses them so that meshes of different sizes share a few
compiled shapes, and every chunked loop below pads its input the same way.

Watertightness (after Woop, Benthin and Wald, JCGT 2013). Every query is a
line; in a 2D frame where the line is the origin (the image plane seen from
the eye, for rays; the plane across a grid line, for inside tests) it meets a
face iff the face's three 2D edge functions share a sign. The faces of a
shared edge must see exactly opposite values for it, or a line can slip
between them: eagerly x*y - y*x-like values are exact negatives, but compiled
code fuses multiplies into adds (FMA) differently in different copies of the
same expression, and then both faces can reject the line. Hence, by
construction rather than by luck of rounding: every vertex gets its 2D
coordinates from per-vertex arithmetic that FMA cannot change (`_to_screen`,
then one subtraction of the query), and `_cross` evaluates each edge function
from exact products of 12-bit halves, summed so that swapping the endpoints
negates every intermediate: the two faces get exactly opposite bits in every
compiled copy. A value that comes out exactly 0 (a line on an edge or through
a vertex) counts for both faces when ray casting, harmless for the nearest
hit; parity counts (inside tests, voxels) instead break such ties
one-sidedly, by the sign the edge function takes when the query moves by an
infinitesimal (eps, eps^2), opposite for the two faces: one crossing, not 0
or 2.

Acceleration (exactness is untouched: culling only skips (query, face) pairs
that provably cannot meet; every remaining pair runs the same exact test).
Queries are rays through pixel centres, grid lines (voxels) or points, and
each meets only faces whose 2D bounding box, across the query direction,
contains it. Fast path ("binned"): a 2D grid of cells over the queries, each
face listed in the cells its box overlaps (`_bin_boxes`), a static budget of
(face, cell) pairs; each query tests its cell's faces only, typically a few.
Long thin or huge faces can overflow the budget; then the slow path
("tiled") runs instead (lax.cond): the queries in tiles and the faces in
chunks, each tile testing the chunks whose bounding box overlaps it
(`_fold_candidates`); exact as well, a few times slower.
"""
import jax
import jax.numpy as jnp

from recon3d_jax.geometry import camera as camera_lib
from recon3d_jax.geometry import vec

# Culling granularity (see `_fold_candidates`): faces per chunk, pixels per
# side of a square ray tile, query points per tile, grid lines per side of a
# voxel line tile. Small enough to cull well, large enough that each loop step
# does real work (measured in benchmarks/mesh_render.py).
CHUNK_SIZE = 64
_RAY_TILE = 8
_POINT_TILE = 64
_LINE_TILE = 8
# Binned fast path: (face, cell) pair budget per face and per cell, (point,
# face) pair budget per point of `contains`. The fast path's cost grows with
# the budgets; the slow path's is several times larger.
_PAIRS_PER_ITEM = 4
_PAIRS_PER_POINT = 64
# Culling margin in unit-cube coordinates (and image-plane tangents), far above
# float32 rounding of the hit tests, far below any feature size.
_CULL_MARGIN = 1e-5


def pad_triangles(triangles, num_faces: int):
  """Pads (F, 3, 3) triangles to (num_faces, 3, 3) with inert degenerate faces
  at the first vertex (see the module docstring). num_faces >= F is static."""
  extra = num_faces - triangles.shape[0]
  if extra < 0:
    raise ValueError(f"num_faces={num_faces}: expected >= the {triangles.shape[0]} faces")
  filler = jnp.broadcast_to(triangles[0, 0], (extra, 3, 3)).astype(triangles.dtype)
  return jnp.concatenate([triangles, filler])


def _chunked(triangles, chunk_size: int):
  """(F, 3, 3) -> (ceil(F / chunk), chunk, 3, 3), padded with inert faces."""
  num_chunks = -(-triangles.shape[0] // chunk_size)
  padded = pad_triangles(triangles, num_chunks * chunk_size)
  return padded.reshape(num_chunks, chunk_size, 3, 3)


def normalize_triangles(triangles):
  """Maps (F, 3, 3) triangles into the unit cube: axis-aligned bounding box
  centred at the origin with longest side 1."""
  lo = jnp.min(triangles, axis=(0, 1))
  hi = jnp.max(triangles, axis=(0, 1))
  return (triangles - (lo + hi) / 2) / jnp.max(hi - lo)


def face_cross(triangles):
  """(..., 3, 3) -> (..., 3) cross products (b - a) x (c - a): outward, |.| = 2 area."""
  a, b, c = triangles[..., 0, :], triangles[..., 1, :], triangles[..., 2, :]
  return jnp.cross(b - a, c - a)


def face_normals(triangles):
  """(F, 3, 3) -> (F, 3) unit outward normals; 0 for degenerate faces."""
  n = face_cross(triangles)
  length = jnp.linalg.norm(n, axis=-1, keepdims=True)
  return jnp.where(length > 0, n / jnp.where(length > 0, length, 1.0), 0.0)


def face_areas(triangles):
  """(F, 3, 3) -> (F,) triangle areas."""
  return 0.5 * jnp.linalg.norm(face_cross(triangles), axis=-1)


def _chunk_boxes(chunks):
  """(K, C, 3, 3) face chunks -> lo, hi (K, 3): bounding box of each chunk's faces.

  Inert padding faces are left out (they can never be hit or crossed), so a chunk
  of padding only gets an empty box (lo = inf > hi = -inf) and is never visited.
  """
  inert = jnp.all(chunks == chunks[:, :, :1], axis=(2, 3))[:, :, None, None]  # (K, C, 1, 1)
  lo = jnp.min(jnp.where(inert, jnp.inf, chunks), axis=(1, 2))
  hi = jnp.max(jnp.where(inert, -jnp.inf, chunks), axis=(1, 2))
  return lo, hi


def _boxes_overlap(tile_lo, tile_hi, chunk_lo, chunk_hi):
  """(T, D) and (K, D) boxes -> (T, K) bool: the boxes overlap, with a margin.

  The margin makes culling conservative beyond float rounding: a skipped chunk
  could not have produced a hit even with the hit tests' rounding errors.
  """
  below = tile_lo[:, None] <= chunk_hi[None] + _CULL_MARGIN
  above = chunk_lo[None] <= tile_hi[:, None] + _CULL_MARGIN
  return jnp.all(below & above, axis=-1)


def _fold_candidates(fold, init, tiles, chunks, candidate):
  """Folds each tile over the face chunks it may meet, skipping all the others.

  This is the culling loop of the ray caster and the inside tests: for tile t,
  carry_t = fold(carry_t, tiles[t], chunks[k], k) for the k with candidate[t, k]
  in increasing order. Tiles run one after the other (lax.map) and each loops
  over its own candidate list only (a while loop with a traced trip count), so
  the work is the number of (tile, candidate chunk) pairs, not tiles x chunks.

  Args:
    fold: (carry, tile, chunk, k) -> carry, for one tile and one chunk.
    init: pytree of (T, ...) initial carries.
    tiles: pytree of (T, ...) per-tile inputs.
    chunks: pytree of (K, ...) per-chunk inputs.
    candidate: (T, K) bool.

  Returns:
    the pytree of (T, ...) final carries.
  """
  num_chunks = candidate.shape[1]

  def one_tile(args):
    carry, tile, row = args
    order = jnp.nonzero(row, size=num_chunks, fill_value=0)[0]  # Candidates first, in order.

    def body(i, carry):
      k = order[i]
      return fold(carry, tile, jax.tree.map(lambda c: c[k], chunks), k)

    return jax.lax.fori_loop(0, jnp.sum(row, dtype=jnp.int32), body, carry)

  return jax.lax.map(one_tile, (init, tiles, candidate))


def _split(x):
  """(...) float32 -> (hi, lo) (...) with x = hi + lo exactly, each of at most 12
  significant bits: a product of two parts is exact in float32."""
  hi = jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=11)
  return hi, x - hi  # Exact: hi is x rounded to 12 bits (Sterbenz).


def _cross(p, q):
  """2D cross product p_x q_y - p_y q_x of points given as (x, y) pairs of `_split`
  parts, (...) float32, exactly antisymmetric: _cross(q, p) == -_cross(p, q).

  Every product of parts is exact and each sum pairs terms that trade places
  when p and q do (float addition commutes), so swapping the points negates
  every intermediate; and fusing a multiply into an add (FMA) cannot change an
  exact product, so every compiled copy computes the same bits. The sign is
  the exact sign unless |p x q| is below ~2^-33 of |p_x q_y| (the rounding of
  the low-order partial sums).
  """
  (pxh, pxl), (pyh, pyl) = p
  (qxh, qxl), (qyh, qyl) = q
  high = pxh * qyh - pyh * qxh  # Exact when the two products are within a factor 2.
  middle = (pxh * qyl + pxl * qyh) - (pyh * qxl + pyl * qxh)
  return high + (middle + (pxl * qyl - pyl * qxl))


def _edge_functions(x, y):
  """2D edge functions of faces about the origin, exactly opposite on shared edges.

  w[k] is the cross product of the 2D vertices k + 1, k + 2 (mod 3): the face's
  barycentric weight of vertex k up to a common factor; the origin is in the
  face iff the three share a sign. The faces of a shared edge run it in
  opposite directions, and `_cross` is exactly antisymmetric, so they get
  exactly opposite values: no query can pass between them.

  Args:
    x, y: per-vertex 2D coordinates relative to the query, 3-tuples of (...)
      arrays; each a subtraction of the query from a per-vertex value (so a
      vertex has the same coordinates in every face).

  Returns:
    w: 3-tuple of (...) edge functions.
    sign: 3-tuple of (...) int32 in {-1, 0, 1}: the sign of w, a 0 broken by
      moving the origin to (eps, eps^2) (the same tie-break, negated, for the
      other face); 0 only for an edge whose endpoints coincide in 2D.
  """
  parts = [(_split(x[v]), _split(y[v])) for v in range(3)]
  w, sign = [], []
  for k in range(3):
    i, j = (k + 1) % 3, (k + 2) % 3
    value = _cross(parts[i], parts[j])
    # d/d(eps) of the edge function at the origin + (eps, eps^2): y_i - y_j, then x_j - x_i.
    tie = jnp.where(y[i] != y[j], jnp.sign(y[i] - y[j]), jnp.sign(x[j] - x[i]))
    w.append(value)
    sign.append(jnp.where(value != 0, jnp.sign(value), tie).astype(jnp.int32))
  return tuple(w), tuple(sign)


def _vertex_rows(rows, *queries):
  """(9, ...) face rows -> 3-tuples (per vertex) of (x, y, z) (...) coordinates,
  with leading unit axes so that they broadcast against the (...) queries."""
  extra = max(jnp.ndim(q) for q in queries) - (rows.ndim - 1)
  rows = rows.reshape(rows.shape[:1] + (1,) * max(extra, 0) + rows.shape[1:])
  return tuple(tuple(rows[3 * v + c] for c in range(3)) for v in range(3))


def _to_screen(camera: camera_lib.Camera, triangles):
  """(F, 3, 3) world faces -> (F, 3, 3) per-vertex (x / z, y / z, 1 / z) of the
  camera frame: image-plane position and inverse depth.

  The rotation sums exact products of split numbers (`_split`), so a vertex
  gets the same screen coordinates in every face and every compiled copy.
  """
  p = tuple(_split(c) for c in jnp.moveaxis(triangles - camera.position, -1, 0))
  r = camera.rotation
  cam = [sum((p[k][0] * rh + (p[k][0] * rl + p[k][1] * rh)) + p[k][1] * rl
             for k, (rh, rl) in enumerate(zip(*_split(r[i])))) for i in range(3)]
  return jnp.stack([cam[0] / cam[2], cam[1] / cam[2], 1 / cam[2]], axis=-1)


def _ray_hits(rows, u, v):
  """Z-depths of camera-frame rays (u, v, 1) from the eye on faces, broadcasting.

  The watertight test of Woop et al. with the eye's perspective projection as
  the shear (all rays share the eye): the ray meets a face iff its image-plane
  point is in the face's image, i.e. the `_edge_functions` of the projected
  vertices relative to it share a sign. Those weights interpolate the inverse
  depth (perspective-correct). A weight that comes out 0 counts for both faces
  of its edge, so rays on shared edges and vertices hit at least one face.

  Args:
    rows: (9, ...) faces as screen-coordinate rows (`_to_screen`: x / z, y / z,
      1 / z of vertex a, then b, then c).
    u, v: (...) the rays' points on the image plane z = 1, broadcasting against rows[0].

  Returns:
    (...) z-depth of the hit, inf on a miss.
  """
  a, b, c = _vertex_rows(rows, u, v)
  w, _ = _edge_functions((a[0] - u, b[0] - u, c[0] - u), (a[1] - v, b[1] - v, c[1] - v))
  det = w[0] + w[1] + w[2]
  inside = (((w[0] >= 0) & (w[1] >= 0) & (w[2] >= 0)) | ((w[0] <= 0) & (w[1] <= 0) & (w[2] <= 0))
            ) & (det != 0)
  inverse_depth = (w[0] * a[2] + w[1] * b[2] + w[2] * c[2]) / jnp.where(det != 0, det, 1.0)
  return jnp.where(inside & (inverse_depth > 0), 1 / inverse_depth, jnp.inf)


def _bin_boxes(lo, hi, origin, cell: float, grid: int, budget: int):
  """Lists the (box, cell) pairs of a grid x grid square grid that overlap.

  Cell (i, j) is origin + cell * ([i, i + 1) x [j, j + 1)); boxes reaching
  beyond the grid are clamped into its border cells (queries are clamped the
  same way), empty boxes (lo > hi, the padding) get no cell. The pairs of box
  f fill slots [end_f - count_f, end_f), so the lists have a static size.

  Args:
    lo, hi: (F, 2) boxes.
    origin: (2,) corner of cell (0, 0).
    cell: cell side.
    grid: static cells per side.
    budget: static number of pair slots.

  Returns:
    box: (budget,) int32 box of each pair; where: (budget,) int32 flat cell
    i * grid + j, grid^2 on unused slots; total: () int32 number of pairs, the
    lists are incomplete where total > budget.
  """
  first = jnp.clip(jnp.floor((lo - _CULL_MARGIN - origin) / cell), 0, grid - 1).astype(jnp.int32)
  last = jnp.clip(jnp.floor((hi + _CULL_MARGIN - origin) / cell), 0, grid - 1).astype(jnp.int32)
  span = jnp.where(jnp.all(lo <= hi, axis=1, keepdims=True), last - first + 1, 0)  # (F, 2)
  box, rank, total = _enumerate(span[:, 0] * span[:, 1], budget)
  columns = jnp.maximum(span[box, 1], 1)
  i, j = first[box, 0] + rank // columns, first[box, 1] + rank % columns
  return box, jnp.where(rank >= 0, i * grid + j, grid * grid), total


def _enumerate(count, budget: int):
  """Static-size enumeration of variable-size lists: item n owns count[n] slots.

  Args:
    count: (N,) int32 list lengths.
    budget: static number of slots (at least 1 are made).

  Returns:
    owner: (budget,) int32 item of each slot; rank: (budget,) int32 position in
    the item's list, -1 on unused slots; total: () int32 slots needed (the
    lists are incomplete where total > budget).
  """
  end = jnp.cumsum(count)
  slot = jnp.arange(max(budget, 1), dtype=jnp.int32)  # At least one slot: no empty gathers.
  owner = jnp.minimum(jnp.searchsorted(end, slot, side="right"), count.shape[0] - 1)
  owner = owner.astype(jnp.int32)
  rank = jnp.where(slot < end[-1], slot - (end[owner] - count[owner]), -1)
  return owner, rank, end[-1]


def _face_boxes(triangles):
  """(F, 3, 3) -> lo, hi (F, 3) face bounding boxes; empty (inf, -inf) for inert faces."""
  inert = jnp.all(triangles == triangles[:, :1], axis=(1, 2))[:, None]
  return (jnp.where(inert, jnp.inf, jnp.min(triangles, axis=1)),
          jnp.where(inert, -jnp.inf, jnp.max(triangles, axis=1)))


def _tile_side(size: int, largest: int) -> int:
  """The largest power of two <= `largest` dividing `size` (static ints)."""
  side = largest
  while size % side:
    side //= 2
  return side


def _tiled_hits(screen, plane, chunk_size: int):
  """Slow path of `render`: nearest hits of the pixel rays, square pixel tiles
  folding over the face chunks whose image-plane box overlaps them.

  Args:
    screen: (F, 3, 3) faces in screen coordinates (`_to_screen`).
    plane: (S,) pixel centres' coordinate on the image plane z = 1 (u of column
      j, v of row i).
    chunk_size: static faces per chunk.

  Returns:
    depth: (S * S,) nearest z-depth, inf on misses; face: (S * S,) int32 hit
    face, -1 on misses; pixels in row-major order.
  """
  size = plane.shape[0]
  side = _tile_side(size, _RAY_TILE)
  n = size // side
  u, v = jnp.meshgrid(plane, plane, indexing="xy")
  # (S, S, 2) -> (tiles, side * side, 2), tiles in row-major order.
  tiles = jnp.stack([u, v], axis=-1).reshape(n, side, n, side, 2).transpose(0, 2, 1, 3, 4).reshape(
      n * n, side * side, 2)
  chunks = _chunked(screen, chunk_size)
  rows = chunks.reshape(chunks.shape[0], chunk_size, 9).transpose(0, 2, 1)  # (K, 9, C)
  chunk_lo, chunk_hi = _chunk_boxes(chunks)
  candidate = _boxes_overlap(jnp.min(tiles, axis=1), jnp.max(tiles, axis=1),
                             chunk_lo[:, :2], chunk_hi[:, :2])

  def fold(carry, rays, tri, k):
    best_depth, best_face = carry
    hits = _ray_hits(tri, rays[:, 0:1], rays[:, 1:2])  # (rays, faces)
    local = jnp.argmin(hits, axis=1).astype(jnp.int32)
    depth = jnp.take_along_axis(hits, local[:, None], axis=1)[:, 0]
    closer = depth < best_depth
    return (jnp.where(closer, depth, best_depth),
            jnp.where(closer, k * chunk_size + local, best_face))

  init = (jnp.full(tiles.shape[:2], jnp.inf, screen.dtype),
          jnp.full(tiles.shape[:2], -1, jnp.int32))
  depth, face = _fold_candidates(fold, init, tiles, rows, candidate)
  return tuple(x.reshape(n, n, side, side).swapaxes(1, 2).reshape(-1) for x in (depth, face))


def render(triangles, camera: camera_lib.Camera, image_size: int, chunk_size: int = CHUNK_SIZE,
           pairs_per_item: int = _PAIRS_PER_ITEM):
  """Ray casts a mesh from a pinhole camera (one ray through each pixel centre).

  Rays are cast in screen coordinates (`_to_screen`): the ray of the pixel at
  (u, v) on the image plane z = 1 of the camera frame meets a face iff (u, v)
  is in the face's image (`_ray_hits`, watertight). Fast path: pixels are the
  cells; each face is listed with the pixels whose cell its image-plane box
  overlaps, each (face, pixel) pair runs the test, and a z-buffer (scatter-min
  of the depth, then of the face index among the nearest) keeps the nearest
  hit. Slow path (`_tiled_hits`) when the pairs overflow their budget of
  pairs_per_item * (F + H * W). Faces that are close in space should be close
  in order (meshes.load_meshes sorts them along a Morton curve) for the slow
  path's chunks; the result does not depend on it.

  Args:
    triangles: (F, 3, 3) float32 world-frame mesh in front of the camera (every
      vertex at camera-frame z > 0); a vertex shared by faces must be
      bit-identical in each of them.
    camera: the Camera.
    image_size: static int H = W.
    chunk_size: static faces per chunk of the slow path.
    pairs_per_item: static pair budget per face and per pixel of the fast path.

  Returns:
    dict with depth (H, W) z-depth, 0 on the background; normal (H, W, 3) unit
    outward face normals in the camera frame, 0 on the background; mask (H, W)
    bool foreground; points (H, W, 3) world-frame hit points, 0 on the
    background.
  """
  num_faces, num_pixels = triangles.shape[0], image_size * image_size
  screen = _to_screen(camera, triangles)
  # Pixel (i, j) centre is at tan_half * ((i, j) + 0.5) / S * 2 - 1) on the image plane.
  tan_half = jnp.tan(jnp.deg2rad(camera.fov_deg) / 2)
  plane = ((jnp.arange(image_size, dtype=screen.dtype) + 0.5) / image_size * 2 - 1) * tan_half
  lo, hi = _face_boxes(screen)  # Image-plane boxes in (y, x) = (row, column) order.
  face, pixel, total = _bin_boxes(
      lo[:, 1::-1], hi[:, 1::-1], jnp.stack([-tan_half, -tan_half]),
      2 * tan_half / image_size, image_size, pairs_per_item * (num_faces + num_pixels))

  def binned(_):
    used = pixel < num_pixels
    row, column = jnp.divmod(jnp.minimum(pixel, num_pixels - 1), image_size)
    depth = jnp.where(used, _ray_hits(screen.reshape(num_faces, 9).T[:, face], plane[column],
                                      plane[row]), jnp.inf)
    best = jnp.full(num_pixels + 1, jnp.inf, depth.dtype).at[pixel].min(depth)
    nearest = jnp.isfinite(depth) & (depth == best[pixel])
    best_face = jnp.full(num_pixels + 1, num_faces, jnp.int32).at[pixel].min(
        jnp.where(nearest, face, num_faces))
    return best[:num_pixels], jnp.where(best_face < num_faces, best_face, -1)[:num_pixels]

  def tiled(_):
    return _tiled_hits(screen, plane, chunk_size)

  depth, face = jax.lax.cond(total <= pixel.shape[0], binned, tiled, None)
  hit = face >= 0
  depth = jnp.where(hit, depth, 0.0)
  u, v = jnp.meshgrid(plane, plane, indexing="xy")
  on_ray = jnp.stack([u.reshape(-1), v.reshape(-1), jnp.ones(num_pixels, screen.dtype)], axis=-1)
  normal_world = face_normals(triangles)[jnp.maximum(face, 0)]
  shape = (image_size, image_size)
  return dict(
      depth=depth.reshape(shape),
      normal=jnp.where(hit[:, None], camera_lib.rotate_to_camera(camera, normal_world),
                       0.0).reshape(shape + (3,)),
      mask=hit.reshape(shape),
      points=jnp.where(hit[:, None], camera.position + vec.matmul(depth[:, None] * on_ray,
                                                                  camera.rotation),
                       0.0).reshape(shape + (3,)))


def _line_crossings(tri, y, z):
  """Where lines parallel to the x axis cross faces.

  A line (y, z) meets a face iff the watertight 2D edge functions
  (`_edge_functions`) of the face's (y, z) vertices relative to the line share
  a sign, zeros resolved one-sidedly so that a line through a shared edge or
  vertex crosses exactly one face there; the crossing's x is the mix of the
  vertices' x with those weights (barycentric up to a common factor), left as
  a fraction: callers that only compare x skip the division.

  Args:
    tri: (9, ...) faces as coordinate rows (ax, ay, az, bx, by, bz, cx, cy, cz):
      structure of arrays, so every per-pair operation is contiguous.
    y, z: (...) the lines, broadcasting against the faces ((Q, 1) against
      (9, C) faces: all pairs; (B,) against (9, B): B pairs).

  Returns:
    numerator, det: broadcast shape, with crossing x = numerator / det; det = 0 where a
    line misses a face.
  """
  a, b, c = _vertex_rows(tri, y, z)
  w, sign = _edge_functions((a[1] - y, b[1] - y, c[1] - y), (a[2] - z, b[2] - z, c[2] - z))
  det = w[0] + w[1] + w[2]
  crossed = (sign[0] == sign[1]) & (sign[1] == sign[2]) & (sign[0] != 0) & (det != 0)
  return w[0] * a[0] + w[1] * b[0] + w[2] * c[0], jnp.where(crossed, det, 0.0)


def _cycled(axis: int):
  """Coordinate order that puts `axis` first (lines along `axis` become lines along x)."""
  return [(axis + k) % 3 for k in range(3)]


def _rows_and_boxes(triangles, axis: int, chunk_size: int):
  """(F, 3, 3) -> (K, 9, chunk) coordinate rows and (K, 3) lo, hi chunk boxes,
  with coordinates cycled by `_cycled(axis)`."""
  chunks = _chunked(triangles[..., _cycled(axis)], chunk_size)
  rows = chunks.reshape(chunks.shape[0], chunk_size, 9).transpose(0, 2, 1)
  return rows, _chunk_boxes(chunks)


# Ray parity takes the majority of three directions: ties on edges and vertices
# count one crossing, but an edge function that rounds to 0 without being 0
# (below ~2^-33 of its products) breaks its tie blindly, which at a vertex can
# count a crossing twice or not at all.
_PARITY_AXES = (0, 1, 2)


def _morton_order_2d(y, z, bits: int = 8):
  """(P,) coordinates -> (P,) int32 permutation that sorts points along a 2D
  Morton (Z-order) curve over their bounding box: nearby points, nearby ranks."""
  def cells(v):
    lo, hi = jnp.min(v), jnp.max(v)
    q = (v - lo) / jnp.maximum(hi - lo, 1e-12) * (2 ** bits)
    return jnp.clip(q, 0, 2 ** bits - 1).astype(jnp.int32)

  qy, qz = cells(y), cells(z)
  code = sum(((qy >> b) & 1) << (2 * b + 1) | ((qz >> b) & 1) << (2 * b) for b in range(bits))
  return jnp.argsort(code, stable=True).astype(jnp.int32)


def _tiled_parity(triangles, points, axis: int, chunk_size: int):
  """Slow path of `contains`: (P, 3) -> (P,) int32 crossing parity of rays from
  the points along +axis.

  The points are sorted along a Morton curve across the rays (y, z for +x) and
  cut into tiles; a tile folds over the chunks whose (y, z) box overlaps its
  own and whose box reaches beyond its smallest x.
  """
  num_tiles = -(-points.shape[0] // _POINT_TILE)
  # Pad to whole tiles with copies of the first point (their answers are dropped).
  p = jnp.concatenate([points, jnp.broadcast_to(
      points[:1], (num_tiles * _POINT_TILE - points.shape[0], 3))])[:, _cycled(axis)]
  rows, (chunk_lo, chunk_hi) = _rows_and_boxes(triangles, axis, chunk_size)
  order = _morton_order_2d(p[:, 1], p[:, 2])
  tiles = p[order].reshape(num_tiles, _POINT_TILE, 3)
  tile_lo, tile_hi = jnp.min(tiles, axis=1), jnp.max(tiles, axis=1)
  tile_hi = tile_hi.at[:, 0].set(jnp.inf)  # Along the ray only the nearest point matters.

  def fold(count, tile, tri, k):
    del k
    return count + jnp.sum(_crossed_ahead(tri, tile.T[:, :, None]), axis=1, dtype=jnp.int32)

  count = _fold_candidates(fold, jnp.zeros(tiles.shape[:2], jnp.int32), tiles, rows,
                           _boxes_overlap(tile_lo, tile_hi, chunk_lo, chunk_hi))
  parity = jnp.zeros(p.shape[:1], jnp.int32).at[order].set(count.reshape(-1) % 2)
  return parity[:points.shape[0]]


def _crossed_ahead(tri, p):
  """Whether lines along x from points p = (x, y, z) rows cross faces ahead (x' > x).

  Args:
    tri: (9, ...) coordinate rows of faces (see `_line_crossings`).
    p: (3, ...) points, broadcasting against the faces.

  Returns:
    (...) bool.
  """
  numerator, det = _line_crossings(tri, p[1], p[2])
  x_det = p[0] * det  # x > p_x without dividing by det.
  return ((det > 0) & (numerator > x_det)) | ((det < 0) & (numerator < x_det))


def _point_grid(num_faces: int) -> int:
  """Cells per side of the `contains` grid: about 4 faces per cell of a
  sphere-like mesh (half of them on each side), 8 to 64 (static)."""
  return min(64, max(8, int(num_faces ** 0.5) // 2))


def _binned_parity(rows, lo, hi, points, budget: int, point_budget: int):
  """Fast path of `contains` for rays along +x (coordinates already cycled).

  A grid of `_point_grid` ^2 cells over the mesh's (y, z) box; each face listed in
  the cells its (y, z) box overlaps, the lists sorted by cell; each point tests
  the faces of its cell, one (point, face) pair per slot of the budget.

  Args:
    rows: (9, F) face coordinate rows.
    lo, hi: (F, 3) face boxes.
    points: (P, 3).
    budget: static (face, cell) pair budget.
    point_budget: static (point, face) pair budget.

  Returns:
    parity: (P,) int32; overflow: () bool, the pairs overflowed a budget
    (parity is then wrong).
  """
  grid = _point_grid(rows.shape[1])
  origin = jnp.min(lo[:, 1:], axis=0)
  cell = jnp.maximum(jnp.max(jnp.max(hi[:, 1:], axis=0) - origin), 1e-6) / grid
  face, where, cell_total = _bin_boxes(lo[:, 1:], hi[:, 1:], origin, cell, grid, budget)
  order = jnp.argsort(where, stable=True)
  face, where = face[order], where[order]
  cells = jnp.arange(grid * grid)
  start = jnp.searchsorted(where, cells, side="left").astype(jnp.int32)
  count = jnp.searchsorted(where, cells, side="right").astype(jnp.int32) - start
  ij = jnp.clip(jnp.floor((points[:, 1:] - origin) / cell), 0, grid - 1).astype(jnp.int32)
  mine = ij[:, 0] * grid + ij[:, 1]
  point, rank, pair_total = _enumerate(count[mine], point_budget)
  f = face[jnp.clip(start[mine][point] + rank, 0, face.shape[0] - 1)]
  ahead = _crossed_ahead(rows[:, f], points[point].T) & (rank >= 0)
  parity = jnp.zeros(points.shape[:1], jnp.int32).at[point].add(ahead.astype(jnp.int32)) % 2
  return parity, (cell_total > budget) | (pair_total > point_budget)


def contains(triangles, points, chunk_size: int = CHUNK_SIZE,
             pairs_per_item: int = _PAIRS_PER_ITEM):
  """Inside test of points in a closed mesh by ray parity.

  A point is inside iff a ray from it crosses the mesh an odd number of times;
  rays go along +x, +y and +z and the majority of the three decides. (Much
  cheaper than generalised winding numbers, which need an arctan per pair.)
  Per axis, the binned fast path, or the tiled slow path when its pairs
  overflow their budgets of pairs_per_item * (F + cells) and
  _PAIRS_PER_POINT * P.

  Args:
    triangles: (F, 3, 3) closed mesh.
    points: (P, 3) query points.
    chunk_size: static faces per chunk of the slow path.
    pairs_per_item: static pair budget per face and per cell of the fast path.

  Returns:
    (P,) bool.
  """
  budget = pairs_per_item * (triangles.shape[0] + _point_grid(triangles.shape[0]) ** 2)
  votes = jnp.zeros(points.shape[:1], jnp.int32)
  for axis in _PARITY_AXES:
    cycled = triangles[..., _cycled(axis)]
    rows = cycled.reshape(-1, 9).T
    parity, overflow = _binned_parity(rows, *_face_boxes(cycled), points[:, _cycled(axis)],
                                      budget, _PAIRS_PER_POINT * points.shape[0])
    votes = votes + jax.lax.cond(
        ~overflow, lambda _, parity=parity: parity,
        lambda _, axis=axis: _tiled_parity(triangles, points, axis, chunk_size), None)
  return votes >= 2


def _tiled_histogram(triangles, axis: int, res: int, chunk_size: int):
  """Slow path of `voxelize`: (R^2, R + 1) int32 crossing histogram of the grid
  lines along `axis` (see `voxelize`), square tiles of lines folding over the
  chunks whose box overlaps them across the lines."""
  side = _tile_side(res, _LINE_TILE)
  n = res // side
  centers = (jnp.arange(res, dtype=triangles.dtype) + 0.5) / res - 0.5
  # (tiles, side^2) line coordinates: tile (i, j) holds lines a = i side + u, b = j side + v.
  grid_a, grid_b = (g.reshape(n, side, n, side).transpose(0, 2, 1, 3).reshape(n * n, side * side)
                    for g in jnp.meshgrid(centers, centers, indexing="ij"))
  tiles = jnp.stack([grid_a, grid_b], axis=-1)  # (tiles, side^2, 2)
  lines = jnp.arange(side * side)[:, None]
  rows, (chunk_lo, chunk_hi) = _rows_and_boxes(triangles, axis, chunk_size)

  def fold(hist, tile, tri, k):
    del k
    bins = _crossing_bins(tri, tile[:, 0:1], tile[:, 1:2], res)  # (side^2, C)
    return hist.at[lines, bins].add(1)

  hist = _fold_candidates(fold, jnp.zeros((n * n, side * side, res + 1), jnp.int32), tiles, rows,
                          _boxes_overlap(jnp.min(tiles, axis=1), jnp.max(tiles, axis=1),
                                         chunk_lo[:, 1:], chunk_hi[:, 1:]))
  # Tiles back to the grid: [line (a, b), bin].
  return hist.reshape(n, n, side, side, res + 1).swapaxes(1, 2).reshape(res * res, res + 1)


def _crossing_bins(tri, y, z, res: int):
  """Histogram bins along x of line-face crossings (see `voxelize`): (9, ...)
  face rows, lines y, z broadcasting -> (...) int32 in [0, R], R for misses."""
  numerator, det = _line_crossings(tri, y, z)
  x = jnp.where(det != 0, numerator / jnp.where(det != 0, det, 1.0), jnp.inf)
  # x < c_k  <=>  (x + 0.5) R + 0.5 < k + 1  <=>  bin <= k; misses land in bin R.
  return jnp.clip(jnp.floor((x + 0.5) * res + 0.5), 0, res).astype(jnp.int32)


def _binned_histogram(rows, lo, hi, res: int, budget: int):
  """Fast path of `voxelize` (coordinates cycled, lines along x): each face
  listed with the grid lines whose cell its (y, z) box overlaps, one crossing
  per (face, line) pair scattered into the histogram.

  Returns:
    hist: (R^2, R + 1) int32; total: () int32 pairs needed (wrong if > budget).
  """
  face, line, total = _bin_boxes(lo[:, 1:], hi[:, 1:], jnp.full(2, -0.5, lo.dtype), 1 / res, res,
                                 budget)
  centers = (jnp.arange(res, dtype=rows.dtype) + 0.5) / res - 0.5
  a, b = jnp.divmod(jnp.minimum(line, res * res - 1), res)
  bins = _crossing_bins(rows[:, face], centers[a], centers[b], res)
  hist = jnp.zeros((res * res + 1, res + 1), jnp.int32).at[line, bins].add(1)
  return hist[:res * res], total  # Row R^2 collects the unused slots.


def voxelize(triangles, resolution: int = 32, chunk_size: int = CHUNK_SIZE,
             pairs_per_item: int = _PAIRS_PER_ITEM):
  """(R, R, R) bool occupancy at the voxel centres of the unit cube
  [-0.5, 0.5]^3, indexed [x, y, z] (as groundtruth.voxelize).

  Ray parity as in `contains`, but the centres on one grid line share its
  crossings, so only R^2 lines per axis meet the faces: each crossing goes
  into a histogram over the centres it precedes (bin b holds crossings with
  c_{b-1} <= x < c_b), whose running sum is the crossing count before each
  centre. Per axis, the binned fast path, or the tiled slow path when its
  pairs overflow their budget of pairs_per_item * (F + R^2). `resolution`,
  `chunk_size` and `pairs_per_item` are static.
  """
  res = resolution
  budget = pairs_per_item * (triangles.shape[0] + res * res)
  votes = jnp.zeros((res,) * 3, jnp.int32)
  for axis in _PARITY_AXES:
    cycled = triangles[..., _cycled(axis)]
    hist, total = _binned_histogram(cycled.reshape(-1, 9).T, *_face_boxes(cycled), res, budget)
    hist = jax.lax.cond(total <= budget, lambda _, hist=hist: hist,
                        lambda _, axis=axis: _tiled_histogram(triangles, axis, res, chunk_size),
                        None)
    inside = jnp.cumsum(hist, axis=1)[:, :res] % 2  # [line (a, b), centre along the axis]
    # Indexed [a, b, axis] with a, b the next two axes after `axis`, cyclically.
    inside = inside.reshape(res, res, res)
    votes = votes + jnp.moveaxis(inside, (2, 0, 1), (axis, (axis + 1) % 3, (axis + 2) % 3))
  return votes >= 2


def sample_surface(triangles, key, num_points: int):
  """Area-uniform surface samples with their face normals.

  A face is drawn with probability proportional to its area (inverse CDF of the
  cumulative areas), then a uniform point in it: with r1, r2 ~ U[0, 1),
  (1 - sqrt r1) a + sqrt r1 (1 - r2) b + sqrt r1 r2 c.

  Args:
    triangles: (F, 3, 3) mesh.
    key: PRNG key.
    num_points: static int N.

  Returns:
    points (N, 3) and normals (N, 3) unit outward face normals.
  """
  face_key, point_key = jax.random.split(key)
  cdf = jnp.cumsum(face_areas(triangles))
  u = jax.random.uniform(face_key, (num_points,)) * cdf[-1]
  # The last face of positive area caps rounding at u ~ total (trailing padding has zero area).
  last = jnp.searchsorted(cdf, cdf[-1], side="left")
  face = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), last)
  r = jax.random.uniform(point_key, (num_points, 2))
  s = jnp.sqrt(r[:, :1])
  tri = triangles[face]
  points = (1 - s) * tri[:, 0] + s * (1 - r[:, 1:]) * tri[:, 1] + s * r[:, 1:] * tri[:, 2]
  return points, face_normals(triangles)[face]
