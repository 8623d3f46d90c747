"""End to end: a tiny trained run -> python -m jaxalign.evaluate / --compare / jaxalign.predict.

One smoke run (configs/smoke.py, two steps on 64 px crops of the shared real face) is trained
once per test session (``smoke_run`` in conftest.py); the tests check the files, keys and numbers the commands produce, not the
accuracy of a model trained for two steps.
"""

import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from jaxalign import evaluate as evaluate_cli
from jaxalign import io
from jaxalign import metrics
from jaxalign import predict as predict_cli
from jaxalign import schemes
from jaxalign.evaluation import report as report_lib
from jaxalign.evaluation import runner

REPO = pathlib.Path(__file__).resolve().parents[1]
FACES = REPO.parent / 'shared' / 'faces'
REPORT_KEYS = ('num_images', 'nme_inter_ocular', 'nme_inter_pupil', 'nme_bbox', 'fr_0.08',
               'fr_0.10', 'auc_0.08', 'auc_0.10', 'nme_stable', 'nme_unstable', 'nme_by_yaw',
               'completion_backend', 'checkpoint_step', 'timings')


@pytest.fixture(scope='module')
def run(smoke_run):
  """The session's trained smoke run (tests/conftest.py)."""
  return smoke_run


def test_evaluate_writes_the_report(run):
  # The smoke config switches the completion off (eval.completion=False); ask for it.
  rep = runner.evaluate(run, completion='jax')
  out = run / 'eval' / 'test'
  assert rep['out_dir'] == str(out)
  data = json.loads((out / 'report.json').read_text())
  for key in REPORT_KEYS:
    assert key in data, key
  assert data['num_images'] == 6 and data['checkpoint_step'] == 2
  assert data['completion_backend'] == 'jax'
  assert data['yaw_source'] == 'annotations+3dmm'
  assert sum(b['count'] for b in data['nme_by_yaw']) == 6
  for b in data['nme_by_yaw']:
    assert set(b) == {'yaw_min', 'yaw_max', 'count', 'nme'}
  assert {'cnn_s', 'completion_s', 'total_s'} <= set(data['timings'])
  # The NME recomputed from predictions.npz is the report's.
  npz = report_lib.load_predictions(out / 'predictions.npz')
  assert npz['pred'].shape == npz['gt'].shape == (6, 68, 2)
  assert npz['boxes'].shape == (6, 4)
  assert np.isfinite(npz['pred']).all()
  for norm in ('inter_ocular', 'inter_pupil', 'bbox'):
    recomputed = metrics.nme(npz['pred'], npz['gt'], norm, boxes=npz['boxes']).mean()
    assert recomputed == pytest.approx(data[f'nme_{norm}'], rel=1e-9)
  assert metrics.failure_rate(metrics.nme(npz['pred'], npz['gt']), 0.08) == data['fr_0.08']
  # Annotated yaws are kept as given; the others come from the fit.
  np.testing.assert_allclose(npz['yaw'][:3], [30.0, -30.0, 10.0])
  assert np.isfinite(npz['yaw']).all()
  # The ground truth is the annotation, in image pixels.
  np.testing.assert_allclose(npz['gt'][0], io.read_pts(run.parent / 'test' / 'face_000.pts'))
  for name in ('report.md', 'ced.png', 'nme_by_pose.png', 'best_worst.png'):
    assert (out / name).stat().st_size > 0, name
  assert '| NME inter-ocular |' in (out / 'report.md').read_text()


def test_end_of_run_and_cli_evaluation_give_identical_numbers(run, tmp_path):
  """The end-of-run evaluation (workflow -> evaluate_splits) and ``python -m jaxalign.evaluate``
  run the same evaluator on the same records: the same metrics to the last bit."""
  from jaxalign import inference
  from jaxalign.training import data_setup
  cli = runner.evaluate(run, out=tmp_path / 'cli')
  opened = inference.Run.load(run)
  end = runner.evaluate_splits(opened, data_setup.test_sets(opened.config))['test']
  for key in ('nme', 'nme_inter_ocular', 'nme_bbox', 'nme_stable', 'nme_unstable',
              'cnn_nme_inter_ocular', 'mean_shape_nme_inter_ocular', 'fr_0.08', 'auc_0.08',
              'num_images', 'checkpoint_step', 'completion_backend', 'nme_by_yaw'):
    assert cli[key] == end[key], key
  assert np.isfinite(cli['mean_shape_nme_inter_ocular'])   # data_stats.json's mean shape


def test_evaluate_on_a_300w_layout_shows_the_paper(run, tmp_path, capsys):
  root = tmp_path / '300w'
  for sub in ('ibug', 'helen/testset', 'lfpw/testset'):
    (root / sub).mkdir(parents=True)
  for i, sub in enumerate(('ibug', 'ibug', 'helen/testset', 'lfpw/testset')):
    for ext in ('.png', '.pts'):
      shutil.copy(run.parent / 'test' / f'face_{i:03d}{ext}', root / sub / f'f{i}{ext}')
  status = evaluate_cli.main(['--workdir', str(run), '--dataset', '300w:challenge',
                              '--data-dir', str(root), '--out', str(tmp_path / 'out')])
  assert status == 0
  data = json.loads((tmp_path / 'out' / 'report.json').read_text())
  assert data['num_images'] == 2 and data['dataset'] == '300w:challenge'
  assert data['paper'] == {'nme_inter_ocular': 0.0398}
  md = (tmp_path / 'out' / 'report.md').read_text()
  assert '| ours | paper |' in md and '3.98' in md
  assert 'written to' in capsys.readouterr().out
  # A folder given directly; no paper numbers for it.
  rep = runner.evaluate(run, str(root / 'ibug'), out=tmp_path / 'folder')
  assert rep['num_images'] == 2 and 'paper' not in rep
  # A run trained on a registered data set evaluates its first configured test split by default.
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'model': {'scheme': 'ibug68'}, 'data': {
      'source': '300w', 'root': str(root), 'test_source': '', 'test_root': '',
      'test_splits': ('challenge', 'full'), 'test_dir': '', 'test_split': 'test'}})
  records, _, info = runner.resolve_dataset(config)
  assert info['dataset'] == '300w:challenge' and len(records) == 2


def test_evaluate_cli_errors_are_one_line(run, tmp_path, capsys):
  assert evaluate_cli.main(['--workdir', str(tmp_path / 'nothing')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'Traceback' not in err and 'nothing' in err
  assert evaluate_cli.main(['--workdir', str(run), '--dataset', 'nosuchset:x',
                            '--data-dir', str(tmp_path)]) == 2
  assert 'nosuchset' in capsys.readouterr().err
  assert evaluate_cli.main(['--workdir', str(run), '--dataset', '300w:full']) == 2
  assert '--data-dir' in capsys.readouterr().err


def test_compare_two_runs(run, tmp_path, capsys):
  other = tmp_path / 'baseline'
  shutil.copytree(run, other, ignore=shutil.ignore_patterns('eval'))
  result = runner.compare_runs([run, other], out=tmp_path / 'cmp')
  labels = [r['label'] for r in result['runs']]
  # The command line: reuses both fresh reports and prints the table.
  assert evaluate_cli.main(['--compare', str(run), str(other), '--out',
                            str(tmp_path / 'cmp_cli')]) == 0
  printed = capsys.readouterr().out
  assert '| run |' in printed and '| baseline |' in printed
  assert labels == ['run', 'baseline']
  # Same weights, same data: the same numbers.
  a, b = result['runs']
  assert a['nme_inter_ocular'] == pytest.approx(b['nme_inter_ocular'], rel=1e-5)
  assert (other / 'eval' / 'test' / 'report.json').is_file()   # evaluated on demand
  for name in ('comparison.md', 'comparison.json', 'ced.png', 'nme_by_pose.png'):
    assert (tmp_path / 'cmp' / name).is_file()


def _bbox_arg():
  pts = io.read_pts(FACES / 'image_0010.pts')
  lo, hi = pts.min(0), pts.max(0)
  return ','.join(f'{v:.1f}' for v in (*lo, *hi))


def test_predict_real_face_with_bbox_and_mesh(run, tmp_path, capsys):
  status = predict_cli.main(['--workdir', str(run), str(FACES / 'image_0010.png'), '--bbox',
                             _bbox_arg(), '--out', str(tmp_path), '--mesh'])
  assert status == 0
  pts = io.read_pts(tmp_path / 'image_0010.pts', num_points=68)
  assert np.isfinite(pts).all()
  data = json.loads((tmp_path / 'image_0010.json').read_text())
  for key in ('points', 'box', 'yaw', 'pitch', 'roll', 'shape_coeffs', 'expression_coeffs',
              'completion_backend', 'flipped'):
    assert key in data, key
  np.testing.assert_allclose(np.array(data['points']), pts, atol=1e-4)
  assert data['box_source'] == 'bbox' and data['completion_backend'] == 'jax'
  np.testing.assert_allclose(data['box'], [float(v) for v in _bbox_arg().split(',')], atol=1e-4)
  assert np.isfinite(data['yaw']) and len(data['expression_coeffs']) == 6
  overlay = cv2.imread(str(tmp_path / 'image_0010.png'))
  assert overlay.shape == (1024, 1280, 3)
  obj = (tmp_path / 'image_0010.obj').read_text().splitlines()
  assert sum(line.startswith('v ') for line in obj) == 3448
  assert sum(line.startswith('f ') for line in obj) == 6736
  assert '1 face(s) from 1 of 1 image(s)' in capsys.readouterr().out


def test_predict_detector_and_bad_inputs(run, tmp_path, capsys):
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'not an image at all')
  blank = tmp_path / 'blank.png'
  cv2.imwrite(str(blank), np.full((48, 40, 3), 128, np.uint8))
  status = predict_cli.main(['--workdir', str(run), str(tmp_path / 'missing.png'), str(bad),
                             str(FACES / 'image_0010.png'), str(blank),
                             '--out', str(tmp_path / 'out')])
  assert status == 1
  captured = capsys.readouterr()
  err = captured.err
  assert 'Traceback' not in err
  lines = [line for line in err.splitlines() if line]
  assert any('missing.png' in line and 'no such file' in line for line in lines)
  assert any('broken.jpg' in line and 'cannot decode' in line for line in lines)
  assert any('blank.png' in line and 'no face detected' in line for line in lines)
  assert len(lines) == 3
  data = json.loads((tmp_path / 'out' / 'image_0010.json').read_text())
  assert data['box_source'].startswith('detector:')
  assert (tmp_path / 'out' / 'image_0010.pts').is_file()
  assert not (tmp_path / 'out' / 'blank.pts').exists()
  assert '3 image(s) failed' in captured.out


def test_predict_tiny_synthetic_image_with_bbox(run, tmp_path, capsys):
  img = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
  path = tmp_path / 'tiny.png'
  cv2.imwrite(str(path), img)
  assert predict_cli.main(['--workdir', str(run), str(path), '--bbox', '8,6,40,36', '--out',
                           str(tmp_path / 'o'), '--completion', 'jax']) == 0
  assert io.read_pts(tmp_path / 'o' / 'tiny.pts').shape == (68, 2)
  assert predict_cli.main(['--workdir', str(run), str(path), '--bbox', '8,6,4,36']) == 2
  assert 'x1 > x0' in capsys.readouterr().err
  assert predict_cli.main(['--workdir', str(tmp_path / 'norun'), str(path)]) == 2
  assert 'cannot load the run' in capsys.readouterr().err


def test_bench_predict_json(run, tmp_path, capsys):
  from jaxalign.benchmarks import predict as bench_predict
  # Batch 1 on the run of this module: the shapes compiled by the predict tests are reused.
  status = bench_predict.main(['--workdir', str(run), '--bbox', _bbox_arg(), '--batch-size', '1',
                               '--faces', '2', '--json'])
  assert status == 0
  result = json.loads(capsys.readouterr().out)
  assert [r['batch'] for r in result['rows']] == [1]
  assert result['rows'][0]['faces'] == 2 and result['rows'][0]['faces_per_s'] > 0
  assert result['compilation'] == 'excluded' and result['completion'] == 'jax'
  assert bench_predict.main(['--image', str(tmp_path / 'none.png')]) == 2
  assert 'no such file' in capsys.readouterr().err


def test_predict_many_faces_of_several_photos_with_a_named_detector(run, tmp_path, capsys):
  """Faces of several photos share the batches; ``--detector`` picks the detector; one bad
  photo among good ones is reported and the rest are written."""
  real = FACES / 'real'
  photos = [real / '2008_001322.jpg', real / '2007_007763.jpg']
  bad = tmp_path / 'truncated.jpg'
  bad.write_bytes(photos[0].read_bytes()[:200])
  status = predict_cli.main(['--workdir', str(run), *map(str, photos), str(bad), '--detector',
                             'haar', '--out', str(tmp_path / 'out'), '--no-progress'])
  captured = capsys.readouterr()
  assert status == 1 and 'truncated.jpg' in captured.err and 'Traceback' not in captured.err
  faces = sorted((tmp_path / 'out').glob('*.json'))
  assert len(faces) >= 4            # several faces per photo
  sources = {json.loads(f.read_text())['box_source'] for f in faces}
  assert all(s.startswith('detector:haar') for s in sources)
  for p in photos:
    assert (tmp_path / 'out' / f'{p.stem}.png').is_file()
  with pytest.raises(SystemExit) as e:
    predict_cli.main(['--workdir', str(run), str(photos[0]), '--detector', 'nope'])
  assert e.value.code == 2


def test_evaluation_with_fusion_reports_fused_unfused_and_cnn_only(run, tmp_path):
  """eval.completion_fusion: the fit also takes CNN1's points, weighted by the run's held-out
  residual table; the report has the fused NME (``nme``), the unfused one and the CNN pair's."""
  from jaxalign import inference
  from jaxalign.morphable import completion
  from jaxalign.training import config as config_lib
  other = tmp_path / 'fused'
  shutil.copytree(run, other, ignore=shutil.ignore_patterns('eval'))
  config = config_lib.load_run_config(str(other))
  config.eval.completion_fusion = True
  config.eval.completion = True
  config_lib.save_run_config(config, str(other))
  # Without the residual table the fusion is skipped with a warning.
  rep = runner.evaluate(other, out=tmp_path / 'nofile')
  assert rep['completion_fusion'] is False
  bins = completion.YAW_BINS
  rms = np.full((len(bins) - 1, 68), 0.05)
  (other / inference.FUSION_FILE).write_text(json.dumps({'rms': rms.tolist(),
                                                          'bins': list(bins)}))
  rep = runner.evaluate(other, out=tmp_path / 'e')
  assert rep['completion_fusion'] is True
  for key in ('nme_inter_ocular', 'unfused_nme_inter_ocular', 'cnn_nme_inter_ocular'):
    assert np.isfinite(rep[key]), key
  assert rep['nme_inter_ocular'] != rep['unfused_nme_inter_ocular']
  assert 'without fusion' in (tmp_path / 'e' / 'report.md').read_text()
  # The stage-2 keys recompute exactly from predictions.npz.
  npz = report_lib.load_predictions(tmp_path / 'e' / 'predictions.npz')
  again = report_lib.stage2_metrics(npz['cnn'], npz['cnn1'], npz['gt'], npz['boxes'],
                                    npz['true_left'], npz['flipped'], npz['true_yaw'])
  for key in ('stage2_gain', 'stage2_win_rate', 'cnn1_nme_stable', 'flip_accuracy'):
    assert again[key] == rep[key], key
  # The collapsed-CNN1 count recomputes from the saved CNN1 points as well.
  assert rep['cnn1_implausible'] == runner.implausible_shapes(
      npz['cnn1'], [str(n) for n in npz['images']], schemes.IBUG68)


def test_evaluation_with_blend_mixes_completion_and_cnn1(run, tmp_path):
  """eval.completion_blend: the table the end of training writes (calibration.calibrate on
  held-out faces) gains the completion/CNN1 mix; the evaluation applies it when it was made for
  the completion that runs, and reports the unmixed NME beside."""
  from jaxalign import calibration, inference
  from jaxalign.data import records as records_lib
  from jaxalign.training import config as config_lib
  other = tmp_path / 'blend'
  shutil.copytree(run, other, ignore=shutil.ignore_patterns('eval'))
  config = config_lib.load_run_config(str(other))
  config.eval.completion = True
  config.eval.completion_fusion = True
  config.eval.completion_blend = True
  config_lib.save_run_config(config, str(other))
  opened = inference.Run.load(other)
  held_out, _ = records_lib.scan_folder(config.data.train_dir, 68)
  table = calibration.calibrate(opened.model, opened.config, held_out)
  alpha = np.array(table['blend']['alpha'], np.float64)
  assert alpha.shape == (len(table['bins']) - 1, 68)
  assert table['blend']['fused'] is True and table['blend']['backend'] == 'jax'
  finite = alpha[np.isfinite(alpha)]
  assert finite.size and ((finite >= 0) & (finite <= 1)).all()
  assert np.isnan(alpha[:, schemes.IBUG68.stable_mask()]).all()   # CNN2's points kept
  assert table['blend']['stable_mixed'] is False
  (other / inference.FUSION_FILE).write_text(json.dumps(table))
  rep = runner.evaluate(other, out=tmp_path / 'e')
  assert rep['completion_blend'] is True and rep['completion_fusion'] is True
  assert np.isfinite(rep['unblended_nme_inter_ocular'])
  assert rep['nme_inter_ocular'] != rep['unblended_nme_inter_ocular']
  assert 'before the mix with CNN1' in (tmp_path / 'e' / 'report.md').read_text()
  # eval.blend_stable: the stable points get their mix too, and the evaluation applies it.
  config.eval.blend_stable = True
  config_lib.save_run_config(config, str(other))
  stable_table = calibration.calibrate(inference.Run.load(other).model, config, held_out)
  assert stable_table['blend']['stable_mixed'] is True
  both = np.array(stable_table['blend']['alpha'], np.float64)
  assert np.isfinite(both[:, schemes.IBUG68.stable_mask()]).any()
  unstable = ~schemes.IBUG68.stable_mask()
  np.testing.assert_array_equal(both[:, unstable], alpha[:, unstable])
  (other / inference.FUSION_FILE).write_text(json.dumps(stable_table))
  rep_sl = runner.evaluate(other, out=tmp_path / 'esl')
  assert rep_sl['nme_inter_ocular'] != rep['nme_inter_ocular']
  assert rep_sl['stable_shift'] is None
  # eval.stable_shift: the table has CNN2's held-out mean residual, the mix is fitted on the
  # moved points, and the evaluation moves CNN2's points by it.
  assert len(stable_table['stable_shift']['mean']) == 2
  assert stable_table['blend']['stable_shifted'] is False
  config.eval.stable_shift = True
  config_lib.save_run_config(config, str(other))
  shifted = calibration.calibrate(inference.Run.load(other).model, config, held_out)
  assert shifted['stable_shift'] == stable_table['stable_shift']
  assert shifted['blend']['stable_shifted'] is True
  (other / inference.FUSION_FILE).write_text(json.dumps(shifted))
  rep_shift = runner.evaluate(other, out=tmp_path / 'eshift')
  assert rep_shift['stable_shift'] == shifted['stable_shift']['mean']
  assert rep_shift['cnn_nme_inter_ocular'] != rep_sl['cnn_nme_inter_ocular']
  config.eval.stable_shift = False
  config.eval.blend_stable = False
  # A table made for another completion is not applied.
  config.eval.completion_convention = '3d'
  config_lib.save_run_config(config, str(other))
  rep = runner.evaluate(other, out=tmp_path / 'e3d')
  assert rep['completion_blend'] is False


def test_predict_verifies_weak_detections_with_the_runs_cnn1(run, tmp_path, monkeypatch):
  """predict builds MTCNN with lowered thresholds and the run's CNN1 as verifier of its weaker
  candidates; --no-verify keeps MTCNN as it is."""
  from jaxalign.prediction import detector as detector_lib
  from jaxalign.prediction import verify
  made = []
  real_make = detector_lib.make_detector

  def recording(name=None, **options):
    made.append((name, options))
    return real_make(name, **options)
  monkeypatch.setattr(detector_lib, 'make_detector', recording)
  photo = str(FACES / 'image_0010.png')
  assert predict_cli.main(['--workdir', str(run), photo, '--detector', 'mtcnn',
                           '--out', str(tmp_path / 'a'), '--no-progress']) == 0
  name, options = made[-1]
  assert name == 'mtcnn' and options['thresholds'] == verify.VERIFIED_THRESHOLDS
  assert options['extra_min_score'] == verify.VERIFIED_EXTRA_MIN_SCORE
  assert options['grey_equalized_min_score'] == verify.VERIFIED_GREY_EQUALIZED_MIN_SCORE
  assert isinstance(options['verifier'], verify.Verifier)
  assert options['verifier'].points_fn(np.zeros((64, 64, 3), np.uint8),
                                       np.array([[8, 8, 56, 56]])).shape == (1, 68, 2)
  made.clear()
  assert predict_cli.main(['--workdir', str(run), photo, '--detector', 'mtcnn', '--no-verify',
                           '--out', str(tmp_path / 'b'), '--no-progress']) == 0
  assert all('verifier' not in options for _, options in made)
  assert (tmp_path / 'b' / 'image_0010.pts').is_file()
