"""jaxalign.morphable.completion.complete: flip, kept points, backends, failures."""

import numpy as np
import pytest

from jaxalign import io
from jaxalign import metrics
from jaxalign.morphable import completion
from jaxalign.morphable.model import load_model
from jaxalign.schemes import IBUG68


@pytest.fixture(scope='module')
def model(sfm_dir):
  return load_model(sfm_dir)


@pytest.fixture(scope='module')
def face(real_face_paths):
  return io.read_pts(real_face_paths[1])


def _ul_inner(r, gt):
  ul = [j for j in range(17, 68) if not r.kept[j]]
  return metrics.nme(r.points[None], gt[None], indices=ul)[0]


def test_real_face_both_backends(model, face):
  out = {}
  for backend in ('jax', 'eos'):
    r = completion.complete(face, backend=backend, image_size=(1280, 1024), model=model)
    assert r.backend == backend and r.ok and r.flipped          # left-looking face
    assert -40 < r.yaw < -20
    # For a flipped face the kept points are the mirror of the SL set, unchanged.
    np.testing.assert_array_equal(r.kept, IBUG68.stable_mask()[IBUG68.flip_index_array()])
    np.testing.assert_array_equal(r.points[r.kept], face[r.kept])
    assert np.isfinite(r.points).all()
    out[backend] = _ul_inner(r, face)
  # the measured eos baseline on this face is ~4.3-4.6 %; both stay in that range
  assert out['eos'] < 0.05 and out['jax'] < 0.05


def test_flip_symmetry_and_forced_flip(model, face):
  w = 1280
  mirrored = face[IBUG68.flip_index_array()].copy()
  mirrored[:, 0] = w - 1 - mirrored[:, 0]
  a = completion.complete(face, image_size=(w, 1024), model=model)
  b = completion.complete(mirrored, image_size=(w, 1024), model=model)
  assert a.flipped and not b.flipped
  back = b.points[IBUG68.flip_index_array()].copy()
  back[:, 0] = w - 1 - back[:, 0]
  np.testing.assert_allclose(back, a.points, atol=0.05)
  assert abs(a.yaw + b.yaw) < 0.5
  c = completion.complete(face, image_size=(w, 1024), model=model, flip=False)
  assert not c.flipped
  np.testing.assert_array_equal(c.kept, IBUG68.stable_mask())


def test_batch_with_a_failed_face_and_3d_convention(model, face):
  bad = np.full_like(face, np.nan)
  r = completion.complete(np.stack([face, bad]), image_size=(1280, 1024), model=model)
  assert r.points.shape == (2, 68, 2) and r.ok.tolist() == [True, False]
  assert np.isnan(r.points[1]).all()
  r3 = completion.complete(face, image_size=(1280, 1024), model=model, convention='3d')
  r2 = completion.complete(face, image_size=(1280, 1024), model=model, convention='2d')
  np.testing.assert_allclose(r3.points[17:], r2.points[17:])
  assert not np.allclose(r3.points[:17], r2.points[:17])


def test_errors(model, face):
  from jaxalign.schemes import AFLW19
  with pytest.raises(ValueError, match='iBUG-68'):
    completion.complete(np.zeros((19, 2)), scheme=AFLW19, model=model)
  with pytest.raises(ValueError, match='backend'):
    completion.complete(face, backend='torch', model=model)
  with pytest.raises(ValueError, match='points must be'):
    completion.complete(np.zeros((10, 2)), model=model)
