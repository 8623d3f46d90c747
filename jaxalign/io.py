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
    except (ValueError, decimal.InvalidOperation):
      raise ValueError(f'{path}: point {k + 1} is not numeric: {row!r}') from None
    if not (math.isfinite(x) and math.isfinite(y)):
      raise ValueError(f'{path}: point {k + 1} is not finite: {row!r}')
    points.append((x, y))
  if len(points) != declared:
    raise ValueError(f'{path}: header declares {declared} points but the file has {len(points)}')
  if num_points is not None and declared != num_points:
    raise ValueError(f'{path}: expected {num_points} points, the file has {declared}')
  return np.asarray(points, np.float32).reshape(-1, 2)


def _from_one_based(text: str) -> float:
  """``float(text) - 1`` with the subtraction done in decimal, so no digits are lost near 0."""
  value = decimal.Decimal(text)
  if not value.is_finite():
    return float(value)
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
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def read_ljson(path: str | os.PathLike, group: str | None = None) -> np.ndarray:
  """Reads a menpo ``.ljson`` landmark file into (L, 2) float32 (x, y) pixels.

  Supports the v1 (``groups``: {name: {landmarks: [{point: [y, x]}]}}) and v2/v3
  (``landmarks``: {points: [[y, x], ...]}) layouts. ``group`` picks a v1 group (default: the
  first). Null points (menpo's missing landmarks) become NaN.
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
  if isinstance(data.get('landmarks'), dict) and 'points' in data['landmarks']:
    raw = data['landmarks']['points']
  elif isinstance(data.get('groups'), dict) and data['groups']:
    groups = data['groups']
    name = group or next(iter(groups))
    if name not in groups:
      raise ValueError(f'{path}: no landmark group {name!r} (has {sorted(groups)})')
    try:
      raw = [lm['point'] for lm in groups[name]['landmarks']]
    except (KeyError, TypeError):
      raise ValueError(f'{path}: group {name!r} has no landmarks/point entries') from None
  else:
    raise ValueError(f'{path}: no "landmarks.points" or "groups" entry')
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
  return np.asarray(pts, np.float32).reshape(-1, 2)
