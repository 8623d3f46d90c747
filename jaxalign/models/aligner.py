"""The pose-aware two-CNN aligner of Li et al. (BMVC 2019), the plain baseline, and their losses.

:class:`PoseAwareAligner` (all of it jit-compiled, shape-static, no loops over the batch)::

  images (B, S, S, 3), 0..255
    -> CNN1 -> rough (B, L, 2)                                   [input pixels]
    -> spatial transform: one (2, 3) matrix per face = [mirror if the rough shape is
       left-looking] then the least-squares similarity from the (mirrored) rough shape onto
       the canonical shape                                       [no gradient: stop_gradient]
    -> warp_images -> (B, S2, S2, 3) -> CNN2 -> SLs (B, K, 2)     [canonical-frame pixels]
    -> inverse matrix -> SLs in input pixels; a mirrored face's SL k is the original's point
       ``flip_permutation[stable[k]]`` (un-flip = index permutation; the inverse matrix already
       undoes the mirror of the coordinates)

:class:`PlainAligner` is the paper's "original ResNet-50" baseline: one network regressing all L
points.

Both models are in NNX training mode after construction (BatchNorm uses batch statistics and
updates its running averages); call ``model.eval()`` for inference and ``model.train()`` to go
back. Their fixed shapes (the regression heads' mean shapes and the canonical shape) are
:class:`~jaxalign.models.resnet.ModelConstant` variables: saved with ``nnx.state(model)``, never
touched by an optimiser built on ``nnx.Param``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign import geometry
from jaxalign import losses
from jaxalign import schemes as schemes_lib
from jaxalign import transforms
from jaxalign.morphable import pose as pose_lib
from jaxalign.models.resnet import LandmarkRegressor, ModelConstant, ResNetSpec

# The default frontal iBUG-68 shape, derived from the Surrey Face Model's mean mesh by
# :func:`frontal_shape_from_sfm` (orthographic frontal view, x right, y down, model units ~ mm,
# made exactly left-right symmetric); ``tests/test_aligner.py`` recomputes it from the model
# files. Used only when no training mean shape is given.
_SFM_FRONTAL_IBUG68 = np.array([
    (-73.7, -34.6), (-73.3, -15.4), (-71.6, 3.8), (-66.6, 22.4),
    (-60.1, 40.6), (-49.6, 56.7), (-35.1, 69.3), (-18.6, 79.2),
    (0.0, 79.4), (18.6, 79.2), (35.1, 69.3), (49.6, 56.7),
    (60.1, 40.6), (66.6, 22.4), (71.6, 3.8), (73.3, -15.4),
    (73.7, -34.6), (-56.7, -46.6), (-49.6, -53.3), (-37.4, -55.6),
    (-26.1, -54.6), (-11.8, -50.8), (11.8, -50.8), (26.1, -54.6),
    (37.4, -55.6), (49.6, -53.3), (56.7, -46.6), (0.0, -40.7),
    (0.0, -24.4), (0.0, -9.7), (0.0, 2.0), (-12.2, 13.6),
    (-7.0, 16.0), (0.0, 17.2), (7.0, 16.0), (12.2, 13.6),
    (-46.2, -34.6), (-36.2, -37.9), (-26.3, -38.7), (-19.1, -31.6),
    (-29.3, -28.7), (-35.5, -30.4), (19.1, -31.6), (26.3, -38.7),
    (36.2, -37.9), (46.2, -34.6), (35.5, -30.4), (29.3, -28.7),
    (-23.7, 35.8), (-19.1, 30.6), (-6.5, 27.9), (0.0, 28.3),
    (6.5, 27.9), (19.1, 30.6), (23.7, 35.8), (18.1, 40.0),
    (9.1, 44.2), (0.0, 44.7), (-9.1, 44.2), (-18.1, 40.0),
    (-22.2, 35.2), (-13.2, 35.2), (0.0, 35.3), (13.2, 35.2),
    (22.2, 35.2), (13.2, 35.3), (0.0, 35.4), (-13.2, 35.3),
], np.float32)

DEFAULT_FILL = 0.7


def frontal_shape_from_sfm(model) -> np.ndarray:
  """A frontal, left-right symmetric iBUG-68 shape from a Surrey Face Model's mean mesh.

  The 50 points with a model vertex are the orthographic frontal projection of their vertex
  (x, -y). The 16 contour points have none: each side's model contour (``contour_right`` /
  ``contour_left``, ear to chin) is cut at the height of the outer eye corners and points 0-7
  (16-9) are spaced evenly by arc length from there to the chin vertex (point 8), the 2D
  (300-W) jaw convention on a frontal face. The inner mouth corners 60 and 64 sit at the height
  of the inner lips, 15 % of the way from the outer corner to the inner lip midpoints. The shape
  is then averaged with its mirror image so that it is exactly symmetric.

  Args:
    model: a :class:`jaxalign.morphable.model.SurreyModel`.

  Returns:
    (68, 2) float32 in model units (about millimetres), centred near the nose.
  """
  v = np.asarray(model.mean, np.float64)
  xy = np.stack([v[:, 0], -v[:, 1]], 1)
  pts = np.full((68, 2), np.nan)
  has = np.asarray(model.ibug_vertex) >= 0
  pts[has] = xy[np.asarray(model.ibug_vertex)[has]]
  eye_y = (pts[36, 1] + pts[45, 1]) / 2

  def jaw_side(contour):
    seg = np.concatenate([xy[np.asarray(contour)], pts[8][None]], 0)
    k = int(np.argmax(seg[:, 1] >= eye_y))
    if k > 0:  # start exactly at eye height
      t = (eye_y - seg[k - 1, 1]) / (seg[k, 1] - seg[k - 1, 1])
      seg = np.concatenate([(seg[k - 1] + t * (seg[k] - seg[k - 1]))[None], seg[k:]], 0)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(seg, axis=0), axis=1))]
    s = np.linspace(0.0, arc[-1], 9)[:8]
    return np.stack([np.interp(s, arc, seg[:, 0]), np.interp(s, arc, seg[:, 1])], 1)

  pts[0:8] = jaw_side(model.contour_right)
  pts[16:8:-1] = jaw_side(model.contour_left)
  for inner, outer, upper, lower in ((60, 48, 61, 67), (64, 54, 63, 65)):
    mid = (pts[upper] + pts[lower]) / 2
    pts[inner] = [0.85 * pts[outer, 0] + 0.15 * mid[0], mid[1]]
  mirrored = pts[schemes_lib.IBUG68.flip_index_array()] * np.array([-1.0, 1.0])
  return ((pts + mirrored) / 2).astype(np.float32)


def place_shape(shape, image_size: int, fill: float = DEFAULT_FILL) -> np.ndarray:
  """Scales and centres a (L, 2) shape so that its bounding box's longer side spans ``fill``
  of a square ``image_size`` image, centred on the image centre ``(image_size - 1) / 2``."""
  shape = np.asarray(shape, np.float64)
  if shape.ndim != 2 or shape.shape[1] != 2 or not np.all(np.isfinite(shape)):
    raise ValueError(f'shape must be a finite (L, 2) array, got shape {shape.shape}')
  lo, hi = shape.min(0), shape.max(0)
  extent = float(np.max(hi - lo))
  if extent <= 0:
    raise ValueError('shape has zero extent')
  scale = fill * image_size / extent
  return ((shape - (lo + hi) / 2) * scale + (image_size - 1) / 2.0).astype(np.float32)


def default_shape(scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68,
                  image_size: int = 224, fill: float = DEFAULT_FILL) -> np.ndarray:
  """The built-in frontal mean shape of ``scheme`` placed in a square image (see
  :func:`place_shape`). Other schemes take their iBUG-68 equivalents; points without one start
  at the shape's centroid. Meant as a stand-in: pass the training set's mean shape instead."""
  template = _SFM_FRONTAL_IBUG68
  if scheme.name != schemes_lib.IBUG68.name:
    idx = np.asarray(scheme.ibug68_equivalent)
    template = np.where((idx >= 0)[:, None], _SFM_FRONTAL_IBUG68[np.maximum(idx, 0)],
                        _SFM_FRONTAL_IBUG68.mean(0))
  return place_shape(template, image_size, fill)


def mean_shape_from_training(shapes) -> np.ndarray:
  """Per-point mean of (N, L, 2) training shapes in network-input pixels (NaN ignored): CNN1's
  (and the baseline's) starting guess, and the trivial mean-shape predictor."""
  shapes = np.asarray(shapes, np.float64)
  if shapes.ndim != 3 or shapes.shape[-1] != 2:
    raise ValueError(f'shapes must have shape (N, L, 2), got {shapes.shape}')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN columns: reported below
    mean = np.nanmean(shapes, axis=0)
  if not np.all(np.isfinite(mean)):
    raise ValueError('some landmark is missing (NaN) in every training shape')
  return mean.astype(np.float32)


def canonical_shape_from_training(
    shapes, image_size: int, scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68,
    fill: float = DEFAULT_FILL, flip_threshold: float = 0.0, frame_points=None) -> np.ndarray:
  """The canonical frame for CNN2 from training shapes.

  Left-looking shapes are mirrored first (the frame CNN2 works in only holds frontal and
  right-looking faces), then generalized Procrustes analysis gives their mean, which is
  rotated so that the line through the two outer eye corners is horizontal and placed in the
  square CNN2 input with :func:`place_shape`.

  Args:
    shapes: (N, L, 2) shapes in any pixel frame (NaN = missing).
    image_size: side of CNN2's input.
    scheme: the landmark scheme of ``shapes``.
    fill: fraction of the input side spanned by the shape's bounding box.
    flip_threshold: yaw in degrees below which (i.e. < -threshold) a shape counts as
      left-looking, as in :class:`PoseAwareAligner`.
    frame_points: indices of the points whose bounding box spans ``fill`` (default all; the
      pose-aware model frames its stable points, the only ones CNN2 predicts).

  Returns:
    (L, 2) float32 in CNN2-input pixels.
  """
  shapes = jnp.asarray(shapes, jnp.float32)
  if shapes.ndim != 3 or shapes.shape[1:] != (scheme.num_points, 2):
    raise ValueError(f'shapes must have shape (N, {scheme.num_points}, 2), got {shapes.shape}')
  yaw = pose_lib.estimate_pose(shapes, scheme)[..., 0]
  left = pose_lib.is_left_looking(yaw, flip_threshold)
  # Mirror about x = 0: the mirror's offset does not matter to Procrustes.
  mirrored = transforms.flip_landmarks(shapes, 1.0, scheme)
  shapes = jnp.where(left[:, None, None], mirrored, shapes)
  mean = np.asarray(geometry.procrustes(shapes).mean, np.float64)
  a, b = scheme.inter_ocular
  d = mean[b] - mean[a]
  angle = np.arctan2(d[1], d[0])
  rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
  mean = mean @ rot.T
  if frame_points is None:
    return place_shape(mean, image_size, fill)
  # Scale and centre on the framed points' box; the other points follow the same map.
  framed = mean[np.asarray(frame_points)]
  lo, hi = framed.min(0), framed.max(0)
  scale = fill * image_size / float(np.max(hi - lo))
  return ((mean - (lo + hi) / 2) * scale + (image_size - 1) / 2.0).astype(np.float32)


def _check_shape(name, value, num_points):
  value = np.asarray(value, np.float32)
  if value.shape != (num_points, 2) or not np.all(np.isfinite(value)):
    raise ValueError(f'{name} must be a finite ({num_points}, 2) array, got {value.shape}')
  return value


def mirror_averaged(net, images: jax.Array, scheme: schemes_lib.LandmarkScheme,
                    offset: jax.Array | None = None) -> jax.Array:
  """Test-time mirror averaging: ``net``'s (B, L, 2) points on ``images`` (B, S, S, 3),
  averaged with its points on the mirrored images mapped back (x -> S - 1 - x, indices permuted
  by the scheme). ``offset`` (L, 2), when given, is added to the points on the mirrored images
  before they are mapped back (the network's learned mirror offset, :func:`masked_mirror_offset`).
  Two forward passes; beyond the paper (``config.eval.mirror_tta``)."""
  points = net(images)
  mirrored = net(images[:, :, ::-1])
  if offset is not None:
    mirrored = mirrored + offset[None]
  return 0.5 * (points + transforms.flip_landmarks(mirrored, images.shape[2], scheme))


def masked_mirror_offset(offset: nnx.Param | None, mirrored: jax.Array,
                         num_points: int) -> jax.Array:
  """(B, N, 2): a network's learned mirror offset ``offset`` ((N, 2) input pixels) on the faces
  it sees mirrored relative to their annotation (``mirrored`` (B,) bool), zero elsewhere and
  without one (None). Beyond the paper.

  Why: 300-W's annotations are not mirror-symmetric (docs/experiments/cpu_300w.md, session 23),
  so the mirror of an annotated face is not how the annotators would have marked the mirrored
  face: a network that sees some faces mirrored is trained towards two conventions at once. The
  offset, zero at the start, takes up the difference, so the network learns one.
  """
  if offset is None:
    return jnp.zeros((mirrored.shape[0], int(num_points), 2), jnp.float32)
  return jnp.where(mirrored[:, None, None], offset[...][None], 0.0)


def rough_points(net, offset: nnx.Param | None, images: jax.Array,
                 scheme: schemes_lib.LandmarkScheme, mirror_tta: bool = False) -> jax.Array:
  """CNN1's (B, L, 2) points at test time: ``net`` on ``images``, or with ``mirror_tta`` its
  mirror average (:func:`mirror_averaged`) with its learned mirror ``offset`` when it has one."""
  if not mirror_tta:
    return net(images)
  return mirror_averaged(net, images, scheme, None if offset is None else offset[...])


def _scatter_points(base, indices, values):
  """base (B, L, 2) with base[b, indices[b, k]] = values[b, k]; indices (B, K)."""
  return jax.vmap(lambda r, i, v: r.at[i].set(v))(base, indices, values)


class PoseAwareAligner(nnx.Module):
  """CNN1 -> spatial transform -> CNN2 -> stable landmarks (see the module docstring).

  Args:
    depth: ResNet depth or spec of CNN1 (and of CNN2 unless ``cnn2_depth`` is given).
    image_size: side of the square input images (CNN1's input).
    cnn2_depth: ResNet depth or spec of CNN2 (default ``depth``).
    cnn2_image_size: side of CNN2's input, the canonical frame (default ``image_size``).
    scheme: the landmark scheme (its ``stable`` set is what CNN2 predicts).
    mean_shape: (L, 2) CNN1's starting guess in input pixels (default: :func:`default_shape`).
    canonical_shape: (L, 2) the canonical frame in CNN2-input pixels; CNN2's starting guess is
      its stable points (default: :func:`default_shape` at ``cnn2_image_size``).
    transform_weights: optional (L,) weights of the points in the similarity fit (default:
      all points equally; e.g. ``scheme.stable_mask()`` to ignore the contour).
    flip_threshold: a rough shape whose yaw is below ``-flip_threshold`` degrees is mirrored
      (default 0: every left-looking face). The yaw is the rigid fit of the Surrey mean face
      to the rough points (:func:`jaxalign.morphable.pose.pose_from_reference`).
    pose_reference: (L, 3) the mean face's points for that fit
      (:func:`jaxalign.morphable.pose.reference_points`, which reads the model files); the
      model keeps it as a constant, so constructing a model reads no file.
    dtype: compute dtype of both CNNs (float32 or bfloat16; parameters stay float32).
    bn_momentum, zero_init_residual: see :class:`~jaxalign.models.resnet.ResNet`.
    head, heatmap_stride: both CNNs' head ('mean', 'flatten' or 'heatmap') and the heatmap
      head's stride: see :class:`~jaxalign.models.resnet.LandmarkRegressor`.
    mirror_offset: a learned (K, 2) offset in CNN2's frame pixels added to its points on the
      faces it sees mirrored (zero at the start; beyond the paper): an annotation offset that
      does not mirror with the face is one thing on CNN2's mirrored faces and another on the
      rest, which CNN2 alone cannot tell apart (:meth:`mirror_shift`).
    cnn1_mirror_offset: the same for CNN1 (an (L, 2) offset in its input pixels,
      :func:`masked_mirror_offset`), on the faces the augmentation mirrors (``augment.mirror_prob``)
      and on the mirrored pass of the test-time mirror averaging (``mirror_tta``).
    rngs: ``nnx.Rngs`` with a ``params`` stream.
  """

  def __init__(self, *, depth: int | str | ResNetSpec = 50, image_size: int = 224,
               cnn2_depth: int | str | ResNetSpec | None = None,
               cnn2_image_size: int | None = None,
               scheme: schemes_lib.LandmarkScheme | str = schemes_lib.IBUG68,
               mean_shape=None, canonical_shape=None, transform_weights=None,
               flip_threshold: float = pose_lib.FLIP_THRESHOLD_DEG, pose_reference=None,
               dtype=jnp.float32, bn_momentum: float = 0.9,
               zero_init_residual: bool = False, head: str = 'mean', heatmap_stride: int = 8,
               mirror_offset: bool = False, cnn1_mirror_offset: bool = False,
               rngs: nnx.Rngs):
    self.scheme = schemes_lib.get_scheme(scheme)
    num_points = self.scheme.num_points
    self.image_size = int(image_size)
    self.cnn2_image_size = int(cnn2_image_size or image_size)
    self.flip_threshold = float(flip_threshold)
    if mean_shape is None:
      mean_shape = default_shape(self.scheme, self.image_size)
    if canonical_shape is None:
      canonical_shape = default_shape(self.scheme, self.cnn2_image_size)
    mean_shape = _check_shape('mean_shape', mean_shape, num_points)
    canonical_shape = _check_shape('canonical_shape', canonical_shape, num_points)
    if transform_weights is None:
      transform_weights = np.ones(num_points, np.float32)
    transform_weights = np.asarray(transform_weights, np.float32)
    if transform_weights.shape != (num_points,) or np.any(transform_weights < 0) or (
        np.count_nonzero(transform_weights) < 2):
      raise ValueError(f'transform_weights must be ({num_points},) non-negative with at least '
                       f'two positive entries, got {transform_weights}')
    common = dict(dtype=dtype, bn_momentum=bn_momentum, zero_init_residual=zero_init_residual,
                  head=head, heatmap_stride=heatmap_stride, rngs=rngs)
    self.cnn1 = LandmarkRegressor(num_points, depth=depth, image_size=self.image_size,
                                  mean_shape=mean_shape, **common)
    stable = np.asarray(self.scheme.stable)
    self.cnn2 = LandmarkRegressor(
        len(stable), depth=depth if cnn2_depth is None else cnn2_depth,
        image_size=self.cnn2_image_size, mean_shape=canonical_shape[stable], **common)
    self.uses_mirror_offset = bool(mirror_offset)
    if self.uses_mirror_offset:
      self.mirror_offset = nnx.Param(jnp.zeros((len(stable), 2), jnp.float32))
    self.cnn1_mirror_offset = (nnx.Param(jnp.zeros((num_points, 2), jnp.float32))
                               if cnn1_mirror_offset else None)
    self.canonical_shape = ModelConstant(jnp.asarray(canonical_shape))
    self.transform_weights = ModelConstant(jnp.asarray(transform_weights))
    # The flip decision: a rigid fit of the mean 3D face, which unlike the 2D nose-ratio yaw of
    # jaxalign.geometry does not wrap around near profile (a wrong flip hands CNN2 the hidden
    # half of the face).
    if pose_reference is None:
      raise ValueError('PoseAwareAligner needs pose_reference: the (L, 3) mean-face points of '
                       'jaxalign.morphable.pose.reference_points(scheme=...)')
    pose_reference = np.asarray(pose_reference, np.float32)
    if pose_reference.shape != (num_points, 3):
      raise ValueError(f'pose_reference must be ({num_points}, 3), got {pose_reference.shape}')
    self.pose_reference = ModelConstant(jnp.asarray(pose_reference))

  # The index arrays are derived from the (static, hashable) scheme; numpy constants fold into
  # the compiled program.
  @property
  def stable_indices(self) -> np.ndarray:
    return np.asarray(self.scheme.stable, np.int32)

  @property
  def mirrored_stable_indices(self) -> np.ndarray:
    """Original-image index of each CNN2 output for a mirrored face."""
    return self.scheme.flip_index_array()[self.stable_indices]

  def spatial_transform(self, rough: jax.Array, flipped: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array]:
    """The per-face input -> canonical-frame matrix and whether the face was mirrored.

    Args:
      rough: (B, L, 2) points in input pixels (CNN1's output, or ground truth).
      flipped: (B,) bool to force the mirror decision (training with ground-truth transforms);
        None: :func:`jaxalign.morphable.pose.is_left_looking` of the rigid-fit yaw of
        ``rough``.

    Returns:
      matrix (B, 2, 3) float32, flipped (B,) bool. Not differentiated: the caller decides
      whether to stop gradients (the model and the losses do). A degenerate shape (all points
      coincident or missing, where the similarity is undefined) gets the transform of CNN1's
      mean shape instead, unflipped, so that no NaN reaches the warp.
    """
    canonical = self.canonical_shape[...]
    weights = self.transform_weights[...]
    if flipped is None:
      yaw = pose_lib.pose_from_reference(rough, self.pose_reference[...])[:, 0]
      # NaN yaw (too few points): not flipped.
      flipped = pose_lib.is_left_looking(yaw, self.flip_threshold)
    mirrored = transforms.flip_landmarks(rough, self.image_size, self.scheme)
    src = jnp.where(flipped[:, None, None], mirrored, rough)
    sim = geometry.estimate_similarity(src, canonical[None], weights[None])
    flip = transforms.hflip_matrix(self.image_size)
    matrix = jnp.where(flipped[:, None, None], transforms.compose(flip, sim), sim)
    fallback = geometry.estimate_similarity(self.cnn1.mean_shape[...], canonical, weights)
    ok = jnp.all(jnp.isfinite(matrix), axis=(-2, -1)) & (
        jnp.abs(jnp.linalg.det(matrix[..., :2])) > 1e-8)
    matrix = jnp.where(ok[:, None, None], matrix, fallback[None])
    return matrix, flipped & ok

  def cnn2_targets(self, points: jax.Array, matrix: jax.Array, flipped: jax.Array) -> jax.Array:
    """Ground-truth (B, L, 2) input-pixel points -> CNN2's (B, K, 2) targets in its frame.

    Warped by ``matrix``; for a mirrored face the warped face's point i is the original's
    ``flip_permutation[i]``, so the stable targets are the warped points at
    ``flip_permutation[stable]``. NaN (missing) points stay NaN.
    """
    warped = transforms.warp_points(points, matrix)
    idx = jnp.where(flipped[:, None], self.mirrored_stable_indices[None],
                    self.stable_indices[None])
    return jnp.take_along_axis(warped, idx[..., None], axis=1)

  def mirror_shift(self, flipped: jax.Array) -> jax.Array:
    """(B, K, 2) what is added to CNN2's frame points: the learned mirror offset on the faces
    that were mirrored (``flipped`` (B,) bool), zero elsewhere and without the option."""
    return masked_mirror_offset(self.mirror_offset if self.uses_mirror_offset else None,
                                flipped, len(self.scheme.stable))

  def cnn2_view(self, images, matrix, source=None, source_to_input=None) -> jax.Array:
    """CNN2's input (B, S2, S2, 3): one resample of ``source`` (the host crop, which keeps
    more resolution than CNN1's input) through ``source_to_input`` then ``matrix``; of
    ``images`` itself when no source is given."""
    if source is None:
      return transforms.warp_images(images, matrix, self.cnn2_image_size)
    return transforms.warp_images(source, transforms.compose(source_to_input, matrix),
                                  self.cnn2_image_size)

  def __call__(self, images: jax.Array, *, source: jax.Array | None = None,
               source_to_input: jax.Array | None = None,
               return_warped: bool = False, mirror_tta: bool = False) -> dict[str, jax.Array]:
    """Runs the pipeline.

    Args:
      images: (B, S, S, 3) RGB in 0..255 (float or uint8), S = ``image_size``.
      source: optional (B, H, H, 3) host crops CNN2 samples from (see :meth:`cnn2_view`).
      source_to_input: (B, 2, 3) source pixels -> ``images`` pixels (with ``source``).
      return_warped: also return CNN2's input images (for inspection).
      mirror_tta: CNN1's points averaged over the image and its mirror
        (:func:`mirror_averaged`, with CNN1's learned mirror offset when it has one; inference
        only).

    Returns:
      A dict of float32 arrays in INPUT-image pixels unless noted:
        rough: (B, L, 2) CNN1's points.
        stable: (B, K, 2) CNN2's points mapped back; row k is the original point
          ``stable_indices[b, k]``.
        stable_indices: (B, K) int32: ``scheme.stable``, or ``flip_permutation[scheme.stable]``
          for a mirrored face (the mirror set of SLs).
        matrix: (B, 2, 3) input -> canonical-frame transform (mirror included).
        flipped: (B,) bool, the face was judged left-looking and mirrored.
        points: (B, L, 2) rough with the stable points replaced by CNN2's (the ULs are CNN1's,
          to be replaced by the 3DMM completion).
        sl_points: (B, L, 2) CNN2's points at their indices, NaN elsewhere (the completion's
          input: "at least the SLs, the rest NaN").
        warped: (B, S2, S2, 3) CNN2's input, only with ``return_warped``.
    """
    if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f'images must be (B, {self.image_size}, {self.image_size}, 3), got '
                       f'{images.shape}')
    rough = rough_points(self.cnn1, self.cnn1_mirror_offset, images, self.scheme, mirror_tta)
    matrix, flipped = self.spatial_transform(jax.lax.stop_gradient(rough))
    matrix = jax.lax.stop_gradient(matrix)
    warped = self.cnn2_view(images, matrix, source, source_to_input)
    # The canonical mean plus CNN2's offsets, in its frame (and the mirror offset).
    sl_frame = self.cnn2(warped) + self.mirror_shift(flipped)
    stable = transforms.warp_points(sl_frame, transforms.invert(matrix))
    indices = jnp.where(flipped[:, None], self.mirrored_stable_indices[None],
                        self.stable_indices[None]).astype(jnp.int32)
    out = {
        'rough': rough,
        'stable': stable,
        'stable_indices': indices,
        'matrix': matrix,
        'flipped': flipped,
        'points': _scatter_points(rough, indices, stable),
        'sl_points': _scatter_points(jnp.full_like(rough, jnp.nan), indices, stable),
    }
    if return_warped:
      out['warped'] = warped
    return out


class PlainAligner(nnx.Module):
  """The baseline: one ResNet regressing all L points (the paper's "original ResNet-50").

  Args:
    depth, image_size, scheme, dtype, bn_momentum, zero_init_residual, head, heatmap_stride,
      rngs: as for
      :class:`PoseAwareAligner`.
    mean_shape: (L, 2) starting guess in input pixels (default: :func:`default_shape`).
  """

  def __init__(self, *, depth: int | str | ResNetSpec = 50, image_size: int = 224,
               scheme: schemes_lib.LandmarkScheme | str = schemes_lib.IBUG68, mean_shape=None,
               dtype=jnp.float32, bn_momentum: float = 0.9, zero_init_residual: bool = False,
               head: str = 'mean', heatmap_stride: int = 8, cnn1_mirror_offset: bool = False,
               rngs: nnx.Rngs):
    self.scheme = schemes_lib.get_scheme(scheme)
    self.image_size = int(image_size)
    if mean_shape is None:
      mean_shape = default_shape(self.scheme, self.image_size)
    mean_shape = _check_shape('mean_shape', mean_shape, self.scheme.num_points)
    # CNN1's learned mirror offset (see PoseAwareAligner), here the one network's.
    self.cnn1_mirror_offset = (nnx.Param(jnp.zeros((self.scheme.num_points, 2), jnp.float32))
                               if cnn1_mirror_offset else None)
    self.net = LandmarkRegressor(self.scheme.num_points, depth=depth, image_size=self.image_size,
                                 mean_shape=mean_shape, dtype=dtype, bn_momentum=bn_momentum,
                                 zero_init_residual=zero_init_residual, head=head,
                                 heatmap_stride=heatmap_stride, rngs=rngs)

  def __call__(self, images: jax.Array, mirror_tta: bool = False) -> dict[str, jax.Array]:
    """(B, S, S, 3) in 0..255 -> {'points': (B, L, 2) float32 input pixels}; ``mirror_tta``:
    averaged over the image and its mirror (:func:`mirror_averaged`)."""
    if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f'images must be (B, {self.image_size}, {self.image_size}, 3), got '
                       f'{images.shape}')
    return {'points': rough_points(self.net, self.cnn1_mirror_offset, images, self.scheme,
                                   mirror_tta)}


Aligner = PoseAwareAligner | PlainAligner


def make_aligner(kind: str, **kwargs) -> Aligner:
  """``'pose_aware'`` -> :class:`PoseAwareAligner`, ``'plain'`` -> :class:`PlainAligner`
  (keyword arguments passed through; ``cnn2_*``, ``canonical_shape``, ``transform_weights``
  and ``flip_threshold`` are dropped for the plain model so one config serves both)."""
  if kind == 'pose_aware':
    return PoseAwareAligner(**kwargs)
  if kind == 'plain':
    for key in ('cnn2_depth', 'cnn2_image_size', 'canonical_shape', 'transform_weights',
                'flip_threshold', 'pose_reference'):
      kwargs.pop(key, None)
    return PlainAligner(**kwargs)
  raise ValueError(f"unknown aligner kind {kind!r}; expected 'pose_aware' or 'plain'")


# CNN2's training transforms (``model.transform_from``).
TRANSFORM_SOURCES = ('prediction', 'ground_truth')


def compute_losses(model: Aligner, images: jax.Array, points: jax.Array,
                   weights: jax.Array | None = None, kind: str = 'wing',
                   cnn1_weight: float = 1.0, cnn2_weight: float = 1.0,
                   transform_from: str = 'prediction', loss_params: dict | None = None,
                   source: jax.Array | None = None, source_to_input: jax.Array | None = None,
                   cnn2_jitter: jax.Array | None = None, heatmap_weight: float = 0.0,
                   heatmap_sigma: float = 1.0, mirrored: jax.Array | None = None,
                   ) -> tuple[jax.Array, dict[str, Any]]:
  """Training loss of either aligner on one batch, for ``nnx.value_and_grad(has_aux=True)``.

  All arguments are positional-or-keyword (no keyword-only ones), as ``nnx.grad`` requires.
  Losses are :func:`jaxalign.losses.landmark_loss` (wing, w = 18, epsilon = 3 by default) on
  pixel coordinates of each network's own input. The model's mode decides BatchNorm's
  behaviour (``model.train()`` for training).

  Pose-aware model: ``loss = cnn1_weight * L(CNN1(images), points) + cnn2_weight *
  L(CNN2(view(M)), targets)`` where ``M`` is the spatial transform (under ``stop_gradient``)
  of CNN1's predictions on this very batch (``transform_from='prediction'``, the paper) or of
  the ground truth (``'ground_truth'``). CNN2's loss trains CNN2 only,
  CNN1's trains CNN1 only. The targets are the ground truth mapped with the same ``M`` and,
  for a mirrored face, read at the mirrored indices (:meth:`PoseAwareAligner.cnn2_targets`);
  CNN2's points include its mirror offset (:meth:`PoseAwareAligner.mirror_shift`), which this
  loss trains.

  Args:
    model: a :class:`PoseAwareAligner` or :class:`PlainAligner`.
    images: (B, S, S, 3) in 0..255.
    points: (B, L, 2) ground truth in input pixels; NaN = missing (no loss, no gradient).
    weights: optional (B, L) or (L,) per-point loss weights (in the original indexing; CNN2's
      follow its targets through the mirror permutation).
    kind: elementwise loss of :func:`jaxalign.losses.landmark_loss`.
    cnn1_weight, cnn2_weight: weights of the two terms (pose-aware model only).
    transform_from: one of :data:`TRANSFORM_SOURCES`.
    loss_params: keyword parameters of the elementwise loss (``{'w': 18., 'epsilon': 3.}``, the
      wing defaults, when None).
    source, source_to_input: CNN2's source view (:meth:`PoseAwareAligner.cnn2_view`).
    cnn2_jitter: optional (B, 2, 3) maps within CNN2's frame applied after ``M`` (CNN2's own
      augmentation, ``augment.cnn2_*``); the targets move with the view.
    heatmap_weight: weight of each network's auxiliary heatmap loss
      (:func:`jaxalign.losses.heatmap_kl`, added to its own term; heatmap heads
      only; 0: none, the paper's loss).
    heatmap_sigma: that loss's target Gaussian's standard deviation in cells of the map.
    mirrored: optional (B,) bool, the faces the augmentation mirrored (``augment.mirror_prob``):
      CNN1's learned mirror offset is added to its points on them, and CNN2 sees a face
      mirrored relative to its annotation where exactly one of the augmentation and the
      spatial transform mirrored it (its mirror offset goes there).

  Returns:
    (loss, aux): loss a float32 scalar; aux a dict with the scalar terms ``loss``,
    ``loss_cnn1`` (and ``loss_cnn2``, ``flipped_fraction`` for the pose-aware model;
    ``loss_heatmap``, the networks' heatmap terms summed unweighted, with a heatmap weight) and the
    predictions ``points`` (B, L, 2) (CNN1's for the pose-aware model) for training metrics.
  """
  points = jnp.asarray(points, jnp.float32)
  loss = functools.partial(losses.landmark_loss, kind=kind, **(loss_params or {}))

  def run(net, x, target, w):
    """``net``'s points on ``x`` and its auxiliary heatmap term (0 without a weight)."""
    if not heatmap_weight:
      return net(x), jnp.zeros((), jnp.float32)
    pred, logits, centres = net.points_and_heatmap(x)
    return pred, losses.heatmap_kl(logits, centres, target, heatmap_sigma * net.heatmap.stride,
                                   w)

  mirrored = (jnp.zeros(points.shape[:1], bool) if mirrored is None
              else jnp.asarray(mirrored, bool))
  # The networks' mirror offsets are added to their points after the heads, so a heatmap's
  # target is the point without them (else the heatmap would learn the mirrored convention).
  offset1 = masked_mirror_offset(getattr(model, 'cnn1_mirror_offset', None), mirrored,
                                 points.shape[1])
  if isinstance(model, PlainAligner):
    pred, h1 = run(model.net, images, points - jax.lax.stop_gradient(offset1), weights)
    pred = pred + offset1
    l1 = loss(pred, points, weights=weights)
    total = l1 + heatmap_weight * h1
    aux = {'loss': total, 'loss_cnn1': l1, 'points': pred}
    return total, dict(aux, loss_heatmap=h1) if heatmap_weight else aux
  if not isinstance(model, PoseAwareAligner):
    raise TypeError(f'compute_losses takes a PoseAwareAligner or PlainAligner, got '
                    f'{type(model).__name__}')
  if transform_from not in TRANSFORM_SOURCES:
    raise ValueError(f'transform_from must be one of {TRANSFORM_SOURCES}, got '
                     f'{transform_from!r}')
  rough, h1 = run(model.cnn1, images, points - jax.lax.stop_gradient(offset1), weights)
  rough = rough + offset1
  l1 = loss(rough, points, weights=weights)
  src = rough if transform_from == 'prediction' else points
  matrix, flipped = model.spatial_transform(jax.lax.stop_gradient(src))
  matrix = jax.lax.stop_gradient(matrix)
  if cnn2_jitter is not None:
    matrix = transforms.compose(matrix, cnn2_jitter)
  view = model.cnn2_view(images, matrix, source, source_to_input)
  targets = model.cnn2_targets(points, matrix, flipped)
  w2 = None
  if weights is not None:
    w_full = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), points.shape[:-1])
    idx = jnp.where(flipped[:, None], model.mirrored_stable_indices[None],
                    model.stable_indices[None])
    w2 = jnp.take_along_axis(w_full, idx, axis=1)
  offset2 = model.mirror_shift(flipped != mirrored)
  pred2, h2 = run(model.cnn2, view, targets - jax.lax.stop_gradient(offset2), w2)
  pred2 = pred2 + offset2
  l2 = loss(pred2, targets, weights=w2)
  total = (cnn1_weight * (l1 + heatmap_weight * h1)
           + cnn2_weight * (l2 + heatmap_weight * h2))
  aux = {'loss': total, 'loss_cnn1': l1, 'loss_cnn2': l2,
         'flipped_fraction': jnp.mean(flipped.astype(jnp.float32)), 'points': rough}
  return total, dict(aux, loss_heatmap=h1 + h2) if heatmap_weight else aux
