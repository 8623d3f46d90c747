"""Tests of the evaluation report, plots and comparison on synthetic arrays (no model)."""

import json

import numpy as np
import pytest

from jaxalign import metrics
from jaxalign import schemes
from jaxalign.evaluation import compare
from jaxalign.evaluation import plots
from jaxalign.evaluation import report


def _faces(n=40, seed=0, noise=2.0):
  rng = np.random.default_rng(seed)
  base = rng.uniform(20, 80, (68, 2))
  base[36] = (30, 40)
  base[45] = (70, 40)   # inter-ocular distance 40 px
  gt = base[None] + rng.normal(0, 1, (n, 68, 2))
  pred = gt + rng.normal(0, noise, (n, 68, 2)) * rng.uniform(0.2, 3, (n, 1, 1))
  boxes = np.concatenate([gt.min(1), gt.max(1)], axis=1)
  yaw = rng.uniform(-90, 90, n)
  return pred.astype(np.float32), gt.astype(np.float32), boxes.astype(np.float32), yaw


def test_compute_report_matches_metrics():
  pred, gt, boxes, yaw = _faces()
  rep = report.compute_report(pred, gt, boxes, yaw=yaw, yaw_source='annotations')
  io = metrics.nme(pred, gt, 'inter_ocular')
  assert rep['num_images'] == 40
  assert rep['nme_inter_ocular'] == pytest.approx(io.mean())
  assert rep['nme_inter_pupil'] == pytest.approx(metrics.nme(pred, gt, 'inter_pupil').mean())
  assert rep['nme_bbox'] == pytest.approx(metrics.nme(pred, gt, 'bbox', boxes=boxes).mean())
  assert rep['fr_0.08'] == pytest.approx(np.mean(io > 0.08))
  assert rep['fr_0.10'] == pytest.approx(np.mean(io > 0.10))
  assert rep['auc_0.08'] == pytest.approx(np.mean(np.clip(1 - io / 0.08, 0, None)))
  assert rep['auc_0.10'] == pytest.approx(np.mean(np.clip(1 - io / 0.10, 0, None)))
  # SL / UL group errors share the inter-ocular normaliser and average back to the total.
  sl, ul = rep['nme_stable'], rep['nme_unstable']
  n_sl, n_ul = len(schemes.IBUG68.stable), len(schemes.IBUG68.unstable)
  assert (sl * n_sl + ul * n_ul) / 68 == pytest.approx(rep['nme_inter_ocular'])
  bins = rep['nme_by_yaw']
  assert [b['yaw_min'] for b in bins] == list(range(-90, 90, 15))
  assert sum(b['count'] for b in bins) == 40
  for b in bins:
    sel = (yaw >= b['yaw_min']) & ((yaw < b['yaw_max']) | (b['yaw_max'] == 90) & (yaw <= 90))
    if b['count']:
      assert b['nme'] == pytest.approx(io[sel].mean())
    else:
      assert b['nme'] is None
  assert sum(b['count'] for b in rep['nme_by_abs_yaw']) == 40
  assert rep['yaw_source'] == 'annotations'
  json.dumps(rep, allow_nan=False)   # plain JSON


def test_subset_nme_uses_only_the_group():
  pred, gt, boxes, _ = _faces(5)
  moved = gt.copy()
  moved[:, list(schemes.IBUG68.unstable)] += 4.0   # only the ULs are off
  rep = report.compute_report(moved, gt, boxes)
  assert rep['nme_stable'] == pytest.approx(0.0)
  assert rep['nme_unstable'] == pytest.approx(np.sqrt(32) / 40, rel=0.05)
  assert rep['nme_by_yaw'] and all(b['count'] == 0 for b in rep['nme_by_yaw'])


def test_compute_report_rejects_bad_shapes():
  pred, gt, boxes, _ = _faces(3)
  with pytest.raises(ValueError, match='shape'):
    report.compute_report(pred[:, :10], gt, boxes)
  with pytest.raises(ValueError, match='68 points'):
    report.compute_report(pred[:, :19], gt[:, :19], boxes)


def test_paper_reference():
  assert report.paper_reference('300w', 'full') == {'nme_inter_ocular': 0.0277,
                                                    'nme_inter_pupil': 0.0387}
  assert report.paper_reference('300W', 'common')['nme_inter_ocular'] == 0.0248
  assert report.paper_reference('300-W', 'challenge')['nme_inter_ocular'] == 0.0398
  assert report.paper_reference('cofw68', 'test')['nme_inter_ocular'] == 0.0355
  assert report.paper_reference('aflw', 'test')['nme_bbox'] == 0.0151
  assert report.paper_reference('synthetic', 'test') is None
  assert report.paper_reference('300w', 'train') is None


def test_write_report_and_predictions_round_trip(tmp_path):
  pred, gt, boxes, yaw = _faces()
  rep = report.compute_report(pred, gt, boxes, yaw=yaw)
  rep.update(dataset='300w:full', completion_backend='jax', checkpoint_step=7,
             timings={'total_s': 1.5})
  jpath, mpath = report.write_report(tmp_path, rep, report.paper_reference('300w', 'full'))
  back = report.read_report(tmp_path)
  assert back['paper']['nme_inter_ocular'] == 0.0277
  assert back['checkpoint_step'] == 7
  md = mpath.read_text()
  assert '| NME inter-ocular |' in md and '2.77' in md and '| ours | paper |' in md
  report.save_predictions(tmp_path / 'predictions.npz', pred, gt, boxes, yaw=yaw)
  data = report.load_predictions(tmp_path / 'predictions.npz')
  assert data['pred'].shape == (40, 68, 2) and data['boxes'].shape == (40, 4)
  assert metrics.nme(data['pred'], data['gt']).mean() == pytest.approx(back['nme_inter_ocular'])
  with pytest.raises(FileNotFoundError, match='no evaluation report'):
    report.read_report(tmp_path / 'missing')
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'report.json').write_text('{')
  with pytest.raises(ValueError, match='not a valid report'):
    report.read_report(tmp_path / 'bad')


def test_plots_write_pngs(tmp_path):
  pred, gt, boxes, yaw = _faces(12)
  rep = report.compute_report(pred, gt, boxes, yaw=yaw)
  io = metrics.nme(pred, gt)
  plots.plot_ced({'run': report.ced_curve(io)}, tmp_path / 'ced.png')
  plots.plot_nme_by_pose({'a': rep['nme_by_yaw'], 'b': rep['nme_by_yaw'][:3]},
                         tmp_path / 'pose.png')
  image = np.full((100, 100, 3), 90, np.uint8)
  best, worst = plots.plot_best_worst(lambda i: image if i % 2 else None, pred, gt, boxes, io,
                                      tmp_path / 'grid.png', k=3, names=[f'f{i}.png' for i in
                                                                         range(12)])
  assert io[best[0]] == io.min() and io[worst[0]] == io.max()
  for name in ('ced.png', 'pose.png', 'grid.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_best_and_worst_skip_nan():
  best, worst = plots.best_and_worst(np.array([0.3, np.nan, 0.1, 0.2]), 2)
  assert best.tolist() == [2, 3] and worst.tolist() == [0, 3]


def _eval_dir(path, seed, noise, name):
  pred, gt, boxes, yaw = _faces(20, seed, noise)
  rep = report.compute_report(pred, gt, boxes, yaw=yaw)
  rep.update(workdir=f'/runs/{name}', dataset='synthetic:test')
  report.write_report(path, rep)
  report.save_predictions(path / 'predictions.npz', pred, gt, boxes, yaw=yaw)
  return rep


def test_compare_runs(tmp_path):
  a = _eval_dir(tmp_path / 'a', 0, 1.0, 'pose_aware')
  b = _eval_dir(tmp_path / 'b', 0, 3.0, 'baseline')
  result = compare.compare([tmp_path / 'a', tmp_path / 'b'], tmp_path / 'cmp')
  assert [r['label'] for r in result['runs']] == ['pose_aware', 'baseline']
  assert result['runs'][0]['nme_inter_ocular'] == a['nme_inter_ocular']
  assert result['runs'][1]['fr_0.08'] == b['fr_0.08']
  md = (tmp_path / 'cmp' / 'comparison.md').read_text()
  assert '| pose_aware |' in md and '| baseline |' in md and 'NME by |yaw|' in md
  for name in ('ced.png', 'nme_by_pose.png', 'comparison.json'):
    assert (tmp_path / 'cmp' / name).is_file()
  with pytest.raises(FileNotFoundError, match='no evaluation report'):
    compare.compare([tmp_path / 'a', tmp_path / 'nothing'], tmp_path / 'cmp2')
  with pytest.raises(ValueError, match='nothing to compare'):
    compare.compare([], tmp_path / 'cmp3')


def test_compare_pairs_runs_on_the_same_faces(tmp_path):
  _eval_dir(tmp_path / 'a', 0, 1.0, 'pose_aware')
  _eval_dir(tmp_path / 'b', 0, 3.0, 'plain')
  _eval_dir(tmp_path / 'c', 1, 1.0, 'other_faces')
  result = compare.compare([tmp_path / d for d in 'abc'], tmp_path / 'cmp')
  paired = result['paired']
  assert paired['baseline'] == 'pose_aware' and set(paired['runs']) == {'plain'}
  pa = report.load_predictions(tmp_path / 'a' / 'predictions.npz')
  pb = report.load_predictions(tmp_path / 'b' / 'predictions.npz')
  for norm in ('inter_ocular', 'bbox'):
    d = metrics.nme(pb['pred'], pb['gt'], norm) - metrics.nme(pa['pred'], pa['gt'], norm)
    row = paired['runs']['plain'][norm]['all']
    assert row['n'] == 20 and row['mean'] == pytest.approx(d.mean())
    assert row['lo'] < row['mean'] < row['hi'] and row['lo'] > 0   # 3 px noise is worse
    assert sum(paired['runs']['plain'][norm][k]['n'] for k in ('0-30', '30-60', '60-90')) == 20
  assert 'minus pose_aware' in (tmp_path / 'cmp' / 'comparison.md').read_text()
  assert compare.compare([tmp_path / 'a', tmp_path / 'c'], tmp_path / 'cmp2')['paired'] is None


def test_paired_differences_bins_and_interval():
  diff = np.array([1.0, 1.0, 3.0, 3.0, np.nan, -2.0])
  yaw = np.array([10.0, 20.0, 40.0, 50.0, 45.0, 90.0])
  rows = compare.paired_differences(diff, yaw, num_boot=500)
  assert rows['0-30'] == {'mean': 1.0, 'lo': 1.0, 'hi': 1.0, 'n': 2}
  assert rows['30-60']['n'] == 2 and rows['60-90']['mean'] == -2.0   # 90 is in the last bin
  assert rows['all']['n'] == 5 and rows['all']['mean'] == pytest.approx(1.2)
  assert rows['all']['lo'] < 1.2 < rows['all']['hi']
  assert compare.paired_differences(np.array([np.nan]), np.array([5.0]))['all']['n'] == 0
