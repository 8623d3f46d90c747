"""Validates a face data set and builds its crop cache: ``python -m jaxalign.datasets``.

``check --dataset NAME ROOT`` validates; ``cache --dataset NAME ROOT --out DIR`` crops every face
of every split once into the decode-once crop cache (:mod:`jaxalign.data.crop_cache`) at the
crop settings of ``--config`` (default: the base config, the paper's 224 px pose-aware model),
for training and evaluation with ``--config.data.crop_cache.enabled=True
--config.data.crop_cache.dir=DIR``:

  python -m jaxalign.datasets cache --dataset 300w /data/300W --out /data/crops \
      --config configs/paper_300w.py --json
  {"folder": "/data/crops/crops-...", "faces": 4026, "written": 4026, ...}

``check``:

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


def build_cache(name: str, root: str | os.PathLike, out: str | os.PathLike, config=None,
                splits: Sequence[str] | None = None, workers: int | None = None,
                **options) -> dict[str, Any]:
  """Crops every face of data set ``name`` (or of ``splits``) into the crop cache ``out``.

  Args:
    config: the training config whose crop settings the cache is for (model.input_size,
      data.box_margin / crop_context / host_scale / jpeg_draft); None: the base config. Its
      ``data.options`` apply when its ``data.source`` is ``name`` (the boxes training uses).
    options: the source's loader options (override the config's).

  Returns:
    {'folder', 'faces' (distinct faces read), 'written', 'cached' (already there), 'skipped'
    [{'path', 'reason'}] (unreadable images), 'invalid' (files the loader could not use),
    'seconds', 'bytes' (of the new part), 'crop_size', 'bytes_per_face'}.
  """
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from jaxalign.data import crop_cache, pipeline
  from jaxalign.training import config as config_lib
  config = config if config is not None else config_lib.base_config()
  if config.data.source == name:
    options = {**config.data.options.to_dict(), **options}
  by_split, invalid = sources.load_splits(name, root, **options)
  unknown = sorted(set(splits or ()) - set(by_split))
  if unknown:
    raise ValueError(f'{name} has no split {unknown[0]!r}; it has {sorted(by_split)}')
  records = [r for s, recs in by_split.items() if not splits or s in splits for r in recs]
  spec = dataclasses.replace(pipeline.CropSpec.from_config(config), cache_dir=str(out))
  summary = crop_cache.build(records, spec, out, workers=workers)
  faces = summary.written + summary.cached + len(summary.skipped)
  return {'folder': summary.folder, 'faces': faces, 'written': summary.written,
          'cached': summary.cached,
          'skipped': [{'path': p, 'reason': r} for p, r in summary.skipped.items()],
          'invalid': len(invalid), 'seconds': round(summary.seconds, 3),
          'bytes': summary.bytes, 'crop_size': spec.crop_size,
          'bytes_per_face': round(summary.bytes / max(summary.written, 1))}


def _add_source_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--boxes', default=None,
                      help='300w: detector (default) | ground_truth | landmarks; '
                           'cofw68: cofw68 (default) | cofw | landmarks')
  parser.add_argument('--image-dir', default=None,
                      help='cofw68 / the TFDS route: where their images are written as files')
  parser.add_argument('--scheme', default=None, help='folder: ibug68 (default) or aflw19')
  parser.add_argument('--landmarks', default=None,
                      help='the300w_lp: 2d (default) | 3d | origin (see docs/datasets.md)')
  parser.add_argument('--route', default=None,
                      help='the300w_lp / aflw2k3d: auto (default: the unzipped files, else a '
                           'TFDS data dir) | files | tfds')


def _source_options(args) -> dict[str, Any]:
  options = {}
  for key in ('boxes', 'image_dir', 'scheme', 'landmarks', 'route'):
    if getattr(args, key) is not None:
      options[key] = getattr(args, key)
  return options


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  parser = argparse.ArgumentParser(
      prog='python -m jaxalign.datasets',
      description='Validate a face-alignment data set, or build its crop cache '
                  '(see docs/datasets.md).')
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
  _add_source_options(check)
  cache = sub.add_parser('cache', help='crop every face once into the decode-once crop cache')
  cache.add_argument('root', help='the data set folder')
  cache.add_argument('--dataset', required=True, choices=sorted(sources.SOURCES),
                     help='which data set ROOT holds')
  cache.add_argument('--out', required=True,
                     help='the cache folder (a run reads it with data.crop_cache.dir=OUT)')
  cache.add_argument('--config', default=None,
                     help='the training config whose crop settings to cache (default: the '
                          'base config); --config.key=value overrides follow it')
  cache.add_argument('--split', action='append', default=None,
                     help='only this split (repeatable; default: every split)')
  cache.add_argument('--workers', type=int, default=None,
                     help='decoding threads (default: one per core)')
  cache.add_argument('--json', action='store_true', help='print one JSON object')
  _add_source_options(cache)
  overrides = [a for a in argv if a.startswith('--config.')]
  args = parser.parse_args([a for a in argv if not a.startswith('--config.')])
  args.overrides = overrides
  return args


def _cache_main(args) -> int:
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config = config_lib.load_config_file(args.config) if args.config else \
        config_lib.base_config()
    config_lib.apply_overrides(config, args.overrides)
    report = build_cache(args.dataset, args.root, args.out, config, args.split, args.workers,
                         **_source_options(args))
  except (FileNotFoundError, ValueError, ImportError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(report))
  else:
    print(f'{args.dataset} at {args.root} -> {report["folder"]}')
    print(f'  {report["faces"]} faces: {report["written"]} cropped, {report["cached"]} already '
          f'cached, {len(report["skipped"])} unreadable (skipped)')
    print(f'  {report["seconds"]:.1f} s, {report["bytes"] / 1e6:.1f} MB '
          f'({report["crop_size"]} px crops, {report["bytes_per_face"]} bytes a face)')
    for item in report['skipped']:
      print(f'    {item["path"]}: {item["reason"]}')
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  if args.command == 'cache':
    return _cache_main(args)
  if args.overrides:
    print(f'error: {args.overrides[0]}: --config.* is for the cache command', file=sys.stderr)
    return 2
  options = _source_options(args)
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
