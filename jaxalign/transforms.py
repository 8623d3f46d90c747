"""Affine matrices and the one warp primitive for images and points (jnp, jit- and vmap-able).

A transform is a (2, 3) float32 matrix ``M`` (or a batch of them, shape (..., 2, 3)) that maps
INPUT-image pixel coordinates to OUTPUT-image coordinates: ``p_out = M[:, :2] @ p_in + M[:, 2]``.
Coordinates follow the project convention: x to the right, y down, pixel centres at integer
coordinates, so pixel ``(i, j)`` (row, column) sits at ``(x, y) = (j, i)`` and covers
``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``.

:func:`warp_image` samples output pixel ``p`` from the input at ``M^-1 p`` with bilinear
interpolation and zeros outside the input: the result of OpenCV's
``cv2.warpAffine(img, M, (w, h), flags=INTER_LINEAR, borderMode=BORDER_CONSTANT, borderValue=0)``
(up to OpenCV's 1/32-pixel fixed-point interpolation weights), in float32.
:func:`warp_points` applies the same ``M`` to landmarks, so a point drawn in an image stays on
its landmark after both are warped. Cropping, augmentation, the spatial transform and flips are
all matrices built here and composed with :func:`compose`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import schemes as schemes_lib


def _as_matrix(m) -> jnp.ndarray:
  m = jnp.asarray(m, jnp.float32)
  if m.ndim < 2 or m.shape[-2:] != (2, 3):
    raise ValueError(f'affine matrix must have shape (..., 2, 3), got {m.shape}')
  return m


def _out_hw(out_size) -> tuple[int, int]:
  if isinstance(out_size, (int, np.integer)):
    return int(out_size), int(out_size)
  h, w = out_size
  return int(h), int(w)


def identity(batch_shape: Sequence[int] = ()) -> jnp.ndarray:
  """The identity transform, shape ``(*batch_shape, 2, 3)``."""
  eye = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)
  return jnp.broadcast_to(eye, tuple(batch_shape) + (2, 3))


def crop_matrix(box, out_size) -> jnp.ndarray:
  """Maps the box ``(x0, y0, x1, y1)`` onto an output image of ``out_size``.

  The box uses slice semantics: an integer box selects the pixels of ``img[y0:y1, x0:x1]``, so its
  outer pixel edges ``x0 - 0.5`` and ``x1 - 0.5`` map to the output's edges ``-0.5`` and
  ``w - 0.5``. With ``out_size == (y1 - y0, x1 - x0)`` the warp is exactly that slice; otherwise
  it is the slice resized like ``cv2.resize`` (half-pixel-centre convention). x and y are scaled
  independently (pass a square box to keep the aspect ratio).

  Args:
    box: (..., 4) box(es) in input pixels.
    out_size: int (square) or (height, width) of the output.

  Returns:
    (..., 2, 3) float32.
  """
  h, w = _out_hw(out_size)
  box = jnp.asarray(box, jnp.float32)
  if box.shape[-1:] != (4,):
    raise ValueError(f'box must have shape (..., 4) = (x0, y0, x1, y1), got {box.shape}')
  x0, y0, x1, y1 = (box[..., k] for k in range(4))
  sx = w / (x1 - x0)
  sy = h / (y1 - y0)
  zero = jnp.zeros_like(sx)
  row0 = jnp.stack([sx, zero, (0.5 - x0) * sx - 0.5], -1)
  row1 = jnp.stack([zero, sy, (0.5 - y0) * sy - 0.5], -1)
  return jnp.stack([row0, row1], -2)


def similarity_matrix(angle, scale=1.0, center=(0.0, 0.0), translation=(0.0, 0.0)
                      ) -> jnp.ndarray:
  """Rotation by ``angle`` and scaling by ``scale`` about ``center``, then a translation.

  ``p_out = scale * R(angle) @ (p - center) + center + translation``. A positive angle turns the
  image content counter-clockwise as seen on screen (y down), the convention of
  ``cv2.getRotationMatrix2D`` (which takes degrees): ``R = [[cos, sin], [-sin, cos]]``.

  Args:
    angle: (...,) radians.
    scale: (...,) scale factor.
    center: (..., 2) centre of rotation and scaling, input pixels.
    translation: (..., 2) output pixels.

  Returns:
    (..., 2, 3) float32, broadcast over the arguments' batch shapes.
  """
  angle = jnp.asarray(angle, jnp.float32)
  scale = jnp.asarray(scale, jnp.float32)
  center = jnp.asarray(center, jnp.float32)
  translation = jnp.asarray(translation, jnp.float32)
  a = scale * jnp.cos(angle)
  b = scale * jnp.sin(angle)
  a, b = jnp.broadcast_arrays(a, b)
  lin = jnp.stack([jnp.stack([a, b], -1), jnp.stack([-b, a], -1)], -2)  # (..., 2, 2)
  t = center - jnp.einsum('...ij,...j->...i', lin, center) + translation
  lin, t = jnp.broadcast_arrays(lin, t[..., None, :])
  return jnp.concatenate([lin, jnp.swapaxes(t, -1, -2)[..., :1]], -1)


def translation_matrix(offset) -> jnp.ndarray:
  """``p_out = p + offset``; offset (..., 2)."""
  offset = jnp.asarray(offset, jnp.float32)
  eye = identity(offset.shape[:-1])
  return eye.at[..., :, 2].set(offset)


def hflip_matrix(width) -> jnp.ndarray:
  """Horizontal mirror of an image ``width`` pixels wide: ``x -> width - 1 - x``, y unchanged.

  ``width`` may be an array (...,) for a batch. Landmark indices must also be permuted
  (:func:`flip_landmarks`); the matrix alone only moves coordinates.
  """
  width = jnp.asarray(width, jnp.float32)
  one = jnp.ones_like(width)
  zero = jnp.zeros_like(width)
  return jnp.stack([jnp.stack([-one, zero, width - 1.0], -1),
                    jnp.stack([zero, one, zero], -1)], -2)


def compose(*matrices) -> jnp.ndarray:
  """The transform that applies ``matrices[0]`` first, then ``matrices[1]``, and so on.

  Batch dimensions broadcast. ``compose(m)`` returns ``m``.
  """
  if not matrices:
    raise ValueError('compose needs at least one matrix')
  out = _as_matrix(matrices[0])
  for m in matrices[1:]:
    m = _as_matrix(m)
    lin = jnp.einsum('...ij,...jk->...ik', m[..., :, :2], out[..., :, :2])
    t = jnp.einsum('...ij,...j->...i', m[..., :, :2], out[..., :, 2]) + m[..., :, 2]
    out = jnp.concatenate([lin, t[..., None]], -1)
  return out


def invert(matrix) -> jnp.ndarray:
  """The inverse transform (output coordinates back to input coordinates), (..., 2, 3)."""
  m = _as_matrix(matrix)
  a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
  d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
  det = a * e - b * d
  ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
  ic = -(ia * c + ib * f)
  if_ = -(id_ * c + ie * f)
  return jnp.stack([jnp.stack([ia, ib, ic], -1), jnp.stack([id_, ie, if_], -1)], -2)


def warp_points(points, matrix) -> jnp.ndarray:
  """Applies ``matrix`` (..., 2, 3) to ``points`` (..., L, 2); batch dimensions broadcast.

  NaN points (missing landmarks) stay NaN. Returns float32 (..., L, 2).
  """
  pts = jnp.asarray(points, jnp.float32)
  m = _as_matrix(matrix)
  if pts.ndim < 2 or pts.shape[-1] != 2:
    raise ValueError(f'points must have shape (..., L, 2), got {pts.shape}')
  return jnp.einsum('...ij,...lj->...li', m[..., :, :2], pts) + m[..., None, :, 2]


apply_to_points = warp_points


def _bilinear(image: jnp.ndarray, sx: jnp.ndarray, sy: jnp.ndarray) -> jnp.ndarray:
  """Samples image (H, W, C) at float coords (h, w); zero outside the pixel grid."""
  height, width, channels = image.shape
  flat = image.reshape(height * width, channels)
  x0 = jnp.floor(sx)
  y0 = jnp.floor(sy)
  fx = (sx - x0)[..., None]
  fy = (sy - y0)[..., None]
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)

  def tap(xi, yi):
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    idx = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
    return jnp.where(inside[..., None], jnp.take(flat, idx, axis=0), 0.0)

  top = tap(x0, y0) * (1.0 - fx) + tap(x0 + 1, y0) * fx
  bottom = tap(x0, y0 + 1) * (1.0 - fx) + tap(x0 + 1, y0 + 1) * fx
  return top * (1.0 - fy) + bottom * fy


def _opencv_coords(inv: jnp.ndarray, xs: jnp.ndarray, ys: jnp.ndarray):
  """Source coordinates rounded as OpenCV's warpAffine does (AB_BITS=10, INTER_BITS=5).

  OpenCV evaluates ``inv @ p`` in 1/1024-pixel fixed point (column part and row part rounded
  separately) and then rounds to 1/32 pixel:
  ``floor((round(a*x*1024) + round((b*y+c)*1024) + 16) / 32) / 32``.
  """
  def fixed(row):
    adelta = jnp.round(row[0] * xs * 1024.0).astype(jnp.int32)
    base = jnp.round((row[1] * ys + row[2]) * 1024.0).astype(jnp.int32)
    return jnp.right_shift(adelta + base + 16, 5).astype(jnp.float32) / 32.0
  return fixed(inv[0]), fixed(inv[1])


def warp_image(image, matrix, out_shape, opencv_rounding: bool = False) -> jnp.ndarray:
  """Warps one image with the input-to-output transform ``matrix``.

  Output pixel ``p`` takes the bilinear sample of the input at ``invert(matrix) @ p``; samples
  whose neighbours fall outside the input use zeros for those neighbours (OpenCV's
  ``warpAffine`` with ``INTER_LINEAR`` and ``BORDER_CONSTANT``, value 0).

  By default the sample positions are exact (float32), which keeps the warp smooth in the matrix.
  OpenCV rounds them to 1/32 pixel, so on high-contrast detail the two differ by up to about
  1/32 of the local intensity step; ``opencv_rounding=True`` reproduces OpenCV's rounding, and
  then a float32 image warps to OpenCV's float32 result to float precision.

  Args:
    image: (H, W, C) or (H, W), any numeric dtype (uint8 is read as 0..255).
    matrix: (2, 3) input-to-output transform.
    out_shape: (height, width) of the output (static under jit), or an int for a square.
    opencv_rounding: round sample positions to 1/32 pixel as OpenCV does (static).

  Returns:
    float32 (height, width, C), or (height, width) for a 2-D input.
  """
  return _warp_image(image, matrix, _out_hw(out_shape), bool(opencv_rounding))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _warp_image(image, matrix, out_shape, opencv_rounding):
  h, w = out_shape
  img = jnp.asarray(image)
  if img.ndim not in (2, 3):
    raise ValueError(f'image must have shape (H, W) or (H, W, C), got {img.shape}')
  m = _as_matrix(matrix)
  if m.shape != (2, 3):
    raise ValueError(f'warp_image takes one (2, 3) matrix, got {m.shape}; use warp_images')
  squeeze = img.ndim == 2
  img = img.astype(jnp.float32)
  if squeeze:
    img = img[..., None]
  inv = invert(m)
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  if opencv_rounding:
    sx, sy = _opencv_coords(inv, xs, ys)
  else:
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
  out = _bilinear(img, sx, sy)
  return out[..., 0] if squeeze else out


def warp_images(images, matrices, out_shape, opencv_rounding: bool = False) -> jnp.ndarray:
  """Batched :func:`warp_image`: images (N, H, W[, C]), matrices (N, 2, 3) -> (N, h, w[, C])."""
  return _warp_images(images, matrices, _out_hw(out_shape), bool(opencv_rounding))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _warp_images(images, matrices, out_shape, opencv_rounding):
  return jax.vmap(lambda im, m: _warp_image(im, m, out_shape, opencv_rounding))(
      jnp.asarray(images), _as_matrix(matrices))


def flip_landmarks(points, width, scheme: schemes_lib.LandmarkScheme = schemes_lib.IBUG68
                   ) -> jnp.ndarray:
  """Landmarks of the mirrored image: ``x -> width - 1 - x`` and indices permuted.

  Point ``i`` of the result is the mirror of the original's point
  ``scheme.flip_permutation[i]`` (e.g. the new outer corner of the viewer's-left eye, 36, is
  the mirrored 45). Applying it twice gives the input back.

  Args:
    points: (..., L, 2) with L == scheme.num_points.
    width: image width in pixels, scalar or (...,) per example.
    scheme: the landmark scheme.
  """
  pts = jnp.asarray(points, jnp.float32)
  if pts.shape[-2:] != (scheme.num_points, 2):
    raise ValueError(f'points must have shape (..., {scheme.num_points}, 2) for scheme '
                     f'{scheme.name}, got {pts.shape}')
  mirrored = warp_points(pts, hflip_matrix(width))
  return jnp.take(mirrored, jnp.asarray(scheme.flip_index_array()), axis=-2)


def warp_image_host(image: np.ndarray, matrix, size: int | tuple[int, int]) -> np.ndarray:
  """The host-side twin of :func:`warp_image` for uint8 RGB decoding workers (numpy in/out).

  The same matrix convention and bilinear sampling with zeros outside, run by PIL so that
  input-pipeline worker processes need no JAX: it brings images of any size to one square
  ``size`` for batching (or to ``size = (height, width)``: ``predict``'s overlay enlarges a JPEG
  draft decode to the photo's size); every other warp (augmentation, spatial transform, flips)
  runs on the device through :func:`warp_image`. Tested to agree with it (tests/test_pipeline.py).
  ``matrix`` maps input pixel centres to output pixel centres; PIL samples at pixel corners +
  0.5, hence the half-pixel terms.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  a = np.vstack([matrix, [0, 0, 1]])
  inv = np.linalg.inv(a)[:2]
  # PIL samples the input at (a, b, c) . (x + 0.5, y + 0.5, 1) in pixel-corner coordinates for
  # output pixel (x, y); in centre coordinates that is 0.5 less, so c = t + 0.5 - 0.5 (a + b).
  c0 = inv[0, 2] - 0.5 * (inv[0, 0] + inv[0, 1]) + 0.5
  c1 = inv[1, 2] - 0.5 * (inv[1, 0] + inv[1, 1]) + 0.5
  data = (inv[0, 0], inv[0, 1], c0, inv[1, 0], inv[1, 1], c1)
  pil = Image.fromarray(image)
  height, width = (size, size) if np.isscalar(size) else size
  out = pil.transform((int(width), int(height)), Image.Transform.AFFINE, data,
                      Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
  return np.asarray(out)
