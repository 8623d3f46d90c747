"""Synthetic annotated faces rendered from the Surrey Face Model (the project's embedded data).

A face is a random shape (63 PCA coefficients) and expression (6 blendshapes) of the Surrey Face
Model, posed with eos's scaled orthographic camera (yaw, pitch, roll in degrees with eos's sign:
yaw > 0 is a right-looking face, see ``docs/method.md``), z-buffer rasterised
(:mod:`~jaxalign.data.synthetic_raster`), painted with a procedural albedo in the model's texture
coordinates (:mod:`~jaxalign.data.synthetic_albedo`), lit by one random Lambertian light with a
weak specular term, composited over a random background with optional COFW-like occluders, then
blurred and noised (:mod:`~jaxalign.data.synthetic_scene`).

Ground truth comes from the same posed mesh through :mod:`jaxalign.morphable.contour`: the 68
points in the 2D (300-W) convention (the far-side jaw on the silhouette) for the ``.pts`` files,
and in the 3D convention (fixed vertices) for ``annotations.jsonl``. Visibility is read off the
z-buffer; occluded points are the ones under an occluder.

Face ``i`` of a data set uses its own random stream, ``SeedSequence(seed, spawn_key=(i,))``, so
the same seed gives the same bytes and shards made with different ``start`` values concatenate
to the data set a single run makes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from jaxalign.data import synthetic_albedo
from jaxalign.data import synthetic_raster
from jaxalign.data import synthetic_scene
from jaxalign.morphable import contour
from jaxalign.morphable import model as model_lib

NUM_POINTS = 68
# A 2D-convention jaw point this close to the rendered face outline (pixels) counts as seen.
OUTLINE_PIXELS = 2.0


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """What the random faces look like (everything but the seed and the indices).

  Attributes:
    size: image side in pixels (square images).
    yaw_range, pitch_range, roll_range: uniform pose ranges in degrees (eos convention).
    occlusion: probability that a face gets an occluder (0 = none).
    face_scale: range of the landmark box's longer side as a fraction of the image side.
    shape_sigma: standard deviation of the shape coefficients (in the model's standard
      deviations; values are clipped at 3).
    expression_probability: probability of a non-neutral expression.
    blur_range: Gaussian blur sigma in pixels at 128 px (scaled with the image size).
    noise_range: Gaussian noise sigma in 8-bit levels.

  Model mismatch (for experiments where a fitter of the same model must not see faces it can
  represent exactly; the defaults add none and keep the output byte-identical):
    tail_shape_sigma: standard deviation of the shape coefficients from ``tail_start`` on
      (None = ``shape_sigma``); clipped at 3 times itself instead of 3. The JAX completion
      fitted the first 30 components (``fitting.TUNED_SYNTHETIC.num_shape``; the default now
      fits all 63), so with ``tail_start=30`` a
      larger value puts shape the fitter cannot express into the faces.
    tail_start: index of the first "tail" shape component.
    deformation_mm: RMS (over the mesh) of a smooth random per-vertex displacement in model
      millimetres, outside the PCA space of every fitter (0 = none).
    deformation_scale_mm: its correlation length: the field is a sum of
      ``DEFORMATION_BUMPS`` Gaussian bumps of this width centred on random vertices.
    expression_strength: range of the total blendshape weight of a non-neutral expression
      (default (0.2, 1.0)); values above 1 leave the expressions the fitters' priors expect.
    annotation_noise: standard deviation of Gaussian noise added to the 2D ground-truth points
      (the ``.pts``), as a fraction of the landmark box's longer side (0 = exact). The 3D
      points, the visibility and the rendering are those of the exact points.
  """

  size: int = 128
  yaw_range: tuple[float, float] = (-90.0, 90.0)
  pitch_range: tuple[float, float] = (-20.0, 20.0)
  roll_range: tuple[float, float] = (-20.0, 20.0)
  occlusion: float = 0.0
  face_scale: tuple[float, float] = (0.45, 0.8)
  shape_sigma: float = 0.9
  expression_probability: float = 0.6
  blur_range: tuple[float, float] = (0.0, 1.0)
  noise_range: tuple[float, float] = (0.0, 4.0)
  tail_shape_sigma: float | None = None
  tail_start: int = 30
  deformation_mm: float = 0.0
  deformation_scale_mm: float = 40.0
  expression_strength: tuple[float, float] = (0.2, 1.0)
  annotation_noise: float = 0.0

  def __post_init__(self):
    validate_config(self)

  def to_json(self) -> dict:
    """The fields as JSON values; mismatch fields only where they differ from the default, so
    data sets made without them keep their ``synthesis.json`` bytes."""
    out = {}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in MISMATCH_FIELDS and value == f.default:
        continue
      out[f.name] = list(value) if isinstance(value, tuple) else value
    return out

  @property
  def has_mismatch(self) -> bool:
    """True when any model-mismatch option is on."""
    return any(getattr(self, f.name) != f.default for f in dataclasses.fields(self)
               if f.name in MISMATCH_FIELDS)


MISMATCH_FIELDS = ('tail_shape_sigma', 'tail_start', 'deformation_mm', 'deformation_scale_mm',
                   'expression_strength', 'annotation_noise')
# Gaussian bumps summed into the random deformation field.
DEFORMATION_BUMPS = 12


def _check_range(name, value, lo, hi):
  try:
    a, b = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be two numbers (low high), got {value!r}') from None
  if not (math.isfinite(a) and math.isfinite(b)):
    raise ValueError(f'{name} must be finite, got {value!r}')
  if a > b:
    raise ValueError(f'{name}: low {a:g} is greater than high {b:g}')
  if a < lo or b > hi:
    raise ValueError(f'{name} must lie within [{lo:g}, {hi:g}], got [{a:g}, {b:g}]')


def validate_config(config: SynthConfig) -> None:
  """Raises ValueError naming the bad field."""
  if not isinstance(config.size, (int, np.integer)) or config.size < 32:
    raise ValueError(f'size must be an integer >= 32 pixels, got {config.size!r}')
  _check_range('yaw_range', config.yaw_range, -90, 90)
  _check_range('pitch_range', config.pitch_range, -90, 90)
  _check_range('roll_range', config.roll_range, -180, 180)
  _check_range('face_scale', config.face_scale, 0.05, 0.95)
  _check_range('blur_range', config.blur_range, 0, 20)
  _check_range('noise_range', config.noise_range, 0, 100)
  for name in ('occlusion', 'expression_probability'):
    p = getattr(config, name)
    if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
      raise ValueError(f'{name} must be a probability in [0, 1], got {p!r}')
  if not (isinstance(config.shape_sigma, (int, float)) and 0 <= config.shape_sigma <= 3):
    raise ValueError(f'shape_sigma must be in [0, 3], got {config.shape_sigma!r}')
  tail = config.tail_shape_sigma
  if tail is not None and not (isinstance(tail, (int, float)) and 0 <= tail <= 10):
    raise ValueError(f'tail_shape_sigma must be None or in [0, 10], got {tail!r}')
  if (isinstance(config.tail_start, bool) or not isinstance(config.tail_start, (int, np.integer))
      or config.tail_start < 0):
    raise ValueError(f'tail_start must be an integer >= 0, got {config.tail_start!r}')
  for name, hi in (('deformation_mm', 50.0), ('annotation_noise', 0.2)):
    v = getattr(config, name)
    if not (isinstance(v, (int, float)) and 0 <= v <= hi):
      raise ValueError(f'{name} must be in [0, {hi:g}], got {v!r}')
  d = config.deformation_scale_mm
  if not (isinstance(d, (int, float)) and 1 <= d <= 500):
    raise ValueError(f'deformation_scale_mm must be in [1, 500], got {d!r}')
  _check_range('expression_strength', config.expression_strength, 0, 5)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
  """(3, 3) model-to-camera rotation of eos's (yaw, pitch, roll) in degrees.

  ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)``, the composition whose angles eos's
  ``RenderingParameters.get_yaw_pitch_roll`` reports (checked against eos in the tests).
  """
  y, p, r = np.deg2rad([yaw, pitch, roll])
  cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
  ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
  rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
  rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
  return ry @ rx @ rz


def face_rng(seed: int, index: int) -> np.random.Generator:
  """The random stream of face ``index`` of the data set ``seed`` (independent of shards)."""
  return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


@dataclasses.dataclass(frozen=True)
class FaceParams:
  """Every random choice behind one synthetic face (tests replace fields to isolate effects).

  Attributes:
    shape_coeffs: (63,) shape coefficients (standard deviations).
    expression_coeffs: (6,) blendshape weights.
    yaw, pitch, roll: degrees, eos convention.
    face_scale: landmark box's longer side / image side.
    centre: (2,) where the landmark box's centre goes, as fractions (x, y) in [0, 1] of the
      room left once the whole box (plus a 1-pixel margin) is inside the image.
    albedo: per-face parameters of :class:`~jaxalign.data.synthetic_albedo.AlbedoPainter`.
    light: (3,) unit direction toward the light in the camera frame (x right, y up, z to the
      camera).
    ambient, diffuse, specular, shininess: lighting terms (colour = albedo * (ambient +
      diffuse * max(n.l, 0)) * light_colour + specular * max(n.h, 0) ** shininess).
    light_colour: (3,) RGB gain.
    background: whether to draw a random background (False: black).
    occluders: number of occluders (0 or more).
    blur_sigma: Gaussian blur in pixels; noise_sigma: noise in 8-bit levels.
    stream: seed material for the draws made while rendering (background, grain, occluders,
      noise), so they never depend on other faces.
    deformation: (V, 3) float32 per-vertex displacement in model millimetres added to the
      mesh, or None (model mismatch, :attr:`SynthConfig.deformation_mm`).
    point_noise: (68, 2) float32 noise added to the 2D ground truth, in units of the landmark
      box's longer side, or None (:attr:`SynthConfig.annotation_noise`).
  """

  shape_coeffs: np.ndarray
  expression_coeffs: np.ndarray
  yaw: float
  pitch: float
  roll: float
  face_scale: float
  centre: np.ndarray
  albedo: dict
  light: np.ndarray
  ambient: float
  diffuse: float
  specular: float
  shininess: float
  light_colour: np.ndarray
  background: bool
  occluders: int
  blur_sigma: float
  noise_sigma: float
  stream: int
  deformation: np.ndarray | None = None
  point_noise: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SyntheticFace:
  """One rendered face and its ground truth (pixels: x right, y down, centres at integers).

  Attributes:
    image: (S, S, 3) uint8 RGB.
    points: (68, 2) float32 2D-convention (300-W) points, what the ``.pts`` file holds.
    points_3d: (68, 2) float32 3D-convention points (fixed vertices, hidden or not).
    visible: (68,) bool 2D point seen by the camera: not self-occluded and not under an
      occluder.
    visible_3d: (68,) bool the same for the 3D-convention points.
    occluded: (68,) bool 2D point under an occluder.
    box: (4,) float32 tight box (x0, y0, x1, y1) of ``points``.
    params: the :class:`FaceParams` it was rendered from.
    camera: (2, 4) float64 affine camera, image = camera @ [v, 1] (``contour`` convention).
    raster: the :class:`~jaxalign.data.synthetic_raster.Raster` of the face mesh.
  """

  image: np.ndarray
  points: np.ndarray
  points_3d: np.ndarray
  visible: np.ndarray
  visible_3d: np.ndarray
  occluded: np.ndarray
  box: np.ndarray
  params: FaceParams
  camera: np.ndarray
  raster: synthetic_raster.Raster


class Renderer:
  """Renders synthetic faces of one configuration (holds the model and precomputed layers)."""

  def __init__(self, config: SynthConfig | None = None, model=None):
    self.config = config or SynthConfig()
    self.model = model if model is not None else model_lib.load_model()
    self.geometry = contour.landmark_geometry(self.model)
    self.triangles = np.asarray(self.model.triangles, np.int64)
    layout = synthetic_albedo.layout_from_texcoords(self.model.texcoords, self.geometry.vertices)
    self.painter = _painter(layout.landmarks.tobytes(), layout.size)
    self.texcoords = np.asarray(self.model.texcoords, np.float32)
    # Float32 copy for speed: one (3V, K + E) basis for shape and expression together.
    m = self.model
    self._mean = m.mean.reshape(-1).astype(np.float32)
    self._basis = np.concatenate([m.shape_basis.reshape(-1, m.num_shape),
                                  m.expression_basis.reshape(-1, m.num_expression)],
                                 1).astype(np.float32)
    # Jaw points that can march (2D convention) take their depth from the candidate vertex.
    self._candidates = self.geometry.candidates

  # ----------------------------------------------------------------------------------- sampling
  def sample(self, seed: int, index: int) -> FaceParams:
    """The random choices of face ``index`` of data set ``seed``."""
    c = self.config
    rng = face_rng(seed, index)
    z = rng.standard_normal(self.model.num_shape)
    shape = np.clip(z * c.shape_sigma, -3, 3)
    if c.tail_shape_sigma is not None:
      t = c.tail_start
      limit = 3.0 * max(1.0, c.tail_shape_sigma)
      shape[t:] = np.clip(z[t:] * c.tail_shape_sigma, -limit, limit)
    expr = np.zeros(self.model.num_expression)
    if rng.uniform() < c.expression_probability:
      weights = rng.dirichlet(np.full(self.model.num_expression, 0.4))
      expr = weights * rng.uniform(*c.expression_strength)
    yaw = rng.uniform(*c.yaw_range)
    pitch = rng.uniform(*c.pitch_range)
    roll = rng.uniform(*c.roll_range)
    scale = rng.uniform(*c.face_scale)
    centre = rng.uniform(0, 1, 2)
    albedo = self.painter.sample(rng)
    az, el = np.deg2rad(rng.uniform(-70, 70)), np.deg2rad(rng.uniform(-30, 60))
    light = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    ambient = rng.uniform(0.25, 0.6)
    blur_scale = c.size / 128.0
    params = FaceParams(
        shape_coeffs=shape.astype(np.float32), expression_coeffs=expr.astype(np.float32),
        yaw=float(yaw), pitch=float(pitch), roll=float(roll), face_scale=float(scale),
        centre=centre, albedo=albedo, light=light, ambient=float(ambient),
        diffuse=float(rng.uniform(0.6, 1.1) * (1 - 0.5 * ambient)),
        specular=float(rng.uniform(0.0, 0.2)), shininess=float(rng.uniform(6, 30)),
        light_colour=(1.0 + rng.uniform(-0.12, 0.12, 3)) * rng.uniform(0.8, 1.3),
        background=True, occluders=int(rng.uniform() < c.occlusion) * int(rng.integers(1, 3)),
        blur_sigma=float(rng.uniform(*c.blur_range) * blur_scale),
        noise_sigma=float(rng.uniform(*c.noise_range)),
        stream=int(rng.integers(2 ** 63)))
    # The mismatch draws come after every other draw, so they leave the rest of the face as
    # it is without them.
    fields = {}
    if c.deformation_mm > 0:
      fields['deformation'] = self.random_deformation(rng, c.deformation_mm,
                                                      c.deformation_scale_mm)
    if c.annotation_noise > 0:
      fields['point_noise'] = (rng.standard_normal((NUM_POINTS, 2))
                               * c.annotation_noise).astype(np.float32)
    return dataclasses.replace(params, **fields) if fields else params

  def random_deformation(self, rng: np.random.Generator, rms_mm: float,
                         scale_mm: float) -> np.ndarray:
    """(V, 3) float32 smooth random displacement with RMS ``rms_mm`` over the vertices.

    A sum of :data:`DEFORMATION_BUMPS` Gaussian bumps (width ``scale_mm``, centred on random
    vertices of the mean face, each pushing along a random 3D direction), scaled to the RMS.
    """
    mean = self.model.mean.reshape(-1, 3).astype(np.float64)
    centres = mean[rng.integers(len(mean), size=DEFORMATION_BUMPS)]
    vectors = rng.standard_normal((DEFORMATION_BUMPS, 3))
    d2 = ((mean[:, None, :] - centres[None]) ** 2).sum(-1)
    field = np.einsum('vk,kj->vj', np.exp(-0.5 * d2 / scale_mm ** 2), vectors)
    rms = np.sqrt((field ** 2).sum(-1).mean())
    return (field * (rms_mm / max(rms, 1e-12))).astype(np.float32)

  # ---------------------------------------------------------------------------------- rendering
  def camera(self, params: FaceParams, vertices: np.ndarray) -> np.ndarray:
    """(2, 4) affine camera placing the face's landmark box as the params ask."""
    size = self.config.size
    rot = rotation_matrix(params.yaw, params.pitch, params.roll)
    unit = np.concatenate([np.stack([rot[0], -rot[1]]), np.zeros((2, 1))], 1)
    pts = contour.ibug_points(vertices.astype(np.float64), unit, self.model, '2d')
    lo, hi = pts.min(0), pts.max(0)
    scale = params.face_scale * size / max(float((hi - lo).max()), 1e-6)
    half = 0.5 * (hi - lo) * scale
    margin = 1.0
    room_lo, room_hi = half + margin, size - 1 - half - margin
    centre = room_lo + np.clip(params.centre, 0, 1) * np.maximum(room_hi - room_lo, 0)
    offset = centre - 0.5 * (lo + hi) * scale
    return np.concatenate([unit[:, :3] * scale, offset[:, None]], 1)

  def render(self, params: FaceParams,
             albedo: Callable[[np.ndarray], np.ndarray] | None = None) -> SyntheticFace:
    """Renders a face.

    Args:
      params: from :meth:`sample` (or edited).
      albedo: optional replacement for the painted albedo, ``(N, 2) uv -> (N, 3)`` linear RGB.
    """
    size = self.config.size
    rng = np.random.default_rng(np.random.SeedSequence(params.stream))
    model = self.model
    vertices = self.vertices(params)
    cam = self.camera(params, vertices)
    rot = rotation_matrix(params.yaw, params.pitch, params.roll)
    scale = float(np.linalg.norm(cam[0, :3]))
    xy = contour.project(vertices, cam)
    depth = scale * np.einsum('vk,k->v', vertices, rot[2])
    raster = synthetic_raster.rasterize(xy, depth, self.triangles, size, size,
                                        cull_back_faces=False)
    normals = np.einsum('vk,jk->vj', self._normals(vertices), rot)
    # Texture coordinates, normals and the albedo's smooth terms, interpolated in one pass.
    attrs = [self.texcoords, normals.astype(np.float32)]
    if albedo is None:
      attrs.append(self.painter.smooth_terms(params.albedo, self.texcoords))
    covered = np.flatnonzero(raster.mask.reshape(-1))
    interp = synthetic_raster.interpolate(raster, self.triangles, np.concatenate(attrs, 1))
    uv, n = interp[:, :2], interp[:, 2:5]
    n = n / np.sqrt(np.maximum(np.einsum('nk,nk->n', n, n), 1e-12))[:, None]
    n = np.where(n[:, 2:] < 0, -n, n)              # two-sided: folds seen from behind
    if albedo is None:
      grain = rng.standard_normal((len(covered), 1), np.float32)
      colour = self.painter.albedo(params.albedo, uv, grain, smooth=interp[:, 5:])
    else:
      colour = np.asarray(albedo(uv), np.float32).reshape(-1, 3)
    light = np.asarray(params.light, np.float32)
    half_vec = light + np.float32([0, 0, 1])
    half_vec = half_vec / max(np.linalg.norm(half_vec), 1e-6)
    lambert = np.maximum(np.einsum('nk,k->n', n, light), 0)[:, None]
    spec = np.maximum(np.einsum('nk,k->n', n, half_vec.astype(np.float32)), 0)[:, None]
    spec = spec ** params.shininess
    lc = np.asarray(params.light_colour, np.float32)
    shaded = colour * (params.ambient + params.diffuse * lambert) * lc + params.specular * spec * lc
    if params.background:
      image = synthetic_scene.background(rng, size)
    else:
      image = np.zeros((size, size, 3), np.float32)
    image.reshape(-1, 3)[covered] = shaded

    points = contour.ibug_points(vertices, cam, model, '2d').astype(np.float32)
    points_3d = contour.ibug_points(vertices, cam, model, '3d').astype(np.float32)
    if albedo is None:
      self._paint_mouth(image, raster.mask, points_3d, params, rng)
    # 2D convention: the jaw points (0-16) follow the face outline. The mesh border curls back
    # under the jaw, so its vertices sit a little behind the outline they project onto: a jaw
    # point within OUTLINE_PIXELS of the rendered outline counts as seen (as a 300-W annotator
    # sees it); deeper inside the face it is seen only when nothing is in front (the far side's
    # silhouette hidden behind the nose under large yaw is not).
    jaw = self.geometry.jaw_points
    both = self._visible(xy, depth, np.concatenate([points_3d, points[jaw]]),
                         np.concatenate([depth[self.geometry.vertices],
                                         self._depth_2d(xy, depth, points)[jaw]]), scale)
    vis_3d = both[:NUM_POINTS]
    vis_2d = vis_3d.copy()
    vis_2d[jaw] = both[NUM_POINTS:]
    vis_2d[:17] |= _outline_distance(raster.mask, points[:17]) <= OUTLINE_PIXELS

    occ_mask = np.zeros((size, size), np.float32)
    box = np.concatenate([points.min(0), points.max(0)]).astype(np.float32)
    for _ in range(params.occluders):
      # COFW-like: an occluder hides part of the face, not all of it (at most 60 % of the
      # points together with the ones before; a few tries, then none).
      for _ in range(5):
        mask, occ_colour = synthetic_scene.occluder(rng, size, box)
        if (_sample_mask(np.maximum(occ_mask, mask), points) >= 0.5).mean() <= 0.6:
          image = image * (1 - mask[..., None]) + mask[..., None] * occ_colour
          occ_mask = np.maximum(occ_mask, mask)
          break
    occluded = _sample_mask(occ_mask, points) >= 0.5
    occluded_3d = _sample_mask(occ_mask, points_3d) >= 0.5
    final = synthetic_scene.finish(image, rng, params.blur_sigma, params.noise_sigma)
    if params.point_noise is not None:
      # Annotation noise: the annotator's points, not the mesh's (the box follows them).
      points = (points + params.point_noise * np.float32(params.face_scale * size)).astype(
          np.float32)
      box = np.concatenate([points.min(0), points.max(0)]).astype(np.float32)
    return SyntheticFace(
        image=final, points=points, points_3d=points_3d, visible=vis_2d & ~occluded,
        visible_3d=vis_3d & ~occluded_3d, occluded=occluded, box=box, params=params,
        camera=cam, raster=raster)

  def vertices(self, params: FaceParams) -> np.ndarray:
    """(V, 3) float64 model-frame mesh of the params' shape and expression."""
    coeffs = np.concatenate([params.shape_coeffs, params.expression_coeffs]).astype(np.float32)
    # einsum, not BLAS: OpenBLAS's threads slow a shared machine's workers down tenfold.
    flat = self._mean + np.einsum('ij,j->i', self._basis, coeffs)
    if params.deformation is not None:
      flat = flat + np.asarray(params.deformation, np.float32).reshape(-1)
    return flat.reshape(-1, 3).astype(np.float64)

  def _normals(self, vertices: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals (outward, as ``contour.vertex_normals``)."""
    t = self.triangles
    v0, v1, v2 = vertices[t[:, 0]], vertices[t[:, 1]], vertices[t[:, 2]]
    fn = np.cross(v1 - v0, v2 - v0)
    corner = t.T.reshape(-1)                   # every triangle's face normal to its 3 vertices
    n = np.stack([np.bincount(corner, np.tile(fn[:, k], 3), len(vertices)) for k in range(3)], 1)
    return n / np.sqrt(np.maximum(np.einsum('vk,vk->v', n, n), 1e-24))[:, None]

  def face(self, seed: int, index: int) -> SyntheticFace:
    """Face ``index`` of the data set ``seed``."""
    return self.render(self.sample(seed, index))

  @staticmethod
  def _paint_mouth(image, mask, points, params, rng) -> None:
    """Fills the mesh's mouth hole (seen when an expression opens the lips): a dark cavity
    inside the inner-lip outline 60-67, often with the upper teeth under the upper lip."""
    inner = points[60:68].astype(np.float64)
    upper = inner[[0, 1, 2, 3, 4]]
    lower = inner[[0, 7, 6, 5, 4]]
    if np.abs(upper - lower).max() < 0.75:
      return
    # Draw in the (2x supersampled) box around the lips only.
    h, w = mask.shape
    x0, y0 = np.maximum(np.floor(inner.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(inner.max(0)).astype(int) + 2, [w, h])
    if x1 <= x0 or y1 <= y0:
      return
    sup = 2
    origin = np.array([x0, y0], np.float64)

    def coverage(polygon):
      canvas = Image.new('L', ((x1 - x0) * sup, (y1 - y0) * sup), 0)
      ImageDraw.Draw(canvas).polygon(
          [(float(x), float(y)) for x, y in (polygon - origin + 0.5) * sup - 0.5], fill=255)
      return np.asarray(canvas.resize((x1 - x0, y1 - y0), Image.BILINEAR), np.float32) / 255

    cavity = coverage(inner)
    teeth_edge = upper + rng.uniform(0.25, 0.5) * (lower - upper)
    if rng.uniform() < 0.7:
      teeth = coverage(np.concatenate([upper, teeth_edge[::-1]]))
    else:
      teeth = np.zeros_like(cavity)
    hole = (~mask[y0:y1, x0:x1]).astype(np.float32)
    lit = params.ambient + params.diffuse * max(float(params.light[2]), 0.0)
    colour = (np.float32([0.12, 0.03, 0.03]) * (1 - teeth[..., None])
              + np.float32([0.75, 0.72, 0.64]) * teeth[..., None]) * lit
    cover = (cavity * hole)[..., None]
    patch = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = patch * (1 - cover) + cover * colour * np.asarray(
        params.light_colour, np.float32)

  # ------------------------------------------------------------------------------- ground truth
  def _depth_2d(self, xy, depth, points) -> np.ndarray:
    """(68,) depth of each 2D-convention point: its fixed vertex's, or for a marched jaw point
    the slice candidate it moved to (found by position: the candidate projecting onto it)."""
    d = depth[self.geometry.vertices].astype(np.float64)
    for k, p in enumerate(self.geometry.jaw_points):
      cand = self._candidates[k]
      j = np.argmin(((xy[cand] - points[p]) ** 2).sum(1))
      d[p] = depth[cand[j]]
    return d

  def _visible(self, xy, depth, points, point_depth, scale,
               tolerance_mm: float = 0.5) -> np.ndarray:
    """(L,) bool: no triangle of the mesh lies in front of the point (exact ray cast).

    A triangle hides a point when the point's pixel position is inside the triangle's
    projection and the triangle's depth there exceeds the point's by more than
    ``tolerance_mm`` (model millimetres; the triangles around the point's own vertex meet it
    at exactly its depth). Candidate pairs come from the triangles' bounding boxes, so the cost
    is a few (L, T) comparisons. Checked against the z-buffer in the tests.
    """
    t = self.triangles
    xs, ys = xy[:, 0][t], xy[:, 1][t]
    px, py = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    # Pairs whose x ranges overlap first (one (L, T) pass), then the y test on those only.
    x_lo = np.minimum(np.minimum(xs[:, 0], xs[:, 1]), xs[:, 2])
    x_hi = np.maximum(np.maximum(xs[:, 0], xs[:, 1]), xs[:, 2])
    pi, ti = np.nonzero((px[:, None] >= x_lo) & (px[:, None] <= x_hi))
    y_lo = np.minimum(np.minimum(ys[ti, 0], ys[ti, 1]), ys[ti, 2])
    y_hi = np.maximum(np.maximum(ys[ti, 0], ys[ti, 1]), ys[ti, 2])
    keep = (py[pi] >= y_lo) & (py[pi] <= y_hi)
    pi, ti = pi[keep], ti[keep]
    x, y = px[pi], py[pi]
    x0, x1, x2 = xs[ti, 0], xs[ti, 1], xs[ti, 2]
    y0, y1, y2 = ys[ti, 0], ys[ti, 1], ys[ti, 2]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    ok = np.abs(area) > 1e-12
    area = np.where(ok, area, 1.0)
    w0 = ((x1 - x) * (y2 - y) - (x2 - x) * (y1 - y)) / area
    w1 = ((x2 - x) * (y0 - y) - (x0 - x) * (y2 - y)) / area
    w2 = 1.0 - w0 - w1
    inside = ok & (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    z = w0 * depth[t[ti, 0]] + w1 * depth[t[ti, 1]] + w2 * depth[t[ti, 2]]
    front = inside & (z > point_depth[pi] + tolerance_mm * scale)
    hidden = np.zeros(len(points), bool)
    hidden[pi[front]] = True
    return ~hidden


def _outline_distance(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
  """(L,) distance in pixels from each point to the nearest outline pixel of ``mask`` (a mask
  pixel with a 4-neighbour outside it; the image border counts as outside)."""
  pad = np.pad(mask, 1)
  inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
  ys, xs = np.nonzero(mask & ~inner)
  if not len(xs):
    return np.full(len(points), np.inf)
  d2 = (xs[None] - points[:, :1]) ** 2 + (ys[None] - points[:, 1:2]) ** 2
  return np.sqrt(d2.min(1))


def _sample_mask(mask, points) -> np.ndarray:
  """(L,) mask value at the pixel nearest each point (0 outside the image)."""
  h, w = mask.shape
  x = np.round(points[:, 0]).astype(int)
  y = np.round(points[:, 1]).astype(int)
  ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
  out = np.zeros(len(points), np.float32)
  out[ok] = mask[y[ok], x[ok]]
  return out


@functools.lru_cache(maxsize=4)
def _painter(key: bytes, size: int) -> synthetic_albedo.AlbedoPainter:
  layout = synthetic_albedo.FeatureLayout(np.frombuffer(key).reshape(NUM_POINTS, 2).copy(), size)
  return synthetic_albedo.AlbedoPainter(layout)
