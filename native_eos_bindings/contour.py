"""eos's contour-correspondence functions, which eos-py does not bind, in numpy.

Faithful ports of eos 1.5.0 ``fitting/contour_correspondence.hpp`` (``select_contour``,
``get_nearest_contour_correspondences``) and ``fitting/closest_edge_fitting.hpp``
(``occluding_boundary_vertices`` with the ray-cast self-occlusion check,
``find_occluding_edge_correspondences``), plus :func:`reference_fit`, eos's
``fit_shape_and_pose`` loop written in Python around the building blocks eos-py does bind. The
tests check that :func:`reference_fit` reproduces ``eos.fitting.fit_shape_and_pose`` with contour
fitting, which pins these ports to eos's behaviour.

Vertices are model-frame (V, 3); ``camera`` is eos's 3x4 affine camera to image pixels
(``get_3x4_affine_camera_matrix``); landmarks are dicts or (L, 2) arrays with 0-based iBUG ids.
"""

from __future__ import annotations

import numpy as np

FRONTAL_RANGE_DEG = 7.5          # eos select_contour's frontal_range_threshold
OCCLUDING_THRESHOLD = 180.0      # eos fit_shape_and_pose's distance_threshold


def select_contour(yaw_deg: float, model):
  """(landmark ids, model contour vertices) to search, as eos ``select_contour``.

  yaw >= -7.5 deg uses the right contour (iBUG 0-7 and model ``contour_right``), yaw <= 7.5 the
  left one; between the two, both (concatenated right first).
  """
  ids, verts = [], []
  if yaw_deg >= -FRONTAL_RANGE_DEG:
    ids += list(model.contour_landmarks_right)
    verts += [int(v) for v in model.contour_right]
  if yaw_deg <= FRONTAL_RANGE_DEG:
    ids += list(model.contour_landmarks_left)
    verts += [int(v) for v in model.contour_left]
  return ids, verts


def _project(vertices, camera):
  c = np.asarray(camera, np.float64)
  return np.asarray(vertices, np.float64) @ c[:2, :3].T + c[:2, 3]


def nearest_contour_correspondences(landmarks: dict, vertices, camera, yaw_deg, model):
  """eos ``get_contour_correspondences``: each given front contour landmark -> nearest contour
  vertex in the image. Returns (image points (n, 2), vertex ids (n,))."""
  ids, verts = select_contour(yaw_deg, model)
  proj = _project(np.asarray(vertices)[verts], camera)
  points, vids = [], []
  for i in ids:
    if i not in landmarks:
      continue
    p = np.asarray(landmarks[i], np.float64)
    points.append(p)
    vids.append(verts[int(np.argmin(np.linalg.norm(proj - p, axis=1)))])
  return np.asarray(points, np.float64).reshape(-1, 2), np.asarray(vids, np.int64)


def _ray_hits(origins, v0, v1, v2, eps=1e-6):
  """(n,) True where the +z ray from each origin hits any triangle at t > 1e-4 (Moller-Trumbore,
  no back-face culling, as eos ``render::detail::ray_triangle_intersect``)."""
  d = np.array([0.0, 0.0, 1.0])
  e1, e2 = v1 - v0, v2 - v0                     # (T, 3)
  pvec = np.cross(d, e2)
  det = np.einsum('tk,tk->t', e1, pvec)
  ok = np.abs(det) >= eps
  inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
  hit = np.zeros(len(origins), bool)
  for start in range(0, len(origins), 64):      # bounded memory: 64 x T x 3
    o = origins[start:start + 64, None, :]
    tvec = o - v0[None]
    u = np.einsum('ntk,tk->nt', tvec, pvec) * inv
    qvec = np.cross(tvec, e1[None])
    v = qvec[..., 2] * inv                      # dot(d, qvec) with d = +z
    t = np.einsum('tk,ntk->nt', e2, qvec) * inv
    h = ok & (u >= 0) & (u <= 1) & (v >= 0) & (u + v <= 1) & (t > 1e-4)
    hit[start:start + 64] = h.any(axis=1)
  return hit


def occluding_boundary_vertices(vertices, rotation, model, self_occlusion_check=True):
  """eos ``occluding_boundary_vertices``: sorted unique vertex ids on occluding edges.

  An edge is occluding when its two faces' normals (rotated mesh) differ in the sign of z; mesh
  boundary edges are skipped. With ``self_occlusion_check`` vertices hidden behind the mesh
  (a +z ray hits a triangle) are removed.
  """
  rv = np.asarray(vertices, np.float64) @ np.asarray(rotation, np.float64).T
  tri = model.triangles
  fn = np.cross(rv[tri[:, 1]] - rv[tri[:, 0]], rv[tri[:, 2]] - rv[tri[:, 0]])
  faces = model.edge_adjacent_faces
  inner = faces[:, 0] >= 0
  f0, f1 = np.maximum(faces[:, 0], 0), np.maximum(faces[:, 1], 0)
  occluding = inner & (np.sign(fn[f0, 2]) != np.sign(fn[f1, 2]))
  verts = np.unique(model.edge_adjacent_vertices[occluding].reshape(-1))
  if self_occlusion_check and len(verts):
    hidden = _ray_hits(rv[verts], rv[tri[:, 0]], rv[tri[:, 1]], rv[tri[:, 2]])
    verts = verts[~hidden]
  return verts


def occluding_edge_correspondences(image_edges, vertices, rotation, camera, scale, model,
                                   threshold=OCCLUDING_THRESHOLD, self_occlusion_check=True):
  """eos ``find_occluding_edge_correspondences``: every occluding vertex paired with its nearest
  image edge point, kept when the squared pixel distance is <= threshold * scale.

  Returns (image points (n, 2), vertex ids (n,)).
  """
  edges = np.asarray(image_edges, np.float64).reshape(-1, 2)
  if not len(edges):
    return np.zeros((0, 2)), np.zeros((0,), np.int64)
  verts = occluding_boundary_vertices(vertices, rotation, model, self_occlusion_check)
  proj = _project(np.asarray(vertices)[verts], camera)
  d2 = ((proj[:, None] - edges[None]) ** 2).sum(-1)
  nearest = np.argmin(d2, axis=1)
  keep = d2[np.arange(len(verts)), nearest] <= threshold * scale
  return edges[nearest[keep]], verts[keep].astype(np.int64)


def reference_fit(fitter, points, image_size, num_iterations=5, lambda_identity=30.0):
  """eos ``fit_shape_and_pose`` (with contour fitting) re-written around eos-py's building blocks.

  Args:
    fitter: a :class:`native_eos_bindings.EosFitter` (eos objects and the SurreyModel).
    points: (68, 2) iBUG points, NaN for missing ones.
    image_size: (width, height).

  Returns:
    (shape_coeffs, expression_coeffs, RenderingParameters).
  """
  import eos
  model = fitter.surrey
  w, h = int(image_size[0]), int(image_size[1])
  pts = np.asarray(points, np.float32)
  given = {i: pts[i] for i in range(len(pts)) if np.all(np.isfinite(pts[i]))}
  shape_model = fitter.morphable_model.get_shape_model()
  blendshapes = fitter.blendshapes
  mean = np.asarray(shape_model.get_mean(), np.float32)
  expr_basis = model.expression_basis.reshape(-1, model.num_expression)
  fixed_ids = [i for i in given if model.ibug_vertex[i] >= 0]
  fixed_pts = [given[i] for i in fixed_ids]
  fixed_verts = [int(model.ibug_vertex[i]) for i in fixed_ids]

  def pose_of(img, verts, mesh):
    mp = [np.append(mesh[v], 1.0).astype(np.float32) for v in verts]
    ip = [np.asarray(p, np.float32) for p in img]
    sop = eos.fitting.estimate_orthographic_projection_linear(ip, mp, True, h)
    return sop, eos.fitting.RenderingParameters(sop, w, h)

  pca = np.zeros(model.num_shape, np.float32)
  mesh = mean.reshape(-1, 3)
  sop, rp = pose_of(fixed_pts, fixed_verts, mesh)
  cam = eos.fitting.get_3x4_affine_camera_matrix(rp, w, h)
  expr = np.asarray(eos.fitting.fit_expressions(
      blendshapes, mean, cam, [np.asarray(p, np.float32) for p in fixed_pts], fixed_verts),
      np.float32)
  mesh = (mean + expr_basis @ expr).reshape(-1, 3)
  for _ in range(num_iterations):
    img, verts = list(fixed_pts), list(fixed_verts)
    yaw = float(rp.get_yaw_pitch_roll()[0])
    cp, cv = nearest_contour_correspondences(given, mesh, cam, yaw, model)
    img += list(cp.astype(np.float32)); verts += [int(v) for v in cv]
    away = model.contour_landmarks_left if yaw >= 0 else model.contour_landmarks_right
    edges = [given[i] for i in away if i in given]
    ep, ev = occluding_edge_correspondences(edges, mesh, np.asarray(rp.get_modelview())[:3, :3],
                                            cam, sop.s, model)
    img += list(ep.astype(np.float32)); verts += [int(v) for v in ev]
    sop, rp = pose_of(img, verts, mesh)
    cam = eos.fitting.get_3x4_affine_camera_matrix(rp, w, h)
    ip = [np.asarray(p, np.float32) for p in img]
    pca = np.asarray(eos.fitting.fit_shape_to_landmarks_linear(
        shape_model, cam, ip, verts, mean + expr_basis @ expr, lambda_identity), np.float32)
    pca_shape = np.asarray(shape_model.draw_sample(pca), np.float32)
    expr = np.asarray(eos.fitting.fit_expressions(blendshapes, pca_shape, cam, ip, verts),
                      np.float32)
    mesh = (pca_shape + expr_basis @ expr).reshape(-1, 3)
  return pca, expr, rp
