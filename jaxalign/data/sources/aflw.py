"""AFLW-Full: AFLW with the 19-point annotation file ``AFLWinfo_release.mat`` of CFSS / LAB.

Layout under ``root``::

  AFLWinfo_release.mat          (Zhu et al., CFSS / CCL release; found anywhere under root)
  flickr/0/image00002.jpg ...   (the AFLW images; ``data/flickr/`` and ``aflw/data/flickr/``
                                 of the AFLW download are accepted too)

``AFLWinfo_release.mat`` (24,386 faces) holds:

* ``nameList`` (N x 1 cell of char): image path relative to ``flickr/``, e.g. '3/image00035.jpg';
* ``data`` (N x 38): the 19 x coordinates, then the 19 y coordinates;
* ``mask_new`` (N x 19): 1 where the point is visible;
* ``bbox`` (N x 4): the face box as [x_left x_right y_top y_bottom];
* ``ra`` (1 x N): a 1-based permutation of the rows; its first 20,000 entries are the training
  faces, the other 4,386 the test faces (AFLW-Full). ``frontal`` is the test faces whose 19
  points are all visible (AFLW-Frontal, 1,165 in LAB's protocol).

The points follow :data:`jaxalign.schemes.AFLW19` (records have ``scheme='aflw19'``). The file
was written in MATLAB, so coordinates are read as 1-based and shifted by -1 to the project's
0-based convention (``index_base=1``; pass ``index_base=0`` to keep them as stored). AFLW-Full's
NME is normalised by the box size sqrt(w * h) of ``bbox``, which the records carry.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxalign import io
from jaxalign.data.records import FaceRecord, InvalidFile
from jaxalign.data import records as records_lib
from jaxalign.data.sources import matfile

SPLITS = ('train', 'test', 'frontal')
PROTOCOL_COUNTS = {'train': 20000, 'test': 4386, 'frontal': 1165}
OPTIONAL_SPLITS = ()
NUM_TRAIN = 20000
NUM_POINTS = 19
ANNOTATION_FILE = 'AFLWinfo_release.mat'


def _find_image_root(root: pathlib.Path) -> pathlib.Path | None:
  for cand in (root / 'flickr', root / 'data' / 'flickr', root / 'aflw' / 'data' / 'flickr'):
    if cand.is_dir():
      return cand
  return None


def load(root: str | os.PathLike, splits=None, annotation_file: str | os.PathLike | None = None,
         image_root: str | os.PathLike | None = None, index_base: float = 1.0,
         num_train: int = NUM_TRAIN
         ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads AFLW-Full.

  Args:
    root: folder holding ``AFLWinfo_release.mat`` and ``flickr/``.
    splits: names from ('train', 'test', 'frontal') (default: all).
    annotation_file: the .mat file (default: found under root).
    image_root: the folder the ``nameList`` paths are relative to (default: root/flickr).
    index_base: subtracted from every coordinate (1: MATLAB 1-based, the default).
    num_train: how many of ``ra`` are training faces (20,000 in the protocol).

  Returns:
    ({split: records}, invalid): records in ``ra`` order, ``scheme='aflw19'``, ``visible`` from
    ``mask_new``, ``meta['index']`` (0-based row of the .mat), ``meta['box_source']='aflw'``.
    Rows with a missing image or non-finite numbers are listed in ``invalid``.

  Raises:
    FileNotFoundError: root, the annotation file or the image folder is missing.
    ValueError: unknown split; the annotation file is unreadable or inconsistent.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'AFLW folder {root} does not exist or is not a folder')
  splits = list(splits or SPLITS)
  for s in splits:
    if s not in SPLITS:
      raise ValueError(f'unknown AFLW split {s!r}; expected one of {SPLITS}')
  if annotation_file is None:
    hits = sorted(root.rglob(ANNOTATION_FILE), key=lambda p: (len(p.parts), str(p)))
    if not hits:
      raise FileNotFoundError(f'{root}: no {ANNOTATION_FILE} found; see docs/datasets.md')
    annotation_file = hits[0]
  annotation_file = pathlib.Path(annotation_file)
  image_root = pathlib.Path(image_root) if image_root else _find_image_root(root)
  if image_root is None or not image_root.is_dir():
    raise FileNotFoundError(f'{root}: no AFLW image folder (flickr/, data/flickr/ or '
                            'aflw/data/flickr/); see docs/datasets.md')

  names = ('nameList', 'data', 'mask_new', 'bbox', 'ra')
  mat = matfile.load_mat(annotation_file, names, required=names)

  def fail(msg):
    raise ValueError(f'{annotation_file}: {msg}')

  name_list = np.asarray(mat['nameList'], object).ravel()
  n = len(name_list)
  numeric = {}
  for key in ('data', 'mask_new', 'bbox', 'ra'):
    try:
      numeric[key] = np.asarray(mat[key], np.float64)
    except (TypeError, ValueError):
      fail(f'{key} is not a numeric array')
  coords, mask, bbox = numeric['data'], numeric['mask_new'], numeric['bbox']
  if coords.shape != (n, 2 * NUM_POINTS):
    fail(f'data has shape {coords.shape}, expected ({n}, {2 * NUM_POINTS})')
  if mask.shape != (n, NUM_POINTS):
    fail(f'mask_new has shape {mask.shape}, expected ({n}, {NUM_POINTS})')
  if bbox.shape != (n, 4):
    fail(f'bbox has shape {bbox.shape}, expected ({n}, 4)')
  ra = numeric['ra'].ravel()
  if ra.size != n or not np.array_equal(np.sort(ra), np.arange(1, n + 1)):
    fail(f'ra is not a permutation of 1..{n}')
  order = ra.astype(np.int64) - 1

  invalid: list[InvalidFile] = []
  by_row: dict[int, FaceRecord] = {}
  for row in order:
    try:
      name = matfile.as_str(name_list[row])
    except ValueError as e:
      invalid.append(InvalidFile(f'{annotation_file}:nameList{{{row + 1}}}', str(e)))
      continue
    image = image_root / name
    where = f'{annotation_file}:row {row + 1} ({name})'
    if not image.is_file():
      invalid.append(InvalidFile(str(image), f'image not found (row {row + 1} of '
                                 f'{annotation_file.name})'))
      continue
    xy = coords[row]
    points = io.to_float32(np.stack([xy[:NUM_POINTS], xy[NUM_POINTS:]], 1) - index_base)
    if not np.isfinite(points).all():
      invalid.append(InvalidFile(where, 'landmarks hold NaN, infinity or numbers beyond float32'))
      continue
    x_left, x_right, y_top, y_bottom = bbox[row]
    box = io.to_float32(np.asarray([x_left, y_top, x_right, y_bottom]) - index_base)
    if not records_lib.valid_box(box):
      invalid.append(InvalidFile(where, f'bad face box {bbox[row].tolist()}'))
      continue
    by_row[int(row)] = FaceRecord(
        image=str(image), points=points, box=box,
        visible=mask[row] != 0,
        meta={'subset': 'aflw', 'index': int(row), 'box_source': 'aflw'}, scheme='aflw19')
  train_rows = order[:num_train]
  test_rows = order[num_train:]
  pick = lambda rows: [by_row[int(r)] for r in rows if int(r) in by_row]  # noqa: E731
  out = {}
  for s in splits:
    if s == 'train':
      out[s] = pick(train_rows)
    elif s == 'test':
      out[s] = pick(test_rows)
    else:
      out[s] = [r for r in pick(test_rows) if r.visible.all()]
  return out, invalid
