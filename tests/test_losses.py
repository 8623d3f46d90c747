"""Wing, L1, L2 losses and the landmark-loss reduction against worked values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import losses


def _wing_ref(x, w, eps):
  c = w - w * math.log(1 + w / eps)
  return w * math.log(1 + abs(x) / eps) if abs(x) < w else abs(x) - c


@pytest.mark.parametrize('x', [0.0, 0.5, -2.0, 3.0, 17.9, 18.0, -18.0, 25.0, -100.0])
def test_wing_worked_values(x):
  assert float(losses.wing(x)) == pytest.approx(_wing_ref(x, 18.0, 3.0), rel=1e-5, abs=1e-5)
  assert float(losses.wing(x, w=5.0, epsilon=0.5)) == pytest.approx(
      _wing_ref(x, 5.0, 0.5), rel=1e-5, abs=1e-5)


def test_wing_hand_computed_numbers():
  # w ln(1 + |x|/eps) with w = 18, eps = 3: x = 3 -> 18 ln 2.
  assert float(losses.wing(3.0)) == pytest.approx(18 * math.log(2), rel=1e-6)
  # Linear part: x = 30 -> 30 - (18 - 18 ln 7).
  assert float(losses.wing(30.0)) == pytest.approx(30 - 18 + 18 * math.log(7), rel=1e-6)


def test_wing_is_continuous_and_symmetric():
  x = jnp.array([18.0 - 1e-3, 18.0 + 1e-3])
  v = losses.wing(x)
  assert abs(float(v[1] - v[0])) < 5e-3
  xs = jnp.linspace(-40, 40, 101)
  np.testing.assert_allclose(losses.wing(xs), losses.wing(-xs))
  # Gradient: w / (eps + |x|) inside, 1 outside.
  g = jax.grad(lambda t: losses.wing(t))
  assert float(g(3.0)) == pytest.approx(18 / 6, rel=1e-5)
  assert float(g(30.0)) == pytest.approx(1.0)


def test_wing_rejects_bad_parameters():
  with pytest.raises(ValueError, match='w > 0'):
    losses.wing(1.0, w=0.0)


def test_l1_l2_smooth_l1():
  x = jnp.array([-2.0, 0.5, 3.0])
  np.testing.assert_allclose(losses.l1(x), [2.0, 0.5, 3.0])
  np.testing.assert_allclose(losses.l2(x), [4.0, 0.25, 9.0])
  np.testing.assert_allclose(losses.smooth_l1(x), [1.5, 0.125, 2.5])


def test_landmark_loss_reduction_worked_case():
  pred = jnp.zeros((2, 2, 2))
  target = jnp.array([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]])
  # L1: per point |dx| + |dy| = 3, 0, 3, 4 -> mean over points and batch = 2.5.
  assert float(losses.landmark_loss(pred, target, 'l1')) == pytest.approx(2.5)
  # L2: 5, 0, 9, 16 -> 7.5.
  assert float(losses.landmark_loss(pred, target, 'l2')) == pytest.approx(7.5)
  wing = [_wing_ref(1, 18, 3) + _wing_ref(2, 18, 3), 0.0, _wing_ref(3, 18, 3),
          _wing_ref(4, 18, 3)]
  assert float(losses.landmark_loss(pred, target)) == pytest.approx(np.mean(wing), rel=1e-5)
  # Weights: only the first point of each example -> (3 + 3) / 2.
  w = jnp.array([1.0, 0.0])
  assert float(losses.landmark_loss(pred, target, 'l1', weights=w)) == pytest.approx(3.0)
  # Per-example weights: weighted mean over all (example, point) pairs.
  w2 = jnp.array([[1.0, 1.0], [0.0, 2.0]])
  assert float(losses.landmark_loss(pred, target, 'l1', weights=w2)) == pytest.approx(
      (3 + 0 + 2 * 4) / 4)


def test_landmark_loss_ignores_nan_targets_without_nan_gradient():
  pred = jnp.ones((1, 3, 2))
  target = jnp.array([[[0.0, 0.0], [jnp.nan, jnp.nan], [1.0, 3.0]]])
  val, grad = jax.value_and_grad(lambda p: losses.landmark_loss(p, target, 'l1'))(pred)
  assert float(val) == pytest.approx((2 + 2) / 2)
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_array_equal(grad[0, 1], [0.0, 0.0])
  none = jnp.full((1, 3, 2), jnp.nan)
  assert float(losses.landmark_loss(pred, none)) == 0.0


def test_landmark_loss_jit_and_errors():
  pred = jnp.zeros((4, 68, 2))
  target = jnp.ones((4, 68, 2))
  fn = jax.jit(losses.landmark_loss, static_argnames=('kind',))
  assert float(fn(pred, target, kind='l1')) == pytest.approx(2.0)
  with pytest.raises(ValueError, match='unknown loss'):
    losses.landmark_loss(pred, target, kind='huber2')
  with pytest.raises(ValueError, match='same shape'):
    losses.landmark_loss(pred, target[:, :5])


def _cells(h, w, stride):
  x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
  return jnp.asarray(stride * np.stack([x, y], -1).reshape(h * w, 1, 2))


def test_heatmap_kl_is_zero_on_its_target_and_grows_away_from_it():
  """The divergence is 0 for logits that are the target Gaussian, grows as the peak moves
  away, ignores NaN targets (no NaN gradient) and weighs points like landmark_loss."""
  centres = _cells(6, 6, 4)
  target = jnp.array([[[8.0, 12.0], [14.0, 6.0]]])
  d2 = np.sum((np.asarray(centres) - np.asarray(target[0])[None]) ** 2, -1)   # (C, 2)
  matched = jnp.asarray((-d2 / (2 * 4.0 ** 2)).reshape(1, 6, 6, 2))
  assert float(losses.heatmap_kl(matched, centres, target, 4.0)) == pytest.approx(0.0, abs=1e-5)
  # A sharp peak on the target's cell, one cell off, three cells off: the loss grows.
  near, off1, off3 = (jnp.full((1, 6, 6, 2), -8.0).at[0, r, c, :].set(8.0)
                      for r, c in ((3, 2), (3, 3), (3, 5)))
  values = [float(losses.heatmap_kl(x, centres, target[:, :1].repeat(2, 1), 4.0))
            for x in (near, off1, off3)]
  assert 0 < values[0] < values[1] < values[2]
  # A NaN target counts for nothing; its logits get no gradient and no NaN.
  nan_target = target.at[0, 1].set(jnp.nan)
  one = losses.heatmap_kl(matched[..., :1], centres, target[:, :1], 4.0)
  both = losses.heatmap_kl(off3, centres, target, 4.0, weights=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(losses.heatmap_kl(off3[..., :1], centres, target[:, :1], 4.0),
                             both, rtol=1e-6)
  grad = jax.grad(lambda x: losses.heatmap_kl(x, centres, nan_target, 4.0))(off3)
  assert np.isfinite(np.asarray(grad)).all() and not np.asarray(grad)[..., 1].any()
  assert float(one) == pytest.approx(0.0, abs=1e-5)
  with pytest.raises(ValueError, match='target must have shape'):
    losses.heatmap_kl(matched, centres, target[:, :1], 4.0)
