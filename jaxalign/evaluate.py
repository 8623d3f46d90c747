"""Evaluates a training run with the full pipeline (CNN pair + 3DMM completion).

  python -m jaxalign.evaluate --workdir RUN [--dataset NAME[:SPLIT] | --dataset FOLDER]
      [--data-dir ROOT] [--completion jax|eos|gaussian|none] [--out DIR] [--batch-size N]
      [--boxes auto|detector|landmarks]
  python -m jaxalign.evaluate --compare RUN RUN ... [--dataset ...] [--out DIR]

Without ``--dataset`` the run's own held-out split is evaluated. ``NAME`` is a registered data
set (300w, cofw68, aflw, aflw2k3d, folder; see docs/datasets.md) read from ``--data-dir``; a
folder of images + ``.pts`` can be given directly. A named data set's faces are cropped around
its own boxes where it ships box files, else around the face detector's box on the photo (the
landmark box jittered like a detector's where it finds nothing; ``--boxes``); ``report.json``'s
``boxes`` counts each kind. Writes into DIR (default
``RUN/eval/<data set>/``): report.json, report.md, predictions.npz, ced.png, nme_by_pose.png,
best_worst.png. ``--compare`` evaluates each run where needed and writes one table
(comparison.md / .json), one CED and one pose plot (default DIR: ``compare/<data set>`` beside
the first run).
"""

import argparse
import json
import logging
import sys

from jaxalign.evaluation import runner
from jaxalign.prediction import face_boxes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m jaxalign.evaluate', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  who = parser.add_mutually_exclusive_group(required=True)
  who.add_argument('--workdir', help='the training run to evaluate')
  who.add_argument('--compare', nargs='+', metavar='RUN', help='runs to compare')
  parser.add_argument('--dataset', help='NAME[:SPLIT] or a folder (default: the run\'s test split)')
  parser.add_argument('--data-dir', help='root folder of the named data set')
  parser.add_argument('--completion', default=None, choices=runner.BACKENDS,
                      help="completion backend: 'jax' or 'eos' (3DMM), 'gaussian' (2D "
                           "statistical); default each run's config.eval.completion_backend")
  parser.add_argument('--out', help='output folder')
  parser.add_argument('--batch-size', type=int, help='images per forward pass')
  parser.add_argument('--boxes', default='auto', choices=face_boxes.MODES,
                      help="face boxes of a named data set: 'auto' (its box files, else the "
                           "face detector, else the landmark box jittered like a detector's), "
                           "'detector', or 'landmarks' (with the run's eval.box_jitter)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  try:
    if args.compare:
      result = runner.compare_runs(args.compare, args.dataset, args.completion, args.out,
                                   args.data_dir, args.batch_size)
      print((runner.pathlib.Path(result['out_dir']) / 'comparison.md').read_text())
      print(f'written to {result["out_dir"]}')
      return 0
    rep = runner.evaluate(args.workdir, args.dataset, args.completion, args.out, args.data_dir,
                          args.batch_size, boxes=args.boxes)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  summary = {k: rep.get(k) for k in ('dataset', 'num_images', 'nme_inter_ocular',
                                     'nme_inter_pupil', 'nme_bbox', 'fr_0.08', 'auc_0.08',
                                     'nme_stable', 'nme_unstable', 'checkpoint_step')}
  print(json.dumps(summary, indent=2))
  print(f'written to {rep["out_dir"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
