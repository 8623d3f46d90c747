"""python -m jaxalign.bench completion --real: real annotated faces, per backend and per face."""

import json
import shutil

import pytest

from jaxalign.benchmarks import completion as bench


def test_real_benchmark_json(tmp_path, real_face_paths, sfm_dir, capsys):
  _, pts = real_face_paths
  shutil.copy(pts, tmp_path / 'a.pts')
  rc = bench.main(['--real', str(tmp_path), str(pts), '--backends', 'jax', '--json'])
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  assert out['faces'] == 2 and len(out['per_face']) == 2
  m = out['mean']['jax']
  assert 0 < m['inner'] < m['jaw'] and min(m['inner'], m['jaw']) <= m['all'] <= m['jaw']
  row = out['per_face'][0]
  assert row['yaw'] < -20 and row['flipped'] and set(row['jax']) == {'all', 'inner', 'jaw'}
  # image_0010 twice: the same numbers
  assert out['per_face'][0]['jax'] == pytest.approx(out['per_face'][1]['jax'])


def test_real_benchmark_bad_input(tmp_path, sfm_dir, capsys):
  assert bench.main(['--real', str(tmp_path / 'nowhere')]) == 2
  assert 'no such file' in capsys.readouterr().err
  (tmp_path / 'x.pts').write_text('garbage')
  assert bench.main(['--real', str(tmp_path)]) == 2
