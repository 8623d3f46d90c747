"""Validates a face data set: ``python -m jaxalign.datasets check --dataset NAME ROOT``.

Reads every split of the data set with :mod:`jaxalign.data.sources`, opens each image's header
(``--decode``: decodes every image), and prints the number of valid faces per split and the
files it could not use, with the reason. ``--no-images`` reads the annotations only (COFW-68's
without its image file, too). Warns (on stderr, and in the JSON's ``warnings``) when a
split's count differs from the published protocol or when faces fell back to the landmark box.

  python -m jaxalign.datasets check --dataset 300w /data/300W --json
  {"train": 3148, "common": 554, "challenge": 135, "full": 689, "invalid": [], "warnings": []}

Exit status: 0 when the data set could be read (1 with ``--strict`` when a file is invalid or a
count differs from the protocol), 2 on bad input (missing folder, unknown data set, unreadable
annotation file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from jaxalign.data import records as records_lib
from jaxalign.data import sources

_SHIPS_BOXES = ('300w', 'cofw68')
# The 300-W private test set comes without box files: landmark boxes are expected there.
_NO_BOX_SPLITS = {('300w', 'indoor'), ('300w', 'outdoor'), ('300w', 'private')}


def check_dataset(name: str, root: str | os.PathLike, decode: bool = False,
                  check_images: bool = True, **options) -> dict[str, Any]:
  """Reads data set ``name`` and returns the check report.

  Args:
    check_images: False: do not open the images; a loader that can read its annotations
      without the image file (COFW-68's ``with_images``) is told so.

  Returns:
    {split: number of valid faces, ..., 'invalid': [{'path', 'reason'}], 'warnings': [str]}.
    A face whose image does not open counts as invalid, not valid.
  """
  info = sources.source_info(name)
  if not check_images and 'with_images' in sources.option_names(name):
    options.setdefault('with_images', False)
  by_split, invalid = sources.load_splits(name, root, **options)
  report: dict[str, Any] = {}
  warnings: list[str] = []
  bad_images: dict[str, str] = {}
  for split, recs in by_split.items():
    if check_images:
      for r in recs:
        if r.image not in bad_images:
          reason = records_lib.check_image(r.image, decode=decode)
          bad_images[r.image] = reason
      recs = [r for r in recs if bad_images[r.image] is None]
    report[split] = len(recs)
    expected = info.protocol_counts.get(split)
    if expected is not None and len(recs) != expected:
      warnings.append(f'{name} split {split!r} has {len(recs)} valid faces; the protocol has '
                      f'{expected}')
    # 300-W and COFW-68 ship face boxes; a landmark box there means a missing box file/entry.
    if (name in _SHIPS_BOXES and options.get('boxes') != 'landmarks'
        and (name, split) not in _NO_BOX_SPLITS):
      fallback = sum(1 for r in recs if r.meta.get('box_source') == 'landmarks')
      if fallback:
        warnings.append(f'{name} split {split!r}: {fallback} of {len(recs)} faces have no '
                        'usable box of the asked kind and use their landmark box')
  seen = set()
  entries = []
  for item in list(invalid) + [records_lib.InvalidFile(p, r) for p, r in bad_images.items()
                               if r is not None]:
    if item.path not in seen:
      seen.add(item.path)
      reason = item.reason
      if reason.startswith(item.path + ': '):  # readers' messages often repeat the path
        reason = reason[len(item.path) + 2:]
      entries.append({'path': item.path, 'reason': reason})
  report['invalid'] = entries
  report['warnings'] = warnings
  return report


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m jaxalign.datasets',
      description='Validate a face-alignment data set (see docs/datasets.md).')
  sub = parser.add_subparsers(dest='command', required=True)
  check = sub.add_parser('check', help='count the valid faces per split, list invalid files')
  check.add_argument('root', help='the data set folder (300W-LP / AFLW2000-3D: unzipped, or '
                                  'a TFDS data dir)')
  check.add_argument('--dataset', required=True, choices=sorted(sources.SOURCES),
                     help='which data set ROOT holds')
  check.add_argument('--json', action='store_true', help='print one JSON object')
  check.add_argument('--strict', action='store_true',
                     help='exit 1 when a file is invalid or a count differs from the protocol')
  check.add_argument('--decode', action='store_true',
                     help='decode every image (slower; finds truncated files)')
  check.add_argument('--no-images', action='store_true',
                     help='do not open the images (annotations only)')
  check.add_argument('--boxes', default=None,
                     help='300w: detector (default) | ground_truth | landmarks; '
                          'cofw68: cofw68 (default) | cofw | landmarks')
  check.add_argument('--image-dir', default=None,
                     help='cofw68 / the TFDS route: where their images are written as files')
  check.add_argument('--scheme', default=None, help='folder: ibug68 (default) or aflw19')
  check.add_argument('--landmarks', default=None,
                     help='the300w_lp: 2d (default) | 3d | origin (see docs/datasets.md)')
  check.add_argument('--route', default=None,
                     help='the300w_lp / aflw2k3d: auto (default: the unzipped files, else a '
                          'TFDS data dir) | files | tfds')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  options = {}
  if args.boxes is not None:
    options['boxes'] = args.boxes
  if args.image_dir is not None:
    options['image_dir'] = args.image_dir
  for key in ('scheme', 'landmarks', 'route'):
    if getattr(args, key) is not None:
      options[key] = getattr(args, key)
  try:
    report = check_dataset(args.dataset, args.root, decode=args.decode,
                           check_images=not args.no_images, **options)
  except (FileNotFoundError, ValueError, ImportError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for w in report['warnings']:
    print(f'warning: {w}', file=sys.stderr)
  if args.json:
    print(json.dumps(report))
  else:
    splits = [k for k in report if k not in ('invalid', 'warnings')]
    print(f'{args.dataset} at {args.root}')
    for s in splits:
      expected = sources.SOURCES[args.dataset].protocol_counts.get(s)
      note = f'  (protocol: {expected})' if expected is not None else ''
      print(f'  {s:<10} {report[s]:>7} faces{note}')
    print(f'  invalid    {len(report["invalid"]):>7} files')
    for item in report['invalid']:
      print(f'    {item["path"]}: {item["reason"]}')
  if args.strict and (report['invalid'] or report['warnings']):
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
