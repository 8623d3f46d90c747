"""Evaluation metrics: NME (inter-ocular, inter-pupil, box), failure rate, CED, AUC, NME by pose.

Host-side numpy in float64 (evaluation runs on the host after the device has predicted); inputs may
be numpy or jax arrays. All errors are fractions of the normaliser (multiply by 100 for the %
numbers of papers).

Definitions (see ``docs/method.md``):
  * Point error: Euclidean distance between predicted and ground-truth point, pixels.
  * NME of one face: mean point error over the evaluated points, divided by the normaliser.
    Ground-truth points that are NaN (occluded or not annotated) are left out of the mean. A
    non-finite prediction at an evaluated point makes that face's NME ``inf`` (a failure). A face
    with no evaluated point or an undefined normaliser gets NaN, and NaN faces are left out of
    the failure rate, the CED and the AUC (the summaries report how many faces they used).
  * Normalisers: 'inter_ocular' = distance between the outer eye corners (iBUG 36 and 45);
    'inter_pupil' = distance between the eye centres (means of 36-41 and 42-47); 'bbox' =
    sqrt(width * height) of the ground-truth landmarks' tight box, or of ``boxes`` when given.
  * Failure rate at threshold t: fraction of faces with NME > t.
  * CED(t): fraction of faces with NME <= t.
  * AUC at threshold T: (1 / T) * integral_0^T CED(t) dt, computed exactly for the step-function
    CED: mean over faces of max(0, 1 - NME / T).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from jaxalign import schemes as schemes_lib

NORMALIZATIONS = ('inter_ocular', 'inter_pupil', 'bbox')


def _points(x, name) -> np.ndarray:
  arr = np.asarray(x, np.float64)
  if arr.ndim == 2:
    arr = arr[None]
  if arr.ndim != 3 or arr.shape[-1] != 2:
    raise ValueError(f'{name} must have shape (N, L, 2) or (L, 2), got {arr.shape}')
  return arr


def normalizer(gt, normalization: str = 'inter_ocular',
               scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68, boxes=None) -> np.ndarray:
  """The per-face normalising distance in pixels, (N,) float64 (NaN where undefined)."""
  gt = _points(gt, 'gt')
  if normalization == 'inter_ocular':
    a, b = scheme.inter_ocular
    return np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
  if normalization == 'inter_pupil':
    left = gt[:, list(scheme.pupils[0])].mean(1)
    right = gt[:, list(scheme.pupils[1])].mean(1)
    return np.linalg.norm(left - right, axis=-1)
  if normalization == 'bbox':
    if boxes is None:
      # An all-NaN face gets a NaN normaliser; silence numpy's all-NaN-slice warning.
      with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        lo = np.nanmin(gt, 1)
        hi = np.nanmax(gt, 1)
    else:
      boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
      if boxes.shape[0] not in (1, gt.shape[0]):
        raise ValueError(f'boxes must have shape (N, 4) with N = {gt.shape[0]}, got '
                         f'{boxes.shape}')
      lo, hi = boxes[:, :2], boxes[:, 2:]
    wh = hi - lo
    return np.sqrt(wh[:, 0] * wh[:, 1])
  raise ValueError(f'unknown normalization {normalization!r}; known: {NORMALIZATIONS}')


def point_errors(pred, gt) -> np.ndarray:
  """(N, L) Euclidean point errors in pixels; NaN where the ground truth is NaN, inf where the
  ground truth is finite but the prediction is not."""
  pred = _points(pred, 'pred')
  gt = _points(gt, 'gt')
  if pred.shape != gt.shape:
    raise ValueError(f'pred and gt must have the same shape, got {pred.shape} and {gt.shape}')
  err = np.linalg.norm(pred - gt, axis=-1)
  gt_ok = np.isfinite(gt).all(-1)
  pred_ok = np.isfinite(pred).all(-1)
  return np.where(gt_ok, np.where(pred_ok, err, np.inf), np.nan)


def nme(pred, gt, normalization: str = 'inter_ocular',
        scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68, boxes=None,
        indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
  """Per-face normalised mean error as a fraction, (N,) float64.

  Args:
    pred: (N, L, 2) or (L, 2) predicted points, pixels.
    gt: the same shape, ground truth; NaN points are not evaluated (the normaliser is always
      taken from the full ground truth).
    normalization: 'inter_ocular', 'inter_pupil' or 'bbox'.
    scheme: the landmark scheme (its normaliser points).
    boxes: (N, 4) (x0, y0, x1, y1) face boxes for 'bbox' (default: the gt landmarks' box).
    indices: evaluate only these points: a list shared by every face (e.g. ``scheme.stable``),
      or an (N, L) bool mask per face (e.g. :func:`stable_mask_by_direction`); default all.
  """
  pred = _points(pred, 'pred')
  gt = _points(gt, 'gt')
  if pred.shape[-2] != scheme.num_points:
    raise ValueError(f'expected {scheme.num_points} points for scheme {scheme.name}, got '
                     f'{pred.shape[-2]}')
  norm = normalizer(gt, normalization, scheme, boxes)
  err = point_errors(pred, gt)
  if indices is not None and np.asarray(indices).dtype == bool:
    mask = np.broadcast_to(np.asarray(indices, bool), err.shape)
    err = np.where(mask, err, np.nan)
  elif indices is not None:
    err = err[:, list(indices)]
  evaluated = ~np.isnan(err)
  count = evaluated.sum(1)
  total = np.where(evaluated, err, 0.0).sum(1)
  with np.errstate(divide='ignore', invalid='ignore'):
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    out = mean / norm
  out = np.where(np.isfinite(norm) & (norm > 0), out, np.nan)
  return out


def stable_mask_by_direction(left_looking, scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68
                             ) -> np.ndarray:
  """(N, L) bool: each face's stable points for its looking direction: ``scheme.stable``, or
  its mirror set ``flip_permutation[stable]`` for a left-looking face (the points CNN2
  predicts once the face is mirrored)."""
  left = np.asarray(left_looking, bool).reshape(-1)
  plain = scheme.stable_mask().astype(bool)
  mirror = np.zeros_like(plain)
  mirror[scheme.flip_index_array()[np.asarray(scheme.stable)]] = True
  return np.where(left[:, None], mirror[None], plain[None])


def _evaluable(nmes) -> np.ndarray:
  e = np.asarray(nmes, np.float64).reshape(-1)
  return e[~np.isnan(e)]


def failure_rate(nmes, threshold: float = 0.08) -> float:
  """Fraction of faces with NME > threshold (NaN faces left out; NaN if none is left)."""
  e = _evaluable(nmes)
  return float(np.mean(e > threshold)) if e.size else float('nan')


def ced(nmes, max_threshold: float = 0.08, num: int = 161, thresholds=None
        ) -> tuple[np.ndarray, np.ndarray]:
  """The cumulative error distribution: fraction of faces with NME <= t at each threshold.

  Args:
    nmes: (N,) NMEs (fractions); NaN faces are left out.
    max_threshold: the curve spans [0, max_threshold] ...
    num: ... in ``num`` evenly spaced thresholds,
    thresholds: ... unless explicit thresholds are given.

  Returns:
    (thresholds, fractions), both (T,) float64.
  """
  t = (np.linspace(0.0, max_threshold, num) if thresholds is None
       else np.asarray(thresholds, np.float64).reshape(-1))
  e = np.sort(_evaluable(nmes))
  if not e.size:
    return t, np.full_like(t, np.nan)
  return t, np.searchsorted(e, t, side='right') / e.size


def auc(nmes, threshold: float = 0.08) -> float:
  """Area under the CED from 0 to ``threshold`` divided by ``threshold`` (in [0, 1]).

  Exact for the empirical (step) CED: ``mean(max(0, 1 - nme / threshold))``.
  """
  if threshold <= 0:
    raise ValueError(f'AUC threshold must be positive, got {threshold}')
  e = _evaluable(nmes)
  if not e.size:
    return float('nan')
  return float(np.mean(np.clip(1.0 - e / threshold, 0.0, None)))


def nme_by_pose(nmes, yaws, bins: Sequence[float] = (0.0, 30.0, 60.0, 90.0),
                absolute: bool = True) -> list[dict]:
  """Mean NME per yaw bin.

  Args:
    nmes: (N,) NMEs.
    yaws: (N,) yaw in degrees (eos sign); faces with NaN yaw or NaN NME are left out.
    bins: increasing bin edges; bin k is [bins[k], bins[k+1]), the last one closed.
    absolute: bin |yaw| (the usual [0, 30), [30, 60), [60, 90] breakdown) instead of yaw.

  Returns:
    One dict per bin: {'yaw_min', 'yaw_max', 'count', 'nme'} (nme NaN for an empty bin).
  """
  e = np.asarray(nmes, np.float64).reshape(-1)
  y = np.asarray(yaws, np.float64).reshape(-1)
  if e.shape != y.shape:
    raise ValueError(f'nmes and yaws must have the same length, got {e.shape} and {y.shape}')
  edges = np.asarray(bins, np.float64)
  if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
    raise ValueError(f'bins must be at least two increasing edges, got {bins}')
  if absolute:
    y = np.abs(y)
  ok = ~np.isnan(e) & ~np.isnan(y)
  out = []
  for k in range(edges.size - 1):
    lo, hi = edges[k], edges[k + 1]
    upper = (y <= hi) if k == edges.size - 2 else (y < hi)
    sel = ok & (y >= lo) & upper
    n = int(sel.sum())
    out.append({'yaw_min': float(lo), 'yaw_max': float(hi), 'count': n,
                'nme': float(e[sel].mean()) if n else float('nan')})
  return out
