"""jaxalign.morphable.contour: vertex choices, camera convention, the '2d' / '3d' jaw."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.morphable import contour
from jaxalign.morphable.model import load_model


def _rot(yaw, pitch=0.0, roll=0.0):
  from jaxalign.benchmarks.completion import _rotation
  return _rotation(yaw, pitch, roll)


@pytest.fixture(scope='module')
def model(sfm_dir):
  return load_model(sfm_dir)


def _camera(yaw, pitch=0.0, roll=0.0, scale=2.0, size=512):
  return contour.camera_from_pose(_rot(yaw, pitch, roll), np.array([128.0, 128.0]), scale, size)


def test_landmark_vertices(model):
  v = contour.landmark_vertices(model)
  assert v.shape == (68,) and (v >= 0).all()
  mapped = model.ibug_vertex >= 0
  np.testing.assert_array_equal(v[mapped], model.ibug_vertex[mapped])
  assert v[8] == model.ibug_vertex[8]
  assert (v[60], v[64]) == (contour.INNER_MOUTH_VERTICES[60], contour.INNER_MOUTH_VERTICES[64])
  jaw = model.mean[v[:17]]
  assert len(set(v[:17])) == 17
  # Left and right jaw mirror each other, and run downward from eye height to the chin.
  np.testing.assert_allclose(jaw[:8, 0], -jaw[16:8:-1, 0], atol=2.0)
  assert (np.diff(jaw[:8, 1]) < 0).all()
  assert abs(jaw[0, 1] - model.mean[v[36], 1]) < 6.0
  # Inner mouth corners sit between the outer corner and the inner lip points.
  assert model.mean[v[48], 0] < model.mean[v[60], 0] < model.mean[v[61], 0]


def test_camera_matches_eos(model):
  import eos
  r = _rot(25.0, 5.0, -4.0).astype(np.float32)
  # eos-py has no constructor for the pose: let eos estimate it from exact correspondences.
  pts3 = model.mean[::100].astype(np.float32)
  img = contour.project(pts3, contour.camera_from_pose(r, np.array([100.0, 120.0]), 1.7, 480))
  sop = eos.fitting.estimate_orthographic_projection_linear(
      [p.astype(np.float32) for p in img], [np.append(p, 1.0).astype(np.float32) for p in pts3],
      True, 480)
  rp = eos.fitting.RenderingParameters(sop, 640, 480)
  want = eos.fitting.get_3x4_affine_camera_matrix(rp, 640, 480)
  got = contour.camera_from_pose(r, np.array([100.0, 120.0]), 1.7, 480)
  np.testing.assert_allclose(got, want[:2], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(rp.get_yaw_pitch_roll(), [25.0, 5.0, -4.0], atol=1e-3)
  # MVP + viewport convention from sfm/README.md.
  v = model.mean[:50]
  clip = (np.asarray(rp.get_projection()) @ np.asarray(rp.get_modelview())
          @ np.c_[v, np.ones(len(v))].T).T
  img = np.c_[(clip[:, 0] + 1) * 640 / 2, (1 - clip[:, 1]) * 480 / 2]
  np.testing.assert_allclose(contour.project(v, got), img, atol=1e-2)


def test_view_direction_and_yaw_sign():
  np.testing.assert_allclose(contour.view_direction(_camera(0.0)), [0, 0, 1], atol=1e-6)
  assert contour.yaw_sign(_camera(30.0)) == 1 and contour.yaw_sign(_camera(-30.0)) == -1


def test_conventions(model):
  v = model.mean
  front = contour.ibug_points_both(v, _camera(0.0), model)
  np.testing.assert_array_equal(front['2d'][17:], front['3d'][17:])
  io = np.linalg.norm(front['3d'][36] - front['3d'][45])
  # Frontal: the model contour is the silhouette, both conventions nearly agree.
  assert np.abs(front['2d'][:17] - front['3d'][:17]).max() < 0.05 * io
  cam = _camera(45.0)
  both = contour.ibug_points_both(v, cam, model)
  # Right-looking (yaw > 0): the far side is 9-16; it moves outward (to the viewer's right) onto
  # the silhouette; the near side and the chin stay on their vertices.
  np.testing.assert_array_equal(both['2d'][:9], both['3d'][:9])
  shift = both['2d'][9:17, 0] - both['3d'][9:17, 0]
  assert (shift >= -1e-3).all() and shift[4:].mean() > 0.1 * io
  # The marched points are the outermost projected slice vertices: no face vertex near their
  # height lies further out (beyond a tolerance for the slice width).
  proj = contour.project(v, cam)
  p = both['2d'][12]
  band = np.abs(proj[:, 1] - p[1]) < 2.0
  assert proj[band, 0].max() <= p[0] + 0.05 * io
  # Mirror image: a left-looking face moves 0-7 instead.
  left = contour.ibug_points_both(v, _camera(-45.0), model)
  np.testing.assert_array_equal(left['2d'][8:], left['3d'][8:])
  assert (left['2d'][:8, 0] <= left['3d'][:8, 0] + 1e-3).all()


def test_numpy_and_jax_agree_batched(model):
  rng = np.random.default_rng(0)
  v = np.stack([model.vertices(rng.standard_normal(10)) for _ in range(3)])
  cams = np.stack([_camera(y, 5.0, -3.0) for y in (-50.0, 10.0, 60.0)]).astype(np.float32)
  for conv in ('2d', '3d'):
    want = contour.ibug_points(v, cams, model, conv)
    got = np.asarray(contour.ibug_points(jnp.asarray(v), jnp.asarray(cams), model, conv))
    assert want.shape == (3, 68, 2)
    np.testing.assert_allclose(got, want, atol=1e-2)
    np.testing.assert_allclose(want[1], contour.ibug_points(v[1], cams[1], model, conv))
  with pytest.raises(ValueError, match='convention'):
    contour.ibug_points(v[0], cams[0], model, 'xyz')


@pytest.mark.parametrize('yaw', [30.0, 45.0, -45.0])
def test_far_side_jaw_lies_on_the_rendered_outline(model, yaw):
  """The marched points are the occluding contour: on the outline of the z-buffered mesh.

  (Searching along the projected outward normal instead, which tilts toward the vertical under
  yaw, put jaw points 10 and 11 several pixels inside the face at 45 degrees.)
  """
  from jaxalign.data import synthetic_raster
  rng = np.random.default_rng(4)
  v = model.vertices(rng.standard_normal(20) * 0.8)
  size = 256
  cam = contour.camera_from_pose(_rot(yaw, 0.0, 0.0), np.zeros(2), 1.0, 0.0)
  xy = contour.project(v, cam)
  lo, hi = xy.min(0), xy.max(0)
  s = 0.8 * size / (hi - lo).max()
  cam = np.concatenate([cam[:, :3] * s, (cam[:, 3] * s + 0.1 * size - lo * s)[:, None]], 1)
  xy = contour.project(v, cam)
  depth = contour.project(v, np.concatenate([np.stack([contour.view_direction(cam)] * 2),
                                             np.zeros((2, 1))], 1))[:, 0]
  mask = synthetic_raster.rasterize(xy, depth, np.asarray(model.triangles, np.int64), size, size,
                                    cull_back_faces=False).mask
  pad = np.pad(mask, 1)
  edge = mask & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
  ey, ex = np.nonzero(edge)
  pts = contour.ibug_points(v, cam, model, '2d')
  far = range(9, 17) if yaw > 0 else range(0, 8)
  d = [np.hypot(ex - pts[k, 0], ey - pts[k, 1]).min() for k in far]
  assert max(d) < 2.0, d


def test_marching_directions_are_image_normals_of_the_slice(model):
  geo = contour.landmark_geometry(model)
  for yaw in (0.0, 50.0, -80.0):
    cam = _camera(yaw, 10.0, 5.0)
    u = contour.marching_directions(cam, geo)
    ct = geo.tangent @ cam[:2, :3].T
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose((u * ct).sum(-1), 0.0, atol=1e-4 * np.abs(ct).max())
    # Outward: along the projected outward normal, not against it.
    assert ((u * (geo.outward @ cam[:2, :3].T)).sum(-1) >= 0).all()
  # Frontal: the image normal of the projected tangent is the projected outward normal.
  cam = _camera(0.0)
  cn = geo.outward @ cam[:2, :3].T
  np.testing.assert_allclose(contour.marching_directions(cam, geo),
                             cn / np.linalg.norm(cn, axis=-1, keepdims=True), atol=1e-5)
