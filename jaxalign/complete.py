"""``python -m jaxalign.complete ANNOTATION... --out DIR [--workdir RUN] [--completion jax|eos]
[--convention 2d|3d] [--report FILE]``

Measures the 3DMM completion stage on your own annotations: for each 68-point ``.pts`` or
``.ljson`` file (menpo v1-v3; in a v3 file with several groups, the one with 68 points) it
keeps the stable landmarks (their mirror for a left-looking face), completes the others with
the 3DMM, writes ``DIR/<stem>.pts`` and, with ``--report``, a JSON report with
per file and on average the inter-ocular NME of the completed (unstable) points, the estimated
yaw and whether the face was flipped. An image with the same stem beside the annotation (.png,
.jpg, .jpeg, .bmp) gives the image size; otherwise a box around the points is used.

``--workdir RUN`` completes as the run does (:meth:`jaxalign.inference.Run.completion`: its
backend and jaw convention, unless ``--completion`` / ``--convention`` say otherwise). The
run's fusion and mix with CNN1 need CNN1's points, which annotations do not have, so they do
not apply here.

Exit codes: 0 ok, 1 a failure during the work, 2 bad input (no readable annotation) or missing
model files.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

_IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp')


def _image_size(path: pathlib.Path):
  for ext in _IMAGE_EXTS:
    for cand in (path.with_suffix(ext), path.with_suffix(ext.upper())):
      if cand.is_file():
        import cv2
        img = cv2.imread(str(cand), cv2.IMREAD_UNCHANGED)
        if img is None:
          raise ValueError(f'{cand}: cannot read the image')
        return (img.shape[1], img.shape[0])
  return None


def _read(path: pathlib.Path):
  from jaxalign import io
  if path.suffix.lower() == '.pts':
    return io.read_pts(path, num_points=68)
  if path.suffix.lower() == '.ljson':
    return io.read_ljson(path, num_points=68)
  raise ValueError(f'{path}: unknown annotation format (expected .pts or .ljson)')


def complete_files(paths, out_dir, backend='jax', report=None, convention='2d',
                   learned: dict | None = None) -> dict:
  """Completes every file, writes the .pts outputs and the report; returns the report dict.

  ``backend`` 'learned' completes with a run's learned completion (its tables ``learned``,
  :func:`jaxalign.inference.complete_points`). Unreadable files are skipped and listed under
  ``skipped`` (never fatal).
  """
  from jaxalign import io
  from jaxalign import metrics
  from jaxalign.morphable import completion
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  points, sizes, names, skipped = [], [], [], []
  for p in map(pathlib.Path, paths):
    try:
      if not p.is_file():
        raise FileNotFoundError(f'{p}: no such file')
      pts = _read(p)
      if not np.isfinite(pts).all():
        raise ValueError(f'{p}: annotation has missing points')
      size = _image_size(p) or completion.default_image_size(pts)
    except (ValueError, FileNotFoundError, OSError) as e:
      skipped.append({'file': str(p), 'error': str(e)})
      continue
    points.append(pts)
    sizes.append(size)
    names.append(p)
  files = []
  if points:
    gt = np.stack(points).astype(np.float32)
    if backend == 'learned':
      from jaxalign import inference  # pylint: disable=g-import-not-at-top
      res = inference.complete_points(gt, completion.schemes_lib.IBUG68, 'learned',
                                      convention=convention, learned=learned,
                                      image_size=np.asarray(sizes))
    else:
      res = completion.complete(gt, backend=backend, image_size=np.asarray(sizes),
                                convention=convention)
    for i, p in enumerate(names):
      target = out_dir / (p.stem + '.pts')
      if res.ok[i]:
        io.write_pts(target, res.points[i])
      uls = [j for j in range(68) if not res.kept[i, j]]
      inner = [j for j in uls if j >= 17]
      jaw = [j for j in uls if j < 17]
      nme = lambda idx: float(metrics.nme(res.points[i:i + 1], gt[i:i + 1], indices=idx)[0])
      files.append({
          'file': str(p), 'output': str(target) if res.ok[i] else None, 'ok': bool(res.ok[i]),
          'ul_nme': nme(uls) if res.ok[i] else None,
          'ul_nme_inner': nme(inner) if res.ok[i] else None,
          'ul_nme_jaw': nme(jaw) if res.ok[i] else None,
          'yaw': float(res.yaw[i]), 'flipped': bool(res.flipped[i])})
  good = [f for f in files if f['ok']]
  mean = lambda k: float(np.mean([f[k] for f in good])) if good else None
  out = {'backend': backend, 'convention': convention, 'normalization': 'inter_ocular',
         'files': files, 'skipped': skipped,
         'mean': {'ul_nme': mean('ul_nme'), 'ul_nme_inner': mean('ul_nme_inner'),
                  'ul_nme_jaw': mean('ul_nme_jaw'), 'count': len(good)}}
  if report:
    pathlib.Path(report).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(report).write_text(json.dumps(out, indent=2))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.complete', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('annotations', nargs='+', help='.pts or .ljson files with 68 points')
  p.add_argument('--out', required=True, help='output folder for <stem>.pts')
  p.add_argument('--workdir', help="a trained run: complete with its backend and convention")
  p.add_argument('--completion', choices=('jax', 'eos', 'learned'), default=None,
                 help="completion backend (the same flag as in evaluate and predict; default "
                      "the run's, else jax)")
  p.add_argument('--convention', choices=('2d', '3d'), default=None,
                 help="jaw points: '2d' on the silhouette (300-W), '3d' fixed vertices "
                      "(default the run's, else 2d)")
  p.add_argument('--report', help='write the JSON report here')
  args = p.parse_args(argv)
  backend, convention = args.completion or 'jax', args.convention or '2d'
  learned = None
  if backend == 'learned' and not args.workdir:
    print("error: --completion learned: the learned completion is a run's; give --workdir RUN",
          file=sys.stderr)
    return 2
  if args.workdir:
    from jaxalign import inference
    try:
      run = inference.Run.load(args.workdir)
      completion = run.completion(args.completion, args.convention)
    except (FileNotFoundError, ValueError) as e:
      print(f'error: --workdir: {e}', file=sys.stderr)
      return 2
    if completion.backend not in ('jax', 'eos', 'learned'):
      print(f'error: --workdir: the run completes with {completion.backend!r}, not from the '
            'stable points; pass --completion jax, eos or learned', file=sys.stderr)
      return 2
    backend, convention = completion.backend, completion.convention
    learned = completion.learned
  from jaxalign import assets
  try:
    assets.sfm_dir()
  except assets.MissingModelFilesError as e:
    print(e, file=sys.stderr)
    return 2
  out = complete_files(args.annotations, args.out, backend, args.report, convention, learned)
  for s in out['skipped']:
    print(f"skipped {s['file']}: {s['error']}", file=sys.stderr)
  m = out['mean']
  if m['count']:
    print(f"{m['count']} faces, mean UL NME {100 * m['ul_nme']:.2f} % (inner "
          f"{100 * m['ul_nme_inner']:.2f} %, jaw {100 * m['ul_nme_jaw']:.2f} %), backend "
          f"{backend}")
  return 0 if m['count'] or not out['skipped'] else 2


if __name__ == '__main__':
  sys.exit(main())
