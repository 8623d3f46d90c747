"""The decode-once face-crop cache: each face's host crop, decoded and cropped once, on disk.

A photo of 12 megapixels takes about 85 ms to decode; the host crop the pipeline cuts from it
(:func:`jaxalign.data.pipeline.load_example`) is a few tens of kilobytes. The cache stores, per
face, exactly what ``load_example`` returns, so that training and evaluation read it instead of
the photo and get the same batches:

* ``image`` uint8 (S, S, 3): the host crop, S = ``CropSpec.crop_size``. It covers the network
  input square times ``crop_context``: everything the device augmentation (rotation, shift and
  scale of the box, :func:`jaxalign.data.pipeline.input_matrices`) samples from, at the host
  resolution (``host_scale``) that CNN2 needs;
* ``points`` float32 (L, 2): the landmarks in crop pixels;
* ``box`` float32 (4,): the network-input square in crop pixels;
* ``crop_from_image`` float32 (2, 3): photo pixels -> crop pixels (its inverse maps back to the
  photo);
* ``image_hw`` int32 (2,): the photo's height and width.

Layout: ``DIR/crops-<spec key>/part-<hash>.array_record`` (ArrayRecord, one record per face,
``group_size:1`` so that grain reads any face at random, uncompressed because reading must cost
far less than decoding) with ``part-<hash>.json`` beside it: the faces' keys in record order, the
faces skipped as unreadable, and the record file's size. One folder serves any number of data
sets; each crop setting has its own ``crops-<spec key>`` folder.

Keys: the spec key covers the crop geometry (``input_size``, ``box_margin``, ``crop_context``,
``host_scale``, ``jpeg_draft``) and the record format. A face's key covers its image file
(absolute path, size, modification time), its box and its points, so that a changed photo or
annotation is a different face: the cache never serves a stale crop. Each record stores its key
and the reader checks it, so a damaged or swapped file is detected at read time too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import struct
import time
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# One record per group: random access to any face without decoding its neighbours.
WRITER_OPTIONS = 'group_size:1,uncompressed'
_MAGIC = b'JXC1'
_FIELDS = ('image', 'points', 'box', 'crop_from_image', 'image_hw')


class CacheError(ValueError):
  """A crop cache that cannot serve the faces asked for (stale or damaged); names its path."""


# --------------------------------------------------------------------------------------- keys

def spec_key(spec) -> str:
  """16 hex digits of the crop geometry of :class:`jaxalign.data.pipeline.CropSpec` (its
  ``cache_dir`` excluded) and the record format."""
  fields = {'format_version': FORMAT_VERSION, 'input_size': int(spec.input_size),
            'box_margin': float(spec.box_margin), 'crop_context': float(spec.crop_context),
            'host_scale': float(spec.host_scale), 'jpeg_draft': bool(spec.jpeg_draft)}
  return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def record_key(record) -> str | None:
  """20 hex digits identifying a face: its image file (absolute path, size, mtime in ns), box,
  points and scheme. None when the image is not a file on disk (an array, a missing file)."""
  if not isinstance(record.image, (str, os.PathLike)):
    return None
  path = os.path.abspath(os.fspath(record.image))
  try:
    st = os.stat(path)
  except OSError:
    return None
  h = hashlib.sha1(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\0{record.scheme}\0'.encode())
  h.update(np.ascontiguousarray(record.box, np.float32).tobytes())
  h.update(np.ascontiguousarray(record.points, np.float32).tobytes())
  return h.hexdigest()[:20]


def spec_dir(directory, spec) -> pathlib.Path:
  """The folder of ``spec``'s crops inside cache folder ``directory``."""
  return pathlib.Path(directory) / f'crops-{spec_key(spec)}'


# ------------------------------------------------------------------------------------ records

def encode(key: str, example: dict[str, np.ndarray]) -> bytes:
  """One cache record: magic, a JSON header (key, dtypes and shapes), the raw arrays."""
  arrays = [np.ascontiguousarray(example[k]) for k in _FIELDS]
  header = json.dumps({'key': key, 'arrays': [[k, a.dtype.str, a.shape]
                                              for k, a in zip(_FIELDS, arrays)]}).encode()
  return b''.join([_MAGIC, struct.pack('<I', len(header)), header] +
                  [a.tobytes() for a in arrays])


def decode(data: bytes) -> tuple[str, dict[str, np.ndarray]]:
  """(key, example) of a record written by :func:`encode`; ``ValueError`` if malformed."""
  if data[:4] != _MAGIC:
    raise ValueError('not a jaxalign crop record')
  (n,) = struct.unpack('<I', data[4:8])
  header = json.loads(data[8:8 + n])
  offset = 8 + n
  example = {}
  for name, dtype, shape in header['arrays']:
    dt = np.dtype(dtype)
    size = int(np.prod(shape)) * dt.itemsize
    if offset + size > len(data):
      raise ValueError('truncated crop record')
    # A copy: the batch owns its arrays (the record buffer is reused by the reader).
    example[name] = np.frombuffer(data, dt, int(np.prod(shape)), offset).reshape(shape).copy()
    offset += size
  return header['key'], example


# ------------------------------------------------------------------------------ the index

@dataclasses.dataclass
class _Part:
  records: pathlib.Path
  keys: list[str]
  skipped: dict[str, str]


def _read_parts(folder: pathlib.Path) -> tuple[list[_Part], list[str]]:
  """The complete parts of a spec folder, and the problems of the damaged ones (by path)."""
  parts, problems = [], []
  for index in sorted(folder.glob('part-*.json')):
    records = index.with_suffix('.array_record')
    try:
      meta = json.loads(index.read_text(encoding='utf-8'))
      if meta.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'format version {meta.get("format_version")}, expected '
                         f'{FORMAT_VERSION}')
      if not records.is_file():
        raise ValueError(f'{records.name} is missing')
      if records.stat().st_size != int(meta['bytes']):
        raise ValueError(f'{records.name} has {records.stat().st_size} bytes, the index says '
                         f'{meta["bytes"]}')
      parts.append(_Part(records, list(meta['keys']), dict(meta.get('skipped', {}))))
    except (OSError, ValueError, KeyError, TypeError) as e:
      problems.append(f'{index}: {e}')
  return parts, problems


class CropCache:
  """The crops of one crop setting in a cache folder: which faces it holds, and their crops.

  Picklable (grain worker processes each get a copy); the record files are opened lazily, with
  grain's random-access :class:`grain.sources.ArrayRecordDataSource` over every part.
  """

  def __init__(self, directory, spec):
    self.folder = spec_dir(directory, spec)
    parts, self.problems = _read_parts(self.folder) if self.folder.is_dir() else ([], [])
    self.paths = [str(p.records) for p in parts]
    self.positions: dict[str, int] = {}
    self.skipped: dict[str, str] = {}
    offset = 0
    for p in parts:
      for i, key in enumerate(p.keys):
        self.positions.setdefault(key, offset + i)
      offset += len(p.keys)
      self.skipped.update(p.skipped)
    self._source = None

  def __getstate__(self):
    return dict(self.__dict__, _source=None)

  def locate(self, records) -> tuple[np.ndarray, list]:
    """(positions (N,) int64 of each record's crop, -1 where the cache does not hold it; the
    records' keys (:func:`record_key`), for :meth:`read`)."""
    keys = [record_key(r) for r in records]
    positions = np.array([self.positions.get(k, -1) if k is not None else -1 for k in keys],
                         np.int64).reshape(len(keys))
    return positions, keys

  def missing(self, records) -> list[int]:
    """Indices of the records with an image file that are neither cached nor known to be
    unreadable."""
    keys = [record_key(r) for r in records]
    return [i for i, k in enumerate(keys)
            if k is not None and k not in self.positions and k not in self.skipped]

  def read(self, position: int, key: str) -> dict[str, np.ndarray]:
    """The cached example at ``position`` (from :meth:`locate`) of the face ``key``.

    Raises:
      CacheError: the record is damaged, or holds another face (the files changed under it).
    """
    if self._source is None:
      import grain  # pylint: disable=g-import-not-at-top
      self._source = grain.sources.ArrayRecordDataSource(self.paths)
    try:
      stored, example = decode(self._source[int(position)])
    except (ValueError, KeyError, IndexError) as e:
      raise CacheError(f'crop cache {self.folder}: record {position} is damaged ({e})') from None
    if stored != key:
      raise CacheError(f'crop cache {self.folder}: record {position} holds face {stored}, not '
                       f'{key}')
    return example


# ------------------------------------------------------------------------------- building

@dataclasses.dataclass
class BuildSummary:
  """What :func:`build` did.

  Attributes:
    folder: the spec folder written into.
    written: faces cropped and written (duplicates and already cached faces excluded).
    skipped: {image path: reason} of the faces whose image could not be decoded.
    cached: faces that were already in the cache.
    seconds: wall time.
    bytes: size of the new record file.
    removed: damaged parts deleted.
  """

  folder: str
  written: int = 0
  skipped: dict = dataclasses.field(default_factory=dict)
  cached: int = 0
  seconds: float = 0.0
  bytes: int = 0
  removed: list = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def _locked(folder: pathlib.Path):
  """An exclusive lock on the spec folder: processes of one run (or two runs) that build the
  same cache at once take turns, and the second finds the first one's faces."""
  folder.mkdir(parents=True, exist_ok=True)
  with open(folder / '.lock', 'a+') as f:
    try:
      import fcntl  # pylint: disable=g-import-not-at-top
      fcntl.flock(f, fcntl.LOCK_EX)
    except ImportError:   # pragma: no cover (not POSIX: one builder at a time)
      pass
    yield


def _crop(args):
  record, spec = args
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    return pipeline.load_example(record, spec), None
  except ValueError as e:
    return None, str(e)


def build(records: Sequence, spec, directory, workers: int | None = None,
          progress: Callable[[int, int], None] | None = None) -> BuildSummary:
  """Crops the faces of ``records`` that ``directory`` does not hold yet, into a new part.

  Each photo is decoded once per face with :func:`jaxalign.data.pipeline.load_example` (JPEG
  draft decoding where ``spec.jpeg_draft``), in ``workers`` threads (default: one per core;
  PIL releases the GIL while it decodes and resamples). Unreadable images are skipped, counted
  and remembered (a later build does not retry them; the pipeline replaces them as it does
  without a cache). Damaged parts (index and record file disagree) are deleted and their faces
  cropped again.

  Args:
    records: :class:`jaxalign.data.records.FaceRecord` list; records whose image is not a file
      are ignored.
    progress: called with (faces done, faces to do).
  """
  t0 = time.perf_counter()
  folder = spec_dir(directory, spec)
  summary = BuildSummary(str(folder))
  with _locked(folder):
    _, problems = _read_parts(folder)
    for problem in problems:
      index = pathlib.Path(problem.split(': ', 1)[0])
      log.warning('crop cache: removing damaged part %s', problem)
      for p in (index, index.with_suffix('.array_record')):
        p.unlink(missing_ok=True)
      summary.removed.append(str(index))
    cache = CropCache(directory, spec)
    todo, seen = [], set()
    for r in records:
      key = record_key(r)
      if key is None or key in seen:
        continue
      seen.add(key)
      if key in cache.positions or key in cache.skipped:
        summary.cached += 1
      else:
        todo.append((key, r))
    if not todo:
      summary.seconds = time.perf_counter() - t0
      return summary
    name = 'part-' + hashlib.sha1(''.join(k for k, _ in todo).encode()).hexdigest()[:16]
    target = folder / f'{name}.array_record'
    tmp = folder / f'.{name}.{os.getpid()}.tmp'
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    writer = array_record_module.ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
    keys, skipped = [], {}
    workers = workers or os.cpu_count() or 1
    try:
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(_crop, [(r, spec) for _, r in todo], chunksize=4)
        for n, ((key, r), (example, error)) in enumerate(zip(todo, results), 1):
          if example is None:
            skipped[key] = error
            summary.skipped[str(r.image)] = error
            log.warning('crop cache: skipping %s: %s', r.image, error)
          else:
            writer.write(encode(key, example))
            keys.append(key)
          if progress is not None:
            progress(n, len(todo))
    finally:
      writer.close()
    os.replace(tmp, target)
    index = {'format_version': FORMAT_VERSION, 'spec_key': spec_key(spec),
             'spec': {'input_size': spec.input_size, 'box_margin': spec.box_margin,
                      'crop_context': spec.crop_context, 'host_scale': spec.host_scale,
                      'jpeg_draft': spec.jpeg_draft},
             'bytes': target.stat().st_size, 'keys': keys, 'skipped': skipped}
    tmp_index = folder / f'.{name}.json.tmp'
    tmp_index.write_text(json.dumps(index), encoding='utf-8')
    os.replace(tmp_index, folder / f'{name}.json')   # the index last: a part is complete
    summary.written = len(keys)
    summary.bytes = index['bytes']
  summary.seconds = time.perf_counter() - t0
  return summary


def ensure(records: Sequence, spec, build_missing: bool = True) -> CropCache:
  """The cache of ``spec.cache_dir`` holding every face of ``records`` (a training set).

  Faces it lacks (new or changed files, or a damaged part) are cropped into it when
  ``build_missing``; otherwise :class:`CacheError` names the folder, the count and the command
  that builds it.
  """
  cache = CropCache(spec.cache_dir, spec)
  missing = cache.missing(records)
  if not missing and not cache.problems:
    return cache
  if not build_missing:
    what = '; '.join(cache.problems[:1]) if cache.problems else (
        f'{len(missing)} of {len(records)} faces are not in it (new or changed files, e.g. '
        f'{records[missing[0]].image})')
    raise CacheError(f'crop cache {cache.folder}: {what}. Build it with python -m '
                     'jaxalign.datasets cache ... --out ' + str(spec.cache_dir) +
                     ', or set data.crop_cache.build=True')
  log.info('crop cache: cropping %d faces into %s (once)', len(missing), cache.folder)
  summary = build([records[i] for i in missing], spec, spec.cache_dir)
  log.info('crop cache: %d faces in %.1f s (%d unreadable, skipped), %.1f MB',
           summary.written, summary.seconds, len(summary.skipped), summary.bytes / 1e6)
  return CropCache(spec.cache_dir, spec)


def augmentation_reach(rotation_deg: float, translation: float, scale: float) -> float:
  """The host-crop context (``CropSpec.crop_context``) that holds every pixel the augmentation
  of :func:`jaxalign.data.pipeline.input_matrices` can sample: the half extent, in network-input
  square sides, of the largest view (side ``1 + scale``) shifted by ``translation`` in x and y and
  rotated by ``rotation_deg``, times 2."""
  half = 0.5 * (1.0 + scale)
  a = np.deg2rad(rotation_deg)
  return float(2.0 * (half * (np.cos(a) + np.sin(a)) + translation))
