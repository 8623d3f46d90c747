"""MATLAB ``.mat`` files of every version the face data sets ship in, read into numpy.

Level-5 files (``-v6``/``-v7``, the usual ones) are read by :mod:`.mat5`, which checks every size
it reads (``scipy.io.loadmat`` can crash the interpreter on a damaged one); level 4 by
``scipy.io.loadmat``; version 7.3 files (HDF5 with a 512-byte MATLAB header, e.g.
``COFW_test_color.mat``) with ``h5py``. All come back in
MATLAB's own layout, so callers index them the same way:

* a numeric or logical matrix of MATLAB size (m, n) -> numpy array of shape (m, n) (HDF5 stores
  it transposed; the reader transposes back);
* a cell array -> numpy object array of the cell's MATLAB shape holding the elements;
* a char array -> ``str`` (v7.3) or a numpy string array (v5; use :func:`as_str`);
* a struct -> numpy structured array (v5) or ``dict`` of fields (v7.3; use :func:`field`).

Coordinates inside MATLAB files are usually 1-based; converting them is the caller's job.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable

import numpy as np

from jaxalign.data.sources import mat5


def load_mat(path: str | os.PathLike, names: Iterable[str] | None = None,
             required: Iterable[str] = ()) -> dict[str, Any]:
  """Reads the variables of a ``.mat`` file (any version) into a dict.

  Args:
    path: the file.
    names: only these variables (all when None).
    required: variables that must be present.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: the file is not a readable MATLAB file, or lacks a required variable; the
      message names the file.
    ImportError: a v7.3 file and h5py is not installed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such .mat file')
  names = list(names) if names is not None else None
  try:
    with open(path, 'rb') as f:
      head = f.read(mat5.HEADER_BYTES)
      level5 = mat5.is_level5(head)
      data = mat5.read(head + f.read(), names) if level5 else None
    if not level5:
      # Level 4 (scipy's pure-Python reader) or v7.3 (HDF5, which scipy declines).
      import scipy.io  # pylint: disable=g-import-not-at-top
      data = scipy.io.loadmat(os.fspath(path), variable_names=names)
  except NotImplementedError:
    data = _load_hdf5(path, names)
  except Exception as e:  # bad bytes: ValueError from mat5, IndexError/OSError/... from scipy
    raise ValueError(f'{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e})'
                     ) from None
  data = {k: v for k, v in data.items() if not k.startswith('__')}
  missing = [n for n in required if n not in data]
  if missing:
    raise ValueError(f'{path}: missing MATLAB variable(s) {missing}; it has {sorted(data)}')
  return data


def _load_hdf5(path: pathlib.Path, names: list[str] | None) -> dict[str, Any]:
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py '
                      '(pip install h5py)') from None
  try:
    with h5py.File(path, 'r') as f:
      return {key: _h5_value(f, f[key]) for key in f.keys()
              if not key.startswith('#') and (names is None or key in names)}
  except Exception as e:  # damaged HDF5: OSError, KeyError, TypeError, RuntimeError, ...
    raise ValueError(f'{path}: not a readable MATLAB v7.3 file ({type(e).__name__}: {e})'
                     ) from None


def _matlab_class(obj) -> str:
  cls = obj.attrs.get('MATLAB_class', b'double')
  return cls.decode() if isinstance(cls, bytes) else str(cls)


def _h5_value(f, obj) -> Any:
  import h5py  # pylint: disable=g-import-not-at-top
  if isinstance(obj, h5py.Group):
    # A scalar struct: one member per field.
    return {k: _h5_value(f, obj[k]) for k in obj.keys()}
  cls = _matlab_class(obj)
  if obj.attrs.get('MATLAB_empty', 0):
    return '' if cls == 'char' else np.zeros((0, 0))
  raw = obj[()]
  if h5py.check_dtype(ref=obj.dtype) is not None:
    raw = np.asarray(raw)
    out = np.empty(raw.shape[::-1], object)
    for idx in np.ndindex(out.shape):
      out[idx] = _h5_value(f, f[raw[idx[::-1]]])
    return out
  arr = np.asarray(raw).T
  if cls == 'char':
    rows = np.atleast_2d(arr)
    return '\n'.join(''.join(chr(int(c)) for c in row) for row in rows)
  if cls == 'logical':
    return arr.astype(bool)
  return arr


def as_str(value: Any) -> str:
  """A MATLAB char array as read by either reader (str, string array, nested cells) -> str."""
  while isinstance(value, np.ndarray):
    if value.size != 1:
      if value.dtype.kind == 'U':
        return ''.join(value.ravel().tolist())
      raise ValueError(f'expected one string, got an array of shape {value.shape}')
    value = value.ravel()[0]
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if not isinstance(value, str):
    raise ValueError(f'expected a string, got {type(value).__name__}')
  return value


def field(struct: Any, name: str) -> Any:
  """Field ``name`` of a MATLAB struct as read by either reader (structured array or dict)."""
  while isinstance(struct, np.ndarray) and struct.dtype == object and struct.size == 1:
    struct = struct.ravel()[0]
  if isinstance(struct, dict):
    if name not in struct:
      raise ValueError(f'struct has no field {name!r} (fields: {sorted(struct)})')
    return struct[name]
  if isinstance(struct, np.ndarray) and struct.dtype.names:
    if name not in struct.dtype.names:
      raise ValueError(f'struct has no field {name!r} (fields: {list(struct.dtype.names)})')
    return struct[name].ravel()[0] if struct.size == 1 else struct[name]
  raise ValueError(f'expected a MATLAB struct, got {type(struct).__name__}')


def as_float(value: Any, size: int | None = None) -> np.ndarray:
  """A numeric MATLAB value -> flat float64 array (optionally of exactly ``size`` entries)."""
  while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
    value = value.ravel()[0]
  try:
    arr = np.asarray(value, np.float64).ravel()
  except (TypeError, ValueError):
    raise ValueError(f'expected numbers, got {type(value).__name__}') from None
  if size is not None and arr.size != size:
    raise ValueError(f'expected {size} numbers, got {arr.size}')
  return arr
