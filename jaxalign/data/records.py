"""The face record every data source yields, and the 300-W-style folder reader.

A 300-W-style folder holds images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``) each with a ``.pts``
of the same stem, in any sub-folder. The synthetic data set (``python -m jaxalign.synthesize``)
is such a folder plus ``annotations.jsonl``, whose boxes and poses this reader picks up.

The readers of the published data sets (300-W, COFW-68, AFLW-Full, TFDS) live in
:mod:`jaxalign.data.sources` and yield the same :class:`FaceRecord`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxalign import io
from jaxalign import schemes

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')


@dataclasses.dataclass(frozen=True, eq=False)
class FaceRecord:
  """One annotated face.

  Attributes:
    image: path of the image file.
    points: (L, 2) float32 landmarks in image pixels (x, y), 0-based pixel centres.
    box: (4,) float32 face box (x0, y0, x1, y1) in image pixels.
    yaw: head yaw in degrees (eos sign: > 0 right-looking) where the source knows it, else None.
    visible: (L,) bool per-landmark visibility where known, else None.
    meta: anything else the source knows (subset name, box source, pitch/roll, 3D points, ...).
    scheme: name of the landmark scheme of ``points`` (``jaxalign.schemes.get_scheme``):
      "ibug68" (L = 68) or "aflw19" (L = 19).
  """

  image: str
  points: np.ndarray
  box: np.ndarray
  yaw: float | None = None
  visible: np.ndarray | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  scheme: str = 'ibug68'


@dataclasses.dataclass
class InvalidFile:
  """A file a reader could not use, and why."""

  path: str
  reason: str


def landmark_box(points) -> np.ndarray:
  """The tight (x0, y0, x1, y1) box of (L, 2) points, ignoring NaN."""
  pts = np.asarray(points, np.float32)
  return np.concatenate([np.nanmin(pts, 0), np.nanmax(pts, 0)]).astype(np.float32)


def valid_box(box) -> bool:
  """True when ``box`` is 4 finite numbers (x0, y0, x1, y1) with x1 > x0 and y1 > y0."""
  b = np.asarray(box, np.float64).ravel()
  return b.size == 4 and bool(np.isfinite(b).all()) and b[2] > b[0] and b[3] > b[1]


def check_image(path: str | os.PathLike, decode: bool = False) -> str | None:
  """Why the image at ``path`` cannot be used, or None when it can.

  By default only the header is read (format and size: fast, catches missing, empty and
  non-image files); ``decode=True`` decodes every pixel (catches truncated files too).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    return 'image file not found'
  try:
    with Image.open(path) as im:
      if decode:
        im.load()
      w, h = im.size
  except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...).
    return f'unreadable image ({type(e).__name__}: {e})'
  if w <= 0 or h <= 0:
    return f'empty image ({w}x{h})'
  return None


def _read_jsonl(path: pathlib.Path, invalid: list[InvalidFile]) -> dict[str, dict]:
  entries = {}
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        entries[str(obj['file'])] = obj
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        invalid.append(InvalidFile(f'{path}:{n}', f'bad annotations.jsonl line: {e}'))
  return entries


def scan_folder(root: str | os.PathLike, num_points: int | None = None,
                scheme: str | None = None) -> tuple[list[FaceRecord], list[InvalidFile]]:
  """Reads every image + ``.pts`` pair under ``root`` (sorted by path).

  ``scheme`` ("ibug68", "aflw19") fixes the number of points per file; without it
  ``num_points`` does (default 68) and the scheme is the one with that many points.

  Boxes default to the landmarks' tight box; ``annotations.jsonl`` at the root (synthetic data)
  supplies ``bbox``, ``yaw``, ``visibility`` and the rest as meta. Images are only checked for
  existence here (decoding happens in the pipeline, which counts failures).

  Returns:
    (records, invalid): the usable faces and the files that were skipped, with reasons. A
    ``.pts`` without an image and an image without a ``.pts`` are both listed as invalid.

  Raises:
    FileNotFoundError: ``root`` is not a folder.
  """
  if scheme is not None:
    scheme_obj = schemes.get_scheme(scheme)
    if num_points is not None and num_points != scheme_obj.num_points:
      raise ValueError(f'scheme {scheme_obj.name} has {scheme_obj.num_points} points, '
                       f'not num_points={num_points}')
  else:
    matches = [s for s in schemes.SCHEMES.values() if s.num_points == (num_points or 68)]
    if not matches:
      raise ValueError(f'no landmark scheme has {num_points} points; known: '
                       f'{ {s.name: s.num_points for s in schemes.SCHEMES.values()} }')
    scheme_obj = matches[0]
  num_points = scheme_obj.num_points
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'data folder {root} does not exist or is not a folder')
  invalid: list[InvalidFile] = []
  extra = {}
  if (root / 'annotations.jsonl').is_file():
    extra = _read_jsonl(root / 'annotations.jsonl', invalid)
  images = {}
  for p in sorted(root.rglob('*')):
    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
      images[p.with_suffix('')] = p
  pts_files = {p.with_suffix(''): p for p in sorted(root.rglob('*.pts'))}
  records = []
  for stem in sorted(set(images) | set(pts_files)):
    if stem not in pts_files:
      invalid.append(InvalidFile(str(images[stem]), 'image without a .pts annotation'))
      continue
    if stem not in images:
      invalid.append(InvalidFile(str(pts_files[stem]), 'annotation without an image'))
      continue
    try:
      points = io.read_pts(pts_files[stem], num_points=num_points)
    except (ValueError, OSError) as e:
      invalid.append(InvalidFile(str(pts_files[stem]), str(e)))
      continue
    rel = str(images[stem].relative_to(root))
    info = extra.get(rel, {})
    box = np.asarray(info['bbox'], np.float32) if 'bbox' in info else landmark_box(points)
    vis = info.get('visibility')
    meta = {k: v for k, v in info.items() if k not in ('bbox', 'yaw', 'visibility', 'file')}
    meta['subset'] = str(images[stem].parent.relative_to(root))
    records.append(FaceRecord(
        image=str(images[stem]), points=points, box=box,
        yaw=float(info['yaw']) if 'yaw' in info else None,
        visible=np.asarray(vis, bool) if vis is not None else None, meta=meta,
        scheme=scheme_obj.name))
  return records, invalid
