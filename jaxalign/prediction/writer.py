"""Output files of ``python -m jaxalign.predict``: ``.pts``, ``.json``, overlay ``.png``, ``.obj``.

Points are (L, 2) image pixels, 0-based (x, y), as everywhere in jaxalign; ``.pts`` files are
written 1-based by :func:`jaxalign.io.write_pts`. The overlay draws the stable landmarks (SL,
predicted by the CNN) and the unstable ones (UL, completed by the 3DMM) in two colours.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxalign import atomic
from jaxalign import io
from jaxalign import schemes as schemes_lib

# RGB colours of the overlay.
SL_COLOUR = (40, 220, 40)     # stable landmarks: green
UL_COLOUR = (255, 120, 0)     # unstable (completed) landmarks: orange
BOX_COLOUR = (255, 255, 255)


def face_stem(stem: str, index: int) -> str:
  """File stem of the index-th face of an image: ``stem`` for the first, ``stem_face<k>`` after."""
  return stem if index == 0 else f'{stem}_face{index}'


def _jsonable(value):
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def face_record(points, box, *, image: str, scheme=schemes_lib.IBUG68, yaw=None, pitch=None,
                roll=None, shape_coeffs=None, expression_coeffs=None, backend: str | None = None,
                flipped: bool | None = None, box_source: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """The JSON object written for one face (plain Python types).

  Keys: ``image``, ``scheme``, ``points`` (L x [x, y], 0-based image pixels), ``stable`` (the SL
  indices), ``box`` ([x0, y0, x1, y1]), ``box_source``, ``yaw``/``pitch``/``roll`` (degrees, eos
  sign: yaw > 0 right-looking), ``flipped`` (the face was mirrored before the SL stage),
  ``shape_coeffs``/``expression_coeffs`` (3DMM; for a flipped face they describe the mirrored
  face) and ``completion_backend``.
  """
  scheme = schemes_lib.get_scheme(scheme)
  pts = np.asarray(points, np.float64)
  if pts.shape != (scheme.num_points, 2):
    raise ValueError(f'points must have shape ({scheme.num_points}, 2), got {pts.shape}')
  obj = {
      'image': str(image),
      'scheme': scheme.name,
      'points': pts.tolist(),
      'stable': list(scheme.stable),
      'box': np.asarray(box, np.float64).reshape(4).tolist(),
      'box_source': box_source,
      'yaw': None if yaw is None else float(yaw),
      'pitch': None if pitch is None else float(pitch),
      'roll': None if roll is None else float(roll),
      'flipped': None if flipped is None else bool(flipped),
      'shape_coeffs': None if shape_coeffs is None else np.asarray(shape_coeffs).tolist(),
      'expression_coeffs': (None if expression_coeffs is None
                            else np.asarray(expression_coeffs).tolist()),
      'completion_backend': backend,
  }
  if extra:
    obj.update(_jsonable(extra))
  return obj


def format_json(obj: dict[str, Any]) -> str:
  """A JSON object with one top-level key per line and compact values (numpy converted)."""
  obj = _jsonable(obj)
  body = ',\n'.join(f'  {json.dumps(str(k))}: {json.dumps(v)}' for k, v in obj.items())
  return '{\n' + body + '\n}\n'


def write_json(path: str | os.PathLike, obj: dict[str, Any]) -> None:
  """Writes a JSON object (numpy values converted), one top-level key per line."""
  atomic.write_text(path, format_json(obj))


def draw_landmarks(image: np.ndarray, faces: Sequence[tuple[np.ndarray, np.ndarray | None]],
                   scheme=schemes_lib.IBUG68, draw_box: bool = True) -> np.ndarray:
  """The image with each face's SLs and ULs drawn in two colours (and its box).

  Args:
    image: (H, W, 3) RGB uint8 (or (H, W) grey).
    faces: (points (L, 2) image pixels, box (4,) or None) per face; NaN points are skipped.
    scheme: gives the SL/UL split.

  Returns:
    (H, W, 3) RGB uint8 copy with the drawing.
  """
  import cv2  # pylint: disable=g-import-not-at-top
  scheme = schemes_lib.get_scheme(scheme)
  canvas = np.asarray(image)
  if canvas.ndim == 2:
    canvas = np.repeat(canvas[..., None], 3, axis=-1)
  canvas = np.ascontiguousarray(np.clip(canvas, 0, 255).astype(np.uint8))
  stable = scheme.stable_mask()
  for points, box in faces:
    pts = np.asarray(points, np.float64)
    if box is not None:
      b = np.asarray(box, np.float64)
      size = max(b[2] - b[0], b[3] - b[1])
    else:
      finite = pts[np.isfinite(pts).all(-1)]
      size = float(np.ptp(finite, axis=0).max()) if len(finite) else 100.0
    # Dots and lines sized to the face, so small and large faces both stay readable.
    radius = max(1, int(round(size / 90)))
    thickness = max(1, int(round(size / 200)))
    if box is not None and draw_box:
      cv2.rectangle(canvas, (int(round(b[0])), int(round(b[1]))),
                    (int(round(b[2])), int(round(b[3]))), BOX_COLOUR, thickness, cv2.LINE_8)
    for i, (x, y) in enumerate(pts):
      if not (np.isfinite(x) and np.isfinite(y)):
        continue
      colour = SL_COLOUR if stable[i] else UL_COLOUR
      cv2.circle(canvas, (int(round(x)), int(round(y))), radius, colour, -1, cv2.LINE_AA)
  return canvas


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes an RGB uint8 image (format from the extension, e.g. ``.png``)."""
  import cv2  # pylint: disable=g-import-not-at-top
  img = np.asarray(image, np.uint8)
  if img.ndim == 3:
    img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
  if not cv2.imwrite(str(path), img):
    raise OSError(f'{path}: could not write the image')


def format_obj(vertices, triangles, texcoords=None) -> str:
  """Wavefront OBJ text of a triangle mesh, in the layout of ``eos.core.write_obj``.

  Args:
    vertices: (V, 3) positions.
    triangles: (T, 3) 0-based vertex indices (written 1-based).
    texcoords: optional (V, 2) texture coordinates with v downwards, as in the Surrey model
      (written as ``vt u 1-v``, OBJ's v axis points up, as eos does).
  """
  v = np.asarray(vertices, np.float64)
  t = np.asarray(triangles, np.int64)
  if v.ndim != 2 or v.shape[1] != 3:
    raise ValueError(f'vertices must have shape (V, 3), got {v.shape}')
  if t.ndim != 2 or t.shape[1] != 3:
    raise ValueError(f'triangles must have shape (T, 3), got {t.shape}')
  if t.size and (t.min() < 0 or t.max() >= len(v)):
    raise ValueError('triangle index out of range')
  lines = [f'v {x:.9g} {y:.9g} {z:.9g}' for x, y, z in v]
  if texcoords is not None:
    tc = np.asarray(texcoords, np.float64)
    if tc.shape != (len(v), 2):
      raise ValueError(f'texcoords must have shape ({len(v)}, 2), got {tc.shape}')
    lines += [f'vt {u:.9g} {1.0 - w:.9g}' for u, w in tc]
    lines += [f'f {a}/{a} {b}/{b} {c}/{c}' for a, b, c in t + 1]
  else:
    lines += [f'f {a} {b} {c}' for a, b, c in t + 1]
  return '\n'.join(lines) + '\n'


def write_obj(path: str | os.PathLike, vertices, triangles, texcoords=None) -> None:
  """Writes a triangle mesh as ``.obj`` (see :func:`format_obj`)."""
  text = format_obj(vertices, triangles, texcoords)
  atomic.write_text(path, text)


def fitted_mesh(model, shape_coeffs, expression_coeffs, flipped: bool = False):
  """(vertices (V, 3), triangles (T, 3)) of the fitted face in model space (millimetres).

  A flipped face was fitted on its mirror image, so its mesh is mirrored back (x -> -x, in the
  model's frame whose x axis runs across the face) with the triangle winding reversed to keep
  the normals pointing outwards.
  """
  vertices = model.vertices(shape_coeffs, expression_coeffs).astype(np.float64)
  triangles = np.asarray(model.triangles, np.int64)
  if flipped:
    vertices = vertices * np.array([-1.0, 1.0, 1.0])
    triangles = triangles[:, ::-1]
  return vertices, triangles


def write_face(out_dir: str | os.PathLike, stem: str, record: dict[str, Any],
               mesh: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
               ) -> list[pathlib.Path]:
  """Writes ``<stem>.pts`` and ``<stem>.json`` (and ``<stem>.obj`` with a mesh) for one face.

  Args:
    out_dir: output folder (created).
    stem: file stem (see :func:`face_stem`).
    record: the object from :func:`face_record`.
    mesh: optional (vertices, triangles, texcoords or None).

  Returns:
    The paths written.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = [out / f'{stem}.pts', out / f'{stem}.json']
  io.write_pts(written[0], np.asarray(record['points'], np.float32))
  write_json(written[1], record)
  if mesh is not None:
    written.append(out / f'{stem}.obj')
    write_obj(written[-1], *mesh)
  return written
