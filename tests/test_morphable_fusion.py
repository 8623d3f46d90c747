"""Fusion of observed ULs into the 3DMM fit, the weights helper, and no recompilation per face
count in the batched fitter."""

import warnings

import numpy as np
import pytest

from jaxalign.benchmarks import completion as bench
from jaxalign.morphable import completion
from jaxalign.morphable import fitting
from jaxalign.morphable.model import load_model
from jaxalign.schemes import IBUG68


@pytest.fixture(scope='module')
def model(sfm_dir):
  return load_model(sfm_dir)


@pytest.fixture(scope='module')
def faces(model):
  return bench.synthetic_faces(model, 16, seed=3, mismatch_mm=1.0, noise=0.01)


def _ul_error(r, gt):
  inner, jaw = bench.ul_errors(r, gt)
  return float(np.nanmean(inner)), float(np.nanmean(jaw))


def test_fused_completion_with_good_observations_beats_unfused(model, faces):
  gt, given, size = faces['gt'], faces['given'], faces['image_size']
  rng = np.random.default_rng(0)
  io = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
  observed = gt + rng.normal(0.0, 1.0, gt.shape) * (0.01 * io)[:, None, None]
  plain = completion.complete(given, image_size=size, model=model)
  fused = completion.complete(given, image_size=size, model=model, observed=observed,
                              weights=0.5)
  assert fused.ok.all()
  # Kept points pass through; the fused ULs are the mesh's points, not copies of observed.
  np.testing.assert_array_equal(fused.points[fused.kept], given[fused.kept])
  assert not np.allclose(fused.points[~fused.kept], observed[~fused.kept])
  pi, pj = _ul_error(plain, gt)
  fi, fj = _ul_error(fused, gt)
  assert fi < 0.9 * pi and fj < 0.9 * pj, (pi, pj, fi, fj)
  # Zero weights give back the unfused result.
  zero = completion.complete(given, image_size=size, model=model, observed=observed, weights=0)
  np.testing.assert_allclose(zero.points, plain.points, atol=1e-3)


def test_hidden_points_follow_the_pose(model):
  hidden = completion.hidden_points(np.array([0.0, 60.0, np.nan]), model)
  assert hidden.shape == (3, 68)
  assert not hidden[0, :17].any()               # frontal: no jaw point hidden
  assert hidden[1, 9:17].all() and not hidden[1, :9].any()   # far-side jaw at 60 deg
  assert not hidden[2, 9:17].any()              # no pose: nothing hidden for being far


def test_fusion_weights_formula():
  bins = (0.0, 30.0, 90.0)
  rms = np.full((2, 68), 0.04)
  rms[:, list(IBUG68.stable)] = 0.02
  rms[1, 5] = 0.08
  rms[0, 6] = np.nan
  mirror5 = int(IBUG68.flip_index_array()[5])                 # 11
  w = completion.fusion_weights(rms, np.array([10.0, 45.0, -45.0]), bins)
  assert w.shape == (3, 68)
  assert w[0, 5] == pytest.approx((0.02 / 0.04) ** 2)       # inverse variance vs the SLs
  assert w[1, 5] == pytest.approx((0.02 / 0.08) ** 2)       # |yaw| bin of the face
  assert w[2, mirror5] == pytest.approx((0.02 / 0.08) ** 2)  # left-looking: mirror point
  assert w[0, 6] == 0.0                                      # no residuals: not fused
  assert w.max() <= completion.MAX_FUSION_WEIGHT            # never as much as an SL
  w2 = completion.fusion_weights(rms, [10.0], bins, reference_rms=0.04)
  assert w2[0, 5] == pytest.approx(completion.MAX_FUSION_WEIGHT)
  with pytest.raises(ValueError, match='rms must be'):
    completion.fusion_weights(rms[:, :5], [0.0], bins)
  # A bin without held-out faces (all NaN): its faces get weight 0, without a warning.
  empty = rms.copy()
  empty[1] = np.nan
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    w3 = completion.fusion_weights(empty, np.array([10.0, 45.0]), bins)
  assert (w3[1] == 0).all() and w3[0, 5] == pytest.approx(w[0, 5])


def test_residual_rms_per_bin_in_the_working_frame():
  rng = np.random.default_rng(1)
  gt = rng.uniform(0, 100, (12, 68, 2)).astype(np.float32)
  gt[:, 36], gt[:, 45] = (10.0, 50.0), (60.0, 50.0)           # inter-ocular distance 50
  pred = gt.copy()
  pred[:, 5, 0] += 5.0                                         # 0.1 inter-ocular at point 5
  yaw = np.array([10.0] * 6 + [-50.0] * 6)
  rms = completion.residual_rms(pred, gt, yaw, bins=(0.0, 30.0, 90.0))
  mirror5 = int(IBUG68.flip_index_array()[5])
  assert rms[0, 5] == pytest.approx(0.1) and rms[0, mirror5] == 0.0
  assert rms[1, mirror5] == pytest.approx(0.1) and rms[1, 5] == 0.0   # left-looking: mirrored
  assert np.isnan(completion.residual_rms(pred, gt, yaw, bins=(0.0, 30.0, 90.0),
                                          min_faces=7)).all()


def test_observations_errors(model, faces):
  given = faces['given'][:2]
  with pytest.raises(ValueError, match='observed must be'):
    completion.complete(given, model=model, observed=given[:1, :5])
  with pytest.raises(ValueError, match='needs the jax backend'):
    completion.complete(given, model=model, observed=given, backend='eos')
  with pytest.raises(ValueError, match='fusion weights'):
    completion.complete(given, model=model, observed=given, weights=-1.0)


def test_no_recompilation_per_face_count(model, faces):
  jf = fitting.JaxFitter(model)        # a fresh fitter: its own compiled programs
  w = IBUG68.stable_mask().astype(np.float32)
  pts = np.concatenate([faces['given']] * 3)
  for n in (3, 17, 40):
    fit, full = jf.fit_landmarks(pts[:n], w, 512.0, completion.JAX_DEFAULTS)
    assert full.shape == (n, 68, 2) and fit.shape_coeffs.shape[0] == n
  (compiled,) = [f for k, f in jf._jitted.items() if k[1] == '2d']
  sizes = {fitting.padded_size(n) for n in (3, 17, 40)}
  assert compiled._cache_size() == len(sizes) == 2
  # The padded batch gives the same points as an exact-size batch.
  one, _ = jf.fit_landmarks(pts[:1], w, 512.0, completion.JAX_DEFAULTS)
  np.testing.assert_allclose(np.asarray(one.shape_coeffs[0]), np.asarray(fit.shape_coeffs[0]),
                             atol=1e-3)
  assert fitting.padded_size(1024) == 1024
  with pytest.raises(ValueError):
    fitting.padded_size(1025)


def _two_estimates(n, rng, sigma_c, sigma_o):
  """gt, and two noisy estimates of it with independent errors of the given SDs (pixels)."""
  gt = rng.uniform(20, 80, (n, 68, 2))
  c = gt + rng.normal(0.0, 1.0, gt.shape) * sigma_c
  o = gt + rng.normal(0.0, 1.0, gt.shape) * sigma_o
  return gt, c, o


def test_blend_weights_is_the_inverse_variance_mix_and_never_worse_than_either():
  rng = np.random.default_rng(0)
  bins = (0.0, 30.0, 90.0)
  yaw = np.array([10.0] * 400 + [50.0] * 400)
  sigma_c = np.where(yaw < 30, 1.0, 3.0)[:, None, None]     # the completion: worse at large yaw
  gt, c, o = _two_estimates(800, rng, sigma_c, 2.0)
  alpha = completion.blend_weights(c, o, gt, yaw, bins)
  unstable = ~IBUG68.stable_mask()
  assert np.isnan(alpha[:, IBUG68.stable_mask()]).all()       # kept points are not mixed
  # Independent errors: the least-squares mix is sigma_o^2 / (sigma_c^2 + sigma_o^2).
  np.testing.assert_allclose(np.mean(alpha[0, unstable]), 4 / 5, atol=0.03)
  np.testing.assert_allclose(np.mean(alpha[1, unstable]), 4 / 13, atol=0.03)
  mixed = completion.blend_points(c, o, alpha, yaw, bins)
  for sel in (yaw < 30, yaw >= 30):
    err = lambda p: np.mean(np.sum((p[sel][:, unstable] - gt[sel][:, unstable]) ** 2, -1))
    assert err(mixed) < min(err(c), err(o))
  # Stable points keep the completion's (i.e. CNN2's) value.
  np.testing.assert_allclose(mixed[:, IBUG68.stable_mask()], c[:, IBUG68.stable_mask()],
                             rtol=1e-5)


def test_blend_weights_mix_the_stable_points_only_when_asked():
  """eval.blend_stable: CNN2's stable points (kept by the completion) get the same
  least-squares mix with CNN1's; off, they get NaN and stay CNN2's."""
  rng = np.random.default_rng(1)
  bins = (0.0, 90.0)
  yaw = np.full(600, 10.0)
  gt, c, o = _two_estimates(600, rng, 1.0, 2.0)      # CNN2 (c) better than CNN1 (o) everywhere
  stable = IBUG68.stable_mask()
  assert np.isnan(completion.blend_weights(c, o, gt, yaw, bins)[:, stable]).all()
  alpha = completion.blend_weights(c, o, gt, yaw, bins, mix_stable=True)
  assert np.isfinite(alpha).all()
  np.testing.assert_allclose(np.mean(alpha[0, stable]), 4 / 5, atol=0.03)
  mixed = completion.blend_points(c, o, alpha, yaw, bins)
  err = lambda p: np.mean(np.sum((p[:, stable] - gt[:, stable]) ** 2, -1))
  assert err(mixed) < min(err(c), err(o))


def test_blend_is_mirrored_for_left_looking_faces_and_clipped():
  bins = (0.0, 90.0)
  gt = np.zeros((10, 68, 2))
  gt[:, :, 0] = np.arange(68)
  gt[:, :, 1] = np.arange(68)[::-1]
  c, o = gt.copy(), gt.copy()
  c[:, 5] += 4.0                                  # right-looking: the completion is off at 5
  yaw = np.full(10, 40.0)
  alpha = completion.blend_weights(c, o, gt, yaw, bins)
  assert alpha[0, 5] == 0.0                       # CNN1 exact there: all CNN1
  mirror5 = int(IBUG68.flip_index_array()[5])
  left = completion.blend_weights(c[:, IBUG68.flip_index_array()],
                                  o[:, IBUG68.flip_index_array()],
                                  gt[:, IBUG68.flip_index_array()], -yaw, bins)
  assert left[0, 5] == 0.0                        # counted at the mirror point's entry
  mixed = completion.blend_points(c[:, IBUG68.flip_index_array()],
                                  o[:, IBUG68.flip_index_array()], alpha, -yaw, bins)
  np.testing.assert_allclose(mixed[:, mirror5], gt[:, IBUG68.flip_index_array()][:, mirror5])
  with pytest.raises(ValueError, match='alpha must'):
    completion.blend_points(c, o, alpha[:, :5], yaw, bins)
  with pytest.raises(ValueError, match='in \\[0, 1\\]'):
    completion.blend_points(c, o, alpha * 0 + 2.0, yaw, bins)
  with pytest.raises(ValueError, match='must all be'):
    completion.blend_weights(c[:, :5], o, gt, yaw, bins)
  # Too few faces in a bin: no mix there (NaN), the completion is kept.
  assert np.isnan(completion.blend_weights(c, o, gt, yaw, bins, min_faces=11)).all()
