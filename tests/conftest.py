"""Shared test fixtures: model-file location, the real face.

Paths are computed from this file (``<repo>/tests/conftest.py``); the shared data lives next to
the repository in ``../shared``.
"""

import os
import pathlib

# In-process tests run on one CPU device: an 8-way program compiles far slower on 2 cores, and
# the multi-device checks start their own processes with
# XLA_FLAGS=--xla_force_host_platform_device_count=N (test_training_parallel.py,
# test_multiprocess.py).

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / 'shared'
os.environ.setdefault('JAXALIGN_SFM_DIR', str(SHARED_DIR / 'sfm'))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FACES_DIR = SHARED_DIR / 'faces'


@pytest.fixture(scope='session')
def sfm_dir() -> pathlib.Path:
  """The Surrey Face Model folder ($JAXALIGN_SFM_DIR); skips when it is missing."""
  d = pathlib.Path(os.environ['JAXALIGN_SFM_DIR'])
  if not (d / 'sfm_shape_3448.bin').is_file():
    pytest.skip(f'Surrey Face Model files not found in {d} (set JAXALIGN_SFM_DIR)')
  return d


@pytest.fixture(scope='session')
def real_face_paths() -> tuple[pathlib.Path, pathlib.Path]:
  """(image, .pts) of the real 300-W face in ../shared/faces; skips when it is missing."""
  image = FACES_DIR / 'image_0010.png'
  pts = FACES_DIR / 'image_0010.pts'
  if not (image.is_file() and pts.is_file()):
    pytest.skip(f'real face fixture not found in {FACES_DIR}')
  return image, pts


@pytest.fixture(scope='session')
def real_face_points(real_face_paths) -> np.ndarray:
  """The real face's 68 ground-truth points, (68, 2) float32, 0-based pixels."""
  from jaxalign import io
  return io.read_pts(real_face_paths[1], num_points=68)


@pytest.fixture(scope='session')
def real_face(real_face_paths):
  """(image (H, W, 3) uint8 RGB, points (68, 2) float32) of the real face."""
  from PIL import Image
  from jaxalign import io
  image = np.asarray(Image.open(real_face_paths[0]).convert('RGB'))
  return image, io.read_pts(real_face_paths[1], num_points=68)


@pytest.fixture(scope='session')
def sfm_model(sfm_dir):
  """The loaded Surrey Face Model (jaxalign.morphable.model.SurreyModel)."""
  from jaxalign.morphable import model
  return model.load_model(sfm_dir)
