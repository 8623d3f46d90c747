"""Data-set loaders on small fixtures written in the real file formats.

300-W: folders of images + 1-based ``.pts`` and the official ``bounding_boxes_*.mat`` (MATLAB v5,
a 1 x N cell of structs imgName / bb_detector / bb_ground_truth). COFW-68: ``COFW_test_color.mat``
as MATLAB v7.3 (HDF5 with the 512-byte MATLAB header, cells as object references, arrays stored
transposed) plus the v5 ``{i}_points.mat`` / ``cofw68_test_bboxes.mat`` of the re-annotation.
AFLW: ``AFLWinfo_release.mat`` (v5) with nameList / data / mask_new / bbox / ra.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import warnings

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from jaxalign import datasets
from jaxalign import io
from jaxalign import schemes
from jaxalign.data import records
from jaxalign.data import sources
from jaxalign.data.sources import matfile, w300

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixture writers

def write_mat73(path, variables: dict) -> None:
  """Writes ``variables`` as MATLAB v7.3 does: HDF5 + 512-byte header, column-major, refs."""
  with h5py.File(path, 'w', userblock_size=512) as f:
    refs = f.create_group('#refs#')
    counter = [0]

    def put(group, name, value):
      if isinstance(value, str):
        codes = np.asarray([ord(c) for c in value], np.uint16).reshape(1, -1)
        ds = group.create_dataset(name, data=codes.T)
        ds.attrs['MATLAB_class'] = np.bytes_('char')
      elif isinstance(value, np.ndarray) and value.dtype == object:
        ref_arr = np.empty(value.shape[::-1], h5py.ref_dtype)
        for idx in np.ndindex(value.shape):
          counter[0] += 1
          ref_arr[idx[::-1]] = put(refs, f'r{counter[0]}', value[idx]).ref
        ds = group.create_dataset(name, data=ref_arr)
        ds.attrs['MATLAB_class'] = np.bytes_('cell')
      else:
        arr = np.asarray(value)
        cls = {'uint8': 'uint8', 'bool': 'logical'}.get(arr.dtype.name, 'double')
        if cls == 'logical':
          arr = arr.astype(np.uint8)
        elif cls == 'double':
          arr = arr.astype(np.float64)
        ds = group.create_dataset(name, data=arr.T)
        ds.attrs['MATLAB_class'] = np.bytes_(cls)
      return ds

    for k, v in variables.items():
      put(f, k, v)
  header = (b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 '
            b'HDF5 schema 1.00 .').ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02IM'
  with open(path, 'r+b') as fh:
    fh.write(header)


def make_points(seed: int, n: int = 68, size: int = 32) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(4, size - 4, (n, 2)).astype(np.float32)


def write_image(path: pathlib.Path, size=(32, 32), value=100) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


W300_LAYOUT = {'afw': 2, 'helen/trainset': 1, 'lfpw/trainset': 1, 'helen/testset': 1,
               'lfpw/testset': 1, 'ibug': 2}


def make_300w(root: pathlib.Path, with_boxes=True, private=False) -> dict:
  """A tiny 300-W; returns {image name: points} for checks."""
  truth = {}
  seed = 0
  for subset, n in W300_LAYOUT.items():
    entries = []
    for k in range(n):
      seed += 1
      name = f'{subset.replace("/", "_")}_{k}'
      ext = '.png' if subset.startswith('lfpw') else '.jpg'
      pts = make_points(seed)
      write_image(root / subset / (name + ext))
      io.write_pts(root / subset / (name + '.pts'), pts)
      truth[name + ext] = pts
      det = np.asarray([[2.0 + seed, 3.0, 20.0 + seed, 25.0]])    # 1-based, MATLAB
      gt = np.asarray([[1.0, 1.0, 30.0, 31.0]])
      entries.append({'imgName': name + ext, 'bb_detector': det, 'bb_ground_truth': gt})
    if with_boxes:
      cells = np.empty((1, len(entries)), object)
      for k, e in enumerate(entries):
        cells[0, k] = e
      box_dir = root / 'Bounding Boxes'
      box_dir.mkdir(exist_ok=True)
      scipy.io.savemat(box_dir / w300.BOX_FILES[subset], {'bounding_boxes': cells})
  if private:
    for folder, prefix in (('01_Indoor', 'indoor'), ('02_Outdoor', 'outdoor')):
      for k in range(2):
        write_image(root / '300W' / folder / f'{prefix}_{k:03d}.png')
        io.write_pts(root / '300W' / folder / f'{prefix}_{k:03d}.pts', make_points(100 + k))
  return truth


def make_cofw68(root: pathlib.Path, n: int = 3, annotate=None, gray_index=None,
                version='7.3') -> dict:
  rng = np.random.default_rng(0)
  images = np.empty((n, 1), object)
  for i in range(n):
    if gray_index == i:
      images[i, 0] = rng.integers(0, 255, (20, 24), dtype=np.uint8)
    else:
      images[i, 0] = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
  bboxes_t = np.asarray([[2.0 + i, 3.0, 15.0, 12.0] for i in range(n)])
  phis_t = rng.uniform(1, 20, (n, 87))
  if version == '7.3':
    write_mat73(root / 'COFW_test_color.mat', {'IsT': images, 'bboxesT': bboxes_t,
                                               'phisT': phis_t})
  else:
    scipy.io.savemat(root / 'COFW_test.mat', {'IsT': images, 'bboxesT': bboxes_t,
                                              'phisT': phis_t})
  ann_dir = root / 'COFW68_Data' / 'test_annotations'
  ann_dir.mkdir(parents=True)
  truth = {}
  for i in range(1, n + 1):
    if annotate is not None and i not in annotate:
      continue
    pts = make_points(i, size=20).astype(np.float64) + 1.0   # stored 1-based
    occ = np.zeros((68, 1))
    occ[:i] = 1
    scipy.io.savemat(ann_dir / f'{i}_points.mat', {'Points': pts, 'Occ': occ})
    truth[i] = (pts - 1.0, occ.ravel() == 0)
  scipy.io.savemat(root / 'COFW68_Data' / 'cofw68_test_bboxes.mat',
                   {'bboxes': np.asarray([[5.0, 6.0, 10.0, 11.0 + i] for i in range(n)])})
  return {'images': images, 'bboxesT': bboxes_t, 'truth': truth}


def make_aflw(root: pathlib.Path, n: int = 6, missing_image=None, nan_row=None):
  rng = np.random.default_rng(1)
  names = np.empty((n, 1), object)
  data = np.zeros((n, 38))
  mask = np.ones((n, 19))
  bbox = np.zeros((n, 4))
  for i in range(n):
    names[i, 0] = f'{i % 3}/image{i:05d}.jpg'
    if i != missing_image:
      write_image(root / 'flickr' / names[i, 0], size=(40, 40))
    pts = rng.uniform(5, 35, (19, 2)) + 1.0
    data[i, :19], data[i, 19:] = pts[:, 0], pts[:, 1]
    bbox[i] = [3.0 + i, 30.0, 4.0, 33.0]         # x_left x_right y_top y_bottom, 1-based
    if i % 2:
      mask[i, [0, 5]] = 0
  if nan_row is not None:
    data[nan_row, 3] = np.nan
  ra = np.asarray([[3, 1, 6, 2, 5, 4]], np.float64)[:, :n] if n == 6 else \
      (rng.permutation(n) + 1.0)[None]
  scipy.io.savemat(root / 'AFLWinfo_release.mat', {'nameList': names, 'data': data,
                                                   'mask_new': mask, 'bbox': bbox, 'ra': ra})
  return {'names': names, 'data': data, 'mask': mask, 'bbox': bbox, 'ra': ra}


# ----------------------------------------------------------------------------- matfile

def test_matfile_reads_v73_cells_chars_and_logicals(tmp_path):
  cells = np.empty((2, 1), object)
  cells[0, 0] = 'a/b.jpg'
  cells[1, 0] = np.arange(6, dtype=np.uint8).reshape(2, 3)
  write_mat73(tmp_path / 'x.mat', {'names': cells, 'm': np.arange(6.).reshape(2, 3),
                                   'flags': np.asarray([[True, False, True]])})
  data = matfile.load_mat(tmp_path / 'x.mat')
  assert data['names'].shape == (2, 1)
  assert matfile.as_str(data['names'][0, 0]) == 'a/b.jpg'
  np.testing.assert_array_equal(data['names'][1, 0], np.arange(6).reshape(2, 3))
  np.testing.assert_array_equal(data['m'], np.arange(6.).reshape(2, 3))
  assert data['flags'].dtype == bool and data['flags'].tolist() == [[True, False, True]]


def test_matfile_bad_input_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.mat'):
    matfile.load_mat(tmp_path / 'nope.mat')
  (tmp_path / 'junk.mat').write_bytes(b'this is not a mat file' * 20)
  with pytest.raises(ValueError, match='junk.mat.*not a readable MATLAB'):
    matfile.load_mat(tmp_path / 'junk.mat')
  scipy.io.savemat(tmp_path / 'a.mat', {'x': np.ones(3)})
  with pytest.raises(ValueError, match=r"a.mat: missing MATLAB variable\(s\) \['y'\]"):
    matfile.load_mat(tmp_path / 'a.mat', required=['y'])


# ----------------------------------------------------------------------------- 300-W

def test_300w_protocol_splits_points_and_detector_boxes(tmp_path):
  truth = make_300w(tmp_path)
  by_split, invalid = sources.load_splits('300w', tmp_path)
  assert invalid == []
  assert set(by_split) == {'train', 'common', 'challenge', 'full'}   # no private folders
  counts = {k: len(v) for k, v in by_split.items()}
  assert counts == {'train': 4, 'common': 2, 'challenge': 2, 'full': 4}
  assert sorted(r.meta['subset'] for r in by_split['train']) == [
      'afw', 'afw', 'helen/trainset', 'lfpw/trainset']
  assert {r.meta['subset'] for r in by_split['full']} == {'helen/testset', 'lfpw/testset', 'ibug'}
  for r in by_split['full'] + by_split['train']:
    name = pathlib.Path(r.image).name
    np.testing.assert_allclose(r.points, truth[name], atol=1e-5)
    assert r.scheme == 'ibug68' and r.meta['box_source'] == 'detector'
  r = by_split['challenge'][0]
  seed = list(truth).index(pathlib.Path(r.image).name) + 1
  # bb_detector [2+seed 3 20+seed 25] in 1-based pixels -> minus one.
  np.testing.assert_allclose(r.box, [1.0 + seed, 2.0, 19.0 + seed, 24.0])


@pytest.mark.parametrize('kind,expected', [('ground_truth', [0, 0, 29, 30]), ('landmarks', None)])
def test_300w_box_kinds(tmp_path, kind, expected):
  make_300w(tmp_path)
  recs, _ = sources.get_source('300w', tmp_path, 'common', boxes=kind)
  for r in recs:
    assert r.meta['box_source'] == kind
    want = records.landmark_box(r.points) if expected is None else expected
    np.testing.assert_allclose(r.box, want)


def test_300w_missing_box_files_fall_back_to_landmarks_and_check_warns(tmp_path):
  make_300w(tmp_path, with_boxes=False)
  recs, invalid = sources.get_source('300w', tmp_path, 'train')
  assert invalid == [] and len(recs) == 4
  assert all(r.meta['box_source'] == 'landmarks' for r in recs)
  np.testing.assert_allclose(recs[0].box, records.landmark_box(recs[0].points))
  report = datasets.check_dataset('300w', tmp_path)
  assert any('landmark box' in w and "'train'" in w for w in report['warnings'])


def test_300w_private_split_and_boxes_dir(tmp_path):
  make_300w(tmp_path, private=True)
  moved = tmp_path.parent / (tmp_path.name + '_boxes')
  (tmp_path / 'Bounding Boxes').rename(moved)
  by_split, invalid = sources.load_splits('300w', tmp_path, boxes_dir=moved)
  assert invalid == []
  assert {k: len(v) for k, v in by_split.items() if k in w300.OPTIONAL_SPLITS} == {
      'indoor': 2, 'outdoor': 2, 'private': 4}
  assert all(r.meta['box_source'] == 'landmarks' for r in by_split['private'])
  assert all(r.meta['box_source'] == 'detector' for r in by_split['train'])


def test_300w_bad_files_are_listed_not_dropped(tmp_path):
  make_300w(tmp_path)
  (tmp_path / 'ibug' / 'ibug_0.pts').write_text('version: 1\nn_points: 68\n{\n1 2\n}\n')
  write_image(tmp_path / 'ibug' / 'orphan.jpg')
  import shutil
  shutil.rmtree(tmp_path / 'lfpw' / 'testset')
  by_split, invalid = sources.load_splits('300w', tmp_path, ['challenge', 'full'])
  reasons = {pathlib.Path(i.path).name: i.reason for i in invalid}
  assert 'declares 68 points but the file has 1' in reasons['ibug_0.pts']
  assert reasons['orphan.jpg'] == 'image without a .pts annotation'
  assert 'folder missing' in reasons['testset']
  assert len(by_split['challenge']) == 1 and len(by_split['full']) == 2
  report = datasets.check_dataset('300w', tmp_path)
  assert report['challenge'] == 1
  assert len(report['invalid']) == 3   # each bad file once, though two splits hold it


def test_300w_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    sources.get_source('300w', tmp_path / 'missing', 'train')
  with pytest.raises(FileNotFoundError, match='does not look like 300-W'):
    sources.get_source('300w', tmp_path, 'train')
  make_300w(tmp_path)
  with pytest.raises(ValueError, match="unknown 300-W box kind 'yolo'"):
    sources.get_source('300w', tmp_path, 'train', boxes='yolo')
  (tmp_path / 'Bounding Boxes' / 'bounding_boxes_ibug.mat').write_bytes(b'\x00garbage' * 30)
  with pytest.raises(ValueError, match='bounding_boxes_ibug.mat'):
    sources.get_source('300w', tmp_path, 'challenge')


# ----------------------------------------------------------------------------- COFW-68

def test_cofw68_v73_images_points_occlusion_and_boxes(tmp_path):
  fx = make_cofw68(tmp_path, n=3, gray_index=1)
  recs, invalid = sources.get_source('cofw68', tmp_path, 'test')
  assert invalid == [] and [r.meta['index'] for r in recs] == [1, 2, 3]
  for r in recs:
    i = r.meta['index']
    pts, vis = fx['truth'][i]
    np.testing.assert_allclose(r.points, pts, atol=1e-5)
    np.testing.assert_array_equal(r.visible, vis)
    assert r.meta['num_occluded'] == i and r.meta['box_source'] == 'cofw68'
    # cofw68_test_bboxes [5 6 10 11+k] (x y w h, 1-based, k = i - 1) -> (4, 5, 14, 16+k).
    np.testing.assert_allclose(r.box, [4.0, 5.0, 14.0, 16.0 + (i - 1)])
    written = np.asarray(Image.open(r.image))
    src = fx['images'][i - 1, 0]
    if src.ndim == 2:
      src = np.repeat(src[:, :, None], 3, 2)
    np.testing.assert_array_equal(written, src)
  assert pathlib.Path(recs[0].image).parent == tmp_path / 'jaxalign_images' / 'cofw68_test'


def test_cofw68_original_boxes_and_image_dir(tmp_path):
  fx = make_cofw68(tmp_path, n=2)
  recs, _ = sources.get_source('cofw68', tmp_path, 'test', boxes='cofw',
                               image_dir=tmp_path / 'imgs')
  x, y, w, h = fx['bboxesT'][1]
  np.testing.assert_allclose(recs[1].box, [x - 1, y - 1, x - 1 + w, y - 1 + h])
  assert pathlib.Path(recs[0].image).parent == tmp_path / 'imgs'


def test_cofw68_grey_v5_file_is_accepted(tmp_path):
  make_cofw68(tmp_path, n=2, version='5', gray_index=0)
  recs, invalid = sources.get_source('cofw68', tmp_path, 'test')
  assert invalid == [] and len(recs) == 2
  assert np.asarray(Image.open(recs[0].image)).shape == (20, 24, 3)


def test_cofw68_bad_annotations_are_listed(tmp_path):
  make_cofw68(tmp_path, n=4, annotate={1, 2, 3})
  ann = tmp_path / 'COFW68_Data' / 'test_annotations'
  scipy.io.savemat(ann / '2_points.mat', {'Points': np.ones((29, 2))})
  scipy.io.savemat(ann / '9_points.mat', {'Points': np.ones((68, 2))})
  recs, invalid = sources.get_source('cofw68', tmp_path, 'test')
  assert [r.meta['index'] for r in recs] == [1, 3]
  reasons = sorted(i.reason for i in invalid)
  assert any('Points has shape (29, 2)' in r for r in reasons)
  assert any('annotation for image 9' in r for r in reasons)
  assert any('image 4 has no 68-point annotation' in r for r in reasons)
  assert len(invalid) == 3


def test_cofw68_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match='COFW_test_color.mat'):
    sources.get_source('cofw68', tmp_path, 'test')
  (tmp_path / 'COFW_test_color.mat').write_bytes(b'garbage!' * 100)
  (tmp_path / 'COFW68_Data' / 'test_annotations').mkdir(parents=True)
  scipy.io.savemat(tmp_path / 'COFW68_Data' / 'test_annotations' / '1_points.mat',
                   {'Points': np.ones((68, 2))})
  with pytest.raises(ValueError, match='COFW_test_color.mat: not a readable MATLAB'):
    sources.get_source('cofw68', tmp_path, 'test')


def test_cofw68_annotations_without_the_image_file(tmp_path):
  fx = make_cofw68(tmp_path, n=3, annotate={1, 3})
  (tmp_path / 'COFW_test_color.mat').unlink()
  recs, invalid = sources.get_source('cofw68', tmp_path, 'test', with_images=False)
  assert [r.meta['index'] for r in recs] == [1, 3]
  np.testing.assert_allclose(recs[1].points, fx['truth'][3][0], atol=1e-5)
  np.testing.assert_allclose(recs[1].box, [4.0, 5.0, 14.0, 18.0])   # cofw68 boxes, x y w h
  # The box table (3 rows) gives the number of images: image 2 has no annotation.
  assert [i.reason for i in invalid] == ['image 2 has no 68-point annotation (2_points.mat)']
  assert not (tmp_path / 'jaxalign_images').exists()     # nothing written
  # The original COFW boxes come from the image file, read without its images where present.
  (tmp_path / 'b').mkdir()
  make_cofw68(tmp_path / 'b', n=2)
  recs, _ = sources.get_source('cofw68', tmp_path / 'b', 'test', with_images=False, boxes='cofw')
  x, y, w, h = 3.0, 3.0, 15.0, 12.0                       # bboxesT of image 2
  np.testing.assert_allclose(recs[1].box, [x - 1, y - 1, x - 1 + w, y - 1 + h])
  assert not (tmp_path / 'b' / 'jaxalign_images').exists()


# ----------------------------------------------------------------------------- AFLW

def test_aflw_splits_scheme_points_and_boxes(tmp_path):
  fx = make_aflw(tmp_path)
  by_split, invalid = sources.load_splits('aflw', tmp_path, num_train=4)
  assert invalid == []
  order = [int(v) - 1 for v in fx['ra'].ravel()]
  assert [r.meta['index'] for r in by_split['train']] == order[:4]
  assert [r.meta['index'] for r in by_split['test']] == order[4:]
  # frontal = test faces with every point visible (odd rows hide two points).
  assert [r.meta['index'] for r in by_split['frontal']] == [i for i in order[4:] if i % 2 == 0]
  for r in by_split['train'] + by_split['test']:
    i = r.meta['index']
    assert r.scheme == 'aflw19' and r.points.shape == (19, 2)
    assert schemes.get_scheme(r.scheme).num_points == r.points.shape[0]
    np.testing.assert_allclose(r.points[:, 0], fx['data'][i, :19] - 1, atol=1e-4)
    np.testing.assert_allclose(r.points[:, 1], fx['data'][i, 19:] - 1, atol=1e-4)
    np.testing.assert_allclose(r.box, [2.0 + i, 3.0, 29.0, 32.0])   # x1 y1 x2 y2, 0-based
    np.testing.assert_array_equal(r.visible, fx['mask'][i] == 1)
    assert r.image == str(tmp_path / 'flickr' / fx['names'][i, 0])
  recs, _ = sources.get_source('aflw', tmp_path, 'test', num_train=4, index_base=0)
  np.testing.assert_allclose(recs[0].points[:, 0], fx['data'][order[4], :19], atol=1e-4)


def test_aflw_bad_rows_are_listed(tmp_path):
  make_aflw(tmp_path, missing_image=2, nan_row=4)
  by_split, invalid = sources.load_splits('aflw', tmp_path, num_train=4)
  assert sum(len(v) for k, v in by_split.items() if k != 'frontal') == 4
  reasons = sorted(i.reason for i in invalid)
  assert len(reasons) == 2
  assert any(r.startswith('image not found (row 3') for r in reasons)
  assert any('NaN' in r for r in reasons)


def test_coordinates_beyond_float32_are_invalid_not_infinite(tmp_path):
  """Found by the fuzz hunt: a damaged exponent gives a finite float64 (1e300) that turned
  into an infinite float32 coordinate in a record counted as valid."""
  aflw_root, cofw_root = tmp_path / 'aflw', tmp_path / 'cofw'
  aflw_root.mkdir()
  cofw_root.mkdir()
  mat = make_aflw(aflw_root)
  mat['data'][2, 5] = 1e300
  scipy.io.savemat(aflw_root / 'AFLWinfo_release.mat', {
      'nameList': mat['names'], 'data': mat['data'], 'mask_new': mat['mask'],
      'bbox': mat['bbox'], 'ra': mat['ra']})
  with warnings.catch_warnings():
    warnings.simplefilter('error')                  # no numpy overflow warning either
    by_split, invalid = sources.load_splits('aflw', aflw_root, num_train=4)
  recs = [r for k, v in by_split.items() if k != 'frontal' for r in v]
  assert len(recs) == 5 and all(np.isfinite(r.points).all() for r in recs)
  assert len(invalid) == 1 and 'beyond float32' in invalid[0].reason
  make_cofw68(cofw_root, n=3)
  pts = np.full((68, 2), 10.0)
  pts[7, 1] = -1e300
  scipy.io.savemat(cofw_root / 'COFW68_Data' / 'test_annotations' / '2_points.mat',
                   {'Points': pts})
  recs, invalid = sources.get_source('cofw68', cofw_root, 'test')
  assert [r.meta['index'] for r in recs] == [1, 3]
  assert len(invalid) == 1 and 'beyond float32' in invalid[0].reason


def test_aflw_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match='AFLWinfo_release.mat'):
    sources.get_source('aflw', tmp_path, 'test')
  make_aflw(tmp_path)
  mat = scipy.io.loadmat(tmp_path / 'AFLWinfo_release.mat')
  mat['ra'] = np.ones((1, 6))
  scipy.io.savemat(tmp_path / 'AFLWinfo_release.mat', {k: v for k, v in mat.items()
                                                       if not k.startswith('__')})
  with pytest.raises(ValueError, match=r'AFLWinfo_release.mat: ra is not a permutation'):
    sources.get_source('aflw', tmp_path, 'test')
  del mat['bbox']
  scipy.io.savemat(tmp_path / 'AFLWinfo_release.mat', {k: v for k, v in mat.items()
                                                       if not k.startswith('__')})
  with pytest.raises(ValueError, match=r"missing MATLAB variable\(s\) \['bbox'\]"):
    sources.get_source('aflw', tmp_path, 'test')


# ----------------------------------------------------------------------------- 3DDFA folders

def _pose(yaw_deg: float) -> np.ndarray:
  return np.asarray([[0.1, np.radians(yaw_deg), -0.05, 200.0, 210.0, -100.0, 0.001]],
                    np.float32)


def make_aflw2000(root: pathlib.Path) -> dict:
  """AFLW2000/image0000{1,2}.{jpg,mat} as unzipped, an orphan image and a bad .mat."""
  folder = root / 'AFLW2000'
  truth = {}
  for k, yaw in ((1, 30.0), (2, -50.0)):
    xyz = np.concatenate([make_points(k, size=40).T + 1.0, np.full((1, 68), 5.0 * k)])
    write_image(folder / f'image0000{k}.jpg', size=(40, 40))
    scipy.io.savemat(folder / f'image0000{k}.mat',
                     {'pt3d_68': xyz.astype(np.float32), 'pt2d': -np.ones((2, 21)),
                      'Pose_Para': _pose(yaw), 'roi': np.asarray([[1, 2, 300, 400]], np.int16)})
    truth[k] = (xyz[:2].T - 1.0, xyz[2])
  write_image(folder / 'image00003.jpg')                       # no .mat
  write_image(folder / 'image00004.jpg')
  scipy.io.savemat(folder / 'image00004.mat', {'pt2d': np.ones((2, 21))})   # no pt3d_68
  scipy.io.savemat(root / 'other.mat', {'x': 1.0})             # not this data set: ignored
  return truth


def test_aflw2000_3d_files_points_pose_and_bad_files(tmp_path):
  truth = make_aflw2000(tmp_path)
  for root in (tmp_path, tmp_path / 'AFLW2000'):
    recs, invalid = sources.get_source('aflw2k3d', root, 'test')
    assert [pathlib.Path(r.image).name for r in recs] == ['image00001.jpg', 'image00002.jpg']
    for r, k in zip(recs, (1, 2)):
      np.testing.assert_allclose(r.points, truth[k][0], atol=1e-4)
      np.testing.assert_allclose(r.meta['z'], truth[k][1])
      assert r.meta['convention'] == '3d' and r.meta['box_source'] == 'landmarks'
      np.testing.assert_allclose(r.box, records.landmark_box(truth[k][0]), atol=1e-4)
    # Pose_Para's yaw has the opposite sign to eos's (checked on the genuine files).
    assert [round(r.yaw) for r in recs] == [-30, 50]
    reasons = {pathlib.Path(i.path).name: i.reason for i in invalid}
    assert reasons.keys() == {'image00003.jpg', 'image00004.mat'}
    assert 'no image00003.mat' in reasons['image00003.jpg']
    assert "missing MATLAB variable(s) ['pt3d_68']" in reasons['image00004.mat']
  recs, _ = sources.get_source('aflw2k3d', tmp_path, 'test', limit=1)
  assert len(recs) == 1
  assert sources.records_convention(recs) == '3d'


def make_300w_lp(root: pathlib.Path, with_landmarks=True) -> dict:
  """300W_LP/AFW/AFW_1_1_{0,3}.{jpg,mat} (+ _Flip, landmarks/AFW/*_pts.mat)."""
  base = root / '300W_LP'
  truth = {}
  for k, profile in enumerate((0, 3)):
    stem = f'AFW_1_1_{profile}'
    pt2d = make_points(10 + k, size=40).T + 1.0                # 2 x 68, 1-based
    pts_2d = make_points(20 + k, size=40) + 1.0                # 68 x 2
    pts_3d = make_points(30 + k, size=40) + 1.0
    for folder in ('AFW', 'AFW_Flip'):
      write_image(base / folder / f'{stem}.jpg', size=(40, 40))
      scipy.io.savemat(base / folder / f'{stem}.mat', {'pt2d': pt2d, 'Pose_Para': _pose(-20.0),
                                                       'roi': np.ones((1, 4))})
    if with_landmarks:
      (base / 'landmarks' / 'AFW').mkdir(parents=True, exist_ok=True)
      scipy.io.savemat(base / 'landmarks' / 'AFW' / f'{stem}_pts.mat',
                       {'pts_2d': pts_2d, 'pts_3d': pts_3d})
    truth[stem] = {'pt2d': pt2d.T - 1.0, 'pts_2d': pts_2d - 1.0, 'pts_3d': pts_3d - 1.0}
  return truth


@pytest.mark.parametrize('kind,var,convention', [
    ('2d', 'pts_2d', '2d'), ('3d', 'pts_3d', '3d'), ('origin', 'pt2d', '2d')])
def test_300w_lp_files_landmark_kinds(tmp_path, kind, var, convention):
  truth = make_300w_lp(tmp_path)
  recs, invalid = sources.get_source('the300w_lp', tmp_path, 'train', landmarks=kind)
  assert invalid == [] and [pathlib.Path(r.image).parent.name for r in recs] == ['AFW', 'AFW']
  for r in recs:     # the _Flip folder is not read
    stem = pathlib.Path(r.image).stem
    np.testing.assert_allclose(r.points, truth[stem][var], atol=1e-4)
    assert r.meta['landmarks_source'] == var and r.meta['convention'] == convention
    assert r.meta['subset'] == 'AFW' and r.meta['pose_params'].shape == (7,)
    assert round(r.yaw) == 20
  assert [r.meta['profile'] for r in recs] == [0, 3]


def test_300w_lp_files_without_the_landmarks_folder(tmp_path):
  truth = make_300w_lp(tmp_path, with_landmarks=False)
  recs, invalid = sources.get_source('the300w_lp', tmp_path / '300W_LP', 'train')
  # '2d': the _0 image's own pt2d; the rotated _3 image has no 2D points that fit it.
  assert [r.meta['landmarks_source'] for r in recs] == ['pt2d']
  np.testing.assert_allclose(recs[0].points, truth['AFW_1_1_0']['pt2d'], atol=1e-4)
  assert len(invalid) == 1 and 'AFW_1_1_3_pts.mat' in invalid[0].reason
  recs, invalid = sources.get_source('the300w_lp', tmp_path, 'train', landmarks='3d')
  assert recs == [] and len(invalid) == 2 and all('pts_3d' in i.reason for i in invalid)


def test_300w_lp_and_aflw2000_under_one_root(tmp_path, capsys):
  make_aflw2000(tmp_path)
  make_300w_lp(tmp_path, with_landmarks=False)
  lp, lp_bad = sources.get_source('the300w_lp', tmp_path, 'train')
  aflw, _ = sources.get_source('aflw2k3d', tmp_path, 'test')
  assert [pathlib.Path(r.image).stem for r in lp] == ['AFW_1_1_0'] and len(lp_bad) == 1
  assert [pathlib.Path(r.image).stem for r in aflw] == ['image00001', 'image00002']
  # check's --landmarks and --route reach the loader.
  rc = datasets.main(['check', '--dataset', 'the300w_lp', str(tmp_path), '--landmarks',
                      'origin', '--route', 'files', '--json'])
  assert rc == 0 and json.loads(capsys.readouterr().out)['train'] == 2
  assert datasets.main(['check', '--dataset', 'the300w_lp', str(tmp_path), '--route',
                        'zip']) == 2
  assert "unknown route 'zip'" in capsys.readouterr().err


def test_3ddfa_routes_and_bad_input(tmp_path):
  with pytest.raises(ValueError, match="unknown route 'zip'"):
    sources.get_source('aflw2k3d', tmp_path, 'test', route='zip')
  with pytest.raises(ValueError, match="unknown the300w_lp split 'test'"):
    sources.SOURCES['the300w_lp'].load(tmp_path, ['test'])
  with pytest.raises(FileNotFoundError, match='does not exist'):
    sources.get_source('aflw2k3d', tmp_path / 'none', 'test')
  (tmp_path / 'x').mkdir()
  with pytest.raises(FileNotFoundError, match=r'holds no AFLW2000-3D files \(AFLW2000/'):
    sources.get_source('aflw2k3d', tmp_path / 'x', 'test', route='files')
  if importlib.util.find_spec('tensorflow_datasets') is None:
    # No files and no TFDS: the error names both routes.
    with pytest.raises(ImportError, match=r'300W_LP/<AFW.*tensorflow-datasets.*jaxalign\[tfds\]'):
      sources.get_source('the300w_lp', tmp_path / 'x', 'train')
    with pytest.raises(ImportError, match=r'jaxalign\[tfds\]'):
      sources.get_source('aflw2k3d', tmp_path / 'x', 'test', route='tfds')


def test_records_convention():
  def rec(conv):
    return records.FaceRecord(image='a.png', points=np.zeros((68, 2), np.float32),
                              box=np.asarray([0, 0, 1, 1], np.float32),
                              meta={} if conv is None else {'convention': conv})
  assert sources.records_convention([rec('3d'), rec('3d')]) == '3d'
  assert sources.records_convention([rec('2d')]) == '2d'
  assert sources.records_convention([rec('3d'), rec('2d')]) is None
  assert sources.records_convention([rec('3d'), rec(None)]) is None
  assert sources.records_convention([]) is None


# ----------------------------------------------------------------------------- registry

def test_registry_bad_input_and_folder_source(tmp_path):
  with pytest.raises(ValueError, match="unknown data set 'wflw'"):
    sources.get_source('wflw', tmp_path, 'train')
  make_300w(tmp_path)
  with pytest.raises(ValueError, match="unknown split 'test' of data set '300w'"):
    sources.get_source('300w', tmp_path, 'test')
  with pytest.raises(ValueError, match="unknown option 'box'"):
    sources.get_source('300w', tmp_path, 'train', box='detector')
  recs, invalid = sources.get_source('folder', tmp_path / 'ibug', 'all')
  assert len(recs) == 2 and invalid == [] and recs[0].scheme == 'ibug68'
  write_image(tmp_path / 'a19' / 'x.png')
  io.write_pts(tmp_path / 'a19' / 'x.pts', make_points(3, n=19))
  recs, _ = sources.get_source('folder', tmp_path / 'a19', 'all', scheme='aflw19')
  assert recs[0].scheme == 'aflw19' and recs[0].points.shape == (19, 2)
  for info in sources.SOURCES.values():
    assert set(info.protocol_counts) <= set(info.splits)
    schemes.get_scheme(info.scheme)


# ----------------------------------------------------------------------------- CLI

def test_check_cli_json(tmp_path, capsys):
  make_300w(tmp_path)
  (tmp_path / 'afw' / 'afw_0.png').write_bytes(b'')   # an image that will not open
  (tmp_path / 'afw' / 'afw_0.jpg').unlink()
  (tmp_path / 'afw' / 'afw_0.png').rename(tmp_path / 'afw' / 'afw_0.jpg')
  rc = datasets.main(['check', '--dataset', '300w', str(tmp_path), '--json'])
  out, err = capsys.readouterr()
  assert rc == 0
  report = json.loads(out)
  assert {k: report[k] for k in ('train', 'common', 'challenge', 'full')} == {
      'train': 3, 'common': 2, 'challenge': 2, 'full': 4}
  assert [pathlib.Path(i['path']).name for i in report['invalid']] == ['afw_0.jpg']
  assert 'unreadable image' in report['invalid'][0]['reason']
  assert "split 'train' has 3 valid faces; the protocol has 3148" in err
  assert datasets.main(['check', '--dataset', '300w', str(tmp_path), '--strict']) == 1
  out, _ = capsys.readouterr()
  assert 'train' in out and '(protocol: 3148)' in out and 'afw_0.jpg' in out


def test_check_cli_bad_input(tmp_path, capsys):
  assert datasets.main(['check', '--dataset', 'aflw', str(tmp_path / 'none')]) == 2
  assert 'does not exist' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    datasets.main(['check', '--dataset', 'nope', str(tmp_path)])
  make_aflw(tmp_path)
  assert datasets.main(['check', '--dataset', 'aflw', str(tmp_path), '--json']) == 0
  report = json.loads(capsys.readouterr().out)
  assert report['train'] == 6 and report['test'] == 0 and report['invalid'] == []


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize('name,train,test', [
    ('paper_300w', '300w', '300w'), ('paper_cofw68', '300w', 'cofw68'),
    ('paper_aflw', 'aflw', 'aflw'), ('the300w_lp', 'the300w_lp', 'aflw2k3d')])
def test_configs_name_real_sources(name, train, test):
  path = REPO / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(f'cfg_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  doc = module.__doc__.strip()
  assert doc.startswith(f'python -m jaxalign.train --config configs/{name}.py '
                        f'--workdir runs/{name}')
  c = module.get_config()
  assert c.data.source == train and (c.data.test_source or c.data.source) == test
  assert c.data.train_split in sources.source_info(train).splits
  info = sources.source_info(test)
  assert c.data.test_splits and all(s in info.splits for s in c.data.test_splits)
  assert c.model.scheme == info.scheme == sources.source_info(train).scheme
  assert c.eval.normalization == info.normalization
  for key, source in (('options', train), ('test_options', test)):
    allowed = sources.option_names(source)
    assert set(c.data[key].to_dict()) <= set(allowed), (key, allowed)


def _config(name):
  spec = importlib.util.spec_from_file_location(f'cfg2_{name}', REPO / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_from_config_reads_the_configured_splits(tmp_path):
  make_300w(tmp_path / '300W')
  (tmp_path / 'cofw').mkdir()
  make_cofw68(tmp_path / 'cofw', n=2)
  c = _config('paper_cofw68')
  c.data.root = str(tmp_path / '300W')
  c.data.test_root = str(tmp_path / 'cofw')
  train = sources.from_config(c.data, 'train')
  assert list(train) == ['train'] and len(train['train'][0]) == 4
  test = sources.from_config(c.data, 'test')
  assert list(test) == ['test'] and len(test['test'][0]) == 2
  c = _config('paper_300w')
  c.data.root = str(tmp_path / '300W')
  test = sources.from_config(c.data, 'test')
  assert {k: len(v[0]) for k, v in test.items()} == {'common': 2, 'challenge': 2, 'full': 4}
  with pytest.raises(ValueError, match='which'):
    sources.from_config(c.data, 'val')


def test_300w_fixed_validation_tenth(tmp_path):
  """'val' / 'fit' split 'train' by a hash of each face's path: disjoint, complete, and the
  same whatever other files are present."""
  make_300w(tmp_path)
  by_split, _ = sources.load_splits('300w', tmp_path)
  assert 'fit' not in by_split and 'val' not in by_split   # only when asked for
  parts, _ = w300.load(tmp_path, ['train', 'fit', 'val'])
  names = lambda recs: sorted(r.image for r in recs)
  assert names(parts['fit'] + parts['val']) == names(parts['train'])
  assert not set(names(parts['fit'])) & set(names(parts['val']))
  for r in parts['train']:
    assert (r in parts['val']) == w300.in_val(r)


SHARED_300W = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / '300w'


@pytest.mark.skipif(not SHARED_300W.is_dir(), reason=f'{SHARED_300W} (the shared 300-W '
                    'training faces) is absent')
def test_300w_validation_split_of_the_shared_faces_is_fixed():
  """The split the cpu_300w runs are selected on: 221 of the 2,012 shared faces, from every
  subset. A change to the rule would silently move faces between training and validation."""
  parts, invalid = w300.load(SHARED_300W, ['train', 'fit', 'val'], boxes='landmarks')
  assert invalid == []
  assert (len(parts['train']), len(parts['fit']), len(parts['val'])) == (2012, 1791, 221)
  assert {r.meta['subset'] for r in parts['val']} == {'afw', 'helen/trainset', 'lfpw/trainset'}
  val = sorted(f"{r.meta['subset']}/{pathlib.Path(r.image).name}" for r in parts['val'])
  # The first faces of the split as it was fixed on 2026-12-05 (the docs' figures use it).
  assert val[:3] == ['afw/1634816_1.jpg', 'afw/1648807314_3.jpg', 'afw/18489332_4.jpg']
