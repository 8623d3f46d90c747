"""The one inference path: a run's checkpoint -> landmarks in image pixels.

Used by the end-of-run evaluation, ``python -m jaxalign.evaluate``, ``python -m jaxalign.predict``
and the benchmarks, so that all of them compute the same points::

  model, config, step = load_run('runs/default')
  res = run_pipeline(model, config, records)
  res['points']     # (N, L, 2) image pixels: the full pipeline
  res['cnn_points'] # (N, L, 2) the CNNs alone: CNN2's stable points, CNN1's other points
  res['rough']      # (N, L, 2) CNN1's points (== points for 'plain')
  res['stable']     # (N, L, 2) CNN2's stable points, NaN elsewhere ('pose_aware'; else all NaN)
  res['flipped']    # (N,) bool: the face was mirrored (left-looking) before CNN2
  res['boxes']      # (N, 4) the face boxes used (x0, y0, x1, y1), image pixels
  res['valid']      # (N,) bool: False where the image could not be decoded (points NaN)

Pipeline per face: crop around the box exactly as in training (:mod:`jaxalign.data.pipeline`,
no augmentation) -> CNN1 -> spatial transform -> CNN2 -> inverse crop -> 3DMM completion of the
unstable points (:func:`complete_points`).

The one fallback (documented in ``docs/architecture.md``): where the completion cannot run at
all (switched off, or a scheme other than iBUG-68), every face keeps the CNNs' points
(``cnn_points``) and ``completion_error`` says why; where the fit of one face fails (non-finite
or flagged by the backend), that face's unstable points are CNN1's and it is counted in
``num_fallbacks``.

Layering: this module sits above :mod:`jaxalign.training` (model construction, checkpoints) and
:mod:`jaxalign.morphable`, and below :mod:`jaxalign.evaluation` and :mod:`jaxalign.prediction`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxalign import schemes as schemes_lib
from jaxalign import transforms
from jaxalign.data import pipeline
from jaxalign.data import records as records_lib
from jaxalign.training import config as config_lib
from jaxalign.training import runs

log = logging.getLogger('jaxalign.inference')

# 'none': the CNNs' points (no completion); 'gaussian': the 2D statistical completion.
BACKENDS = ('jax', 'eos', 'gaussian', 'none')

load_config = config_lib.load_run_config
save_config = config_lib.save_run_config


def load_run(workdir: str, step: int | None = None):
  """Loads a run's model from its latest (or given) checkpoint.

  Returns:
    (model, config, step): the ``nnx.Module`` in inference mode (BatchNorm running averages),
    the run's resolved ``ConfigDict``, and the checkpoint's step.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
  """
  return runs.restore_model(workdir, step)


def resolve_backend(config, completion: str | None = None) -> str:
  """The completion backend: ``completion``, else the run's (``config.eval.completion_backend``,
  or 'none' when ``config.eval.completion`` is off).

  Raises:
    ValueError: an unknown backend name.
  """
  if completion is None:
    completion = (config.eval.get('completion_backend', 'jax') or 'jax') \
        if config.eval.get('completion', True) else 'none'
  if completion not in BACKENDS:
    raise ValueError(f'unknown completion backend {completion!r}; expected one of {BACKENDS}')
  return completion


def merge_stable(stable: np.ndarray, other: np.ndarray) -> np.ndarray:
  """CNN2's stable points where it has them (not NaN), ``other`` elsewhere. (..., L, 2)."""
  return np.where(np.isnan(stable), other, stable).astype(np.float32)


# ------------------------------------------------------------------------------- the CNN pair

def _outside_fraction(matrix, size, image_hw):
  """(B,) fraction of a (size x size) view's pixel centres that ``matrix`` (view <- image,
  (B, 2, 3)) maps outside the source image of (B, 2) (height, width)."""
  g = jnp.arange(size, dtype=jnp.float32)
  grid = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
  src = transforms.warp_points(jnp.broadcast_to(grid, (matrix.shape[0],) + grid.shape),
                               transforms.invert(matrix))
  h, w = image_hw[:, 0:1].astype(jnp.float32), image_hw[:, 1:2].astype(jnp.float32)
  inside = ((src[..., 0] >= -0.5) & (src[..., 0] <= w - 0.5) & (src[..., 1] >= -0.5)
            & (src[..., 1] <= h - 0.5))
  return 1.0 - jnp.mean(inside.astype(jnp.float32), -1)


@functools.partial(jax.jit, static_argnames=('graphdef', 'config_json'))
def _predict_batch(graphdef, params, config_json, batch):
  """One batch: CNN1 (and CNN2) points in image pixels, the flip, and the fraction of CNN2's
  input that falls outside the photo (0 for the plain model)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  model = nnx.merge(graphdef, params)
  views = pipeline.prepare_views(batch, config, None, eval_index=batch['index'])
  to_image = transforms.invert(transforms.compose(batch['crop_from_image'], views['matrices']))
  if config.model.kind == 'plain':
    rough = model(views['images'])['points']
    b = rough.shape[0]
    return (transforms.warp_points(rough, to_image), None, jnp.zeros(b, bool),
            jnp.zeros(b, jnp.float32))
  out = model(views['images'], source=views['source'], source_to_input=views['matrices'])
  image_to_view = transforms.compose(batch['crop_from_image'], views['matrices'], out['matrix'])
  outside = _outside_fraction(image_to_view, model.cnn2_image_size, batch['image_hw'])
  return (transforms.warp_points(out['rough'], to_image),
          transforms.warp_points(out['sl_points'], to_image), out['flipped'], outside)


def predict_records(model, config, records, batch_size: int = 64, num_workers: int = 0) -> dict:
  """The CNNs' landmarks of ``records`` (:class:`jaxalign.data.records.FaceRecord` list).

  Args:
    model: from :func:`load_run` (inference mode).
    config: the run's config.
    records: faces with ``image`` (a path, or an (H, W, 3) uint8 array already decoded) and
      ``box``; ``points`` may be anything of shape (L, 2).
    batch_size: images per forward pass (the last batch is padded, so one compilation).
    num_workers: grain worker processes for decoding (0 = in this process).

  Returns:
    dict of numpy arrays ``rough``, ``stable``, ``cnn_points``, ``flipped``, ``boxes``,
    ``valid`` (see the module docstring) and ``cnn2_outside`` (N,): the fraction of CNN2's
    input pixels that fall outside the photo (black; 0 for the plain model).
  """
  n = len(records)
  num_points = config_lib.model_scheme(config).num_points
  spec = pipeline.CropSpec.from_config(config)
  model.eval()
  graphdef, params = nnx.split(model)
  config_json = config.to_json(sort_keys=True)
  rough = np.full((n, num_points, 2), np.nan, np.float32)
  stable = np.full((n, num_points, 2), np.nan, np.float32)
  flipped = np.zeros(n, bool)
  valid = np.zeros(n, bool)
  outside = np.full(n, np.nan, np.float32)
  for batch in pipeline.eval_batches(records, spec, batch_size, num_workers):
    dev = {k: jnp.asarray(batch[k]) for k in ('image', 'points', 'box', 'crop_from_image',
                                              'index', 'image_hw')}
    r, s, f, o = _predict_batch(graphdef, params, config_json, dev)
    keep = batch['index'] >= 0
    idx = batch['index'][keep]
    rough[idx] = np.asarray(r)[keep]
    if s is not None:
      stable[idx] = np.asarray(s)[keep]
    flipped[idx] = np.asarray(f)[keep]
    outside[idx] = np.asarray(o)[keep]
    valid[idx] = batch['valid'][keep]
  rough[~valid] = np.nan
  stable[~valid] = np.nan
  boxes = np.stack([np.asarray(r.box, np.float32) for r in records]) if n else \
      np.zeros((0, 4), np.float32)
  return {'rough': rough, 'stable': stable, 'cnn_points': merge_stable(stable, rough),
          'flipped': flipped, 'boxes': boxes, 'valid': valid, 'cnn2_outside': outside}


# ------------------------------------------------------------------------------- completion

def complete_points(points, scheme, backend: str, flip=None, train_dir: str | None = None,
                    convention: str = '2d', **kwargs):
  """The unstable points of faces from their stable points, by ``backend``.

  'jax' / 'eos': :func:`jaxalign.morphable.completion.complete` (the 3DMM, ``convention`` '2d'
  or '3d'); 'gaussian': the 2D statistical completion
  (:func:`jaxalign.morphable.statistical.complete`) fitted on the training folder
  ``train_dir``.

  Raises:
    ValueError: 'gaussian' without a training folder, or an unknown backend.
  """
  if backend == 'gaussian':
    from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
    if not train_dir:
      raise ValueError("the 'gaussian' completion is fitted on the run's training shapes, but "
                       'config.data.train_dir is empty')
    model = _gaussian_model(str(train_dir), schemes_lib.get_scheme(scheme))
    return statistical.complete(points, model, scheme=scheme, flip=flip)
  if backend not in ('jax', 'eos'):
    raise ValueError(f'unknown completion backend {backend!r}; expected jax, eos or gaussian')
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  return completion.complete(points, scheme=scheme, backend=backend, flip=flip,
                             convention=convention, **kwargs)


def _gaussian_model(folder: str, scheme):
  """The 2D Gaussian shape model of a training folder's shapes (fitted once per folder).

  Raises:
    FileNotFoundError: no such folder; ValueError: no usable face in it.
  """
  from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'training folder {folder} does not exist')

  def load_shapes():
    recs, _ = records_lib.scan_folder(folder, num_points=scheme.num_points)
    if not recs:
      raise ValueError(f'training folder {folder} holds no usable image + .pts pair')
    return np.stack([np.asarray(r.points, np.float64) for r in recs])

  return statistical.cached_fit(os.path.realpath(folder), load_shapes, scheme)


def cnn1_yaw(rough) -> np.ndarray:
  """(N,) degrees: the rigid-fit yaw of CNN1's points, which picks each face's |yaw| bin and
  frame in the fusion and mix tables (the truth is unknown at test time)."""
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  return np.asarray(pose.estimate_pose(rough)[..., 0], np.float64)


def fusion_inputs(rough, fusion: dict | None, yaw=None) -> dict:
  """The fusion keywords of :func:`jaxalign.morphable.completion.complete` for CNN1's points
  ``rough`` (N, L, 2): ``observed`` = CNN1's points, ``weights`` from the held-out residual table
  ``fusion`` (``{'rms': (B, L), 'bins': (B + 1,)}``, :func:`fusion_table`) at each face's |yaw|
  bin, the yaw (``yaw``, default :func:`cnn1_yaw`) being the rigid fit of CNN1's own points."""
  if not fusion:
    return {}
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  yaw = cnn1_yaw(rough) if yaw is None else yaw
  weights = completion.fusion_weights(np.asarray(fusion['rms'], np.float64), yaw,
                                      bins=tuple(fusion['bins']))
  return {'observed': rough, 'weights': np.nan_to_num(weights, nan=0.0)}


FUSION_FILE = 'cnn1_residuals.json'


def fusion_table(workdir) -> dict | None:
  """The held-out residual table of CNN1 a run saved at the end of training
  (``WORKDIR/cnn1_residuals.json``: ``rms`` (B, L) per |yaw| bin and point, inter-ocular units,
  ``bins``, ``num_faces``), or None."""
  path = os.path.join(str(workdir), FUSION_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8') as f:
    table = json.load(f)
  table['rms'] = np.asarray(table['rms'], np.float64)
  return table


def run_fusion(config, workdir) -> dict | None:
  """The run's fusion table when its config asks for the fused completion
  (``eval.completion_fusion``) and it has one (:func:`fusion_table`); None otherwise, with a
  warning when the table is missing."""
  if not config.eval.get('completion_fusion', False) or workdir is None:
    return None
  table = fusion_table(workdir)
  if table is None:
    log.warning('eval.completion_fusion is on but %s has no %s (train with validation faces: '
                'data.val_dir, data.synthetic.num_val or data.holdout_fraction); completing '
                'without fusion',
                workdir, FUSION_FILE)
  return table


def _apply_blend(blend: dict, completed, rough, yaw, backend: str, fused: bool,
                 convention: str):
  """``completed`` (N, L, 2) mixed with CNN1's ``rough`` by the table ``blend``
  (:func:`run_blend`), or None, with a warning, when the table was estimated for another
  completion. ``yaw``: :func:`cnn1_yaw` of ``rough``."""
  made_for = (blend.get('backend'), bool(blend.get('fused')), blend.get('convention'))
  if made_for != (backend, fused, convention):
    log.warning('the blend table was estimated for completion %s (backend, fused, convention), '
                'not for the %s that ran; the completion is not mixed with CNN1', made_for,
                (backend, fused, convention))
    return None
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  return completion.blend_points(completed, rough, np.asarray(blend['alpha'], np.float64), yaw,
                                 bins=tuple(blend['bins']))


def run_blend(config, workdir) -> dict | None:
  """The run's completion/CNN1 mix (``blend`` of :func:`fusion_table`: ``alpha`` (B, L), the
  ``backend``, ``fused`` and ``convention`` it was estimated for) when its config asks for it
  (``eval.completion_blend``); None otherwise, with a warning when it is missing."""
  if not config.eval.get('completion_blend', False) or workdir is None:
    return None
  table = fusion_table(workdir)
  blend = None if table is None else table.get('blend')
  if blend is None:
    log.warning('eval.completion_blend is on but %s has no blend table in %s (train with '
                'validation faces: data.val_dir, data.synthetic.num_val or '
                'data.holdout_fraction); the completion is not mixed with CNN1', workdir, FUSION_FILE)
    return None
  return dict(blend, bins=table['bins'])


def run_pipeline(model, config, records, completion: str | None = None,
                 batch_size: int | None = None, convention: str | None = None,
                 fusion: dict | None = None, blend: dict | None = None) -> dict[str, Any]:
  """The full pipeline on records: the CNN pair, then the completion of the unstable points.

  Args:
    model, config: from :func:`load_run` (or a trainer's model in inference mode).
    records: the faces (see :func:`predict_records`).
    completion: backend ('jax', 'eos', 'gaussian' or 'none'); None: the run's
      (:func:`resolve_backend`).
    batch_size: images per forward pass (default ``config.eval.batch_size``).
    convention: the 3DMM jaw convention, '2d' or '3d' (default
      ``config.eval.completion_convention``).
    fusion: CNN1's held-out residual table (:func:`fusion_table`): with the 'jax' backend the
      fit also takes CNN1's unstable points, weighted by it (beyond the paper). The unfused
      completion is then returned too, as ``points_unfused``.
    blend: :func:`run_blend`'s table: each unstable point of the completion is then mixed
      with CNN1's, ``alpha c + (1 - alpha) o`` at the face's |yaw| bin (beyond the paper), when
      the table was estimated for the completion that ran (its backend, fusion and convention;
      else a warning and no mix). The unmixed points are returned as ``points_unblended``.

  Returns:
    :func:`predict_records`'s dict plus ``points`` (the final landmarks), ``yaw``/``pitch``/
    ``roll`` (N,) degrees of the 3DMM fit (NaN where not fitted), ``shape_coeffs`` /
    ``expression_coeffs`` ((N, K) / (N, E) or None), ``backend`` (the completion that ran, or
    None), ``completion_error`` (why it could not run, or None), ``num_fallbacks`` and
    ``timings``.
  """
  backend = resolve_backend(config, completion)
  convention = convention or str(config.eval.get('completion_convention', '2d') or '2d')
  scheme = config_lib.model_scheme(config)
  plain = config.model.kind == 'plain'
  n = len(records)
  batch_size = int(batch_size or config.eval.get('batch_size', 32))
  t0 = time.perf_counter()
  out = predict_records(model, config, records, batch_size=batch_size)
  t1 = time.perf_counter()
  valid = out['valid']
  points = out['cnn_points'].copy()
  yaw = np.full(n, np.nan)
  pitch, roll = yaw.copy(), yaw.copy()
  shape_coeffs = expression_coeffs = None
  num_fallbacks = 0
  error = None
  ran = None
  points_unfused = None     # the completion without fusion, when fused
  points_unblended = None   # the completion before the mix with CNN1, when mixed
  # The 3DMM reads iBUG-68 points. The plain model is fitted for its yaw only (a 3DMM gives
  # one where the annotations have none); the pose-aware model's stable points are completed.
  fit_backend = ('jax' if backend in ('gaussian', 'none') else backend) if plain else backend
  if scheme.name != schemes_lib.IBUG68.name:
    if not plain and backend != 'none':
      error = (f'no 3DMM completion for the {scheme.name} scheme (the completion reads '
               'iBUG-68 points); unstable points from CNN1')
      log.warning('%s', error)
  elif valid.any() and fit_backend != 'none':
    sel = np.flatnonzero(valid)
    fit_input = out['rough'] if plain else out['stable']
    fuse = fusion if (fusion and not plain and fit_backend == 'jax') else None

    def fit(**extra):
      return complete_points(
          fit_input[sel], scheme, fit_backend, flip=None if plain else out['flipped'][sel],
          train_dir=config.data.get('train_dir') or None, convention=convention, **extra)

    yaw_cnn1 = cnn1_yaw(out['rough'][sel]) if (fuse or blend is not None) else None
    result = fit(**fusion_inputs(out['rough'][sel], fuse, yaw_cnn1))
    if fuse:
      unfused = merge_stable(out['stable'][sel], np.asarray(fit().points, np.float32))
      points_unfused = points.copy()
      points_unfused[sel] = np.where(np.isfinite(unfused), unfused, out['rough'][sel])
    for name, arr in (('yaw', yaw), ('pitch', pitch), ('roll', roll)):
      value = getattr(result, name, None)
      if value is not None:
        arr[sel] = np.asarray(value, np.float64)
    k = getattr(result, 'shape_coeffs', None)
    e = getattr(result, 'expression_coeffs', None)
    if k is not None and e is not None:
      k, e = np.asarray(k), np.asarray(e)
      shape_coeffs = np.full((n, k.shape[-1]), np.nan, np.float32)
      expression_coeffs = np.full((n, e.shape[-1]), np.nan, np.float32)
      shape_coeffs[sel], expression_coeffs[sel] = k, e
    if not plain:
      ran = backend
      stable = out['stable'][sel]
      filled = merge_stable(stable, np.asarray(result.points, np.float32))
      ok = np.asarray(getattr(result, 'ok', np.ones(len(sel), bool)), bool)
      bad = ~np.isfinite(filled).all(-1) | (~ok[:, None] & np.isnan(stable).any(-1))
      num_fallbacks = int(bad.any(-1).sum())
      if num_fallbacks:
        log.warning('completion failed on %d faces; their unstable points are CNN1\'s',
                    num_fallbacks)
      points[sel] = np.where(bad[..., None], out['rough'][sel], filled)
      mixed = None if blend is None else _apply_blend(
          blend, points[sel], out['rough'][sel], yaw_cnn1, backend, fuse is not None,
          convention)
      if mixed is not None:
        points_unblended = points.copy()
        points[sel] = mixed
  t2 = time.perf_counter()
  return dict(out, points=points, points_unfused=points_unfused,
              points_unblended=points_unblended, yaw=yaw, pitch=pitch, roll=roll,
              shape_coeffs=shape_coeffs, expression_coeffs=expression_coeffs, num_fallbacks=num_fallbacks, backend=ran,
              completion_error=error,
              timings={'cnn_s': t1 - t0, 'completion_s': t2 - t1, 'pipeline_s': t2 - t0,
                       'faces_per_s': n / (t2 - t0) if t2 > t0 and n else None})
