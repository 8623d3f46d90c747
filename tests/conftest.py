"""Shared test fixtures: model-file location, the real face.

Paths are computed from this file (``<repo>/tests/conftest.py``); the shared data lives next to
the repository in ``../shared``.
"""

import os
import pathlib
import tempfile

# In-process tests run on one CPU device: an 8-way program compiles far slower on 2 cores, and
# the multi-device checks start their own processes with
# XLA_FLAGS=--xla_force_host_platform_device_count=N (test_training_parallel.py,
# test_multiprocess.py).

# One device unless a test asks for more: a training run would otherwise split the cores into
# one device per core (config.cpu_devices = 0), here and in the subprocesses that inherit this.
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=1').strip()

# One persistent XLA compilation cache for the whole suite (both xdist workers and every
# subprocess inherit it): many tests train the same smoke model, and a program compiled once is
# then loaded from disk (compiling dominates the tests on 2 cores). Keyed by JAX and the
# program, so a stale entry is never used; JAXALIGN_TEST_JAX_CACHE='' turns it off.
_CACHE = os.environ.get('JAXALIGN_TEST_JAX_CACHE',
                        os.path.join(tempfile.gettempdir(), f'jaxalign-tests-jax-cache-{os.getuid()}'))
if _CACHE:
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')

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


def write_faces(out: pathlib.Path, n: int, seed: int, size: int = 64, yaws=None):
  """Random similarity warps (half of them mirrored) of the real face, 300-W folder style."""
  import json
  import cv2
  from jaxalign import io, schemes
  src = cv2.imread(str(FACES_DIR / 'image_0010.png'))
  pts = io.read_pts(FACES_DIR / 'image_0010.pts')
  rng = np.random.default_rng(seed)
  out.mkdir(parents=True, exist_ok=True)
  centre = (pts.min(0) + pts.max(0)) / 2
  side = (pts.max(0) - pts.min(0)).max()
  lines = []
  for i in range(n):
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), rng.uniform(-15, 15),
                                size / side * rng.uniform(0.55, 0.7))
    m[:, 2] += size / 2 - centre + rng.uniform(-3, 3, 2)
    img = cv2.warpAffine(src, m, (size, size))
    p = pts @ m[:, :2].T + m[:, 2]
    if i % 2:
      img = np.ascontiguousarray(img[:, ::-1])
      p = p[schemes.IBUG68.flip_index_array()]
      p[:, 0] = size - 1 - p[:, 0]
    cv2.imwrite(str(out / f'face_{i:03d}.png'), img)
    io.write_pts(out / f'face_{i:03d}.pts', p)
    if yaws is not None and yaws[i] is not None:
      lines.append(json.dumps({'file': f'face_{i:03d}.png', 'yaw': yaws[i]}))
  if lines:
    (out / 'annotations.jsonl').write_text('\n'.join(lines) + '\n')




def smoke_config(train_dir, test_dir=None, num_steps: int = 2):
  """configs/smoke.py training on ``train_dir`` for ``num_steps`` steps (a checkpoint at the
  end), ``test_dir`` its test faces, no evaluation at the end."""
  import importlib.util
  spec = importlib.util.spec_from_file_location('smoke', REPO_ROOT / 'configs' / 'smoke.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_steps = num_steps
  config.checkpoint_every = num_steps
  config.data.train_dir = str(train_dir)
  if test_dir is not None:
    config.data.test_dir = str(test_dir)
  config.eval.enabled = False
  return config


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory):
  """One trained smoke run shared by the tests of a session (each xdist worker trains its own):
  configs/smoke.py, two steps on 64 px warps of the real face; held-out faces with and without
  an annotated yaw. Returns the run folder (pathlib.Path)."""
  from jaxalign import workflow
  root = tmp_path_factory.mktemp('e2e')
  write_faces(root / 'train', 16, 0)
  # Half of the test faces carry an annotated yaw: the report mixes both sources.
  write_faces(root / 'test', 6, 1, yaws=[30.0, -30.0, 10.0, None, None, None])
  config = smoke_config(root / 'train', root / 'test')
  workdir = root / 'run'
  workflow.train_and_evaluate(config, str(workdir))
  return workdir
