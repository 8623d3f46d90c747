"""Landmark regression losses: wing (Feng et al., CVPR 2018), L1, L2 (jnp), and a heatmap
head's auxiliary divergence.

Elementwise functions act on coordinate differences in pixels of the network input (224 px in the
paper's setting; the wing parameters w = 18, epsilon = 3 are in those pixels).

Reduction of :func:`landmark_loss`: the elementwise loss of the x and y differences is summed over
the two coordinates (Feng et al. sum over all 2L coordinates), then averaged over points and the
batch with the point weights: ``sum_{n,l} w_nl (f(dx_nl) + f(dy_nl)) / sum_{n,l} w_nl``. With no
weights this is the mean over points and examples. Target points that are NaN (missing) get
weight 0, without NaN in the gradient; a batch with zero total weight has loss 0.
"""

from __future__ import annotations

import jax
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
  return _weighted_mean(jnp.sum(LOSSES[kind](diff, **kwargs), -1), valid, weights)


def _weighted_mean(per_point, valid, weights=None) -> jnp.ndarray:
  """The module's reduction: (..., L) per-point losses averaged with the point weights over the
  valid points; 0 where the total weight is 0."""
  w = valid.astype(jnp.float32)
  if weights is not None:
    w = w * jnp.broadcast_to(jnp.asarray(weights, jnp.float32), w.shape)
  total = jnp.sum(w)
  return jnp.where(total > 0, jnp.sum(w * per_point) / jnp.where(total > 0, total, 1.0), 0.0)


def heatmap_kl(logits, centres, target, sigma: float, weights=None) -> jnp.ndarray:
  """Auxiliary loss of a heatmap head (``loss.heatmap_weight``; beyond the paper): for each
  point the Kullback-Leibler divergence, in nats (the cross-entropy less the target's own
  entropy, so 0 when the two agree), from a Gaussian of standard deviation ``sigma`` pixels around
  its target, discretised on the map's cells, to the softmax of its logits over the cells;
  reduced as :func:`landmark_loss` (NaN targets ignored, point weights).

  The soft argmax (:func:`jaxalign.models.resnet.expected_points`) is trained by the
  coordinates' loss alone through a mean over every cell; this term also asks the weight to
  sit on the cells near the point, so that far cells do not pull the mean.

  Args:
    logits: (B, H, W, L) the head's logits (prior included).
    centres: (H * W, 1, 2) input pixels (x, y) of the cells' centres, row-major.
    target: (B, L, 2) target points in input pixels; NaN = missing.
    sigma: the target Gaussian's standard deviation in input pixels (> 0).
    weights: optional per-point weights broadcastable to (B, L).

  Returns:
    float32 scalar.
  """
  logits = jnp.asarray(logits, jnp.float32)
  b, h, w, num_points = logits.shape
  target = jnp.asarray(target, jnp.float32)
  if target.shape != (b, num_points, 2):
    raise ValueError(f'target must have shape ({b}, {num_points}, 2) for logits of shape '
                     f'{logits.shape}, got {target.shape}')
  valid = jnp.all(jnp.isfinite(target), -1)                                     # (B, L)
  safe = jnp.where(valid[..., None], target, 0.0)
  d2 = jnp.sum((jnp.asarray(centres, jnp.float32)[None] - safe[:, None]) ** 2, -1)  # (B, C, L)
  log_wanted = jax.nn.log_softmax(-d2 / (2.0 * float(sigma) ** 2), axis=1)
  log_p = jax.nn.log_softmax(logits.reshape(b, h * w, num_points), axis=1)
  kl = jnp.sum(jnp.exp(log_wanted) * (log_wanted - log_p), axis=1)                # (B, L)
  return _weighted_mean(kl, valid, weights)
