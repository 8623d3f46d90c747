"""A completion of the unstable landmarks learned from 2D training annotations.

The 3DMM reads the unstable points (ULs) off a fitted face mesh; on human-annotated 300-W faces
a regression from the stable points (SLs) to the ULs, fitted on a couple of thousand training
annotations, is a third more accurate (``docs/method.md``, "A completion learned from the
training annotations"). :class:`LearnedCompletion` is that regression, with the 3DMM kept for the
poses the training faces do not cover:

1. Orientation, as the pipeline does: a left-looking face is mirrored (the flip permutation), so
   its SLs come from the visible half; the ULs are predicted on the right-looking face and
   mirrored back. The SLs of the working face are mapped by a least-squares similarity onto a
   reference SL shape (generalized Procrustes of the training SLs, centred, unit RMS norm).
2. Regression in that frame: the flattened normalised SLs ``x`` (2K numbers) predict the
   normalised ULs ``y`` (2U numbers) by ridge regression plus a Gaussian-kernel ridge
   regression of its residuals::

     y = y_mean + (x - x_mean) W + k(z) A,   z = (x - x_mean) / feature_scale,
     k(z)_j = exp(-gamma |z - c_j|^2 / 2K)

   with centres ``c_j`` the training faces' ``z`` (a random subset of ``max_centers`` when there
   are more). The inverse similarity takes the ULs back to image pixels.
3. A pose switch: per |yaw| bin of the SLs' rigid-fit yaw (the estimate the test time has,
   :func:`jaxalign.morphable.pose.estimate_pose` on the working face's SLs), the learned ULs are
   used only where the training faces showed, out of fold, that they beat the 3DMM's, with at
   least ``min_bin_faces`` faces in the bin (``switch='cv'``, the default); elsewhere the
   3DMM's completed points are returned. 300-W has almost no face beyond 45 degrees, so a model
   fitted on it hands those poses to the 3DMM.

Everything is numpy float64 on the host; the model is a frozen dataclass of arrays that
round-trips exactly through :meth:`LearnedCompletion.to_dict` (JSON-able).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxalign import schemes as schemes_lib

FORMAT = 'jaxalign.learned_completion'
VERSION = 1

# Chosen by 5-fold cross-validation on the 2,012 shared 300-W training faces (docs/method.md):
# ridge of the linear part, ridge and width of the kernel part (absolute, in the normalised
# frame: SLs and ULs of a face with unit RMS SL norm; the kernel on features scaled to unit
# mean standard deviation, squared distance divided by the feature count).
DEFAULT_RIDGE = 0.1
DEFAULT_KERNEL_RIDGE = 3.0
DEFAULT_GAMMA = 1.0
# Beyond this many training faces the kernel uses a random subset as centres (Nystroem): the
# exact solve is O(N^3) and the stored model O(N) (2,000 faces: about 0.3 M numbers).
DEFAULT_MAX_CENTERS = 4096
# |yaw| bins of the pose switch (degrees, SL rigid-fit yaw; beyond 90 counts in the last bin).
DEFAULT_YAW_BINS = (0.0, 30.0, 45.0, 60.0, 75.0, 90.0)
# A bin needs this many training faces before the learned points are used there.
DEFAULT_MIN_BIN_FACES = 30
DEFAULT_FOLDS = 5
SWITCHES = ('cv', 'count', 'none')
_PROCRUSTES_ITERS = 5

_OPTIONS = {
    'ridge': DEFAULT_RIDGE, 'kernel_ridge': DEFAULT_KERNEL_RIDGE, 'gamma': DEFAULT_GAMMA,
    'kernel': True, 'max_centers': DEFAULT_MAX_CENTERS, 'yaw_bins': DEFAULT_YAW_BINS,
    'min_bin_faces': DEFAULT_MIN_BIN_FACES, 'switch': 'cv', 'folds': DEFAULT_FOLDS, 'seed': 0,
    'completed_3dmm': None, 'sl_noise': 0.0, 'noise_copies': 4,
}


# --- similarity helpers (float64, numpy) ----------------------------------------------------

def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """(N, 2, 3) least-squares similarities (no reflection) mapping src (N, K, 2) onto dst
  (K, 2) or (N, K, 2); all points finite. Umeyama's solution in 2D (the scaled rotations are
  linear, so the least squares is exact)."""
  src = np.asarray(src, np.float64)
  dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
  cs, cd = src.mean(1), dst.mean(1)
  p, q = src - cs[:, None], dst - cd[:, None]
  norm = (p ** 2).sum((1, 2))
  a = (p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1]).sum(1) / norm
  b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(1) / norm
  lin = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)
  t = cd - np.einsum('nij,nj->ni', lin, cs)
  return np.concatenate([lin, t[..., None]], -1)


def measure_sl_noise(predicted, truth, scheme=schemes_lib.IBUG68, flip=None) -> float:
  """The SL noise of a predictor, in the unit of ``fit``'s ``sl_noise``: the RMS per coordinate
  of predicted minus true SLs, after the least-squares similarity that best maps each face's
  predicted SLs onto its true ones (a shift, scale or rotation of the whole face moves the
  regression's frame with it and costs the completion nothing), over the true inter-ocular
  distance (the scheme's ``inter_ocular`` pair).

  Args:
    predicted, truth: (N, L, 2) landmarks in pixels (the scheme's order). Faces with a
      non-finite SL or no inter-ocular distance are left out.
    flip: optional (N,) bool, the pipeline's mirroring (a left-looking face's SLs are the
      mirrored set, as the pipeline predicts them).

  Raises:
    ValueError: mismatched shapes, or no usable face (naming ``predicted``).
  """
  scheme = schemes_lib.get_scheme(scheme)
  p, t = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
  if p.shape != t.shape or p.ndim != 3 or p.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'predicted: expected (N, {scheme.num_points}, 2) points matching truth, '
                     f'got {p.shape} and {t.shape}')
  stable = np.asarray(scheme.stable)
  idx = np.broadcast_to(stable, (len(p), len(stable)))
  if flip is not None:
    mirrored = scheme.flip_index_array()[stable]
    idx = np.where(np.asarray(flip, bool).reshape(-1, 1), mirrored[None], idx)
  ps = np.take_along_axis(p, idx[..., None], 1)
  ts = np.take_along_axis(t, idx[..., None], 1)
  a, b = scheme.inter_ocular
  io = np.linalg.norm(t[:, a] - t[:, b], axis=-1)
  ok = np.isfinite(ps).all((1, 2)) & np.isfinite(ts).all((1, 2)) & (io > 0)
  if not ok.any():
    raise ValueError(f'predicted: no face with finite SLs and an inter-ocular distance '
                     f'(of {len(p)})')
  ps, ts = ps[ok], ts[ok]
  m = similarity(ps, ts)
  aligned = np.einsum('nij,nkj->nki', m[..., :2], ps) + m[:, None, :, 2]
  return float(np.sqrt(np.mean(((aligned - ts) / io[ok][:, None, None]) ** 2)))


def _procrustes_reference(sl: np.ndarray) -> np.ndarray:
  """(K, 2) generalized-Procrustes mean of (N, K, 2) SL shapes, centred, unit RMS norm."""
  from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
  ref = statistical._normalise(sl[0])  # pylint: disable=protected-access
  for _ in range(_PROCRUSTES_ITERS):
    ref = statistical._normalise(  # pylint: disable=protected-access
        statistical._apply(similarity(sl, ref), sl).mean(0))  # pylint: disable=protected-access
  return ref


def _mirror(points: np.ndarray, scheme) -> np.ndarray:
  from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
  return statistical._mirror(points, scheme)  # pylint: disable=protected-access


def _orient(points, scheme, flip):
  """(right-looking copies, flipped (N,) bool); ``flip`` None: the pipeline's one decision,
  :func:`jaxalign.morphable.pose.flip_from_points` (rigid fit of the mean face)."""
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  n = len(points)
  if flip is None:
    flipped = pose.flip_from_points(points.astype(np.float32), scheme) if n else np.zeros(0, bool)
  else:
    flipped = np.broadcast_to(np.asarray(flip, bool), (n,)).copy()
  return np.where(flipped[:, None, None], _mirror(points, scheme), points), flipped


def _sl_yaw(work: np.ndarray, scheme) -> np.ndarray:
  """(N,) rigid-fit yaw (degrees) of the right-looking faces' SLs alone (NaN: too few)."""
  from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
  if not len(work):
    return np.zeros(0)
  return statistical._sl_yaw(work, scheme)  # pylint: disable=protected-access


def _bin_index(yaw: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """(N,) |yaw| bin; beyond the last edge (or NaN) counts in the last bin."""
  a = np.abs(np.nan_to_num(np.asarray(yaw, np.float64), nan=np.inf))
  return np.clip(np.searchsorted(edges, a, side='right') - 1, 0, len(edges) - 2)


def _kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
  d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2.0 * a @ b.T
  return np.exp(-gamma * np.maximum(d2, 0.0) / a.shape[1])


def completed_errors(pred, gt, kept) -> dict[str, np.ndarray]:
  """{'all', 'inner', 'jaw'}: (N,) inter-ocular NME of the completed points (not ``kept``,
  (N, L) bool), all of them, the non-jaw and the jaw ones (iBUG-68 0-16; for another scheme
  'jaw' is NaN and 'inner' = 'all'). A face with a non-finite completed point gets NaN."""
  from jaxalign import metrics  # pylint: disable=g-import-not-at-top
  n = len(gt)
  io = metrics.normalizer(gt) if n else np.zeros(0)
  e = np.linalg.norm(np.asarray(pred, np.float64) - gt, axis=-1) / io[:, None]
  jaw = np.zeros(gt.shape[1], bool)
  if gt.shape[1] == 68:
    jaw[:17] = True
  out = {}
  for k, m in (('all', ~kept), ('inner', ~kept & ~jaw), ('jaw', ~kept & jaw)):
    cnt = m.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'):
      out[k] = np.where(cnt > 0, np.where(m, e, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)
  return out


def _as_points(points, num_points: int, name: str) -> tuple[np.ndarray, bool]:
  pts = np.asarray(points, np.float64)
  single = pts.ndim == 2
  if single:
    pts = pts[None]
  if pts.ndim != 3 or pts.shape[1:] != (num_points, 2):
    raise ValueError(f'{name} must be (N, {num_points}, 2) or ({num_points}, 2), got '
                     f'{np.shape(points)}')
  return pts, single


# --- the model ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LearnedCompletion:
  """SL -> UL regression in a similarity-normalised frame, with a 3DMM switch by pose.

  Attributes (float64 arrays unless said; K stable and U unstable points):
    scheme: the landmark scheme's name; stable: (K,) int the SL indices it was fitted with.
    reference: (K, 2) the reference SL shape (centred, unit RMS norm).
    x_mean: (2K,) mean normalised SLs; y_mean: (2U,) mean normalised ULs.
    weights: (2K, 2U) the linear part.
    feature_scale: scalar, the kernel features' scale; gamma: the kernel width.
    centers: (M, 2K) kernel centres (scaled features); alphas: (M, 2U) their coefficients
      (M = 0: linear only).
    yaw_bins: (B + 1,) |yaw| bin edges in degrees; use_learned: (B,) bool per bin, False:
      return the 3DMM's points there.
    num_faces: training faces used; num_skipped: rows skipped (not finite, or no SL yaw).
    options: the fit's options (JSON-able); cv: the fit's out-of-fold report (per bin counts
      and NME of the learned model and the 3DMM; overall all / non-jaw / jaw) or {}.
  """

  scheme: str
  stable: np.ndarray
  reference: np.ndarray
  x_mean: np.ndarray
  y_mean: np.ndarray
  weights: np.ndarray
  feature_scale: float
  gamma: float
  centers: np.ndarray
  alphas: np.ndarray
  yaw_bins: np.ndarray
  use_learned: np.ndarray
  num_faces: int
  num_skipped: int
  options: dict = dataclasses.field(default_factory=dict)
  cv: dict = dataclasses.field(default_factory=dict)

  # -- fitting --------------------------------------------------------------------------------

  @classmethod
  def fit(cls, shapes, scheme=schemes_lib.IBUG68, *, yaw=None, **options) -> 'LearnedCompletion':
    """Fits the completion to training shapes.

    Args:
      shapes: (N, L, 2) image pixels, every point annotated. Rows with a non-finite point are
        skipped and counted (``num_skipped``).
      scheme: the landmark scheme (its ``stable`` set is what the model conditions on).
      yaw: optional (N,) degrees (eos sign, > 0 right-looking), e.g. a synthetic face's true
        yaw: it decides which faces are mirrored for training (its sign). Without it the flip
        is the pipeline's rigid-fit decision. The pose switch always bins by the SLs' rigid-fit
        yaw, the value the test time has.
      **options: ``ridge`` (default :data:`DEFAULT_RIDGE`), ``kernel_ridge``
        (:data:`DEFAULT_KERNEL_RIDGE`), ``gamma`` (:data:`DEFAULT_GAMMA`), ``kernel`` (True;
        False = linear ridge only), ``max_centers``, ``yaw_bins``, ``min_bin_faces``,
        ``switch`` ('cv': per bin, the learned points where they beat the 3DMM out of fold on
        these faces with at least ``min_bin_faces`` faces, which needs the 3DMM: given as
        ``completed_3dmm`` or run with the JAX backend; 'count': wherever the bin has
        ``min_bin_faces`` faces; 'none': everywhere, no 3DMM ever), ``folds`` (5), ``seed``
        (0), ``completed_3dmm`` ((N, L, 2) the 3DMM completion of ``shapes`` from their SLs,
        for ``switch='cv'``), ``sl_noise`` (0: off; > 0: the regression is fitted on
        ``noise_copies`` (4) copies of every face whose SLs carry Gaussian noise of this
        standard deviation per coordinate, as a fraction of the inter-ocular distance, so it
        expects SLs as noisy as that, e.g. a CNN's; the switch still compares on clean SLs).

    Raises:
      ValueError: wrong shapes, unknown or bad options, no usable face (naming ``shapes``).
    """
    scheme = schemes_lib.get_scheme(scheme)
    opts = _check_options(options)
    x, _ = _as_points(shapes, scheme.num_points, 'shapes')
    if x.shape[0] == 0 or x.ndim != 3:
      raise ValueError('shapes: empty training set (no face)')
    n_given = len(x)
    if yaw is not None:
      yaw = np.asarray(yaw, np.float64).reshape(-1)
      if yaw.shape != (n_given,):
        raise ValueError(f'yaw must be (N,) = ({n_given},), got {np.shape(yaw)}')
    c3 = opts.pop('completed_3dmm')
    if c3 is not None:
      c3, _ = _as_points(c3, scheme.num_points, 'completed_3dmm')
      if len(c3) != n_given:
        raise ValueError(f'completed_3dmm must have one face per shape ({n_given}), got '
                         f'{len(c3)}')
    good = np.isfinite(x).all(axis=(1, 2))
    if yaw is not None:
      good &= np.isfinite(yaw)
    x = x[good]
    if not len(x):
      raise ValueError(f'shapes: no usable training face ({n_given} given, all with '
                       f'non-finite points{" or yaw" if yaw is not None else ""})')
    flip = None if yaw is None else yaw[good] < 0
    work, flipped = _orient(x, scheme, flip)
    stable = np.asarray(scheme.stable)
    edges = np.asarray(opts['yaw_bins'], np.float64)
    # The pose of the SLs alone (the switch's input at test time); 'none' needs no pose.
    sl_yaw = _sl_yaw(work, scheme) if opts['switch'] != 'none' else np.zeros(len(work))
    bins = _bin_index(sl_yaw, edges)
    counts = np.bincount(bins, minlength=len(edges) - 1)
    enough = counts >= opts['min_bin_faces']
    core = _fit_core(work, stable, opts, scheme.inter_ocular)
    cv = {}
    if opts['switch'] == 'none':
      use = np.ones(len(edges) - 1, bool)
    elif opts['switch'] == 'count':
      use = enough
    else:
      # Out of fold: the learned model on each fold, fitted on the others, against the 3DMM.
      oof = _out_of_fold(work, stable, opts, scheme.inter_ocular)
      oof = np.where(flipped[:, None, None], _mirror(oof, scheme), oof)
      if c3 is None:
        from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
        c3 = completion.complete(x.astype(np.float32), scheme, backend='jax',
                                 flip=flipped).points
      else:
        c3 = c3[good]
      c3 = np.asarray(c3, np.float64)
      kept = np.where(flipped[:, None], scheme.stable_mask()[scheme.flip_index_array()][None],
                      scheme.stable_mask()[None])
      e_l, e_3 = completed_errors(oof, x, kept), completed_errors(c3, x, kept)
      per_bin = []
      use = np.zeros(len(edges) - 1, bool)
      for b in range(len(edges) - 1):
        s = bins == b
        row = {'bin': [float(edges[b]), float(edges[b + 1])], 'faces': int(s.sum())}
        for name, e in (('learned', e_l), ('3dmm', e_3)):
          row[name] = {k: (float(np.nanmean(v[s])) if s.any() else None) for k, v in e.items()}
        use[b] = bool(enough[b] and row['learned']['all'] <= row['3dmm']['all'])
        row['use_learned'] = bool(use[b])
        per_bin.append(row)
      cv = {'folds': int(opts['folds']), 'seed': int(opts['seed']), 'bins': per_bin,
            'learned': {k: float(np.nanmean(v)) for k, v in e_l.items()},
            '3dmm': {k: float(np.nanmean(v)) for k, v in e_3.items()}}
      switched = np.where(use[bins][:, None, None], oof, c3)
      cv['switched'] = {k: float(np.nanmean(v))
                        for k, v in completed_errors(switched, x, kept).items()}
    opts['yaw_bins'] = [float(e) for e in edges]
    return cls(scheme=scheme.name, stable=stable.astype(np.int64), **core,
               yaw_bins=edges, use_learned=np.asarray(use, bool), num_faces=int(len(x)),
               num_skipped=int(n_given - len(x)), options=opts, cv=cv)

  # -- completion -----------------------------------------------------------------------------

  def complete(self, points, flip=None, *, completed_3dmm=None) -> np.ndarray:
    """Completes the ULs of faces from their SLs.

    Args:
      points: (N, L, 2) or (L, 2) image pixels holding at least the SLs (for a left-looking
        face, the mirror set, as :func:`jaxalign.morphable.completion.complete`); other
        points are ignored and may be NaN.
      flip: None = mirror left-looking faces (the pipeline's decision,
        :func:`jaxalign.morphable.pose.flip_from_points` of the given points), or an (N,) /
        scalar bool forcing it.
      completed_3dmm: optional (N, L, 2) the 3DMM completion of the same faces (same frame,
        same flip). Used only for faces whose SL |yaw| bin the model hands to the 3DMM
        (``use_learned`` False). Not required: where such faces exist and it is not given,
        the JAX 3DMM backend (:func:`jaxalign.morphable.completion.complete`, its defaults)
        completes them. Pass the pipeline's own 3DMM completion to switch to that instead.

    Returns:
      (N, L, 2) float32 (or (L, 2)): the kept points (the SLs in the face's own frame) bit for
      bit as given, the others completed; NaN ULs where an SL is not finite.
    """
    scheme = schemes_lib.get_scheme(self.scheme)
    if not np.array_equal(np.asarray(scheme.stable), self.stable):
      scheme = scheme.with_stable(self.stable.tolist())
    pts, single = _as_points(points, scheme.num_points, 'points')
    n = len(pts)
    stable_mask = scheme.stable_mask()
    work, flipped = _orient(pts, scheme, flip)
    work = np.where(stable_mask[None, :, None], work, np.nan)
    ok = np.isfinite(work[:, self.stable]).all(axis=(1, 2))
    yaw = np.full(n, np.nan)
    if ok.any() and not self.use_learned.all():      # the switch needs the pose
      yaw[ok] = _sl_yaw(work[ok], scheme)
    learned = self.use_learned[_bin_index(yaw, self.yaw_bins)] & ok
    completed = np.where(stable_mask[None, :, None], work, np.nan)
    if learned.any():
      completed[learned] = self._predict(work[learned])
    out = np.where(flipped[:, None, None], _mirror(completed, scheme), completed)
    need = ok & ~learned
    if need.any():
      if completed_3dmm is None:
        from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
        c3 = np.full_like(out, np.nan)
        c3[need] = completion.complete(pts[need].astype(np.float32), scheme, backend='jax',
                                       flip=flipped[need]).points
      else:
        c3, _ = _as_points(completed_3dmm, scheme.num_points, 'completed_3dmm')
        if len(c3) != n:
          raise ValueError(f'completed_3dmm must be like points ({n} faces), got {len(c3)}')
      out[need] = c3[need]
    kept = np.where(flipped[:, None], stable_mask[scheme.flip_index_array()][None],
                    stable_mask[None])
    # The kept points pass through as given (bit for bit for float32 input).
    out = np.where(kept[..., None], pts, out).astype(np.float32)
    return out[0] if single else out

  def _predict(self, work: np.ndarray) -> np.ndarray:
    """(N, L, 2) right-looking faces with their ULs predicted (finite SLs required)."""
    sl = work[:, self.stable]
    m = similarity(sl, self.reference)
    from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
    x = statistical._apply(m, sl).reshape(len(sl), -1)  # pylint: disable=protected-access
    xc = x - self.x_mean
    y = self.y_mean + xc @ self.weights
    if len(self.centers):
      y = y + _kernel(xc / self.feature_scale, self.centers, self.gamma) @ self.alphas
    unstable = np.setdiff1d(np.arange(work.shape[1]), self.stable)
    full = np.zeros(work.shape)
    full[:, self.stable] = statistical._apply(m, sl)  # pylint: disable=protected-access
    full[:, unstable] = y.reshape(len(sl), -1, 2)
    out = statistical._apply(statistical._invert(m), full)  # pylint: disable=protected-access
    out[:, self.stable] = sl
    return out

  # -- serialisation --------------------------------------------------------------------------

  def to_dict(self) -> dict:
    """A JSON-able dict (lists of Python floats: ``json`` writes them exactly)."""
    out: dict[str, Any] = {'format': FORMAT, 'version': VERSION}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, np.ndarray):
        v = v.tolist()
      elif isinstance(v, (np.floating, np.integer)):
        v = v.item()
      out[f.name] = v
    return out

  @classmethod
  def from_dict(cls, d: dict) -> 'LearnedCompletion':
    """The model of :meth:`to_dict`.

    Raises:
      ValueError: not a learned-completion dict, another version, or inconsistent arrays.
    """
    if not isinstance(d, dict) or d.get('format') != FORMAT:
      raise ValueError(f'not a learned completion (format {FORMAT!r} expected)')
    if d.get('version') != VERSION:
      raise ValueError(f'learned completion version {d.get("version")!r}; this code reads '
                       f'{VERSION}')
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [k for k in names if k not in d]
    if missing:
      raise ValueError(f'learned completion dict lacks {missing}')
    arrays = {'stable': np.int64, 'use_learned': bool}
    kw = {}
    for k in names:
      v = d[k]
      if k in ('scheme',):
        kw[k] = str(v)
      elif k in ('options', 'cv'):
        kw[k] = dict(v)
      elif k in ('num_faces', 'num_skipped'):
        kw[k] = int(v)
      elif k in ('feature_scale', 'gamma'):
        kw[k] = float(v)
      else:
        kw[k] = np.asarray(v, arrays.get(k, np.float64))
    k2 = 2 * len(kw['stable'])
    for k, shape in (('reference', (k2 // 2, 2)), ('x_mean', (k2,))):
      if kw[k].shape != shape:
        raise ValueError(f'learned completion: {k} must be {shape}, got {kw[k].shape}')
    if kw['centers'].size == 0:
      kw['centers'] = kw['centers'].reshape(0, k2)
      kw['alphas'] = kw['alphas'].reshape(0, kw['y_mean'].shape[0])
    if (kw['weights'].shape != (k2, kw['y_mean'].shape[0])
        or kw['centers'].shape[1:] != (k2,) or len(kw['alphas']) != len(kw['centers'])
        or len(kw['use_learned']) != len(kw['yaw_bins']) - 1):
      raise ValueError('learned completion: inconsistent array shapes')
    return cls(**kw)


def _check_options(options: dict) -> dict:
  unknown = sorted(set(options) - set(_OPTIONS))
  if unknown:
    raise ValueError(f'unknown learned-completion option(s) {unknown}; known: {sorted(_OPTIONS)}')
  opts = {**_OPTIONS, **options}
  for k in ('ridge', 'kernel_ridge', 'gamma'):
    v = opts[k]
    if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
      raise ValueError(f'{k} must be a positive number, got {v!r}')
    opts[k] = float(v)
  v = opts['sl_noise']
  if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
    raise ValueError(f'sl_noise must be a number >= 0, got {v!r}')
  opts['sl_noise'] = float(v)
  for k, lo in (('max_centers', 1), ('min_bin_faces', 0), ('folds', 2), ('noise_copies', 1)):
    v = opts[k]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
      raise ValueError(f'{k} must be an integer >= {lo}, got {v!r}')
    opts[k] = int(v)
  opts['seed'] = int(opts['seed'])
  opts['kernel'] = bool(opts['kernel'])
  if opts['switch'] not in SWITCHES:
    raise ValueError(f'switch must be one of {SWITCHES}, got {opts["switch"]!r}')
  edges = np.asarray(opts['yaw_bins'], np.float64)
  if edges.ndim != 1 or len(edges) < 2 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
    raise ValueError(f'yaw_bins must be increasing edges from 0, got {opts["yaw_bins"]!r}')
  return opts


def _fit_core(work: np.ndarray, stable: np.ndarray, opts: dict, eyes=(36, 45)) -> dict:
  """The regression's arrays from right-looking training faces (N, L, 2); ``eyes``: the
  inter-ocular pair (the unit of ``sl_noise``)."""
  from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
  unstable = np.setdiff1d(np.arange(work.shape[1]), stable)
  reference = _procrustes_reference(work[:, stable])

  def frame(w):
    """(x, y): the flattened SLs and ULs in the frame of each face's (given) SLs."""
    a = statistical._apply(  # pylint: disable=protected-access
        similarity(w[:, stable], reference), w)
    return a[:, stable].reshape(len(a), -1), a[:, unstable].reshape(len(a), -1)

  x, y = frame(work)
  xs, ys = x, y                       # the regression's samples
  if opts['sl_noise'] > 0:
    # Noisy copies of every face's SLs (its true ULs, in the frame the noisy SLs give them):
    # the regression then predicts what a noisy input implies, not what a clean one would.
    rng = np.random.default_rng(opts['seed'] + 1)
    noisy = np.repeat(work, opts['noise_copies'], 0)
    io = np.linalg.norm(noisy[:, eyes[0]] - noisy[:, eyes[1]], axis=-1)
    noisy[:, stable] += rng.standard_normal((len(noisy), len(stable), 2)) * (
        opts['sl_noise'] * io)[:, None, None]
    xs, ys = frame(noisy)
  x_mean, y_mean = xs.mean(0), ys.mean(0)
  xc, yc = xs - x_mean, ys - y_mean
  weights = np.linalg.solve(xc.T @ xc + opts['ridge'] * np.eye(x.shape[1]), xc.T @ yc)
  scale = float((x - x_mean).std(0).mean()) or 1.0
  centers = np.zeros((0, x.shape[1]))
  alphas = np.zeros((0, y.shape[1]))
  if opts['kernel'] and len(x) > 1:
    z, zs = (x - x_mean) / scale, xc / scale
    resid = yc - xc @ weights
    if len(z) <= opts['max_centers'] and xs is x:
      centers = z
      alphas = np.linalg.solve(_kernel(z, z, opts['gamma'])
                               + opts['kernel_ridge'] * np.eye(len(z)), resid)
    else:
      # Centres: the clean faces (a random subset beyond max_centers); samples: all rows.
      centers = z
      if len(z) > opts['max_centers']:
        rng = np.random.default_rng(opts['seed'])
        centers = z[np.sort(rng.choice(len(z), opts['max_centers'], replace=False))]
      knm, kmm = _kernel(zs, centers, opts['gamma']), _kernel(centers, centers, opts['gamma'])
      alphas = np.linalg.lstsq(knm.T @ knm + opts['kernel_ridge'] * kmm, knm.T @ resid,
                               rcond=None)[0]
  return dict(reference=reference, x_mean=x_mean, y_mean=y_mean, weights=weights,
              feature_scale=scale, gamma=opts['gamma'], centers=centers, alphas=alphas)


def _out_of_fold(work: np.ndarray, stable: np.ndarray, opts: dict,
                 eyes=(36, 45)) -> np.ndarray:
  """(N, L, 2) right-looking faces completed by models fitted without their fold."""
  n = len(work)
  k = min(opts['folds'], n)
  out = np.full(work.shape, np.nan)
  if k < 2:
    return out
  order = np.random.default_rng(opts['seed']).permutation(n)
  for f in range(k):
    test = np.sort(order[f::k])
    train = np.setdiff1d(np.arange(n), test)
    if len(train) < 2:
      continue
    core = _fit_core(work[train], stable, opts, eyes)
    model = LearnedCompletion(
        scheme='', stable=stable, **core, yaw_bins=np.asarray([0.0, 90.0]),
        use_learned=np.ones(1, bool), num_faces=len(train), num_skipped=0)
    out[test] = model._predict(work[test])  # pylint: disable=protected-access
  return out


def fit_from_records(records, scheme=schemes_lib.IBUG68, **options) -> LearnedCompletion:
  """:meth:`LearnedCompletion.fit` on :class:`jaxalign.data.records.FaceRecord` s: their
  points (records of another scheme or point count are skipped and counted in
  ``num_skipped``), and their yaw when every record knows it (synthetic faces).

  Raises:
    ValueError: no record (naming ``records``), or as :meth:`LearnedCompletion.fit`.
  """
  scheme = schemes_lib.get_scheme(scheme)
  records = list(records)
  if not records:
    raise ValueError('records: empty training set (no face record)')
  pts, yaws, skipped = [], [], 0
  for r in records:
    p = np.asarray(r.points, np.float64)
    if getattr(r, 'scheme', scheme.name) != scheme.name or p.shape != (scheme.num_points, 2):
      skipped += 1
      continue
    pts.append(p)
    yaws.append(r.yaw)
  if not pts:
    raise ValueError(f'records: no {scheme.name} face among {len(records)} records')
  yaw = None if any(y is None for y in yaws) else np.asarray(yaws, np.float64)
  model = LearnedCompletion.fit(np.stack(pts), scheme, yaw=yaw, **options)
  return dataclasses.replace(model, num_skipped=model.num_skipped + skipped)
