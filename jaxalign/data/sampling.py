"""Pose-balanced mini-batches (the paper's sampling), deterministic and resumable.

The training shapes are aligned with generalized Procrustes analysis and reduced to one
dimension by PCA (:mod:`jaxalign.geometry`); that coefficient is mostly yaw. It is cut into
``num_bins`` equal-width bins and every batch takes the same number of examples from each
non-empty bin, so rare large poses are seen as often as frontal ones.

Batch ``t`` is a pure function of ``(seed, t)``: each bin walks through its own sequence of
shuffled epochs, and the number of draws a bin made before step ``t`` has a closed form. A
sampler therefore needs no state beyond the step to resume exactly.
"""

from __future__ import annotations

import numpy as np

from jaxalign import geometry
from jaxalign import schemes as schemes_lib


def pose_coefficients(shapes: np.ndarray, scheme=schemes_lib.IBUG68) -> np.ndarray:
  """The 1-D PCA pose coefficient of Procrustes-aligned shapes.

  Args:
    shapes: (N, L, 2) landmarks in pixels (NaN points are ignored by the Procrustes fit).
    scheme: their landmark scheme (a name or a scheme; it fixes the coefficient's sign).

  Returns:
    (N,) float64 coefficient, signed so that right-looking faces are positive
    (:func:`jaxalign.geometry.fit_pose_model`).
  """
  shapes = np.asarray(shapes, np.float32)
  if shapes.ndim != 3 or shapes.shape[-1] != 2:
    raise ValueError(f'shapes must have shape (N, L, 2), got {shapes.shape}')
  model = geometry.fit_pose_model(shapes, schemes_lib.get_scheme(scheme))
  coeff = np.asarray(geometry.pose_coefficient(model, shapes), np.float64).reshape(-1)
  return coeff


def bin_assignments(coeff: np.ndarray, num_bins: int) -> np.ndarray:
  """(N,) int bin of each coefficient over ``num_bins`` equal-width bins of its range."""
  coeff = np.asarray(coeff, np.float64)
  if num_bins <= 1 or coeff.size == 0 or np.ptp(coeff) == 0:
    return np.zeros(coeff.shape, np.int64)
  edges = np.linspace(coeff.min(), coeff.max(), num_bins + 1)
  return np.clip(np.searchsorted(edges, coeff, side='right') - 1, 0, num_bins - 1)


class BalancedSampler:
  """Record indices for every training step, drawn evenly from the pose bins.

  Each non-empty bin gets ``batch_size // K`` examples per batch (``K`` non-empty bins); the
  ``batch_size % K`` remaining slots rotate over the bins. Within a bin, examples come from
  successive random permutations (epochs) of its members, each seeded by ``(seed, bin,
  epoch)``, so every member is seen once per bin-epoch.

  Attributes:
    bins: list of (n_k,) int arrays, the record indices of each non-empty bin.
    batch_size: examples per batch.
    seed: sampling seed.
  """

  def __init__(self, bins_of_records: np.ndarray, batch_size: int, seed: int):
    bins_of_records = np.asarray(bins_of_records, np.int64)
    if bins_of_records.size == 0:
      raise ValueError('cannot sample batches from an empty training set')
    if batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    self.bins = [np.flatnonzero(bins_of_records == b) for b in np.unique(bins_of_records)]
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

  @classmethod
  def from_shapes(cls, shapes, batch_size: int, seed: int, num_bins: int,
                  balanced: bool = True, scheme=schemes_lib.IBUG68) -> 'BalancedSampler':
    """Bins (N, L, 2) training shapes by pose; ``balanced=False`` gives one bin (uniform)."""
    n = len(shapes)
    if not balanced or num_bins <= 1 or n < 2:
      return cls(np.zeros(n, np.int64), batch_size, seed)
    return cls(bin_assignments(pose_coefficients(shapes, scheme), num_bins), batch_size, seed)

  @property
  def bin_sizes(self) -> list[int]:
    return [len(b) for b in self.bins]

  def _draws_before(self, k: int, step: int) -> int:
    """How many examples bin ``k`` gave to steps 0 .. step - 1."""
    num = len(self.bins)
    base, extra = divmod(self.batch_size, num)
    # The extra slots of step s go to bins (s * extra + j) % num, j < extra: over steps
    # 0 .. step-1 that is positions 0 .. step*extra-1, of which bin k holds those = k mod num.
    total_extra = step * extra
    ext = (total_extra - k + num - 1) // num if total_extra > k else 0
    return step * base + ext

  def _counts(self, step: int) -> list[int]:
    num = len(self.bins)
    base, extra = divmod(self.batch_size, num)
    counts = [base] * num
    for j in range(extra):
      counts[(step * extra + j) % num] += 1
    return counts

  def _permutation(self, k: int, epoch: int) -> np.ndarray:
    key = (k, epoch)
    if key not in self._perm_cache:
      if len(self._perm_cache) > 4 * len(self.bins):
        self._perm_cache.clear()
      rng = np.random.default_rng([self.seed, k, epoch])
      self._perm_cache[key] = self.bins[k][rng.permutation(len(self.bins[k]))]
    return self._perm_cache[key]

  def _take(self, k: int, start: int, count: int) -> np.ndarray:
    size = len(self.bins[k])
    out = []
    pos = start
    while len(out) < count:
      epoch, offset = divmod(pos, size)
      chunk = self._permutation(k, epoch)[offset:offset + count - len(out)]
      out.extend(chunk.tolist())
      pos += len(chunk)
    return np.asarray(out, np.int64)

  def batch_indices(self, step: int) -> np.ndarray:
    """(batch_size,) record indices of training step ``step`` (0-based), bin by bin."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    parts = [self._take(k, self._draws_before(k, step), c)
             for k, c in enumerate(self._counts(step)) if c]
    return np.concatenate(parts)

  def replacement(self, index: int, attempt: int) -> int:
    """A deterministic stand-in for record ``index`` (e.g. an unreadable image): a member of
    the same bin chosen from ``(seed, index, attempt)``."""
    for members in self.bins:
      if index in members:
        rng = np.random.default_rng([self.seed, index, attempt, 7])
        return int(members[rng.integers(len(members))])
    raise ValueError(f'record {index} is in no bin')

  def state(self) -> dict:
    """What identifies this sampler's sequence (checked on resume)."""
    return {'seed': self.seed, 'batch_size': self.batch_size, 'bin_sizes': self.bin_sizes}
