"""The face record every data source yields, and the 300-W-style folder reader.

A 300-W-style folder holds images (``.png``, ``.jpg``, ``.jpeg``, ``.bmp``) each with a ``.pts``
of the same stem, in any sub-folder. The synthetic data set (``python -m jaxalign.synthesize``)
is such a folder plus ``annotations.jsonl``, whose boxes and poses this reader picks up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from jaxalign import io

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
    meta: anything else the source knows (subset name, pitch/roll, 3D points, ...).
  """

  image: str
  points: np.ndarray
  box: np.ndarray
  yaw: float | None = None
  visible: np.ndarray | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class InvalidFile:
  """A file a reader could not use, and why."""

  path: str
  reason: str


def landmark_box(points) -> np.ndarray:
  """The tight (x0, y0, x1, y1) box of (L, 2) points, ignoring NaN."""
  pts = np.asarray(points, np.float32)
  return np.concatenate([np.nanmin(pts, 0), np.nanmax(pts, 0)]).astype(np.float32)


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


def scan_folder(root: str | os.PathLike, num_points: int = 68
                ) -> tuple[list[FaceRecord], list[InvalidFile]]:
  """Reads every image + ``.pts`` pair under ``root`` (sorted by path).

  Boxes default to the landmarks' tight box; ``annotations.jsonl`` at the root (synthetic data)
  supplies ``bbox``, ``yaw``, ``visibility`` and the rest as meta. Images are only checked for
  existence here (decoding happens in the pipeline, which counts failures).

  Returns:
    (records, invalid): the usable faces and the files that were skipped, with reasons. A
    ``.pts`` without an image and an image without a ``.pts`` are both listed as invalid.

  Raises:
    FileNotFoundError: ``root`` is not a folder.
  """
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
        visible=np.asarray(vis, bool) if vis is not None else None, meta=meta))
  return records, invalid
