"""Everything in a synthetic image that is not the face: background, occluders, blur and noise.

Images here are float32 (H, W, 3) linear RGB in [0, 1] until :func:`finish` turns them into
uint8 sRGB. Every random choice comes from the generator passed in, so a face's picture depends
only on its own random stream.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A random cluttered background: a smooth colour field, shapes and lines, fine texture.

  Returns:
    (size, size, 3) float32 linear RGB in [0, 1].
  """
  # Colours: a random mix of a grey level and a random hue, so that most are muted.
  shape = (rng.integers(2, 6), rng.integers(2, 6))
  grey = rng.uniform(0, 1, shape + (1,))
  hue = rng.uniform(0, 1, shape + (3,))
  grid = grey + rng.uniform(0.2, 0.8) * (hue - grey)
  grid = grid * rng.uniform(0.4, 1.0) + rng.uniform(0, 0.15)
  img = Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).resize(
      (size, size), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(rng.integers(0, 8)):
    g, c = rng.uniform(0, 255), rng.uniform(0, 255, 3)
    colour = tuple(int(v) for v in g + rng.uniform(0.2, 0.9) * (c - g))
    kind = rng.integers(3)
    x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
    w, h = rng.uniform(0.05, 0.6, 2) * size
    if kind == 0:
      draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
    elif kind == 1:
      draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
    else:
      draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(1, 6)))
  out = (np.asarray(img, np.float32) / 255.0) ** 2.2
  out = out * (1.0 + rng.uniform(0.0, 0.15) * rng.standard_normal((size, size, 1),
                                                                   np.float32))
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def occluder(rng: np.random.Generator, size: int, box: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
  """A COFW-like occluder (object, hand-coloured blob, bar, scarf) over part of the face box.

  Args:
    rng: the face's generator.
    size: image size.
    box: (4,) face box (x0, y0, x1, y1) in pixels.

  Returns:
    (mask (size, size) float32 coverage in [0, 1], colour (size, size, 3) float32 linear RGB).
  """
  x0, y0, x1, y1 = (float(b) for b in box)
  bw, bh = x1 - x0, y1 - y0
  cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
  ext = max(bw, bh)
  sup = 2                                               # supersampling for smooth edges
  canvas = Image.new('L', (size * sup, size * sup), 0)
  draw = ImageDraw.Draw(canvas)
  kind = rng.integers(4)
  if kind == 0:                                         # ellipse
    rx, ry = rng.uniform(0.12, 0.35, 2) * ext
    draw.ellipse([(cx - rx) * sup, (cy - ry) * sup, (cx + rx) * sup, (cy + ry) * sup], fill=255)
  elif kind == 1:                                       # rotated bar (glasses-like, a finger)
    length, width = rng.uniform(0.4, 1.2) * ext, rng.uniform(0.08, 0.2) * ext
    angle = rng.uniform(0, np.pi)
    d, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    c = np.array([cx, cy])
    corners = [c + a * d * length / 2 + b * n * width / 2 for a, b in
               ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    draw.polygon([(float(p[0]) * sup, float(p[1]) * sup) for p in corners], fill=255)
  elif kind == 2:                                       # random star-shaped polygon
    k = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.1, 0.35, k) * ext
    draw.polygon([(float(cx + r * np.cos(a)) * sup, float(cy + r * np.sin(a)) * sup)
                  for a, r in zip(angles, radii)], fill=255)
  else:                                                 # from an image edge (scarf, hair, hand)
    side = rng.integers(4)
    depth = rng.uniform(0.1, 0.3) * ext
    if side == 0:
      rect = [0, 0, size, y0 + depth]
    elif side == 1:
      rect = [0, y1 - depth, size, size]
    elif side == 2:
      rect = [0, 0, x0 + depth, size]
    else:
      rect = [x1 - depth, 0, size, size]
    draw.rectangle([v * sup for v in rect], fill=255)
  mask = np.asarray(canvas.resize((size, size), Image.BILINEAR), np.float32) / 255.0
  # Texture: a flat colour, a gradient or stripes, sometimes skin-like (a hand).
  base = rng.uniform(0, 1, 3).astype(np.float32) ** 2
  if rng.uniform() < 0.25:
    base = np.array([0.6, 0.4, 0.3], np.float32) * rng.uniform(0.3, 1.2)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  style = rng.integers(3)
  if style == 0:
    shade = np.ones_like(xx)
  elif style == 1:
    g = rng.uniform(-1, 1, 2)
    shade = 1.0 + 0.5 * (g[0] * (xx - 0.5) + g[1] * (yy - 0.5))
  else:
    f, a = rng.uniform(5, 25), rng.uniform(0, np.pi)
    shade = 1.0 + 0.35 * np.sign(np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi))
  colour = np.clip(base[None, None] * shade[..., None], 0, 1).astype(np.float32)
  return mask, colour


def finish(image: np.ndarray, rng: np.random.Generator, blur_sigma: float,
           noise_sigma: float) -> np.ndarray:
  """Linear float image -> uint8 sRGB, Gaussian blur (sigma in pixels), Gaussian noise (levels).

  The random draws (the noise) come from ``rng``; ``blur_sigma`` / ``noise_sigma`` <= 0 skip.
  """
  srgb = np.clip(image, 0.0, 1.0) ** (1 / 2.2)
  out = Image.fromarray((srgb * 255.0 + 0.5).astype(np.uint8))
  if blur_sigma > 0:
    out = out.filter(ImageFilter.GaussianBlur(blur_sigma))
  arr = np.asarray(out)
  if noise_sigma > 0:
    noisy = arr.astype(np.float32) + rng.standard_normal(arr.shape, np.float32) * noise_sigma
    arr = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
  return arr
