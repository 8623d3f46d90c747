"""Annotation files: iBUG ``.pts`` (read and write) and menpo ``.ljson`` (read).

In memory points are float32 arrays of shape (L, 2) in (x, y) image pixels with pixel centres at
integer coordinates (0-based). ``.pts`` files are 1-based, so reading subtracts 1 and writing
adds 1; ``.ljson`` stores (y, x) 0-based, so reading swaps the columns. Malformed files raise
``ValueError`` naming the file and the problem.
"""

from __future__ import annotations

import decimal
import json
import math
import os
import re

import numpy as np

_PTS_HEADER = re.compile(r'^\s*n_points\s*:\s*(\S+)\s*$')


def read_pts(path: str | os.PathLike, num_points: int | None = None) -> np.ndarray:
  """Reads an iBUG ``.pts`` file into a (L, 2) float32 array of 0-based (x, y) pixels.

  Args:
    path: the file.
    num_points: if given, the file must hold exactly this many points.

  Raises:
    ValueError: empty file, missing header or braces, non-numeric value, wrong count, NaN.
    FileNotFoundError: the file does not exist.
  """
  path = os.fspath(path)
  with open(path, 'r', encoding='utf-8', errors='replace') as f:
    lines = [ln.strip() for ln in f.read().splitlines()]
  lines = [ln for ln in lines if ln]
  if not lines:
    raise ValueError(f'{path}: empty annotation file')
  start = 0
  if lines[0].lower().startswith('version'):
    start = 1
  if start >= len(lines):
    raise ValueError(f'{path}: missing n_points header')
  m = _PTS_HEADER.match(lines[start])
  if not m:
    raise ValueError(f'{path}: missing n_points header (line {lines[start]!r})')
  try:
    declared = int(m.group(1))
  except ValueError:
    raise ValueError(f'{path}: n_points is not an integer: {m.group(1)!r}') from None
  body = lines[start + 1:]
  if not body or body[0] != '{':
    raise ValueError(f'{path}: missing opening brace')
  if '}' not in body:
    raise ValueError(f'{path}: missing closing brace')
  close = body.index('}')
  if any(ln for ln in body[close + 1:]):
    raise ValueError(f'{path}: unexpected content after the closing brace')
  rows = body[1:close]
  points = []
  for k, row in enumerate(rows):
    parts = row.split()
    if len(parts) != 2:
      raise ValueError(f'{path}: point {k + 1} has {len(parts)} values, expected 2: {row!r}')
    try:
      x, y = _from_one_based(parts[0]), _from_one_based(parts[1])
    except (ValueError, decimal.DecimalException):
      raise ValueError(f'{path}: point {k + 1} is not numeric: {row!r}') from None
    if not (math.isfinite(x) and math.isfinite(y)):
      raise ValueError(f'{path}: point {k + 1} is not finite: {row!r}')
    points.append((x, y))
  if len(points) != declared:
    raise ValueError(f'{path}: header declares {declared} points but the file has {len(points)}')
  if num_points is not None and declared != num_points:
    raise ValueError(f'{path}: expected {num_points} points, the file has {declared}')
  return _to_float32(path, points, allow_nan=False)


def _from_one_based(text: str) -> float:
  """``float(text) - 1`` with the subtraction done in decimal, so no digits are lost near 0."""
  value = decimal.Decimal(text)
  if not value.is_finite() or abs(value.adjusted()) > 400:
    # Beyond float range either way (inf, or 0 - 1): decimal arithmetic would overflow its
    # context at exponents like 1e604492188.
    return float(value) - 1.0
  return float(value - 1)


def _to_one_based(x: float) -> str:
  """Text of ``x + 1`` that :func:`_from_one_based` reads back as exactly ``float32(x)``.

  The short float64 repr of ``x + 1`` is used when it round-trips (the usual case); otherwise
  (tiny or huge |x|, where float64 ``x + 1`` drops bits) the exact decimal value of ``x + 1``.
  """
  x32 = np.float32(x)
  short = repr(float(x32) + 1.0)
  if np.float32(_from_one_based(short)) == x32:
    return short
  with decimal.localcontext() as ctx:
    ctx.prec = 400  # enough for every float32 plus 1 exactly
    return str(decimal.Decimal(float(x32)) + 1)


def format_pts(points) -> str:
  """The text of a ``.pts`` file for (L, 2) 0-based points (written 1-based)."""
  pts = np.asarray(points, np.float64)
  if pts.ndim != 2 or pts.shape[1] != 2:
    raise ValueError(f'points must have shape (L, 2), got {pts.shape}')
  if not np.isfinite(pts).all():
    raise ValueError('points contain NaN or infinity')
  lines = ['version: 1', f'n_points: {len(pts)}', '{']
  # Written so that read_pts gives back exactly the float32 points (see _to_one_based).
  for x, y in pts.astype(np.float32):
    lines.append(f'{_to_one_based(x)} {_to_one_based(y)}')
  lines.append('}')
  return '\n'.join(lines) + '\n'


def write_pts(path: str | os.PathLike, points) -> None:
  """Writes (L, 2) 0-based points as a 1-based iBUG ``.pts`` file."""
  text = format_pts(points)
  # Temporary file + rename: a kill leaves the old file or the new one, never half of it.
  from jaxalign import atomic  # pylint: disable=g-import-not-at-top
  atomic.write_text(path, text)


def read_ljson(path: str | os.PathLike, group: str | None = None,
               num_points: int | None = None) -> np.ndarray:
  """Reads a menpo ``.ljson`` landmark file into (L, 2) float32 (x, y) pixels.

  menpo stores points as [y, x], 0-based. The layouts (menpo ``io/input/landmark.py``):

  * v3 (menpo >= 0.6, ``"version": 3``): ``groups`` = {name: {``landmarks``: {``points``:
    [[y, x], ...], ``connectivity``}, ``labels``: [{``label``, ``mask``}]}}: one point set
    per named group;
  * v2: ``landmarks``: {``points``: [[y, x], ...]} with ``labels`` beside it;
  * v1: ``groups`` = [{``label``, ``landmarks``: [{``point``: [y, x]}]}, ...], the labelled
    parts of one point set, concatenated in order (as menpo reads it); a dict of such
    ``landmarks`` lists keyed by group name is read like v3.

  Args:
    path: the file.
    group: the group to read (v3 / keyed groups); default the only group with ``num_points``
      points when ``num_points`` is given, else the first group.
    num_points: if given, the result must have this many points.

  Null points (menpo's missing landmarks) become NaN.

  Raises:
    ValueError: naming the file: bad JSON, unknown layout, no such group, malformed points,
      wrong count.
  """
  path = os.fspath(path)
  try:
    with open(path, 'r', encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError:
    raise ValueError(f'{path}: not a text file') from None
  if not text.strip():
    raise ValueError(f'{path}: empty annotation file')
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON ({e.msg} at line {e.lineno})') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object at the top level')
  groups = data.get('groups')
  if isinstance(data.get('landmarks'), dict) and 'points' in data['landmarks']:
    raw = data['landmarks']['points']
  elif isinstance(groups, list) and groups:
    raw = []
    for k, g in enumerate(groups):
      lms = g.get('landmarks') if isinstance(g, dict) else None
      if not isinstance(lms, list):
        raise ValueError(f'{path}: v1 group {k} has no landmarks list')
      raw += [_ljson_v1_point(path, lm) for lm in lms]
  elif isinstance(groups, dict) and groups:
    candidates = {name: _ljson_group_points(path, name, g) for name, g in groups.items()}
    if group is not None:
      if group not in candidates:
        raise ValueError(f'{path}: no landmark group {group!r} (has {sorted(candidates)})')
      name = group
    elif num_points is not None:
      fits = [n for n, r in candidates.items() if len(r) == num_points]
      if len(fits) != 1:
        sizes = {n: len(r) for n, r in candidates.items()}
        raise ValueError(f'{path}: {len(fits)} groups have {num_points} points (groups: '
                         f'{sizes}); name one')
      name = fits[0]
    else:
      name = next(iter(candidates))
    raw = candidates[name]
  else:
    raise ValueError(f'{path}: no "landmarks.points" or "groups" entry')
  if not isinstance(raw, list):
    raise ValueError(f'{path}: landmarks.points is {type(raw).__name__}, not a list')
  pts = []
  for k, p in enumerate(raw):
    if p is None or (isinstance(p, list) and any(v is None for v in p)):
      pts.append((math.nan, math.nan))
      continue
    if not isinstance(p, list) or len(p) != 2:
      raise ValueError(f'{path}: point {k} is not a [y, x] pair: {p!r}')
    try:
      y, x = float(p[0]), float(p[1])
    except (TypeError, ValueError):
      raise ValueError(f'{path}: point {k} is not numeric: {p!r}') from None
    pts.append((x, y))
  if not pts:
    raise ValueError(f'{path}: no points')
  if num_points is not None and len(pts) != num_points:
    raise ValueError(f'{path}: expected {num_points} points, the file has {len(pts)}')
  return _to_float32(path, pts, allow_nan=True)


def to_float32(values) -> np.ndarray:
  """``values`` as float32; a finite number beyond float32's range (a damaged file's) becomes
  infinite, so a finiteness check made after the conversion rejects it. No overflow warning."""
  with np.errstate(over='ignore'):
    return np.asarray(values, np.float64).astype(np.float32)


def _to_float32(path, points, allow_nan: bool) -> np.ndarray:
  """(L, 2) float32 of a file's (x, y) list; a coordinate beyond float32's range (finite in
  the file, infinite after the cast) is an error naming the file and the point."""
  p64 = np.asarray(points, np.float64).reshape(-1, 2)
  p32 = to_float32(p64)
  bad = np.isinf(p32).any(axis=1) | (np.isnan(p32).any(axis=1) & ~allow_nan)
  if bad.any():
    k = int(np.argmax(bad))
    raise ValueError(f'{path}: point {k + 1} is beyond float32 range: {p64[k].tolist()}')
  return p32


def _ljson_v1_point(path, lm):
  """The [y, x] of a v1 landmark entry {"point": [y, x]}."""
  if not isinstance(lm, dict) or 'point' not in lm:
    raise ValueError(f'{path}: landmark entry without "point": {lm!r}')
  return lm['point']


def _ljson_group_points(path, name, g) -> list:
  """The raw [y, x] list of a named group: v3 {landmarks: {points}} or {landmarks: [{point}]}."""
  lms = g.get('landmarks') if isinstance(g, dict) else None
  if isinstance(lms, dict) and isinstance(lms.get('points'), list):
    return lms['points']
  if isinstance(lms, list):
    return [_ljson_v1_point(path, lm) for lm in lms]
  raise ValueError(f'{path}: group {name!r} has no landmarks.points (v3) or landmarks list')
