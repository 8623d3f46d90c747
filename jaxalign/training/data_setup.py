"""Resolving a config's data: the folders, the records, the embedded synthetic data set.

With ``data.synthetic.enabled`` and no ``data.train_dir``, a synthetic training and test set is
rendered once (:mod:`jaxalign.data.synthetic`) into
``<data.synthetic.root>/synthetic-<hash>/{train,test}``; the hash covers every setting that
changes the images, so a changed setting renders a new set and an unchanged one reuses the
cache. A ``COMPLETE`` marker is written last, so an interrupted rendering is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from jaxalign.data import records as records_lib

log = logging.getLogger('jaxalign.train')


def synthetic_key(config) -> str:
  """Short hash of the synthetic-data settings (and seed)."""
  s = config.data.synthetic
  payload = json.dumps({'seed': int(config.seed), 'num_train': int(s.num_train),
                        'num_test': int(s.num_test), 'image_size': int(s.image_size),
                        'kwargs': s.kwargs.to_dict()}, sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:10]


def _generate(out_dir: str, num: int, size: int, seed: int, kwargs: dict) -> None:
  """Renders ``num`` faces (:func:`jaxalign.data.synthetic_dataset.synthesize`)."""
  # pylint: disable=g-import-not-at-top
  from jaxalign.data import synthetic, synthetic_dataset
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  summary = synthetic_dataset.synthesize(
      out_dir, num, config=synthetic.SynthConfig(size=size, **fields), seed=seed)
  for index, error in summary.failed:
    log.warning('synthetic face %d failed: %s', index, error)
  log.info('rendered %d faces into %s in %.0f s', summary.written, out_dir, summary.seconds)


def ensure_synthetic(config) -> tuple[str, str]:
  """Renders the synthetic train / test folders if not cached; returns their paths."""
  s = config.data.synthetic
  root = os.path.join(s.root, f'synthetic-{synthetic_key(config)}')
  train_dir, test_dir = os.path.join(root, 'train'), os.path.join(root, 'test')
  marker = os.path.join(root, 'COMPLETE')
  if not os.path.exists(marker):
    log.info('rendering the synthetic data set into %s (once; cached for later runs)', root)
    # Test faces use another seed so no face is in both sets.
    _generate(train_dir, int(s.num_train), int(s.image_size), int(config.seed),
              s.kwargs.to_dict())
    if s.num_test > 0:
      _generate(test_dir, int(s.num_test), int(s.image_size), int(config.seed) + 1_000_003,
                s.kwargs.to_dict())
    with open(marker, 'w', encoding='utf-8') as f:
      f.write('ok\n')
  return train_dir, (test_dir if s.num_test > 0 else '')


def resolve_data_dirs(config) -> None:
  """Fills ``data.train_dir`` / ``data.test_dir`` (synthetic generation if needed) in place.

  Raises:
    FileNotFoundError: a configured folder does not exist.
  """
  if not config.data.train_dir:
    if not config.data.synthetic.enabled:
      raise ValueError('config.data.train_dir: no training data (set it to a 300-W-style '
                       'folder, or data.synthetic.enabled=True)')
    config.data.train_dir, test_dir = ensure_synthetic(config)
    if not config.data.test_dir:
      config.data.test_dir = test_dir
  for key in ('train_dir', 'test_dir'):
    path = config.data[key]
    if path and not os.path.isdir(path):
      raise FileNotFoundError(f'config.data.{key}: data folder {path} does not exist')


def load_records(folder: str, num_points: int, what: str):
  """``scan_folder`` with the skipped files logged; returns (records, num_invalid).

  Raises:
    ValueError: the folder holds no usable face.
  """
  recs, invalid = records_lib.scan_folder(folder, num_points=num_points)
  for bad in invalid[:20]:
    log.warning('skipping %s: %s', bad.path, bad.reason)
  if len(invalid) > 20:
    log.warning('... and %d more invalid files', len(invalid) - 20)
  if not recs:
    raise ValueError(f'{what} folder {folder} holds no usable image + .pts pair '
                     f'({len(invalid)} invalid files)')
  log.info('%s data: %d faces from %s (%d invalid files skipped)', what, len(recs), folder,
           len(invalid))
  return recs, len(invalid)
