"""Completion of the unstable landmarks (ULs) from the stable ones (SLs) with the 3DMM.

:func:`complete` flips left-looking faces (so the kept points are the visible half), fits the
Surrey Face Model to the kept points with the JAX fitter or eos, reads the other points off the
fitted mesh (:mod:`jaxalign.morphable.contour`: fixed vertices inside the face, the jaw on the
silhouette in the '2d' convention) and un-flips. Kept points pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

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


# --- backends ------------------------------------------------------------------------------
# name -> fit(work, weights, size, model, config, convention, workers) returning
# (full (N, 68, 2) points of the fitted meshes, shape coeffs (N, K), expression coeffs (N, E),
# yaw/pitch/roll (N, 3), ok (N,)). ``work`` holds the right-looking faces' given points (NaN
# elsewhere), ``weights`` (N, 68) their weights. The eos backend is registered lazily: only
# its function imports :mod:`native_eos_bindings` (the one place this package reaches eos-py's
# fitter).
BACKENDS = {}


def register_backend(name: str, fn) -> None:
  """Adds (or replaces) a completion backend in :data:`BACKENDS`."""
  BACKENDS[name] = fn


def _fit_jax(work, weights, size, model, config, convention, workers):
  del workers
  fitter = fitting_lib.get_fitter(model)
  cfg = JAX_DEFAULTS if config is None else config
  # Fit and read the 68 points in one compiled call.
  fit, full = fitter.fit_landmarks(work, weights, size[:, 1], cfg, convention)
  full = np.asarray(full)
  ypr = np.stack([np.asarray(fit.yaw), np.asarray(fit.pitch), np.asarray(fit.roll)], -1)
  return (full, np.asarray(fit.shape_coeffs), np.asarray(fit.expression_coeffs), ypr,
          np.isfinite(full).all(axis=(1, 2)))


def _fit_eos(work, weights, size, model, config, convention, workers):
  del config
  n = len(work)
  ids = np.nonzero(weights[0] > 0)[0] if n else np.zeros(0, np.int64)   # the SLs
  fits = _eos_fitter(model.directory).fit(work[:, ids], ids=ids, image_size=size.astype(int),
                                          workers=workers)
  full = np.full((n, 68, 2), np.nan, np.float32)
  sc = np.full((n, model.num_shape), np.nan, np.float32)
  ec = np.full((n, model.num_expression), np.nan, np.float32)
  ypr = np.full((n, 3), np.nan)
  ok = np.zeros(n, bool)
  for i, f in enumerate(fits):
    ok[i] = f.ok
    if f.ok:
      full[i] = contour.ibug_points(f.vertices(model), f.camera.astype(np.float32), model,
                                    convention)
      sc[i], ec[i], ypr[i] = f.shape_coeffs, f.expression_coeffs, (f.yaw, f.pitch, f.roll)
  return full, sc, ec, ypr, ok


register_backend('jax', _fit_jax)
register_backend('eos', _fit_eos)


def complete(points, scheme=schemes_lib.IBUG68, backend: str = 'jax', image_size=None,
             flip=None, convention: str = '2d', config: fitting_lib.FitConfig | None = None,
             model=None, workers=None, observed=None, weights=None,
             flip_threshold: float = pose_lib.FLIP_THRESHOLD_DEG) -> CompletionResult:
  """Completes the ULs of faces from their SLs, optionally fused with observed ULs.

  Args:
    points: (N, 68, 2) or (68, 2) image pixels holding at least the SLs (for a left-looking
      face, the mirror set); other points are ignored and may be NaN.
    scheme: the landmark scheme (its ``stable`` set; the 3DMM reads iBUG-68 points).
    backend: a name in :data:`BACKENDS`: 'jax' (batched JAX fitter) or 'eos' (eos-py, a
      process per core).
    image_size: (width, height) or (N, 2); default a box around the points
      (:func:`default_image_size`). The result does not depend on it (it only fixes eos's
      viewport and the mirror axis).
    flip: None = flip left-looking faces (:func:`jaxalign.morphable.pose.flip_from_points`: the
      rigid fit of the mean face to the given points, yaw < -``flip_threshold``), or an (N,) /
      scalar bool forcing it.
    convention: '2d' (300-W jaw on the silhouette) or '3d' (fixed vertices).
    config: JAX backend :class:`~jaxalign.morphable.fitting.FitConfig` (default
      :data:`JAX_DEFAULTS`); the eos backend uses eos's defaults (5 iterations, lambda 30).
    model: a SurreyModel (default :func:`load_model`).
    workers: eos backend processes (default all cores).
    observed: fusion (JAX backend): (N, 68, 2) or (68, 2) image pixels of extra observations of
      the points that are not kept (e.g. CNN1's ULs), in the same frame as ``points``; NaN
      where absent. Kept points are never taken from here.
    weights: (N, 68), (68,) or scalar weights of the ``observed`` points relative to the kept
      points' weight 1 (a weight divides the point's residual variance; e.g.
      :func:`fusion_weights`). Default 0.5. Points on the hidden side get weight 0 whatever
      is given (:func:`hidden_points`). The output points stay the fitted mesh's points: the
      observations pull the fit, they are not copied.
    flip_threshold: degrees for ``flip=None`` (default the model's convention, 0).
  """
  scheme = schemes_lib.get_scheme(scheme)
  if scheme.name != 'ibug68' or scheme.num_points != 68:
    raise ValueError(f'3DMM completion reads iBUG-68 points; got scheme {scheme.name!r}')
  if backend not in BACKENDS:
    raise ValueError(f'backend must be one of {sorted(BACKENDS)}, got {backend!r}')
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
    size = np.stack([default_image_size(p) for p in pts]) if n else np.zeros((0, 2))
  else:
    size = np.broadcast_to(np.asarray(image_size, np.float64), (n, 2)).copy()

  if flip is None:
    # The rigid 3D pose of the mean face, not the 2D nose-ratio estimate, which wraps around
    # near profile and flips some 75-90 degree faces the wrong way (see pose.py).
    flipped = pose_lib.flip_from_points(pts, scheme, model, flip_threshold) if n else (
        np.zeros(0, bool))
  else:
    flipped = np.broadcast_to(np.asarray(flip, bool), (n,)).copy()
  # Work on right-looking (or frontal) faces: mirror the left-looking ones.
  work = np.where(flipped[:, None, None], _mirror(pts, size[:, 0], scheme), pts)
  work = np.where(stable[None, :, None], work, np.nan).astype(np.float32)
  ok = np.isfinite(work[:, stable]).all(axis=(1, 2))
  w = np.broadcast_to(stable.astype(np.float32), (n, 68)).copy()
  if observed is not None:
    if backend != 'jax':
      raise ValueError(f'fusion (observed=...) needs the jax backend (weighted fit), got '
                       f'{backend!r}')
    work, w = _add_observations(work, w, observed, weights, flipped, size, scheme, model, n)

  if n:
    full, sc, ec, ypr, fit_ok = BACKENDS[backend](work, w, size, model, config, convention,
                                                  workers)
    ok &= fit_ok
  else:
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


# --- fusion ----------------------------------------------------------------------------------

DEFAULT_FUSION_WEIGHT = 0.5
# A fused point's weight never reaches the SLs' 1 (the issue's rule: observations of the ULs
# are trusted less than the SLs).
MAX_FUSION_WEIGHT = 0.5


def hidden_points(yaw, model=None) -> np.ndarray:
  """(N, 68) bool: the points the pose says are on the hidden side of a right-looking face.

  In the working frame of :func:`complete` (left-looking faces mirrored, yaw >= 0 up to the
  rigid estimate's error): a non-jaw point is hidden when its '3d' vertex on the mean face
  turns away from the camera at that yaw (back-facing normal under R_y(yaw)); the far-side jaw
  points (iBUG 9-16) count as hidden at any yaw > 0, the near side and the chin never. (The jaw
  vertices lie on the face outline, where the normal test is a coin toss; the 300-W convention
  puts the far-side jaw on the silhouette, which the fitted model places from the whole face.)

  Args:
    yaw: (N,) degrees of the right-looking working faces (eos convention).
  """
  model = load_model() if model is None else model
  normals = _landmark_normals(model)                                   # (68, 3)
  y = np.radians(np.nan_to_num(np.asarray(yaw, np.float64)))
  view = np.stack([-np.sin(y), np.zeros_like(y), np.cos(y)], -1)       # camera z in model frame
  hidden = normals @ view.T <= 0.0                                     # (68, N)
  far_jaw = np.zeros(68, bool)
  far_jaw[9:17] = True
  hidden[:17] = False
  hidden = hidden.T | (far_jaw[None] & (np.asarray(yaw)[:, None] > 0))
  return hidden


@functools.lru_cache(maxsize=4)
def _landmark_normals(model) -> np.ndarray:
  """(68, 3) unit normals of the '3d' landmark vertices on the mean face (model frame)."""
  vn = contour.vertex_normals(model.mean.astype(np.float64), model.triangles)
  return vn[contour.landmark_geometry(model).vertices]


def _add_observations(work, w, observed, weights, flipped, size, scheme, model, n):
  """work / weights with the observed non-kept points added (mirrored like the face)."""
  obs = np.asarray(observed, np.float32)
  if obs.ndim == 2:
    obs = obs[None]
  if obs.shape != (n, 68, 2):
    raise ValueError(f'observed must be (N, 68, 2) like points, got {np.shape(observed)}')
  ow = np.broadcast_to(np.asarray(
      DEFAULT_FUSION_WEIGHT if weights is None else weights, np.float32), (n, 68)).copy()
  if not np.isfinite(ow).all() or (ow < 0).any():
    raise ValueError('fusion weights must be finite and >= 0')
  ow = np.minimum(ow, MAX_FUSION_WEIGHT)
  perm = scheme.flip_index_array()
  obs = np.where(flipped[:, None, None], _mirror(obs, size[:, 0], scheme), obs)
  ow = np.where(flipped[:, None], ow[:, perm], ow)
  stable = scheme.stable_mask()
  yaw = np.asarray(pose_lib.estimate_pose(np.where(stable[None, :, None], work, np.nan),
                                          scheme, model)[..., 0])
  use = (~stable[None]) & np.isfinite(obs).all(-1) & (ow > 0) & ~hidden_points(yaw, model)
  work = np.where(use[..., None], obs, work).astype(np.float32)
  w = np.where(use, ow, w).astype(np.float32)
  return work, w


YAW_BINS = (0.0, 30.0, 60.0, 75.0, 90.0)


def _yaw_bin(yaw, bins):
  """(N,) index of the |yaw| bin (the last bin also takes |yaw| beyond its upper edge)."""
  edges = np.asarray(bins, np.float64)
  b = np.searchsorted(edges, np.abs(np.asarray(yaw, np.float64)), side='right') - 1
  return np.clip(b, 0, len(edges) - 2)


def residual_rms(pred, gt, yaw, bins=YAW_BINS, scheme=schemes_lib.IBUG68,
                 min_faces: int = 5) -> np.ndarray:
  """(B, L) RMS of a detector's per-point error per |yaw| bin, in inter-ocular units, in the
  working (right-looking) frame: a left-looking face's errors (by
  :func:`jaxalign.morphable.pose.is_left_looking` of ``yaw``) are counted at its mirror points.

  Estimate it on held-out training faces (e.g. CNN1's points on a held-out slice of the
  training data), never on the test set; :func:`fusion_weights` turns it into weights.

  Args:
    pred, gt: (N, L, 2) image pixels. yaw: (N,) degrees (signed, eos convention).
    min_faces: a bin with fewer faces gets NaN (no weight).
  """
  scheme = schemes_lib.get_scheme(scheme)
  p, g = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  if p.shape != g.shape or p.ndim != 3 or p.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'pred and gt must both be (N, {scheme.num_points}, 2), got {p.shape} '
                     f'and {g.shape}')
  a, b = scheme.inter_ocular
  d = np.linalg.norm(g[:, a] - g[:, b], axis=-1)
  err = np.linalg.norm(p - g, axis=-1) / d[:, None]                    # (N, L)
  left = pose_lib.is_left_looking(np.asarray(yaw, np.float64))
  err = np.where(left[:, None], err[:, scheme.flip_index_array()], err)
  idx = _yaw_bin(yaw, bins)
  out = np.full((len(bins) - 1, scheme.num_points), np.nan)
  for k in range(len(bins) - 1):
    sel = idx == k
    if sel.sum() >= min_faces:
      out[k] = np.sqrt(np.nanmean(err[sel] ** 2, axis=0))
  return out


def fusion_weights(rms, yaw, bins=YAW_BINS, reference_rms=None,
                   max_weight: float = MAX_FUSION_WEIGHT, scheme=schemes_lib.IBUG68):
  """(N, L) per-point fusion weights from held-out residual RMS per point and |yaw| bin.

  Inverse-variance weighting relative to the SLs: a point whose observations scatter k times
  as much as the SLs counts 1/k^2 as much in the least squares,

      w[i, p] = min(max_weight, (reference_rms[b] / rms[b, p])^2),  b = the |yaw| bin of face i,

  with ``reference_rms[b]`` the RMS the SLs are trusted at (default: the mean over the stable
  points of ``rms[b]``, i.e. the same detector's accuracy on the SLs). NaN or non-positive RMS
  gives weight 0. ``rms`` is in the working (right-looking) frame (:func:`residual_rms`); the
  weights come back in each face's own frame (mirrored for a left-looking ``yaw``), as
  :func:`complete` takes them. Hidden-side points are zeroed later by :func:`complete`.

  Args:
    rms: (B, L) residual RMS per |yaw| bin and point, any unit (e.g. fraction of the
      inter-ocular distance), measured on held-out training faces, never on the test set.
    yaw: (N,) the faces' yaw in degrees (eos convention).
    bins: (B + 1,) |yaw| bin edges in degrees (larger |yaw| goes to the last bin).
    reference_rms: scalar or (B,) RMS of the SLs; default from ``rms`` as above.
    max_weight: cap (< 1: observations never count as much as an SL).
  """
  scheme = schemes_lib.get_scheme(scheme)
  r = np.asarray(rms, np.float64)
  if r.ndim != 2 or r.shape != (len(bins) - 1, scheme.num_points):
    raise ValueError(f'rms must be (B, {scheme.num_points}) for {len(bins) - 1} bins, got '
                     f'{r.shape}')
  if reference_rms is None:
    # Mean over the finite SL entries; NaN for a bin without any (no held-out face there: its
    # weights become 0), without numpy's empty-slice warning.
    sl = r[:, scheme.stable_mask()]
    count = np.isfinite(sl).sum(axis=1)
    ref = np.where(count > 0, np.nansum(sl, axis=1) / np.maximum(count, 1), np.nan)
  else:
    ref = np.broadcast_to(np.asarray(reference_rms, np.float64), (len(r),))
  good = np.isfinite(r) & (r > 0)
  with np.errstate(invalid='ignore', divide='ignore'):
    table = np.where(good, np.minimum(max_weight, (ref[:, None] / np.where(good, r, 1.0)) ** 2),
                     0.0)
  table = np.nan_to_num(table)
  w = table[_yaw_bin(yaw, bins)]
  left = pose_lib.is_left_looking(np.asarray(yaw, np.float64))
  w = np.where(left[:, None], w[:, scheme.flip_index_array()], w)
  return w.astype(np.float32)


def _box_size(gt) -> np.ndarray:
  """(N,) sqrt(width * height) of each face's finite points (the box normaliser)."""
  g = np.asarray(gt, np.float64)
  lo, hi = np.nanmin(g, axis=1), np.nanmax(g, axis=1)
  return np.sqrt(np.prod(np.maximum(hi - lo, 1e-6), axis=-1))


def blend_weights(completed, observed, gt, yaw, bins=YAW_BINS, scheme=schemes_lib.IBUG68,
                  min_faces: int = 5, mix_stable: bool = False) -> np.ndarray:
  """(B, L) the held-out least-squares mix of two estimates of every point, per |yaw| bin.

  Stacking (beyond the paper): the completed points ``c`` (the 3DMM's) and another detector's
  ``o`` (CNN1's) err differently, by point and by pose; the mix ``alpha c + (1 - alpha) o`` with
  the ``alpha`` in [0, 1] that minimises the summed squared error on held-out faces is, per bin
  b and point p,

      alpha[b, p] = clip(-sum_i d_i . v_i / sum_i |v_i|^2, 0, 1),  d = o - gt,  v = c - o,

  errors in units of each face's box size (sqrt(w h) of ``gt``'s box), so faces of every size
  count alike. alpha = 1 keeps the completion, 0 takes ``o``. Estimate it on held-out training
  faces, never on the test set; :func:`blend_points` applies it.

  Args:
    completed, observed, gt: (N, L, 2) image pixels.
    yaw: (N,) degrees (signed, eos convention) that decide each face's bin and frame: the value
      the test time will have (the rigid fit of ``observed``), so the table is read as it was
      estimated. Left-looking faces count at their mirror points (the working frame).
    min_faces: a bin with fewer faces gets NaN (the completion is kept there).
    mix_stable: also mix the stable points, where the completion keeps CNN2's estimate, with
      ``observed``'s (CNN1's; ``eval.blend_stable``); else they get NaN (not mixed).
  """
  scheme = schemes_lib.get_scheme(scheme)
  c, o, g = (np.asarray(a, np.float64) for a in (completed, observed, gt))
  if not c.shape == o.shape == g.shape or c.ndim != 3 or c.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'completed, observed and gt must all be (N, {scheme.num_points}, 2), got '
                     f'{c.shape}, {o.shape} and {g.shape}')
  size = _box_size(g)[:, None, None]
  d, v = (o - g) / size, (c - o) / size
  dv, vv = np.sum(d * v, -1), np.sum(v * v, -1)                        # (N, L)
  ok = np.isfinite(dv) & np.isfinite(vv)
  dv, vv = np.where(ok, dv, 0.0), np.where(ok, vv, 0.0)
  left = pose_lib.is_left_looking(np.asarray(yaw, np.float64))
  perm = scheme.flip_index_array()
  dv = np.where(left[:, None], dv[:, perm], dv)
  vv = np.where(left[:, None], vv[:, perm], vv)
  count = np.where(left[:, None], ok[:, perm], ok)
  idx = _yaw_bin(yaw, bins)
  out = np.full((len(bins) - 1, scheme.num_points), np.nan)
  for k in range(len(bins) - 1):
    sel = idx == k
    num, den = -dv[sel].sum(0), vv[sel].sum(0)
    enough = (count[sel].sum(0) >= min_faces) & (den > 0)
    with np.errstate(invalid='ignore', divide='ignore'):
      out[k] = np.where(enough, np.clip(num / np.where(enough, den, 1.0), 0.0, 1.0), np.nan)
  if not mix_stable:
    out[:, scheme.stable_mask()] = np.nan    # the kept points (CNN2's) are not mixed
  return out


def blend_points(completed, observed, alpha, yaw, bins=YAW_BINS, scheme=schemes_lib.IBUG68):
  """(N, L, 2) float32 ``alpha c + (1 - alpha) o`` with :func:`blend_weights`' table ``alpha``
  (B, L) at each face's |yaw| bin, mirrored for a left-looking ``yaw``; where alpha is NaN, or
  ``observed`` is not finite, the completed point is kept.

  Args:
    completed, observed: (N, L, 2) image pixels. alpha: (B, L) in [0, 1] or NaN.
    yaw: (N,) degrees: the same estimate the table was made with (the rigid fit of
      ``observed``).
  """
  scheme = schemes_lib.get_scheme(scheme)
  table = np.asarray(alpha, np.float64)
  if table.shape != (len(bins) - 1, scheme.num_points):
    raise ValueError(f'alpha must be (B, {scheme.num_points}) for {len(bins) - 1} bins, got '
                     f'{table.shape}')
  if np.any((table < 0) | (table > 1)):
    raise ValueError('blend weights alpha must lie in [0, 1] (or be NaN)')
  a = table[_yaw_bin(yaw, bins)]
  left = pose_lib.is_left_looking(np.asarray(yaw, np.float64))
  a = np.where(left[:, None], a[:, scheme.flip_index_array()], a)
  c, o = np.asarray(completed, np.float64), np.asarray(observed, np.float64)
  use = np.isfinite(a) & np.isfinite(o).all(-1)
  a = np.where(use, a, 1.0)[..., None]
  return np.where(use[..., None], a * c + (1.0 - a) * np.nan_to_num(o), c).astype(np.float32)


def default_image_size(points) -> np.ndarray:
  """(width, height) float64 of an image that contains the finite points: (max x, max y) + 1 +
  a margin of the points' extent (eos needs an image size only for its camera frustum)."""
  p = np.asarray(points, np.float64)
  p = p[np.isfinite(p).all(axis=1)]
  if not len(p):
    return np.ones(2)
  extent = float(np.ptp(p, axis=0).max()) if len(p) > 1 else 1.0
  return np.ceil(np.maximum(p.max(axis=0), 0) + 1 + extent)


# Old name, kept for callers.
contour_free_size = default_image_size

_EOS = {}


def _eos_fitter(directory):
  from native_eos_bindings import EosFitter  # the only import of the bindings' fitter
  key = str(directory)
  if key not in _EOS:
    _EOS[key] = EosFitter(directory)
  return _EOS[key]
