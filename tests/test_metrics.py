"""NME variants, failure rate, CED, AUC and the pose breakdown against worked examples."""

import numpy as np
import pytest

from jaxalign import metrics
from jaxalign.schemes import AFLW19, IBUG68


def _face():
  """A 68-point face with outer eye corners 100 px apart, pupils 80 px apart."""
  gt = np.zeros((68, 2))
  gt[:, 0] = np.linspace(0, 200, 68)
  gt[:, 1] = np.linspace(0, 150, 68)
  gt[36:42] = [150.0, 100.0]
  gt[42:48] = [230.0, 100.0]
  gt[36] = [140.0, 100.0]
  gt[45] = [240.0, 100.0]
  # Pupils: means of the rings: (150*5 + 140) / 6 and (230*5 + 240) / 6.
  return gt


def test_nme_inter_ocular_worked_case():
  gt = _face()
  pred = gt.copy()
  pred[0] += [3.0, 4.0]  # 5 px error on one point
  assert metrics.nme(pred, gt)[0] == pytest.approx(5 / 68 / 100)
  assert metrics.normalizer(gt)[0] == pytest.approx(100.0)


def test_nme_inter_pupil_and_bbox():
  gt = _face()
  pred = gt + [6.0, 8.0]  # 10 px everywhere
  left = (150 * 5 + 140) / 6
  right = (230 * 5 + 240) / 6
  assert metrics.nme(pred, gt, 'inter_pupil')[0] == pytest.approx(10 / (right - left))
  # Tight box of the gt: x in [0, 240], y in [0, 150].
  assert metrics.nme(pred, gt, 'bbox')[0] == pytest.approx(10 / np.sqrt(240 * 150))
  boxes = np.array([[0.0, 0.0, 100.0, 25.0]])
  assert metrics.nme(pred, gt, 'bbox', boxes=boxes)[0] == pytest.approx(10 / 50.0)
  with pytest.raises(ValueError, match='unknown normalization'):
    metrics.nme(pred, gt, 'diag')


def test_nme_batched_and_matches_numpy():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0, 200, (5, 68, 2))
  pred = gt + rng.normal(size=gt.shape) * 3
  got = metrics.nme(pred, gt)
  ref = np.linalg.norm(pred - gt, axis=-1).mean(1) / np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  sl = metrics.nme(pred, gt, indices=IBUG68.stable)
  ref_sl = (np.linalg.norm(pred - gt, axis=-1)[:, list(IBUG68.stable)].mean(1)
            / np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1))
  np.testing.assert_allclose(sl, ref_sl, rtol=1e-12)


def test_nme_missing_points_rule():
  gt = _face()
  pred = gt.copy()
  pred[:10] += [0.0, 5.0]
  gt_missing = gt.copy()
  gt_missing[10:20] = np.nan  # not annotated: left out of the mean
  assert metrics.nme(pred, gt_missing)[0] == pytest.approx(10 * 5 / 58 / 100)
  bad_pred = gt.copy()
  bad_pred[3] = np.nan  # a missing prediction where the gt exists: a failure
  assert metrics.nme(bad_pred, gt)[0] == np.inf
  no_eyes = gt.copy()
  no_eyes[36] = np.nan  # undefined normaliser
  assert np.isnan(metrics.nme(pred, no_eyes)[0])


def test_nme_aflw19_bbox():
  gt = np.random.default_rng(1).uniform(0, 100, (2, 19, 2))
  pred = gt + 1.0
  boxes = np.array([[0, 0, 50, 50], [0, 0, 100, 25]], float)
  np.testing.assert_allclose(metrics.nme(pred, gt, 'bbox', AFLW19, boxes),
                             [np.sqrt(2) / 50, np.sqrt(2) / 50])
  with pytest.raises(ValueError, match='expected 19 points'):
    metrics.nme(np.zeros((68, 2)), np.zeros((68, 2)), scheme=AFLW19)


def test_failure_rate_ced_auc_worked_example():
  e = np.array([0.02, 0.04, 0.10, np.nan])
  assert metrics.failure_rate(e, 0.08) == pytest.approx(1 / 3)
  assert metrics.failure_rate(e, 0.04) == pytest.approx(1 / 3)  # strictly greater fails
  t, frac = metrics.ced(e, thresholds=[0.0, 0.02, 0.03, 0.04, 0.08, 0.2])
  np.testing.assert_allclose(frac, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
  # Area under the step CED on [0, 0.08]: 1/3 on [0.02, 0.04), 2/3 on [0.04, 0.08]
  # = (0.02 / 3 + 0.04 * 2 / 3) / 0.08 = 5 / 12.
  assert metrics.auc(e, 0.08) == pytest.approx(5 / 12)
  # Same as a dense numerical integration of the CED.
  t, frac = metrics.ced(e, 0.08, num=200001)
  assert metrics.auc(e, 0.08) == pytest.approx(np.trapezoid(frac, t) / 0.08, abs=1e-4)
  with pytest.raises(ValueError, match='positive'):
    metrics.auc(e, 0.0)
  assert np.isnan(metrics.auc([np.nan], 0.08))


def test_auc_of_perfect_and_failed_sets():
  assert metrics.auc(np.zeros(5), 0.1) == pytest.approx(1.0)
  assert metrics.auc(np.full(5, 0.5), 0.1) == pytest.approx(0.0)
  assert metrics.auc([np.inf, 0.0], 0.1) == pytest.approx(0.5)


def test_nme_by_pose_bins():
  e = np.array([0.01, 0.02, 0.03, 0.05, 0.07, np.nan])
  yaw = np.array([-10.0, 25.0, -45.0, 60.0, 90.0, 5.0])
  out = metrics.nme_by_pose(e, yaw)
  assert [(b['yaw_min'], b['yaw_max'], b['count']) for b in out] == [
      (0.0, 30.0, 2), (30.0, 60.0, 1), (60.0, 90.0, 2)]
  np.testing.assert_allclose([b['nme'] for b in out], [0.015, 0.03, 0.06])
  signed = metrics.nme_by_pose(e, yaw, bins=(-90, 0, 90), absolute=False)
  assert [b['count'] for b in signed] == [2, 3]
  empty = metrics.nme_by_pose(e, yaw, bins=(100, 120))
  assert empty[0]['count'] == 0 and np.isnan(empty[0]['nme'])
  with pytest.raises(ValueError, match='increasing'):
    metrics.nme_by_pose(e, yaw, bins=(30, 0))
  with pytest.raises(ValueError, match='same length'):
    metrics.nme_by_pose(e, yaw[:3])


