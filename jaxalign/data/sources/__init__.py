"""The published face data sets, read into :class:`jaxalign.data.records.FaceRecord` lists.

``get_source(name, root, split, **options) -> (records, invalid)`` is the one entry point;
``load_splits`` reads several splits of one data set in one pass. Known data sets:

==============  ========================================  =========================  ========
name            splits (protocol sizes)                   scheme / NME normaliser    module
==============  ========================================  =========================  ========
``300w``        train 3148, common 554, challenge 135,    ibug68 / inter-ocular      w300
                full 689; optional indoor 300, outdoor
                300, private 600
``cofw68``      test 507                                  ibug68 / inter-ocular      cofw68
``aflw``        train 20000, test 4386, frontal 1165      aflw19 / box               aflw
``folder``      all                                       ibug68 (or ``scheme=``)    records
``the300w_lp``  train 61225                               ibug68 / inter-ocular      threeddfa
``aflw2k3d``    test 2000                                 ibug68 (3D) / box          threeddfa
==============  ========================================  =========================  ========

300W-LP and AFLW2000-3D are read from their unzipped folders, or, where ``root`` is a
tensorflow-datasets data dir, through TFDS (:mod:`.threeddfa` picks the route).

No loader drops a sample silently: whatever it cannot use is returned in ``invalid`` with the
reason. Options are keyword arguments of the module's ``load`` (e.g. ``boxes='ground_truth'``
for 300-W); an unknown option raises ``ValueError`` naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, Mapping

from jaxalign.data import records as records_lib
from jaxalign.data.records import FaceRecord, InvalidFile
from jaxalign.data.sources import aflw, cofw68, threeddfa, w300


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What the registry knows about one data set.

  Attributes:
    name: registry name.
    splits: every split name, in display order.
    protocol_counts: the number of faces each split has in the published protocol.
    optional_splits: splits left out (without a warning) when their files are absent.
    scheme: landmark scheme name of the records.
    normalization: the NME normaliser the literature uses for it ('inter_ocular' or 'bbox').
    load: ``load(root, splits=None, **options) -> ({split: records}, invalid)``.
  """

  name: str
  splits: tuple[str, ...]
  protocol_counts: Mapping[str, int]
  optional_splits: tuple[str, ...]
  scheme: str
  normalization: str
  load: Callable[..., tuple[dict[str, list[FaceRecord]], list[InvalidFile]]]


def _load_folder(root, splits=None, scheme: str = 'ibug68'):
  for s in splits or ('all',):
    if s != 'all':
      raise ValueError(f"unknown folder split {s!r}; a folder has one split, 'all'")
  recs, invalid = records_lib.scan_folder(root, scheme=scheme)
  return {'all': recs}, invalid


SOURCES: dict[str, SourceInfo] = {
    '300w': SourceInfo('300w', w300.SPLITS, w300.PROTOCOL_COUNTS, w300.OPTIONAL_SPLITS,
                       'ibug68', 'inter_ocular', w300.load),
    'cofw68': SourceInfo('cofw68', cofw68.SPLITS, cofw68.PROTOCOL_COUNTS, (),
                         'ibug68', 'inter_ocular', cofw68.load),
    'aflw': SourceInfo('aflw', aflw.SPLITS, aflw.PROTOCOL_COUNTS, (),
                       'aflw19', 'bbox', aflw.load),
    'folder': SourceInfo('folder', ('all',), {}, (), 'ibug68', 'inter_ocular', _load_folder),
    'the300w_lp': SourceInfo('the300w_lp', threeddfa.SPLITS['the300w_lp'],
                             threeddfa.PROTOCOL_COUNTS['the300w_lp'], (), 'ibug68',
                             'inter_ocular', functools.partial(threeddfa.load, 'the300w_lp')),
    'aflw2k3d': SourceInfo('aflw2k3d', threeddfa.SPLITS['aflw2k3d'],
                           threeddfa.PROTOCOL_COUNTS['aflw2k3d'], (), 'ibug68', 'bbox',
                           functools.partial(threeddfa.load, 'aflw2k3d')),
}


def source_info(name: str) -> SourceInfo:
  """The registry entry of ``name``; ValueError listing the known names otherwise."""
  try:
    return SOURCES[name]
  except KeyError:
    raise ValueError(f'unknown data set {name!r}; known: {sorted(SOURCES)}') from None


def records_convention(records) -> str | None:
  """The jaw convention all ``records`` share (``meta['convention']``: '2d' or '3d'), or None
  when they do not say or disagree (then the run's own ``eval.completion_convention`` holds)."""
  found = {r.meta.get('convention') for r in records}
  return found.pop() if len(found) == 1 and found <= {'2d', '3d'} else None


def option_names(name: str) -> list[str]:
  """The keyword options data set ``name``'s loader takes (e.g. ['boxes', 'boxes_dir'])."""
  params = inspect.signature(source_info(name).load).parameters
  return [p for p in params if p not in ('root', 'splits', 'name')]


def _check_options(info: SourceInfo, options: Mapping[str, Any]) -> None:
  allowed = option_names(info.name)
  for key in options:
    if key not in allowed:
      raise ValueError(f'unknown option {key!r} for data set {info.name!r}; '
                       f'its options: {allowed}')


def load_splits(name: str, root: str | os.PathLike, splits=None, **options
                ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads several splits of data set ``name`` under ``root`` in one pass.

  Args:
    name: a key of :data:`SOURCES`.
    root: the data set's folder (300W-LP / AFLW2000-3D: unzipped, or a TFDS data dir).
    splits: split names (default: every split present).
    **options: passed to the data set's ``load`` (see each module).

  Returns:
    ({split: records}, invalid): the invalid list is shared by the splits (a file is listed
    once even when it belongs to two of them).
  """
  info = source_info(name)
  _check_options(info, options)
  if splits is not None:
    splits = [splits] if isinstance(splits, str) else list(splits)
    for s in splits:
      if s not in info.splits:
        raise ValueError(f'unknown split {s!r} of data set {name!r}; expected one of '
                         f'{info.splits}')
  return info.load(root, splits=splits, **options)


def get_source(name: str, root: str | os.PathLike, split: str, **options
               ) -> tuple[list[FaceRecord], list[InvalidFile]]:
  """The records of one split of data set ``name`` and the files it could not use.

  Example: ``records, invalid = get_source('300w', '/data/300W', 'challenge')``.

  Raises:
    ValueError: unknown data set, split or option; unreadable annotation files.
    FileNotFoundError: ``root`` or a required file is missing.
    ImportError: 300W-LP / AFLW2000-3D: root holds none of their files and tensorflow-datasets
      (needed to read a TFDS data dir) is not installed.
  """
  by_split, invalid = load_splits(name, root, [split], **options)
  return by_split[split], invalid


def _options(value) -> dict[str, Any]:
  if value is None:
    return {}
  return dict(value.to_dict() if hasattr(value, 'to_dict') else value)


def from_config(data, which: str = 'train'
                ) -> dict[str, tuple[list[FaceRecord], list[InvalidFile]]]:
  """The records a training config's ``data`` section names.

  Reads the keys the ``configs/paper_*.py`` files set (``data.source``, ``data.root``,
  ``data.train_split``, ``data.options``; ``data.test_source``, ``data.test_root``,
  ``data.test_splits``, ``data.test_options``, where an empty test source / root means the
  training one).

  Args:
    data: the ``config.data`` ConfigDict (or a dict).
    which: 'train' (one entry, the training split) or 'test' (one entry per test split).

  Returns:
    {split: (records, invalid)}.
  """
  get = data.get
  source, root = get('source', 'folder'), get('root', '')
  if which == 'train':
    by_split, invalid = load_splits(source, root, [get('train_split', 'train')],
                                    **_options(get('options')))
    return {k: (v, invalid) for k, v in by_split.items()}
  if which != 'test':
    raise ValueError(f"which must be 'train' or 'test', got {which!r}")
  test_source = get('test_source', '') or source
  test_root = get('test_root', '') or root
  splits = list(get('test_splits', ()) or ())
  if not splits:
    return {}
  by_split, invalid = load_splits(test_source, test_root, splits,
                                  **_options(get('test_options')))
  return {k: (v, invalid) for k, v in by_split.items()}
