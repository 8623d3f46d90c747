"""Landmark schemes: the one place that knows a markup's points, flip and SL/UL split.

A :class:`LandmarkScheme` is immutable (a frozen dataclass of tuples) and hashable, so it can be
a static argument of a jitted function. Every module that needs a flip permutation, the stable /
unstable split, normaliser points or contour points reads them from here; nothing else keeps a
copy.

Conventions (see ``docs/method.md``): indices are 0-based; "left" and "right" are the viewer's,
so in the iBUG markup point 0 is the jaw end at the viewer's left and 36 the outer corner of the
eye at the viewer's left. A right-looking face (yaw > 0 in eos's convention) shows its
viewer's-left half, which is why the stable set is drawn from that half.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LandmarkScheme:
  """An immutable landmark markup.

  Attributes:
    name: short identifier ("ibug68", "aflw19").
    names: one human-readable name per point (viewer's left/right).
    flip_permutation: ``p`` such that the mirrored image's point ``i`` is the original's point
      ``p[i]``; an involution (``p[p[i]] == i``).
    stable: indices of the stable landmarks (SL), visible on a right-looking face, sorted.
    unstable: the complement of ``stable`` (UL), sorted.
    inter_ocular: the two outer eye corners (viewer's left eye first).
    pupils: the two groups of points whose means are the eye centres (viewer's left first).
    contour: indices of face-contour points whose 2D position follows the silhouette.
    ibug68_equivalent: for each point the iBUG-68 index of the same anatomical point, or -1
      where there is no exact equivalent (identity for IBUG68).
  """

  name: str
  names: tuple[str, ...]
  flip_permutation: tuple[int, ...]
  stable: tuple[int, ...]
  unstable: tuple[int, ...]
  inter_ocular: tuple[int, int]
  pupils: tuple[tuple[int, ...], tuple[int, ...]]
  contour: tuple[int, ...]
  ibug68_equivalent: tuple[int, ...]

  def __post_init__(self):
    n = len(self.names)
    perm = self.flip_permutation
    if sorted(perm) != list(range(n)):
      raise ValueError(f'{self.name}: flip_permutation is not a permutation of {n} points')
    if any(perm[perm[i]] != i for i in range(n)):
      raise ValueError(f'{self.name}: flip_permutation is not an involution')
    if sorted(self.stable + self.unstable) != list(range(n)):
      raise ValueError(f'{self.name}: stable and unstable must partition the {n} points')
    if list(self.stable) != sorted(self.stable) or list(self.unstable) != sorted(self.unstable):
      raise ValueError(f'{self.name}: stable and unstable must be sorted')
    if len(self.ibug68_equivalent) != n:
      raise ValueError(f'{self.name}: ibug68_equivalent needs one entry per point')
    for group in (self.inter_ocular, *self.pupils, self.contour):
      if any(not 0 <= i < n for i in group):
        raise ValueError(f'{self.name}: index out of range in {group}')

  @property
  def num_points(self) -> int:
    return len(self.names)

  @property
  def num_stable(self) -> int:
    return len(self.stable)

  def flip_index_array(self) -> np.ndarray:
    """The flip permutation as an int32 array (usable with numpy and jnp indexing)."""
    return np.asarray(self.flip_permutation, np.int32)

  def stable_mask(self) -> np.ndarray:
    """Boolean (num_points,) array, True at the stable landmarks."""
    mask = np.zeros(self.num_points, bool)
    mask[list(self.stable)] = True
    return mask

  def with_stable(self, stable: Sequence[int], name: str | None = None) -> 'LandmarkScheme':
    """The same scheme with another stable set (the unstable set is its complement).

    Used for the experiments on which right-side points to keep; the split stays in one object.
    """
    stable = tuple(sorted(int(i) for i in stable))
    if len(set(stable)) != len(stable):
      raise ValueError(f'{self.name}: duplicate index in stable set {stable}')
    if any(not 0 <= i < self.num_points for i in stable):
      raise ValueError(f'{self.name}: stable index out of range in {stable}')
    unstable = tuple(i for i in range(self.num_points) if i not in stable)
    return dataclasses.replace(
        self, name=name or self.name, stable=stable, unstable=unstable)


def _ibug68() -> LandmarkScheme:
  names = (
      [f'jaw_{i:02d}' for i in range(17)]
      + [f'brow_left_{i}' for i in range(5)] + [f'brow_right_{i}' for i in range(5)]
      + [f'nose_bridge_{i}' for i in range(4)] + [f'nose_lower_{i}' for i in range(5)]
      + [f'eye_left_{i}' for i in range(6)] + [f'eye_right_{i}' for i in range(6)]
      + [f'lip_outer_{i:02d}' for i in range(12)] + [f'lip_inner_{i}' for i in range(8)])
  perm = list(range(68))

  def pair(a, b):
    perm[a], perm[b] = b, a

  for i in range(8):
    pair(i, 16 - i)                       # jaw
  for i in range(5):
    pair(17 + i, 26 - i)                  # brows
  pair(31, 35); pair(32, 34)              # lower nose
  for a, b in ((36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)):
    pair(a, b)                            # eyes
  for a, b in ((48, 54), (49, 53), (50, 52), (55, 59), (56, 58)):
    pair(a, b)                            # outer lip
  pair(60, 64); pair(61, 63); pair(65, 67)  # inner lip
  left_and_midline = (
      list(range(17, 22)) + list(range(27, 31)) + list(range(31, 34)) + list(range(36, 42))
      + list(range(48, 52)) + list(range(57, 60)) + list(range(60, 63)) + [66, 67])
  stable = tuple(sorted(left_and_midline + [22, 35, 42, 54]))
  unstable = tuple(i for i in range(68) if i not in stable)
  return LandmarkScheme(
      name='ibug68', names=tuple(names), flip_permutation=tuple(perm),
      stable=stable, unstable=unstable, inter_ocular=(36, 45),
      pupils=(tuple(range(36, 42)), tuple(range(42, 48))),
      contour=tuple(i for i in range(17) if i != 8),
      ibug68_equivalent=tuple(range(68)))


def _aflw19() -> LandmarkScheme:
  # AFLW-Full: AFLW's 21 points without the two ears, in the order of the CFSS/LAB
  # AFLWinfo_release.mat release: brows 0-5, eyes 6-11 (corner, centre, corner), nose 12-14,
  # mouth 15-17, chin 18. Viewer's left first.
  names = ('brow_left_outer', 'brow_left_centre', 'brow_left_inner',
           'brow_right_inner', 'brow_right_centre', 'brow_right_outer',
           'eye_left_outer', 'eye_left_centre', 'eye_left_inner',
           'eye_right_inner', 'eye_right_centre', 'eye_right_outer',
           'nose_left', 'nose_centre', 'nose_right',
           'mouth_left', 'mouth_centre', 'mouth_right', 'chin')
  perm = list(range(19))
  for a, b in ((0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 14), (15, 17)):
    perm[a], perm[b] = b, a
  # SL: the viewer's-left half and the midline above the chin, plus the two inner points of the
  # right half (inner brow, inner eye corner) that stay visible under large yaw, as the iBUG
  # split keeps 22 and 42. UL: the rest of the right half and the chin (a contour point in 2D).
  stable = (0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 15, 16)
  unstable = tuple(i for i in range(19) if i not in stable)
  # Eye centres have no single iBUG point (mean of the eye ring); the AFLW mouth centre is the
  # centre of the lips, nearest iBUG 66/62; we map it to 66 only as an approximation -> -1.
  ibug = (17, 19, 21, 22, 24, 26, 36, -1, 39, 42, -1, 45, 31, 30, 35, 48, -1, 54, 8)
  return LandmarkScheme(
      name='aflw19', names=names, flip_permutation=tuple(perm), stable=stable,
      unstable=unstable, inter_ocular=(6, 11), pupils=((7,), (10,)), contour=(),
      ibug68_equivalent=ibug)


IBUG68 = _ibug68()
AFLW19 = _aflw19()

SCHEMES = {s.name: s for s in (IBUG68, AFLW19)}


def get_scheme(name: str | LandmarkScheme) -> LandmarkScheme:
  """Looks a scheme up by name ("ibug68", "aflw19"); passes a scheme object through."""
  if isinstance(name, LandmarkScheme):
    return name
  try:
    return SCHEMES[name]
  except KeyError:
    raise ValueError(f'unknown landmark scheme {name!r}; known: {sorted(SCHEMES)}') from None
