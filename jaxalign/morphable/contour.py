"""The 68 iBUG points of a posed Surrey Face Model mesh, in the '3d' and the '2d' convention.

Camera convention (eos's scaled orthographic camera, see ``../shared/sfm/README.md``):

* Model frame: millimetres, x toward the subject's left (the viewer's right in a frontal view),
  y up, z out of the face toward a frontal viewer.
* Camera frame: ``v_cam = R @ v + t`` (rotation R, translation t in model units); x right,
  y up, z toward the camera (OpenGL: the camera looks down -z).
* Image: ``clip = P @ MV @ [v, 1]``, ``x_img = (clip_x + 1) * W / 2``,
  ``y_img = (1 - clip_y) * H / 2``; for eos's orthographic frustum this is
  ``x_img = s * x_cam`` and ``y_img = H - s * y_cam`` (pixels, y down, pixel centres at
  integer coordinates as everywhere in jaxalign).

Every function here takes the pose as one **affine camera**: a (2, 4) (or eos's (3, 4), whose
last row is ignored) matrix ``C`` with ``image = C @ [v, 1]``, which is eos's
``get_3x4_affine_camera_matrix``; :func:`camera_from_pose` builds it from (R, t, s, H). A mesh
already in the camera frame is posed by ``C = [[s, 0, 0, 0], [0, -s, 0, H]]``.

Yaw sign (eos): yaw > 0 = the subject looks to its left = a right-looking face in the viewer's
terms (``DESIGN.md``): the subject's right half (viewer's left, iBUG jaw 0-7, model x < 0)
faces the camera and the subject's left half (iBUG 9-16) turns away.

Conventions for the 68 points:

* ``'3d'``: every point is a fixed mesh vertex (:func:`landmark_vertices`), hidden or not, as in
  AFLW2000-3D / 300W-LP. The eos mapping leaves the 16 contour points and the inner mouth corners
  without a vertex; we choose them (see :data:`INNER_MOUTH_VERTICES` and :func:`jaw_vertices`).
* ``'2d'`` (300-W): like '3d', except that the jaw points of the side turned away from the camera
  follow the visible silhouette ("landmark marching"): each such point moves along a fixed slice of
  the mesh (the plane through its 3D vertex spanned by the contour's outward normal and the depth
  axis) to the slice's occluding-contour vertex: the one that projects outermost along the image
  normal of the projected slice plane (:func:`marching_directions`). The chin (8) and the near
  side stay on their vertices: the near side's frontal contour stays on the visible face
  boundary under yaw.

Functions accept numpy or jax arrays (batched with leading axes) and return the same kind, so the
synthetic renderer (numpy, ground truth) and the JAX fitter (jnp, jitted) share one definition.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# Inner mouth corners (iBUG 60 and 64, 0-based), which eos's mapping leaves out. The SFM mesh has
# a closed lip seam running from the outer corner (vertex 398 = iBUG 48) to the inner lip points
# (416/404 = iBUG 61/67). 300-W puts the inner corner just medial of the outer one, where the upper
# and lower inner lip lines meet; we take the first seam vertex medial of the outer corner
# (2.4 mm in from 398 on the mean face, 20 % of the way to 61/67) and its mirror image from
# sfm_reference_symmetry.txt (821).
INNER_MOUTH_VERTICES = {60: 408, 64: 821}

# Jaw point 0 / 16 (0-based) lies at the height of the outer eye corners in 300-W annotations;
# the 17 jaw points are spread evenly by arc length along the model contour from there to the
# chin vertex (iBUG 8 -> SFM 33).
_JAW_TOP_LANDMARKS = (36, 45)

# Version of the '2d' ground-truth convention this module computes. Bump it whenever the points
# of a given mesh and camera change, so that cached synthetic data sets (whose .pts hold these
# points) can be told apart. 2: the slice search direction is the image normal of the projected
# slice plane (:func:`marching_directions`); 1 searched along the projected outward normal.
GROUND_TRUTH_VERSION = 2

# Slice geometry for landmark marching (model units, mm): vertices within SLICE_HALF_WIDTH of the
# slice plane, on the jaw point's side, laterally beyond INNER_FRACTION of the jaw vertex's
# distance from the midline (keeps the nose and the mouth out of the candidates, which could
# otherwise stick out past the far cheek under large yaw).
SLICE_HALF_WIDTH = 3.0
INNER_FRACTION = 0.45


def _xp(*arrays):
  """numpy for numpy inputs, jax.numpy as soon as one input is a jax array or tracer."""
  for a in arrays:
    if type(a).__module__.startswith('jax') or 'Tracer' in type(a).__name__:
      import jax.numpy as jnp
      return jnp
  return np


@dataclasses.dataclass(frozen=True, eq=False)
class LandmarkGeometry:
  """Fixed per-model data for reading the 68 points off a mesh (numpy; build once per model).

  Attributes:
    vertices: (68,) int32 the '3d' vertex of every iBUG point (no -1 left).
    jaw_points: (16,) int32 iBUG indices of the marching points, 0-7 then 9-16.
    jaw_side: (16,) int8 -1 for the subject's right side (iBUG 0-7, model x < 0), +1 for 9-16.
    outward: (16, 3) float32 unit outward contour normal of each jaw point (model frame, z = 0).
    tangent: (16, 3) float32 unit normal of each jaw point's slice plane (the jaw line's
      tangent in the model's xy plane, z = 0): ``outward x z``.
    candidates: (16, K) int32 slice vertices of each jaw point, padded with the jaw vertex itself.
  """

  vertices: np.ndarray
  jaw_points: np.ndarray
  jaw_side: np.ndarray
  outward: np.ndarray
  tangent: np.ndarray
  candidates: np.ndarray


def jaw_vertices(model) -> np.ndarray:
  """(17,) int32 the fixed ('3d') vertex of each jaw point 0..16 (8 = the chin, SFM 33).

  Each side: the model contour (eos's ``sfm_model_contours.json``, temple to chin) cut at the
  height of the outer eye corner, densified by linear interpolation and closed with the chin
  vertex; 9 points evenly spaced by arc length (top = jaw 0 / 16, bottom = chin), each snapped to
  the nearest mesh vertex of the mean shape.
  """
  mean = model.mean.astype(np.float64)
  chin = int(model.ibug_vertex[8])
  out = np.full(17, -1, np.int32)
  out[8] = chin
  for contour, eye, points in ((model.contour_right, 36, range(0, 8)),
                               (model.contour_left, 45, range(16, 8, -1))):
    line = mean[np.asarray(contour)]
    top = mean[model.ibug_vertex[eye], 1]
    # Keep from the first contour vertex at or below eye height; start exactly at eye height.
    below = np.nonzero(line[:, 1] <= top)[0]
    first = below[0]
    if first > 0:
      a, b = line[first - 1], line[first]
      start = a + (top - a[1]) / (b[1] - a[1]) * (b - a)
      line = np.concatenate([start[None], line[first:]])
    line = np.concatenate([line, mean[chin][None]])
    # Densify so that snapping to "nearest polyline point" can use all mesh vertices.
    dense = np.concatenate([np.linspace(line[i], line[i + 1], 8, endpoint=False)
                            for i in range(len(line) - 1)] + [line[-1:]])
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], 9)[:-1]       # the chin itself is point 8
    samples = np.stack([np.interp(targets, s, dense[:, k]) for k in range(3)], -1)
    d = np.linalg.norm(mean[None] - samples[:, None], axis=-1)
    for p, vid in zip(points, np.argmin(d, axis=1)):
      out[p] = vid
  return out


def landmark_vertices(model) -> np.ndarray:
  """(68,) int32 the '3d' vertex of every iBUG point: eos's mapping, jaw and inner mouth added."""
  v = np.asarray(model.ibug_vertex, np.int32).copy()
  v[:17] = jaw_vertices(model)
  for point, vid in INNER_MOUTH_VERTICES.items():
    v[point] = vid
  return v


@functools.lru_cache(maxsize=4)
def _geometry(model) -> LandmarkGeometry:
  mean = model.mean.astype(np.float64)
  verts = landmark_vertices(model)
  jaw_points = np.array(list(range(0, 8)) + list(range(9, 17)), np.int32)
  side = np.where(jaw_points < 8, -1, 1).astype(np.int8)
  jaw = mean[verts[:17]]
  outward = np.zeros((16, 3))
  tangents = np.zeros((16, 3))
  cands = []
  for k, p in enumerate(jaw_points):
    # Tangent of the jaw polyline (0..16 through the chin) at p, in the image-like xy plane.
    tangent = jaw[min(p + 1, 16)] - jaw[max(p - 1, 0)]
    normal = np.array([tangent[1], -tangent[0], 0.0])
    normal /= np.linalg.norm(normal)
    if np.sign(normal[0]) != side[k]:       # point away from the midline
      normal = -normal
    outward[k] = normal
    # The slice plane contains the jaw vertex, the outward normal and the depth axis z; its
    # normal is the in-plane tangent direction.
    plane_n = np.cross(normal, [0.0, 0.0, 1.0])
    tangents[k] = plane_n
    dist = np.abs((mean - jaw[p]) @ plane_n)
    lateral = (mean - jaw[p]) @ normal
    reach = abs(jaw[p, 0]) * (1.0 - INNER_FRACTION)
    sel = ((dist <= SLICE_HALF_WIDTH) & (np.sign(mean[:, 0]) == side[k])
           & (lateral >= -reach))
    cands.append(np.nonzero(sel)[0])
  width = max(len(c) for c in cands)
  candidates = np.empty((16, width), np.int32)
  for k, c in enumerate(cands):
    candidates[k] = verts[jaw_points[k]]
    candidates[k, :len(c)] = c
  return LandmarkGeometry(vertices=verts, jaw_points=jaw_points, jaw_side=side,
                          outward=outward.astype(np.float32),
                          tangent=tangents.astype(np.float32), candidates=candidates)


def landmark_geometry(model) -> LandmarkGeometry:
  """The cached :class:`LandmarkGeometry` of a :class:`~jaxalign.morphable.model.SurreyModel`."""
  return _geometry(model)


def camera_from_pose(rotation, translation, scale, image_height):
  """(..., 2, 4) affine camera of eos's scaled orthographic pose.

  Args:
    rotation: (..., 3, 3) model-to-camera rotation R.
    translation: (..., 2) or (..., 3) camera-frame translation (t_x, t_y[, ignored t_z]), model
      units (eos's ``ScaledOrthoProjectionParameters.tx/ty``).
    scale: (...,) pixels per model unit.
    image_height: H in pixels (scalar or (...,)).

  Returns:
    C with ``x_img = s * (R[0] @ v + t_x)`` and ``y_img = H - s * (R[1] @ v + t_y)``.
  """
  xp = _xp(rotation, translation, scale)
  r = xp.asarray(rotation)
  t = xp.asarray(translation)
  s = xp.asarray(scale)[..., None]
  h = xp.asarray(image_height, r.dtype)
  row0 = xp.concatenate([s * r[..., 0, :], (s[..., 0] * t[..., 0])[..., None]], -1)
  row1 = xp.concatenate([-s * r[..., 1, :], (h - s[..., 0] * t[..., 1])[..., None]], -1)
  return xp.stack([row0, row1], -2)


def project(vertices, camera):
  """(..., V, 2) image pixels of model-frame vertices (..., V, 3) under camera (..., 2|3, 4)."""
  xp = _xp(vertices, camera)
  c = xp.asarray(camera)[..., :2, :]
  return xp.einsum('...vk,...jk->...vj', vertices, c[..., :3]) + c[..., None, :, 3]


def view_direction(camera):
  """(..., 3) unit vector from the face toward the camera, in the model frame.

  For ``C = [s R0; -s R1]`` (image y down), ``-(C0 x C1) / |.| = R2``, the camera z axis.
  """
  xp = _xp(camera)
  c = xp.asarray(camera)
  d = -xp.cross(c[..., 0, :3], c[..., 1, :3])
  return d / xp.linalg.norm(d, axis=-1, keepdims=True)


def vertex_normals(vertices, triangles):
  """(..., V, 3) unit area-weighted vertex normals, outward (SFM triangles wind outward)."""
  xp = _xp(vertices)
  t = np.asarray(triangles)
  v0, v1, v2 = (vertices[..., t[:, k], :] for k in range(3))
  fn = xp.cross(v1 - v0, v2 - v0)
  if xp is np:
    vn = np.zeros(vertices.shape, np.result_type(vertices, np.float32))
    flat, fflat = vn.reshape(-1, *vn.shape[-2:]), fn.reshape(-1, *fn.shape[-2:])
    for b in range(flat.shape[0]):
      for k in range(3):
        np.add.at(flat[b], t[:, k], fflat[b])
    vn = flat.reshape(vertices.shape)
  else:
    vn = xp.zeros(vertices.shape, vertices.dtype)
    for k in range(3):
      vn = vn.at[..., t[:, k], :].add(fn)
  return vn / xp.maximum(xp.linalg.norm(vn, axis=-1, keepdims=True), 1e-12)


def yaw_sign(camera):
  """(...,) +1 when the face is right-looking (eos yaw > 0), -1 left-looking, 0 exactly frontal."""
  xp = _xp(camera)
  return -xp.sign(view_direction(camera)[..., 0])


def marching_directions(camera, geometry: LandmarkGeometry):
  """(..., 16, 2) unit image direction along which each jaw point's slice is searched outward.

  A slice is the planar curve of mesh vertices in the plane through the jaw vertex spanned by
  its outward normal n and the model's depth axis; the plane's normal is the jaw tangent t.
  Seen along the view direction d, the curve's occluding point is where its tangent is parallel
  to d projected onto the plane, and since C d = 0 that tangent's image is parallel to C t.
  So the silhouette point is the slice vertex that projects furthest along the image normal of
  C t, signed to point outward (positive along C n). (C n itself is that normal only in a
  frontal view; under yaw it tilts toward the vertical and, for a profile, searches the bottom
  of the slice instead of its silhouette.)
  """
  xp = _xp(camera)
  lin = xp.asarray(camera)[..., :2, :3]
  ct = xp.einsum('...jk,pk->...pj', lin, xp.asarray(geometry.tangent))
  cn = xp.einsum('...jk,pk->...pj', lin, xp.asarray(geometry.outward))
  u = xp.stack([ct[..., 1], -ct[..., 0]], -1)
  sign = xp.where(xp.sum(u * cn, -1) < 0, -1.0, 1.0)
  u = u * sign[..., None]
  return u / xp.maximum(xp.linalg.norm(u, axis=-1, keepdims=True), 1e-12)


def ibug_points(vertices, camera, model, convention: str = '2d'):
  """(..., 68, 2) the iBUG-68 points of a posed mesh in image pixels.

  Args:
    vertices: (..., V, 3) model-frame mesh (the fitted or sampled shape instance).
    camera: (..., 2, 4) or (..., 3, 4) affine camera (see the module docstring).
    model: the :class:`~jaxalign.morphable.model.SurreyModel` (for the fixed vertex choices).
    convention: '3d' (fixed vertices) or '2d' (300-W: the far-side jaw on the silhouette).
  """
  if convention not in ('2d', '3d'):
    raise ValueError(f"convention must be '2d' or '3d', got {convention!r}")
  xp = _xp(vertices, camera)
  geo = landmark_geometry(model)
  fixed = project(vertices[..., geo.vertices, :], camera)
  if convention == '3d':
    return fixed
  u = marching_directions(camera, geo)
  cand = project(vertices[..., geo.candidates.reshape(-1), :], camera)
  cand = cand.reshape(cand.shape[:-2] + geo.candidates.shape + (2,))
  score = xp.einsum('...pkj,...pj->...pk', cand, u)
  best = xp.argmax(score, axis=-1)
  marched = xp.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
  far = (yaw_sign(camera)[..., None] * xp.asarray(geo.jaw_side, cand.dtype)) > 0
  jaw = xp.where(far[..., None], marched, fixed[..., geo.jaw_points, :])
  if xp is np:
    out = fixed.copy()
    out[..., geo.jaw_points, :] = jaw
    return out
  return fixed.at[..., geo.jaw_points, :].set(jaw)


def ibug_points_both(vertices, camera, model) -> dict:
  """{'3d': (..., 68, 2), '2d': (..., 68, 2)} for one posed mesh (see :func:`ibug_points`)."""
  return {c: ibug_points(vertices, camera, model, c) for c in ('3d', '2d')}
