"""The 2D Gaussian completion (jaxalign.morphable.statistical), on small synthetic sets."""

import numpy as np
import pytest

from jaxalign import metrics
from jaxalign import schemes
from jaxalign.data import records
from jaxalign.data import synthetic
from jaxalign.data import synthetic_dataset
from jaxalign.morphable import statistical

S = schemes.IBUG68


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('gauss')
  config = synthetic.SynthConfig(size=64, deformation_mm=2.0)
  out = {}
  for split, num, seed in (('train', 150, 1), ('test', 40, 2)):
    synthetic_dataset.synthesize(root / split, num, config=config, seed=seed, workers=1)
    recs, _ = records.scan_folder(root / split, num_points=68)
    out[split] = (np.stack([r.points for r in recs]).astype(np.float32),
                  np.array([r.yaw for r in recs]))
  out['train_dir'] = str(root / 'train')
  return out


def _sls(gt, yaw):
  """Ground-truth SLs as the pipeline hands them over (the mirror set for left-looking)."""
  keep = np.where((yaw < 0)[:, None], S.stable_mask()[S.flip_index_array()][None],
                  S.stable_mask()[None])
  return np.where(keep[..., None], gt, np.nan).astype(np.float32), keep


def test_conditional_mean_completes_unstable_points(data):
  model = statistical.fit(data['train'][0], num_bins=2)
  assert model.num_bins == 2 and model.counts.sum() == 150
  gt, yaw = data['test']
  sls, keep = _sls(gt, yaw)
  res = statistical.complete(sls, model, flip=yaw < 0)
  assert res.backend == 'gaussian' and res.ok.all()
  np.testing.assert_array_equal(res.kept, keep)
  np.testing.assert_array_equal(res.points[keep], gt[keep])     # kept points pass through
  assert np.isfinite(res.points).all()
  err = metrics.nme(res.points, gt, 'inter_ocular', scheme=S, indices=S.unstable)
  frontal = np.abs(yaw) < 45
  assert np.mean(err[frontal]) < 0.08, np.mean(err[frontal])
  # Conditioning matters: the bin's mean shape alone (a huge ridge) is clearly worse.
  mean_only = statistical.GaussianShapeModel(**{**model.__dict__, 'ridge': 1e9})
  err_mean = metrics.nme(statistical.complete(sls, mean_only, flip=yaw < 0).points, gt,
                         'inter_ocular', scheme=S, indices=S.unstable)
  assert np.mean(err) < 0.8 * np.mean(err_mean), (np.mean(err), np.mean(err_mean))


def test_mirror_equivariance_single_input_and_failures(data):
  model = statistical.fit(data['train'][0], num_bins=2)
  gt, yaw = data['test']
  i = int(np.argmax(yaw))                # a right-looking face
  sls, _ = _sls(gt[i:i + 1], yaw[i:i + 1])
  one = statistical.complete(sls[0], model, flip=False)
  assert one.points.shape == (68, 2) and bool(one.ok)
  mirrored = sls[0][S.flip_index_array()].copy()
  mirrored[:, 0] = 63.0 - mirrored[:, 0]
  back = statistical.complete(mirrored, model, flip=True)
  expect = one.points[S.flip_index_array()].copy()
  expect[:, 0] = 63.0 - expect[:, 0]
  np.testing.assert_allclose(back.points, expect, atol=1e-3)
  assert bool(back.flipped)
  # A missing SL: not completed (NaN ULs), flagged.
  bad = sls[0].copy()
  bad[S.stable[0]] = np.nan
  res = statistical.complete(np.stack([bad, sls[0]]), model, flip=False)
  assert res.ok.tolist() == [False, True]
  assert np.isnan(res.points[0, S.unstable]).all()


def test_save_load_and_errors(data, tmp_path):
  model = statistical.fit(data['train'][0], num_bins=3)
  model.save(tmp_path / 'g.npz')
  again = statistical.GaussianShapeModel.load(tmp_path / 'g.npz')
  for k, v in model.__dict__.items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(getattr(again, k)), err_msg=k)
  other = S.with_stable([i for i in S.stable if i != 54] + [53])
  with pytest.raises(ValueError, match='conditions on SLs'):
    statistical.complete(data['test'][0], model, scheme=other)
  # A model fitted for another split works with that scheme.
  alt = statistical.fit(data['train'][0], scheme=other, num_bins=1)
  assert alt.stable.tolist() == list(other.stable)
  assert statistical.complete(data['test'][0], alt, scheme=other).ok.all()
  with pytest.raises(ValueError, match='shapes must be'):
    statistical.fit(np.zeros((10, 5, 2)))
  with pytest.raises(ValueError, match='at least'):
    statistical.fit(data['train'][0][:3], num_bins=2)
  with pytest.raises(ValueError, match='points must be'):
    statistical.complete(np.zeros((3, 5, 2)), model)
  from jaxalign import inference
  with pytest.raises(FileNotFoundError, match='nowhere'):
    inference.complete_points(np.zeros((1, 68, 2)), S, 'gaussian', train_dir=tmp_path / 'nowhere')


def test_cached_fit_is_fitted_once_per_key_and_split(data):
  calls = []

  def load():
    calls.append(1)
    return data['train'][0]

  a = statistical.cached_fit(data['train_dir'], load)
  assert statistical.cached_fit(data['train_dir'], load) is a and len(calls) == 1
  other = S.with_stable([i for i in S.stable if i != 54] + [53])
  b = statistical.cached_fit(data['train_dir'], load, other)
  assert b is not a and b.stable.tolist() == list(other.stable)
