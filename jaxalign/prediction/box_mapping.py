"""Detector box -> landmark box: the framing the networks were trained on.

Training crops centre on the tight box of a face's 68 points (``records.landmark_box``) and
cover its longer side times ``1 + box_margin`` (``data.pipeline.CropSpec``). Face detectors
frame faces their own way (Haar: brows to chin, wider than the face; MTCNN: forehead to chin),
so each detector's box is mapped to an estimate of the landmark box before cropping.

The mapping is four numbers per detector (and per kind of detection, for Haar's frontal and
profile cascades): with the detector box's centre (cx, cy), width w and height h,

  landmark-box centre = (cx + dx * w, cy + dy * h),  width = kw * w,  height = kh * h.

They are measured, not guessed: :func:`fit_mapping` takes the medians of the per-face ratios
over matched (detection, annotated face) pairs (``python -m jaxalign.bench detect --fit``), and
the fitted values are kept in :data:`MAPPINGS` with the data they came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BoxMapping:
  """Landmark box from a detector box: centre offset (dx, dy) and scale (kw, kh), in units of
  the detector box's width and height."""

  dx: float = 0.0
  dy: float = 0.0
  kw: float = 1.0
  kh: float = 1.0

  def mirrored(self) -> 'BoxMapping':
    """The mapping for the mirror image (a face turned the other way): dx changes sign."""
    return dataclasses.replace(self, dx=-self.dx)

  def apply(self, boxes) -> np.ndarray:
    """(..., 4) detector boxes (x0, y0, x1, y1) -> (..., 4) float32 landmark-box estimates."""
    b = np.asarray(boxes, np.float64)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    cx = 0.5 * (b[..., 0] + b[..., 2]) + self.dx * w
    cy = 0.5 * (b[..., 1] + b[..., 3]) + self.dy * h
    hw, hh = 0.5 * self.kw * w, 0.5 * self.kh * h
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], -1).astype(np.float32)


def fit_mapping(detector_boxes, landmark_boxes, mirrored=None) -> BoxMapping:
  """Median per-face ratios of matched pairs (robust to the odd bad match).

  Args:
    detector_boxes: (N, 4) detector boxes (x0, y0, x1, y1).
    landmark_boxes: (N, 4) the matched faces' landmark boxes.
    mirrored: optional (N,) bool; pairs whose detection came from a mirrored pass count with
      their x offset negated (the fit is the un-mirrored kind's mapping).

  Returns:
    The :class:`BoxMapping`; scales are medians of log ratios (exp'd), offsets plain medians.
  """
  d = np.asarray(detector_boxes, np.float64).reshape(-1, 4)
  g = np.asarray(landmark_boxes, np.float64).reshape(-1, 4)
  if len(d) == 0 or len(d) != len(g):
    raise ValueError(f'fit_mapping needs matched pairs, got {len(d)} and {len(g)} boxes')
  w, h = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
  ox = (0.5 * (g[:, 0] + g[:, 2]) - 0.5 * (d[:, 0] + d[:, 2])) / w
  oy = (0.5 * (g[:, 1] + g[:, 3]) - 0.5 * (d[:, 1] + d[:, 3])) / h
  if mirrored is not None:
    ox = np.where(np.asarray(mirrored, bool), -ox, ox)
  kw = np.exp(np.median(np.log((g[:, 2] - g[:, 0]) / w)))
  kh = np.exp(np.median(np.log((g[:, 3] - g[:, 1]) / h)))
  return BoxMapping(float(np.median(ox)), float(np.median(oy)), float(kw), float(kh))


def centre_scale_error(boxes, landmark_boxes) -> tuple[np.ndarray, np.ndarray]:
  """How far mapped boxes are from the landmark boxes, in the units the crop cares about.

  Returns:
    centre: (N,) centre distance / landmark box's longer side.
    scale: (N,) |log(box longer side / landmark box longer side)|.
  """
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  g = np.asarray(landmark_boxes, np.float64).reshape(-1, 4)
  side_b = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
  side_g = np.maximum(g[:, 2] - g[:, 0], g[:, 3] - g[:, 1])
  centre = np.linalg.norm(0.5 * (b[:, :2] + b[:, 2:]) - 0.5 * (g[:, :2] + g[:, 2:]), axis=1)
  return centre / side_g, np.abs(np.log(side_b / side_g))


# MTCNN: fitted with `python -m jaxalign.bench detect ../shared/300w --detector mtcnn --fit` on
# 2026-12-05 (issue 24): medians over the 2,011 of the 2,012 human-annotated 300-W training faces
# that the detector (with its mirror and grey passes) found. It was (0.012, 0.130, 1.064, 0.813)
# from 24 real faces with dlib-model points and 68 synthetic ones. Haar: fitted with `python -m
# jaxalign.bench detect ../shared/faces/real ../shared/faces/image_0010 --synthetic 42 --fit` on
# 2026-12-03 (docs/method.md, "Face detection"; frontal 31 faces, profile 22).
# Keys: (detector, kind); 'profile_mirrored' uses the mirror of 'profile'.
MAPPINGS: dict[tuple[str, str], BoxMapping] = {
    ('mtcnn', 'face'): BoxMapping(dx=0.003, dy=0.136, kw=1.032, kh=0.765),
    ('haar', 'frontal'): BoxMapping(dx=0.013, dy=0.155, kw=0.882, kh=0.871),
    ('haar', 'profile'): BoxMapping(dx=0.013, dy=0.144, kw=0.705, kh=0.726),
}


def mapping_for(detector: str, kind: str) -> BoxMapping:
  """The fitted mapping of one detector's kind of detection (identity when none was fitted)."""
  if kind == 'profile_mirrored' and (detector, 'profile') in MAPPINGS:
    return MAPPINGS[(detector, 'profile')].mirrored()
  return MAPPINGS.get((detector, kind), BoxMapping())
