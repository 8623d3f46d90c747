"""Affine matrices and warps against OpenCV, numpy float64 references and invariants."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign import transforms as T
from jaxalign.schemes import AFLW19, IBUG68


def _cv2_warp(img, m, out_hw):
  h, w = out_hw
  return cv2.warpAffine(img, np.asarray(m, np.float64), (w, h), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _np_bilinear_warp(img, m, out_hw):
  """float64 reference: out(p) = bilinear(img, M^-1 p), zeros outside, loops for clarity."""
  img = np.asarray(img, np.float64)
  a = np.vstack([np.asarray(m, np.float64), [0, 0, 1]])
  inv = np.linalg.inv(a)
  h, w = out_hw
  out = np.zeros((h, w, img.shape[2]))
  for i in range(h):
    for j in range(w):
      sx, sy, _ = inv @ [j, i, 1.0]
      x0, y0 = int(np.floor(sx)), int(np.floor(sy))
      fx, fy = sx - x0, sy - y0
      acc = 0.0
      for dx, dy, wt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                         (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        x, y = x0 + dx, y0 + dy
        if 0 <= x < img.shape[1] and 0 <= y < img.shape[0]:
          acc = acc + wt * img[y, x]
      out[i, j] = acc
  return out


def _random_matrix(rng, center):
  return T.similarity_matrix(rng.uniform(-np.pi, np.pi), rng.uniform(0.5, 2.0), center,
                             rng.uniform(-6, 6, 2))


def test_similarity_matrix_matches_opencv():
  m = T.similarity_matrix(0.3, 1.3, (20.0, 18.0), (3.0, -2.0))
  ref = cv2.getRotationMatrix2D((20.0, 18.0), np.degrees(0.3), 1.3)
  ref[:, 2] += (3.0, -2.0)
  np.testing.assert_allclose(m, ref, atol=1e-5)


def test_similarity_matrix_worked_case():
  # 90 degrees about (1, 1): the point (2, 1) (right of the centre) goes up (y smaller) on screen.
  m = T.similarity_matrix(np.pi / 2, 1.0, (1.0, 1.0))
  np.testing.assert_allclose(T.warp_points(jnp.array([[2.0, 1.0]]), m), [[1.0, 0.0]], atol=1e-6)


def test_similarity_matrix_batched():
  angles = jnp.array([0.0, 0.5, 1.0])
  m = T.similarity_matrix(angles, 2.0, jnp.zeros((3, 2)))
  assert m.shape == (3, 2, 3)
  np.testing.assert_allclose(m[1], T.similarity_matrix(0.5, 2.0, (0.0, 0.0)), atol=1e-6)


def test_warp_image_matches_opencv_float32_with_rounding():
  rng = np.random.default_rng(0)
  for _ in range(4):
    img = (rng.random((40, 50, 3)) * 255).astype(np.float32)
    m = np.asarray(_random_matrix(rng, (25.0, 20.0)))
    out = T.warp_image(img, m, (35, 45), opencv_rounding=True)
    np.testing.assert_allclose(out, _cv2_warp(img, m, (35, 45)), atol=2e-3)


def test_warp_image_matches_opencv_uint8_with_rounding():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
  m = np.asarray(_random_matrix(rng, (20.0, 15.0)))
  out = np.asarray(T.warp_image(img, m, (32, 32), opencv_rounding=True))
  assert out.dtype == np.float32
  ref = _cv2_warp(img, m, (32, 32)).astype(np.float32)
  # OpenCV rounds uint8 results (and uses 15-bit integer weights): within 1 grey level.
  np.testing.assert_allclose(out, ref, atol=1.0)


def test_warp_image_exact_matches_float64_reference_and_opencv_on_smooth_image():
  rng = np.random.default_rng(2)
  yy, xx = np.mgrid[0:24, 0:30].astype(np.float64)
  img = np.stack([100 + 80 * np.sin(xx / 5.0) * np.cos(yy / 4.0), 2.0 * xx + yy,
                  np.full_like(xx, 50.0)], -1).astype(np.float32)
  m = np.asarray(_random_matrix(rng, (15.0, 12.0)))
  out = np.asarray(jax.jit(T.warp_image, static_argnums=2)(img, m, (20, 26)))
  np.testing.assert_allclose(out, _np_bilinear_warp(img, m, (20, 26)), atol=2e-3)
  # Against OpenCV: the only difference is OpenCV's 1/32-pixel rounding of sample positions,
  # at most ~|gradient| / 64 per axis (gradients here are below 20 grey levels per pixel) away
  # from the image border (where the image steps to the zero border, rounding moves more).
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  yy, xx = np.mgrid[0:20, 0:26]
  sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
  sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
  inside = (sx > 0.1) & (sx < 28.9) & (sy > 0.1) & (sy < 22.9)
  assert inside.sum() > 100
  np.testing.assert_allclose(out[inside], _cv2_warp(img, m, (20, 26))[inside], atol=0.7)


def test_warp_image_grayscale_and_identity():
  img = np.arange(20, dtype=np.uint8).reshape(4, 5)
  out = T.warp_image(img, T.identity(), (4, 5))
  assert out.shape == (4, 5) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, img.astype(np.float32))


def test_warp_image_zeros_outside():
  img = np.ones((10, 10, 1), np.float32)
  out = np.asarray(T.warp_image(img, T.translation_matrix((20.0, 0.0)), (10, 10)))
  assert (out == 0).all()
  half = np.asarray(T.warp_image(img, T.translation_matrix((0.5, 0.0)), (10, 10)))
  np.testing.assert_allclose(half[:, 0, 0], 0.5)  # half of the sample falls outside
  np.testing.assert_allclose(half[:, 1:, 0], 1.0)


def test_crop_matrix_is_slice_and_resize():
  rng = np.random.default_rng(3)
  img = (rng.random((30, 40, 3)) * 255).astype(np.float32)
  box = (5, 7, 25, 27)
  same = T.warp_image(img, T.crop_matrix(box, 20), (20, 20))
  np.testing.assert_allclose(same, img[7:27, 5:25], atol=1e-4)
  big = np.asarray(T.warp_image(img, T.crop_matrix(box, (40, 60)), (40, 60)))
  ref = cv2.resize(img[7:27, 5:25], (60, 40), interpolation=cv2.INTER_LINEAR)
  # cv2.resize replicates the border, warpAffine-style warps read zeros: compare the interior.
  np.testing.assert_allclose(big[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-3)


def test_crop_matrix_maps_box_edges():
  m = T.crop_matrix(jnp.array([[10.0, 20.0, 110.0, 70.0]]), (50, 200))
  pts = T.warp_points(jnp.array([[[9.5, 19.5], [109.5, 69.5]]]), m)
  np.testing.assert_allclose(pts, [[[-0.5, -0.5], [199.5, 49.5]]], atol=1e-4)


def test_hflip_matrix_matches_array_flip():
  rng = np.random.default_rng(4)
  img = rng.random((6, 9, 2)).astype(np.float32)
  out = T.warp_image(img, T.hflip_matrix(9), (6, 9))
  np.testing.assert_allclose(out, img[:, ::-1], atol=1e-6)


def test_warp_points_matches_numpy_and_keeps_nan():
  rng = np.random.default_rng(5)
  m = np.asarray(_random_matrix(rng, (3.0, 4.0)), np.float64)
  pts = rng.normal(size=(7, 2)) * 20
  pts[3] = np.nan
  out = np.asarray(T.warp_points(pts, m))
  ref = pts @ m[:, :2].T + m[:, 2]
  np.testing.assert_allclose(out, ref, atol=1e-3)
  assert np.isnan(out[3]).all()


def test_warp_points_batched_broadcast():
  rng = np.random.default_rng(6)
  ms = jnp.stack([_random_matrix(rng, (0.0, 0.0)) for _ in range(3)])
  pts = jnp.asarray(rng.normal(size=(3, 5, 2)), jnp.float32)
  out = T.warp_points(pts, ms)
  for k in range(3):
    np.testing.assert_allclose(out[k], T.warp_points(pts[k], ms[k]), atol=1e-5)
  # One matrix for a batch of shapes.
  np.testing.assert_allclose(T.warp_points(pts, ms[0]), jax.vmap(
      lambda p: T.warp_points(p, ms[0]))(pts), atol=1e-5)


@pytest.mark.parametrize('opencv_rounding', [False, True])
def test_dot_centroid_follows_warp_points(opencv_rounding):
  # A bright blob at a known point: after warping the image, its intensity-weighted centroid is
  # where warp_points sends the point.
  yy, xx = np.mgrid[0:64, 0:64].astype(np.float64)
  p = np.array([23.3, 37.6])
  img = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 2.0 ** 2))[..., None]
  m = T.compose(T.similarity_matrix(0.7, 1.4, (32.0, 32.0), (4.0, -3.0)), T.hflip_matrix(64))
  out = np.asarray(T.warp_image(img.astype(np.float32), m, (64, 64), opencv_rounding))[..., 0]
  centroid = np.array([(out * xx).sum(), (out * yy).sum()]) / out.sum()
  np.testing.assert_allclose(centroid, np.asarray(T.warp_points(p[None], m))[0], atol=0.05)


def test_warp_images_batched_jit_vmap():
  rng = np.random.default_rng(7)
  imgs = rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8)
  ms = jnp.stack([_random_matrix(rng, (10.0, 8.0)) for _ in range(3)])
  fn = jax.jit(T.warp_images, static_argnums=2)
  out = fn(imgs, ms, (12, 14))
  assert out.shape == (3, 12, 14, 3) and out.dtype == jnp.float32
  for k in range(3):
    np.testing.assert_allclose(out[k], T.warp_image(imgs[k], ms[k], (12, 14)), atol=1e-3)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='shape'):
    T.warp_image(np.zeros((2, 2, 2, 2)), T.identity(), (2, 2))
  with pytest.raises(ValueError, match=r'\(\.\.\., 2, 3\)'):
    T.warp_points(np.zeros((3, 2)), np.eye(3))
  with pytest.raises(ValueError, match='use warp_images'):
    T.warp_image(np.zeros((2, 2)), T.identity((2,)), (2, 2))
  with pytest.raises(ValueError, match='68'):
    T.flip_landmarks(np.zeros((5, 2)), 10)
  with pytest.raises(ValueError, match='box'):
    T.crop_matrix((0, 0, 1), 4)


# --- property tests ---------------------------------------------------------------------------

_angles = st.floats(-np.pi, np.pi)
_scales = st.floats(0.3, 3.0)
_coords = st.floats(-50.0, 50.0)


@st.composite
def _similarities(draw):
  return T.similarity_matrix(draw(_angles), draw(_scales), (draw(_coords), draw(_coords)),
                             (draw(_coords), draw(_coords)))


@settings(max_examples=25, deadline=None)
@given(_similarities(), _similarities(), _similarities())
def test_compose_invert_identities(m1, m2, m3):
  np.testing.assert_allclose(T.compose(m1, T.invert(m1)), T.identity(), atol=1e-4)
  np.testing.assert_allclose(T.compose(T.invert(m1), m1), T.identity(), atol=1e-4)
  np.testing.assert_allclose(T.invert(T.invert(m1)), m1, rtol=1e-4, atol=1e-3)
  # Associativity and the "m1 first" order, checked on points against numpy 3x3 products.
  np.testing.assert_allclose(T.compose(T.compose(m1, m2), m3), T.compose(m1, T.compose(m2, m3)),
                             rtol=1e-4, atol=1e-2)
  h = lambda m: np.vstack([np.asarray(m, np.float64), [0, 0, 1]])
  np.testing.assert_allclose(T.compose(m1, m2, m3), (h(m3) @ h(m2) @ h(m1))[:2],
                             rtol=1e-4, atol=1e-2)
  np.testing.assert_allclose(T.invert(T.compose(m1, m2)),
                             T.compose(T.invert(m2), T.invert(m1)), rtol=1e-4, atol=1e-2)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([IBUG68, AFLW19]), st.integers(10, 2000), st.integers(0, 2 ** 31 - 1))
def test_flip_landmarks_is_involution(scheme, width, seed):
  pts = np.random.default_rng(seed).uniform(0, width, (scheme.num_points, 2)).astype(np.float32)
  once = T.flip_landmarks(pts, width, scheme)
  np.testing.assert_allclose(T.flip_landmarks(once, width, scheme), pts, atol=1e-3)
  # Point i of the flip is the mirrored point perm[i].
  perm = scheme.flip_index_array()
  np.testing.assert_allclose(once[:, 0], width - 1 - pts[perm, 0], atol=1e-3)
  np.testing.assert_allclose(once[:, 1], pts[perm, 1])


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([(9, 12), (16, 31), (40, 23)]), st.integers(0, 2 ** 31 - 1))
def test_flip_image_and_points_stay_consistent(size, seed):
  # Paint each landmark's index into the image at its pixel; after flipping both the image (by the
  # warp with hflip_matrix) and the points (flip_landmarks), the image at landmark i of the flip
  # holds the index of the landmark it came from, perm[i].
  height, width = size  # few sizes, so the eager warp compiles only a few times
  rng = np.random.default_rng(seed)
  n = IBUG68.num_points
  cells = rng.choice(height * width, size=min(n, height * width), replace=False)
  pts = np.full((n, 2), np.nan, np.float32)
  img = np.zeros((height, width, 1), np.float32)
  for i, c in enumerate(cells):
    y, x = divmod(int(c), width)
    pts[i] = (x, y)
    img[y, x, 0] = i + 1
  flipped = np.asarray(T.warp_image(img, T.hflip_matrix(width), (height, width)))
  fpts = np.asarray(T.flip_landmarks(pts, width, IBUG68))
  perm = IBUG68.flip_index_array()
  for i in range(n):
    if np.isnan(fpts[i]).any():
      continue
    x, y = np.round(fpts[i]).astype(int)
    assert flipped[y, x, 0] == perm[i] + 1


def test_flip_landmarks_batched_widths():
  pts = np.zeros((2, 68, 2), np.float32)
  out = np.asarray(T.flip_landmarks(pts, jnp.array([10.0, 20.0])))
  np.testing.assert_allclose(out[0, :, 0], 9.0)
  np.testing.assert_allclose(out[1, :, 0], 19.0)


def test_host_twin_agrees_with_warp_image():
  """warp_image_host (PIL, for decoding workers) follows the same matrix convention."""
  rng = np.random.default_rng(3)
  # A band-limited image: 8-bit rounding in PIL is the only difference left (measured mean 0.5,
  # max 1.0 grey levels), while a 0.3 px shift of the sampling grid gives mean 1.3, max 4.
  yy, xx = np.mgrid[0:60, 0:80]
  img = np.stack([(127 + 100 * np.sin(xx / 3.0 + c) * np.cos(yy / 4.0)) for c in range(3)], -1)
  img = np.clip(img + rng.normal(0, 1, img.shape), 0, 255).astype(np.uint8)
  m = np.asarray(T.similarity_matrix(0.3, 0.8, (40.0, 30.0), (-3.0, 2.5)), np.float32)
  host = T.warp_image_host(img, m, 48).astype(np.float32)
  dev = np.asarray(T.warp_image(img, m, (48, 48)))
  interior = np.asarray(T.warp_image(np.ones(img.shape[:2] + (1,), np.float32),
                                              m, (48, 48)))[..., 0] > 0.999
  interior[:1] = interior[-1:] = False
  diff = np.abs(host - dev)[interior]
  assert interior.sum() > 500
  assert diff.mean() < 0.75 and diff.max() < 2.0, (diff.mean(), diff.max())
