"""Every data-set reader on the genuine sample files in ``../shared/formats`` (see its README).

The files were copied byte for byte from public repositories that committed them: 6 AFLW2000-3D
faces, 1 300W-LP face, 7 COFW-68 test annotations with the 507 boxes, and three 300-W folders
with both ``.pts`` header spellings. One test per data set checks the counts, the value ranges
and the point order (iBUG 68: mirror pairs on their sides, the chin below the nose, ...), so a
reader that transposes, swaps or mis-shifts a genuine file fails here even when our own
fixtures (tests/test_datasets.py) agree with it. Skipped only where the folder is absent.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxalign import datasets
from jaxalign import geometry
from jaxalign import schemes
from jaxalign.data import sources

FORMATS = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'formats'
pytestmark = pytest.mark.skipif(
    not FORMATS.is_dir(), reason=f'the genuine sample files ({FORMATS}) are not on this machine')

_PERM = schemes.IBUG68.flip_index_array()
# (viewer's-left point, its mirror) for every iBUG pair. The lower lip runs from the viewer's
# right (55) back to the left (59), and the inner one from 65 to 67, so there the higher index
# is the viewer's-left one.
_LOWER_LIP = set(range(55, 60)) | {65, 66, 67}
MIRROR_PAIRS = [(j, i) if i in _LOWER_LIP else (i, j)
                for i, j in ((i, int(_PERM[i])) for i in range(68)) if j > i]


def _check_ibug_order(points: np.ndarray, frontal: bool, what: str) -> None:
  """iBUG-68 order on a face: outer eye corners and mouth corners left to right, brows above
  the eyes, the nose above the mouth, the chin below the nose; every mirror pair on its side
  for a frontal face."""
  p = np.asarray(points)
  assert p.shape == (68, 2) and np.isfinite(p).all(), what
  assert p[36, 0] < p[45, 0] and p[48, 0] < p[54, 0], what
  assert p[17:27, 1].mean() < p[36:48, 1].mean() < p[30, 1] < p[48:68, 1].mean() < p[8, 1], what
  if frontal:
    wrong = [(a, b) for a, b in MIRROR_PAIRS if not p[a, 0] < p[b, 0]]
    assert not wrong, f'{what}: mirror pairs on the wrong side: {wrong}'


def _estimated_yaw(points) -> float:
  return float(geometry.estimate_yaw(np.asarray(points)))


def _check_cli(argv, capsys) -> dict:
  assert datasets.main(argv + ['--json']) == 0
  return json.loads(capsys.readouterr().out)


def test_aflw2000_3d_unzipped_files(capsys):
  root = FORMATS / 'aflw2000_3d'
  recs, invalid = sources.get_source('aflw2k3d', root, 'test', route='files')
  assert invalid == [] and len(recs) == 6
  assert [pathlib.Path(r.image).name for r in recs] == [
      'image00050.jpg', 'image00081.jpg', 'image00251.jpg', 'image00430.jpg', 'image00475.jpg',
      'image02283.jpg']
  for r in recs:
    name = pathlib.Path(r.image).name
    assert r.scheme == 'ibug68' and r.meta['convention'] == '3d'
    assert r.meta['landmarks_source'] == 'pt3d_68' and r.meta['z'].shape == (68,)
    assert np.isfinite(r.meta['z']).all() and r.meta['pose_params'].shape == (7,)
    # 450 x 450 crops; every point of the sample falls inside the image.
    assert (r.points > 0).all() and (r.points < 449).all(), name
    np.testing.assert_array_equal(r.box, np.r_[r.points.min(0), r.points.max(0)])
    # 3D convention: even the hidden jaw of a profile face keeps its side.
    _check_ibug_order(r.points, frontal=abs(r.yaw) < 30, what=name)
    assert r.points[0, 0] < r.points[16, 0], name
    # Pose_Para's yaw has the opposite sign to eos's: record.yaw agrees with the points.
    if abs(r.yaw) > 10:
      assert np.sign(r.yaw) == np.sign(_estimated_yaw(r.points)), (name, r.yaw)
  yaws = {pathlib.Path(r.image).stem: round(r.yaw) for r in recs}
  assert yaws['image00251'] == 55 and yaws['image00475'] == -66     # right / left-looking
  # What the TFDS builder does (pt3d_68.T[:, :2] / 450 stored, * 450 - 1 read) is what the files
  # route gives: the same numbers.
  from jaxalign.data.sources import matfile  # pylint: disable=g-import-not-at-top
  raw = matfile.load_mat(root / 'image00050.mat', ['pt3d_68'])['pt3d_68']
  assert raw.shape == (3, 68)
  np.testing.assert_allclose(recs[0].points, raw[:2].T - 1.0, atol=1e-4)
  # The check command, without tensorflow-datasets, and the default route.
  report = _check_cli(['check', '--dataset', 'aflw2k3d', str(root)], capsys)
  assert report['test'] == 6 and report['invalid'] == []


def test_300w_lp_unzipped_files(capsys, tmp_path):
  root = FORMATS / '300w_lp'
  recs, invalid = sources.get_source('the300w_lp', root, 'train')
  assert invalid == [] and len(recs) == 1
  r = recs[0]
  assert pathlib.Path(r.image).name == 'IBUG_image_008_1_0.jpg'
  # No landmarks/ folder here: the default ('2d') falls back to the _0 image's own pt2d, the
  # 300-W annotation in the crop (2D convention).
  assert r.meta['landmarks_source'] == 'pt2d' and r.meta['convention'] == '2d'
  assert r.meta['subset'] == 'IBUG' and r.meta['profile'] == 0
  assert (r.points > 0).all() and (r.points < 449).all()
  # A right-looking face (3DDFA yaw -44 degrees, eos +44): eyes, brows and mouth in order.
  assert round(r.yaw) == 44 and _estimated_yaw(r.points) > 20
  _check_ibug_order(r.points, frontal=False, what=r.image)
  wrong = [(a, b) for a, b in MIRROR_PAIRS if not r.points[a, 0] < r.points[b, 0]]
  assert wrong == []
  # 3D-convention points need landmarks/<subset>/*_pts.mat, which the sample lacks: listed,
  # with the reason, not dropped.
  recs3d, invalid3d = sources.get_source('the300w_lp', root, 'train', landmarks='3d')
  assert recs3d == [] and len(invalid3d) == 1 and 'pts_3d' in invalid3d[0].reason
  # 'origin' reads pt2d too.
  origin, _ = sources.get_source('the300w_lp', root, 'train', landmarks='origin')
  np.testing.assert_array_equal(origin[0].points, r.points)
  report = _check_cli(['check', '--dataset', 'the300w_lp', str(root)], capsys)
  assert report['train'] == 1 and report['invalid'] == []


def test_cofw68_annotations_and_boxes_without_the_images(capsys):
  root = FORMATS / 'cofw68'
  recs, invalid = sources.get_source('cofw68', root, 'test', with_images=False)
  assert [r.meta['index'] for r in recs] == [1, 2, 3, 10, 100, 101, 507]
  # The 507 boxes list every test image; the 500 without a sample annotation are listed.
  assert len(invalid) == 500 and all('no 68-point annotation' in i.reason for i in invalid)
  for r in recs:
    what = f'COFW-68 face {r.meta["index"]}'
    assert r.meta['box_source'] == 'cofw68' and r.visible.shape == (68,)
    assert 0 < r.meta['num_occluded'] < 68 and r.meta['num_occluded'] == (~r.visible).sum()
    assert (r.points > 0).all() and (r.points < 400).all(), what
    # The boxes are [x y w h]: the points lie in the box (a detector box: the jaw may poke
    # out), and the box overlaps the points' own box. Read as [x0 y0 x1 y1] or [y x h w] the
    # sample's points fall mostly outside.
    x0, y0, x1, y1 = r.box
    p = r.points
    inside = ((p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)).mean()
    assert inside >= 0.75, (what, inside)
    lx0, ly0, lx1, ly1 = np.r_[p.min(0), p.max(0)]
    inter = max(0, min(x1, lx1) - max(x0, lx0)) * max(0, min(y1, ly1) - max(y0, ly0))
    union = (x1 - x0) * (y1 - y0) + (lx1 - lx0) * (ly1 - ly0) - inter
    assert inter / union > 0.7, what
    assert 80 < x1 - x0 < 200 and 80 < y1 - y0 < 200, what
    # The 68 points are in iBUG order: these test faces are near frontal.
    assert abs(_estimated_yaw(p)) < 30, what
    _check_ibug_order(p, frontal=True, what=what)
  # The check command reads the 7 faces without COFW_test_color.mat (and writes nothing).
  report = _check_cli(['check', '--dataset', 'cofw68', str(root), '--no-images'], capsys)
  assert report['test'] == 7 and len(report['invalid']) == 500
  assert not (root / 'jaxalign_images').exists()
  with pytest.raises(FileNotFoundError, match='check --no-images'):
    sources.get_source('cofw68', root, 'test')


@pytest.mark.parametrize('folder,count', [
    ('indoor_sample', 5), ('afw_helen_sample', 6), ('lfpw_trainset_sample', 3)])
def test_300w_pts_folders(folder, count, capsys):
  root = FORMATS / '300w' / folder
  recs, invalid = sources.get_source('folder', root, 'all')
  assert invalid == [] and len(recs) == count
  for r in recs:
    name = pathlib.Path(r.image).name
    assert r.scheme == 'ibug68' and r.points.shape == (68, 2)
    assert (r.points > 0).all() and (r.points < 2000).all(), name
    _check_ibug_order(r.points, frontal=abs(_estimated_yaw(r.points)) < 30, what=name)
  report = _check_cli(['check', '--dataset', 'folder', str(root)], capsys)
  assert report['all'] == count and report['invalid'] == []


def test_evaluation_of_aflw2000_3d_completes_in_the_3d_convention(tmp_path, monkeypatch):
  """Any run (here the smoke config, whose completion convention is '2d') evaluates the
  genuine AFLW2000-3D faces by their own 3D convention. The CNNs and the 3DMM fit are faked
  (they have their own tests); the convention handed to the completion is what is checked."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from jaxalign import inference  # pylint: disable=g-import-not-at-top
  from jaxalign.evaluation import runner  # pylint: disable=g-import-not-at-top
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  recs, _ = sources.get_source('aflw2k3d', FORMATS / 'aflw2000_3d', 'test')
  stable = schemes.IBUG68.stable_mask()
  calls = []

  def fake_predict(model, config, records, batch_size, **kw):
    gt = np.stack([r.points for r in records]).astype(np.float32)
    pred = np.where(stable[None, :, None], gt + 1.0, np.nan).astype(np.float32)
    return {'rough': gt + 2.0, 'stable': pred, 'cnn_points': np.where(np.isnan(pred), gt, pred),
            'flipped': np.zeros(len(records), bool), 'valid': np.ones(len(records), bool),
            'boxes': np.stack([r.box for r in records]).astype(np.float32)}

  class Result:
    def __init__(self, points):
      self.points = points

  def fake_complete(points, scheme, backend, flip, convention, **kw):
    calls.append(convention)
    return Result(np.where(np.isnan(points), 0.0, points))

  monkeypatch.setattr(inference, 'predict_records', fake_predict)
  monkeypatch.setattr(completion, 'complete', fake_complete)
  repo = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location('smoke_cfg', repo / 'configs' / 'smoke.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.eval.completion_convention == '2d'
  info = {'dataset': 'aflw2k3d:test', 'name': 'aflw2k3d', 'split': 'test',
          'normalization': sources.source_info('aflw2k3d').normalization}
  rep = runner.evaluate_records(None, config, recs, tmp_path, info, completion='jax',
                                with_plots=False)
  assert calls and set(calls) == {'3d'}
  assert rep['num_images'] == 6 and rep['completion_convention'] == '3d'
  assert rep['primary_normalization'] == 'bbox'
