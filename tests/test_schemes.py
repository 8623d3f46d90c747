"""Landmark schemes: permutations, splits and normaliser points against the written conventions."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxalign import schemes
from jaxalign.schemes import AFLW19, IBUG68


def test_ibug68_sizes_and_names():
  assert IBUG68.num_points == 68 and len(IBUG68.names) == 68
  assert len(set(IBUG68.names)) == 68
  assert IBUG68.num_stable == 34 and len(IBUG68.unstable) == 34


def test_ibug68_flip_pairs_match_design():
  # DESIGN.md, written out independently of the scheme's construction.
  pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [
      (31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
      (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
  expected = list(range(68))
  for a, b in pairs:
    expected[a], expected[b] = b, a
  assert list(IBUG68.flip_permutation) == expected
  midline = [i for i in range(68) if expected[i] == i]
  assert midline == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]


@pytest.mark.parametrize('scheme', [IBUG68, AFLW19], ids=lambda s: s.name)
def test_flip_permutation_is_involution(scheme):
  p = scheme.flip_index_array()
  np.testing.assert_array_equal(p[p], np.arange(scheme.num_points))


@pytest.mark.parametrize('scheme', [IBUG68, AFLW19], ids=lambda s: s.name)
def test_flip_swaps_left_and_right_names(scheme):
  for i, j in enumerate(scheme.flip_permutation):
    a, b = scheme.names[i], scheme.names[j]
    side_a = 'left' if 'left' in a else 'right' if 'right' in a else None
    side_b = 'left' if 'left' in b else 'right' if 'right' in b else None
    assert {side_a, side_b} in ({'left', 'right'}, {None}), (a, b)
    if side_a:
      assert a.split(side_a)[0] == b.split(side_b)[0], (a, b)  # same part of the face


def test_ibug68_default_split_matches_design():
  left_midline = (list(range(17, 22)) + list(range(27, 34)) + list(range(36, 42))
                  + [48, 49, 50, 51, 57, 58, 59, 60, 61, 62, 66, 67])
  assert len(left_midline) == 30
  assert IBUG68.stable == tuple(sorted(left_midline + [22, 35, 42, 54]))
  assert set(IBUG68.stable) | set(IBUG68.unstable) == set(range(68))
  assert not set(IBUG68.stable) & set(IBUG68.unstable)
  # The whole jaw is unstable.
  assert set(range(17)) <= set(IBUG68.unstable)


def test_ibug68_normalisers_and_contour():
  assert IBUG68.inter_ocular == (36, 45)
  assert IBUG68.pupils == (tuple(range(36, 42)), tuple(range(42, 48)))
  assert IBUG68.contour == tuple(i for i in range(17) if i != 8)


def test_aflw19_split_and_normalisers():
  assert AFLW19.num_points == 19
  assert AFLW19.inter_ocular == (6, 11)
  assert set(AFLW19.stable) | set(AFLW19.unstable) == set(range(19))
  # The iBUG equivalents are consistent with the flips of both schemes.
  for i, g in enumerate(AFLW19.ibug68_equivalent):
    j = AFLW19.flip_permutation[i]
    gj = AFLW19.ibug68_equivalent[j]
    if g >= 0 and gj >= 0:
      assert IBUG68.flip_permutation[g] == gj


def test_stable_mask():
  mask = IBUG68.stable_mask()
  assert mask.sum() == 34 and mask[list(IBUG68.stable)].all()


def test_with_stable_and_errors():
  s = IBUG68.with_stable([36, 30, 17], name='tiny')
  assert s.stable == (17, 30, 36) and len(s.unstable) == 65 and s.name == 'tiny'
  with pytest.raises(ValueError, match='duplicate'):
    IBUG68.with_stable([1, 1])
  with pytest.raises(ValueError, match='out of range'):
    IBUG68.with_stable([70])


def test_invalid_scheme_rejected():
  with pytest.raises(ValueError, match='involution'):
    schemes.LandmarkScheme(
        name='bad', names=('a', 'b', 'c'), flip_permutation=(1, 2, 0), stable=(0,),
        unstable=(1, 2), inter_ocular=(0, 1), pupils=((0,), (1,)), contour=(),
        ibug68_equivalent=(-1, -1, -1))


def test_get_scheme():
  assert schemes.get_scheme('ibug68') is IBUG68
  assert schemes.get_scheme(AFLW19) is AFLW19
  with pytest.raises(ValueError, match='unknown landmark scheme'):
    schemes.get_scheme('nope')


def test_scheme_is_hashable_static_arg():
  import jax
  import jax.numpy as jnp

  fn = jax.jit(lambda x, s: x[jnp.asarray(s.stable)], static_argnums=1)
  assert fn(jnp.arange(68.0), IBUG68).shape == (34,)
  assert hash(IBUG68) == hash(IBUG68.with_stable(IBUG68.stable))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 67), min_size=1, max_size=40, unique=True))
def test_with_stable_partitions(stable):
  s = IBUG68.with_stable(stable)
  assert sorted(s.stable + s.unstable) == list(range(68))
  assert s.flip_permutation == IBUG68.flip_permutation
