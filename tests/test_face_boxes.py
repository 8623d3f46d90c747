"""Test-time face boxes (jaxalign.prediction.face_boxes): the detector where the data set has
no box file, else the landmark box jittered like a detector's; each face says which."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxalign import io
from jaxalign.data import records
from jaxalign.prediction import face_boxes

FACE = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'faces' / 'image_0010.png'


def _record(image, points, box_source='landmarks'):
  return records.FaceRecord(image=str(image), points=np.asarray(points, np.float32),
                            box=records.landmark_box(points), meta={'box_source': box_source})


def test_jittered_box_is_deterministic_within_ranges_and_not_the_truth():
  pts = np.array([[10.0, 20.0], [110.0, 20.0], [60.0, 140.0]], np.float32)
  truth = records.landmark_box(pts)
  boxes = np.stack([face_boxes.jittered_landmark_box(pts, i, 0.05, 0.07) for i in range(200)])
  np.testing.assert_array_equal(boxes[3], face_boxes.jittered_landmark_box(pts, 3, 0.05, 0.07))
  assert not np.allclose(boxes[3], face_boxes.jittered_landmark_box(pts, 4, 0.05, 0.07))
  side = 120.0
  centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
  shift = np.abs(centre - 0.5 * (truth[:2] + truth[2:])) / side
  assert shift.max() <= 0.05 + 1e-6 and shift.max() > 0.03     # uses the range, stays in it
  scale = (boxes[:, 2] - boxes[:, 0]) / (truth[2] - truth[0])
  assert 0.93 - 1e-6 <= scale.min() and scale.max() <= 1.07 + 1e-6
  np.testing.assert_allclose(face_boxes.jittered_landmark_box(pts, 0, 0.0, 0.0), truth)


def test_no_face_found_falls_back_to_a_jittered_landmark_box(tmp_path):
  Image.new('RGB', (120, 120), (128, 128, 128)).save(tmp_path / 'blank.png')
  pts = np.array([[30.0, 30.0], [90.0, 30.0], [60.0, 95.0]], np.float32)
  recs, counts = face_boxes.detector_boxes([_record(tmp_path / 'blank.png', pts)], seed=1)
  assert counts == {'landmarks_jittered': 1}
  np.testing.assert_allclose(recs[0].box, face_boxes.jittered_landmark_box(pts, 0, 0.05, 0.07, 1))


def test_box_file_boxes_are_kept_and_unreadable_images_fall_back(tmp_path):
  pts = np.array([[30.0, 30.0], [90.0, 30.0], [60.0, 95.0]], np.float32)
  kept = _record(tmp_path / 'any.png', pts, box_source='detector')
  kept = records.FaceRecord(image=kept.image, points=kept.points,
                            box=np.array([1, 2, 3, 4], np.float32), meta=kept.meta)
  (tmp_path / 'broken.png').write_bytes(b'not an image')
  recs, counts = face_boxes.detector_boxes([kept, _record(tmp_path / 'broken.png', pts)])
  assert counts == {'file': 1, 'landmarks_jittered': 1}
  np.testing.assert_array_equal(recs[0].box, [1, 2, 3, 4])
  assert recs[0].meta['box_file_kind'] == 'detector'


@pytest.mark.skipif(not FACE.is_file(), reason=f'{FACE} (the shared real face) is absent')
def test_detector_finds_the_annotated_face():
  pts = io.read_pts(FACE.with_suffix('.pts'))
  recs, counts = face_boxes.detector_boxes([_record(FACE, pts)])
  assert len(counts) == 1 and next(iter(counts)).startswith('detector:')
  from jaxalign.prediction import detector
  truth = records.landmark_box(pts)
  assert detector.box_iou(recs[0].box[None], truth[None])[0, 0] > 0.5
  assert not np.allclose(recs[0].box, truth)    # the detector's box, not the annotation's


def _config(shift=0.05):
  from jaxalign.training import config as config_lib
  c = config_lib.base_config()
  c.eval.box_jitter.shift, c.eval.box_jitter.scale, c.eval.box_jitter.rotation_deg = shift, 0.07, 10.0
  return c


def test_for_evaluation_modes(tmp_path):
  Image.new('RGB', (120, 120), (128, 128, 128)).save(tmp_path / 'blank.png')
  pts = np.array([[30.0, 30.0], [90.0, 30.0], [60.0, 95.0]], np.float32)
  recs = [_record(tmp_path / 'blank.png', pts), _record(tmp_path / 'blank.png', pts, 'cofw')]
  config = _config()
  out, cfg, counts = face_boxes.for_evaluation(recs, config, 'auto')
  assert counts == {'file': 1, 'landmarks_jittered': 1}
  assert cfg.eval.box_jitter.shift == 0.0 and cfg.eval.box_jitter.rotation_deg == 0.0
  assert config.eval.box_jitter.shift == 0.05          # the run's config is not changed
  out, cfg, counts = face_boxes.for_evaluation(recs, config, 'detector')
  assert counts == {'landmarks_jittered': 2}            # the box file is ignored
  for mode, norm in (('landmarks', 'inter_ocular'), ('auto', 'bbox')):
    out, cfg, counts = face_boxes.for_evaluation(recs, config, mode, normalization=norm)
    assert counts == {'landmarks_with_run_jitter': 2} and cfg is config
    assert [r.box.tolist() for r in out] == [r.box.tolist() for r in recs]
  with pytest.raises(ValueError, match="--boxes 'nope'"):
    face_boxes.for_evaluation(recs, config, 'nope')
