"""The thin layer over eos-py: load the model files once, fit one face or a batch.

Numpy in, a plain :class:`EosFit` out. eos-py's ``fit_shape_and_pose`` holds the GIL, so a
batch runs on a process pool (one worker per core, each loading the model once).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os

import numpy as np

from jaxalign import assets
from native_eos_bindings.contour import _project
from native_eos_bindings.model_files import load_model


@dataclasses.dataclass
class EosFit:
  """One face's eos fit.

  Attributes:
    ok: False when the fit failed (then ``error`` says why and the arrays are NaN).
    error: '' or the reason.
    shape_coeffs: (K,) float32 PCA coefficients (standard deviations).
    expression_coeffs: (E,) float32 blendshape weights.
    rotation: (3, 3) model-to-camera rotation R.
    translation: (3,) (t_x, t_y, 0) in model units (eos ``ScaledOrthoProjectionParameters``).
    scale: pixels per model unit.
    yaw, pitch, roll: degrees, eos's ``get_yaw_pitch_roll`` (yaw > 0: right-looking).
    camera: (3, 4) affine camera, image pixels = camera @ [v, 1] (eos
      ``get_3x4_affine_camera_matrix``).
    image_size: (width, height).
  """

  ok: bool
  error: str
  shape_coeffs: np.ndarray
  expression_coeffs: np.ndarray
  rotation: np.ndarray
  translation: np.ndarray
  scale: float
  yaw: float
  pitch: float
  roll: float
  camera: np.ndarray
  image_size: tuple[int, int]

  def project(self, vertices) -> np.ndarray:
    """(..., V, 2) image pixels of model-frame vertices (..., V, 3)."""
    return _project(vertices, self.camera).astype(np.float32)

  def vertices(self, model) -> np.ndarray:
    """(V, 3) the fitted mesh (model frame) of ``model`` (a SurreyModel)."""
    return model.vertices(self.shape_coeffs, self.expression_coeffs)


def _failed(reason, k, e, size):
  nan = float('nan')
  return EosFit(False, reason, np.full(k, np.nan, np.float32), np.full(e, np.nan, np.float32),
                np.full((3, 3), np.nan), np.full(3, np.nan), nan, nan, nan, nan,
                np.full((3, 4), np.nan), size)


class EosFitter:
  """eos-py's model, blendshapes, landmark mapper, edge topology and contours, loaded once."""

  def __init__(self, directory=None):
    import eos
    d = assets.sfm_dir(directory)
    self.directory = d
    self.surrey = load_model(d)
    model = eos.morphablemodel.load_model(str(d / 'sfm_shape_3448.bin'))
    self.blendshapes = eos.morphablemodel.load_blendshapes(
        str(d / 'expression_blendshapes_3448.bin'))
    self.morphable_model = eos.morphablemodel.MorphableModel(
        model.get_shape_model(), self.blendshapes, color_model=eos.morphablemodel.PcaModel(),
        vertex_definitions=None, texture_coordinates=model.get_texture_coordinates())
    self.mapper = eos.core.LandmarkMapper(str(d / 'ibug_to_sfm.txt'))
    self.edge_topology = eos.morphablemodel.load_edge_topology(
        str(d / 'sfm_3448_edge_topology.json'))
    self.contour_landmarks = eos.fitting.ContourLandmarks.load(str(d / 'ibug_to_sfm.txt'))
    self.model_contour = eos.fitting.ModelContour.load(str(d / 'sfm_model_contours.json'))

  def fit_one(self, points, ids=None, image_size=None, num_iterations=5, lambda_identity=30.0,
              num_shape_coefficients=None, contour=True) -> EosFit:
    """Fits one face; bad input gives a fit with ``ok=False`` and the reason, never an error.

    Args:
      points: (L, 2) image pixels (x, y); NaN rows are ignored.
      ids: (L,) 0-based iBUG-68 index of each point (default 0..L-1).
      image_size: (width, height) in pixels (default: a box around the points, see
        :func:`default_image_size`; only the camera's frustum depends on it).
      num_iterations, lambda_identity, num_shape_coefficients: eos's parameters.
      contour: use eos's contour and occluding-edge fitting for given jaw points.
    """
    import eos
    k, e = self.surrey.num_shape, self.surrey.num_expression
    pts = np.asarray(points, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
      return _failed(f'points must be (L, 2), got {pts.shape}', k, e, (0, 0))
    ids = np.arange(len(pts)) if ids is None else np.asarray(ids, np.int64)
    if ids.shape != (len(pts),) or (ids < 0).any() or (ids >= 68).any():
      return _failed('ids must be (L,) iBUG-68 indices in [0, 68)', k, e, (0, 0))
    size = default_image_size(pts) if image_size is None else tuple(int(s) for s in image_size)
    finite = np.isfinite(pts).all(axis=1)
    mapped = finite & (self.surrey.ibug_vertex[ids] >= 0)
    if mapped.sum() < 4:
      return _failed(f'{int(mapped.sum())} usable points (< 4 with a model vertex)', k, e, size)
    if np.ptp(pts[mapped], axis=0).max() < 1e-6:
      return _failed('all points are equal', k, e, size)
    if size[0] <= 0 or size[1] <= 0:
      return _failed(f'bad image size {size}', k, e, size)
    lms = [eos.core.Landmark(str(int(i) + 1), [float(x), float(y)])
           for i, (x, y), f in zip(ids, pts, finite) if f]
    kwargs = dict(num_iterations=int(num_iterations), lambda_identity=float(lambda_identity),
                  num_shape_coefficients_to_fit=num_shape_coefficients)
    try:
      if contour:
        _, rp, sc, ec = eos.fitting.fit_shape_and_pose(
            self.morphable_model, lms, self.mapper, size[0], size[1], self.edge_topology,
            self.contour_landmarks, self.model_contour, **kwargs)
      else:
        _, rp, sc, ec = eos.fitting.fit_shape_and_pose(
            self.morphable_model, lms, self.mapper, size[0], size[1], **kwargs)
    except Exception as err:  # eos raises on degenerate systems; flag, don't crash a batch.
      return _failed(f'eos: {err}', k, e, size)
    return fit_from_rendering_parameters(rp, sc, ec, size, k)

  def fit(self, points, ids=None, image_size=None, workers=None, **kwargs):
    """One face ((L, 2) points -> EosFit) or a batch ((N, L, 2) -> list of EosFit).

    A batch runs on ``workers`` processes (default: all cores; 1 = in this process).
    ``image_size`` is (width, height) or (N, 2).
    """
    pts = np.asarray(points, np.float64)
    if pts.ndim == 2:
      return self.fit_one(pts, ids, image_size, **kwargs)
    if pts.ndim != 3:
      raise ValueError(f'points must be (L, 2) or (N, L, 2), got shape {pts.shape}')
    n = len(pts)
    sizes = [None] * n if image_size is None else (
        [tuple(image_size)] * n if np.ndim(image_size) == 1 else [tuple(s) for s in image_size])
    workers = os.cpu_count() or 1 if workers is None else int(workers)
    workers = max(1, min(workers, n))
    if workers == 1:
      return [self.fit_one(p, ids, s, **kwargs) for p, s in zip(pts, sizes)]
    chunks = np.array_split(np.arange(n), workers)
    pool = self._get_pool(workers)
    futures = [pool.submit(_fit_chunk, pts[c], ids, [sizes[i] for i in c], kwargs)
               for c in chunks]
    out = []
    for f in futures:
      out.extend(f.result())
    return out

  def _get_pool(self, workers):
    """A process pool kept between calls (each worker loads the model once)."""
    pool = getattr(self, '_pool', None)
    if pool is None or self._pool_size != workers:
      self.close()
      # forkserver, not fork: the caller usually runs JAX, which is multithreaded, and forking a
      # multithreaded process can deadlock the child.
      ctx = multiprocessing.get_context('forkserver' if os.name == 'posix' else 'spawn')
      self._pool = concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=ctx, initializer=_init_worker, initargs=(str(self.directory),))
      self._pool_size = workers
    return self._pool

  def close(self):
    """Shuts the worker pool down (it is also shut down at interpreter exit)."""
    pool = getattr(self, '_pool', None)
    if pool is not None:
      pool.shutdown()
      self._pool = None


_WORKER = {}


def _init_worker(directory):
  _WORKER['fitter'] = EosFitter(directory)


def _fit_chunk(points, ids, sizes, kwargs):
  fitter = _WORKER['fitter']
  return [fitter.fit_one(p, ids, s, **kwargs) for p, s in zip(points, sizes)]


def default_image_size(points) -> tuple[int, int]:
  """An image size that contains the points: (max x, max y) + 1 + a margin of the points' extent.

  eos needs an image size only for its camera frustum (and its viewport flip); the fit itself
  does not depend on it as long as the points lie inside.
  """
  p = np.asarray(points, np.float64)
  p = p[np.isfinite(p).all(axis=1)]
  if not len(p):
    return (1, 1)
  extent = float(np.ptp(p, axis=0).max()) if len(p) > 1 else 1.0
  hi = np.maximum(p.max(axis=0), 0) + 1 + extent
  return (int(np.ceil(hi[0])), int(np.ceil(hi[1])))


def fit_from_rendering_parameters(rp, shape_coeffs, expression_coeffs, size, k=None) -> EosFit:
  """An :class:`EosFit` from eos's RenderingParameters and coefficient lists."""
  import eos
  w, h = size
  mv = np.asarray(rp.get_modelview(), np.float64)
  proj = np.asarray(rp.get_projection(), np.float64)
  scale = float(proj[0, 0] * w / 2.0)   # ortho(0, W/s, 0, H/s): P[0, 0] = 2 s / W
  ypr = np.asarray(rp.get_yaw_pitch_roll(), np.float64)
  cam = np.asarray(eos.fitting.get_3x4_affine_camera_matrix(rp, w, h), np.float64)
  sc = np.asarray(shape_coeffs, np.float32)
  return EosFit(True, '', sc, np.asarray(expression_coeffs, np.float32), mv[:3, :3].copy(),
                mv[:3, 3].copy(), scale, float(ypr[0]), float(ypr[1]), float(ypr[2]), cam,
                (int(w), int(h)))
