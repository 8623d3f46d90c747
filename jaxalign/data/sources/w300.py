"""300-W as distributed by iBUG, split by the protocol of Ren et al. (CVPR 2014).

Layout under ``root`` (the folders of the 300-W download; ``.pts`` beside each image)::

  afw/  helen/trainset/  helen/testset/  lfpw/trainset/  lfpw/testset/  ibug/
  Bounding Boxes/bounding_boxes_*.mat        (optional; found anywhere under root)
  300W/01_Indoor/  300W/02_Outdoor/          (optional: the 300-W challenge's private test set;
                                              also accepted directly under root)

Splits and their protocol sizes: ``train`` = afw + helen/trainset + lfpw/trainset (3,148),
``common`` = helen/testset + lfpw/testset (554), ``challenge`` = ibug (135), ``full`` =
common + challenge (689); the private set: ``indoor`` (300), ``outdoor`` (300), ``private`` =
both (600).

Validation: ``val`` is a fixed tenth of ``train`` and ``fit`` the other nine tenths. A face is in
``val`` when the SHA-1 of its path below the subset folder (``afw/134212_1.jpg``, with forward
slashes) ends in a byte whose value is below 26 (26 / 256 = 10.2 %), so the split is the same on
every machine, for any seed, file order or subset of the files present, and never changes once
fixed. (The 300-W test faces stay held out: select runs on ``val``, report on ``common``.)

Boxes: the official 300-W bounding-box files hold, per image, ``bb_detector`` (the face
detector's box: the paper's "default bounding boxes") and ``bb_ground_truth`` (the tight box of
the annotation). Both are [x0 y0 x1 y1] in MATLAB's 1-based pixels, like the ``.pts`` files, so
they are shifted by -1 to the project's 0-based convention. ``boxes='detector'`` (default),
``'ground_truth'`` or ``'landmarks'`` (the tight box of the loaded points) picks the kind; a face
with no usable box of the asked kind falls back to the landmark box, and the record says which
box it has in ``meta['box_source']``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxalign import io
from jaxalign.data import records as records_lib
from jaxalign.data.records import FaceRecord, InvalidFile
from jaxalign.data.sources import matfile

SUBSETS = {
    'train': ('afw', 'helen/trainset', 'lfpw/trainset'),
    'common': ('helen/testset', 'lfpw/testset'),
    'challenge': ('ibug',),
    'indoor': ('01_Indoor',),
    'outdoor': ('02_Outdoor',),
}
COMBINED = {'full': ('common', 'challenge'), 'private': ('indoor', 'outdoor')}
# Fixed parts of 'train' (module docstring): the validation tenth and the rest.
TRAIN_PARTS = ('fit', 'val')
SPLITS = ('train', 'fit', 'val', 'common', 'challenge', 'full', 'indoor', 'outdoor', 'private')
VAL_BYTE_BELOW = 26   # last SHA-1 byte < 26: about 10.2 % of the faces
PROTOCOL_COUNTS = {'train': 3148, 'common': 554, 'challenge': 135, 'full': 689,
                   'indoor': 300, 'outdoor': 300, 'private': 600}
# Splits that are left out (not an error) when their folders are absent.
OPTIONAL_SPLITS = ('indoor', 'outdoor', 'private')
BOX_KINDS = ('detector', 'ground_truth', 'landmarks')
BOX_FILES = {
    'afw': 'bounding_boxes_afw.mat',
    'helen/trainset': 'bounding_boxes_helen_trainset.mat',
    'helen/testset': 'bounding_boxes_helen_testset.mat',
    'lfpw/trainset': 'bounding_boxes_lfpw_trainset.mat',
    'lfpw/testset': 'bounding_boxes_lfpw_testset.mat',
    'ibug': 'bounding_boxes_ibug.mat',
}
_BOX_FIELDS = {'detector': 'bb_detector', 'ground_truth': 'bb_ground_truth'}


def read_box_file(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Reads one official ``bounding_boxes_*.mat`` file.

  The file holds ``bounding_boxes``, a 1 x N cell array of structs with fields ``imgName``
  (the image file name), ``bb_detector`` and ``bb_ground_truth`` ([x0 y0 x1 y1], 1-based).

  Returns:
    {image file name: {'detector': (4,) float32, 'ground_truth': (4,) float32}}, boxes in
    0-based (x0, y0, x1, y1) pixels.

  Raises:
    ValueError: the file is unreadable or not laid out as above (the message names it).
  """
  data = matfile.load_mat(path, ['bounding_boxes'], required=['bounding_boxes'])
  cells = np.asarray(data['bounding_boxes'], object).ravel()
  boxes = {}
  for k, cell in enumerate(cells):
    try:
      name = os.path.basename(matfile.as_str(matfile.field(cell, 'imgName')))
      entry = {kind: io.to_float32(matfile.as_float(matfile.field(cell, fld), 4) - 1.0)
               for kind, fld in _BOX_FIELDS.items()}
    except ValueError as e:
      raise ValueError(f'{path}: entry {k + 1} of bounding_boxes: {e}') from None
    boxes[name] = entry
  return boxes


def _find_subset(root: pathlib.Path, subset: str) -> pathlib.Path | None:
  for base in (root, root / '300W'):
    if (base / subset).is_dir():
      return base / subset
  return None


def _find_box_files(root: pathlib.Path, boxes_dir: str | os.PathLike | None
                    ) -> dict[str, pathlib.Path]:
  if boxes_dir is not None:
    boxes_dir = pathlib.Path(boxes_dir)
    if not boxes_dir.is_dir():
      raise FileNotFoundError(f'300-W bounding-box folder {boxes_dir} does not exist')
    found = sorted(boxes_dir.glob('bounding_boxes_*.mat'))
  else:
    found = sorted(root.rglob('bounding_boxes_*.mat'))
  by_name = {}
  for p in found:
    by_name.setdefault(p.name, p)  # the shallowest / first in sorted order wins
  return {subset: by_name[name] for subset, name in BOX_FILES.items() if name in by_name}


def load(root: str | os.PathLike, splits=None, boxes: str = 'detector',
         boxes_dir: str | os.PathLike | None = None
         ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads 300-W and returns its protocol splits.

  Args:
    root: the 300-W folder (holding afw/, helen/, lfpw/, ibug/).
    splits: split names to return (default: every protocol split whose folders exist; the
      fixed parts of train, ``fit`` and ``val``, only when asked for).
    boxes: 'detector' (the paper's default boxes), 'ground_truth' or 'landmarks'.
    boxes_dir: folder of the ``bounding_boxes_*.mat`` files (default: searched under root).

  Returns:
    ({split: records}, invalid). Every record has ``meta['subset']`` (e.g. 'helen/testset')
    and ``meta['box_source']`` ('detector', 'ground_truth' or 'landmarks'). Missing subset
    folders of a requested split and unreadable files are listed in ``invalid``.

  Raises:
    FileNotFoundError: root is missing or holds none of the 300-W folders.
    ValueError: unknown split or box kind; an unreadable bounding-box file.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'300-W folder {root} does not exist or is not a folder')
  if boxes not in BOX_KINDS:
    raise ValueError(f'unknown 300-W box kind {boxes!r}; expected one of {BOX_KINDS}')
  all_subsets = [s for group in SUBSETS.values() for s in group]
  present = {s: _find_subset(root, s) for s in all_subsets}
  if not any(present[s] for s in ('afw', 'helen/trainset', 'helen/testset', 'lfpw/trainset',
                                  'lfpw/testset', 'ibug', '01_Indoor', '02_Outdoor')):
    raise FileNotFoundError(
        f'{root} does not look like 300-W: none of afw/, helen/trainset/, helen/testset/, '
        'lfpw/trainset/, lfpw/testset/, ibug/, 01_Indoor/, 02_Outdoor/ is there')
  if splits is None:
    splits = [s for s in SPLITS
              if s not in TRAIN_PARTS and (
                  s not in OPTIONAL_SPLITS
                  or all(present[sub] for part in COMBINED.get(s, (s,)) for sub in SUBSETS[part]))]
  splits = list(splits)
  for s in splits:
    if s not in SPLITS:
      raise ValueError(f'unknown 300-W split {s!r}; expected one of {SPLITS}')
  needed_parts = sorted({p for s in splits
                         for p in COMBINED.get('train' if s in TRAIN_PARTS else s,
                                               ('train',) if s in TRAIN_PARTS else (s,))})
  box_files = _find_box_files(root, boxes_dir) if boxes != 'landmarks' else {}

  invalid: list[InvalidFile] = []
  parts: dict[str, list[FaceRecord]] = {}
  for part in needed_parts:
    parts[part] = []
    for subset in SUBSETS[part]:
      folder = present[subset]
      if folder is None:
        invalid.append(InvalidFile(str(root / subset),
                                   f'300-W folder missing (needed by split {part!r})'))
        continue
      recs, bad = records_lib.scan_folder(folder, scheme='ibug68')
      invalid.extend(bad)
      table = read_box_file(box_files[subset]) if subset in box_files else {}
      for r in recs:
        parts[part].append(_with_box(r, subset, table, boxes))
  out = {}
  for s in splits:
    if s in TRAIN_PARTS:
      out[s] = [r for r in parts['train'] if in_val(r) == (s == 'val')]
    else:
      out[s] = [r for p in COMBINED.get(s, (s,)) for r in parts[p]]
  return out, invalid


def in_val(record: FaceRecord) -> bool:
  """Whether a training face belongs to the fixed validation tenth (module docstring)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  key = f"{record.meta['subset']}/{os.path.basename(record.image)}"
  return hashlib.sha1(key.encode('utf-8')).digest()[-1] < VAL_BYTE_BELOW


def _with_box(r: FaceRecord, subset: str, table: dict, boxes: str) -> FaceRecord:
  entry = table.get(os.path.basename(r.image))
  source, box = 'landmarks', r.box
  if entry is not None and boxes in entry and records_lib.valid_box(entry[boxes]):
    source, box = boxes, entry[boxes]
  meta = dict(r.meta, subset=subset, box_source=source)
  return FaceRecord(image=r.image, points=r.points, box=np.asarray(box, np.float32), yaw=r.yaw,
                    visible=r.visible, meta=meta, scheme=r.scheme)
