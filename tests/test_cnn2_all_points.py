"""model.cnn2_points='all' end to end: a run whose CNN2 regresses every point trains with a frame
that holds the whole face, and its unstable points (not CNN1's) are what the completion fuses,
mixes and falls back to, in the calibration as at test time (jaxalign.inference 'observed')."""

import numpy as np
import pytest

from jaxalign import calibration
from jaxalign import inference
from jaxalign import schemes
from jaxalign.data import records as records_lib
from jaxalign.morphable import completion as completion_lib
from conftest import train_smoke_run

IBUG = schemes.IBUG68


@pytest.fixture(scope='module')
def all_points_run(tmp_path_factory, sfm_dir):
  del sfm_dir   # the 3DMM files (the flip decision and the completion read them)
  return train_smoke_run(tmp_path_factory.mktemp('all_points'),
                         [30.0, -30.0, 10.0, 0.0, -10.0, 20.0], **{'model.cnn2_points': 'all'})


def _records(run):
  config = inference.Run.load(run).config
  recs, _ = records_lib.scan_folder(config.data.test_dir, 68)
  return recs


def test_the_frame_holds_every_point(all_points_run):
  opened = inference.Run.load(all_points_run)
  model, config = opened.model, opened.config
  assert config.model.cnn2_points == 'all' and model.cnn2.num_points == 68
  canon = np.asarray(model.canonical_shape[...])
  side = float(np.max(canon.max(0) - canon.min(0)))   # all 68 points' box, not the SLs'
  assert side == pytest.approx(float(config.model.cnn2_fill) * model.cnn2_image_size, rel=1e-4)


def test_observed_points_are_cnn2s_and_feed_fusion_mix_and_calibration(all_points_run,
                                                                     monkeypatch):
  opened = inference.Run.load(all_points_run)
  model, config = opened.model, opened.config
  recs = _records(all_points_run)
  out = inference.predict_records(model, config, recs)
  observed, rough, stable = out['observed'], out['rough'], out['stable']
  assert np.isfinite(observed).all()
  unstable = list(IBUG.unstable)
  # The unstable points are CNN2's own, not CNN1's; the stable ones are CNN2's SLs.
  assert np.abs(observed[:, unstable] - rough[:, unstable]).max() > 1e-3
  has = ~np.isnan(stable)
  np.testing.assert_array_equal(observed[has], stable[has])
  np.testing.assert_array_equal(out['cnn_points'], observed)

  # The calibration's residual table is measured on these points ...
  seen = {}
  original_rms = completion_lib.residual_rms

  def spy_rms(pred, *args, **kwargs):
    seen['rms_pred'] = np.array(pred)
    return original_rms(pred, *args, **kwargs)

  monkeypatch.setattr(completion_lib, 'residual_rms', spy_rms)
  table = calibration.calibrate(model, config, recs)
  assert table is not None
  np.testing.assert_allclose(seen['rms_pred'], observed, atol=1e-5)

  # ... and the pipeline fuses and mixes them (tables given, so that every face is fused).
  bins = list(completion_lib.YAW_BINS)
  tables = {'residuals': {'rms': np.full((len(bins) - 1, 68), 0.05).tolist(), 'bins': bins,
                          'blend': {'alpha': np.full((len(bins) - 1, 68), 0.5).tolist(),
                                    'backend': 'jax', 'fused': True, 'convention': '2d'}}}
  config = config.copy_and_resolve_references()
  config.eval.completion_fusion, config.eval.completion_blend = True, True
  completion = inference.Completion.of_run(config, backend='jax', tables=tables)
  assert completion.fusion and completion.blend
  calls = {}
  original_fusion, original_blend = inference.fusion_inputs, completion_lib.blend_points

  def spy_fusion(points, fusion, yaw=None):
    calls['fused'] = np.array(points)
    return original_fusion(points, fusion, yaw)

  def spy_blend(completed, observed_points, *args, **kwargs):
    calls['mixed'] = np.array(observed_points)
    return original_blend(completed, observed_points, *args, **kwargs)

  monkeypatch.setattr(inference, 'fusion_inputs', spy_fusion)
  monkeypatch.setattr(completion_lib, 'blend_points', spy_blend)
  res = inference.run_pipeline(model, config, recs, completion)
  np.testing.assert_allclose(calls['fused'], observed, atol=1e-5)
  np.testing.assert_allclose(calls['mixed'], observed, atol=1e-5)
  # Mixed half and half with CNN2's unstable points, the stable points kept as CNN2's.
  np.testing.assert_allclose(res['points'][has.all(-1)], stable[has.all(-1)], atol=1e-5)
  mid = 0.5 * (res['points_unblended'] + observed)
  np.testing.assert_allclose(res['points'][:, unstable], mid[:, unstable], atol=1e-3)
