"""Pose-balanced sampling: bins, even draws, determinism, resumability."""

import numpy as np
import pytest

from jaxalign.data import sampling


def _shapes(yaws, seed=0):
  """Toy 68-point shapes whose nose moves horizontally with ``yaw`` (a pose-like mode)."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(20, 80, (68, 2)).astype(np.float32)
  out = []
  for yaw in yaws:
    s = base.copy()
    s[27:36, 0] += yaw * 10.0   # nose points shift with the pose
    s[0:8, 0] += yaw * 4.0
    out.append(s + rng.normal(0, 0.1, s.shape))
  return np.stack(out).astype(np.float32)


def test_bin_assignments_equal_width():
  coeff = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
  np.testing.assert_array_equal(sampling.bin_assignments(coeff, 2), [0, 0, 1, 1, 1])
  assert sampling.bin_assignments(np.ones(4), 3).tolist() == [0, 0, 0, 0]


def test_pose_coefficient_orders_poses():
  yaws = np.linspace(-1, 1, 21)
  coeff = sampling.pose_coefficients(_shapes(yaws))
  # One monotone direction (the sign is geometry's choice): |corr| ~ 1.
  assert abs(np.corrcoef(coeff, yaws)[0, 1]) > 0.99


def test_batches_drawn_evenly_from_bins():
  # 90 near-frontal, 10 extreme faces: a uniform sampler would give 10 % extreme examples.
  yaws = np.concatenate([np.random.default_rng(1).uniform(-0.1, 0.1, 90), np.full(10, 1.0)])
  sampler = sampling.BalancedSampler.from_shapes(_shapes(yaws), 8, seed=3, num_bins=2)
  assert sorted(sampler.bin_sizes) == [10, 90]
  extreme = set(np.flatnonzero(yaws > 0.5).tolist())
  counts = [sum(int(i) in extreme for i in sampler.batch_indices(t)) for t in range(20)]
  assert all(c == 4 for c in counts)


def test_remainder_slots_rotate_and_closed_form_matches():
  sampler = sampling.BalancedSampler(np.arange(30) % 3, batch_size=8, seed=0)
  total = np.zeros(3, int)
  for t in range(12):
    idx = sampler.batch_indices(t)
    assert len(idx) == 8
    total += np.bincount(np.asarray(idx) % 3, minlength=3)
    for k in range(3):
      assert sampler._draws_before(k, t + 1) == total[k]
  assert total.max() - total.min() <= 1


def test_each_bin_epoch_covers_members_once():
  sampler = sampling.BalancedSampler(np.zeros(12, int), batch_size=4, seed=5)
  seen = np.concatenate([sampler.batch_indices(t) for t in range(3)])
  assert sorted(seen.tolist()) == list(range(12))


def test_deterministic_and_resumable():
  bins = np.arange(50) % 4
  a = sampling.BalancedSampler(bins, 6, seed=9)
  b = sampling.BalancedSampler(bins, 6, seed=9)
  seq = [a.batch_indices(t).tolist() for t in range(30)]
  # A fresh sampler asked for step 17 first (a resumed run) gives the same batch.
  assert b.batch_indices(17).tolist() == seq[17]
  assert [b.batch_indices(t).tolist() for t in range(30)] == seq
  c = sampling.BalancedSampler(bins, 6, seed=10)
  assert [c.batch_indices(t).tolist() for t in range(30)] != seq


def test_unbalanced_is_one_bin_and_replacement_stays_in_bin():
  s = sampling.BalancedSampler.from_shapes(_shapes(np.zeros(5)), 4, seed=0, num_bins=3,
                                           balanced=False)
  assert s.bin_sizes == [5]
  bins = np.array([0, 0, 1, 1, 1])
  s = sampling.BalancedSampler(bins, 4, seed=0)
  assert all(s.replacement(3, a) in (2, 3, 4) for a in range(10))


def test_errors():
  with pytest.raises(ValueError, match='empty'):
    sampling.BalancedSampler(np.zeros(0, int), 4, 0)
  with pytest.raises(ValueError, match='step'):
    sampling.BalancedSampler(np.zeros(3, int), 4, 0).batch_indices(-1)
