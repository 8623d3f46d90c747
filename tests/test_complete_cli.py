"""python -m jaxalign.complete: outputs, report, bad files skipped."""

import json
import shutil

import numpy as np

from jaxalign import complete
from jaxalign import io


def test_cli_writes_points_and_report(tmp_path, real_face_paths, sfm_dir, capsys):
  image, pts = real_face_paths
  shutil.copy(image, tmp_path / image.name)
  shutil.copy(pts, tmp_path / pts.name)
  (tmp_path / 'broken.pts').write_text('version: 1\nn_points: 68\n{\n1 2\n}\n')
  out = tmp_path / 'out'
  report = tmp_path / 'report.json'
  rc = complete.main([str(tmp_path / pts.name), str(tmp_path / 'broken.pts'), '--out', str(out),
                      '--report', str(report)])
  assert rc == 0
  got = io.read_pts(out / 'image_0010.pts')
  gt = io.read_pts(pts)
  assert got.shape == (68, 2)
  rep = json.loads(report.read_text())
  (entry,) = rep['files']
  assert entry['flipped'] and entry['yaw'] < -10
  assert 0 < entry['ul_nme_inner'] < 0.06 and entry['ul_nme'] >= entry['ul_nme_inner'] * 0.5
  assert rep['mean']['count'] == 1 and rep['skipped'][0]['file'].endswith('broken.pts')
  # kept points (mirror SL set) pass through unchanged (up to the .pts text precision)
  from jaxalign.schemes import IBUG68
  kept = IBUG68.stable_mask()[IBUG68.flip_index_array()]
  np.testing.assert_allclose(got[kept], gt[kept], atol=1e-3)
  assert 'broken.pts' in capsys.readouterr().err


def test_cli_completes_as_a_run_does(tmp_path, real_face_paths, sfm_dir, capsys):
  """--workdir RUN: the run's backend and jaw convention (inference.Run), flags override; a
  run without a 3DMM completion is refused."""
  from jaxalign import inference
  from jaxalign.training import config as config_lib
  _, pts = real_face_paths
  run = tmp_path / 'run'
  run.mkdir()
  config = config_lib.base_config()
  config.eval.completion_convention = '3d'
  inference.save_config(config, str(run))
  report = tmp_path / 'r.json'
  assert complete.main([str(pts), '--out', str(tmp_path / 'o'), '--workdir', str(run),
                        '--report', str(report)]) == 0
  rep = json.loads(report.read_text())
  assert (rep['backend'], rep['convention']) == ('jax', '3d')
  assert complete.main([str(pts), '--out', str(tmp_path / 'o'), '--workdir', str(run),
                        '--convention', '2d', '--report', str(report)]) == 0
  assert json.loads(report.read_text())['convention'] == '2d'
  config.eval.completion = False
  inference.save_config(config, str(run))
  assert complete.main([str(pts), '--out', str(tmp_path / 'o'), '--workdir', str(run)]) == 2
  assert "completes with 'none'" in capsys.readouterr().err
  assert complete.main([str(pts), '--out', str(tmp_path / 'o'), '--workdir',
                        str(tmp_path / 'nowhere')]) == 2


def test_cli_reads_menpo_ljson_v3(tmp_path, real_face_paths, sfm_dir):
  """A menpo >= 0.6 file: groups -> PTS -> landmarks -> points ([y, x], 0-based) with labels,
  plus a 2-point group; the 68-point group is completed like the .pts file."""
  _, pts_path = real_face_paths
  xy = io.read_pts(pts_path)
  data = {'version': 3, 'groups': {
      'eyes': {'landmarks': {'points': [[1.0, 2.0], [3.0, 4.0]], 'connectivity': []},
               'labels': []},
      'PTS': {'landmarks': {'points': [[float(y), float(x)] for x, y in xy],
                            'connectivity': [[i, i + 1] for i in range(16)]},
              'labels': [{'label': 'jaw', 'mask': list(range(17))},
                         {'label': 'rest', 'mask': list(range(17, 68))}]}}}
  (tmp_path / 'face.ljson').write_text(json.dumps(data))
  rc = complete.main([str(tmp_path / 'face.ljson'), str(pts_path), '--out', str(tmp_path / 'o'),
                      '--report', str(tmp_path / 'r.json'), '--completion', 'jax'])
  assert rc == 0
  a, b = json.loads((tmp_path / 'r.json').read_text())['files']
  assert a['ok'] and a['flipped'] == b['flipped']
  assert abs(a['ul_nme'] - b['ul_nme']) < 1e-4


def test_cli_exit_codes(tmp_path, monkeypatch, capsys):
  bad = tmp_path / 'bad.pts'
  bad.write_text('nothing')
  monkeypatch.setenv('JAXALIGN_SFM_DIR', str(tmp_path / 'nowhere'))
  assert complete.main([str(bad), '--out', str(tmp_path / 'o')]) == 2
  assert 'missing' in capsys.readouterr().err
