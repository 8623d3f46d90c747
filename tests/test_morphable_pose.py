"""jaxalign.morphable.pose: rigid mean-face pose, robust up to profile."""

import numpy as np
import pytest

from jaxalign import schemes
from jaxalign.morphable import pose
from jaxalign.morphable.model import load_model

S = schemes.IBUG68


@pytest.fixture(scope='module')
def model(sfm_dir):
  return load_model(sfm_dir)


@pytest.fixture(scope='module')
def faces(model):
  """Renderer faces (pose and '2d' points only) with |yaw| spread up to 90, half near profile."""
  from jaxalign.benchmarks.completion import renderer_faces
  return renderer_faces(60, seed=11, model=model)


def test_yaw_up_to_profile_from_all_sl_and_mirror_sl(model, faces):
  gt, yaw = faces
  assert (np.abs(yaw) > 75).sum() >= 5
  sl = np.where(S.stable_mask()[None, :, None], gt, np.nan)
  mirror_sl = np.where(S.stable_mask()[S.flip_index_array()][None, :, None], gt, np.nan)
  for pts in (gt, sl, mirror_sl):
    est = np.asarray(pose.estimate_pose(pts, model=model))
    assert est.shape == (len(gt), 3)
    err = np.abs(est[:, 0] - yaw)
    # Shape variation alone (the mean face is fitted): a few degrees, also near profile.
    assert np.median(err) < 4.0 and err.max() < 15.0, err.max()
    left = pose.flip_from_points(pts, model=model)
    sure = np.abs(yaw) > 15
    np.testing.assert_array_equal(left[sure], yaw[sure] < 0)


def test_the_2d_nose_ratio_estimate_is_what_this_replaces(model, faces):
  """The reason for this module: the nose-ratio yaw wraps around near profile."""
  from jaxalign import geometry
  gt, yaw = faces
  ratio = np.asarray(geometry.estimate_yaw(gt, S))
  rigid = np.asarray(pose.estimate_pose(gt, model=model))[:, 0]
  prof = np.abs(yaw) > 60
  assert np.abs(rigid - yaw)[prof].mean() < 0.5 * np.abs(ratio - yaw)[prof].mean()


def test_batch_axes_mirror_aflw19_and_too_few_points(model, faces):
  gt, yaw = faces
  est = np.asarray(pose.estimate_pose(gt[:6].reshape(2, 3, 68, 2), model=model))
  assert est.shape == (2, 3, 3)
  np.testing.assert_allclose(est.reshape(6, 3), pose.estimate_pose(gt[:6], model=model),
                             atol=1e-3)
  # A mirrored face: yaw and roll change sign, pitch stays.
  m = gt[:6][:, S.flip_index_array()].copy()
  m[..., 0] = 500.0 - m[..., 0]
  mm = np.asarray(pose.estimate_pose(m, model=model))
  np.testing.assert_allclose(mm[:, 0], -est.reshape(6, 3)[:, 0], atol=0.5)
  np.testing.assert_allclose(mm[:, 1], est.reshape(6, 3)[:, 1], atol=0.5)
  # AFLW-19 through its iBUG equivalents.
  a19 = schemes.AFLW19
  idx = np.array([g if g >= 0 else 0 for g in a19.ibug68_equivalent])
  p19 = np.where((np.array(a19.ibug68_equivalent) >= 0)[None, :, None], gt[:, idx], np.nan)
  y19 = np.asarray(pose.estimate_pose(p19, a19, model=model))[:, 0]
  assert np.median(np.abs(y19 - yaw)) < 6.0
  # Fewer than 4 usable points: NaN pose, not flipped.
  few = np.full((68, 2), np.nan, np.float32)
  few[[30, 36, 45]] = gt[0, [30, 36, 45]]
  assert np.isnan(np.asarray(pose.estimate_pose(few, model=model))).all()
  assert not pose.flip_from_points(few, model=model)
  with pytest.raises(ValueError, match='shape'):
    pose.estimate_pose(np.zeros((10, 2)), model=model)
