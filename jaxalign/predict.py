"""Landmarks, head pose and the 3DMM fit for faces in any photo.

  python -m jaxalign.predict --workdir RUN IMAGE... [--bbox x0,y0,x1,y1] [--out DIR] [--mesh]
      [--completion jax|eos|gaussian|none] [--batch-size 32] [--detector mtcnn|haar]
      [--no-refine] [--no-verify] [--verify-also RUN] [--no-draft]

Writes per face ``DIR/<stem>.pts`` (68 points, 1-based iBUG format), ``DIR/<stem>.json``
(points, box, yaw/pitch/roll, 3DMM coefficients, completion backend), with ``--mesh`` the fitted
mesh ``DIR/<stem>.obj``, and per image ``DIR/<stem>.png`` (stable landmarks green, completed
ones orange). Faces are found by a face detector (``--detector``: MTCNN when installed, else
OpenCV's Haar cascades) unless ``--bbox`` gives the box; faces of many photos share the CNN and
completion batches. A large JPEG is decoded at a DCT draft scale (1/2, 1/4, 1/8): for the
detector with a long side of at least 1,000 px, for the networks the smallest scale that keeps
the smallest face's crop resolution (``--no-draft``: full size); everything written is in the
photo's pixels. Exit status: 0 all images done, 1 some image failed (missing, unreadable,
no face; the others are still written), 2 nothing ran. Default ``DIR``: ``RUN/predict``.
"""

import argparse
import sys

from jaxalign import inference
from jaxalign.prediction import detector as detector_lib
from jaxalign.prediction import pipeline


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxalign.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='the training run (its latest checkpoint)')
  parser.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
  parser.add_argument('--bbox', help='face box x0,y0,x1,y1 in image pixels (skips the detector)')
  parser.add_argument('--out', help='output folder (default RUN/predict)')
  parser.add_argument('--mesh', action='store_true', help='also write the fitted mesh (.obj)')
  parser.add_argument('--completion', default='jax', choices=inference.BACKENDS,
                      help="completion backend: 'jax' or 'eos' (3DMM), 'gaussian' (2D "
                           "statistical), 'none' (the CNNs' points); the run's fusion and mix "
                           'tables apply where they were made for it')
  parser.add_argument('--batch-size', type=int, default=32, help='faces per forward pass')
  parser.add_argument('--detector', default=None, choices=detector_lib.DETECTORS,
                      help='face detector (default: the best installed: '
                      f'{", ".join(detector_lib.DETECTORS)})')
  parser.add_argument('--no-verify', action='store_true',
                      help="MTCNN at its usual thresholds only (default: weaker candidates are "
                           "kept when the run's CNN1 verifies them as faces)")
  parser.add_argument('--verify-also', action='append', default=[], metavar='RUN',
                      help="another run whose CNN1 may also accept a weaker candidate that the "
                           "run's own rejects (repeatable; e.g. one trained on synthetic faces "
                           'at every yaw, such as runs/syn_default or RUN/pretrain; off by '
                           'default, docs/benchmarks.md)')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')
  parser.add_argument('--no-refine', action='store_true',
                      help='use detector boxes as they are (no second pass around the points)')
  parser.add_argument('--no-draft', action='store_true',
                      help='decode JPEGs at full size (default: at the smallest DCT draft scale '
                           'the detector and the crops need; outputs stay in photo pixels)')
  args = parser.parse_args(argv)
  if args.batch_size < 1:
    parser.error('--batch-size must be positive')
  return pipeline.predict(args.workdir, args.images, bbox=args.bbox, out=args.out,
                          mesh=args.mesh, completion=args.completion,
                          batch_size=args.batch_size, refine=not args.no_refine,
                          detector=args.detector, progress=False if args.no_progress else None,
                          verify=not args.no_verify, draft=not args.no_draft,
                          verify_also=args.verify_also)


if __name__ == '__main__':
  sys.exit(main())
