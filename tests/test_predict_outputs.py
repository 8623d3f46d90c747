"""Tests of the predict building blocks that need no trained model: detector and writers."""

import json
import pathlib

import cv2
import eos
import numpy as np
import pytest

from jaxalign import io
from jaxalign import schemes
from jaxalign.morphable import model as model_lib
from jaxalign.prediction import detector
from jaxalign.prediction import writer

FACES = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'faces'


@pytest.fixture(scope='module')
def real_face():
  image = cv2.cvtColor(cv2.imread(str(FACES / 'image_0010.png')), cv2.COLOR_BGR2RGB)
  points = io.read_pts(FACES / 'image_0010.pts', num_points=68)
  return image, points


def _landmark_box(points):
  return np.concatenate([points.min(0), points.max(0)])


def test_detector_finds_the_real_face(real_face):
  image, points = real_face
  found = detector.detect_faces(image)
  assert found, 'no face found on the shared real face'
  iou = detector.box_iou(found[0].box, _landmark_box(points))[0, 0]
  assert iou > 0.3, (found, iou)
  assert found[0].kind in detector.KINDS


def test_detector_profile_pass_sees_the_mirrored_face(real_face):
  image, points = real_face
  mirrored = np.ascontiguousarray(image[:, ::-1])
  found = detector.detect_faces(mirrored)
  assert found
  pts = points.copy()
  pts[:, 0] = image.shape[1] - 1 - pts[:, 0]
  assert detector.box_iou(found[0].box, _landmark_box(pts))[0, 0] > 0.3


def test_detector_finds_nothing_on_a_blank_image():
  assert detector.detect_faces(np.full((120, 160, 3), 127, np.uint8)) == []
  assert detector.detect_faces(np.zeros((64, 64), np.uint8)) == []


def test_detector_rejects_bad_shapes():
  with pytest.raises(ValueError, match='RGB'):
    detector.detect_faces(np.zeros((10, 10, 4), np.uint8))


def test_merge_prefers_frontal_and_sorts_by_area():
  a = detector.Detection(np.array([0, 0, 100, 100], np.float32), 'profile', 50)
  b = detector.Detection(np.array([5, 5, 105, 105], np.float32), 'frontal', 3)
  c = detector.Detection(np.array([200, 200, 400, 400], np.float32), 'profile_mirrored', 4)
  kept = detector.merge_detections([a, b, c])
  assert [d.kind for d in kept] == ['profile_mirrored', 'frontal']


def test_box_iou():
  iou = detector.box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10],
                                                                 [20, 20, 30, 30]]))
  np.testing.assert_allclose(iou[0], [1.0, 1 / 3, 0.0])


def test_face_record_and_write_face_round_trip(tmp_path):
  pts = np.random.default_rng(0).uniform(10, 90, (68, 2)).astype(np.float32)
  rec = writer.face_record(pts, [1, 2, 3, 4], image='a.png', yaw=12.5, pitch=-1, roll=2,
                           shape_coeffs=np.zeros(3), expression_coeffs=np.ones(6),
                           backend='jax', flipped=False, box_source='detector:frontal')
  paths = writer.write_face(tmp_path, 'a', rec)
  assert [p.name for p in paths] == ['a.pts', 'a.json']
  np.testing.assert_array_equal(io.read_pts(paths[0]), pts)
  data = json.loads(paths[1].read_text())
  assert data['yaw'] == 12.5 and data['completion_backend'] == 'jax'
  assert data['box'] == [1, 2, 3, 4] and data['stable'] == list(schemes.IBUG68.stable)
  np.testing.assert_allclose(np.array(data['points']), pts)
  with pytest.raises(ValueError, match='shape'):
    writer.face_record(pts[:10], [0, 0, 1, 1], image='a.png')


def test_face_stem():
  assert writer.face_stem('img', 0) == 'img'
  assert writer.face_stem('img', 2) == 'img_face2'


def test_draw_landmarks_uses_two_colours():
  image = np.zeros((100, 100, 3), np.uint8)
  pts = np.full((68, 2), np.nan, np.float32)
  pts[schemes.IBUG68.stable[0]] = (20, 20)
  pts[schemes.IBUG68.unstable[0]] = (70, 70)
  out = writer.draw_landmarks(image, [(pts, None)])
  assert out.shape == (100, 100, 3) and image.sum() == 0  # the input is untouched
  np.testing.assert_array_equal(out[20, 20], writer.SL_COLOUR)
  np.testing.assert_array_equal(out[70, 70], writer.UL_COLOUR)
  boxed = writer.draw_landmarks(image, [(pts, np.array([10, 10, 90, 90]))])
  np.testing.assert_array_equal(boxed[10, 50], writer.BOX_COLOUR)


def test_write_image_round_trip(tmp_path):
  img = np.random.default_rng(1).integers(0, 255, (8, 9, 3), dtype=np.uint8)
  writer.write_image(tmp_path / 'x.png', img)
  back = cv2.cvtColor(cv2.imread(str(tmp_path / 'x.png')), cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(back, img)


def test_obj_matches_eos_writer(tmp_path):
  verts = np.array([[0, 0, 0], [1.5, 0, 0], [0, 1, 0.25]], np.float64)
  tris = np.array([[0, 1, 2]])
  tex = np.array([[0, 0], [1, 0], [0, 0.75]])
  writer.write_obj(tmp_path / 'ours.obj', verts, tris, tex)
  mesh = eos.core.Mesh()
  mesh.vertices = list(verts)
  mesh.tvi = tris.tolist()
  mesh.texcoords = list(tex)
  eos.core.write_obj(mesh, str(tmp_path / 'eos.obj'))
  ours, theirs = eos.core.read_obj(str(tmp_path / 'ours.obj')), eos.core.read_obj(
      str(tmp_path / 'eos.obj'))
  np.testing.assert_allclose(np.array(ours.vertices), np.array(theirs.vertices))
  np.testing.assert_array_equal(np.array(ours.tvi), np.array(theirs.tvi))
  np.testing.assert_allclose(np.array(ours.texcoords), np.array(theirs.texcoords))
  with pytest.raises(ValueError, match='out of range'):
    writer.format_obj(verts, [[0, 1, 3]])


def test_fitted_mesh_of_a_flipped_face_is_mirrored():
  sfm = model_lib.load_model()
  v, t = writer.fitted_mesh(sfm, np.zeros(5), np.zeros(6))
  vf, tf = writer.fitted_mesh(sfm, np.zeros(5), np.zeros(6), flipped=True)
  np.testing.assert_allclose(vf[:, 0], -v[:, 0])
  np.testing.assert_array_equal(tf, t[:, ::-1])
  assert v.shape == (sfm.num_vertices, 3)

