"""Head pose from 2D landmarks by a rigid fit of the mean Surrey face (no shape, no contour).

The pose-aware method flips left-looking faces before everything else, so the sign of the yaw
decides which half of the face the SLs come from; a wrong sign near profile hands the 3DMM the
hidden half. :func:`estimate_pose` fits eos's linear scaled-orthographic camera
(:func:`jaxalign.morphable.fitting.estimate_camera`) to the mean face's vertices of the given
points. Unlike a 2D ratio of the nose tip between symmetric pairs, it does not wrap around when
the nose tip passes the far-side points near profile: on the synthetic test faces of the default
run its yaw is within a few degrees up to 90 degrees, from all points, from the SLs alone and
from CNN1's rough points, with no sign error beyond 10 degrees (``docs/method.md``).

Jitted, batched over leading axes, NaN points ignored; the 16 contour points (iBUG 0-7, 9-16)
are never used (they slide on the face outline, no fixed vertex).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import schemes as schemes_lib
from jaxalign.morphable import contour
from jaxalign.morphable import fitting

# A camera needs at least 4 non-coplanar correspondences (8 unknowns of the affine camera).
MIN_POINTS = 4

# The flip decision's default threshold (degrees): the pose-aware model's convention is that
# every left-looking face (yaw < 0) is mirrored, so that the SLs always come from the viewer's
# left half; a face at -5 degrees is mirrored by the model and by the completion alike.
FLIP_THRESHOLD_DEG = 0.0


@functools.lru_cache(maxsize=8)
def _reference(model, scheme) -> np.ndarray:
  """(L, 3) float32 mean-face vertex of each scheme point; NaN for contour or unmapped points."""
  verts = contour.landmark_vertices(model)
  contour_points = set(range(0, 8)) | set(range(9, 17))
  out = np.full((scheme.num_points, 3), np.nan, np.float32)
  for i, g in enumerate(scheme.ibug68_equivalent):
    if g >= 0 and g not in contour_points:
      out[i] = model.mean[verts[g]]
  return out


def reference_points(model=None, scheme=schemes_lib.IBUG68) -> np.ndarray:
  """(L, 3) float32 the mean-face 3D point (model mm) of each scheme point, NaN where unused."""
  from jaxalign.morphable.model import load_model  # pylint: disable=g-import-not-at-top
  return _reference(load_model() if model is None else model, schemes_lib.get_scheme(scheme))


@jax.jit
def _pose(points, reference):
  ok = jnp.all(jnp.isfinite(points), -1) & jnp.all(jnp.isfinite(reference), -1)[None]
  w = ok.astype(jnp.float32)
  pts = jnp.where(ok[..., None], points, 0.0)
  ref = jnp.where(jnp.isfinite(reference), reference, 0.0)

  def one(p, w):
    rot, _, _, _ = fitting.estimate_camera(p, ref, w, 0.0)
    return fitting.yaw_pitch_roll(rot)

  ypr = jax.vmap(one)(pts, w)
  enough = ok.sum(-1) >= MIN_POINTS
  return jnp.where(enough[:, None] & jnp.all(jnp.isfinite(ypr), -1, keepdims=True), ypr, jnp.nan)


def _checked(points, scheme):
  """(points as a float32 array of shape (B, L, 2) (numpy unless a jax array), leading shape)."""
  is_jax = isinstance(points, jax.Array) or 'Tracer' in type(points).__name__
  pts = jnp.asarray(points, jnp.float32) if is_jax else np.asarray(points, np.float32)
  if pts.ndim < 2 or pts.shape[-2:] != (scheme.num_points, 2):
    raise ValueError(f'points must have shape (..., {scheme.num_points}, 2) for scheme '
                     f'{scheme.name}, got {pts.shape}')
  lead = pts.shape[:-2]
  return pts.reshape((-1,) + pts.shape[-2:]), lead


def pose_from_reference(points, reference) -> jax.Array:
  """(B, 3) yaw, pitch, roll in degrees of (B, L, 2) image points against an (L, 3) reference.

  The traceable core of :func:`estimate_pose` for callers that hold the reference themselves
  (the pose-aware model keeps it as a constant so that its flip decision needs no model files
  at run time). NaN rows of ``reference`` (contour points) and NaN points are ignored.
  """
  return _pose(jnp.asarray(points, jnp.float32), jnp.asarray(reference, jnp.float32))


def estimate_pose(points, scheme=schemes_lib.IBUG68, model=None):
  """(..., 3) yaw, pitch, roll in degrees (eos's convention: yaw > 0 right-looking).

  Args:
    points: (..., L, 2) image pixels (y down) of ``scheme``; NaN points are ignored.
    scheme: the landmark scheme (points map to the model through ``ibug68_equivalent``).
    model: a SurreyModel (default :func:`~jaxalign.morphable.model.load_model`).

  Returns:
    jnp float32; NaN where fewer than :data:`MIN_POINTS` usable points are given.
  """
  scheme = schemes_lib.get_scheme(scheme)
  pts, lead = _checked(points, scheme)
  out = _pose(pts, reference_points(model, scheme))
  return out.reshape(lead + (3,))


def is_left_looking(yaw, threshold: float = FLIP_THRESHOLD_DEG):
  """The one flip decision: True where a face is left-looking, ``yaw < -threshold``.

  Args:
    yaw: (...,) degrees, eos's convention (yaw > 0 right-looking), e.g. from
      :func:`estimate_pose` or :func:`pose_from_reference`; NaN (no pose) is not left-looking.
    threshold: degrees (default :data:`FLIP_THRESHOLD_DEG`: mirror every left-looking face).

  Returns:
    (...,) bool, numpy for numpy input, jnp for a jax array or tracer (usable under ``jit``).
  """
  if isinstance(yaw, jax.Array) or 'Tracer' in type(yaw).__name__:
    return jnp.asarray(yaw) < -threshold
  return np.asarray(yaw, np.float64) < -float(threshold)


def flip_from_points(points, scheme=schemes_lib.IBUG68, model=None,
                     threshold: float = FLIP_THRESHOLD_DEG) -> np.ndarray:
  """(...,) bool :func:`is_left_looking` of the rigid-fit yaw of (..., L, 2) points (NaN
  points ignored; too few points: not flipped)."""
  yaw = np.asarray(estimate_pose(points, scheme, model)[..., 0])
  return is_left_looking(yaw, threshold)


# Largest rigid-fit residual / point-box side of a face's points (:func:`rigid_residual`): what
# the detection verifier accepts, and beyond which the evaluation's ``cnn1_implausible`` counts a
# CNN1 output as collapsed (scattered points that no rigid face explains).
MAX_RESIDUAL = 0.05


def rigid_residual(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """RMS residual of the best affine camera from 3D reference points to 2D points.

  Args:
    points: (N, L, 2) image pixels (NaN points ignored).
    reference: (L, 3) model points (NaN rows, e.g. contour points, ignored).

  Returns:
    (N,) float64 RMS residual / longer side of the points' box; inf where fewer than 6 points
    are usable (an affine camera has 8 unknowns, 4 per coordinate).
  """
  pts = np.asarray(points, np.float64)
  if pts.ndim != 3 or pts.shape[-1] != 2:
    raise ValueError(f'points must have shape (N, L, 2), got {pts.shape}')
  ref = np.asarray(reference, np.float64)
  if ref.shape != (pts.shape[1], 3):
    raise ValueError(f'reference must have shape ({pts.shape[1]}, 3), got {ref.shape}')
  out = np.full(len(pts), np.inf)
  for i, p in enumerate(pts):
    ok = np.isfinite(p).all(-1) & np.isfinite(ref).all(-1)
    if ok.sum() < 6:
      continue
    a = np.concatenate([ref[ok], np.ones((ok.sum(), 1))], 1)          # (K, 4)
    cam, *_ = np.linalg.lstsq(a, p[ok], rcond=None)                    # (4, 2)
    res = np.sqrt(np.mean(np.sum((a @ cam - p[ok]) ** 2, -1)))
    side = np.max(p[ok].max(0) - p[ok].min(0))
    out[i] = res / max(side, 1e-6)
  return out
