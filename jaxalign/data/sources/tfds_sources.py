"""300W-LP and AFLW2000-3D through tensorflow-datasets (the ``tfds`` extra): the second route.

The first route reads the unzipped folders without TFDS (:mod:`.threeddfa`, which also says
which landmark convention every variable of the files gives); the registry's ``load`` takes this
one where ``root`` is a TFDS data dir.

* ``the300w_lp`` (TFDS split ``train``, 61,225 faces): 300-W faces re-rendered at large yaw by
  3DDFA's face profiling (Zhu et al., CVPR 2016). Our split: ``train``.
* ``aflw2k3d`` (TFDS split ``train``, 2,000 faces): the first 2,000 AFLW images with 68 points
  re-annotated in the 3D convention. It is a test set, so our split is named ``test``.

``ROOT`` is the TFDS data dir the data sets were built into (``tfds build the300w_lp
--data_dir ROOT``; 300W-LP and AFLW2000-3D need the manual download described in
docs/datasets.md). TFDS stores landmarks divided by 450 (the image side); they are scaled back
to pixels here. The numbers come from 3DDFA's MATLAB files, so like every MATLAB source they are
read as 1-based and shifted by -1 (``index_base=1``).

Landmark conventions: ``landmarks_2d`` of 300W-LP follow the 2D (300-W, silhouette) convention of
the jaw line; ``landmarks_3d`` of 300W-LP and all of AFLW2000-3D follow the 3D convention (the
jaw points are projections of fixed 3D vertices, hidden or not). Records say which in
``meta['convention']`` ('2d' or '3d'), so evaluation can read the completion stage's matching
convention. AFLW2000-3D's depth is kept in ``meta['z']`` (68,), 300W-LP's 3DDFA pose
(pitch, yaw, roll in radians, tx, ty, tz, scale) in ``meta['pose_params']``, and its yaw in
``record.yaw`` (degrees, eos's sign: the opposite of 3DDFA's, checked on the genuine files). TFDS
keeps no pose for AFLW2000-3D, so its ``record.yaw`` is None on this route.

The images live inside TFDS's record files; the loader writes each once, byte for byte (no
re-encoding), into ``image_dir`` (default ``ROOT/jaxalign_images/<name>/<split>/``).
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from jaxalign.data import records as records_lib
from jaxalign.data.records import FaceRecord, InvalidFile

TFDS_SCALE = 450.0   # both TFDS builders divide the landmark pixels by 450
DATASETS = {
    # name: (our split -> TFDS split, protocol counts)
    'the300w_lp': ({'train': 'train'}, {'train': 61225}),
    'aflw2k3d': ({'test': 'train'}, {'test': 2000}),
}
LANDMARK_KINDS = ('2d', '3d', 'origin')
INSTALL_HINT = ("install the tfds extra: pip install 'jaxalign[tfds]' "
                 '(tensorflow-datasets and tensorflow-cpu)')


def import_tfds():
  """Imports tensorflow_datasets or raises ImportError naming the ``tfds`` extra."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'the300w_lp and aflw2k3d are read through tensorflow-datasets, which is '
                      f'not installed ({e}); {INSTALL_HINT}') from None
  return tfds


def _safe_name(tfds_id: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', tfds_id)


def _write_image(folder: pathlib.Path, stem: str, image) -> pathlib.Path:
  """Writes encoded bytes as they are (or encodes a decoded array as PNG)."""
  if isinstance(image, (bytes, np.bytes_)):
    data = bytes(image)
    ext = '.png' if data[:4] == b'\x89PNG' else '.jpg'
    path = folder / (stem + ext)
    if not (path.is_file() and path.stat().st_size == len(data)):
      tmp = path.with_name(path.name + '.tmp')
      tmp.write_bytes(data)
      os.replace(tmp, path)
    return path
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = folder / (stem + '.png')
  if not path.is_file():
    arr = np.asarray(image, np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
      arr = arr[:, :, 0]
    tmp = path.with_name(path.name + '.tmp')
    Image.fromarray(arr).save(tmp, format='PNG')
    os.replace(tmp, path)
  return path


def load(name: str, root: str | os.PathLike, splits=None, landmarks: str = '2d',
         index_base: float = 1.0, image_dir: str | os.PathLike | None = None,
         download: bool = False, limit: int | None = None
         ) -> tuple[dict[str, list[FaceRecord]], list[InvalidFile]]:
  """Reads ``the300w_lp`` or ``aflw2k3d`` from a TFDS data dir.

  Args:
    name: 'the300w_lp' or 'aflw2k3d'.
    root: the TFDS data dir.
    splits: our split names (the300w_lp: 'train'; aflw2k3d: 'test').
    landmarks: 300W-LP only: '2d' (default, the 300-W convention), '3d' or 'origin' (the
      ``pt2d`` of the 300W-LP .mat files).
    index_base: subtracted from every coordinate after scaling to pixels.
    image_dir: where the images are written (default ROOT/jaxalign_images/<name>/<split>).
    download: let TFDS download and prepare the data set first.
    limit: read at most this many examples per split (quick looks, tests).

  Raises:
    ImportError: tensorflow-datasets is missing (names the ``tfds`` extra).
    FileNotFoundError: the data set is not prepared under root.
    ValueError: unknown name, split or landmark kind.
  """
  if name not in DATASETS:
    raise ValueError(f'unknown TFDS face data set {name!r}; expected one of {sorted(DATASETS)}')
  split_map, _ = DATASETS[name]
  splits = list(splits or split_map)
  for s in splits:
    if s not in split_map:
      raise ValueError(f'unknown {name} split {s!r}; expected one of {tuple(split_map)}')
  if landmarks not in LANDMARK_KINDS:
    raise ValueError(f'unknown landmark kind {landmarks!r}; expected one of {LANDMARK_KINDS}')
  root = pathlib.Path(root)
  tfds = import_tfds()
  builder = tfds.builder(name, data_dir=os.fspath(root))
  if download:
    builder.download_and_prepare()
  out, invalid = {}, []
  for split in splits:
    try:
      ds = builder.as_dataset(split=split_map[split], shuffle_files=False,
                              decoders={'image': tfds.decode.SkipDecoding()},
                              read_config=tfds.ReadConfig(add_tfds_id=True))
    except AssertionError as e:  # TFDS's "could not find data in ..." is an AssertionError.
      raise FileNotFoundError(
          f'{name} is not prepared under the TFDS data dir {root} ({e}); build it with '
          f'`tfds build {name} --data_dir {root}` (see docs/datasets.md)') from None
    folder = pathlib.Path(image_dir) if image_dir else root / 'jaxalign_images' / name / split
    folder.mkdir(parents=True, exist_ok=True)
    recs = []
    for k, ex in enumerate(tfds.as_numpy(ds)):
      if limit is not None and k >= limit:
        break
      tfds_id = ex.get('tfds_id', f'{name}-{split}__{k}')
      tfds_id = tfds_id.decode() if isinstance(tfds_id, bytes) else str(tfds_id)
      rec, reason = _record(name, ex, landmarks, index_base)
      if rec is None:
        invalid.append(InvalidFile(f'tfds:{name}/{split_map[split]}/{tfds_id}', reason))
        continue
      try:
        path = _write_image(folder, _safe_name(tfds_id), ex['image'])
      except (OSError, ValueError) as e:
        invalid.append(InvalidFile(f'tfds:{name}/{split_map[split]}/{tfds_id}',
                                   f'cannot write the image: {e}'))
        continue
      rec.meta.update(tfds_id=tfds_id, subset=name)
      recs.append(FaceRecord(image=str(path), points=rec.points, box=rec.box, yaw=rec.yaw,
                             meta=rec.meta, scheme='ibug68'))
    out[split] = recs
  return out, invalid


def _record(name: str, ex: dict, landmarks: str, index_base: float):
  """(a FaceRecord without its image, None) or (None, why the example is unusable)."""
  yaw = None
  if name == 'aflw2k3d':
    xy = np.asarray(ex['landmarks_68_3d_xy_normalized'], np.float64)
    meta = {'convention': '3d',
            'z': np.asarray(ex['landmarks_68_3d_z'], np.float32).reshape(-1)}
  else:
    key = {'2d': 'landmarks_2d', '3d': 'landmarks_3d', 'origin': 'landmarks_origin'}[landmarks]
    xy = np.asarray(ex[key], np.float64)
    pose = np.asarray(ex['pose_params'], np.float32).reshape(-1)
    meta = {'convention': '3d' if landmarks == '3d' else '2d', 'pose_params': pose,
            'roi': np.asarray(ex['roi'], np.float32)}
    if pose.size == 7 and np.isfinite(pose).all():
      yaw = float(-np.degrees(pose[1]))   # 3DDFA's yaw sign is the opposite of eos's
  if xy.shape != (68, 2):
    return None, f'landmarks have shape {xy.shape}, expected (68, 2)'
  if not np.isfinite(xy).all():
    return None, 'landmarks hold NaN or infinity'
  points = (xy * TFDS_SCALE - index_base).astype(np.float32)
  box = records_lib.landmark_box(points)
  meta['box_source'] = 'landmarks'
  return FaceRecord(image='', points=points, box=box, yaw=yaw, meta=meta, scheme='ibug68'), None
