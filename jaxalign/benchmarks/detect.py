"""``python -m jaxalign.bench detect DIR... [--detector NAME ...] [--synthetic N] [--variants ...] [--first-pass] [--verify RUN [--verify-also RUN2]] [--fit] [--json]``.

Face-detector recall and false detections on photos where every face is annotated.

A data set is a folder of photos with one ``.pts`` per face (``<photo>_<k>.pts``, or
``<photo>.pts`` for a single face; photos with neither are skipped; a folder without photos is
searched recursively, so ``../shared/300w`` gives its 2,012 face crops), or one photo given by
its path (with or without its extension); ``--synthetic N`` adds N composited 3DMM photos
(:mod:`jaxalign.benchmarks.detect_scenes`, every yaw up to profile, faces from 20 px).
``--max-photos N`` keeps N photos of each folder, evenly spaced (a quick look at 300-W).
``--variants colour,gray,low_contrast`` runs every data set as it is, as a one-channel (H, W)
grey image, and with its contrast cut to 40 % around the mean (:func:`variant`).

A detection matches a face when the face's landmark-box centre lies inside the detector's own
box and that box's longer side is 0.6-3x the landmark box's longer side (one detection per face,
closest centres first); detections matching no face are false detections. Per data set and
detector: recall (also by face size and by |yaw|: the synthetic photos' rendered yaw, else the
rigid 3DMM fit of the annotated points), ``recall_iou`` (the mapped box overlaps the landmark
box with IoU >= 0.3, the rule :func:`jaxalign.prediction.face_boxes.detector_boxes` applies),
false detections per photo, the fit of the mapped box to the landmark box (IoU, centre error /
landmark-box side, |log| size ratio; medians over the found faces), detector time per photo
and the missed faces (photo, side, |yaw|). ``--fit`` also prints the box mapping fitted on all
matched faces (medians, see :mod:`jaxalign.prediction.box_mapping`). ``--first-pass`` adds
'mtcnn-first' (MTCNN without its mirror and equalised passes); ``--verify RUN`` adds
'mtcnn+verify' (lowered stage thresholds, faces under ``--verify-accept`` checked by RUN's CNN1,
:mod:`jaxalign.prediction.verify`, as ``predict`` runs it; ``--verify-also RUN2``: or accepted
by RUN2's CNN1, as ``predict --verify-also``); ``--low-thresholds T1,T2,T3`` adds
MTCNN passes at those stage thresholds whose new faces are all verified, ``--profile`` the
profile cascade's verified candidates, and ``--baseline-too`` scores 'mtcnn+verify-base'
without either; ``--verify-extra-min-score 0.85,0.95`` scores 'mtcnn+verify' with the first gate
on the faces only an extra pass found and adds 'mtcnn+verify@0.95' (same MTCNN runs, another
gate). A folder written by ``--write-synthetic`` holds ``yaws.json`` (the rendered
yaws): its faces are binned by rendered yaw (0, 30, 55, 75, 88 degrees). Every recall comes with
its 95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import pathlib
import re
import sys
import time

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
MATCH_SIDE_RANGE = (0.6, 3.0)
SIZE_BINS = ((0, 32, '<32px'), (32, 64, '32-64px'), (64, 1e9, '>=64px'))
YAW_BINS = ((0, 20, 'frontal'), (20, 65, 'three-quarter'), (65, 91, 'profile'))
# The synthetic photos' rendered |yaw| (detect_scenes.YAWS: 0, 30, 55, 75, 88 degrees).
RENDERED_YAW_BINS = ((0, 15, 'yaw0'), (15, 42, 'yaw30'), (42, 65, 'yaw55'), (65, 81, 'yaw75'),
                     (81, 91, 'yaw88'))
# Finer |yaw| bins for the misses of real faces (degrees).
MISS_YAW_BINS = ((0, 15, 'yaw<15'), (15, 30, 'yaw15-30'), (30, 45, 'yaw30-45'),
                 (45, 60, 'yaw45-60'), (60, 91, 'yaw>=60'), (91, 1e9, 'yaw?'))
# face_boxes.detector_boxes' least IoU of a mapped box with the landmark box.
HIT_IOU = 0.3
VARIANTS = ('colour', 'gray', 'low_contrast')
LOW_CONTRAST = 0.4


def _side(boxes) -> np.ndarray:
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


def match(detections, landmark_boxes) -> list[tuple[int, int]]:
  """One-to-one matches ``(face index, detection index)`` under the match rule.

  Args:
    detections: (N, 4) detector boxes (x0, y0, x1, y1).
    landmark_boxes: (M, 4) the annotated faces' landmark boxes.

  Returns:
    Pairs where the face's landmark-box centre is inside the detection and the detection's
    longer side is 0.6-3x the landmark box's; greedy by centre distance (in landmark-box
    sides), each face and detection used once.
  """
  d = np.asarray(detections, np.float64).reshape(-1, 4)
  g = np.asarray(landmark_boxes, np.float64).reshape(-1, 4)
  if not len(d) or not len(g):
    return []
  centre = 0.5 * (g[:, :2] + g[:, 2:])                                     # (M, 2)
  inside = ((d[None, :, 0] <= centre[:, None, 0]) & (centre[:, None, 0] <= d[None, :, 2]) &
            (d[None, :, 1] <= centre[:, None, 1]) & (centre[:, None, 1] <= d[None, :, 3]))
  ratio = _side(d)[None, :] / _side(g)[:, None]
  ok = inside & (ratio >= MATCH_SIDE_RANGE[0]) & (ratio <= MATCH_SIDE_RANGE[1])
  dist = np.linalg.norm(0.5 * (d[None, :, :2] + d[None, :, 2:]) - centre[:, None], axis=-1)
  dist = dist / _side(g)[:, None]
  pairs, used_f, used_d = [], set(), set()
  for f, k in sorted(zip(*np.nonzero(ok)), key=lambda fk: dist[fk]):
    if f not in used_f and k not in used_d:
      pairs.append((int(f), int(k)))
      used_f.add(f)
      used_d.add(k)
  return sorted(pairs)


def _photo_faces(image: pathlib.Path) -> list[pathlib.Path]:
  numbered = [p for p in image.parent.glob(f'{glob_escape(image.stem)}_*.pts')
              if re.fullmatch(re.escape(image.stem) + r'_\d+', p.stem)]
  if numbered:
    return sorted(numbered, key=lambda p: int(p.stem.rsplit('_', 1)[1]))
  single = image.with_suffix('.pts')
  return [single] if single.is_file() else []


def glob_escape(text: str) -> str:
  return re.sub(r'([\[\]*?])', r'[\1]', text)


def variant(image: np.ndarray, name: str) -> np.ndarray:
  """A photo as a user may hand it over.

  Args:
    image: (H, W, 3) uint8 RGB.
    name: 'colour' (as it is), 'gray' ((H, W) uint8, one channel: BT.601 luma, what a
      one-channel JPEG holds) or 'low_contrast' (RGB with every value pulled to the image mean,
      keeping :data:`LOW_CONTRAST` of its distance).

  Raises:
    ValueError: an unknown name.
  """
  img = np.asarray(image)
  if name == 'colour':
    return img
  if name == 'gray':
    rgb = img.astype(np.float32)
    return np.clip(rgb @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255
                   ).astype(np.uint8)
  if name == 'low_contrast':
    x = img.astype(np.float32)
    return np.clip(x.mean() + LOW_CONTRAST * (x - x.mean()) + 0.5, 0, 255).astype(np.uint8)
  raise ValueError(f'unknown image variant {name!r}; expected one of {", ".join(VARIANTS)}')


def _check_image(path: pathlib.Path) -> None:
  """Reads only the header (big data sets are decoded one photo at a time)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.size  # pylint: disable=pointless-statement
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f'{path}: cannot decode image ({e})') from None


def load_dataset(path: str, max_photos: int = 0, lazy: bool | None = None
                 ) -> tuple[str, list[tuple[str, np.ndarray | None, list]]]:
  """``(name, [(photo path, image, [(68, 2) points, ...]), ...])`` of a folder or one photo.

  Args:
    path: a folder (searched recursively when it holds no photo itself) or one photo.
    max_photos: keep this many annotated photos, evenly spaced (0: all).
    lazy: leave ``image`` None (decoded when evaluated; only the header is read here);
      None = lazy for more than 50 photos.

  Raises:
    FileNotFoundError: nothing at ``path``, or no annotated photo there.
    ValueError: an unreadable image or .pts (the message names the file).
  """
  from jaxalign import io  # pylint: disable=g-import-not-at-top
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  p = pathlib.Path(path)
  if p.is_dir():
    images = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
      images = sorted(q for q in p.rglob('*') if q.suffix.lower() in IMAGE_EXTENSIONS)
    name = p.name
  else:
    if not p.is_file():
      found = [p.with_name(p.name + e) for e in IMAGE_EXTENSIONS
               if p.with_name(p.name + e).is_file()]
      if not found:
        raise FileNotFoundError(f'{path}: no such folder or image')
      p = found[0]
    images, name = [p], p.stem
  annotated = [(image, _photo_faces(image)) for image in images]
  annotated = [(image, pts) for image, pts in annotated if pts]
  if max_photos and len(annotated) > max_photos:
    keep = np.unique(np.linspace(0, len(annotated) - 1, int(max_photos)).round().astype(int))
    annotated = [annotated[i] for i in keep]
  lazy = len(annotated) > 50 if lazy is None else lazy
  photos = []
  for image, pts_files in annotated:
    faces = []
    for f in pts_files:
      try:
        faces.append(io.read_pts(f, num_points=68))
      except (OSError, ValueError) as e:
        raise ValueError(f'{f}: cannot read the points ({e})') from None
    if lazy:
      _check_image(image)
      photos.append((str(image), None, faces))
    else:
      photos.append((str(image), pipeline.decode_image(str(image)), faces))
  if not photos:
    raise FileNotFoundError(f'{path}: no photo with .pts annotations (<photo>_<k>.pts or '
                            '<photo>.pts)')
  return name, photos


def _bins(values, bins) -> list[str]:
  return [next(label for lo, hi, label in bins if lo <= v < hi) for v in values]


def wilson_interval(found: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval (95 % for z = 1.96) of a recall ``found / total``."""
  if total <= 0:
    return (0.0, 1.0)
  p = found / total
  d = 1 + z * z / total
  c = (p + z * z / (2 * total)) / d
  h = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / d
  return (float(max(0.0, c - h)), float(min(1.0, c + h)))


def rendered_yaws(folder: str, photos) -> list[np.ndarray] | None:
  """Per photo, the faces' rendered |yaw| from ``yaws.json`` of a folder written by
  ``--write-synthetic`` (None when there is none or it lacks a photo)."""
  path = pathlib.Path(folder) / 'yaws.json'
  if not path.is_file():
    return None
  table = json.loads(path.read_text())
  out = []
  for photo, _, faces in photos:
    yaws = table.get(pathlib.Path(photo).stem)
    if yaws is None or len(yaws) != len(faces):
      return None
    out.append(np.abs(np.asarray(yaws, np.float64)))
  return out


def face_yaws(photos) -> list[np.ndarray | None]:
  """Per photo, (faces,) |yaw| in degrees of each face from the rigid 3DMM fit of its annotated
  points (:func:`jaxalign.morphable.pose.estimate_pose`); None for every photo when the Surrey
  Face Model is not installed (``JAXALIGN_SFM_DIR``)."""
  try:
    from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
    pose.reference_points()
  except (OSError, FileNotFoundError, RuntimeError, ValueError):
    return [None] * len(photos)
  points = np.stack([f for _, _, faces in photos for f in faces]).astype(np.float32)
  yaw = np.concatenate([np.asarray(pose.estimate_pose(points[i:i + 512])[:, 0])
                        for i in range(0, len(points), 512)])
  out, i = [], 0
  for _, _, faces in photos:
    out.append(np.nan_to_num(np.abs(yaw[i:i + len(faces)]), nan=999.0))
    i += len(faces)
  return out


def evaluate(detector, photos, yaws=None, image_variant: str = 'colour',
             yaw_bins=YAW_BINS) -> dict:
  """Runs ``detector`` (a :func:`~jaxalign.prediction.detector.make_detector` callable) on the
  photos and scores it (see the module doc).

  Args:
    detector: callable image -> list of Detection.
    photos: ``[(path, image or None (decoded here), [(68, 2) points, ...]), ...]``.
    yaws: per photo, the faces' yaws (degrees, sign ignored) or None.
    image_variant: :func:`variant` applied to every photo before detection.
    yaw_bins: ``((lo, hi, label), ...)`` for the by-|yaw| recall.

  Returns:
    The metrics, ``misses`` ([photo, landmark-box side px, |yaw| or None] per missed face) and
    ``pairs``: per found face (raw box, kind, landmark box).
  """
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  from jaxalign.data import records  # pylint: disable=g-import-not-at-top
  from jaxalign.prediction import box_mapping  # pylint: disable=g-import-not-at-top
  from jaxalign.prediction import detector as detector_lib  # pylint: disable=g-import-not-at-top
  detector(variant(np.zeros((64, 64, 3), np.uint8), image_variant))  # warm-up, not timed
  seconds, false, groups, pairs, mapped, truth = 0.0, 0, {}, [], [], []
  hits_iou, misses = 0, []
  for i, (path, image, faces) in enumerate(photos):
    if image is None:
      image = pipeline.decode_image(path)
    image = variant(image, image_variant)
    t0 = time.perf_counter()
    dets = detector(image)
    seconds += time.perf_counter() - t0
    gt = np.stack([records.landmark_box(f) for f in faces])
    raw = np.stack([d.raw_box if d.raw_box is not None else d.box for d in dets]) if dets \
        else np.zeros((0, 4))
    matched = match(raw, gt)
    false += len(dets) - len(matched)
    found = np.zeros(len(faces), bool)
    for f, k in matched:
      found[f] = True
      pairs.append((raw[k], dets[k].kind, gt[f]))
      mapped.append(dets[k].box)
      truth.append(gt[f])
    if dets:
      hits_iou += int((detector_lib.box_iou(gt, np.stack([d.box for d in dets])).max(1)
                       >= HIT_IOU).sum())
    face_yaw = None if yaws is None or yaws[i] is None else np.abs(np.asarray(yaws[i]))
    labels = [_bins(_side(gt), SIZE_BINS)]
    if face_yaw is not None:
      labels.append(_bins(face_yaw, yaw_bins))
    for per_face in labels:
      for label, ok in zip(per_face, found):
        n = groups.setdefault(label, [0, 0])
        n[0] += int(ok)
        n[1] += 1
    for f in np.flatnonzero(~found):
      misses.append([path, round(float(_side(gt[f:f + 1])[0]), 1),
                     None if face_yaw is None else round(float(face_yaw[f]), 1)])
  num_faces = sum(len(f) for _, _, f in photos)
  out = {'photos': len(photos), 'faces': num_faces, 'found': len(pairs),
         'recall': len(pairs) / max(num_faces, 1), 'recall_iou': hits_iou / max(num_faces, 1),
         'false': false, 'false_per_photo': false / max(len(photos), 1),
         'seconds_per_photo': seconds / max(len(photos), 1),
         'recall_interval': wilson_interval(len(pairs), num_faces),
         'recall_by': {k: {'found': v[0], 'faces': v[1], 'recall': v[0] / v[1],
                           'interval': wilson_interval(v[0], v[1])}
                       for k, v in groups.items()}}
  if mapped:
    mapped, truth = np.stack(mapped), np.stack(truth)
    iou = np.diag(detector_lib.box_iou(mapped, truth))
    centre, scale = box_mapping.centre_scale_error(mapped, truth)
    out.update(iou_median=float(np.median(iou)), centre_error_median=float(np.median(centre)),
               scale_error_median=float(np.median(scale)))
  out['misses'] = misses
  out['pairs'] = pairs
  return out


class SharedResults:
  """Remembers what a detector's ``candidates(image)`` or a verifier's ``(image, detections)``
  returned, per image (its pixels' digest) and detection box, so that detectors that differ only
  in which candidates they accept run MTCNN and CNN1 once per photo (their timings then count
  only the first run)."""

  def __init__(self, fn):
    self.fn, self.seen = fn, {}

  def __call__(self, image, detections=None):
    img = np.ascontiguousarray(image)
    key = (hashlib.sha1(img.tobytes()).hexdigest(), img.shape)
    if detections is None:
      if key not in self.seen:
        self.seen[key] = self.fn(image)
      return list(self.seen[key])
    keys = [key + (tuple(np.asarray(d.box, np.float32).tolist()),) for d in detections]
    new = [i for i, k in enumerate(keys) if k not in self.seen]
    if new:
      for i, ok in zip(new, np.asarray(self.fn(image, [detections[i] for i in new]), bool)):
        self.seen[keys[i]] = bool(ok)
    return np.array([self.seen[k] for k in keys], bool)


def fit_all(pairs_by_detector: dict) -> dict:
  """Per detector and kind, the box mapping fitted on all matched pairs (mirrored profile
  detections pooled with the profile ones)."""
  from jaxalign.prediction import box_mapping  # pylint: disable=g-import-not-at-top
  fits = {}
  for name, pairs in pairs_by_detector.items():
    kinds = sorted({k if k != 'profile_mirrored' else 'profile' for _, k, _ in pairs})
    for kind in kinds:
      sel = [p for p in pairs if p[1] == kind or (kind == 'profile' and p[1] ==
                                                   'profile_mirrored')]
      m = box_mapping.fit_mapping([p[0] for p in sel], [p[2] for p in sel],
                                  [p[1] == 'profile_mirrored' for p in sel])
      fits.setdefault(name, {})[kind] = dict(vars(m), pairs=len(sel))
  return fits


def _parser():
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench detect', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('datasets', nargs='*', help='folders of photos with .pts per face, or photos')
  p.add_argument('--detector', action='append', default=None,
                 help="detector name (repeatable; default: every installed one; 'none': "
                      'only the --first-pass and --verify rows)')
  p.add_argument('--synthetic', type=int, default=0,
                 help='add this many synthetic photos (needs JAXALIGN_SFM_DIR)')
  p.add_argument('--seed', type=int, default=0, help='seed of the synthetic photos')
  p.add_argument('--write-synthetic', default=None,
                 help='also write the synthetic photos and .pts into this folder')
  p.add_argument('--max-photos', type=int, default=0,
                 help='keep this many photos of each folder, evenly spaced (0: all)')
  p.add_argument('--variants', default='colour',
                 help=f'comma-separated image variants to run: {",".join(VARIANTS)}')
  p.add_argument('--misses', action='store_true', help='print every missed face')
  p.add_argument('--first-pass', action='store_true',
                 help="also score MTCNN's first pass alone as 'mtcnn-first' (the detector "
                      'before the mirror and equalised passes)')
  p.add_argument('--verify', default=None, metavar='RUN',
                 help="also score 'mtcnn+verify': MTCNN whose weaker extra-pass faces are "
                      "checked by RUN's CNN1 (jaxalign.prediction.verify)")
  p.add_argument('--verify-also', action='append', default=[], metavar='RUN',
                 help="with --verify: another run whose CNN1 may also accept a candidate that "
                      "RUN's rejects (repeatable; predict's --verify-also)")
  p.add_argument('--verify-thresholds', default='0.5,0.6,0.5',
                 help="with --verify: MTCNN's stage thresholds of 'mtcnn+verify'")
  p.add_argument('--verify-extra-min-score', default=None, metavar='S[,S...]',
                 help="with --verify: least score of a face that only an extra pass (mirror, "
                      "equalised) found, kept unverified (default: predict's, "
                      'verify.VERIFIED_EXTRA_MIN_SCORE); more values add '
                      "'mtcnn+verify@S' rows that share the first one's MTCNN runs")
  p.add_argument('--verify-grey-equalized', default=None, metavar='S|none',
                 help="with --verify: on grey photos an equalised face scoring >= S that the "
                      "equalised mirror confirms at >= S is kept as a first-pass face (default: "
                      "predict's, verify.VERIFIED_GREY_EQUALIZED_MIN_SCORE; 'none': off)")
  p.add_argument('--verify-accept', type=float, default=0.7,
                 help="with --verify: faces scoring below this go to the verifier (lowered "
                      'stage thresholds also let clutter through at final scores over 0.7)')
  p.add_argument('--low-thresholds', default=None,
                 help="with --verify: add MTCNN passes (image, mirror) at these stage "
                      'thresholds whose new faces are all verified (e.g. 0.3,0.4,0.3, '
                      "detector.LOW_THRESHOLDS; default: none, as predict)")
  p.add_argument('--profile', action='store_true',
                 help="with --verify: add the profile cascade's verified candidates")
  p.add_argument('--profile-min-neighbours', type=int, default=None,
                 help="with --profile: the cascade's minNeighbors (default: "
                      'detector.PROFILE_MIN_NEIGHBOURS)')
  p.add_argument('--baseline-too', action='store_true',
                 help="with --verify: also score 'mtcnn+verify-base' (verified MTCNN without "
                      'the low-threshold passes and the profile cascade)')
  p.add_argument('--fit', action='store_true', help='print the fitted box mappings')
  p.add_argument('--json', action='store_true', help='one JSON object on stdout')
  return p


def main(argv) -> int:
  from jaxalign.prediction import detector as detector_lib  # pylint: disable=g-import-not-at-top
  args = _parser().parse_args(argv)
  if not args.datasets and args.synthetic <= 0:
    print('error: give at least one data set folder or --synthetic N', file=sys.stderr)
    return 2
  if args.synthetic < 0:
    print(f'error: --synthetic {args.synthetic}: expected a count >= 0', file=sys.stderr)
    return 2
  variants = [v.strip() for v in args.variants.split(',') if v.strip()]
  bad = [v for v in variants if v not in VARIANTS]
  if bad or not variants:
    print(f'error: --variants {args.variants}: expected some of {", ".join(VARIANTS)}',
          file=sys.stderr)
    return 2
  if args.verify_also and not args.verify:
    print('error: --verify-also needs --verify RUN', file=sys.stderr)
    return 2
  names = args.detector or detector_lib.available_detectors()
  try:
    detectors = {n: detector_lib.make_detector(n) for n in names if n != 'none'}
    if args.first_pass:
      detectors['mtcnn-first'] = detector_lib.make_detector('mtcnn', mirror=False,
                                                            equalize=False)
    if args.verify:
      from jaxalign import inference  # pylint: disable=g-import-not-at-top
      from jaxalign.prediction import verify  # pylint: disable=g-import-not-at-top
      verifier = verify.make_verifier(inference.Run.load(args.verify), also=args.verify_also)
      thresholds = tuple(float(t) for t in args.verify_thresholds.split(','))
      low = None if args.low_thresholds in (None, 'none') else tuple(
          float(t) for t in args.low_thresholds.split(','))
      gates = [verify.VERIFIED_EXTRA_MIN_SCORE] if args.verify_extra_min_score is None else [
          float(g) for g in args.verify_extra_min_score.split(',')]
      verifier = SharedResults(verifier)
      grey_eq = {None: verify.VERIFIED_GREY_EQUALIZED_MIN_SCORE, 'none': None}.get(
          args.verify_grey_equalized, args.verify_grey_equalized)
      grey_eq = None if grey_eq is None else float(grey_eq)
      detectors['mtcnn+verify'] = detector_lib.make_detector(
          'mtcnn', verifier=verifier, thresholds=thresholds, accept_score=args.verify_accept,
          low_thresholds=low, profile=args.profile, extra_min_score=gates[0],
          grey_equalized_min_score=grey_eq,
          profile_min_neighbours=args.profile_min_neighbours)
      base = detectors['mtcnn+verify']
      base.candidates = SharedResults(base.candidates)
      for gate in gates[1:]:   # the same MTCNN runs and verdicts, another acceptance gate
        detectors[f'mtcnn+verify@{gate:g}'] = copy.copy(base)
        detectors[f'mtcnn+verify@{gate:g}'].extra_min_score = gate
      if args.baseline_too:
        detectors['mtcnn+verify-base'] = detector_lib.make_detector(
            'mtcnn', verifier=verifier, thresholds=thresholds, extra_min_score=gates[0],
            grey_equalized_min_score=grey_eq,
            accept_score=args.verify_accept, low_thresholds=None, profile=False)
  except (ValueError, RuntimeError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  datasets = []
  for path in args.datasets:
    try:
      name, photos = load_dataset(path, max_photos=args.max_photos)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    rendered = rendered_yaws(path, photos)
    if rendered is not None:
      datasets.append((name, photos, rendered, RENDERED_YAW_BINS))
    else:
      datasets.append((name, photos, face_yaws(photos), MISS_YAW_BINS))
  if args.synthetic > 0:
    from jaxalign.benchmarks import detect_scenes  # pylint: disable=g-import-not-at-top
    try:
      scenes = detect_scenes.make_scenes(args.synthetic, args.seed)
    except (FileNotFoundError, OSError) as e:
      print(f'error: cannot render synthetic photos: {e}', file=sys.stderr)
      return 2
    if args.write_synthetic:
      detect_scenes.write_scenes(args.write_synthetic, scenes)
    datasets.append((f'synthetic (seed {args.seed})',
                     [(s.name, s.image, s.faces) for s in scenes], [s.yaws for s in scenes],
                     RENDERED_YAW_BINS))
  results, pairs = {}, {}
  for name, photos, yaws, yaw_bins in datasets:
    for image_variant in variants:
      label = name if image_variant == 'colour' else f'{name} [{image_variant}]'
      for det_name, det in detectors.items():
        try:
          r = evaluate(det, photos, yaws, image_variant, yaw_bins)
        except ValueError as e:   # a photo that passed the header check but does not decode
          print(f'error: {e}', file=sys.stderr)
          return 2
        if image_variant == 'colour':  # the mapping is fitted on the photos as they are
          pairs.setdefault(det_name, []).extend(r['pairs'])
        del r['pairs']
        results.setdefault(label, {})[det_name] = r
  out = {'datasets': results}
  if args.fit:
    out['fit'] = fit_all(pairs)
  if args.json:
    print(json.dumps(out, indent=1))
    return 0
  print('| data set | detector | photos | faces | recall | false / photo | IoU | centre err | '
        'size err | s / photo |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for name, by_det in results.items():
    for det_name, r in by_det.items():
      fit = ' | '.join(f'{r[k]:.2f}' if k in r else '-' for k in
                       ('iou_median', 'centre_error_median', 'scale_error_median'))
      print(f'| {name} | {det_name} | {r["photos"]} | {r["faces"]} | {r["found"]}/{r["faces"]}'
            f' = {100 * r["recall"]:.1f} % | {r["false_per_photo"]:.2f} | {fit} | '
            f'{r["seconds_per_photo"]:.3f} |')
  for name, by_det in results.items():
    for det_name, r in by_det.items():
      parts = ', '.join(f'{k} {v["found"]}/{v["faces"]} [{100 * v["interval"][0]:.0f}-'
                        f'{100 * v["interval"][1]:.0f} %]' for k, v in r['recall_by'].items())
      print(f'{name} / {det_name}: {parts}; recall at IoU >= {HIT_IOU}: '
            f'{100 * r["recall_iou"]:.1f} %')
      if args.misses:
        for path, side, yaw in r['misses']:
          print(f'  missed: {path} side {side} px |yaw| {yaw}')
  for det_name, kinds in out.get('fit', {}).items():
    for kind, m in kinds.items():
      print(f'fit {det_name} {kind}: dx {m["dx"]:+.4f} dy {m["dy"]:+.4f} kw {m["kw"]:.4f} '
            f'kh {m["kh"]:.4f} ({m["pairs"]} faces)')
  return 0
