"""COFW-68: the 507 COFW test faces with the 68-point re-annotation of Ghiasi and Fowlkes.

Layout under ``root``::

  COFW_test_color.mat                        (from COFW_color.zip, Burgos-Artizzu et al.; a
                                              MATLAB v7.3 / HDF5 file; the grey-level
                                              COFW_test.mat is accepted instead)
  COFW68_Data/test_annotations/{1..507}_points.mat
  COFW68_Data/cofw68_test_bboxes.mat         (both from github.com/golnazghiasi/cofw68-benchmark)

(the files are found anywhere under ``root``). ``COFW_test_color.mat`` holds ``IsT`` (a 507 x 1
cell array of H x W x 3 uint8 RGB or H x W grey images), ``bboxesT`` (507 x 4, the original COFW
boxes [x y w h]) and ``phisT`` (507 x 87, the 29-point annotation, unused here). Each
``{i}_points.mat`` holds ``Points`` (68 x 2 double, x y, iBUG order) and ``Occ`` (1 x 68 uint8,
1 = occluded) for image i (1-based). ``cofw68_test_bboxes.mat`` holds ``bboxes`` (507 x 4 int16,
[x y w h]), boxes made with the detection method of 300-W so that a model trained on 300-W can
be tested on COFW-68 (the paper's protocol: train on 300-W, test here). The layouts, the box
orientation and the point order were checked on the genuine re-annotation files
(``tests/test_genuine_formats.py``: every face's points lie in its [x y w h] box, mirror pairs on
their sides).

``with_images=False`` reads the annotations and boxes without the image file (``check
--no-images``): the records then name the PNG path the images would be written to.

All coordinates are MATLAB 1-based and are shifted by -1. [x y w h] becomes
(x - 1, y - 1, x - 1 + w, y - 1 + h). The images live inside the .mat file; the loader writes
each once as ``{i}.png`` (RGB) into ``image_dir`` (default ``ROOT/jaxalign_images/cofw68_test``)
so that records point at ordinary image files like every other source.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from jaxalign import io
from jaxalign.data import records as records_lib
from jaxalign.data.records import FaceRecord, InvalidFile
from jaxalign.data.sources import matfile

SPLITS = ('test',)
PROTOCOL_COUNTS = {'test': 507}
OPTIONAL_SPLITS = ()
BOX_KINDS = ('cofw68', 'cofw', 'landmarks')
IMAGE_FILES = ('COFW_test_color.mat', 'COFW_test.mat')
_POINTS_NAME = re.compile(r'^(\d+)_points\.mat$')


def _find(root: pathlib.Path, name: str) -> pathlib.Path | None:
  hits = sorted(root.rglob(name), key=lambda p: (len(p.parts), str(p)))
  return hits[0] if hits else None


def xywh_to_box(xywh) -> np.ndarray:
  """A MATLAB 1-based [x y w h] box -> 0-based (x0, y0, x1, y1) float32."""
  x, y, w, h = matfile.as_float(xywh, 4)
  return io.to_float32([x - 1, y - 1, x - 1 + w, y - 1 + h])


def _rgb(image) -> np.ndarray:
  img = np.asarray(image)
  if img.ndim == 2:
    img = np.repeat(img[:, :, None], 3, axis=2)
  if img.ndim != 3 or img.shape[2] not in (1, 3):
    raise ValueError(f'expected an H x W or H x W x 3 image, got shape {img.shape}')
  if img.shape[2] == 1:
    img = np.repeat(img, 3, axis=2)
  if img.dtype != np.uint8:
    if img.dtype.kind == 'f' and img.size and float(np.nanmax(img)) <= 1.0:
      img = img * 255.0
    img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
  return img


def load(root: str | os.PathLike, splits=None, boxes: str = 'cofw68',
         image_dir: str | os.PathLike | None = None, images_mat: str | os.PathLike | None = None,
         with_images: bool = True,
         ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads COFW-68 (one split, ``test``).

  Args:
    root: folder holding the files above.
    splits: ('test',) or None.
    boxes: 'cofw68' (Ghiasi and Fowlkes's 300-W-style boxes, default), 'cofw' (the original
      COFW boxes ``bboxesT``) or 'landmarks'.
    image_dir: where the images are written as PNG (default ROOT/jaxalign_images/cofw68_test);
      existing files are reused.
    images_mat: the image file (default: COFW_test_color.mat, else COFW_test.mat, under root).
    with_images: False: do not read (or require) the images; the annotations and boxes only
      (``bboxesT`` is still read from the image file where it exists). The number of images is
      then the box table's (507), and records name PNGs that may not exist yet.

  Returns:
    ({'test': records}, invalid). Records carry ``visible`` (False where ``Occ`` is 1),
    ``meta['index']`` (the 1-based COFW image number), ``meta['subset']`` and
    ``meta['box_source']``.

  Raises:
    FileNotFoundError: root, the image .mat (unless ``with_images=False``) or the annotation
      folder is missing.
    ValueError: unknown split or box kind; an unreadable image .mat.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'COFW-68 folder {root} does not exist or is not a folder')
  if boxes not in BOX_KINDS:
    raise ValueError(f'unknown COFW-68 box kind {boxes!r}; expected one of {BOX_KINDS}')
  for s in splits or SPLITS:
    if s not in SPLITS:
      raise ValueError(f'unknown COFW-68 split {s!r}; expected one of {SPLITS}')
  if images_mat is None:
    found = [p for p in (_find(root, n) for n in IMAGE_FILES) if p is not None]
    if not found and with_images:
      raise FileNotFoundError(f'{root}: no COFW_test_color.mat (or COFW_test.mat) found; '
                              'see docs/datasets.md (to check the annotations alone: '
                              'check --no-images)')
    images_mat = found[0] if found else None
  images_mat = pathlib.Path(images_mat) if images_mat is not None else None
  ann_files = sorted(p for p in root.rglob('*_points.mat') if _POINTS_NAME.match(p.name))
  if not ann_files:
    raise FileNotFoundError(f'{root}: no COFW-68 annotations (test_annotations/*_points.mat) '
                            'found; see docs/datasets.md')
  if with_images:
    data = matfile.load_mat(images_mat, ['IsT', 'bboxesT'], required=['IsT'])
  elif images_mat is not None and boxes == 'cofw':
    data = matfile.load_mat(images_mat, ['bboxesT'])
  else:
    data = {}
  images = np.asarray(data['IsT'], object).ravel() if with_images else None
  cofw_boxes = (np.asarray(data['bboxesT'], np.float64).reshape(-1, 4)
                if 'bboxesT' in data else None)
  box68 = None
  if boxes == 'cofw68':
    box_file = _find(root, 'cofw68_test_bboxes.mat')
    if box_file is not None:
      box68 = np.asarray(matfile.load_mat(box_file, ['bboxes'], required=['bboxes'])['bboxes'],
                         np.float64).reshape(-1, 4)
  table = cofw_boxes if boxes == 'cofw' else box68
  if with_images:
    num_images, holder = len(images), images_mat.name
  else:
    # Without the images their number is the box tables' (both list every test image).
    sizes = [len(t) for t in (cofw_boxes, box68) if t is not None]
    num_images = max(sizes) if sizes else PROTOCOL_COUNTS['test']
    holder = 'the box table' if sizes else 'COFW-68 (protocol)'
  image_ref = (lambda i: f'{images_mat}:IsT{{{i}}}') if images_mat is not None else (
      lambda i: f'{root}:image {i}')

  image_dir = pathlib.Path(image_dir) if image_dir else root / 'jaxalign_images' / 'cofw68_test'
  try:
    if with_images:
      image_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(f'cannot create the COFW-68 image folder {image_dir} ({e}); pass another '
                  'image_dir (check: --image-dir)') from None
  invalid: list[InvalidFile] = []
  by_index = {}
  for p in ann_files:
    i = int(_POINTS_NAME.match(p.name).group(1))
    if i in by_index:
      invalid.append(InvalidFile(str(p), f'second annotation for image {i} '
                                 f'(first: {by_index[i]})'))
      continue
    by_index[i] = p
  records = []
  for i in sorted(by_index):
    path = by_index[i]
    if not 1 <= i <= num_images:
      invalid.append(InvalidFile(str(path), f'annotation for image {i}, but {holder} '
                                 f'holds {num_images} images'))
      continue
    try:
      ann = matfile.load_mat(path, ['Points', 'Occ'], required=['Points'])
      points = np.asarray(ann['Points'], np.float64)
      if points.shape != (68, 2):
        raise ValueError(f'Points has shape {points.shape}, expected (68, 2)')
      points = io.to_float32(points - 1.0)      # 0-based
      if not np.isfinite(points).all():
        raise ValueError('Points holds NaN, infinity or numbers beyond float32')
      occ = np.asarray(ann['Occ'], np.float64).ravel() if 'Occ' in ann else None
      if occ is not None and occ.size != 68:
        raise ValueError(f'Occ has {occ.size} entries, expected 68')
    except (ValueError, ImportError) as e:
      msg = str(e)
      invalid.append(InvalidFile(str(path), msg if msg.startswith(str(path)) else
                                 f'{path}: {msg}'))
      continue
    image_path = image_dir / f'{i}.png'
    try:
      if with_images:
        _write_png(image_path, images[i - 1])
    except (ValueError, OSError) as e:
      invalid.append(InvalidFile(image_ref(i), f'image {i}: {e}'))
      continue
    source, box = 'landmarks', records_lib.landmark_box(points)
    if table is not None and i <= len(table):
      cand = xywh_to_box(table[i - 1])
      if records_lib.valid_box(cand):
        source, box = boxes, cand
    records.append(FaceRecord(
        image=str(image_path), points=points, box=box,
        visible=None if occ is None else occ == 0,
        meta={'subset': 'cofw68_test', 'index': i, 'box_source': source,
              'num_occluded': None if occ is None else int((occ != 0).sum())},
        scheme='ibug68'))
  annotated = set(by_index)
  for i in range(1, num_images + 1):
    if i not in annotated:
      invalid.append(InvalidFile(image_ref(i),
                                 f'image {i} has no 68-point annotation ({i}_points.mat)'))
  return {'test': records}, invalid


def _write_png(path: pathlib.Path, image) -> None:
  if path.is_file() and path.stat().st_size > 0:
    return
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgb = _rgb(image)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp.png')
  Image.fromarray(rgb, 'RGB').save(tmp)
  os.replace(tmp, path)
