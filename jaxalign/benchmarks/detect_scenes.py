"""Synthetic test photos for face detection: rendered 3DMM faces composited onto larger scenes.

Each photo is a cluttered background (:func:`jaxalign.data.synthetic_scene.background`) with
1-3 faces rendered by :class:`jaxalign.data.synthetic.Renderer` (black background, then cut out
with the mesh's coverage mask), each at its own scale (landmark box from 20 px to about half
the photo) and yaw (frontal, three-quarter and profile, both ways), at places where the faces
do not overlap. Everything follows from ``seed``: photo ``i`` draws from its own stream, so a
photo does not depend on how many are made.

The faces are masks of the model's mesh (no hair, ears or neck), so they test pose and scale,
not realism; real photos stay the first evidence (``../shared/faces/real``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

# Landmark-box longer sides (px) and yaws (degrees, eos convention) cycled through.
FACE_SIDES = (20, 28, 40, 56, 80, 112, 160)
YAWS = (0.0, 30.0, -30.0, 55.0, -55.0, 75.0, -75.0, 88.0, -88.0)
# Rendered at this size with the landmark box this fraction of it, then resized.
RENDER_SIZE = 192
RENDER_FACE_SCALE = 0.7


@dataclasses.dataclass(frozen=True)
class Scene:
  """One synthetic photo.

  Attributes:
    name: file stem, ``synth_<i>``.
    image: (H, W, 3) uint8 RGB.
    faces: list of (68, 2) float32 points (image pixels), one per face, every face annotated.
    yaws: the faces' yaws in degrees.
  """

  name: str
  image: np.ndarray
  faces: list
  yaws: list


def _renderer():
  from jaxalign.data import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.SynthConfig(size=RENDER_SIZE, face_scale=(RENDER_FACE_SCALE,) * 2,
                                 pitch_range=(-15.0, 15.0), roll_range=(-15.0, 15.0),
                                 blur_range=(0.0, 0.5), noise_range=(0.0, 2.0))
  return synthetic.Renderer(config)


def _place(rng, size: np.ndarray, taken: list, width: int, height: int):
  """Top-left corner for a (w, h) patch that overlaps no box in ``taken``, or None."""
  w, h = size
  if w >= width or h >= height:
    return None
  for _ in range(30):
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    box = np.array([x, y, x + w, y + h])
    if all(box[0] > t[2] or box[2] < t[0] or box[1] > t[3] or box[3] < t[1] for t in taken):
      return box
  return None


def make_scenes(num: int, seed: int = 0, width: int = 640, height: int = 480,
                max_faces: int = 3, renderer=None) -> list[Scene]:
  """``num`` synthetic photos (deterministic in ``seed``).

  Args:
    num: number of photos.
    seed: root seed.
    width, height: photo size in pixels.
    max_faces: faces per photo are 1..max_faces (fewer when they do not fit).
    renderer: a :class:`~jaxalign.data.synthetic.Renderer` to reuse (None: one is built; it
      needs the Surrey Face Model, ``JAXALIGN_SFM_DIR``).

  Returns:
    The scenes; face ``k`` of photo ``i`` uses size ``FACE_SIDES[(3 i + k) % 7]`` and yaw
    ``YAWS[(3 i + k) % 9]`` (every scale meets every yaw over 63 faces).
  """
  import cv2  # pylint: disable=g-import-not-at-top
  from jaxalign.data import synthetic_scene  # pylint: disable=g-import-not-at-top
  renderer = renderer or _renderer()
  scenes = []
  for i in range(int(num)):
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
    side = max(width, height)
    bg = synthetic_scene.background(rng, side)[:height, :width]
    canvas = synthetic_scene.finish(bg, rng, 0.0, 2.0).astype(np.float32)
    faces, yaws, taken = [], [], []
    for k in range(int(rng.integers(1, max_faces + 1))):
      slot = 3 * i + k
      target, yaw = FACE_SIDES[slot % len(FACE_SIDES)], YAWS[slot % len(YAWS)]
      params = renderer.sample(int(seed) + 7919, slot)
      params = dataclasses.replace(params, yaw=yaw, background=False, occluders=0,
                                   centre=np.array([0.5, 0.5]))
      face = renderer.render(params)
      f = target / float(np.max(face.box[2:] - face.box[:2]))
      out = max(1, int(round(RENDER_SIZE * f)))
      f = out / RENDER_SIZE
      spot = _place(rng, np.array([out, out]), taken, width, height)
      if spot is None:
        continue
      interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
      patch = cv2.resize(face.image, (out, out), interpolation=interp).astype(np.float32)
      alpha = cv2.resize(face.raster.mask.astype(np.float32), (out, out),
                         interpolation=interp)[..., None]
      x0, y0 = int(spot[0]), int(spot[1])
      region = canvas[y0:y0 + out, x0:x0 + out]
      canvas[y0:y0 + out, x0:x0 + out] = region * (1 - alpha) + patch * alpha
      # Pixel centres at integers: scaling by f maps centre p to (p + 0.5) f - 0.5.
      pts = (face.points.astype(np.float64) + 0.5) * f - 0.5 + np.array([x0, y0])
      faces.append(pts.astype(np.float32))
      yaws.append(float(yaw))
      taken.append(np.array([x0, y0, x0 + out, y0 + out], np.float64))
    scenes.append(Scene(f'synth_{i:03d}', np.clip(canvas + 0.5, 0, 255).astype(np.uint8),
                        faces, yaws))
  return scenes


def write_scenes(out_dir: str | os.PathLike, scenes: list[Scene]) -> pathlib.Path:
  """Writes ``<name>.png`` and ``<name>_<k>.pts`` per scene (the ``bench detect`` layout) and
  ``yaws.json`` (``{name: [yaw of face k, ...]}``, degrees; merged with one already there)."""
  import json  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxalign import io  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for s in scenes:
    Image.fromarray(s.image).save(out / f'{s.name}.png')
    for k, pts in enumerate(s.faces):
      io.write_pts(out / f'{s.name}_{k}.pts', pts)
  table_path = out / 'yaws.json'
  table = json.loads(table_path.read_text()) if table_path.is_file() else {}
  table.update({s.name: [float(y) for y in s.yaws] for s in scenes})
  table_path.write_text(json.dumps(table, indent=0))
  return out
