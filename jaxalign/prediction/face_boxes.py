"""Test-time face boxes from what a user has: the detector on the photo, else a jittered
landmark box.

The 300-W protocol evaluates on "default bounding boxes" (``bounding_boxes_*.mat``). A user who
has only the test folders (images + ``.pts``) has no such file; then :func:`detector_boxes`
runs the project's face detector (:mod:`jaxalign.prediction.detector`, boxes already mapped to
the training framing by :mod:`jaxalign.prediction.box_mapping`) on each photo and keeps the
detection that overlaps the annotated face most. Where the detector finds nothing that
overlaps the face (intersection over union below ``min_iou``), the face gets its landmark box
disturbed like a detector's (uniform shift and scale within the run's ``eval.box_jitter``
ranges, seeded by the face's index), so no face is dropped and the ground truth is never used as
a perfect box.

Each returned record says which box it has in ``meta['box_source']``: ``'file'`` (the data
set's own box file), ``'detector:<name>'`` or ``'landmarks_jittered'``; :func:`box_counts`
tallies them for ``report.json``'s ``boxes``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxalign.data import pipeline as data_pipeline
from jaxalign.data import records as records_lib
from jaxalign.prediction import detector as detector_lib

log = logging.getLogger('jaxalign.prediction.face_boxes')

FILE = 'file'
JITTERED = 'landmarks_jittered'
# evaluate --boxes: 'auto' = the data set's box file where it has one, else the detector;
# 'detector' = the detector even where a box file exists; 'landmarks' = the landmark boxes with
# the run's eval.box_jitter (the end-of-run evaluation's boxes).
MODES = ('auto', 'detector', 'landmarks')


def jittered_landmark_box(points, index: int, shift: float, scale: float,
                          seed: int = 0) -> np.ndarray:
  """(4,) float32: the tight box of ``points`` (L, 2) moved by up to ``shift`` box sides and
  scaled by up to ``scale`` (uniform, independent in x and y for the shift), drawn from
  ``default_rng((seed, index))``, so a face's box depends only on its index."""
  box = np.asarray(records_lib.landmark_box(points), np.float64)
  rng = np.random.default_rng((int(seed), int(index)))
  side = max(box[2] - box[0], box[3] - box[1])
  dx, dy = rng.uniform(-shift, shift, 2) * side
  s = 1.0 + rng.uniform(-scale, scale)
  c = 0.5 * (box[:2] + box[2:]) + (dx, dy)
  half = 0.5 * s * (box[2:] - box[:2])
  return np.concatenate([c - half, c + half]).astype(np.float32)


def detector_boxes(records, detector: str | None = None, min_iou: float = 0.3,
                   shift: float = 0.05, scale: float = 0.07, seed: int = 0):
  """The records with detector boxes where the data set gave none.

  Args:
    records: :class:`jaxalign.data.records.FaceRecord` list; a record whose
      ``meta['box_source']`` names a box of its data set (300-W's 'detector' or 'ground_truth'
      from its box files, COFW-68's boxes, ...) keeps it; the others ('landmarks', or no
      ``box_source``: the tight box of the annotation) get a detection.
    detector: the detector's name (None: the best installed, :func:`detector.default_detector`).
    min_iou: least overlap of a detection with the face's landmark box to accept it.
    shift, scale: the fallback jitter's ranges (fractions of the box side).
    seed: the fallback jitter's seed.

  Returns:
    ``(records, counts)``: new records (``box`` and ``meta['box_source']`` set as in the module
    docstring; images are not kept decoded) and :func:`box_counts` of them.
  """
  name = detector or detector_lib.default_detector()
  out = []
  for i, r in enumerate(records):
    source = r.meta.get('box_source', 'landmarks')
    if source not in ('landmarks', FILE, JITTERED) and not source.startswith('detector:'):
      out.append(dataclasses.replace(r, meta=dict(r.meta, box_source=FILE,
                                                  box_file_kind=source)))
      continue
    truth = np.asarray(records_lib.landmark_box(r.points), np.float32)
    box, kind = None, JITTERED
    try:
      image = r.image if isinstance(r.image, np.ndarray) else \
          data_pipeline.decode_image(str(r.image))
      found = detector_lib.detect_faces(image, name)
    except (OSError, ValueError) as e:   # undecodable image: evaluated (and counted) later
      log.warning('%s: no detection (%s)', r.image, e)
      found = []
    if found:
      iou = detector_lib.box_iou(np.stack([d.box for d in found]), truth[None])[:, 0]
      best = int(np.argmax(iou))
      if iou[best] >= min_iou:
        box, kind = np.asarray(found[best].box, np.float32), f'detector:{name}'
    if box is None:
      box = jittered_landmark_box(r.points, i, shift, scale, seed)
    out.append(dataclasses.replace(r, box=box, meta=dict(r.meta, box_source=kind)))
  return out, box_counts(out)


def box_counts(records) -> dict[str, int]:
  """``{box source: faces}`` over ``records``' ``meta['box_source']`` (missing: 'landmarks')."""
  counts: dict[str, int] = {}
  for r in records:
    kind = str(r.meta.get('box_source', 'landmarks'))
    counts[kind] = counts.get(kind, 0) + 1
  return dict(sorted(counts.items()))


def for_evaluation(records, config, mode: str = 'auto', detector: str | None = None,
                   normalization: str = 'inter_ocular'):
  """The boxes of a named data set's faces for ``python -m jaxalign.evaluate``.

  Args:
    records: the data set's faces (``meta['box_source']`` as its reader set it).
    config: the run's config; its ``eval.box_jitter`` gives the fallback's ranges and seed.
    mode: one of :data:`MODES`.
    detector: the detector's name (None: the best installed).
    normalization: the data set's NME normaliser; with 'bbox' (AFLW, AFLW2000-3D) the face box
      is the protocol's normaliser, so 'auto' keeps the data set's boxes as 'landmarks' does.

  Returns:
    ``(records, config, counts)``: the faces with their boxes, the config to evaluate with (a
    copy whose ``eval.box_jitter`` magnitudes are zero when the boxes are a detector's or a
    box file's, which must not be disturbed again), and :func:`box_counts`.

  Raises:
    ValueError: an unknown ``mode``.
  """
  if mode not in MODES:
    raise ValueError(f'--boxes {mode!r}: expected one of {MODES}')
  if mode == 'auto' and normalization == 'bbox':
    mode = 'landmarks'   # the protocol's box is the normaliser (AFLW, AFLW2000-3D): kept
  if mode == 'landmarks':
    return list(records), config, {'landmarks_with_run_jitter': len(records)}
  if mode == 'detector':
    records = [dataclasses.replace(r, meta=dict(r.meta, box_source='landmarks'))
               for r in records]
  jitter = config.eval.box_jitter
  records, counts = detector_boxes(records, detector, shift=float(jitter.shift),
                                   scale=float(jitter.scale), seed=int(jitter.seed))
  return records, data_pipeline.without_box_jitter(config), counts
