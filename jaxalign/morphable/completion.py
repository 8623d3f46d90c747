"""Completion of the unstable landmarks (ULs) from the stable ones (SLs) with the 3DMM.

:func:`complete` flips left-looking faces (so the kept points are the visible half), fits the
Surrey Face Model to the kept points with the JAX fitter or eos, reads the other points off the
fitted mesh (:mod:`jaxalign.morphable.contour`: fixed vertices inside the face, the jaw on the
silhouette in the '2d' convention) and un-flips. Kept points pass through unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxalign import schemes as schemes_lib
from jaxalign.morphable import contour
from jaxalign.morphable import fitting as fitting_lib
from jaxalign.morphable import pose as pose_lib
from jaxalign.morphable.model import load_model

# The JAX backend's defaults: eos's algorithm with a scale-invariant noise model and a prior
# chosen on synthetic faces (see docs/method.md and jaxalign/benchmarks/completion.py).
JAX_DEFAULTS = fitting_lib.TUNED


@dataclasses.dataclass
class CompletionResult:
  """Completed points and the fit, leading axis N (see :func:`complete`).

  Attributes:
    points: (N, L, 2) float32 all points, kept ones unchanged.
    kept: (N, L) bool the points taken from the input.
    flipped: (N,) bool the face was mirrored for the fit (left-looking).
    yaw, pitch, roll: (N,) degrees, eos's convention, of the face as given (un-flipped).
    shape_coeffs: (N, K) float32; expression_coeffs: (N, E) float32 (of the fitted, possibly
      mirrored face).
    ok: (N,) bool False where the fit failed (then the ULs are NaN).
    backend: 'jax' or 'eos'.
  """

  points: np.ndarray
  kept: np.ndarray
  flipped: np.ndarray
  yaw: np.ndarray
  pitch: np.ndarray
  roll: np.ndarray
  shape_coeffs: np.ndarray
  expression_coeffs: np.ndarray
  ok: np.ndarray
  backend: str


def _mirror(points, width, scheme):
  out = points[:, scheme.flip_index_array()].copy()
  out[..., 0] = width[:, None] - 1.0 - out[..., 0]
  return out


def complete(points, scheme=schemes_lib.IBUG68, backend: str = 'jax', image_size=None,
             flip=None, convention: str = '2d', config: fitting_lib.FitConfig | None = None,
             model=None, workers=None) -> CompletionResult:
  """Completes the ULs of faces from their SLs.

  Args:
    points: (N, 68, 2) or (68, 2) image pixels holding at least the SLs (for a left-looking
      face, the mirror set); other points are ignored and may be NaN.
    scheme: the landmark scheme (its ``stable`` set; the 3DMM reads iBUG-68 points).
    backend: 'jax' (batched JAX fitter) or 'eos' (eos-py, a process per core).
    image_size: (width, height) or (N, 2); default a box around the points. The result does not
      depend on it (it only fixes eos's viewport and the mirror axis).
    flip: None = flip left-looking faces (yaw < -10 degrees by
      :func:`jaxalign.morphable.pose.looking_direction`, a rigid fit of the mean face to the
      given points), or an (N,) / scalar bool forcing it.
    convention: '2d' (300-W jaw on the silhouette) or '3d' (fixed vertices).
    config: JAX backend :class:`~jaxalign.morphable.fitting.FitConfig` (default
      :data:`JAX_DEFAULTS`); the eos backend uses eos's defaults (5 iterations, lambda 30).
    model: a SurreyModel (default :func:`load_model`).
    workers: eos backend processes (default all cores).
  """
  scheme = schemes_lib.get_scheme(scheme)
  if scheme.name != 'ibug68' or scheme.num_points != 68:
    raise ValueError(f'3DMM completion reads iBUG-68 points; got scheme {scheme.name!r}')
  if backend not in ('jax', 'eos'):
    raise ValueError(f"backend must be 'jax' or 'eos', got {backend!r}")
  if convention not in ('2d', '3d'):
    raise ValueError(f"convention must be '2d' or '3d', got {convention!r}")
  pts = np.asarray(points, np.float32)
  single = pts.ndim == 2
  if single:
    pts = pts[None]
  if pts.ndim != 3 or pts.shape[1:] != (68, 2):
    raise ValueError(f'points must be (N, 68, 2) or (68, 2), got {np.shape(points)}')
  n = len(pts)
  model = load_model() if model is None else model
  stable = scheme.stable_mask()

  if image_size is None:
    size = np.stack([contour_free_size(p) for p in pts]) if n else np.zeros((0, 2))
  else:
    size = np.broadcast_to(np.asarray(image_size, np.float64), (n, 2)).copy()

  if flip is None:
    # The rigid 3D pose of the mean face, not the 2D nose-ratio estimate, which wraps around
    # near profile and flips some 75-90 degree faces the wrong way (see pose.py).
    flipped = np.asarray(pose_lib.looking_direction(pts, scheme, model=model)) < 0
  else:
    flipped = np.broadcast_to(np.asarray(flip, bool), (n,)).copy()
  # Work on right-looking (or frontal) faces: mirror the left-looking ones.
  work = np.where(flipped[:, None, None], _mirror(pts, size[:, 0], scheme), pts)
  work = np.where(stable[None, :, None], work, np.nan).astype(np.float32)
  ok = np.isfinite(work[:, stable]).all(axis=(1, 2))

  if backend == 'jax':
    fitter = fitting_lib.get_fitter(model)
    cfg = JAX_DEFAULTS if config is None else config
    if n:
      # Fit and read the 68 points in one compiled call.
      fit, full = fitter.fit_landmarks(work, stable.astype(np.float32), size[:, 1], cfg,
                                       convention)
      full = np.asarray(full)
      sc, ec = np.asarray(fit.shape_coeffs), np.asarray(fit.expression_coeffs)
      ypr = np.stack([np.asarray(fit.yaw), np.asarray(fit.pitch), np.asarray(fit.roll)], -1)
      ok &= np.isfinite(full).all(axis=(1, 2))
  else:
    from native_eos_bindings import EosFitter
    fitter = _eos_fitter(model.directory)
    ids = np.nonzero(stable)[0]
    fits = fitter.fit(work[:, ids], ids=ids, image_size=size.astype(int), workers=workers)
    full = np.full((n, 68, 2), np.nan, np.float32)
    sc = np.full((n, model.num_shape), np.nan, np.float32)
    ec = np.full((n, model.num_expression), np.nan, np.float32)
    ypr = np.full((n, 3), np.nan)
    for i, f in enumerate(fits):
      ok[i] &= f.ok
      if f.ok:
        full[i] = contour.ibug_points(f.vertices(model), f.camera.astype(np.float32), model,
                                      convention)
        sc[i], ec[i], ypr[i] = f.shape_coeffs, f.expression_coeffs, (f.yaw, f.pitch, f.roll)
  if not n:
    full = np.zeros((0, 68, 2), np.float32)
    sc = np.zeros((0, model.num_shape), np.float32)
    ec = np.zeros((0, model.num_expression), np.float32)
    ypr = np.zeros((0, 3))

  completed = np.where(stable[None, :, None], work, full)
  completed[~ok] = np.where(stable[None, :, None], work, np.nan)[~ok]
  out = np.where(flipped[:, None, None], _mirror(completed, size[:, 0], scheme), completed)
  kept = np.where(flipped[:, None], stable[scheme.flip_index_array()][None], stable[None])
  # Bit-exact pass-through (mirroring twice can move a float32 coordinate by an ulp).
  out = np.where(kept[..., None], pts, out)
  # A mirrored face's yaw and roll change sign; pitch does not.
  sign = np.where(flipped, -1.0, 1.0)
  result = CompletionResult(
      points=out.astype(np.float32), kept=kept, flipped=flipped,
      yaw=(ypr[:, 0] * sign), pitch=ypr[:, 1], roll=(ypr[:, 2] * sign),
      shape_coeffs=sc, expression_coeffs=ec, ok=ok, backend=backend)
  if single:
    result = CompletionResult(**{
        k: (v[0] if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(result).items()})
  return result


def contour_free_size(points) -> np.ndarray:
  """(width, height) of an image that contains the finite points with a margin."""
  from native_eos_bindings.fitting import default_image_size
  return np.asarray(default_image_size(points), np.float64)


_EOS = {}


def _eos_fitter(directory):
  from native_eos_bindings import EosFitter
  key = str(directory)
  if key not in _EOS:
    _EOS[key] = EosFitter(directory)
  return _EOS[key]
