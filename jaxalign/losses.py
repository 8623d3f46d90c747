"""Landmark regression losses: wing (Feng et al., CVPR 2018), L1, L2 (jnp).

Elementwise functions act on coordinate differences in pixels of the network input (224 px in the
paper's setting; the wing parameters w = 18, epsilon = 3 are in those pixels).

Reduction of :func:`landmark_loss`: the elementwise loss of the x and y differences is summed over
the two coordinates (Feng et al. sum over all 2L coordinates), then averaged over points and the
batch with the point weights: ``sum_{n,l} w_nl (f(dx_nl) + f(dy_nl)) / sum_{n,l} w_nl``. With no
weights this is the mean over points and examples. Target points that are NaN (missing) get
weight 0, without NaN in the gradient; a batch with zero total weight has loss 0.
"""

from __future__ import annotations

import jax.numpy as jnp


def wing(x, w: float = 18.0, epsilon: float = 3.0) -> jnp.ndarray:
  """Wing loss of Feng et al. (CVPR 2018), elementwise.

  ``w * ln(1 + |x| / epsilon)`` for ``|x| < w``, else ``|x| - C`` with
  ``C = w - w * ln(1 + w / epsilon)`` (continuous at ``|x| = w``).
  """
  if isinstance(w, (int, float)) and isinstance(epsilon, (int, float)) and (
      w <= 0 or epsilon <= 0):
    raise ValueError(f'wing loss needs w > 0 and epsilon > 0, got w={w}, epsilon={epsilon}')
  ax = jnp.abs(jnp.asarray(x, jnp.float32))
  c = w - w * jnp.log1p(w / epsilon)
  return jnp.where(ax < w, w * jnp.log1p(ax / epsilon), ax - c)


def l1(x) -> jnp.ndarray:
  """``|x|``, elementwise."""
  return jnp.abs(jnp.asarray(x, jnp.float32))


def l2(x) -> jnp.ndarray:
  """``x ** 2``, elementwise (so :func:`landmark_loss` with ``kind='l2'`` is the mean squared
  point-to-point distance)."""
  x = jnp.asarray(x, jnp.float32)
  return x * x


def smooth_l1(x, beta: float = 1.0) -> jnp.ndarray:
  """Huber-style smooth L1: ``0.5 x^2 / beta`` for ``|x| < beta``, else ``|x| - 0.5 beta``."""
  ax = jnp.abs(jnp.asarray(x, jnp.float32))
  return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


LOSSES = {'wing': wing, 'l1': l1, 'l2': l2, 'smooth_l1': smooth_l1}


def landmark_loss(pred, target, kind: str = 'wing', weights=None, **kwargs) -> jnp.ndarray:
  """Scalar landmark loss (see the module docstring for the reduction).

  Args:
    pred: (..., L, 2) predicted points.
    target: (..., L, 2) target points; NaN points are ignored.
    kind: 'wing', 'l1', 'l2' or 'smooth_l1'.
    weights: optional per-point weights broadcastable to (..., L), e.g. a stable-point mask.
    **kwargs: parameters of the elementwise loss (``w``, ``epsilon`` for wing).

  Returns:
    float32 scalar.
  """
  if kind not in LOSSES:
    raise ValueError(f'unknown loss kind {kind!r}; known: {sorted(LOSSES)}')
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape or pred.shape[-1:] != (2,):
    raise ValueError(f'pred and target must have the same shape (..., L, 2), got {pred.shape} '
                     f'and {target.shape}')
  valid = jnp.all(jnp.isfinite(target), -1)
  # Replace missing targets before subtracting so no NaN reaches the gradient.
  diff = pred - jnp.where(valid[..., None], target, pred)
  per_point = jnp.sum(LOSSES[kind](diff, **kwargs), -1)
  w = valid.astype(jnp.float32)
  if weights is not None:
    w = w * jnp.broadcast_to(jnp.asarray(weights, jnp.float32), w.shape)
  total = jnp.sum(w)
  return jnp.where(total > 0, jnp.sum(w * per_point) / jnp.where(total > 0, total, 1.0), 0.0)
