"""Prediction throughput: ``python -m jaxalign.bench predict [--workdir RUN | --config FILE]``.

Faces per second of the whole pipeline behind ``python -m jaxalign.predict`` on given boxes:
decode the photo, crop, CNN1 -> spatial transform -> CNN2 on the device, 3DMM completion
(:func:`jaxalign.inference.run_pipeline`), at batch 1 and batch 32 (by default), with
the CNN and completion shares. The face detector (the default one, once per photo, on the
decode predict gives it: a JPEG at its draft scale, ``--no-draft`` full size) is timed
separately, with that decode. Compilation is excluded (one warm-up pass per batch size), said
so in the output.

The model is a trained run (``--workdir``) or, for speed alone, a freshly initialised model of
a config (default: the paper's pose-aware ResNet-50 pair at 224 px): the weights do not change
the speed. Photos: the shared real face (1280 x 1024) unless ``--image`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

from jaxalign import inference
from jaxalign.training import config as config_lib

DEFAULT_IMAGE = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'faces' / \
    'image_0010.png'


def _load_config(path: str | None):
  if path is None:
    return config_lib.base_config()
  return config_lib.load_config_file(path)


def _model(args):
  """(model, config, description, completion): a trained run with its own completion (its
  tables where they fit ``--completion``, as predict uses them), or an untrained model."""
  if args.workdir:
    run = inference.Run.load(args.workdir)
    return run.model, run.config, f'run {args.workdir}', run.completion(args.completion)
  from jaxalign.training import state as state_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.apply_overrides(_load_config(args.config), args.set)
  model = state_lib.create_model(config, seed=0)
  model.eval()
  m = config.model
  return model, config, (f'untrained {m.kind} ResNet-{m.depth} at {m.input_size} px '
                         f'({m.dtype}) from {args.config or "the base config"}'), args.completion


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench predict', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  who = p.add_mutually_exclusive_group()
  who.add_argument('--workdir', help='a trained run (default: an untrained model of --config)')
  who.add_argument('--config', help='config file for the untrained model (default: base config)')
  p.add_argument('--set', action='append', metavar='KEY=VALUE',
                 help='config override, e.g. --set model.depth=18 (repeatable)')
  p.add_argument('--image', default=str(DEFAULT_IMAGE), help='photo to predict on')
  p.add_argument('--bbox', help='face box x0,y0,x1,y1 (default: the detector\'s first face)')
  p.add_argument('--batch-size', type=int, nargs='+', default=[1, 32], help='batch sizes')
  p.add_argument('--faces', type=int, default=None,
                 help='faces timed per batch size (default: 2 batches, at least 4 faces)')
  p.add_argument('--completion', default='jax', choices=inference.BACKENDS)
  p.add_argument('--no-draft', action='store_true',
                 help='decode JPEGs at full size (default: the draft scales predict uses)')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  args = p.parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from jaxalign.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from jaxalign.prediction import detector, pipeline  # pylint: disable=g-import-not-at-top
  try:
    t = time.perf_counter()
    photo = pipeline.read_photo(
        args.image, 1.0 if args.no_draft else pipeline.detection_resolution(args.image))
    decode_s = time.perf_counter() - t
    model, config, what, completion = _model(args)
  except (OSError, ValueError) as e:   # FileNotFoundError is an OSError
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.no_draft:   # the crops too (they decode the photo at the run's draft scale)
    config.data.jpeg_draft = False
  t = time.perf_counter()
  dets = detector.detect_faces(photo.image)
  detect_s = time.perf_counter() - t
  if args.bbox:
    box = pipeline.parse_bbox(args.bbox)
  elif dets:
    box = pipeline.boxes_to_photo(dets[0].box, photo.factor)
  else:
    print(f'error: {args.image}: no face detected; pass --bbox', file=sys.stderr)
    return 2
  nan = np.full((68 if config.model.scheme == 'ibug68' else 19, 2), np.nan, np.float32)
  rows = []
  for batch in args.batch_size:
    calls = max(1, -(-(args.faces or max(4, 2 * batch)) // batch))
    records = [records_lib.FaceRecord(image=args.image, points=nan, box=box)] * batch
    inference.run_pipeline(model, config, records, completion, batch)  # compile
    cnn_s = completion_s = 0.0
    t = time.perf_counter()
    for _ in range(calls):   # one call per batch, as predict does per chunk of photos
      res = inference.run_pipeline(model, config, records, completion, batch)
      cnn_s += res['timings']['cnn_s']
      completion_s += res['timings']['completion_s']
    wall = time.perf_counter() - t
    n = calls * batch
    rows.append({'batch': batch, 'faces': n, 'faces_per_s': n / wall,
                 'cnn_faces_per_s': n / cnn_s,
                 'completion_faces_per_s': n / completion_s if completion_s > 0 else None,
                 'ms_per_face': 1000 * wall / n})
  result = {
      'benchmark': 'predict', 'model': what, 'completion': args.completion,
      'device': f'{jax.devices()[0].platform} ({jax.devices()[0].device_kind}, '
                f'{jax.device_count()} device(s))',
      'image': f'{args.image} ({photo.photo_hw[1]}x{photo.photo_hw[0]})',
      'detector': detector.default_detector(), 'detector_decode_factor': photo.factor,
      'detector_decode_s': decode_s, 'detector_s_per_image': detect_s, 'rows': rows, 'compilation': 'excluded',
      'cpu_count': os.cpu_count(), 'load_average': [round(x, 2) for x in os.getloadavg()],
      'date': time.strftime('%Y-%m-%d %H:%M'),
  }
  if args.json:
    print(json.dumps(result))
    return 0
  print(f'predict pipeline: {what}; completion {args.completion}; {result["device"]}; '
        f'image {result["image"]}; compilation excluded')
  print(f'detector ({result["detector"]}) on the 1/{photo.factor} decode '
        f'({photo.image.shape[1]}x{photo.image.shape[0]}, decoded in {1000 * decode_s:.0f} ms): '
        f'{1000 * detect_s:.0f} ms per image')
  print('batch  faces  faces/s  ms/face  CNN faces/s  completion faces/s')
  for r in rows:
    comp = '-' if r['completion_faces_per_s'] is None else f'{r["completion_faces_per_s"]:.1f}'
    print(f'{r["batch"]:5d}  {r["faces"]:5d}  {r["faces_per_s"]:7.2f}  {r["ms_per_face"]:7.1f}  '
          f'{r["cnn_faces_per_s"]:11.2f}  {comp:>18}')
  print(f'load average {result["load_average"]} on {os.cpu_count()} cores ({result["date"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
