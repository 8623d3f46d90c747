"""A bounded reader of MATLAB level-5 ``.mat`` files (``-v6``/``-v7``, the format of the 300-W box
files, the COFW-68 re-annotation and ``AFLWinfo_release.mat``).

Why not ``scipy.io.loadmat``: its compiled reader trusts the sizes written in the file, and a
damaged file (a flipped or deleted byte) can crash the whole interpreter with a segmentation
fault or a bus error, which no ``try`` catches; a training or evaluation job would die on one bad
annotation. This reader checks every size against the bytes that are there before it reads, so
a damaged file raises :class:`ValueError` instead. It returns what ``scipy.io.loadmat`` returns
with its defaults, except that numbers come back in their MATLAB class's dtype (``double`` ->
float64, ``logical`` -> bool) whatever type the file stores them in:

* numeric / logical matrix of MATLAB size (m, n, ...) -> ndarray of that shape;
* char array of size (m, n) -> str array of shape (m,) (strings of length n);
* cell -> object ndarray of the cell's shape;
* struct -> structured ndarray of the struct's shape, one object field per MATLAB field.

Sparse matrices, objects and function handles are refused (no face data set uses them).
Format: MathWorks, "MAT-File Format", level 5 (tags, ``miMATRIX`` elements, ``miCOMPRESSED``
zlib streams).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

HEADER_BYTES = 128

# Data types of a data element (the tag's first word).
_NUMBER_TYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 9: 'f8',
                 12: 'i8', 13: 'u8'}
_MATRIX, _COMPRESSED, _UTF8, _UTF16, _UTF32 = 14, 15, 16, 17, 18

# Array classes of a miMATRIX (the low byte of its array flags).
_CELL, _STRUCT, _CHAR = 1, 2, 4
_CLASS_DTYPES = {6: 'f8', 7: 'f4', 8: 'i1', 9: 'u1', 10: 'i2', 11: 'u2', 12: 'i4', 13: 'u4',
                 14: 'i8', 15: 'u8'}
_CLASS_NAMES = {3: 'object', 5: 'sparse', 16: 'function handle', 17: 'opaque object'}
_COMPLEX, _LOGICAL = 0x800, 0x200


def is_level5(head: bytes) -> bool:
  """Whether a file's first 128 bytes are a level-5 header (version 0x0100)."""
  if len(head) < HEADER_BYTES or 0 in head[:4]:
    return False
  endian = head[126:128]
  if endian == b'IM':
    return head[124:126] == b'\x00\x01'
  if endian == b'MI':
    return head[124:126] == b'\x01\x00'
  return False


def read(data: bytes, names=None) -> dict[str, Any]:
  """The variables of a level-5 file's bytes: ``{name: value}`` (only ``names`` when given).

  Raises:
    ValueError: the bytes are not a well-formed level-5 file (the message says where).
  """
  if not is_level5(bytes(data[:HEADER_BYTES])):
    raise ValueError('no MATLAB level-5 header')
  order = '<' if bytes(data[126:128]) == b'IM' else '>'
  data = memoryview(data)      # sub-elements are views, not copies, of the file's bytes
  wanted = None if names is None else set(names)
  out = {}
  pos = HEADER_BYTES
  while pos < len(data):
    if len(data) - pos < 8:
      break        # MATLAB pads some files with a few zero bytes after the last variable.
    kind, size, start = _tag(data, pos, order, len(data))
    body = data[start:start + size]
    pos = start + size   # top-level elements are not padded (a compressed one cannot be)
    if kind == _COMPRESSED:
      try:
        body = memoryview(zlib.decompress(body))
      except zlib.error as e:
        raise ValueError(f'bad compressed variable at byte {start - 8}: {e}') from None
      kind, size, inner = _tag(body, 0, order, len(body))
      body = body[inner:inner + size]
    if kind != _MATRIX:
      raise ValueError(f'data element of type {kind} at the top level (expected a matrix)')
    name, value = _matrix(body, order, want=wanted)
    if wanted is None or name in wanted:
      out[name] = value
  return out


def _tag(buf: bytes, pos: int, order: str, end: int) -> tuple[int, int, int]:
  """``(type, byte count, start of the data)`` of the element tagged at ``pos``."""
  if end - pos < 8:
    raise ValueError(f'truncated data element at byte {pos}')
  first, second = np.frombuffer(buf, order + 'u4', 2, pos).tolist()
  if first >> 16:            # small data element: type and size in one word, data in the next
    kind, size, start = first & 0xFFFF, first >> 16, pos + 4
    if size > 4:
      raise ValueError(f'small data element of {size} bytes at byte {pos}')
  else:
    kind, size, start = first, second, pos + 8
  if size > end - start:
    raise ValueError(f'data element at byte {pos} claims {size} bytes, {end - start} remain')
  return kind, size, start


def _numbers(kind: int, raw: bytes, order: str, what: str) -> np.ndarray:
  if kind not in _NUMBER_TYPES:
    raise ValueError(f'{what}: data type {kind} is not numeric')
  dtype = np.dtype(order + _NUMBER_TYPES[kind])
  if len(raw) % dtype.itemsize:
    raise ValueError(f'{what}: {len(raw)} bytes is not a whole number of {dtype.name}')
  return np.frombuffer(raw, dtype)


def _matrix(body: bytes, order: str, want=None) -> tuple[str, Any]:
  """``(name, value)`` of one miMATRIX element's body. ``want``: skip parsing the value (return
  None) of a top-level variable whose name is not in it."""
  if not body:
    return '', np.zeros((0, 0))      # an empty element stands for an empty double matrix
  parts = _Parts(body, order)
  flags = parts.numbers('array flags')
  if flags.size < 1:
    raise ValueError('array flags missing')
  flags = int(flags[0])
  cls = flags & 0xFF
  dims = [int(d) for d in parts.numbers('dimensions')]
  if len(dims) < 2 or min(dims) < 0:
    raise ValueError(f'bad dimensions {dims}')
  name = parts.numbers('array name').astype(np.uint8).tobytes().decode('latin-1')
  if want is not None and name not in want:
    return name, None
  count = 1
  for d in dims:
    count *= d
  shape = tuple(dims)
  if cls in _CLASS_DTYPES:
    value = parts.numbers('real part', count).astype(_CLASS_DTYPES[cls])
    if flags & _COMPLEX:
      value = value + 1j * parts.numbers('imaginary part', count)
    value = value.reshape(shape, order='F')
    return name, value.astype(bool) if flags & _LOGICAL else value
  if cls == _CHAR:
    return name, _chars(parts, shape, count)
  if cls == _CELL:
    parts.check_count(count)
    cells = np.empty(count, object)
    for i in range(count):
      cells[i] = parts.matrix()
    return name, cells.reshape(shape, order='F')
  if cls == _STRUCT:
    width = parts.numbers('field name length', 1)
    fields = _field_names(parts.numbers('field names'), int(width[0]))
    parts.check_count(count * len(fields))
    try:
      value = np.empty(count, [(f, object) for f in fields])
    except (ValueError, TypeError) as e:
      raise ValueError(f'bad struct field names {fields}: {e}') from None
    for i in range(count):
      for f in fields:
        value[f][i] = parts.matrix()
    return name, value.reshape(shape, order='F')
  raise ValueError(f'variable {name!r}: MATLAB class '
                   f'{_CLASS_NAMES.get(cls, cls)} is not supported')


def _chars(parts: '_Parts', shape: tuple, count: int) -> np.ndarray:
  """A char array -> str array of ``shape[:-1]`` (each row along the last axis one string)."""
  kind, raw = parts.next('characters')
  raw = bytes(raw)
  if kind in (1, 2):
    text = raw.decode('latin-1')
  elif kind == _UTF8:
    text = raw.decode('utf-8', 'replace')
  elif kind in (_UTF16, 4):
    text = raw.decode('utf-16-le' if parts.order == '<' else 'utf-16-be', 'replace')
  elif kind == _UTF32:
    text = raw.decode('utf-32-le' if parts.order == '<' else 'utf-32-be', 'replace')
  else:
    raise ValueError(f'characters stored as data type {kind}')
  if len(text) != count:
    raise ValueError(f'char array of size {shape} holds {len(text)} characters')
  if shape[-1]:
    grid = np.array(list(text), 'U1').reshape(shape, order='F').reshape(-1, shape[-1])
    strings = [''.join(row) for row in grid]
  else:
    rows = 1
    for d in shape[:-1]:
      rows *= d
    if rows > len(parts.body):      # a damaged size, not a real array of empty strings
      raise ValueError(f'char array of size {shape}')
    strings = [''] * rows
  return np.array(strings, f'U{max(shape[-1], 1)}').reshape(shape[:-1])


def _field_names(raw: np.ndarray, width: int) -> list[str]:
  data = raw.astype(np.uint8).tobytes()
  if width <= 0:
    if data:
      raise ValueError(f'field name length {width}')
    return []
  if len(data) % width:
    raise ValueError(f'{len(data)} bytes of field names are not a multiple of {width}')
  return [data[i:i + width].split(b'\0', 1)[0].decode('latin-1')
          for i in range(0, len(data), width)]


class _Parts:
  """The sub-elements of one miMATRIX body, read in order."""

  def __init__(self, body: bytes, order: str):
    self.body, self.order, self.pos = body, order, 0

  def next(self, what: str) -> tuple[int, bytes]:
    if self.pos >= len(self.body):
      raise ValueError(f'{what} missing')
    kind, size, start = _tag(self.body, self.pos, self.order, len(self.body))
    small = start == self.pos + 4
    self.pos = self.pos + 8 if small else start + -(-size // 8) * 8
    return kind, self.body[start:start + size]

  def numbers(self, what: str, count: int | None = None) -> np.ndarray:
    kind, raw = self.next(what)
    values = _numbers(kind, raw, self.order, what)
    if count is not None and values.size != count:
      raise ValueError(f'{what}: {values.size} values for {count} elements')
    return values

  def check_count(self, count: int) -> None:
    # Every element takes at least 8 bytes: refuse impossible counts before allocating.
    if count * 8 > len(self.body) - self.pos:
      raise ValueError(f'{count} elements cannot fit in {len(self.body) - self.pos} bytes')

  def matrix(self) -> Any:
    kind, raw = self.next('cell or field element')
    if kind != _MATRIX:
      raise ValueError(f'cell or field element of data type {kind}')
    return _matrix(raw, self.order)[1]
