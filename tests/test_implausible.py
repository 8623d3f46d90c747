"""report.json's cnn1_implausible: the faces on which CNN1 collapsed (its points fit no rigid 3D
face), named so that a single collapse is seen behind a mean (jaxalign.evaluation.runner)."""

import numpy as np

from jaxalign import schemes
from jaxalign.evaluation import runner
from jaxalign.morphable import pose


def _faces(n, rng):
  """(n, 68, 2) projections of the mean face, turned and scaled (every point, jaw included:
  the residual ignores the contour points, which have no fixed vertex)."""
  ref = pose.reference_points()
  out = []
  for k in range(n):
    yaw = np.deg2rad(rng.uniform(-40, 40))
    rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0]])
    p = np.nan_to_num(ref) @ rot.T * rng.uniform(0.8, 1.5) + rng.uniform(50, 150, 2)
    out.append(p + rng.normal(0, 0.5, p.shape))
  return np.stack(out).astype(np.float32)


def test_collapsed_faces_are_named_worst_first(sfm_dir):
  rng = np.random.default_rng(0)
  faces = _faces(6, rng)
  scattered = faces.copy()
  scattered[2] = rng.uniform(40, 200, (68, 2))                      # points all over the photo
  scattered[4, :34] = scattered[4, :34][::-1]                      # half the face shuffled
  names = [f'face_{k}.jpg' for k in range(6)]
  clean = runner.implausible_shapes(faces, names, schemes.IBUG68)
  assert clean == {'max_residual': pose.MAX_RESIDUAL, 'count': 0, 'images': []}
  res = pose.rigid_residual(scattered, pose.reference_points())
  out = runner.implausible_shapes(scattered, names, schemes.IBUG68)
  assert out['count'] == 2
  assert out['images'] == sorted(['face_2.jpg', 'face_4.jpg'], key=lambda n: -res[int(n[5])])
  # A face that was not predicted (NaN) is not counted as a collapse.
  missing = faces.copy()
  missing[1] = np.nan
  assert runner.implausible_shapes(missing, names, schemes.IBUG68)['count'] == 0
  # Other schemes have no 3D reference: no figure rather than a wrong one.
  assert runner.implausible_shapes(faces[:, :19], names, schemes.get_scheme('aflw19')) is None
