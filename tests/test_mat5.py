"""The level-5 .mat reader: the same values as scipy.io.loadmat on files scipy writes, and a
ValueError naming the file (never a crash) on every damaged byte of a 300-W box file.

scipy's compiled reader dies with a segmentation fault on some of these damaged files (found
by tests/test_fuzz_readers.py, which then took down a pytest worker): this sweep would crash the
test process if load_mat still handed level-5 files to it.
"""

import io

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from jaxalign.data.sources import mat5, matfile


def _box_cells():
  cells = np.empty((1, 2), object)
  cells[0, 0] = {'imgName': 'a.jpg', 'bb_detector': np.ones((1, 4)),
                 'bb_ground_truth': np.ones((1, 4))}
  cells[0, 1] = {'imgName': 'bcd', 'bb_detector': np.full((3, 7), np.nan),
                 'bb_ground_truth': np.array(['x'], object)}
  return cells


VARIABLES = {
    'bounding_boxes': _box_cells(),
    'x': np.arange(24.).reshape(2, 3, 4),
    'u8': np.arange(6, dtype=np.uint8).reshape(2, 3),
    'i64': np.array([2**40, -3], np.int64),
    'f32': np.float32([1.5, 2]),
    'text': 'hello é',
    'empty_text': '',
    'empty': np.zeros((0, 0)),
    'complex': np.array([1 + 2j, 3]),
    'names': np.array(['ab', 'cd'], object),
    'rows': np.array(['abc', 'def']),
    'st': {'a': 1, 'b': 'q'},
}


def _same(ours, ref, where):
  if not isinstance(ref, np.ndarray):
    assert ours == ref, where
    return
  assert isinstance(ours, np.ndarray) and ours.shape == ref.shape, where
  if ref.dtype.names:
    assert ours.dtype.names == ref.dtype.names, where
    for f in ref.dtype.names:
      for i in np.ndindex(ref.shape):
        _same(ours[f][i], ref[f][i], f'{where}.{f}{i}')
  elif ref.dtype == object:
    for i in np.ndindex(ref.shape):
      _same(ours[i], ref[i], f'{where}{i}')
  else:
    assert ours.dtype.kind == ref.dtype.kind, (where, ours.dtype, ref.dtype)
    np.testing.assert_array_equal(ours, ref, err_msg=where)


@pytest.mark.parametrize('compressed', [False, True])
def test_reads_what_scipy_reads(compressed):
  buf = io.BytesIO()
  scipy.io.savemat(buf, VARIABLES, do_compression=compressed)
  raw = buf.getvalue()
  ref = {k: v for k, v in scipy.io.loadmat(io.BytesIO(raw)).items() if not k.startswith('__')}
  ours = mat5.read(raw)
  assert sorted(ours) == sorted(ref) == sorted(VARIABLES)
  for name in ref:
    _same(ours[name], ref[name], name)
  assert sorted(mat5.read(raw, ['x', 'text'])) == ['text', 'x']


def test_logicals_come_back_as_bool(tmp_path):
  scipy.io.savemat(tmp_path / 'b.mat', {'flags': np.array([[True, False, True]])})
  flags = matfile.load_mat(tmp_path / 'b.mat')['flags']
  assert flags.dtype == bool and flags.tolist() == [[True, False, True]]


def test_unsupported_class_is_named(tmp_path):
  scipy.io.savemat(tmp_path / 's.mat', {'sp': scipy.sparse.eye(3).tocsc()})
  with pytest.raises(ValueError, match=r"s.mat: .*'sp'.*sparse is not supported"):
    matfile.load_mat(tmp_path / 's.mat')


def test_every_damaged_byte_of_a_box_file_reads_or_is_a_value_error(tmp_path):
  path = tmp_path / 'bounding_boxes_afw.mat'
  scipy.io.savemat(path, {'bounding_boxes': _box_cells()})
  good = path.read_bytes()
  assert matfile.load_mat(path)['bounding_boxes'].shape == (1, 2)
  outcomes = {'read': 0, 'refused': 0}
  damaged = [good[:n] for n in range(0, len(good), 7)]
  for pos in range(len(good)):
    for mask in (0xFF, 0xD9, 0x01):          # 0xD9 at byte 473 crashed scipy 1.17
      damaged.append(good[:pos] + bytes([good[pos] ^ mask]) + good[pos + 1:])
    damaged.append(good[:pos] + good[pos + 1:])
  for data in damaged:
    path.write_bytes(data)
    try:
      matfile.load_mat(path, ['bounding_boxes'], required=['bounding_boxes'])
      outcomes['read'] += 1
    except ValueError as e:
      assert 'bounding_boxes_afw.mat' in str(e), e
      outcomes['refused'] += 1
  # Damage in the text header or the padding reads; damage in sizes and types is refused.
  assert outcomes['read'] > 0 and outcomes['refused'] > len(damaged) // 4, outcomes


def test_damaged_v73_files_read_or_are_a_value_error(tmp_path):
  """v7.3 (HDF5) files: h5py raises KeyError, TypeError, RuntimeError, ... on damaged bytes;
  load_mat turns every one into a ValueError naming the file."""
  from test_datasets import write_mat73  # pylint: disable=g-import-not-at-top
  cells = np.empty((2, 1), object)
  cells[0, 0] = 'a/b.jpg'
  cells[1, 0] = np.arange(6, dtype=np.uint8).reshape(2, 3)
  path = tmp_path / 'COFW_test_color.mat'
  write_mat73(path, {'names': cells, 'm': np.arange(6.).reshape(2, 3)})
  good = path.read_bytes()
  refused = 0
  for pos in range(512, len(good), 5):
    for data in (good[:pos] + bytes([good[pos] ^ 0x5A]) + good[pos + 1:], good[:pos]):
      path.write_bytes(data)
      try:
        matfile.load_mat(path)
      except ValueError as e:
        assert 'COFW_test_color.mat' in str(e), e
        refused += 1
  assert refused > 0
