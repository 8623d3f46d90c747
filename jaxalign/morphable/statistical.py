"""A 2D statistical completion of the unstable landmarks: the 3DMM stage's simplest rival.

Instead of fitting a 3D model to the stable landmarks (SLs), :class:`GaussianShapeModel` learns
the joint distribution of all 2D points from training shapes and predicts the unstable ones
(ULs) as their conditional mean given the SLs:

1. every training shape is mirrored to right-looking (as the pipeline flips faces), its SLs
   are aligned by a similarity to the mean SL shape (generalized Procrustes on the SLs), and the
   same similarity is applied to all its points;
2. the aligned shapes are split into pose bins by the yaw that
   :func:`jaxalign.morphable.pose.estimate_pose` reads off the SLs alone (quantile bin edges, so
   each bin holds as many faces), and a Gaussian (mean, covariance) of the flattened shape is fitted
   per bin;
3. a new face's SLs are aligned the same way, its bin is chosen by the same yaw estimate, and
   ``x_U = mu_U + S_US (S_SS + ridge I)^-1 (x_S - mu_S)``; the inverse similarity takes the ULs
   back to image pixels.

:func:`complete` has the call shape of :func:`jaxalign.morphable.completion.complete` and
returns its :class:`~jaxalign.morphable.completion.CompletionResult` (no 3D pose: yaw, pitch and
roll are NaN, no coefficients), so the evaluation can use it as the backend ``'gaussian'``.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxalign import schemes as schemes_lib

DEFAULT_BINS = 3
# Ridge added to the SL covariance, relative to its mean diagonal: keeps the solve stable when
# a bin holds few faces (136 dimensions).
DEFAULT_RIDGE = 1e-3


@dataclasses.dataclass(frozen=True)
class GaussianShapeModel:
  """Per-pose-bin Gaussians of similarity-aligned, right-looking 2D shapes.

  Attributes:
    stable: (K,) int the SL indices the model conditions on.
    reference: (K, 2) float64 mean SL shape (centred, unit RMS norm) every shape is aligned to.
    edges: (B - 1,) float64 inner bin edges over the SL yaw estimate (degrees).
    means: (B, L, 2) float64 per-bin mean aligned shape.
    covariances: (B, 2L, 2L) float64 per-bin covariance of the flattened aligned shape.
    counts: (B,) int training shapes per bin.
    ridge: relative ridge on the SL block.
  """

  stable: np.ndarray
  reference: np.ndarray
  edges: np.ndarray
  means: np.ndarray
  covariances: np.ndarray
  counts: np.ndarray
  ridge: float = DEFAULT_RIDGE

  @property
  def num_bins(self) -> int:
    return len(self.means)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model to an ``.npz`` file."""
    np.savez(path, **{f.name: np.asarray(getattr(self, f.name))
                      for f in dataclasses.fields(self)})

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'GaussianShapeModel':
    """Reads a model written by :meth:`save`."""
    with np.load(path) as z:
      fields = {f.name: z[f.name] for f in dataclasses.fields(cls)}
    fields['ridge'] = float(fields['ridge'])
    return cls(**fields)


def _mirror(points: np.ndarray, scheme) -> np.ndarray:
  """Mirrors about x = 0 (the model is similarity invariant, so the axis does not matter)."""
  out = points[:, scheme.flip_index_array()].copy()
  out[..., 0] = -out[..., 0]
  return out


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """(N, 2, 3) least-squares similarities src (N, K, 2) -> dst (K, 2) (NaN points ignored)."""
  from jaxalign import geometry  # pylint: disable=g-import-not-at-top
  return np.asarray(geometry.estimate_similarity(
      src.astype(np.float32), np.broadcast_to(dst, src.shape).astype(np.float32)), np.float64)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  return np.einsum('nij,nlj->nli', matrix[:, :, :2], points) + matrix[:, None, :, 2]


def _invert(matrix: np.ndarray) -> np.ndarray:
  lin = np.linalg.inv(matrix[:, :, :2])
  return np.concatenate([lin, -np.einsum('nij,nj->ni', lin, matrix[:, :, 2])[..., None]], -1)


def _normalise(shape: np.ndarray) -> np.ndarray:
  c = shape - shape.mean(0)
  return c / np.sqrt((c ** 2).sum(1).mean())


def _sl_yaw(points: np.ndarray, scheme) -> np.ndarray:
  """(N,) yaw estimate in degrees from the SLs alone (the rest NaN).

  The rigid mean-face fit of :mod:`jaxalign.morphable.pose`: the 2D nose-ratio estimate
  (``jaxalign.geometry.estimate_yaw``) wraps around near profile, which put profile faces in the
  frontal bin.
  """
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  sl = np.full_like(points, np.nan, dtype=np.float32)
  sl[:, scheme.stable_mask()] = points[:, scheme.stable_mask()]
  return np.asarray(pose.estimate_pose(sl, scheme)[..., 0], np.float64)


def _orient(points: np.ndarray, scheme, flip=None) -> tuple[np.ndarray, np.ndarray]:
  """Right-looking copies of the shapes and which were mirrored (``flip`` None: the one flip
  decision, :func:`jaxalign.morphable.pose.flip_from_points`)."""
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  if flip is None:
    flipped = pose.flip_from_points(points.astype(np.float32), scheme)
  else:
    flipped = np.broadcast_to(np.asarray(flip, bool), (len(points),)).copy()
  return np.where(flipped[:, None, None], _mirror(points, scheme), points), flipped


def fit(shapes, scheme=schemes_lib.IBUG68, num_bins: int = DEFAULT_BINS,
        ridge: float = DEFAULT_RIDGE, num_iters: int = 5) -> GaussianShapeModel:
  """Fits the per-bin Gaussians to training shapes.

  Args:
    shapes: (N, L, 2) training landmarks in any pixel frame (complete: no NaN).
    scheme: the landmark scheme whose ``stable`` set is conditioned on.
    num_bins: pose bins (quantiles of the SL yaw estimate).
    ridge: relative ridge on the SL covariance block.
    num_iters: generalized-Procrustes iterations on the SLs.

  Raises:
    ValueError: bad shapes, or fewer than 2 usable shapes per bin.
  """
  scheme = schemes_lib.get_scheme(scheme)
  x = np.asarray(shapes, np.float64)
  if x.ndim != 3 or x.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'shapes must be (N, {scheme.num_points}, 2), got {np.shape(shapes)}')
  x = x[np.isfinite(x).all(axis=(1, 2))]
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f'num_bins must be a positive integer, got {num_bins!r}')
  if len(x) < 2 * num_bins:
    raise ValueError(f'need at least {2 * num_bins} complete training shapes for {num_bins} '
                     f'pose bins, got {len(x)}')
  stable = np.asarray(scheme.stable)
  x, _ = _orient(x, scheme)
  reference = _normalise(x[0, stable])
  for _ in range(num_iters):
    aligned = _apply(_similarity(x[:, stable], reference), x[:, stable])
    reference = _normalise(aligned.mean(0))
  aligned = _apply(_similarity(x[:, stable], reference), x)
  yaw = _sl_yaw(x, scheme)
  edges = np.quantile(yaw, np.linspace(0, 1, num_bins + 1)[1:-1]) if num_bins > 1 else (
      np.zeros(0))
  bins = np.searchsorted(edges, yaw)
  flat = aligned.reshape(len(aligned), -1)
  means, covs, counts = [], [], []
  for b in range(num_bins):
    sel = flat[bins == b]
    if len(sel) < 2:
      raise ValueError(f'pose bin {b} holds {len(sel)} training shapes; use fewer bins')
    means.append(sel.mean(0).reshape(-1, 2))
    covs.append(np.cov(sel, rowvar=False))
    counts.append(len(sel))
  return GaussianShapeModel(stable=stable, reference=reference, edges=np.asarray(edges),
                            means=np.stack(means), covariances=np.stack(covs),
                            counts=np.asarray(counts), ridge=float(ridge))


_CACHE: dict = {}


def cached_fit(key, load_shapes, scheme=schemes_lib.IBUG68,
               num_bins: int = DEFAULT_BINS) -> GaussianShapeModel:
  """:func:`fit` once per process for ``key`` (e.g. a training folder's real path), the stable
  set and the bin count; ``load_shapes()`` gives the (N, L, 2) training shapes when the model
  is not cached yet (the caller reads its folders: this module takes arrays only)."""
  scheme = schemes_lib.get_scheme(scheme)
  k = (key, tuple(scheme.stable), int(num_bins))
  if k not in _CACHE:
    _CACHE[k] = fit(load_shapes(), scheme, num_bins)
  return _CACHE[k]


def _conditional(model: GaussianShapeModel, aligned: np.ndarray, bins: np.ndarray,
                 stable_mask: np.ndarray) -> np.ndarray:
  """(N, L, 2) conditional means of the aligned shapes' points given their SLs."""
  s = np.repeat(stable_mask, 2)
  out = np.empty_like(aligned)
  for b in np.unique(bins):
    sel = bins == b
    mu, cov = model.means[b].reshape(-1), model.covariances[b]
    css = cov[np.ix_(s, s)]
    css = css + model.ridge * np.trace(css) / len(css) * np.eye(len(css))
    cus = cov[np.ix_(~s, s)]
    xs = aligned[sel].reshape(sel.sum(), -1)[:, s]
    pred = np.empty((sel.sum(), len(mu)))
    pred[:, s] = xs
    pred[:, ~s] = mu[~s] + np.linalg.solve(css, (xs - mu[s]).T).T @ cus.T
    out[sel] = pred.reshape(-1, *aligned.shape[1:])
  return out


def complete(points, model: GaussianShapeModel, scheme=schemes_lib.IBUG68, flip=None,
             image_size=None):
  """Completes the ULs of faces from their SLs with the Gaussian shape model.

  Args:
    points: (N, L, 2) or (L, 2) image pixels holding at least the SLs (for a left-looking face,
      the mirror set); other points are ignored and may be NaN.
    model: from :func:`fit` (its stable set must be ``scheme``'s).
    scheme: the landmark scheme.
    flip: None = mirror left-looking faces (:func:`jaxalign.morphable.pose.flip_from_points`,
      as the model and :func:`jaxalign.morphable.completion.complete` decide), or an (N,) /
      scalar bool forcing it (as :func:`jaxalign.morphable.completion.complete`).
    image_size: accepted for the same call shape; unused (the model is similarity invariant).

  Returns:
    :class:`~jaxalign.morphable.completion.CompletionResult` with ``backend='gaussian'``; the
    pose angles are NaN and the coefficient arrays empty (no 3D fit).
  """
  del image_size
  from jaxalign.morphable.completion import CompletionResult  # pylint: disable=g-import-not-at-top
  scheme = schemes_lib.get_scheme(scheme)
  if not np.array_equal(np.asarray(scheme.stable), model.stable):
    raise ValueError(f'the Gaussian model conditions on SLs {model.stable.tolist()} but the '
                     f'scheme\'s stable set is {list(scheme.stable)}')
  pts = np.asarray(points, np.float64)
  single = pts.ndim == 2
  if single:
    pts = pts[None]
  if pts.ndim != 3 or pts.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'points must be (N, {scheme.num_points}, 2) or ({scheme.num_points}, 2), '
                     f'got {np.shape(points)}')
  n = len(pts)
  stable = scheme.stable_mask()
  work, flipped = _orient(pts, scheme, flip)
  work = np.where(stable[None, :, None], work, np.nan)
  ok = np.isfinite(work[:, stable]).all(axis=(1, 2))
  completed = work.copy()
  if ok.any():
    w = work[ok]
    m = _similarity(w[:, stable], model.reference)
    aligned = _apply(m, np.nan_to_num(w))
    bins = np.searchsorted(model.edges, _sl_yaw(w, scheme))
    pred = _apply(_invert(m), _conditional(model, aligned, bins, stable))
    completed[ok] = np.where(stable[None, :, None], w, pred)
  out = np.where(flipped[:, None, None], _mirror(completed, scheme), completed)
  kept = np.where(flipped[:, None], stable[scheme.flip_index_array()][None], stable[None])
  nan = np.full(n, np.nan)
  result = CompletionResult(
      points=out.astype(np.float32), kept=kept, flipped=flipped, yaw=nan, pitch=nan.copy(),
      roll=nan.copy(), shape_coeffs=np.zeros((n, 0), np.float32),
      expression_coeffs=np.zeros((n, 0), np.float32), ok=ok, backend='gaussian')
  if single:
    result = CompletionResult(**{
        k: (v[0] if isinstance(v, np.ndarray) else v)
        for k, v in dataclasses.asdict(result).items()})
  return result
