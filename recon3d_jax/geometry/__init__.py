"""Pure-JAX geometry: cameras, SDF primitives, sphere tracing, 3D ground truth.

Modules: camera (pinhole cameras, rays), sdf (primitives, bounding boxes, normalisation),
render (sphere tracing, shading), groundtruth (surface samples, occupancy points, voxels),
vec (per-point 3-vector arithmetic written out by component, fast on CPU).

Conventions (docs/DESIGN.md section 3): world frame right-handed with +y up; shapes
normalised into the unit cube (longest bounding-box side 1, centred at the
origin); OpenCV camera frame (+x right, +y down, +z forward); depth is z-depth;
normals are unit outward vectors in the camera frame.
"""
