"""Least-squares transforms, Procrustes, pose coefficient and looking direction.

References are float64 numpy (weighted Umeyama / least squares) and eos's own fitted yaw.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign import geometry as G
from jaxalign import transforms as T
from jaxalign.schemes import AFLW19, IBUG68


def _np_similarity(src, dst, w):
  """Weighted Umeyama (float64), rotation without reflection."""
  src, dst, w = (np.asarray(a, np.float64) for a in (src, dst, w))
  w = w / w.sum()
  ms, md = w @ src, w @ dst
  p, q = src - ms, dst - md
  cov = (q * w[:, None]).T @ p
  u, s, vt = np.linalg.svd(cov)
  d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
  r = u @ d @ vt
  scale = np.trace(np.diag(s) @ d) / (w @ (p ** 2).sum(1))
  t = md - scale * r @ ms
  return np.hstack([scale * r, t[:, None]])


def _np_affine(src, dst, w):
  a = np.hstack([src, np.ones((len(src), 1))]) * np.sqrt(w)[:, None]
  b = dst * np.sqrt(w)[:, None]
  return np.linalg.lstsq(a, b, rcond=None)[0].T


def _random_case(rng, n=20):
  src = rng.normal(size=(n, 2)) * 30 + 100
  m = np.asarray(T.similarity_matrix(rng.uniform(-3, 3), rng.uniform(0.5, 2), (0.0, 0.0),
                                     rng.normal(size=2) * 20), np.float64)
  dst = src @ m[:, :2].T + m[:, 2] + rng.normal(size=(n, 2)) * 2.0
  return src, dst, rng.uniform(0.1, 2.0, n)


def test_estimate_similarity_matches_weighted_umeyama():
  rng = np.random.default_rng(0)
  for _ in range(5):
    src, dst, w = _random_case(rng)
    got = G.estimate_similarity(src, dst, w)
    np.testing.assert_allclose(got, _np_similarity(src, dst, w), rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(G.estimate_similarity(src, dst),
                               _np_similarity(src, dst, np.ones(len(src))), rtol=1e-4, atol=2e-3)


def test_estimate_similarity_recovers_exact_transform():
  rng = np.random.default_rng(1)
  src = rng.normal(size=(10, 2)) * 50
  m = T.similarity_matrix(0.4, 1.7, (3.0, 4.0), (10.0, -5.0))
  np.testing.assert_allclose(G.estimate_similarity(src, T.warp_points(src, m)), m, atol=1e-3)


def test_estimate_affine_matches_weighted_lstsq_and_recovers():
  rng = np.random.default_rng(2)
  for _ in range(5):
    src, dst, w = _random_case(rng)
    np.testing.assert_allclose(G.estimate_affine(src, dst, w), _np_affine(src, dst, w),
                               rtol=1e-4, atol=2e-3)
  a = np.array([[1.2, 0.3, 5.0], [-0.2, 0.8, -7.0]], np.float32)
  src = rng.normal(size=(8, 2)).astype(np.float32) * 40
  np.testing.assert_allclose(G.estimate_affine(src, T.warp_points(src, a)), a, atol=1e-3)


@pytest.mark.parametrize('fn', [G.estimate_similarity, G.estimate_affine])
def test_masked_points_are_ignored(fn):
  rng = np.random.default_rng(3)
  src, dst, w = _random_case(rng)
  ref = fn(src[:15], dst[:15], w[:15])
  bad_dst = dst.copy()
  bad_dst[15:] = 1e4  # outliers with zero weight
  np.testing.assert_allclose(fn(src, bad_dst, np.r_[w[:15], np.zeros(5)]), ref, atol=1e-3)
  nan_src = src.copy()
  nan_src[15:] = np.nan  # NaN points
  np.testing.assert_allclose(fn(nan_src, dst, w), ref, atol=1e-3)


def test_estimators_jit_and_vmap():
  rng = np.random.default_rng(4)
  cases = [_random_case(rng) for _ in range(4)]
  src, dst, w = (np.stack(c).astype(np.float32) for c in zip(*cases))
  for fn in (G.estimate_similarity, G.estimate_affine):
    batched = jax.jit(jax.vmap(fn))(src, dst, w)
    direct = fn(src, dst, w)  # batch dimensions are native too
    assert batched.shape == (4, 2, 3)
    for k in range(4):
      np.testing.assert_allclose(batched[k], fn(src[k], dst[k], w[k]), rtol=1e-4, atol=1e-3)
      np.testing.assert_allclose(direct[k], batched[k], rtol=1e-4, atol=1e-3)


def test_procrustes_of_similar_copies():
  rng = np.random.default_rng(5)
  base = rng.normal(size=(12, 2))
  ms = [T.similarity_matrix(rng.uniform(-3, 3), rng.uniform(0.5, 3), (0.0, 0.0),
                            rng.normal(size=2) * 10) for _ in range(6)]
  shapes = np.stack([np.asarray(T.warp_points(base, m)) for m in ms])
  shapes[2, 4] = np.nan
  res = G.procrustes(shapes)
  mean = np.asarray(res.mean, np.float64)
  np.testing.assert_allclose(mean.sum(0), 0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(mean), 1, atol=1e-5)
  for k in range(6):
    np.testing.assert_allclose(np.nan_to_num(res.aligned[k]),
                               np.nan_to_num(mean * ~np.isnan(shapes[k])), atol=1e-4)
    np.testing.assert_allclose(T.warp_points(shapes[k], res.transforms[k]), res.aligned[k],
                               atol=1e-4)
  assert np.isnan(res.aligned[2, 4]).all()
  # The mean is the base shape up to a similarity.
  np.testing.assert_allclose(
      T.warp_points(base, G.estimate_similarity(base, mean)), mean, atol=1e-4)


def test_procrustes_mean_minimises_spread_against_numpy_reference():
  rng = np.random.default_rng(6)
  base = rng.normal(size=(15, 2))
  shapes = np.stack([base + rng.normal(size=base.shape) * 0.1 for _ in range(20)])
  shapes = np.stack([np.asarray(T.warp_points(s, T.similarity_matrix(
      rng.uniform(-1, 1), rng.uniform(0.5, 2), (0.0, 0.0)))) for s in shapes])
  res = G.procrustes(shapes, num_iters=20)
  # float64 numpy GPA with the same normalisation.
  norm = lambda x: (x - x.mean(0)) / np.linalg.norm(x - x.mean(0))
  mean = norm(shapes[0].astype(np.float64))
  for _ in range(50):
    aligned = np.stack([np.c_[s, np.ones(len(s))] @ _np_similarity(s, mean, np.ones(len(s))).T
                        for s in shapes])
    mean = norm(aligned.mean(0))
  r = _np_similarity(mean, np.asarray(res.mean, np.float64), np.ones(15))
  np.testing.assert_allclose(np.c_[mean, np.ones(15)] @ r.T, res.mean, atol=1e-4)
  np.testing.assert_allclose(np.linalg.norm(r[:, :2], 2), 1, atol=1e-4)


# --- yaw, looking direction, pose model --------------------------------------------------------


def _project(model, yaw_deg, pitch_deg=0.0, shape=None, expr=None, scale=3.0):
  """68 image points of the Surrey model (contour points NaN), eos-style rotation and y flip."""
  idx = np.where(model.ibug_vertex >= 0)[0]
  v = model.vertices(shape, expr).astype(np.float64)
  pts3 = np.full((68, 3), np.nan)
  pts3[idx] = v[model.ibug_vertex[idx]]
  t, p = np.radians(yaw_deg), np.radians(pitch_deg)
  ry = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
  rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
  q = pts3 @ (ry @ rx).T
  return np.stack([320 + scale * q[:, 0], 240 - scale * q[:, 1]], 1).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _eos_model(sfm_dir):
  import eos
  d = str(sfm_dir) + '/'
  shape = eos.morphablemodel.load_model(d + 'sfm_shape_3448.bin')
  blend = eos.morphablemodel.load_blendshapes(d + 'expression_blendshapes_3448.bin')
  model = eos.morphablemodel.MorphableModel(
      shape.get_shape_model(), blend, color_model=eos.morphablemodel.PcaModel(),
      vertex_definitions=None, texture_coordinates=shape.get_texture_coordinates())
  return model, eos.core.LandmarkMapper(d + 'ibug_to_sfm.txt')


def _eos_yaw(sfm_dir, points):
  """eos's fitted yaw (degrees) for 2D points in a 640 x 480 image."""
  import eos
  mm, mapper = _eos_model(sfm_dir)
  lms = [eos.core.Landmark(str(i + 1), [float(x), float(y)])
         for i, (x, y) in enumerate(points) if np.isfinite(x)]
  _, params, _, _ = eos.fitting.fit_shape_and_pose(mm, lms, mapper, 640, 480)
  return float(params.get_yaw_pitch_roll()[0])


def test_yaw_pair_constants_match_surrey_mean(sfm_model):
  p = lambda i: sfm_model.mean[sfm_model.ibug_vertex[i]].astype(np.float64)
  for a, b, k in G._YAW_PAIRS:
    measured = (p(G._YAW_NOSE_TIP)[2] - (p(a)[2] + p(b)[2]) / 2) / (p(b)[0] - p(a)[0])
    assert abs(measured - k) < 2e-3, (a, b, measured, k)


def test_yaw_sign_agrees_with_eos(sfm_model, sfm_dir):
  rng = np.random.default_rng(7)
  for yaw in (-50, -25, -12, 12, 25, 50):
    pts = _project(sfm_model, yaw, rng.uniform(-10, 10), rng.normal(size=10) * 0.5,
                   rng.normal(size=6) * 0.3)
    eos_yaw = _eos_yaw(sfm_dir, pts)
    ours = float(G.estimate_yaw(pts))
    assert np.sign(eos_yaw) == np.sign(yaw), (yaw, eos_yaw)  # eos reads back our rotation
    assert np.sign(ours) == np.sign(eos_yaw)
    assert abs(ours - eos_yaw) < 10, (yaw, ours, eos_yaw)


def test_yaw_is_accurate_on_the_mean_face(sfm_model):
  for yaw in (-60, -30, 0, 30, 60):
    assert abs(float(G.estimate_yaw(_project(sfm_model, yaw))) - yaw) < 3


def test_real_face_is_left_looking(real_face_points, real_face, sfm_dir):
  pts = real_face_points
  assert _eos_yaw(sfm_dir, pts) < -20  # eos: about -30 degrees
  yaw = float(G.estimate_yaw(pts))
  assert -40 < yaw < -15
  # From the stable points alone, the mirror set, and after a flip.
  stable = list(IBUG68.stable)
  sl = np.full_like(pts, np.nan)
  sl[stable] = pts[stable]
  assert float(G.estimate_yaw(sl)) == pytest.approx(yaw, abs=1e-4)
  mirror = IBUG68.flip_index_array()[stable]
  ms = np.full_like(pts, np.nan)
  ms[mirror] = pts[mirror]
  assert float(G.estimate_yaw(ms)) < 0
  width = real_face[0].shape[1]
  flipped = np.asarray(T.flip_landmarks(pts, width))
  fs = np.full_like(flipped, np.nan)
  fs[stable] = flipped[stable]
  assert float(G.estimate_yaw(fs)) == pytest.approx(-yaw, abs=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.floats(-np.pi, np.pi), st.floats(0.2, 5.0), st.floats(-60, 60),
       st.integers(0, 2 ** 31 - 1))
def test_yaw_invariant_to_similarity_and_antisymmetric_under_flip(angle, scale, yaw, seed):
  rng = np.random.default_rng(seed)
  base = np.asarray(_MEAN_POINTS_CACHE.get('pts'), np.float32)
  pts = base + rng.normal(size=base.shape).astype(np.float32) * 3
  pts = np.asarray(T.warp_points(pts, T.similarity_matrix(0.0, 1.0, (0.0, 0.0), (yaw, 0.0))))
  ref = float(G.estimate_yaw(pts))
  moved = T.warp_points(pts, T.similarity_matrix(angle, scale, (320.0, 240.0), (5.0, -7.0)))
  assert float(G.estimate_yaw(moved)) == pytest.approx(ref, abs=1e-2)
  assert float(G.estimate_yaw(T.flip_landmarks(pts, 640))) == pytest.approx(-ref, abs=1e-2)


_MEAN_POINTS_CACHE = {}


@pytest.fixture(autouse=True, scope='module')
def _mean_points(sfm_model):
  _MEAN_POINTS_CACHE['pts'] = _project(sfm_model, 20.0)


def test_estimate_yaw_batches_jits_and_is_nan_without_points(sfm_model):
  pts = np.stack([_project(sfm_model, y) for y in (-40, -5, 0, 5, 40)])
  yaws = np.asarray(G.estimate_yaw(pts))
  assert yaws.shape == (5,) and np.all(np.diff(yaws) > 0)
  np.testing.assert_allclose(np.asarray(jax.jit(G.estimate_yaw)(pts)), yaws, atol=1e-4)
  empty = np.full((68, 2), np.nan, np.float32)
  assert np.isnan(G.estimate_yaw(empty))
