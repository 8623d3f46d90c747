"""``python -m jaxalign.bench detect DIR... [--detector NAME ...] [--synthetic N] [--fit] [--json]``.

Face-detector recall and false detections on photos where every face is annotated.

A data set is a folder of photos with one ``.pts`` per face (``<photo>_<k>.pts``, or
``<photo>.pts`` for a single face; photos with neither are skipped), or one photo given by its
path (with or without its extension); ``--synthetic N`` adds N composited 3DMM photos
(:mod:`jaxalign.benchmarks.detect_scenes`, every yaw up to profile, faces from 20 px).

A detection matches a face when the face's landmark-box centre lies inside the detector's own
box and that box's longer side is 0.6-3x the landmark box's longer side (one detection per face,
closest centres first); detections matching no face are false detections. Per data set and
detector: recall (also by face size and, for synthetic photos, by yaw), false detections per
photo, the fit of the mapped box to the landmark box (IoU, centre error / landmark-box side,
|log| size ratio; medians over the found faces) and detector time per photo. ``--fit`` also
prints the box mapping fitted on all matched faces (medians, see
:mod:`jaxalign.prediction.box_mapping`).
"""

from __future__ import annotations

import argparse
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


def load_dataset(path: str) -> tuple[str, list[tuple[str, np.ndarray | None, list]]]:
  """``(name, [(photo path, image, [(68, 2) points, ...]), ...])`` of a folder or one photo.

  Raises:
    FileNotFoundError: nothing at ``path``, or no annotated photo there.
    ValueError: an unreadable image or .pts (the message names the file).
  """
  from jaxalign import io  # pylint: disable=g-import-not-at-top
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  p = pathlib.Path(path)
  if p.is_dir():
    images = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
    name = p.name
  else:
    if not p.is_file():
      found = [p.with_name(p.name + e) for e in IMAGE_EXTENSIONS
               if p.with_name(p.name + e).is_file()]
      if not found:
        raise FileNotFoundError(f'{path}: no such folder or image')
      p = found[0]
    images, name = [p], p.stem
  photos = []
  for image in images:
    pts_files = _photo_faces(image)
    if not pts_files:
      continue
    faces = []
    for f in pts_files:
      try:
        faces.append(io.read_pts(f, num_points=68))
      except (OSError, ValueError) as e:
        raise ValueError(f'{f}: cannot read the points ({e})') from None
    photos.append((str(image), pipeline.decode_image(str(image)), faces))
  if not photos:
    raise FileNotFoundError(f'{path}: no photo with .pts annotations (<photo>_<k>.pts or '
                            '<photo>.pts)')
  return name, photos


def _bins(values, bins) -> list[str]:
  return [next(label for lo, hi, label in bins if lo <= v < hi) for v in values]


def evaluate(detector, photos, yaws=None) -> dict:
  """Runs ``detector`` (a :func:`~jaxalign.prediction.detector.make_detector` callable) on the
  photos and scores it (see the module doc). ``yaws``: per photo, the faces' yaws or None.

  Returns:
    The metrics and ``pairs``: per found face (raw box, kind, landmark box).
  """
  from jaxalign.data import records  # pylint: disable=g-import-not-at-top
  from jaxalign.prediction import box_mapping  # pylint: disable=g-import-not-at-top
  from jaxalign.prediction import detector as detector_lib  # pylint: disable=g-import-not-at-top
  detector(np.zeros((64, 64, 3), np.uint8))  # warm-up: first-call set-up is not timed
  seconds, false, groups, pairs, mapped, truth = 0.0, 0, {}, [], [], []
  for i, (_, image, faces) in enumerate(photos):
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
    labels = [_bins(_side(gt), SIZE_BINS)]
    if yaws is not None and yaws[i] is not None:
      labels.append(_bins(np.abs(yaws[i]), YAW_BINS))
    for per_face in labels:
      for label, ok in zip(per_face, found):
        n = groups.setdefault(label, [0, 0])
        n[0] += int(ok)
        n[1] += 1
  num_faces = sum(len(f) for _, _, f in photos)
  out = {'photos': len(photos), 'faces': num_faces, 'found': len(pairs),
         'recall': len(pairs) / max(num_faces, 1), 'false': false,
         'false_per_photo': false / max(len(photos), 1),
         'seconds_per_photo': seconds / max(len(photos), 1),
         'recall_by': {k: {'found': v[0], 'faces': v[1], 'recall': v[0] / v[1]}
                       for k, v in groups.items()}}
  if mapped:
    mapped, truth = np.stack(mapped), np.stack(truth)
    iou = np.diag(detector_lib.box_iou(mapped, truth))
    centre, scale = box_mapping.centre_scale_error(mapped, truth)
    out.update(iou_median=float(np.median(iou)), centre_error_median=float(np.median(centre)),
               scale_error_median=float(np.median(scale)))
  out['pairs'] = pairs
  return out


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
                 help='detector name (repeatable; default: every installed one)')
  p.add_argument('--synthetic', type=int, default=0,
                 help='add this many synthetic photos (needs JAXALIGN_SFM_DIR)')
  p.add_argument('--seed', type=int, default=0, help='seed of the synthetic photos')
  p.add_argument('--write-synthetic', default=None,
                 help='also write the synthetic photos and .pts into this folder')
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
  names = args.detector or detector_lib.available_detectors()
  try:
    detectors = {n: detector_lib.make_detector(n) for n in names}
  except (ValueError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  datasets = []
  for path in args.datasets:
    try:
      name, photos = load_dataset(path)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    datasets.append((name, photos, None))
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
                     [(s.name, s.image, s.faces) for s in scenes], [s.yaws for s in scenes]))
  results, pairs = {}, {}
  for name, photos, yaws in datasets:
    for det_name, det in detectors.items():
      r = evaluate(det, photos, yaws)
      pairs.setdefault(det_name, []).extend(r.pop('pairs'))
      results.setdefault(name, {})[det_name] = r
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
      parts = ', '.join(f'{k} {v["found"]}/{v["faces"]}' for k, v in r['recall_by'].items())
      print(f'{name} / {det_name}: {parts}')
  for det_name, kinds in out.get('fit', {}).items():
    for kind, m in kinds.items():
      print(f'fit {det_name} {kind}: dx {m["dx"]:+.4f} dy {m["dy"]:+.4f} kw {m["kw"]:.4f} '
            f'kh {m["kh"]:.4f} ({m["pairs"]} faces)')
  return 0
