"""Annotation I/O: .pts round trip and 1-based convention, .ljson (y, x), malformed files."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from jaxalign import io


def test_read_pts_converts_one_based(tmp_path):
  path = tmp_path / 'a.pts'
  path.write_text('version: 1\nn_points: 3\n{\n1 1\n10.5 20.25\n-3 4\n}\n')
  pts = io.read_pts(path)
  assert pts.dtype == np.float32
  np.testing.assert_array_equal(pts, [[0, 0], [9.5, 19.25], [-4, 3]])


def test_read_real_face(real_face_points):
  # The first line of image_0010.pts, read independently: 1-based x y.
  assert real_face_points.shape == (68, 2)
  from conftest import FACES_DIR
  lines = (FACES_DIR / 'image_0010.pts').read_text().split('{')[1].split()
  first = np.array([float(lines[0]), float(lines[1])]) - 1
  np.testing.assert_allclose(real_face_points[0], first, rtol=0, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 70), st.just(2)),
                  elements=st.floats(-1e4, 1e4, width=32)))
def test_pts_round_trip_is_exact(tmp_path_factory, points):
  path = tmp_path_factory.mktemp('pts') / 'x.pts'
  io.write_pts(path, points)
  back = io.read_pts(path)
  np.testing.assert_array_equal(back, points)


def test_write_pts_is_one_based(tmp_path):
  path = tmp_path / 'b.pts'
  io.write_pts(path, np.array([[0.0, 1.5]], np.float32))
  text = path.read_text()
  assert 'n_points: 1' in text
  x, y = text.split('{')[1].split('}')[0].split()
  assert float(x) == 1.0 and float(y) == 2.5


@pytest.mark.parametrize('text,match', [
    ('', 'empty'),
    ('version: 1\nn_points: 2\n{\n1 2\n}\n', 'declares 2 points'),
    ('version: 1\nn_points: 1\n{\n1 a\n}\n', 'not numeric'),
    ('version: 1\nn_points: 1\n1 2\n}\n', 'opening brace'),
    ('version: 1\nn_points: 1\n{\n1 2\n', 'closing brace'),
    ('version: 1\n{\n1 2\n}\n', 'n_points'),
    ('version: 1\nn_points: x\n{\n1 2\n}\n', 'not an integer'),
    ('version: 1\nn_points: 1\n{\n1 2 3\n}\n', '3 values'),
    ('version: 1\nn_points: 1\n{\nnan 2\n}\n', 'not finite'),
    # Found by the fuzz hunt: decimal raised Overflow on the subtraction.
    ('version: 1\nn_points: 1\n{\n22.3e604492188 2\n}\n', 'not finite'),
    # Finite in the file, infinite as float32: was returned as an infinite point.
    ('version: 1\nn_points: 1\n{\n1e300 2\n}\n', 'point 1 is beyond float32 range'),
])
def test_malformed_pts_raise_naming_file(tmp_path, text, match):
  path = tmp_path / 'bad.pts'
  path.write_text(text)
  with pytest.raises(ValueError, match=match) as info:
    io.read_pts(path)
  assert str(path) in str(info.value)


def test_read_pts_wrong_expected_count(tmp_path):
  path = tmp_path / 'c.pts'
  io.write_pts(path, np.zeros((5, 2), np.float32))
  with pytest.raises(ValueError, match='expected 68 points'):
    io.read_pts(path, num_points=68)


def test_read_pts_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    io.read_pts(tmp_path / 'none.pts')


def test_write_pts_rejects_bad_points(tmp_path):
  with pytest.raises(ValueError, match='shape'):
    io.write_pts(tmp_path / 'x.pts', np.zeros((3, 3)))
  with pytest.raises(ValueError, match='NaN'):
    io.write_pts(tmp_path / 'x.pts', np.array([[np.nan, 1.0]]))


def test_read_ljson_v2_swaps_to_xy(tmp_path):
  path = tmp_path / 'a.ljson'
  path.write_text(json.dumps({'landmarks': {'points': [[10.0, 20.0], [1.5, 2.5], None]},
                              'version': 2}))
  pts = io.read_ljson(path)
  np.testing.assert_array_equal(pts[:2], [[20.0, 10.0], [2.5, 1.5]])
  assert np.isnan(pts[2]).all()


def test_read_ljson_v1_groups(tmp_path):
  path = tmp_path / 'b.ljson'
  data = {'groups': {'PTS': {'landmarks': [{'point': [3.0, 4.0]}, {'point': [5.0, 6.0]}]},
                     'other': {'landmarks': [{'point': [0.0, 1.0]}]}}}
  path.write_text(json.dumps(data))
  np.testing.assert_array_equal(io.read_ljson(path), [[4.0, 3.0], [6.0, 5.0]])
  np.testing.assert_array_equal(io.read_ljson(path, group='other'), [[1.0, 0.0]])
  with pytest.raises(ValueError, match='no landmark group'):
    io.read_ljson(path, group='missing')


@pytest.mark.parametrize('text,match', [
    ('', 'empty'),
    ('{"landmarks": {"points": [[1, 2]]', 'not valid JSON'),
    ('[1, 2]', 'JSON object'),
    ('{"foo": 1}', 'no "landmarks.points"'),
    ('{"landmarks": {"points": [[1, "a"]]}}', 'not numeric'),
    ('{"landmarks": {"points": [[1, 2, 3]]}}', 'not a \\[y, x\\] pair'),
    ('{"landmarks": {"points": []}}', 'no points'),
])
def test_malformed_ljson_raise_naming_file(tmp_path, text, match):
  path = tmp_path / 'bad.ljson'
  path.write_text(text)
  with pytest.raises(ValueError, match=match) as info:
    io.read_ljson(path)
  assert str(path) in str(info.value)


def test_pts_round_trip_tiny_and_huge_values(tmp_path):
  # float64 x + 1 drops the low bits of tiny x; the writer/reader must still be exact.
  points = np.array([[2.1532826e-14, 1e-30], [3e38, -0.1], [1e-45, 12345.678]], np.float32)
  path = tmp_path / 't.pts'
  io.write_pts(path, points)
  np.testing.assert_array_equal(io.read_pts(path), points)
  # Ordinary values keep short text.
  io.write_pts(path, np.array([[0.5, 10.25]], np.float32))
  assert '1.5 11.25' in path.read_text()


def _menpo_v3(points_xy, extra_group=True):
  """A file in menpo >= 0.6's ljson v3 layout (as ``menpo.io.export_landmark_file`` writes it):
  68 points [y, x] 0-based with the iBUG-68 labels beside them, plus a 2-point group."""
  yx = [[float(y), float(x)] for x, y in points_xy]
  parts = [('jaw', range(0, 17)), ('left_eyebrow', range(17, 22)),
           ('right_eyebrow', range(22, 27)), ('nose', range(27, 36)),
           ('left_eye', range(36, 42)), ('right_eye', range(42, 48)), ('mouth', range(48, 68))]
  groups = {'PTS': {
      'landmarks': {'points': yx, 'connectivity': [[i, i + 1] for i in range(16)]},
      'labels': [{'label': name, 'mask': list(idx)} for name, idx in parts]}}
  if extra_group:
    groups['eye_centres'] = {'landmarks': {'points': [[1.0, 2.0], [3.0, 4.0]],
                                           'connectivity': []}, 'labels': []}
  return {'groups': groups, 'version': 3}


def test_read_ljson_v3_menpo_layout(tmp_path):
  rng = np.random.default_rng(0)
  xy = rng.uniform(0, 200, (68, 2)).astype(np.float32)
  path = tmp_path / 'face.ljson'
  path.write_text(json.dumps(_menpo_v3(xy)))
  np.testing.assert_array_equal(io.read_ljson(path), xy)             # first group, (x, y)
  np.testing.assert_array_equal(io.read_ljson(path, num_points=68), xy)
  np.testing.assert_array_equal(io.read_ljson(path, group='eye_centres'), [[2, 1], [4, 3]])
  np.testing.assert_array_equal(io.read_ljson(path, num_points=2), [[2, 1], [4, 3]])
  with pytest.raises(ValueError, match='no landmark group'):
    io.read_ljson(path, group='missing')
  with pytest.raises(ValueError, match='0 groups have 5 points'):
    io.read_ljson(path, num_points=5)
  with pytest.raises(ValueError, match='expected 68 points'):
    io.read_ljson(path, group='eye_centres', num_points=68)


def test_read_ljson_v3_picks_the_68_point_group_after_another(tmp_path):
  xy = np.arange(136, dtype=np.float32).reshape(68, 2)
  data = _menpo_v3(xy)
  data['groups'] = dict(reversed(list(data['groups'].items())))      # 2-point group first
  path = tmp_path / 'face.ljson'
  path.write_text(json.dumps(data))
  np.testing.assert_array_equal(io.read_ljson(path, num_points=68), xy)
  data['groups']['PTS']['landmarks'] = {'connectivity': []}
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="group 'PTS' has no landmarks.points") as info:
    io.read_ljson(path)
  assert str(path) in str(info.value)


def test_read_ljson_v1_list_of_labelled_groups(tmp_path):
  path = tmp_path / 'v1.ljson'
  data = {'version': 1, 'groups': [
      {'label': 'chin', 'landmarks': [{'point': [3.0, 4.0]}, {'point': [None, None]}],
       'connectivity': [[0, 1]]},
      {'label': 'leye', 'landmarks': [{'point': [5.0, 6.0]}], 'connectivity': []}]}
  path.write_text(json.dumps(data))
  pts = io.read_ljson(path)
  np.testing.assert_array_equal(pts[[0, 2]], [[4.0, 3.0], [6.0, 5.0]])
  assert np.isnan(pts[1]).all()


@pytest.mark.parametrize('points', [None, 5, 'abc', {'a': 1}])
def test_ljson_points_not_a_list_names_the_file(tmp_path, points):
  # Found by tests/test_fuzz_readers.py: {"landmarks": {"points": null}} raised a TypeError.
  path = tmp_path / 'bad.ljson'
  path.write_text(json.dumps({'landmarks': {'version': None, 'points': points}}))
  with pytest.raises(ValueError, match=r'bad.ljson: landmarks.points is \w+, not a list'):
    io.read_ljson(path)


def test_ljson_point_beyond_float32_names_the_file(tmp_path):
  path = tmp_path / 'big.ljson'
  path.write_text(json.dumps({'landmarks': {'points': [[1.0, 2.0], None, [-1e300, 3.0]]}}))
  with pytest.raises(ValueError, match=r'big.ljson: point 3 is beyond float32 range'):
    io.read_ljson(path)
