"""JPEG draft decoding in ``python -m jaxalign.predict`` (issue 25): the detector reads a draft
decode, the networks the smallest draft scale the crop allows, every output in photo pixels.

A 2,560 x 2,048 JPEG (the shared real face enlarged 2x, face box about 610 px) through the
session's smoke run (tests/conftest.py): the detector decode is 1/2 (long side 1,280 >= 1,000),
the networks' 1/8 (the smoke run's 62 px host crop needs 0.07 decoded pixels per photo pixel).
"""

import json
import pathlib

import cv2
import numpy as np
import pytest

from jaxalign import io
from jaxalign import predict as predict_cli
from jaxalign.data import pipeline as data_pipeline
from jaxalign.prediction import detector as detector_lib
from jaxalign.prediction import pipeline

FACES = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'faces'
SCALE = 2.0


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
  """(path of the large JPEG, its (68, 2) points, its landmark box), photo pixels."""
  image = cv2.imread(str(FACES / 'image_0010.png'))
  h, w = image.shape[:2]
  big = cv2.resize(image, (int(w * SCALE), int(h * SCALE)), interpolation=cv2.INTER_CUBIC)
  path = tmp_path_factory.mktemp('draft') / 'big.jpg'
  cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
  # Pixel centres: x -> SCALE (x + 0.5) - 0.5.
  points = SCALE * (io.read_pts(FACES / 'image_0010.pts', num_points=68) + 0.5) - 0.5
  return path, points, np.concatenate([points.min(0), points.max(0)]).astype(np.float32)


def _bbox(box):
  return ','.join(f'{v:.2f}' for v in box)


def _run_predict(run, path, out, *flags):
  status = predict_cli.main(['--workdir', str(run), str(path), '--out', str(out),
                             '--no-progress', *flags])
  assert status == 0
  data = json.loads((out / f'{path.stem}.json').read_text())
  return data, io.read_pts(out / f'{path.stem}.pts', num_points=68)


@pytest.fixture(scope='module')
def bbox_results(smoke_run, photo, tmp_path_factory):
  """predict --bbox (photo pixels) with and without draft decoding, each decode recorded."""
  path, _, box = photo
  out = tmp_path_factory.mktemp('pred')
  calls = []
  real = data_pipeline.decode_photo

  def recording(src, resolution=1.0):
    decoded = real(src, resolution)
    if not isinstance(src, (np.ndarray, data_pipeline.DecodedPhoto)):
      calls.append((resolution, decoded.factor, decoded.image.shape))
    return decoded

  mp = pytest.MonkeyPatch()
  mp.setattr(data_pipeline, 'decode_photo', recording)
  try:
    results = {}
    for name, flags in (('draft', ()), ('full', ('--no-draft',))):
      calls.clear()
      data, pts = _run_predict(smoke_run, path, out / name, '--bbox', _bbox(box), *flags)
      results[name] = (data, pts, list(calls), out / name / f'{path.stem}.png')
  finally:
    mp.undo()
  return results


def test_draft_points_match_the_full_decode_in_photo_pixels(bbox_results, photo):
  _, points, box = photo
  (draft, pts_d, _, _), (full, pts_f, _, _) = bbox_results['draft'], bbox_results['full']
  side = float(max(box[2] - box[0], box[3] - box[1]))
  assert np.isfinite(pts_d).all() and np.isfinite(pts_f).all()
  diff = np.linalg.norm(pts_d - pts_f, axis=-1)
  assert diff.max() < 0.015 * side, (diff.max(), side)
  # Photo pixels: the points sit around the face at the photo's scale (the smoke run is barely
  # trained, so near the face, not on its landmarks).
  centre = 0.5 * (box[:2] + box[2:])
  assert np.linalg.norm(np.median(pts_d, 0) - centre) < 0.5 * side
  assert np.ptp(pts_d, 0).max() > 0.2 * side
  np.testing.assert_allclose(np.array(draft['points']), pts_d, atol=1e-4)


def test_the_networks_read_a_draft_decode(bbox_results):
  draft, _, calls, _ = bbox_results['draft']
  full, _, full_calls, _ = bbox_results['full']
  # One decode of the file, at 1/8; without draft one full-size decode.
  assert [c[1] for c in calls] == [8] and calls[0][2][:2] == (256, 320)
  assert draft['decode_factor'] == 8
  assert [c[1] for c in full_calls] == [1] and full['decode_factor'] == 1


def test_bbox_in_photo_pixels_and_the_overlay_keeps_the_photo_size(bbox_results, photo):
  _, _, box = photo
  for name in ('draft', 'full'):
    data, _, _, png = bbox_results[name]
    assert data['box_source'] == 'bbox'
    np.testing.assert_allclose(data['box'], box, atol=0.01)
    assert cv2.imread(str(png)).shape == (2048, 2560, 3), name


class _FakeDetector:
  """Finds the face at its known photo box, given in the pixels of the image it is handed
  (whatever scale that is decoded at); records the image sizes it saw."""

  def __init__(self, box, photo_width):
    self.box, self.width, self.seen = box, photo_width, []

  def __call__(self, image):
    self.seen.append(image.shape[:2])
    f = self.width / image.shape[1]
    box = (self.box + 0.5) / f - 0.5    # photo pixels -> this decode's pixels
    return [detector_lib.Detection(box.astype(np.float32), 'face', detector='fake')]


def test_detector_reads_a_draft_and_boxes_map_back_to_photo_pixels(smoke_run, photo, tmp_path,
                                                                   monkeypatch):
  path, _, box = photo
  fake = _FakeDetector(box, 2560)
  monkeypatch.setattr(detector_lib, 'make_detector', lambda *a, **k: fake)
  data, pts = _run_predict(smoke_run, path, tmp_path / 'd', '--no-refine')
  assert fake.seen == [(1024, 1280)]            # 1/2: the long side still >= 1,000 px
  assert data['decode_factor'] == 8             # the networks' decode: decoded again at 1/8
  np.testing.assert_allclose(data['detector_box'], box, atol=1e-3)
  np.testing.assert_allclose(data['box'], box, atol=1e-3)
  assert data['box_source'] == 'detector:fake:face'
  # The same face through --bbox (same box, same decode) gives the same points.
  ref, ref_pts = _run_predict(smoke_run, path, tmp_path / 'b', '--bbox', _bbox(box))
  assert ref['decode_factor'] == 8
  np.testing.assert_allclose(pts, ref_pts, atol=0.05)
  fake.seen.clear()
  data, _ = _run_predict(smoke_run, path, tmp_path / 'f', '--no-refine', '--no-draft')
  assert fake.seen == [(2048, 2560)] and data['decode_factor'] == 1
  np.testing.assert_allclose(data['detector_box'], box, atol=1e-3)


def test_png_and_arrays_are_decoded_whole(smoke_run, tmp_path):
  pts = io.read_pts(FACES / 'image_0010.pts', num_points=68)
  box = np.concatenate([pts.min(0), pts.max(0)])
  data, _ = _run_predict(smoke_run, FACES / 'image_0010.png', tmp_path, '--bbox', _bbox(box))
  assert data['decode_factor'] == 1
  image = np.zeros((40, 30, 3), np.uint8)
  assert data_pipeline.decode_photo(image, 0.1).factor == 1


def test_geometry_helpers():
  # Draft pixel i covers photo pixels f i .. f i + f - 1: its centre is f i + (f - 1) / 2.
  np.testing.assert_allclose(pipeline.boxes_to_photo([0, 0, 10, 5], 4), [1.5, 1.5, 41.5, 21.5])
  np.testing.assert_allclose(pipeline.boxes_to_photo(np.zeros((3, 4)), 1), np.zeros((3, 4)))
  spec = data_pipeline.CropSpec(input_size=32, host_scale=1.5)
  small, large = [0, 0, 40, 40], [0, 0, 800, 800]
  # The smallest face decides; the training crop's own scale (host_crop_matrix).
  res = pipeline.crop_resolution([large, small], spec)
  assert res == pytest.approx(abs(data_pipeline.host_crop_matrix(small, spec)[0, 0]))
  assert data_pipeline.draft_factor(pipeline.crop_resolution([large], spec)) == 8
  assert data_pipeline.draft_factor(res) == 1
  no_draft = data_pipeline.CropSpec(input_size=32, host_scale=1.5, jpeg_draft=False)
  assert pipeline.crop_resolution([large], no_draft) == 1.0


def test_full_size_enlarges_a_draft_decode_with_the_project_warp():
  """The overlay's enlargement: a 1/4 draft of a smooth ramp enlarged to the photo's size puts
  each draft pixel's value at its centre in the photo (f i + (f - 1) / 2) and leaves no black
  border."""
  ys, xs = np.mgrid[0:30, 0:40]
  draft = np.stack([xs * 6, ys * 8, np.full_like(xs, 128)], -1).astype(np.uint8)
  out = pipeline.full_size(data_pipeline.DecodedPhoto(draft, 4, (120, 160))).astype(float)
  assert out.shape == (120, 160, 3)
  # Draft pixel (10, 20)'s centre is photo (41.5, 81.5): the mean of the two photo pixels around
  # it on the ramp (1.5 levels a photo pixel) is the draft's value.
  assert out[41, 81:83, 0].mean() == pytest.approx(draft[10, 20, 0], abs=0.6)
  assert out[41:43, 81, 1].mean() == pytest.approx(draft[10, 20, 1], abs=0.6)
  assert out[:, :, 2].min() >= 120          # no zero fill at the edges
  same = data_pipeline.DecodedPhoto(draft, 1, (30, 40))
  assert pipeline.full_size(same) is draft
