"""Procedural face albedo painted in the Surrey Face Model's texture coordinates.

The model's texture coordinates flatten the face onto the unit square (u to the viewer's right,
v down, the eyes near v = 0.36, the chin near v = 0.93). Every facial feature is painted around
the texture coordinates of the landmark vertices it belongs to, so the features move with the
vertices whatever the shape, expression or pose, and every landmark gets a visible cue: eye
corners where the eyelid lines meet, brows, nostrils beside the lower-nose points, lip outline and
the line between the lips; the jaw points are cued by the face's silhouette.

A texture is an (S, S, 3) float32 array of linear RGB reflectances in [0, 1]; texel (row j,
column i) holds the albedo at (u, v) = (i / (S - 1), j / (S - 1)).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTURE_SIZE = 256

# Skin base colours (linear RGB) from dark to light; a face blends two neighbours.
_SKIN_TONES = np.array([
    [0.16, 0.09, 0.06], [0.28, 0.16, 0.10], [0.42, 0.26, 0.17], [0.56, 0.37, 0.26],
    [0.66, 0.47, 0.36], [0.76, 0.57, 0.46], [0.83, 0.66, 0.56]], np.float32)
_HAIR_COLOURS = np.array([
    [0.03, 0.02, 0.02], [0.08, 0.05, 0.03], [0.20, 0.12, 0.06], [0.40, 0.26, 0.12],
    [0.62, 0.48, 0.28], [0.45, 0.18, 0.08], [0.55, 0.55, 0.55]], np.float32)
_IRIS_COLOURS = np.array([
    [0.15, 0.08, 0.04], [0.28, 0.16, 0.07], [0.20, 0.30, 0.45], [0.25, 0.35, 0.20],
    [0.35, 0.40, 0.45]], np.float32)


@dataclasses.dataclass(frozen=True)
class FeatureLayout:
  """Where the painted features sit, in texel coordinates (x = u * (S - 1), y = v * (S - 1)).

  Attributes:
    landmarks: (68, 2) float64 texel position of each iBUG point that has a vertex (the inner
      mouth corners use the vertices the contour module chose, or the lip-corner blend); the 17
      jaw points are NaN (the jaw is cued by the silhouette).
    size: S.
  """

  landmarks: np.ndarray
  size: int


def layout_from_texcoords(texcoords: np.ndarray, landmark_vertex: np.ndarray,
                          size: int = TEXTURE_SIZE) -> FeatureLayout:
  """The feature layout from the mesh's (V, 2) texcoords and (68,) landmark vertices (-1: none).

  Points without a vertex other than the jaw (the inner mouth corners, when no vertex is given)
  are placed a quarter of the way from the outer lip corner to the inner-lip midpoint.
  """
  pts = np.full((68, 2), np.nan)
  has = landmark_vertex >= 0
  pts[has] = np.asarray(texcoords, np.float64)[landmark_vertex[has]] * (size - 1)
  mid = np.nanmean(pts[[61, 62, 63, 65, 66, 67]], 0)
  for corner, outer in ((60, 48), (64, 54)):
    if np.isnan(pts[corner]).any():
      pts[corner] = 0.75 * pts[outer] + 0.25 * mid
  pts[:17] = np.nan
  return FeatureLayout(landmarks=pts, size=size)


def _poly(points) -> list[tuple[float, float]]:
  return [(float(x), float(y)) for x, y in points]


def _mask(size, draw_fn, blur: float = 0.0) -> np.ndarray:
  """A float32 (S, S) coverage mask drawn by ``draw_fn(ImageDraw)`` (supersampled 2x)."""
  big = Image.new('L', (2 * size, 2 * size), 0)
  draw_fn(ImageDraw.Draw(big), 2.0)
  img = big.resize((size, size), Image.BILINEAR)
  if blur > 0:
    img = img.filter(ImageFilter.GaussianBlur(blur))
  return np.asarray(img, np.float32) / 255.0


def _curve(points, n: int = 24) -> np.ndarray:
  """A smooth open curve through the (K, 2) points (Catmull-Rom), (n*(K-1)+1, 2)."""
  p = np.asarray(points, np.float64)
  ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
  t = np.linspace(0, 1, n, endpoint=False)[:, None]
  out = []
  for k in range(1, len(ext) - 2):
    p0, p1, p2, p3 = ext[k - 1], ext[k], ext[k + 1], ext[k + 2]
    out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                      + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
  out.append(p[-1:])
  return np.concatenate(out)


def _closed_curve(points, n: int = 16) -> np.ndarray:
  p = np.asarray(points, np.float64)
  ext = np.concatenate([p, p[:3]])
  return _curve(ext, n)[n:n * (len(p) + 1)]


_BROW_WIDTHS = (0.018, 0.024, 0.030, 0.036)   # fraction of the texture size
_LID_WIDTHS = (0.009, 0.012, 0.016)


class AlbedoPainter:
  """Feature masks of one layout, computed once, and the per-face albedo built from them.

  The masks (brows, eye outlines, eyelid lines, nostrils, alar creases, lips, the line between
  the lips, cheeks) are rasterised once per layout into an (S, S, K) stack. A face's albedo is a
  few random colours and choices (:meth:`sample`) composited over the masks looked up at the
  rendered pixels' texture coordinates (:meth:`albedo`), so the per-face cost is proportional to
  the face's pixels, not to the texture size. Irises, pupils and the hair line are evaluated
  analytically at those pixels.
  """

  def __init__(self, layout: FeatureLayout):
    self.layout = layout
    s, pts = layout.size, layout.landmarks
    masks = {}
    for name, ring in (('eye_l', pts[36:42]), ('eye_r', pts[42:48])):
      outline = _closed_curve(ring, 12)
      masks[name] = _mask(s, lambda d, k, o=outline: d.polygon(_poly(o * k), fill=255))
    lips = _closed_curve(pts[48:60], 10)
    masks['lips'] = _mask(s, lambda d, k: d.polygon(_poly(lips * k), fill=255), blur=0.8)

    def brows(width):
      def draw(d, k):
        for ring in (pts[17:22], pts[22:27]):
          c = _curve(ring, 6)
          for j in range(len(c) - 1):
            taper = 0.5 + 0.5 * np.sin(np.pi * (0.2 + 0.8 * j / (len(c) - 1)))
            d.line(_poly(c[j:j + 2] * k), fill=255,
                   width=max(1, int(round(width * s * taper * k))))
      return draw
    for i, w in enumerate(_BROW_WIDTHS):
      masks[f'brow{i}'] = _mask(s, brows(w), blur=0.7)

    def lids(width):
      def draw(d, k):
        for ring in (pts[36:42], pts[42:48]):
          d.line(_poly(_curve(ring[[0, 1, 2, 3]], 8) * k), fill=255,
                 width=max(1, int(round(width * s * k))), joint='curve')
      return draw
    for i, w in enumerate(_LID_WIDTHS):
      masks[f'lid{i}'] = _mask(s, lids(w), blur=0.4)

    def lower_lids(d, k):
      for ring in (pts[36:42], pts[42:48]):
        d.line(_poly(_curve(ring[[3, 4, 5, 0]], 8) * k), fill=255,
               width=max(1, int(round(0.006 * s * k))))
    masks['lower_lid'] = _mask(s, lower_lids, blur=0.4)

    up = pts[30] - pts[33]
    up = up / max(np.linalg.norm(up), 1e-6)

    def nostrils(d, k):
      for a, b in ((31, 32), (34, 35)):
        c = 0.35 * (pts[a] + pts[b]) + 0.3 * pts[33] + up * 0.012 * s
        half = 0.45 * np.linalg.norm(pts[b] - pts[a])
        d.ellipse([(c[0] - half) * k, (c[1] - 0.45 * half) * k, (c[0] + half) * k,
                   (c[1] + 0.45 * half) * k], fill=255)
    masks['nostrils'] = _mask(s, nostrils, blur=0.6)

    def alar(d, k):
      for side, tip in ((31, 32), (35, 34)):
        p = pts[side]
        arc = np.array([p + up * 0.04 * s, p + (p - pts[tip]) * 0.3 + up * 0.015 * s, p])
        d.line(_poly(_curve(arc, 6) * k), fill=255, width=max(1, int(0.008 * s * k)))
    masks['alar'] = _mask(s, alar, blur=0.8)

    inner_top, inner_bottom = pts[[48, 60, 61, 62, 63, 64, 54]], pts[[54, 64, 65, 66, 67, 60, 48]]

    def mouth(d, k):
      d.polygon(_poly(_closed_curve(pts[60:68], 6) * k), fill=255)
      for c in (inner_top, inner_bottom):
        d.line(_poly(_curve(c, 6) * k), fill=255, width=max(1, int(round(0.009 * s * k))))
    masks['mouth'] = _mask(s, mouth, blur=0.5)

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cheeks = np.zeros((s, s), np.float32)
    r = 0.09 * s
    for c, w in ((0.5 * (pts[31] + pts[48]) + [-0.06 * s, -0.03 * s], 1.0),
                 (0.5 * (pts[35] + pts[54]) + [0.06 * s, -0.03 * s], 1.0), (pts[30], 0.7)):
      cheeks += w * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * r ** 2))
    self.cheeks = cheeks[..., None]
    self.names = tuple(masks)
    self.index = {n: i for i, n in enumerate(self.names)}
    self.stack = np.stack([masks[n] for n in self.names], -1).astype(np.float32)
    # Texels near any feature (bilinear lookups read one texel around): only the pixels that
    # land there pay for the feature layers.
    near = self.stack.max(-1) > 0
    for axis in (0, 1):
      for shift in (-2, -1, 1, 2):
        near = near | np.roll(near, shift, axis)
    self.feature_region = near
    self.brow_top = float(np.nanmin(pts[17:27, 1])) / (s - 1)
    # Iris centres and eye widths in texture coordinates (u, v).
    self.eyes = []
    for ring in (pts[36:42], pts[42:48]):
      self.eyes.append((ring[[1, 2, 4, 5]].mean(0) / (s - 1),
                        float(np.linalg.norm(ring[3] - ring[0])) / (s - 1)))

  def sample(self, rng: np.random.Generator) -> dict:
    """Random per-face albedo parameters (colours, widths, gaze, hair line, blotches)."""
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    k = int(t)
    skin = (_SKIN_TONES[k] * (1 - (t - k))
            + _SKIN_TONES[min(k + 1, len(_SKIN_TONES) - 1)] * (t - k))
    skin = skin * rng.uniform(0.9, 1.1, 3)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.2)
    return dict(
        skin=skin.astype(np.float32),
        blotches=rng.uniform(-0.5, 0.5, (6, 6, 3)).astype(np.float32),
        grain=rng.uniform(0.0, 0.06),
        hair=hair.astype(np.float32),
        has_hair=bool(rng.uniform() < 0.85),
        hairline=rng.uniform(0.05, 0.13), hair_wave=rng.uniform(0.003, 0.02),
        hair_freq=rng.uniform(1.0, 3.0), hair_phase=rng.uniform(0, 2 * np.pi),
        brow=int(rng.integers(len(_BROW_WIDTHS))), brow_strength=rng.uniform(0.75, 0.95),
        brow_colour=(hair * rng.uniform(0.5, 1.0) if rng.uniform() < 0.75
                     else skin * 0.35).astype(np.float32),
        lid=int(rng.integers(len(_LID_WIDTHS))),
        iris=(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
              * rng.uniform(0.8, 1.2)).astype(np.float32),
        sclera=(np.array([0.80, 0.78, 0.74]) * rng.uniform(0.8, 1.0)).astype(np.float32),
        gaze=rng.uniform(-0.12, 0.12, 2) * [1.0, 0.3],
        lip=(skin * np.array([1.05, 0.62, 0.62]) * rng.uniform(0.6, 0.95)).astype(np.float32),
        lip_strength=rng.uniform(0.7, 1.0),
        cheek=rng.uniform(0.0, 0.2))

  def smooth_terms(self, params: dict, uv: np.ndarray) -> np.ndarray:
    """(N, 4) float32 the slowly varying albedo terms at N texture coordinates: skin blotches
    (RGB) and cheek redness. Smooth enough to evaluate at the mesh vertices and interpolate."""
    uv = np.asarray(uv, np.float32)
    return np.concatenate([sample_texture(params['blotches'], uv),
                           params['cheek'] * sample_texture(self.cheeks, uv)], 1)

  def albedo(self, params: dict, uv: np.ndarray, noise: np.ndarray | None = None,
             smooth: np.ndarray | None = None) -> np.ndarray:
    """The face's albedo at N texture coordinates.

    Args:
      params: from :meth:`sample`.
      uv: (N, 2) texture coordinates in [0, 1].
      noise: optional (N, 1) standard-normal values for the skin grain (omitted: no grain).
      smooth: optional (N, 4) :meth:`smooth_terms` at the same points (e.g. interpolated from
        the vertices); computed from ``uv`` when omitted.

    Returns:
      (N, 3) float32 linear reflectances in [0, 1].
    """
    uv = np.asarray(uv, np.float32)
    p = params
    skin = p['skin']
    if smooth is None:
      smooth = self.smooth_terms(params, uv)
    blot, cheek = smooth[:, :3], smooth[:, 3:]
    tex = skin * (1.0 + 0.25 * blot)
    if noise is not None:
      tex = tex * (1.0 + p['grain'] * noise)
    size = self.layout.size
    tex = _over(tex, cheek, skin * np.float32([1.15, 0.75, 0.75]))
    u, v = uv[:, 0], uv[:, 1]
    if p['has_hair']:
      line = self.brow_top - p['hairline']
      line = line + p['hair_wave'] * np.sin(u * 2 * np.pi * p['hair_freq'] + p['hair_phase'])
      line = line + 0.35 * ((u - 0.5) * 2) ** 4          # the hair comes down at the temples
      hair = np.clip((line - v) * size / 2.0 + 0.5, 0, 1).astype(np.float32)
      tex = _over(tex, hair, p['hair'] * (1 + 0.3 * blot))
    # Facial features, only where the texture has some.
    texel = np.clip(np.rint(uv * (size - 1)).astype(np.int32), 0, size - 1)
    sel = np.flatnonzero(self.feature_region[texel[:, 1], texel[:, 0]])
    if not len(sel):
      return np.clip(tex, 0.0, 1.0).astype(np.float32)
    f = tex[sel]
    uvs = uv[sel]
    m = sample_texture(self.stack, uvs)
    ix = self.index
    f = _over(f, p['brow_strength'] * m[:, ix[f'brow{p["brow"]}']], p['brow_colour'])
    us, vs = uvs[:, 0], uvs[:, 1]
    for (centre, width), name in zip(self.eyes, ('eye_l', 'eye_r')):
      c = (centre + p['gaze'] * width).astype(np.float32)
      r = np.sqrt((us - c[0]) ** 2 + (vs - c[1]) ** 2)[:, None] * size
      iris_r = np.float32(0.23 * width * size)
      iris = np.clip(iris_r - r + 0.5, 0, 1)
      pupil = np.clip(0.42 * iris_r - r + 0.5, 0, 1)
      eye = p['sclera'] * (1 - iris) + iris * p['iris'] * (0.6 + 0.4 * np.clip(r / iris_r, 0, 1))
      eye = eye * (1 - pupil) + pupil * 0.02
      f = _over(f, m[:, ix[name]], eye)
    lid_col = np.minimum(p['hair'], skin * 0.3) * 0.6
    f = _over(f, 0.9 * m[:, ix[f'lid{p["lid"]}']], lid_col)
    f = _over(f, 0.45 * m[:, ix['lower_lid']], skin * 0.45)
    f = _over(f, 0.85 * m[:, ix['nostrils']], skin * 0.12)
    f = _over(f, 0.4 * m[:, ix['alar']], skin * 0.4)
    f = _over(f, p['lip_strength'] * m[:, ix['lips']], p['lip'])
    f = _over(f, 0.9 * m[:, ix['mouth']], p['lip'] * 0.2)
    tex[sel] = f
    return np.clip(tex, 0.0, 1.0).astype(np.float32)

  def texture(self, params: dict) -> np.ndarray:
    """The whole (S, S, 3) albedo texture of a face (for pictures and tests)."""
    s = self.layout.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / (s - 1)
    uv = np.stack([xx.ravel(), yy.ravel()], -1)
    return self.albedo(params, uv).reshape(s, s, 3)


def _over(base: np.ndarray, mask: np.ndarray, colour) -> np.ndarray:
  """Paints ``colour`` over (N, 3) ``base`` with (N,) or (N, 1) coverage ``mask``."""
  mask = mask[:, None] if mask.ndim == 1 else mask
  return base + mask * (np.asarray(colour, np.float32) - base)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
  """Bilinear texture lookup.

  Args:
    texture: (S, S, C) float32.
    uv: (N, 2) texture coordinates in [0, 1].

  Returns:
    (N, C) float32.
  """
  s = texture.shape[0]
  p = np.clip(np.asarray(uv, np.float32) * (s - 1), 0, s - 1)
  i0 = np.minimum(p.astype(np.int32), s - 2)
  f = p - i0
  x0, y0 = i0[:, 0], i0[:, 1]
  fx, fy = f[:, :1], f[:, 1:]
  top = texture[y0, x0] * (1 - fx) + texture[y0, x0 + 1] * fx
  bottom = texture[y0 + 1, x0] * (1 - fx) + texture[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy
