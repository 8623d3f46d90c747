"""Face detection for ``python -m jaxalign.predict`` with OpenCV's bundled Haar cascades.

The cascades ship inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so the
detector installs from PyPI and downloads nothing at run time. OpenCV 5 moved the cascade
classifier out of the main package, hence the ``opencv-python-headless<5`` pin.

Three passes on the equalised grey image: the frontal cascade (``frontalface_alt2``), the profile
cascade (``profileface``, trained on faces turned to one side) and the profile cascade on the
mirrored image (the other side), its boxes mirrored back. Overlapping boxes are merged by
non-maximum suppression that prefers frontal over profile detections and then the detection with
more supporting neighbours.

A Haar box is not the box of the 68 landmarks (it reaches above the brows and stops near the
chin), so a predictor fed with detector boxes should re-crop around its own first prediction
(``jaxalign.prediction.pipeline`` does one such refinement pass).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

FRONTAL_CASCADE = 'haarcascade_frontalface_alt2.xml'
PROFILE_CASCADE = 'haarcascade_profileface.xml'
KINDS = ('frontal', 'profile', 'profile_mirrored')


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected face.

  Attributes:
    box: (4,) float32 (x0, y0, x1, y1) in image pixels.
    kind: which pass found it: 'frontal', 'profile' or 'profile_mirrored' (the profile
      cascade on the mirrored image, i.e. a face turned the other way).
    neighbours: how many overlapping raw windows supported it (OpenCV's reject level).
  """

  box: np.ndarray
  kind: str
  neighbours: int


def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top
  if not hasattr(cv2, 'CascadeClassifier'):
    raise RuntimeError(
        f'OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out of the main '
        'package); install opencv-python-headless>=4.9,<5 for the face detector, or pass --bbox.')
  return cv2


@functools.lru_cache(maxsize=None)
def _cascade(name: str):
  cv2 = _cv2()
  path = os.path.join(cv2.data.haarcascades, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'Haar cascade {path} is missing from the OpenCV install; reinstall '
        'opencv-python-headless>=4.9,<5, or pass --bbox.')
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise RuntimeError(f'OpenCV could not load the Haar cascade {path}')
  return cascade


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of (N, 4) and (M, 4) (x0, y0, x1, y1) boxes -> (N, M)."""
  a = np.asarray(a, np.float64).reshape(-1, 1, 4)
  b = np.asarray(b, np.float64).reshape(1, -1, 4)
  w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = w * h
  area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
  area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area_a + area_b - inter, 1e-9)


def merge_detections(detections: list[Detection], iou_threshold: float = 0.3
                     ) -> list[Detection]:
  """Non-maximum suppression across the passes: frontal first, then more neighbours first.

  Returns the kept detections sorted by box area, largest first.
  """
  order = sorted(detections, key=lambda d: (d.kind != 'frontal', -d.neighbours))
  kept: list[Detection] = []
  for d in order:
    if kept and box_iou(d.box, np.stack([k.box for k in kept])).max() > iou_threshold:
      continue
    kept.append(d)
  return sorted(kept, key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))


def _run(cascade, gray: np.ndarray, min_size: int, min_neighbours: int):
  boxes, levels, _ = cascade.detectMultiScale3(
      gray, scaleFactor=1.1, minNeighbors=min_neighbours, minSize=(min_size, min_size),
      outputRejectLevels=True)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  levels = np.asarray(levels, np.int64).reshape(-1)
  # (x, y, w, h) -> (x0, y0, x1, y1), with x1/y1 the last pixel inside the window.
  xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] - 1], axis=1)
  return xyxy, levels


def detect_faces(image: np.ndarray, min_size_fraction: float = 0.05, min_neighbours: int = 4,
                 profile: bool = True) -> list[Detection]:
  """Finds faces in an image.

  Args:
    image: (H, W, 3) RGB or (H, W) grey, uint8 (other dtypes are clipped to [0, 255]).
    min_size_fraction: smallest face side as a fraction of the image's shorter side (at least
      24 px, the cascades' window).
    min_neighbours: OpenCV's ``minNeighbors``: how many overlapping windows a face needs.
    profile: also run the profile cascade on the image and its mirror.

  Returns:
    Detections, largest box first; empty when no face was found.
  """
  cv2 = _cv2()
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim == 3:
    if img.shape[-1] != 3:
      raise ValueError(f'expected an (H, W, 3) RGB or (H, W) grey image, got {img.shape}')
    img = np.clip(img, 0, 255).astype(np.uint8)
    gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
  elif img.ndim == 2:
    gray = np.clip(img, 0, 255).astype(np.uint8)
  else:
    raise ValueError(f'expected an (H, W, 3) RGB or (H, W) grey image, got {img.shape}')
  gray = cv2.equalizeHist(np.ascontiguousarray(gray))
  height, width = gray.shape
  min_size = max(24, int(round(min_size_fraction * min(height, width))))
  found: list[Detection] = []
  passes = [('frontal', FRONTAL_CASCADE, False)]
  if profile:
    passes += [('profile', PROFILE_CASCADE, False), ('profile_mirrored', PROFILE_CASCADE, True)]
  for kind, name, mirrored in passes:
    src = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
    boxes, levels = _run(_cascade(name), src, min_size, min_neighbours)
    if mirrored:  # x -> W - 1 - x swaps the box's left and right edges.
      boxes = np.stack([width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0],
                        boxes[:, 3]], axis=1)
    found += [Detection(b.astype(np.float32), kind, int(n)) for b, n in zip(boxes, levels)]
  return merge_detections(found)
