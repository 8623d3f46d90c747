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
