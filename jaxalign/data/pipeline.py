"""The training and inference input pipeline: host decode + crop (grain), device augmentation.

Host side (numpy, in grain worker processes, one per core by default): decode the image, crop a
square around the face box with room for augmentation (``crop_context``) and resample it to a
fixed size with one affine map (``crop_from_image``); landmarks follow the same map. Output per
example: ``image`` uint8 (S, S, 3), ``points`` float32 (L, 2) crop pixels, ``box`` float32 (4,)
the network-input square in crop pixels, ``crop_from_image`` float32 (2, 3), ``index`` int32.

Device side (jnp, inside the jitted step): one affine matrix per example maps the crop to the
network input (:func:`input_matrices`: the box jittered by translation and scale, rotated about
its centre) and goes through :func:`jaxalign.transforms.warp_images`, the project's one warp
primitive; points go through the same matrix. Gaussian blur with probability ``blur_prob``; a
horizontal mirror (one more affine map, points permuted by the scheme) with ``mirror_prob``.
Randomness: per-example keys ``fold_in(fold_in(root, step), i)``. The appearance augmentation
(photometric changes, an occluder: :func:`appearance_augment`) is drawn on the host crop instead,
per example from ``(seed, step, slot)``, so that the step reads uint8 crops as without it.

Photos: a JPEG is decoded at the smallest DCT scale (PIL's draft mode: 1/2, 1/4 or 1/8) that
still gives the crop's resolution (:func:`decode_photo`); the crop's matrix accounts for the
scale, so ``crop_from_image`` and the points stay in the photo's pixels. With a crop cache
(``CropSpec.cache_dir``, :mod:`jaxalign.data.crop_cache`) each face's crop is read from it
instead of decoding the photo: the same example, decoded once.

Batches: :class:`TrainBatches` maps step -> batch through the pose-balanced sampler, so the
iterator is resumable from the step alone. An image that cannot be decoded is replaced by a
deterministic stand-in from the same pose bin, with a warning; the batch's ``num_skipped``
counts it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import NamedTuple, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxalign import schemes
from jaxalign import transforms
from jaxalign.data.records import FaceRecord

_MAX_REPLACEMENTS = 16
_APPEARANCE_STREAM = 4      # the appearance draws' own stream of the run's seed


@dataclasses.dataclass(frozen=True)
class CropSpec:
  """Host crop geometry.

  Attributes:
    input_size: network input side in pixels (CNN1's).
    box_margin: the network input covers the box's longer side times ``1 + box_margin``.
    crop_context: the host crop covers the network-input square times this factor.
    host_scale: host-crop pixels per network-input pixel. Above 1 the host crop keeps more
      resolution than CNN1's input, so that CNN2 (which zooms in on the stable points) samples
      the face once, from the host crop, at its own resolution; CNN1 gets an antialiased
      downscale.
    jpeg_draft: decode JPEGs at the smallest DCT scale that keeps the crop's resolution.
    cache_dir: the decode-once crop cache's folder ('' = decode the photos); where the crops
      are read from, not what they are (not part of the cache's key).
  """

  input_size: int
  box_margin: float = 0.1
  crop_context: float = 1.3
  host_scale: float = 1.0
  jpeg_draft: bool = True
  cache_dir: str = ''

  @property
  def crop_size(self) -> int:
    return int(round(self.input_size * self.crop_context * self.host_scale))

  @classmethod
  def from_config(cls, config) -> 'CropSpec':
    cache = config.data.crop_cache
    return cls(int(config.model.input_size), float(config.data.box_margin),
               float(config.data.crop_context), host_scale(config),
               bool(config.data.jpeg_draft), str(cache.dir) if cache.enabled else '')


# CNN2 frames the stable points tighter than CNN1 frames the whole face: about this much more
# resolution is needed on the host for CNN2 not to upsample (see docs/method.md).
CNN2_ZOOM = 1.5


def host_scale(config) -> float:
  """``config.data.host_scale``, or when 0 (auto): 1 for the plain model, and for the
  pose-aware model ``CNN2_ZOOM * cnn2_input_size / input_size`` (at least 1)."""
  value = float(config.data.host_scale or 0.0)
  if value > 0:
    return value
  if config.model.kind != 'pose_aware':
    return 1.0
  size = int(config.model.input_size)
  size2 = int(config.model.cnn2_input_size or size)
  return max(1.0, CNN2_ZOOM * size2 / size)


def input_square(box, box_margin: float) -> tuple[np.ndarray, float]:
  """Centre (2,) and side of the network-input square around a (4,) box (x0, y0, x1, y1)."""
  box = np.asarray(box, np.float64)
  center = 0.5 * (box[:2] + box[2:])
  side = float(max(box[2] - box[0], box[3] - box[1])) * (1.0 + box_margin)
  return center, side


def host_crop_matrix(box, spec: CropSpec) -> np.ndarray:
  """(2, 3) float64 map from image pixels to host-crop pixels (pixel centres at integers).

  The host region is the network-input square scaled by ``crop_context``; its outer pixel
  edges map to the crop's outer pixel edges (-0.5 and S - 0.5).
  """
  center, side = input_square(box, spec.box_margin)
  region = side * spec.crop_context
  if not np.isfinite(region) or region <= 0:
    raise ValueError(f'degenerate face box {np.asarray(box).tolist()}')
  k = spec.crop_size / region
  origin = center - region / 2
  return np.array([[k, 0, -k * origin[0] - 0.5], [0, k, -k * origin[1] - 0.5]], np.float64)


def crop_box(spec: CropSpec) -> np.ndarray:
  """(4,) the network-input square in host-crop pixels, with the slice semantics of
  :func:`jaxalign.transforms.crop_matrix` (pixel edges at x0 - 0.5 and x1 - 0.5)."""
  s = spec.crop_size
  half = s / spec.crop_context / 2
  return np.array([s / 2 - half, s / 2 - half, s / 2 + half, s / 2 + half], np.float32)


def decode_image(path) -> np.ndarray:
  """(H, W, 3) uint8 RGB of an image file at full size; ``ValueError`` naming the file if
  unreadable.

  An (H, W, 3) uint8 array (an image the caller already decoded, as ``predict`` does so that
  each photo is decoded once) is returned as it is.
  """
  return decode_photo(path)[0]


# libjpeg's DCT-domain downscales (PIL's Image.draft).
DRAFT_FACTORS = (8, 4, 2)


def draft_factor(resolution: float) -> int:
  """The JPEG draft factor :func:`decode_photo` decodes at for ``resolution`` (decoded pixels
  per photo pixel): the largest of :data:`DRAFT_FACTORS` f with f * resolution <= 1, else 1."""
  return next((f for f in DRAFT_FACTORS if f * resolution <= 1.0), 1)


class DecodedPhoto(NamedTuple):
  """A photo already decoded (:func:`decode_photo`'s result), as a record's ``image``: the
  faces of one photo share one decode (``predict``) and their crops account for its factor
  exactly as when :func:`load_example` decodes the file itself."""

  image: np.ndarray
  factor: int
  photo_hw: tuple[int, int]


def decode_photo(path, resolution: float = 1.0) -> DecodedPhoto:
  """Decodes an image file at the smallest JPEG draft scale that keeps ``resolution``.

  Args:
    path: an image file, an (H, W, 3) uint8 array (returned as it is, factor 1), or a
      :class:`DecodedPhoto` (returned as it is, whatever ``resolution``).
    resolution: decoded pixels needed per photo pixel (1: full size). A JPEG is decoded at
      1/f of its size, f the largest of 8, 4, 2 with 1/f >= ``resolution`` (PIL draft mode:
      the IDCT averages each f x f block, so it also antialiases); other formats at full size.

  Returns:
    (image (ceil(H / f), ceil(W / f), 3) uint8 RGB, f, (H, W) the photo's size). Decoded pixel (i, j) covers photo pixels
    [f i, f i + f) x [f j, f j + f): photo pixel centre x maps to ``(x + 0.5) / f - 0.5``
    (:func:`photo_from_draft` is the inverse map).

  Raises:
    ValueError: naming the file, if it cannot be decoded.
  """
  if isinstance(path, DecodedPhoto):
    return path
  if isinstance(path, np.ndarray):
    if path.ndim != 3 or path.shape[-1] != 3 or path.dtype != np.uint8:
      raise ValueError(f'image array of shape {path.shape} and dtype {path.dtype}: expected '
                       '(H, W, 3) uint8')
    return DecodedPhoto(path, 1, path.shape[:2])
  try:
    with Image.open(path) as im:
      factor, (w, h) = 1, im.size
      if im.format == 'JPEG' and resolution < 1.0:
        want = draft_factor(resolution)
        if want > 1:
          im.draft('RGB', (-(-w // want), -(-h // want)))
          factor = int(round(w / im.size[0]))
      im.load()
      return DecodedPhoto(np.asarray(im.convert('RGB')), factor, (h, w))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f'{path}: cannot decode image ({e})') from None


def photo_from_draft(factor: int) -> np.ndarray:
  """(2, 3) float64 map from the pixels of a 1/``factor`` draft decode to the photo's pixels
  (pixel centres at integers: draft pixel i covers photo pixels f i .. f i + f - 1)."""
  f, t = float(factor), (factor - 1) / 2.0
  return np.array([[f, 0, t], [0, f, t]], np.float64)


def load_example(record: FaceRecord, spec: CropSpec) -> dict[str, np.ndarray]:
  """Decodes and crops one record (host side). Raises ``ValueError`` if it is unusable.

  ``crop_from_image`` maps the photo's own pixels (not the draft decode's) to the crop, and
  ``image_hw`` is the photo's size, whatever scale the JPEG was decoded at.
  """
  matrix = host_crop_matrix(record.box, spec)
  resolution = float(np.abs(matrix[0, 0])) if spec.jpeg_draft else 1.0
  image, factor, photo_hw = decode_photo(record.image, resolution)
  # The crop samples the draft decode: photo -> crop composed with draft -> photo.
  to_crop = matrix if factor == 1 else \
      (np.vstack([matrix, [0, 0, 1]]) @ np.vstack([photo_from_draft(factor), [0, 0, 1]]))[:2]
  crop = transforms.warp_image_host(image, to_crop, spec.crop_size)
  points = np.asarray(record.points, np.float64)
  if points.ndim != 2 or points.shape[1] != 2:
    raise ValueError(f'{record.image}: landmarks have shape {points.shape}, expected (L, 2)')
  points = points @ matrix[:, :2].T + matrix[:, 2]
  return {
      'image': crop,
      'points': points.astype(np.float32),
      'box': crop_box(spec),
      'crop_from_image': matrix.astype(np.float32),
      'image_hw': np.array(photo_hw, np.int32),
  }


class Crops:
  """index -> the host example of ``records[index]``: from the crop cache where it holds the
  face, else cropped from the photo (:func:`load_example`). Picklable (grain map functions).

  A cache record that turns out damaged at read time (its stored key is not the face's) is
  reported once and the face is read from its photo from then on.
  """

  def __init__(self, records, spec: CropSpec, cache=None):
    self.records = list(records)
    self.spec = spec
    self.cache = cache
    self.positions, self.keys = cache.locate(self.records) if cache is not None else (None, None)

  @property
  def num_cached(self) -> int:
    return 0 if self.positions is None else int((self.positions >= 0).sum())

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    if self.positions is not None and self.positions[index] >= 0:
      from jaxalign.data import crop_cache  # pylint: disable=g-import-not-at-top
      try:
        return self.cache.read(self.positions[index], self.keys[index])
      except crop_cache.CacheError as e:
        logging.warning('%s; reading %s instead', e, self.records[index].image)
        self.positions[index] = -1
    return load_example(self.records[index], self.spec)


def open_cache(spec: CropSpec):
  """The crop cache of ``spec.cache_dir`` as it is (None without one): evaluation reads the
  faces it holds and crops the others from their photos."""
  if not spec.cache_dir:
    return None
  from jaxalign.data import crop_cache  # pylint: disable=g-import-not-at-top
  return crop_cache.CropCache(spec.cache_dir, spec)


def _collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class TrainBatches:
  """step -> this process's share of the global training batch (a grain map function).

  Picklable, so grain worker processes each hold a copy. ``records`` are the training faces,
  ``sampler`` a :class:`jaxalign.data.sampling.BalancedSampler`. ``appearance``
  (:func:`appearance_on`) draws :func:`appearance_augment` on each crop, from a generator seeded
  by ``(seed, step, slot in the global batch)``: a batch depends on its step alone.
  """

  def __init__(self, records, sampler, spec: CropSpec, process_index: int = 0,
               process_count: int = 1, cache=None, appearance: dict | None = None,
               seed: int = 0):
    self.records = list(records)
    self.crops = Crops(self.records, spec, cache)
    self.sampler = sampler
    self.spec = spec
    self.process_index = process_index
    self.process_count = process_count
    self.appearance = appearance
    self.seed = int(seed)
    self._bad: set[int] = set()

  def __call__(self, step) -> dict[str, np.ndarray]:
    step = int(step)
    indices = self.sampler.batch_indices(step)
    local = len(indices) // self.process_count
    indices = indices[self.process_index * local:(self.process_index + 1) * local]
    examples, skipped = [], 0
    for index in indices:
      index = int(index)
      replaced = False
      for attempt in range(_MAX_REPLACEMENTS + 1):
        if index not in self._bad:
          try:
            example = self.crops(index)
            break
          except ValueError as e:
            # Warn once per file and per worker; the batch counts every replaced slot.
            self._bad.add(index)
            logging.warning('skipping %s (step %d): %s', self.records[index].image, step, e)
        replaced = True
        index = self.sampler.replacement(index, attempt)
      else:
        raise RuntimeError(f'step {step}: {_MAX_REPLACEMENTS} unreadable images in a row; '
                           'is the data folder readable?')
      skipped += replaced
      example['index'] = np.int32(index)
      if self.appearance is not None:
        slot = self.process_index * local + len(examples)
        rng = np.random.default_rng((self.seed, _APPEARANCE_STREAM, step, slot))
        example = dict(example, image=appearance_augment(example['image'], example['box'], rng,
                                                         self.appearance))
      examples.append(example)
    batch = _collate(examples)
    batch['step'] = np.int64(step)
    batch['num_skipped'] = np.int32(skipped)
    return batch


def num_workers(config) -> int:
  """Worker processes for grain: ``data.num_workers``, -1 meaning one per CPU core."""
  n = int(config.data.num_workers)
  return (os.cpu_count() or 1) if n < 0 else n


def train_iterator(records, sampler, config, start_step: int, num_steps: int):
  """A grain iterator over batches of steps ``start_step .. num_steps - 1`` (host numpy).

  Resuming is starting from another ``start_step``: batch ``t`` does not depend on where the
  iterator started. With ``data.crop_cache.enabled`` the crops come from the decode-once cache
  (:mod:`jaxalign.data.crop_cache`), built on the first run when ``data.crop_cache.build``, else
  refused if it lacks a face (:class:`jaxalign.data.crop_cache.CacheError`).
  """
  spec = CropSpec.from_config(config)
  cache = None
  if spec.cache_dir:
    from jaxalign.data import crop_cache  # pylint: disable=g-import-not-at-top
    cache = crop_cache.ensure(records, spec, build_missing=bool(config.data.crop_cache.build))
  fn = TrainBatches(records, sampler, spec, jax.process_index(), jax.process_count(), cache,
                    appearance=appearance_on(config), seed=sampler.seed)
  ds = grain.MapDataset.range(start_step, num_steps).map(fn)
  workers = num_workers(config)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, min(4, workers or 1)),
                                            prefetch_buffer_size=max(2, config.data.prefetch)))
  if workers > 0:
    _absl_flags_ready()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=config.data.prefetch))
  return iter(it)


def _absl_flags_ready() -> None:
  """grain's worker processes read absl flags; outside an absl app they are unparsed."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class EvalExamples:
  """index -> one cropped example of ``records``, unreadable images flagged (grain map fn)."""

  def __init__(self, records, spec: CropSpec, cache=None):
    self.records = list(records)
    self.crops = Crops(self.records, spec, cache)
    self.spec = spec

  def __call__(self, index) -> dict[str, np.ndarray]:
    index = int(index)
    record = self.records[index]
    try:
      example = self.crops(index)
      example['valid'] = np.bool_(True)
    except ValueError as e:
      logging.warning('skipping %s: %s', record.image, e)
      s = self.spec.crop_size
      num_points = np.asarray(record.points).shape[0]
      example = {'image': np.zeros((s, s, 3), np.uint8),
                 'points': np.zeros((num_points, 2), np.float32), 'box': crop_box(self.spec),
                 'crop_from_image': np.eye(2, 3, dtype=np.float32),
                 'image_hw': np.array([s, s], np.int32), 'valid': np.bool_(False)}
    example['index'] = np.int32(index)
    return example


def eval_batches(records, spec: CropSpec, batch_size: int, workers: int = 0):
  """Yields fixed-size host batches over ``records`` in order; the last one is padded and its
  padding has ``valid`` False and ``index`` -1. Faces the crop cache of ``spec.cache_dir``
  holds are read from it; the others are cropped from their photos."""
  n = len(records)
  cache = open_cache(spec)
  ds = grain.MapDataset.range(n).map(EvalExamples(records, spec, cache))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, workers), prefetch_buffer_size=8))
  if workers > 0:
    _absl_flags_ready()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  buf = []
  for example in it:
    buf.append(example)
    if len(buf) == batch_size:
      yield _collate(buf)
      buf = []
  if buf:
    pad = dict(buf[-1], valid=np.bool_(False), index=np.int32(-1))
    yield _collate(buf + [pad] * (batch_size - len(buf)))


# ---------------------------------------------------------------------------------------------
# Device side.


def input_matrices(boxes, input_size: int, key=None, rotation_deg: float = 0.0,
                   translation: float = 0.0, scale: float = 0.0) -> jax.Array:
  """(B, 2, 3) maps from crop pixels to network-input pixels.

  Without ``key``: the box square itself. With ``key`` (one per example, (B,) keys): the box
  centre moved by ``U(-translation, translation)`` box sides in x and y, its side scaled by
  ``1 + U(-scale, scale)``, and the view rotated by ``U(-rotation_deg, rotation_deg)`` about
  the moved centre.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  if key is None:
    return transforms.crop_matrix(boxes, input_size)
  center = 0.5 * (boxes[:, :2] + boxes[:, 2:])
  side = jnp.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])

  def draw(k):
    k1, k2, k3 = jax.random.split(k, 3)
    angle = jax.random.uniform(k1, (), minval=-1.0, maxval=1.0) * jnp.deg2rad(rotation_deg)
    shift = jax.random.uniform(k2, (2,), minval=-1.0, maxval=1.0) * translation
    factor = 1.0 + jax.random.uniform(k3, (), minval=-1.0, maxval=1.0) * scale
    return angle, shift, factor

  angle, shift, factor = jax.vmap(draw)(key)
  new_center = center + shift * side[:, None]
  half = 0.5 * side * factor
  new_boxes = jnp.concatenate([new_center - half[:, None], new_center + half[:, None]], -1)
  rotate = transforms.similarity_matrix(angle, jnp.ones_like(angle), new_center)
  return transforms.compose(rotate, transforms.crop_matrix(new_boxes, input_size))


def gaussian_blur(images, sigma, radius: int | None = None) -> jax.Array:
  """Blurs (B, H, W, C) float images with per-example sigma (B,) pixels (0 = unchanged).

  With ``radius`` (static, taps on each side; enough for the largest sigma, about 3 sigma):
  separable per-example Gaussian kernels, edges replicated, each pass a weighted sum of
  ``2 radius + 1`` shifted slices; the cost grows with the radius, not with the image side.
  Without: exact, as two batched products with row-normalised Gaussian band matrices (border
  renormalised), whose cost grows with the side.
  """
  images = jnp.asarray(images, jnp.float32)
  b, h, w, c = images.shape
  sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)
  if radius is None:
    def band(n):
      d = jnp.arange(n, dtype=jnp.float32)
      d = d[:, None] - d[None, :]
      k = jnp.exp(-0.5 * (d[None] / sigma[:, None, None]) ** 2)
      return k / jnp.sum(k, axis=-1, keepdims=True)

    out = jnp.einsum('bij,bjwc->biwc', band(h), images)
    return jnp.einsum('bkw,biwc->bikc', band(w), out)
  r = int(radius)
  taps = jnp.arange(-r, r + 1, dtype=jnp.float32)
  k = jnp.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
  k = k / jnp.sum(k, axis=-1, keepdims=True)                    # (B, 2r + 1)
  # Shifted slices, not a depthwise convolution: XLA's CPU backend ran the per-example
  # depthwise convolution (batch folded into the channels) about 50x slower than these
  # elementwise multiply-adds, and it was half of the training step (docs/benchmarks.md). The
  # sums over the 2r + 1 static taps unroll at trace time (no loop runs on the device); one
  # gather of all windows and an einsum instead measured 6x slower. The padded arrays are
  # materialised (the barriers): fused into its consumers, each edge-padding concatenation was
  # re-evaluated per tap, element by element, and the blur took 1.7 times as long
  # (docs/benchmarks.md).
  x = jax.lax.optimization_barrier(jnp.pad(images, ((0, 0), (r, r), (0, 0), (0, 0)), mode='edge'))
  x = sum(k[:, t, None, None, None] * x[:, t:t + h] for t in range(2 * r + 1))
  x = jax.lax.optimization_barrier(jnp.pad(x, ((0, 0), (0, 0), (r, r), (0, 0)), mode='edge'))
  return sum(k[:, t, None, None, None] * x[:, :, t:t + w] for t in range(2 * r + 1))


def blur_radius(config) -> int:
  """Static tap radius for :func:`prepare_views`' blurs: 3 sigma of the largest blur it draws
  (augmentation blur and antialiasing prefilter together, in host-crop pixels)."""
  size = int(config.model.input_size)
  scale = host_scale(config) * (1.0 + float(config.augment.scale))
  aug = float(config.augment.blur_sigma[1]) * size / 224.0 * scale if config.augment.enabled \
      else 0.0
  alias = 0.5 * np.sqrt(max(scale ** 2 - 1.0, 0.0))
  return max(1, int(np.ceil(3.0 * np.hypot(aug, alias))))


def eval_jitter(config) -> tuple[float, float, float]:
  """``config.eval.box_jitter`` as (rotation_deg, translation, scale); zeros: the boxes as
  given."""
  j = config.eval.box_jitter
  return float(j.rotation_deg), float(j.shift), float(j.scale)


def without_box_jitter(config):
  """A copy of ``config`` whose ``eval.box_jitter`` magnitudes are zero: for boxes that must
  not be disturbed again (a detector's, a box file's, a second pass around the network's own
  points). ``config`` itself is not changed."""
  config = config.copy_and_resolve_references()
  config.eval.box_jitter.shift = config.eval.box_jitter.scale = 0.0
  config.eval.box_jitter.rotation_deg = 0.0
  return config


def jitter_keys(config, index) -> jax.Array:
  """(B,) per-face keys of the evaluation box jitter: ``fold_in(PRNGKey(eval.box_jitter.seed),
  record index)``, so a face's jitter depends only on its index in the test set."""
  root = jax.random.PRNGKey(int(config.eval.box_jitter.seed))
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.maximum(jnp.asarray(index), 0))


def prepare_views(batch, config, key=None, eval_index=None) -> dict:
  """Device half of the pipeline: crop -> network input (+ augmentation when ``key`` is given).

  Args:
    batch: dict with ``image`` (B, S, S, 3) uint8 host crops, ``points`` (B, L, 2) crop pixels,
      ``box`` (B, 4) crop pixels.
    config: the training config (``model.input_size``, ``augment.*``, ``eval.box_jitter``).
    key: None for evaluation; otherwise a PRNG key for this step (per-example keys are folded
      from it).
    eval_index: (B,) record indices for evaluation: the deterministic per-face box jitter of
      ``config.eval.box_jitter`` (none when its magnitudes are zero).

  Returns:
    dict with ``images`` (B, n, n, 3) float32 0..255 (CNN1's input; the models normalise),
    ``points`` (B, L, 2) input pixels, ``matrices`` (B, 2, 3) crop -> input, ``source``
    (B, S, S, 3) float32: the host crop itself (blurred like ``images`` when the augmentation
    blurs), which CNN2 samples through ``matrices`` composed with its own transform, and, when
    ``augment.cnn2_*`` ask for it in training, ``cnn2_jitter`` (B, 2, 3): CNN2's extra
    augmentation, a map within its canonical frame applied after the spatial transform, and
    with ``augment.mirror_prob`` > 0 in training ``mirrored`` (B,) bool: the faces mirrored.
  """
  size = int(config.model.input_size)
  aug = config.augment
  b = batch['image'].shape[0]
  keys = None
  if key is not None and aug.enabled:
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
    geometry_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    matrices = input_matrices(batch['box'], size, geometry_keys, aug.rotation_deg,
                              aug.translation, aug.scale)
    mirror = jnp.zeros((b,), bool)
    if float(aug.mirror_prob) > 0:
      mirror = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 2))
                        < aug.mirror_prob)(keys)
      # The mirror is one more affine map after the crop: both views (CNN1's input and the
      # host crop CNN2 samples through ``matrices``) see the mirrored face.
      flipped = transforms.compose(matrices, transforms.hflip_matrix(float(size)))
      matrices = jnp.where(mirror[:, None, None], flipped, matrices)
  elif key is None and eval_index is not None and any(eval_jitter(config)):
    rotation, shift, scale = eval_jitter(config)
    matrices = input_matrices(batch['box'], size, jitter_keys(config, eval_index), rotation,
                              shift, scale)
  else:
    matrices = input_matrices(batch['box'], size)
  # The appearance augmentation, if any, is already in the host crop (TrainBatches).
  source = jnp.asarray(batch['image'], jnp.float32)
  # Input pixels per crop pixel (< 1 when the host crop has more resolution than the input).
  density = jnp.sqrt(jnp.abs(jnp.linalg.det(matrices[:, :, :2])))
  sigma_aa = 0.5 * jnp.sqrt(jnp.maximum(1.0 / density ** 2 - 1.0, 0.0))   # crop pixels
  blur_sigma = jnp.zeros((b,), jnp.float32)    # extra blur, input pixels
  if keys is not None and aug.blur_prob > 0:
    lo, hi = aug.blur_sigma
    scale = size / 224.0

    def blur_params(k):
      k1, k2 = jax.random.split(jax.random.fold_in(k, 1))
      on = jax.random.uniform(k1) < aug.blur_prob
      s = jax.random.uniform(k2, minval=lo, maxval=hi) * scale
      return jnp.where(on, s, 0.0)

    blur_sigma = jax.vmap(blur_params)(keys)
  # The augmentation blur (in crop pixels) goes on the host crop, so that both views see it;
  # CNN1's downscale adds the antialiasing prefilter (Gaussians compose: sigmas add in squares).
  radius = blur_radius(config)
  aug_sigma = blur_sigma / density
  low = source
  if keys is not None and aug.blur_prob > 0:
    blurred = gaussian_blur(source, aug_sigma, radius)
    source = jnp.where((aug_sigma > 0)[:, None, None, None], blurred, source)
  if float(host_scale(config)) > 1.0:
    total = jnp.sqrt(aug_sigma ** 2 + sigma_aa ** 2)
    low = jnp.where((total > 0.05)[:, None, None, None], gaussian_blur(low, total, radius), low)
  else:
    low = source
  images = transforms.warp_images(low, matrices, (size, size))
  points = transforms.warp_points(jnp.asarray(batch['points'], jnp.float32), matrices)
  if keys is not None and float(aug.mirror_prob) > 0:
    # A mirrored face's point i is the original's point flip_permutation[i].
    perm = jnp.asarray(schemes.get_scheme(config.model.scheme).flip_index_array())
    points = jnp.where(mirror[:, None, None], jnp.take(points, perm, axis=1), points)
  views = {'images': images, 'points': points, 'matrices': matrices, 'source': source}
  if keys is not None and float(aug.mirror_prob) > 0:
    views['mirrored'] = mirror
  if (keys is not None and config.model.kind == 'pose_aware'
      and any(cnn2_jitter_ranges(config))):     # a plain network has no CNN2
    rotation, translation, scale = cnn2_jitter_ranges(config)
    side = int(config.model.cnn2_input_size or size)
    frame = jnp.broadcast_to(jnp.asarray([0.0, 0.0, side, side], jnp.float32), (b, 4))
    cnn2_keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys)
    views['cnn2_jitter'] = input_matrices(frame, side, cnn2_keys, rotation, translation, scale)
  return views


def appearance_ranges(aug) -> dict:
  """The appearance augmentation's settings, with the defaults of runs that predate them (off)."""
  return {'brightness': float(aug.get('brightness', 0.0)),
          'contrast': float(aug.get('contrast', 0.0)),
          'grey_prob': float(aug.get('grey_prob', 0.0)),
          'occlusion_prob': float(aug.get('occlusion_prob', 0.0)),
          'occlusion_size': tuple(float(v) for v in aug.get('occlusion_size', (0.1, 0.4)))}


def appearance_augment(image: np.ndarray, box, rng: np.random.Generator, ranges: dict
                       ) -> np.ndarray:
  """Photometric changes and a random occluding rectangle on one host crop (beyond the paper).

  Host side (numpy, in the decode workers): the crop reaches the step as uint8 like any other,
  so the augmentation costs the step nothing (drawn inside the step it made it about 30 %
  slower: docs/benchmarks.md), and both views (CNN1's input, CNN2's resampling) see it.

  Args:
    image: (S, S, 3) uint8 host crop.
    box: (4,) the face's input square in crop pixels (x0, y0, x1, y1): the occluder is sized
      and placed relative to it.
    rng: this example's generator (:class:`TrainBatches` seeds it from the run's seed, the step
      and the example's slot in the global batch).
    ranges: :func:`appearance_ranges`: ``brightness`` b (gain 1 + U(-b, b)), ``contrast`` c
      (deviation from the crop's mean grey scaled by 1 + U(-c, c)), ``grey_prob`` (RGB replaced
      by its luminance), ``occlusion_prob`` (one axis-aligned rectangle with sides U(lo, hi) of
      the box side, ``occlusion_size`` = (lo, hi), centred uniformly in the box, filled with a
      uniform random colour).

  Returns:
    (S, S, 3) uint8, rounded to the nearest level.
  """
  # Every draw is made whatever the settings, so one setting does not change another's draws.
  gain = 1.0 + rng.uniform(-1.0, 1.0) * ranges['brightness']
  contrast = 1.0 + rng.uniform(-1.0, 1.0) * ranges['contrast']
  grey = rng.uniform() < ranges['grey_prob']
  occlude = rng.uniform() < ranges['occlusion_prob']
  lo, hi = ranges['occlusion_size']
  box = np.asarray(box, np.float64)
  side = box[2] - box[0]
  centre = box[:2] + rng.uniform(size=2) * side
  half = 0.5 * rng.uniform(lo, hi, size=2) * side
  colour = rng.uniform(0.0, 255.0, size=3)

  out = image.astype(np.float32)
  if grey or ranges['contrast'] > 0:
    y = out @ np.asarray([0.299, 0.587, 0.114], np.float32)   # ITU-R BT.601, as PIL's 'L'
  if grey:
    out = np.repeat(y[..., None], 3, axis=-1)   # a grey crop's luma is the same (weights sum to 1)
  if ranges['contrast'] > 0:
    mean = np.float32(y.mean())
    out = mean + (out - mean) * np.float32(contrast)
  out = out * np.float32(gain)
  if occlude:
    # Pixel centres at integer coordinates (the warp's convention).
    x0, y0 = np.ceil(centre - half).astype(int)
    x1, y1 = np.floor(centre + half).astype(int)
    h, w = image.shape[:2]
    out[max(y0, 0):max(min(y1 + 1, h), 0), max(x0, 0):max(min(x1 + 1, w), 0)] = colour
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def appearance_on(config) -> dict | None:
  """:func:`appearance_ranges` when training draws the appearance augmentation, else None."""
  r = appearance_ranges(config.augment)
  if not config.augment.enabled or not any(
      (r['brightness'], r['contrast'], r['grey_prob'], r['occlusion_prob'])):
    return None
  return r


def cnn2_jitter_ranges(config) -> tuple[float, float, float]:
  """``augment.cnn2_{rotation_deg,translation,scale}`` (zeros when absent: older runs)."""
  aug = config.augment
  return tuple(float(aug.get(k, 0.0)) for k in
               ('cnn2_rotation_deg', 'cnn2_translation', 'cnn2_scale'))


def prepare_batch(batch, config, key=None):
  """:func:`prepare_views` as ``(images, points, matrices)`` (CNN1's view only)."""
  views = prepare_views(batch, config, key)
  return views['images'], views['points'], views['matrices']


# ----------------------------------------------------------------------------- input frames

def input_from_image_matrices(records, spec: CropSpec) -> np.ndarray:
  """(N, 2, 3) maps from each record's image pixels to its network input (no augmentation)."""
  host = np.stack([host_crop_matrix(r.box, spec) for r in records]).astype(np.float32)
  crop = transforms.crop_matrix(jnp.asarray(crop_box(spec)), spec.input_size)
  return np.asarray(transforms.compose(host, crop[None]), np.float32)


def points_in_input(records, spec: CropSpec) -> np.ndarray:
  """(N, L, 2) the records' landmarks in network-input pixels."""
  pts = np.stack([np.asarray(r.points, np.float32) for r in records])
  return np.asarray(transforms.warp_points(pts, input_from_image_matrices(records, spec)))


def shape_in_boxes(shape, records, spec: CropSpec) -> np.ndarray:
  """(N, L, 2) an (L, 2) input-pixel shape (e.g. the training mean shape) placed in each
  record's box, in image pixels: the trivial baseline's prediction."""
  inv = transforms.invert(input_from_image_matrices(records, spec))
  return np.asarray(transforms.warp_points(jnp.asarray(shape)[None], inv))
