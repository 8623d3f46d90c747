"""Synthetic annotated faces: ``python -m jaxalign.synthesize --out DIR --num N [flags]``.

Writes a 300-W-style folder (``synth_<index>.png`` + ``.pts``, 2D convention) with
``annotations.jsonl`` (pose, visibility, occlusion, 3D-convention points, coefficients); see
:mod:`jaxalign.data.synthetic_dataset`. ``--contact-sheet PATH`` writes a picture of examples
instead. The same flags and seed give byte-identical files; ``--start`` makes shards.

Model-mismatch flags (off by default; the output is then what it was without them):
``--tail-shape-sigma S [--tail-start K]`` (shape components K.. drawn with sigma S, outside what
the JAX completion fits), ``--deformation-mm D [--deformation-scale-mm W]`` (smooth random
per-vertex displacement, RMS D mm, outside every fitter's shape space),
``--expression-strength LO HI`` (total blendshape weight, default 0.2 1) and
``--annotation-noise F`` (Gaussian noise on the .pts points, F x the landmark box side).
"""

from __future__ import annotations

import argparse
import sys

from jaxalign.data import synthetic
from jaxalign.data import synthetic_dataset


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='python -m jaxalign.synthesize',
      description='Render random Surrey Face Model faces with exact 68-point ground truth.')
  p.add_argument('--out', help='output folder (created if missing)')
  p.add_argument('--num', type=int, help='number of faces (default 24 for --contact-sheet)')
  p.add_argument('--size', type=int, default=128, help='image side in pixels (default 128)')
  p.add_argument('--seed', type=int, default=0, help='data set seed (default 0)')
  p.add_argument('--start', type=int, default=0, help='index of the first face (shards)')
  p.add_argument('--yaw-range', type=float, nargs=2, default=(-90.0, 90.0), metavar=('LO', 'HI'),
                 help='yaw in degrees, eos sign (> 0 right-looking); default -90 90')
  p.add_argument('--pitch-range', type=float, nargs=2, default=(-20.0, 20.0),
                 metavar=('LO', 'HI'), help='pitch in degrees (default -20 20)')
  p.add_argument('--roll-range', type=float, nargs=2, default=(-20.0, 20.0),
                 metavar=('LO', 'HI'), help='roll in degrees (default -20 20)')
  p.add_argument('--occlusion', type=float, default=0.0,
                 help='probability of occluders on a face (default 0)')
  m = p.add_argument_group('model mismatch (default: none)')
  m.add_argument('--tail-shape-sigma', type=float, default=None, metavar='S',
                 help='sigma of shape components from --tail-start on (default: as the others)')
  m.add_argument('--tail-start', type=int, default=30, metavar='K',
                 help='first tail shape component (default 30, what the JAX fitter uses)')
  m.add_argument('--deformation-mm', type=float, default=0.0, metavar='D',
                 help='RMS of a smooth random per-vertex deformation in mm (default 0)')
  m.add_argument('--deformation-scale-mm', type=float, default=40.0, metavar='W',
                 help='width of the deformation bumps in mm (default 40)')
  m.add_argument('--expression-strength', type=float, nargs=2, default=(0.2, 1.0),
                 metavar=('LO', 'HI'), help='total expression weight range (default 0.2 1)')
  m.add_argument('--annotation-noise', type=float, default=0.0, metavar='F',
                 help='ground-truth point noise sigma, fraction of the box side (default 0)')
  p.add_argument('--workers', type=int, default=None,
                 help='processes (default: every CPU core)')
  p.add_argument('--sfm-dir', default=None,
                 help='Surrey Face Model folder (default $JAXALIGN_SFM_DIR or the cache)')
  p.add_argument('--contact-sheet', metavar='PATH',
                 help='write a PNG grid of examples with their points instead of a data set')
  p.add_argument('--quiet', action='store_true', help='no progress output')
  return p.parse_args(argv)


def mismatch_kwargs(args) -> dict:
  """The :class:`~jaxalign.data.synthetic.SynthConfig` mismatch fields of parsed flags."""
  return dict(tail_shape_sigma=args.tail_shape_sigma, tail_start=args.tail_start,
              deformation_mm=args.deformation_mm, deformation_scale_mm=args.deformation_scale_mm,
              expression_strength=tuple(args.expression_strength),
              annotation_noise=args.annotation_noise)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.contact_sheet:
      config = synthetic.SynthConfig(
          size=args.size, yaw_range=tuple(args.yaw_range), pitch_range=tuple(args.pitch_range),
          roll_range=tuple(args.roll_range), occlusion=args.occlusion or 0.25,
          **mismatch_kwargs(args))
      synthetic_dataset.contact_sheet(args.contact_sheet, num=args.num or 24, seed=args.seed,
                                      config=config)
      print(f'wrote {args.contact_sheet}')
      return 0
    if not args.out:
      raise ValueError('--out is required (or --contact-sheet PATH)')
    if args.num is None:
      raise ValueError('--num is required')
    config = synthetic.SynthConfig(
        size=args.size, yaw_range=tuple(args.yaw_range), pitch_range=tuple(args.pitch_range),
        roll_range=tuple(args.roll_range), occlusion=args.occlusion, **mismatch_kwargs(args))
    progress = None
    if not args.quiet:
      step = max(1, args.num // 20)

      def progress(k):
        if k % step == 0 or k == args.num:
          print(f'\r{k}/{args.num} faces', end='', file=sys.stderr, flush=True)
    summary = synthetic_dataset.synthesize(
        args.out, args.num, config=config, seed=args.seed, start=args.start,
        workers=args.workers, model_dir=args.sfm_dir, progress=progress)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not args.quiet:
    print(file=sys.stderr)
  for index, error in summary.failed:
    print(f'warning: face {index} failed: {error}', file=sys.stderr)
  print(f'wrote {summary.written} faces to {summary.out_dir} in {summary.seconds:.1f} s '
        f'({summary.faces_per_second:.1f} faces/s, {summary.workers} workers)')
  return 1 if summary.failed else 0


if __name__ == '__main__':
  sys.exit(main())
