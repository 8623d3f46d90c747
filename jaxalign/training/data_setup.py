"""Resolving a config's data: the records of a registered data set, the folders, the embedded
synthetic data set.

:func:`training_records` and :func:`test_sets` are what the trainer reads. With ``data.source``
set (``configs/paper_*.py``) the faces come from :mod:`jaxalign.data.sources`
(``data.root``, ``data.train_split``, ``data.options``; the held-out ``data.test_splits`` from
``data.test_source`` / ``data.test_root`` / ``data.test_options``, defaulting to the training
ones). Otherwise they come from the 300-W-style folders ``data.train_dir`` / ``data.test_dir``.
Files a loader cannot use are logged with the reason and counted, never fatal.

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

import ml_collections

from jaxalign import schemes
from jaxalign.data import records as records_lib

log = logging.getLogger('jaxalign.train')


def synthetic_key(config) -> str:
  """Short hash of the synthetic-data settings, the seed and the ground-truth convention version
  (a change of the jaw convention must not reuse a cache rendered with the old one)."""
  from jaxalign.morphable import contour  # pylint: disable=g-import-not-at-top
  s = config.data.synthetic
  payload = json.dumps({'seed': int(config.seed), 'num_train': int(s.num_train),
                        'ground_truth_version': int(contour.GROUND_TRUTH_VERSION),
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


def ensure_synthetic_val(config) -> str:
  """Renders (once) ``data.synthetic.num_val`` validation faces from the training distribution
  with their own seed (no face shared with the training or test sets) into
  ``<cache>/val-<num_val>/`` beside the train / test folders; returns the folder ('' for none).
  Separate from the train / test cache, so adding it renders nothing else again."""
  s = config.data.synthetic
  num = int(s.get('num_val', 0) or 0)
  if not s.enabled or num <= 0:
    return ''
  root = os.path.join(s.root, f'synthetic-{synthetic_key(config)}')
  val_dir = os.path.join(root, f'val-{num}')
  marker = os.path.join(val_dir, 'COMPLETE')
  if not os.path.exists(marker):
    _generate(val_dir, num, int(s.image_size), int(config.seed) + 2_000_003, s.kwargs.to_dict())
    with open(marker, 'w', encoding='utf-8') as f:
      f.write('ok\n')
  return val_dir


def validation_records(config, records):
  """``(training records, validation records)``: the faces CNN1's held-out residuals are
  measured on (the completion's fusion weights), never the test set. A ``data.holdout_fraction``
  slice of the training faces (kept out of the training), else the faces of ``data.val_dir``,
  else the rendered synthetic validation faces (``data.synthetic.num_val``), else none.

  Raises:
    FileNotFoundError: ``data.val_dir`` is not a folder.
  """
  fraction = float(config.data.holdout_fraction or 0.0)
  if fraction > 0:
    return split_holdout(records, fraction, int(config.seed))
  folder = str(config.data.val_dir or '')
  if folder and not os.path.isdir(folder):
    raise FileNotFoundError(f'config.data.val_dir: {folder} is not a folder')
  if not folder and config.data.synthetic.enabled:
    folder = ensure_synthetic_val(config)
  if not folder:
    return list(records), []
  scheme = schemes.get_scheme(config.model.scheme)
  val, _ = load_records(folder, scheme.num_points, 'validation')
  return list(records), val


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


# ----------------------------------------------------------------------------- registered sources

def uses_source(config) -> bool:
  """True when the config reads its training data from a registered data set
  (``data.source``, :mod:`jaxalign.data.sources`) instead of a folder or the synthetic set."""
  return bool(config.data.source)


def _log_invalid(invalid, what: str) -> None:
  for bad in invalid[:20]:
    log.warning('%s data: skipping %s: %s', what, bad.path, bad.reason)
  if len(invalid) > 20:
    log.warning('%s data: ... and %d more invalid files', what, len(invalid) - 20)


def _from_source(data, which: str):
  """:func:`jaxalign.data.sources.from_config` with the config key named in its errors.

  A missing root or annotation file stays a FileNotFoundError, a missing optional dependency
  (tensorflow-datasets) becomes a ValueError, both naming ``config.data.*`` and one line long.
  """
  from jaxalign.data import sources  # pylint: disable=g-import-not-at-top
  key = 'data.root' if which == 'train' else ('data.test_root' if data.get('test_root')
                                              else 'data.root')
  try:
    return sources.from_config(data, which)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'config.{key}: {e}') from None
  except ImportError as e:
    raise ValueError(f'config.{key}: {e}') from None


def training_records(config):
  """The training faces of a run and the number of files skipped: (records, num_invalid).

  From ``data.source`` / ``data.root`` / ``data.train_split`` / ``data.options`` when
  ``data.source`` is set, else from the ``data.train_dir`` folder (rendering the synthetic set
  first when configured; :func:`resolve_data_dirs` fills the folders in place). Unusable files
  are logged with their reason and counted, never fatal.

  Raises:
    FileNotFoundError: the data folder (or a file the data set needs) does not exist.
    ValueError: no usable face, or a bad source / split / option.
  """
  scheme = schemes.get_scheme(config.model.scheme)
  if not uses_source(config):
    resolve_data_dirs(config)
    return load_records(config.data.train_dir, scheme.num_points, 'training')
  (split, (recs, invalid)), = _from_source(config.data, 'train').items()
  _check_scheme(recs, scheme, f'{config.data.source}/{split}')
  _log_invalid(invalid, 'training')
  if not recs:
    raise ValueError(f'config.data.root: split {split!r} of data set {config.data.source!r} in '
                     f'{config.data.root} holds no usable face ({len(invalid)} invalid files)')
  log.info('training data: %d faces from %s split %r of %s (%d invalid files skipped)',
           len(recs), config.data.source, split, config.data.root, len(invalid))
  return recs, len(invalid)


def test_sets(config) -> dict:
  """The held-out splits to evaluate: ``{split: (records, num_invalid)}``, in config order.

  Every split of ``data.test_splits`` from ``data.test_source`` (default ``data.source``) under
  ``data.test_root`` (default ``data.root``) when one of the sources is set and test splits are
  listed; otherwise the ``data.test_dir`` folder as split ``data.test_split`` (nothing when it
  is empty). A split with no usable face is left out with a warning. ``num_invalid`` counts the
  files the test data set could not use (shared by its splits: a file of ``common`` is also one
  of ``full``).
  """
  scheme = schemes.get_scheme(config.model.scheme)
  test_source = config.data.test_source or config.data.source
  if test_source and config.data.test_splits:
    data = config.data
    if not config.data.source:
      # Folder / synthetic training with a registered test set: from_config reads data.source.
      data = ml_collections.ConfigDict(config.data.to_dict())
      data.source = test_source
    loaded = _from_source(data, 'test')
    out = {}
    for split in config.data.test_splits:
      recs, invalid = loaded[split]
      if split == config.data.test_splits[0]:
        _log_invalid(invalid, 'test')
      if not recs:
        log.warning('test split %r of %s holds no usable face; not evaluated', split,
                    test_source)
        continue
      _check_scheme(recs, scheme, f'{test_source}/{split}')
      log.info('test data: %d faces in split %r of %s', len(recs), split, test_source)
      out[split] = (recs, len(invalid))
    return out
  if config.data.test_dir:
    recs, num_invalid = load_records(config.data.test_dir, scheme.num_points, 'test')
    return {str(config.data.test_split): (recs, num_invalid)}
  return {}


def _check_scheme(recs, scheme, what: str) -> None:
  """The records must carry the model's landmark scheme (config.validate checks the registry;
  this catches a folder source read with another ``scheme`` option)."""
  if recs and recs[0].scheme != scheme.name:
    raise ValueError(f'config.model.scheme: the model predicts {scheme.name} points but {what} '
                     f'has {recs[0].scheme} points; set model.scheme={recs[0].scheme}')


def split_holdout(records, fraction: float, seed: int):
  """``(train, holdout)``: a deterministic ``fraction`` of the training faces kept out of the
  training (a seeded permutation; order kept within each part). The held-out slice measures
  CNN1's residuals for the completion's fusion weights, never the test set."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'config.data.holdout_fraction: expected a fraction in [0, 1), got '
                     f'{fraction}')
  n = len(records)
  k = int(round(fraction * n))
  if k == 0:
    return list(records), []
  if n - k < 1:
    raise ValueError(f'config.data.holdout_fraction: {fraction} leaves no training face')
  import numpy as np  # pylint: disable=g-import-not-at-top
  held = np.zeros(n, bool)
  held[np.random.default_rng(seed).permutation(n)[:k]] = True
  return ([r for r, h in zip(records, held) if not h], [r for r, h in zip(records, held) if h])
