"""300W-LP and AFLW2000-3D (Zhu et al.'s 3DDFA data sets) from the folders as unzipped.

Both come from the 3DDFA page (``300W-LP.zip``, ``AFLW2000-3D.zip``) as 450 x 450 JPEG crops,
each with a MATLAB v5 ``.mat`` of the same stem. ``load`` reads them without any other
dependency; where the data sets were built into a tensorflow-datasets data dir instead, it reads
that (:mod:`.tfds_sources`, the ``tfds`` extra). ``route='auto'`` (default) takes the unzipped
files when ``root`` holds any, else the TFDS data dir.

Layout (``root`` may be the folder itself, its parent, or any folder above it)::

  AFLW2000/image00002.jpg + image00002.mat ...        (2,000 faces)
  300W_LP/{AFW,HELEN,IBUG,LFPW}/<SUBSET>_<name>_<face>_<k>.jpg + .mat   (61,225 faces)
  300W_LP/{AFW,HELEN,IBUG,LFPW}_Flip/...              (mirror images; not read, see below)
  300W_LP/landmarks/{AFW,HELEN,IBUG,LFPW}/<stem>_pts.mat

``<k>`` of a 300W-LP name is the face-profiling step: 0 is the face at its original pose (only
cropped and scaled), 1, 2, ... the same face rotated further in yaw by 3DDFA's profiling.

What each variable holds, and its jaw convention (checked on genuine files, see
``tests/test_genuine_formats.py``; all are MATLAB 1-based pixels of the 450 x 450 image):

=====================================  ===============  =======================================
variable (file)                        shape            convention
=====================================  ===============  =======================================
``pt3d_68`` (AFLW2000 ``image*.mat``)  3 x 68 (x, y, z)  3D: the jaw points are projections of
                                                        fixed vertices of the fitted 3DMM,
                                                        hidden or not
``pt2d`` (AFLW2000 ``image*.mat``)     2 x 21            AFLW's own 21 points (-1 = missing);
                                                        not read
``pts_3d`` (300W-LP ``landmarks/``)    68 x 2           3D, as ``pt3d_68``
``pts_2d`` (300W-LP ``landmarks/``)    68 x 2           2D (300-W): the jaw follows the visible
                                                        silhouette
``pt2d`` (300W-LP ``<stem>.mat``)      2 x 68           2D: the original 300-W annotation in
                                                        the crop; it fits the ``_0`` image only
                                                        (every rotated ``_k`` image of a face
                                                        carries the same ``pt2d``; 3DDFA issue
                                                        #192)
``Pose_Para`` (both)                   1 x 7            pitch, yaw, roll (radians), tx, ty, tz,
                                                        scale of the 3DMM fit; 3DDFA's yaw has
                                                        the opposite sign to eos's
``roi`` (both)                         1 x 4            the face region in the original photo,
                                                        not in the 450 x 450 crop; kept in meta
=====================================  ===============  =======================================

Landmarks of the records: AFLW2000-3D gives ``pt3d_68`` (``meta['convention'] == '3d'``, the
depth in ``meta['z']``). 300W-LP gives ``landmarks='2d'`` (default): ``pts_2d``, or, where
``landmarks/`` is absent, the image's own ``pt2d`` for ``_0`` images (rotated images without
their ``_pts.mat`` are listed as invalid); ``'3d'``: ``pts_3d`` (needs ``landmarks/``);
``'origin'``: ``pt2d`` of every image, as TFDS's ``landmarks_origin`` (wrong for rotated
images). Records say which in ``meta['convention']`` and ``meta['landmarks_source']``. Protocols:
AFLW2000-3D is tested in the 3D convention, so a model for it trains on 300W-LP's ``pts_3d``
(``configs/the300w_lp.py``); ``pts_2d`` trains for 300-W-style (2D) test sets.

``record.yaw`` is ``-degrees(Pose_Para[1])`` (eos's sign: > 0 right-looking; the sign was
checked against :func:`jaxalign.geometry.estimate_yaw` on the genuine files). The ``_Flip``
folders are mirror images of the others; they are not part of the 61,225-face protocol (nor of
TFDS's build) and are not read; the training pipeline mirrors faces itself.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import re

import numpy as np

from jaxalign import io
from jaxalign.data import records as records_lib
from jaxalign.data.records import FaceRecord, InvalidFile
from jaxalign.data.sources import matfile, tfds_sources

SPLITS = {'the300w_lp': ('train',), 'aflw2k3d': ('test',)}
PROTOCOL_COUNTS = {name: counts for name, (_, counts) in tfds_sources.DATASETS.items()}
ROUTES = ('auto', 'files', 'tfds')
LANDMARK_KINDS = tfds_sources.LANDMARK_KINDS
_TITLES = {'the300w_lp': '300W-LP', 'aflw2k3d': 'AFLW2000-3D'}
_LAYOUTS = {'the300w_lp': '300W_LP/<AFW|HELEN|IBUG|LFPW>/*.jpg + .mat',
            'aflw2k3d': 'AFLW2000/imageNNNNN.jpg + .mat'}
_AFLW_NAME = re.compile(r'^image\d+$')
_LP_NAME = re.compile(r'^(AFW|HELEN|IBUG|LFPW)_')
_PROFILE = re.compile(r'_(\d+)$')
# Folders of the downloads that hold no faces of the protocol (the TFDS route writes its images
# into jaxalign_images/).
_SKIP_DIRS = ('landmarks', 'Code', 'jaxalign_images')


def yaw_from_pose(pose_para) -> float:
  """3DDFA's ``Pose_Para`` (pitch, yaw, roll in radians, ...) -> yaw in degrees, eos's sign."""
  return float(-np.degrees(matfile.as_float(pose_para)[1]))


def load(name: str, root: str | os.PathLike, splits=None, landmarks: str = '2d',
         index_base: float = 1.0, route: str = 'auto',
         image_dir: str | os.PathLike | None = None, download: bool = False,
         limit: int | None = None
         ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads ``the300w_lp`` or ``aflw2k3d`` from its unzipped folder or a TFDS data dir.

  Args:
    name: 'the300w_lp' or 'aflw2k3d'.
    root: the unzipped folder (or one above it), or the TFDS data dir.
    splits: our split names (the300w_lp: 'train'; aflw2k3d: 'test').
    landmarks: 300W-LP only: '2d' (default), '3d' or 'origin' (see the module docstring).
    index_base: subtracted from every coordinate (1: MATLAB's 1-based pixels).
    route: 'auto' (the files when root holds any, else TFDS), 'files' or 'tfds'.
    image_dir: TFDS route: where the images are written (the files route reads them in place).
    download: TFDS route: let TFDS download and prepare the data set first (implies 'tfds').
    limit: read at most this many faces per split (quick looks, tests).

  Returns:
    ({split: records}, invalid). Records have ``scheme='ibug68'``, the landmark box
    (``meta['box_source'] == 'landmarks'``), ``meta['convention']`` ('2d' or '3d'),
    ``meta['landmarks_source']`` (the variable read), ``meta['subset']``, ``meta['pose_params']``
    and ``yaw`` where the file has ``Pose_Para``.

  Raises:
    ValueError: unknown name, split, landmark kind or route.
    FileNotFoundError: root is missing; ``route='files'`` and root holds no files.
    ImportError: root holds no files and tensorflow-datasets (the other route) is missing.
  """
  if name not in SPLITS:
    raise ValueError(f'unknown 3DDFA face data set {name!r}; expected one of {sorted(SPLITS)}')
  splits = list(splits or SPLITS[name])
  for s in splits:
    if s not in SPLITS[name]:
      raise ValueError(f'unknown {name} split {s!r}; expected one of {SPLITS[name]}')
  if landmarks not in LANDMARK_KINDS:
    raise ValueError(f'unknown landmark kind {landmarks!r}; expected one of {LANDMARK_KINDS}')
  if route not in ROUTES:
    raise ValueError(f'unknown route {route!r}; expected one of {ROUTES}')
  tfds_kwargs = dict(landmarks=landmarks, index_base=index_base, image_dir=image_dir,
                     download=download, limit=limit)
  if route == 'tfds' or download:
    return tfds_sources.load(name, root, splits, **tfds_kwargs)
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f'{_TITLES[name]} folder {root} does not exist or is not a folder')
  pairs, invalid, num_flip = _scan(name, root)
  if not pairs and route == 'auto':
    if importlib.util.find_spec('tensorflow_datasets') is not None:
      return tfds_sources.load(name, root, splits, **tfds_kwargs)
    raise ImportError(
        f'{root} holds no {_TITLES[name]} files ({_LAYOUTS[name]}), and reading it as a TFDS '
        f'data dir needs tensorflow-datasets, which is not installed; '
        f'{tfds_sources.INSTALL_HINT}')
  if not pairs:
    raise FileNotFoundError(f'{root} holds no {_TITLES[name]} files ({_LAYOUTS[name]}); see '
                            'docs/datasets.md')
  if num_flip:
    logging.info('%s: %d images in _Flip folders not read (mirrors; not in the protocol)',
                 root, num_flip)
  if limit is not None:
    pairs = pairs[:limit]
  index = _landmark_index(root) if name == 'the300w_lp' and landmarks != 'origin' else {}
  recs = []
  for image, mat in pairs:
    try:
      if name == 'aflw2k3d':
        rec = _aflw2000_record(image, mat, index_base)
      else:
        rec = _lp_record(image, mat, index.get(image.stem), landmarks, index_base)
    except ValueError as e:
      msg = str(e)
      invalid.append(InvalidFile(str(mat), msg if msg.startswith(str(mat)) else f'{mat}: {msg}'))
      continue
    recs.append(rec)
  return {splits[0]: recs}, invalid


def _scan(name: str, root: pathlib.Path):
  """([(image, mat)] sorted, invalid orphans, number of images skipped in _Flip folders).

  A face is a ``.jpg`` with a ``.mat`` of the same stem (AFLW2000-3D: ``imageNNNNN``; 300W-LP:
  ``<AFW|HELEN|IBUG|LFPW>_...``). In
  folders holding faces, a ``.jpg`` or ``.mat`` without its twin is listed as invalid; other
  folders are not this data set's and are ignored.
  """
  pairs, invalid, num_flip = [], [], 0
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
    if name == 'the300w_lp':
      flips = [d for d in dirs if d.endswith('_Flip')]
      for d in flips:
        num_flip += sum(1 for _ in pathlib.Path(folder, d).glob('*.jpg'))
      dirs[:] = [d for d in dirs if d not in flips]
    stems = {}
    for f in files:
      stem, ext = os.path.splitext(f)
      if ext.lower() not in ('.jpg', '.mat') or stem.endswith('_pts'):
        continue
      # The names keep each data set to its own files when both sit under one root.
      if not (_AFLW_NAME if name == 'aflw2k3d' else _LP_NAME).match(stem):
        continue
      stems.setdefault(stem, {})[ext.lower()] = pathlib.Path(folder, f)
    found = [s for s, v in stems.items() if len(v) == 2]
    if not found:
      continue
    for stem in sorted(stems):
      v = stems[stem]
      if len(v) == 2:
        pairs.append((v['.jpg'], v['.mat']))
      elif '.jpg' in v:
        invalid.append(InvalidFile(str(v['.jpg']), f'no {stem}.mat beside the image'))
      else:
        invalid.append(InvalidFile(str(v['.mat']), f'no {stem}.jpg beside the annotation'))
  return sorted(pairs), invalid, num_flip


def _landmark_index(root: pathlib.Path) -> dict[str, pathlib.Path]:
  """{image stem: landmarks/<subset>/<stem>_pts.mat} of every ``landmarks`` folder under root."""
  index = {}
  for folder, dirs, _ in os.walk(root):
    if 'landmarks' in dirs:
      for p in sorted(pathlib.Path(folder, 'landmarks').rglob('*_pts.mat')):
        index.setdefault(p.name[:-len('_pts.mat')], p)
    dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith('_Flip'))
  return index


def _points(value, rows: int, what: str) -> np.ndarray:
  """A MATLAB landmark matrix of 68 points (``rows`` x 68 or 68 x ``rows``) -> (68, rows)."""
  try:
    arr = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise ValueError(f'{what} is not numeric') from None
  if arr.shape == (rows, 68):
    arr = arr.T
  if arr.shape != (68, rows):
    raise ValueError(f'{what} has shape {arr.shape}, expected ({rows}, 68) or (68, {rows})')
  out = io.to_float32(arr)
  if not np.isfinite(out).all():
    raise ValueError(f'{what} holds NaN, infinity or numbers beyond float32')
  return out


def _pose_meta(mat_vars: dict) -> tuple[float | None, dict]:
  meta = {}
  yaw = None
  if 'Pose_Para' in mat_vars:
    pose = matfile.as_float(mat_vars['Pose_Para'])
    if pose.size != 7 or not np.isfinite(pose).all():
      raise ValueError(f'Pose_Para has {pose.size} entries or non-finite ones, expected 7 numbers')
    meta['pose_params'] = io.to_float32(pose)
    yaw = yaw_from_pose(pose)
  if 'roi' in mat_vars:
    meta['roi'] = io.to_float32(matfile.as_float(mat_vars['roi']))
  return yaw, meta


def _aflw2000_record(image: pathlib.Path, mat: pathlib.Path, index_base: float) -> FaceRecord:
  data = matfile.load_mat(mat, ['pt3d_68', 'Pose_Para', 'roi'], required=['pt3d_68'])
  xyz = _points(data['pt3d_68'], 3, 'pt3d_68')
  points = io.to_float32(xyz[:, :2] - index_base)
  yaw, meta = _pose_meta(data)
  meta.update(subset='aflw2000', convention='3d', landmarks_source='pt3d_68',
              z=xyz[:, 2].copy(), box_source='landmarks')
  return FaceRecord(image=str(image), points=points, box=records_lib.landmark_box(points),
                    yaw=yaw, meta=meta, scheme='ibug68')


def _lp_record(image: pathlib.Path, mat: pathlib.Path, pts_file: pathlib.Path | None,
               landmarks: str, index_base: float) -> FaceRecord:
  m = _PROFILE.search(image.stem)
  profile = int(m.group(1)) if m else None
  data = matfile.load_mat(mat, ['pt2d', 'Pose_Para', 'roi'])
  if landmarks != 'origin' and pts_file is not None:
    var = 'pts_2d' if landmarks == '2d' else 'pts_3d'
    xy = _points(matfile.load_mat(pts_file, [var], required=[var])[var], 2, f'{pts_file}: {var}')
    source = var
  elif landmarks == '3d':
    raise ValueError(f'no landmarks/<subset>/{image.stem}_pts.mat (pts_3d, the 3D-convention '
                     'points) under the 300W-LP folder')
  elif landmarks == '2d' and profile != 0:
    raise ValueError(f'no landmarks/<subset>/{image.stem}_pts.mat (pts_2d), and the image\'s '
                     'own pt2d fits the unrotated _0 image only')
  else:
    if 'pt2d' not in data:
      raise ValueError(f'missing MATLAB variable pt2d; it has {sorted(data)}')
    xy, source = _points(data['pt2d'], 2, 'pt2d'), 'pt2d'
  points = io.to_float32(xy - index_base)
  yaw, meta = _pose_meta(data)
  meta.update(subset=image.stem.split('_', 1)[0],
              convention='3d' if source == 'pts_3d' else '2d', landmarks_source=source,
              profile=profile, box_source='landmarks')
  return FaceRecord(image=str(image), points=points, box=records_lib.landmark_box(points),
                    yaw=yaw, meta=meta, scheme='ibug68')
