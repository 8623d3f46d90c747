"""Face verification of marginal detector candidates by the aligner itself.

A detector's weak candidates (a face found only by an extra pass, or below its usual threshold)
are checked with the run's CNN1, which predicts 68 points for any crop:

1. **Shift test.** CNN1 runs on the crop around the candidate box and on crops moved by
   ``shift`` box sides (right and down). On a true face the points stay on the face, so in
   image pixels they hardly move; on clutter the network returns a face-like shape tied to the
   crop, which moves with it. ``follow`` = median point displacement / crop displacement: about
   0 on a face, about 1 on a non-face.
2. **Rigid 3DMM residual.** The affine camera that best maps the mean Surrey face's 3D points
   (:func:`jaxalign.morphable.pose.reference_points`, contour points excluded) onto the predicted
   points; its RMS residual over the landmark box's longer side. Points scattered in no head's
   shape leave a large residual.

3. **Box agreement.** A box around part of a face, or at the wrong scale, still gets points on
   the face (they pass the shift test) but not points that fill the box: the IoU of the points'
   tight box with the candidate's mapped box must be at least ``min_box_iou``.

A candidate is accepted when ``follow <= max_follow``, ``residual <= max_residual`` and
``box_iou >= min_box_iou`` (:class:`Verifier`). Measured with ``runs/cpu_300w`` (64 px quarter-width ResNet-18 CNN1,
2026-12-05): on 40 of the 300-W faces (landmark boxes moved by up to 5 %) ``follow`` had median
0.33 and 90th percentile 0.63; on 40 random boxes of 25-120 px away from the faces of the 4 real
photos its minimum was 0.59 (median 1.20). ``max_follow`` 0.5 accepts 80 % of those faces and none
of those boxes. The residual barely separates them (faces median 0.024, clutter 0.031: a
network's guess on clutter is still a face-like shape), so its threshold, 0.05, only rejects
scattered points. Those 300-W faces were mostly in that run's training split: the face side of
the measurement is optimistic.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jaxalign.morphable import pose as pose_lib

# The rigid-face test and its threshold live with the pose fits (below the inference and the
# evaluation, which use them too); the verifier's names for them.
rigid_residual = pose_lib.rigid_residual
MAX_RESIDUAL = pose_lib.MAX_RESIDUAL

# MTCNN's stage thresholds when a verifier checks its weaker faces (``predict``'s default; the
# usual ones are 0.6 / 0.7 / 0.7): on the synthetic photos of the detection benchmark 75 of 92
# faces found against 70, with no more false detections on the real photos (docs/benchmarks.md,
# "Finding every face"); 0.3 / 0.4 / 0.3 found 77 but let 3 false detections through there.
VERIFIED_THRESHOLDS = (0.5, 0.6, 0.5)
# With a verifier: least final-stage score of a face that only MTCNN's mirror or equalised pass
# found, kept without verification (MtcnnDetector's extra_min_score; the verifier judges weaker
# ones). 0.85 added faces on the synthetic photos but 4 (colour) and 13 (grey) false detections
# and no face on 400 of the 300-W crops (docs/benchmarks.md), so it stays 0.95.
VERIFIED_EXTRA_MIN_SCORE = 0.95
# With a verifier, on grey photos: an equalised (CLAHE) pass's face scoring at least this that
# the equalised image's mirror also finds at least this high is kept as a first-pass face
# (MtcnnDetector's grey_equalized_min_score): 7 more grey faces on the synthetic seeds 2 + 3,
# no false detection added on 400 300-W crops or the real photos (docs/benchmarks.md, "Grey
# near-profile faces").
VERIFIED_GREY_EQUALIZED_MIN_SCORE = 0.85

# Points-function signature: (image (H, W, 3) uint8, boxes (N, 4)) -> (N, 68, 2) image pixels.
PointsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def follow_ratio(points_fn: PointsFn, image: np.ndarray, boxes: np.ndarray,
                 shift: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
  """How much the predicted points follow the crop (see the module doc).

  Args:
    points_fn: CNN1's points for boxes of one image.
    image: (H, W, 3) uint8 RGB.
    boxes: (N, 4) candidate boxes (x0, y0, x1, y1), already mapped to the landmark box.
    shift: crop displacement as a fraction of the box's longer side, applied in x and in y.

  Returns:
    ``(follow, points)``: (N,) median over points of |moved points - points| / |crop move|,
    averaged over the x and y moves; (N, L, 2) the points of the unmoved crops.
  """
  b = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = len(b)
  side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
  moves = [np.stack([shift * side, np.zeros(n)], 1), np.stack([np.zeros(n), shift * side], 1)]
  moved = [b + np.concatenate([m, m], 1).astype(np.float32) for m in moves]
  pts = np.asarray(points_fn(image, np.concatenate([b] + moved)), np.float64)
  base = pts[:n]
  follow = np.zeros(n)
  for k, m in enumerate(moves):
    d = np.linalg.norm(pts[(k + 1) * n:(k + 2) * n] - base, axis=-1)   # (N, L)
    follow += np.nanmedian(d, axis=-1) / np.maximum(np.linalg.norm(m, axis=-1), 1e-6)
  return follow / len(moves), base.astype(np.float32)


@dataclasses.dataclass
class Verifier:
  """``verifier(image, detections) -> (N,) bool``: accept the candidates that look like faces.

  Attributes:
    points_fn: CNN1's points for boxes of one image (:func:`run_points_fn` for a trained run).
    reference: (68, 3) mean-face 3D points (None: :func:`jaxalign.morphable.pose.reference_points`).
    max_follow: largest accepted shift-test ratio (0 on a face, 1 on clutter).
    max_residual: largest accepted rigid-fit RMS residual / point-box side.
    shift: the shift test's crop displacement (fraction of the box side).
    min_box_iou: least IoU of the points' tight box with the candidate box.
  """

  points_fn: PointsFn
  reference: np.ndarray | None = None
  max_follow: float = 0.5
  max_residual: float = MAX_RESIDUAL
  shift: float = 0.15
  min_box_iou: float = 0.5

  def scores(self, image: np.ndarray, boxes: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(follow, residual, box_iou)``, each (N,), of the candidate boxes (N, 4) of ``image``."""
    from jaxalign.prediction import detector  # pylint: disable=g-import-not-at-top
    rgb, _ = detector._as_uint8(image)  # pylint: disable=protected-access
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
      return np.zeros(0), np.zeros(0), np.zeros(0)
    if self.reference is None:
      from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
      self.reference = pose.reference_points()
    follow, points = follow_ratio(self.points_fn, rgb, boxes, self.shift)
    tight = np.stack([np.concatenate([np.nanmin(p, 0), np.nanmax(p, 0)]) if np.isfinite(p).any()
                      else np.zeros(4) for p in points])
    agree = np.diag(detector.box_iou(tight, boxes))
    return follow, rigid_residual(points, self.reference), agree

  def __call__(self, image: np.ndarray, detections) -> np.ndarray:
    """(N,) bool for ``detections`` (Detection list; their mapped ``box`` is cropped)."""
    if not len(detections):
      return np.zeros(0, bool)
    follow, residual, agree = self.scores(image, np.stack([d.box for d in detections]))
    return (follow <= self.max_follow) & (residual <= self.max_residual) & \
        (agree >= self.min_box_iou)


@dataclasses.dataclass
class AnyVerifier:
  """``verifier(image, detections) -> (N,) bool``: a candidate is accepted when any of
  ``verifiers`` accepts it. Each verifier after the first sees only the candidates that all
  before it rejected (a second CNN1 costs nothing on what the first accepted).

  ``predict --verify-also RUN`` / ``bench detect --verify-also RUN`` (:func:`make_verifier`): the
  run's own CNN1 first, then another run's, e.g. a CNN1 trained on synthetic faces at every yaw
  (``runs/syn_default``, or a run's pretraining stage ``RUN/pretrain``). Measured on issue 24's
  photos (docs/benchmarks.md, "A verifier whose CNN1 has seen every yaw"): ``runs/cpu_300w`` or
  ``runs/syn_default`` found 99 instead of 95 of 125 synthetic faces at 75 degrees (colour), no
  more grey faces, and the same false detections on 400 300-W crops and the real photos;
  ``runs/cpu_300w`` or ``runs/cpu_300w_8k/pretrain`` the same 99, 7 more grey faces of 579, but
  one more false detection on the grey 300-W crops. Off by default.
  """

  verifiers: tuple

  def __call__(self, image: np.ndarray, detections) -> np.ndarray:
    ok = np.zeros(len(detections), bool)
    for verifier in self.verifiers:
      todo = np.flatnonzero(~ok)
      if not len(todo):
        break
      ok[todo] = np.asarray(verifier(image, [detections[i] for i in todo]), bool)
    return ok


def make_verifier(run, also=()) -> 'Verifier | AnyVerifier':
  """The verifier ``predict`` uses: ``run``'s CNN1 (:class:`Verifier`, default thresholds), or
  with ``also`` (run folders) an :class:`AnyVerifier` of ``run``'s CNN1 and then each of theirs.

  Args:
    run: a :class:`jaxalign.inference.Run`.
    also: further run folders whose CNN1 may accept what ``run``'s rejects.

  Raises:
    FileNotFoundError: a run in ``also`` has no ``config.json`` or no checkpoint (the message
      names the folder). ValueError: its config is damaged or does not fit its checkpoint.
  """
  from jaxalign import inference  # pylint: disable=g-import-not-at-top
  first = Verifier(run_points_fn(run))
  if not also:
    return first
  others = []
  for workdir in also:
    try:
      other = inference.Run.load(workdir)
      other.model  # pylint: disable=pointless-statement  (restore now: a clear error up front)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'verifier run {workdir}: {e}') from None
    except ValueError as e:
      raise ValueError(f'verifier run {workdir}: {e}') from None
    others.append(Verifier(run_points_fn(other)))
  return AnyVerifier((first, *others))


def run_points_fn(run, batch_size: int = 8) -> PointsFn:
  """CNN1's rough points of a trained run (:class:`jaxalign.inference.Run`) as a
  :data:`PointsFn` (crops made as in training around each box)."""
  from jaxalign import inference  # pylint: disable=g-import-not-at-top
  from jaxalign.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  num_points = config_lib.model_scheme(run.config).num_points

  def points(image, boxes):
    nan = np.full((num_points, 2), np.nan, np.float32)
    recs = [records_lib.FaceRecord(image=image, points=nan, box=np.asarray(b, np.float32))
            for b in np.asarray(boxes, np.float32).reshape(-1, 4)]
    if not recs:
      return np.zeros((0, num_points, 2), np.float32)
    return inference.predict_records(run.model, run.config, recs, batch_size=batch_size)['rough']
  return points
