"""Shape geometry: least-squares transforms, Procrustes, the pose coefficient, yaw.

Everything here is jnp and jit/vmap-able. Shapes are (..., L, 2) float arrays of (x, y) image
pixels (y down). Missing points are NaN: every estimator gives them zero weight, so a mask is just
NaN (or a zero weight) at the points to ignore. Transforms are (..., 2, 3) input-to-output
matrices, as in :mod:`jaxalign.transforms`.

Yaw sign (eos's convention, see ``docs/method.md``; checked against eos in ``tests/test_geometry.py``):
a right-looking face turns toward the viewer's right, shows its viewer's-left half, and has
yaw > 0 in eos's ``RenderingParameters.get_yaw_pitch_roll()``; its protruding nose tip then
moves toward the viewer's right (+x) relative to symmetric pairs of points behind it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import schemes as schemes_lib


def _prepare(src, dst, weights):
  """Float32 copies with NaN replaced by 0 and the per-point weights (0 where NaN)."""
  src = jnp.asarray(src, jnp.float32)
  dst = jnp.asarray(dst, jnp.float32)
  if src.shape[-1] != 2 or dst.shape[-1] != 2 or src.ndim < 2 or dst.ndim < 2:
    raise ValueError(f'src and dst must have shape (..., L, 2), got {src.shape} and {dst.shape}')
  if src.shape[-2] != dst.shape[-2]:
    raise ValueError(f'src and dst must have the same number of points, got {src.shape} and '
                     f'{dst.shape}')
  valid = jnp.all(jnp.isfinite(src), -1) & jnp.all(jnp.isfinite(dst), -1)
  w = valid.astype(jnp.float32)
  if weights is not None:
    weights = jnp.asarray(weights, jnp.float32)
    w = w * jnp.where(jnp.isfinite(weights), weights, 0.0)
  src = jnp.where(valid[..., None], src, 0.0)
  dst = jnp.where(valid[..., None], dst, 0.0)
  return src, dst, w


def _weighted_centroid(p, w):
  total = jnp.sum(w, -1, keepdims=True)
  return jnp.sum(p * w[..., None], -2) / total


@jax.jit
def estimate_similarity(src, dst, weights=None) -> jnp.ndarray:
  """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

  Minimises ``sum_i w_i |s R src_i + t - dst_i|^2`` (Umeyama's solution; in 2D the set of
  scaled rotations is linear, ``[[a, -b], [b, a]]``, so the weighted linear least squares is the
  exact optimum).

  Args:
    src: (..., L, 2) points.
    dst: (..., L, 2) points; batch dimensions broadcast with ``src``.
    weights: optional (..., L) non-negative weights; NaN points get weight 0.

  Returns:
    (..., 2, 3) float32 matrix mapping src coordinates to dst coordinates. NaN when fewer than
    two distinct points have positive weight.
  """
  src, dst, w = _prepare(src, dst, weights)
  cs = _weighted_centroid(src, w)
  cd = _weighted_centroid(dst, w)
  p = src - cs[..., None, :]
  q = dst - cd[..., None, :]
  norm = jnp.sum(w * jnp.sum(p * p, -1), -1)
  a = jnp.sum(w * (p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1]), -1) / norm
  b = jnp.sum(w * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]), -1) / norm
  lin = jnp.stack([jnp.stack([a, -b], -1), jnp.stack([b, a], -1)], -2)
  t = cd - jnp.einsum('...ij,...j->...i', lin, cs)
  return jnp.concatenate([lin, t[..., None]], -1)


@jax.jit
def estimate_affine(src, dst, weights=None) -> jnp.ndarray:
  """Least-squares affine transform src -> dst (6 parameters), optionally weighted.

  Minimises ``sum_i w_i |A src_i + t - dst_i|^2``. Degenerate input (fewer than three
  non-collinear weighted points) gives the minimum-norm solution of the linear part.

  Returns:
    (..., 2, 3) float32.
  """
  src, dst, w = _prepare(src, dst, weights)
  cs = _weighted_centroid(src, w)
  cd = _weighted_centroid(dst, w)
  p = src - cs[..., None, :]
  q = dst - cd[..., None, :]
  spp = jnp.einsum('...l,...li,...lj->...ij', w, p, p)  # (..., 2, 2)
  sqp = jnp.einsum('...l,...li,...lj->...ij', w, q, p)
  lin = sqp @ jnp.linalg.pinv(spp)
  t = cd - jnp.einsum('...ij,...j->...i', lin, cs)
  return jnp.concatenate([lin, t[..., None]], -1)


def _apply(matrix, points):
  return jnp.einsum('...ij,...lj->...li', matrix[..., :, :2], points) + matrix[..., None, :, 2]


@jax.jit
def normalize_shape(shape, weights=None) -> jnp.ndarray:
  """Centres (L, 2) shape(s) on their weighted centroid and scales them to unit Frobenius norm.

  NaN points stay NaN and are left out of the centroid and the norm.
  """
  shape = jnp.asarray(shape, jnp.float32)
  src, _, w = _prepare(shape, shape, weights)
  c = _weighted_centroid(src, w)
  p = (src - c[..., None, :]) * (w[..., None] > 0)
  norm = jnp.sqrt(jnp.sum(p * p, (-1, -2)))
  out = p / norm[..., None, None]
  return jnp.where(jnp.isfinite(shape), out, jnp.nan)


class ProcrustesResult(NamedTuple):
  """Generalized Procrustes analysis.

  Attributes:
    mean: (L, 2) mean shape, centred at the origin with unit Frobenius norm.
    aligned: (N, L, 2) every shape similarity-aligned to ``mean`` (NaN where the input was).
    transforms: (N, 2, 3) the similarity that maps each input shape onto ``aligned``.
  """

  mean: jnp.ndarray
  aligned: jnp.ndarray
  transforms: jnp.ndarray


@functools.partial(jax.jit, static_argnames=('num_iters',))
def procrustes(shapes, weights=None, num_iters: int = 10) -> ProcrustesResult:
  """Generalized Procrustes analysis of (N, L, 2) shapes (NaN points ignored).

  Starts from the shape with the most valid points (its missing points filled with the mean of
  the individually normalised shapes), then ``num_iters`` times: align every shape to the current
  mean by :func:`estimate_similarity`, average the aligned shapes per point over the shapes that
  have it, and renormalise the mean (centroid 0, Frobenius norm 1). Every point must be present in
  at least one shape; a point missing from every shape stays NaN in ``mean`` and is ignored.

  Args:
    shapes: (N, L, 2).
    weights: optional (N, L) per-point weights for the alignment.
    num_iters: fixed number of iterations (static; GPA usually settles in 2-3).
  """
  shapes = jnp.asarray(shapes, jnp.float32)
  if shapes.ndim != 3 or shapes.shape[-1] != 2:
    raise ValueError(f'shapes must have shape (N, L, 2), got {shapes.shape}')
  valid = jnp.all(jnp.isfinite(shapes), -1)  # (N, L)
  w = valid.astype(jnp.float32)
  if weights is not None:
    w = w * jnp.asarray(weights, jnp.float32)

  def point_mean(aligned):
    filled = jnp.where(valid[..., None], aligned, 0.0)
    return jnp.sum(filled * w[..., None], 0) / jnp.sum(w, 0)[..., None]

  normalised = normalize_shape(shapes)
  fill = point_mean(jnp.where(valid[..., None], normalised, 0.0))
  first = jnp.argmax(jnp.sum(valid, -1))
  ref = jnp.where(valid[first][:, None], normalised[first], fill)
  ref = normalize_shape(ref)

  def body(_, mean):
    m = estimate_similarity(shapes, mean[None], w)
    return normalize_shape(point_mean(_apply(m, shapes)))

  mean = jax.lax.fori_loop(0, num_iters, body, ref)
  transforms = estimate_similarity(shapes, mean[None], w)
  aligned = jnp.where(valid[..., None], _apply(transforms, shapes), jnp.nan)
  return ProcrustesResult(mean=mean, aligned=aligned, transforms=transforms)


# --- Yaw from a 2D shape ---------------------------------------------------------------------
#
# For a symmetric pair of points (a on the viewer's left, b on the right) and the nose tip n in
# front of them by depth d, a weak-perspective view at yaw theta puts n at the fraction
#   s = <n - a, b - a> / |b - a|^2 = 1/2 + k tan(theta),   k = d / |b - a|
# along the a->b axis (roll drops out, scale and translation too). k per pair is measured on the
# Surrey Face Model's mean shape (tests/test_geometry.py recomputes it from the model files). The
# four pairs and the nose tip belong to both the default stable set and its mirror, so the
# estimate is the same from all 68 points, from the SLs alone and from the mirrored SLs.
# Each pair is (a, b, k) in iBUG-68 indices.
_YAW_NOSE_TIP = 30
_YAW_PAIRS = ((39, 42, 0.876),   # inner eye corners
              (31, 35, 0.876),   # nose wings
              (48, 54, 0.669),   # mouth corners
              (21, 22, 0.813))   # inner brow ends


def _yaw_indices(scheme: schemes_lib.LandmarkScheme):
  """Scheme indices of the nose tip and the usable pairs (through ``ibug68_equivalent``)."""
  to_scheme = {int(g): i for i, g in enumerate(scheme.ibug68_equivalent) if g >= 0}
  if _YAW_NOSE_TIP not in to_scheme:
    raise ValueError(f'scheme {scheme.name} has no nose tip (iBUG 30) for the yaw estimate')
  pairs = [(to_scheme[a], to_scheme[b], k) for a, b, k in _YAW_PAIRS
           if a in to_scheme and b in to_scheme]
  if not pairs:
    raise ValueError(f'scheme {scheme.name} has no symmetric pair for the yaw estimate')
  a, b, k = zip(*pairs)
  return to_scheme[_YAW_NOSE_TIP], np.array(a), np.array(b), np.array(k, np.float32)


@functools.partial(jax.jit, static_argnames=('scheme',))
def estimate_yaw(points, scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68) -> jnp.ndarray:
  """Approximate head yaw in degrees from a 2D shape, with eos's sign (> 0: right-looking).

  Uses the nose tip's position along four symmetric pairs (inner eye corners, nose wings, mouth
  corners, inner brow ends), combined by least squares in ``tan(yaw)`` over the pairs whose
  points are finite. Invariant to translation, scale and in-plane rotation; exactly
  antisymmetric under a flip. A weak-perspective estimate calibrated on the mean Surrey face:
  good to a few degrees on model shapes, rougher on real faces (the face in ``shared/faces``,
  eos fits yaw -30 degrees, gives -26).

  Args:
    points: (..., L, 2) shapes; NaN points are ignored.
    scheme: the landmark scheme (IBUG68 or one with iBUG-equivalent points).

  Returns:
    (...,) float32 degrees; NaN if the nose tip or every pair is missing.
  """
  pts = jnp.asarray(points, jnp.float32)
  if pts.ndim < 2 or pts.shape[-2:] != (scheme.num_points, 2):
    raise ValueError(f'points must have shape (..., {scheme.num_points}, 2) for scheme '
                     f'{scheme.name}, got {pts.shape}')
  nose, a, b, k = _yaw_indices(scheme)
  pa = pts[..., a, :]
  pb = pts[..., b, :]
  pn = pts[..., nose, None, :]
  axis = pb - pa
  s = jnp.sum((pn - pa) * axis, -1) / jnp.sum(axis * axis, -1)  # (..., P)
  ok = jnp.isfinite(s)
  s = jnp.where(ok, s - 0.5, 0.0)
  kk = jnp.where(ok, k, 0.0)
  tan = jnp.sum(kk * s, -1) / jnp.sum(kk * kk, -1)
  return jnp.degrees(jnp.arctan(tan))


# --- The paper's pose coefficient --------------------------------------------------------------


class PoseModel(NamedTuple):
  """1-D PCA of Procrustes-aligned shapes (the paper's pose-balancing coefficient).

  Attributes:
    mean: (L, 2) Procrustes mean shape (centred, unit norm; NaN at points no training shape
      had).
    component: (L, 2) first principal direction (unit norm), signed so that right-looking
      shapes (eos yaw > 0) get positive coefficients; 0 at points no training shape had.
    offset: scalar, the mean of the training coefficients before centring (subtracted).
    scale: scalar, the standard deviation of the training coefficients.
  """

  mean: jnp.ndarray
  component: jnp.ndarray
  offset: jnp.ndarray
  scale: jnp.ndarray


def _project(mean, component, shapes):
  """Aligns shapes to ``mean``, fills missing points from ``mean``, projects on ``component``."""
  shapes = jnp.asarray(shapes, jnp.float32)
  m = estimate_similarity(shapes, mean)
  dev = _apply(m, shapes) - mean
  # Missing points (NaN in the shape, or never observed in training: NaN in the mean) count as
  # lying on the mean.
  dev = jnp.where(jnp.isfinite(dev), dev, 0.0)
  return jnp.sum(dev * component, (-1, -2))


@functools.partial(jax.jit, static_argnames=('scheme', 'num_iters'))
def fit_pose_model(shapes, scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68,
                   num_iters: int = 10) -> PoseModel:
  """Fits the paper's pose model: generalized Procrustes, then PCA to one dimension.

  The sign of a principal direction is arbitrary; it is fixed so that the coefficients correlate
  positively with :func:`estimate_yaw` over the training shapes (right-looking -> positive), and
  left as computed if that correlation is exactly zero.

  Args:
    shapes: (N, L, 2) training shapes (NaN points are left out of the alignment and count as
      lying on the mean in the PCA).
    scheme: their landmark scheme (used for the sign).
    num_iters: Procrustes iterations.
  """
  shapes = jnp.asarray(shapes, jnp.float32)
  gpa = procrustes(shapes, num_iters=num_iters)
  x = gpa.aligned - gpa.mean
  x = jnp.where(jnp.isfinite(x), x, 0.0)
  flat = x.reshape(x.shape[0], -1)
  flat = flat - flat.mean(0)
  cov = flat.T @ flat / max(flat.shape[0] - 1, 1)
  _, vecs = jnp.linalg.eigh(cov)
  component = vecs[:, -1].reshape(gpa.mean.shape)
  coeff = _project(gpa.mean, component, shapes)
  yaw = estimate_yaw(shapes, scheme)
  ok = jnp.isfinite(yaw)
  corr = jnp.sum(jnp.where(ok, (coeff - coeff.mean()) * yaw, 0.0))
  sign = jnp.where(corr < 0, -1.0, 1.0)
  component = component * sign
  coeff = coeff * sign
  return PoseModel(mean=gpa.mean, component=component, offset=coeff.mean(),
                   scale=jnp.std(coeff))


@functools.partial(jax.jit, static_argnames=('standardize',))
def pose_coefficient(model: PoseModel, shapes, standardize: bool = False) -> jnp.ndarray:
  """The 1-D pose coefficient of (..., L, 2) shapes (> 0: right-looking).

  Each shape is similarity-aligned to ``model.mean`` (NaN points ignored, then filled from the
  mean) and projected on ``model.component``, minus ``model.offset``; divided by
  ``model.scale`` if ``standardize``. Returns (...,) float32.
  """
  shapes = jnp.asarray(shapes, jnp.float32)
  c = _project(model.mean, model.component, shapes) - model.offset
  return c / model.scale if standardize else c
