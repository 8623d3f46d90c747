"""The completion learned from 2D annotations (jaxalign.morphable.learned), on small sets."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from jaxalign import metrics
from jaxalign import schemes
from jaxalign.data import records as records_lib
from jaxalign.morphable import learned
from jaxalign.morphable.learned import LearnedCompletion

S = schemes.IBUG68
PERM = S.flip_index_array()
W300 = pathlib.Path(__file__).resolve().parent.parent.parent / 'shared' / '300w'


def _faces(base, n, seed, modes=3, amp=0.04, nonlinear=0.0):
  """Right-looking faces: ``base`` plus a few random shape modes (a latent z, linear in the
  normalised frame, plus ``nonlinear`` z^2 terms), under random similarities (pixels)."""
  rng = np.random.default_rng(seed)
  b = np.asarray(base, np.float64)
  b = b - b.mean(0)
  scale = np.linalg.norm(b[36] - b[45])
  basis = np.random.default_rng(99).normal(0, amp * scale, (modes, 68, 2))
  z = rng.normal(0, 1, (n, modes))
  shapes = b + np.einsum('nk,kli->nli', z + nonlinear * z ** 2, basis)
  ang = rng.uniform(-0.3, 0.3, n)
  s = rng.uniform(0.5, 2.0, n)
  rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1),
                  np.stack([np.sin(ang), np.cos(ang)], -1)], -2) * s[:, None, None]
  return (np.einsum('nij,nlj->nli', rot, shapes) + rng.uniform(100, 300, (n, 1, 2))
          ).astype(np.float32)


def _mirror_image(points, width=512.0):
  out = np.asarray(points)[..., PERM, :].copy()
  out[..., 0] = width - 1.0 - out[..., 0]
  return out


def _ul_nme(pred, gt, flip):
  kept = np.where(np.asarray(flip)[:, None], S.stable_mask()[PERM][None], S.stable_mask()[None])
  err = metrics.point_errors(pred, gt) / metrics.normalizer(gt)[:, None]
  return np.array([e[~k].mean() for e, k in zip(err, kept)])


def _fit(shapes, **kw):
  """Right-looking training faces: the yaw's sign decides the flip (no model files needed)."""
  return LearnedCompletion.fit(shapes, S, yaw=np.full(len(shapes), 10.0),
                               **{'switch': 'none', **kw})


def test_recovers_a_linear_relation_and_beats_the_mean_shape(real_face_points):
  train = _faces(real_face_points, 200, seed=0, amp=0.02)
  test = _faces(real_face_points, 40, seed=1, amp=0.02)
  flip = np.zeros(len(test), bool)
  sls = np.where(S.stable_mask()[None, :, None], test, np.nan)
  lin = _fit(train, kernel=False, ridge=1e-6)
  pred = lin.complete(sls, flip)
  np.testing.assert_array_equal(pred[:, S.stable_mask()], test[:, S.stable_mask()])
  err = _ul_nme(pred, test, flip)
  # The ULs are (nearly) a linear function of the normalised SLs: recovered almost exactly.
  assert err.mean() < 0.003, err.mean()
  # The mean shape placed on the SLs (all weights and the kernel off) is far worse.
  mean_only = dataclasses.replace(lin, weights=np.zeros_like(lin.weights))
  err_mean = _ul_nme(mean_only.complete(sls, flip), test, flip)
  assert err_mean.mean() > 5 * err.mean(), (err.mean(), err_mean.mean())
  assert lin.num_faces == 200 and lin.num_skipped == 0 and len(lin.centers) == 0


def test_kernel_part_fits_a_nonlinear_relation(real_face_points):
  train = _faces(real_face_points, 300, seed=2, modes=2, nonlinear=1.0)
  test = _faces(real_face_points, 60, seed=3, modes=2, nonlinear=1.0)
  flip = np.zeros(len(test), bool)
  lin = _fit(train, kernel=False)
  krr = _fit(train)
  assert len(krr.centers) == 300
  e_lin, e_krr = (_ul_nme(m.complete(test, flip), test, flip).mean() for m in (lin, krr))
  assert e_krr < 0.7 * e_lin, (e_krr, e_lin)
  # More faces than max_centers: a random subset of centres (Nystroem), still better.
  sub = _fit(train, max_centers=100)
  assert len(sub.centers) == 100
  assert _ul_nme(sub.complete(test, flip), test, flip).mean() < 0.85 * e_lin


def test_sl_noise_training_expects_noisy_sls(real_face_points):
  # Many shape modes (as real faces have): noise in the SLs is not filtered out by a few.
  train = _faces(real_face_points, 200, seed=14, modes=30, amp=0.01)
  test = _faces(real_face_points, 100, seed=15, modes=30, amp=0.01)
  flip = np.zeros(len(test), bool)
  rng = np.random.default_rng(16)
  io = np.linalg.norm(test[:, 36] - test[:, 45], axis=-1)
  noisy = test + (rng.standard_normal(test.shape) * 0.04 * io[:, None, None]).astype(np.float32)
  clean_model = _fit(train)
  noisy_model = _fit(train, sl_noise=0.04, noise_copies=3)
  assert len(noisy_model.centers) == 200            # centres: the clean faces
  e_clean, e_noisy = (_ul_nme(m.complete(noisy, flip), test, flip).mean()
                      for m in (clean_model, noisy_model))
  assert e_noisy < 0.95 * e_clean, (e_noisy, e_clean)
  with pytest.raises(ValueError, match='sl_noise must be'):
    _fit(train, sl_noise=-0.1)
  with pytest.raises(ValueError, match='noise_copies must be'):
    _fit(train, sl_noise=0.1, noise_copies=0)


def test_measure_sl_noise_sees_shape_noise_not_pose(real_face_points):
  truth = _faces(real_face_points, 400, seed=21).astype(np.float64)
  io = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=-1)
  # A similarity of the whole face (what the regression's frame absorbs) is not noise.
  moved = truth * 1.1 + 7.0
  assert learned.measure_sl_noise(moved, truth) < 1e-9
  # Gaussian noise of 3 % of the inter-ocular distance per coordinate on every point is found
  # (a little below: the similarity fits 4 of the 68 numbers of the 34 SLs).
  rng = np.random.default_rng(0)
  noisy = truth + rng.normal(0, 1, truth.shape) * 0.03 * io[:, None, None]
  assert 0.027 < learned.measure_sl_noise(noisy, truth) < 0.031
  # Noise on the ULs only is not SL noise; with flip=True the SLs are the mirrored set, which
  # holds the noisy hidden-side points.
  ul_only = truth.copy()
  ul = ~S.stable_mask()
  ul_only[:, ul] = noisy[:, ul]
  assert learned.measure_sl_noise(ul_only, truth) < 1e-9
  assert learned.measure_sl_noise(ul_only, truth, flip=np.ones(len(truth), bool)) > 0.01
  # Faces with a NaN SL are left out; none left or a wrong shape is an error naming the input.
  nan = noisy.copy()
  nan[0, S.stable[0]] = np.nan
  assert np.isfinite(learned.measure_sl_noise(nan, truth))
  with pytest.raises(ValueError, match='predicted: no face'):
    learned.measure_sl_noise(nan[:1], truth[:1])
  with pytest.raises(ValueError, match='predicted: expected'):
    learned.measure_sl_noise(noisy[:, :67], truth)


def test_mirrored_face_completes_to_the_mirror(real_face_points):
  model = _fit(_faces(real_face_points, 150, seed=4))
  faces = _faces(real_face_points, 5, seed=5, amp=0.06)
  flip = np.zeros(5, bool)
  right = model.complete(np.where(S.stable_mask()[None, :, None], faces, np.nan), flip)
  # The mirrored image of the face is left-looking: its SLs are the mirror set.
  mirrored = _mirror_image(faces)
  keep = S.stable_mask()[PERM]
  left = model.complete(np.where(keep[None, :, None], mirrored, np.nan), ~flip)
  np.testing.assert_allclose(left, _mirror_image(right), atol=1e-3)
  np.testing.assert_array_equal(left[:, keep], mirrored[:, keep])      # kept bit for bit
  # One face as (L, 2) gives the same as a batch of one.
  np.testing.assert_array_equal(model.complete(faces[0], False), right[0])


def test_flip_none_decides_like_the_pipeline(real_face_points, sfm_dir):
  from jaxalign.morphable import pose
  model = _fit(_faces(real_face_points, 150, seed=6))
  face = real_face_points[None]                     # image_0010 is left-looking
  assert pose.flip_from_points(face)[0]
  np.testing.assert_array_equal(model.complete(face), model.complete(face, True))
  assert not np.array_equal(model.complete(face), model.complete(face, False))


def test_to_dict_round_trip_is_exact(real_face_points):
  model = _fit(_faces(real_face_points, 80, seed=7), switch='none')
  text = json.dumps(model.to_dict())
  back = LearnedCompletion.from_dict(json.loads(text))
  for f in dataclasses.fields(model):
    a, b = getattr(model, f.name), getattr(back, f.name)
    if isinstance(a, np.ndarray):
      assert a.dtype == b.dtype and a.shape == b.shape, f.name
      np.testing.assert_array_equal(a, b, err_msg=f.name)
    else:
      assert a == b, f.name
  assert json.dumps(back.to_dict()) == text
  faces = _faces(real_face_points, 4, seed=8)
  np.testing.assert_array_equal(back.complete(faces, False), model.complete(faces, False))
  linear = _fit(_faces(real_face_points, 50, seed=7), kernel=False)
  back = LearnedCompletion.from_dict(json.loads(json.dumps(linear.to_dict())))
  assert back.centers.shape == (0, 68) and back.alphas.shape == (0, 68)
  with pytest.raises(ValueError, match='format'):
    LearnedCompletion.from_dict({'weights': []})
  with pytest.raises(ValueError, match='inconsistent'):
    LearnedCompletion.from_dict({**model.to_dict(), 'use_learned': [True]})


def test_bad_input(real_face_points):
  shapes = _faces(real_face_points, 30, seed=9)
  shapes[[3, 7], 40] = np.nan
  model = _fit(shapes, kernel=False)
  assert model.num_faces == 28 and model.num_skipped == 2
  with pytest.raises(ValueError, match='shapes: empty'):
    LearnedCompletion.fit(np.zeros((0, 68, 2)), S)
  with pytest.raises(ValueError, match='shapes: no usable'):
    LearnedCompletion.fit(np.full((4, 68, 2), np.nan), S)
  with pytest.raises(ValueError, match=r'shapes must be \(N, 68, 2\)'):
    LearnedCompletion.fit(np.zeros((4, 67, 2)), S)
  with pytest.raises(ValueError, match='yaw must be'):
    LearnedCompletion.fit(shapes, S, yaw=np.zeros(3))
  with pytest.raises(ValueError, match='unknown learned-completion option'):
    _fit(shapes, ridge_strength=1.0)
  with pytest.raises(ValueError, match='ridge must be a positive'):
    _fit(shapes, ridge=-1.0)
  with pytest.raises(ValueError, match='switch must be'):
    _fit(shapes, switch='sometimes')
  with pytest.raises(ValueError, match=r'points must be \(N, 68, 2\)'):
    model.complete(np.zeros((2, 68, 3)), False)
  # A face with a missing SL gets NaN ULs, the others are completed.
  faces = _faces(real_face_points, 3, seed=10)
  faces[1, 36] = np.nan
  out = model.complete(faces, False)
  assert np.isnan(out[1, S.unstable]).all() and np.isfinite(out[[0, 2]]).all()
  with pytest.raises(ValueError, match='records: empty'):
    learned.fit_from_records([], S)


def test_pose_switch_uses_the_3dmm_points(real_face_points, sfm_dir):
  shapes = _faces(real_face_points, 60, seed=11)
  # No bin has 1,000 faces: every face goes to the 3DMM's points.
  model = LearnedCompletion.fit(shapes, S, switch='count', min_bin_faces=1000)
  assert not model.use_learned.any()
  faces = _faces(real_face_points, 4, seed=12)
  other = faces + 3.0
  out = model.complete(faces, False, completed_3dmm=other)
  np.testing.assert_array_equal(out[:, S.stable_mask()], faces[:, S.stable_mask()])
  np.testing.assert_array_equal(out[:, S.unstable], other[:, S.unstable])
  with pytest.raises(ValueError, match='completed_3dmm must be'):
    model.complete(faces, False, completed_3dmm=other[:2])
  # Without completed_3dmm the JAX 3DMM completes those faces.
  from jaxalign.morphable import completion
  ref = completion.complete(faces, S, backend='jax', flip=False).points
  np.testing.assert_allclose(model.complete(faces, False), ref, atol=1e-4)
  # 'cv': out of fold, the learned model beats a bad '3DMM' (the SLs shifted) in the bins that
  # have faces; empty bins stay with the 3DMM.
  cv = LearnedCompletion.fit(shapes, S, switch='cv', min_bin_faces=5, completed_3dmm=shapes + 5)
  filled = np.array([row['faces'] >= 5 for row in cv.cv['bins']])
  np.testing.assert_array_equal(cv.use_learned, filled)
  assert cv.cv['learned']['all'] < cv.cv['3dmm']['all']


def test_fit_from_records(real_face_points):
  shapes = _faces(real_face_points, 40, seed=13)
  recs = [records_lib.FaceRecord(image=f'{i}.png', points=p, box=np.zeros(4), yaw=10.0)
          for i, p in enumerate(shapes)]
  recs.append(records_lib.FaceRecord(image='x.png', points=np.zeros((19, 2)), box=np.zeros(4),
                                     yaw=10.0, scheme='aflw19'))
  model = learned.fit_from_records(recs, S, switch='none', kernel=False)
  assert model.num_faces == 40 and model.num_skipped == 1
  direct = _fit(shapes, kernel=False)
  np.testing.assert_array_equal(model.weights, direct.weights)


@pytest.mark.skipif(not (W300 / 'afw').is_dir(), reason=f'300-W training faces not in {W300}')
def test_real_300w_faces_beat_linear_and_mean(sfm_dir):
  from jaxalign.data import sources
  recs, _ = sources.get_source('300w', W300, 'train')
  rng = np.random.default_rng(0)
  idx = rng.permutation(len(recs))
  gt = np.stack([recs[i].points for i in idx[:500]]).astype(np.float32)
  train, test = gt[:400], gt[400:]
  from jaxalign.morphable import pose
  flip = pose.flip_from_points(test)
  keep = np.where(flip[:, None], S.stable_mask()[PERM][None], S.stable_mask()[None])
  sls = np.where(keep[..., None], test, np.nan)
  krr = LearnedCompletion.fit(train, S, switch='none')
  lin = LearnedCompletion.fit(train, S, switch='none', kernel=False)
  e_krr, e_lin = (_ul_nme(m.complete(sls, flip), test, flip).mean() for m in (krr, lin))
  e_mean = _ul_nme(dataclasses.replace(lin, weights=np.zeros_like(lin.weights)).complete(
      sls, flip), test, flip).mean()
  assert e_krr < e_lin < 0.75 * e_mean, (e_krr, e_lin, e_mean)
  assert e_krr < 0.06, e_krr
