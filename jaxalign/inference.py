"""The one inference path: a run's checkpoint -> landmarks in image pixels.

Used by the end-of-run evaluation, ``python -m jaxalign.evaluate``, ``python -m jaxalign.predict``
and the benchmarks, so that all of them compute the same points::

  run = Run.load('runs/default')          # config merged onto base_config(); no optimiser
  res = run_pipeline(run.model, run.config, records, run.completion())
  res['points']     # (N, L, 2) image pixels: the full pipeline
  res['cnn_points'] # (N, L, 2) the CNNs alone: CNN2's stable points, CNN1's other points
  res['rough']      # (N, L, 2) CNN1's points (== points for 'plain')
  res['stable']     # (N, L, 2) CNN2's stable points, NaN elsewhere ('pose_aware'; else all NaN)
  res['flipped']    # (N,) bool: the face was mirrored (left-looking) before CNN2
  res['boxes']      # (N, 4) the face boxes used (x0, y0, x1, y1), image pixels
  res['valid']      # (N,) bool: False where the image could not be decoded (points NaN)

Pipeline per face: crop around the box exactly as in training (:mod:`jaxalign.data.pipeline`,
no augmentation) -> CNN1 -> spatial transform -> CNN2 -> inverse crop [-> with
``config.eval.recrop``, the same again on a crop around these points, the two passes averaged:
:func:`predict_with_recrop`] -> completion of the
unstable points as the run's :class:`Completion` says (its backend and convention, and the
tables calibrated on held-out faces at the end of training, :mod:`jaxalign.calibration`).

The one fallback (:func:`fill_unstable`, documented in ``docs/architecture.md``): where the
completion cannot run at all (switched off, or a scheme other than iBUG-68), every face keeps
the CNNs' points (``cnn_points``) and ``completion_error`` says why; where the fit of one face
fails (flagged by the backend) its unstable points are CNN1's, and so is any point the
completion left non-finite; such faces are counted in ``num_fallbacks``.

Layering: this module sits above :mod:`jaxalign.training` (model construction, checkpoints) and
:mod:`jaxalign.morphable`, and below :mod:`jaxalign.calibration`, :mod:`jaxalign.evaluation`
and :mod:`jaxalign.prediction`.
"""

from __future__ import annotations

import dataclasses
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

from jaxalign import metrics
from jaxalign import schemes as schemes_lib
from jaxalign import transforms
from jaxalign.data import pipeline
from jaxalign.data import records as records_lib
from jaxalign.training import config as config_lib
from jaxalign.training import runs

log = logging.getLogger('jaxalign.inference')

# 'none': the CNNs' points (no completion); 'gaussian': the 2D statistical completion.
# 'learned': the run's learned completion (jaxalign.morphable.learned, fitted on its training
# shapes, WORKDIR/learned_completion.json) over the JAX 3DMM, which keeps the poses it hands back.
BACKENDS = ('jax', 'eos', 'gaussian', 'learned', 'none')
# The backends that fit the 3DMM with JAX (CNN1's residuals can join that fit: the fusion).
JAX_FIT = ('jax', 'learned')

load_config = config_lib.load_run_config
save_config = config_lib.save_run_config

# Tables of a run, written at the end of training (jaxalign.calibration): CNN1's held-out
# residuals per |yaw| bin and point (the fusion weights) with the completion/CNN1 mix.
FUSION_FILE = 'cnn1_residuals.json'
# A learned completion's tables (jaxalign.morphable.learned.LearnedCompletion.to_dict()), when
# the run has one; carried by Completion.learned.
LEARNED_FILE = 'learned_completion.json'


def resolve_backend(config, completion: str | None = None) -> str:
  """The completion backend: ``completion``, else the run's (``config.eval.completion_backend``,
  or 'none' when ``config.eval.completion`` is off).

  Raises:
    ValueError: an unknown backend name.
  """
  if completion is None:
    completion = config.eval.completion_backend if config.eval.completion else 'none'
  if completion not in BACKENDS:
    raise ValueError(f'unknown completion backend {completion!r}; expected one of {BACKENDS}')
  return completion


def read_tables(workdir) -> dict:
  """The completion tables a run saved: ``{'residuals': cnn1_residuals.json or None,
  'learned': learned_completion.json or None}`` (no workdir: both None)."""
  if workdir is None:
    return {'residuals': None, 'learned': None}
  return {'residuals': config_lib.read_json_object(os.path.join(str(workdir), FUSION_FILE)),
          'learned': config_lib.read_json_object(os.path.join(str(workdir), LEARNED_FILE))}


@dataclasses.dataclass(frozen=True)
class Completion:
  """How the unstable points are completed: everything :func:`run_pipeline` needs beyond the
  CNNs, decided in one place (:meth:`of_run`).

  Attributes:
    backend: 'jax' or 'eos' (the 3DMM), 'gaussian' (the 2D statistical completion) or 'none'.
    convention: the 3DMM's jaw convention, '2d' (300-W) or '3d' (AFLW2000-3D).
    train_dir: the training folder the 'gaussian' completion is fitted on.
    fusion: CNN1's held-out residual table (``{'rms': (B, L), 'bins': (B + 1,)}``) when CNN1's
      unstable points join the fit (jax backend, pose-aware model); else None.
    blend: the completion/CNN1 mix (``{'alpha': (B, L), 'bins', 'backend', 'fused',
      'convention'}``) when it applies to this very completion (:meth:`fits`); else None.
    learned: a learned completion's tables (``WORKDIR/learned_completion.json``) when the run
      has them; carried, not applied here.
    stable_shift: (dx, dy) moved onto CNN2's stable points before the completion, in each
      face's own axes and units (:func:`face_axes`), when ``eval.stable_shift`` is on and the
      run's table has it (:func:`jaxalign.calibration.stable_shift`); else None.
  """

  backend: str = 'jax'
  convention: str = '2d'
  train_dir: str | None = None
  fusion: dict | None = None
  blend: dict | None = None
  learned: dict | None = None
  stable_shift: tuple[float, float] | None = None

  def __post_init__(self):
    if self.backend not in BACKENDS:
      raise ValueError(f'unknown completion backend {self.backend!r}; expected one of '
                       f'{BACKENDS}')
    if self.fusion is not None and self.backend not in JAX_FIT:
      raise ValueError(f'the fusion with CNN1 needs the jax backend, not {self.backend!r}')
    if self.backend == 'learned' and self.learned is None:
      raise ValueError(f"the 'learned' completion needs the run's {LEARNED_FILE} (written at "
                       'the end of training, or by python -m jaxalign.calibrate --workdir RUN)')
    if self.blend is not None and not self.fits(self.blend):
      raise ValueError('the blend table was not estimated for this completion')

  @property
  def fused(self) -> bool:
    return self.fusion is not None

  @property
  def made_for(self) -> tuple[str, bool, str]:
    """``(backend, fused, convention)``: what a mix table must have been estimated for."""
    return self.backend, self.fused, self.convention

  def fits(self, blend: dict) -> bool:
    """The compatibility check of a mix table: estimated for this backend, fusion and
    convention (a mix made for another completion would mix the wrong points)."""
    return (blend.get('backend'), bool(blend.get('fused')), blend.get('convention')) \
        == self.made_for

  @classmethod
  def of_run(cls, config, workdir=None, backend: str | None = None,
             convention: str | None = None, tables: dict | None = None,
             mix: bool = True) -> 'Completion':
    """The completion of a run, with the one gating rule of its tables.

    Args:
      config: the run's config.
      workdir: the run's folder, whose tables are read (:func:`read_tables`) unless ``tables``
        gives them.
      backend: None (the run's, :func:`resolve_backend`) or a name of :data:`BACKENDS`.
      convention: None (``config.eval.completion_convention``) or '2d' / '3d'.
      tables: ``{'residuals': ..., 'learned': ...}`` instead of the files.
      mix: False leaves the mix out (the calibration measures the completion before it).

    The rule: CNN1's residuals join the fit when ``eval.completion_fusion`` is on, the model is
    pose-aware and the backend is 'jax'; the mix applies when ``eval.completion_blend`` is on,
    the model is pose-aware and the table :meth:`fits` this completion, to CNN2's stable points
    too only when ``eval.blend_stable`` is on (and the table was estimated with it). A table
    that is asked for but missing or made for another completion is left out with a warning.

    Raises:
      ValueError: an unknown backend or convention, a damaged table file, or the learned
        backend asked for by name (``backend='learned'``) without its tables.
    """
    asked = backend      # None: the run's own setting, which may fall back below
    backend = resolve_backend(config, backend)
    convention = convention or config.eval.completion_convention
    if convention not in ('2d', '3d'):
      raise ValueError(f"unknown completion convention {convention!r}; expected '2d' or '3d'")
    tables = read_tables(workdir) if tables is None else tables
    residuals = tables.get('residuals')
    pose_aware = config.model.kind == 'pose_aware'
    if backend == 'learned' and not pose_aware:
      # The plain model completes no point: its 3DMM fit only gives the pose, with the JAX fit
      # (run_pipeline), so the plain twin of a 'learned' config needs no learned tables.
      backend = 'jax'
    where = workdir if workdir is not None else 'the run'
    if backend == 'learned' and tables.get('learned') is None and asked is None:
      # The run's own 'learned' setting, but too few training faces for a learned completion
      # (calibration.fit_learned), or a run never calibrated: complete with the 3DMM, as the
      # evaluation report then records, rather than lose the end of a finished training run.
      # Asked for by name (--completion learned), the missing tables are an error instead.
      log.warning("the 'learned' completion needs %s's %s (written at the end of training, or "
                  'by python -m jaxalign.calibrate --workdir RUN); completing with the JAX '
                  '3DMM fit instead', where, LEARNED_FILE)
      backend = 'jax'
    fusion = None
    if config.eval.completion_fusion and pose_aware and backend in JAX_FIT:
      if residuals is None:
        log.warning('eval.completion_fusion is on but %s has no %s (train with validation '
                    'faces: data.val_dir, data.synthetic.num_val or data.holdout_fraction); '
                    'completing without fusion', where, FUSION_FILE)
      else:
        fusion = {'rms': np.asarray(residuals['rms'], np.float64),
                  'bins': tuple(residuals['bins'])}
    shift = None
    if config.eval.get('stable_shift', False) and pose_aware:
      shift = None if residuals is None else residuals.get('stable_shift')
      if shift is not None:
        shift = tuple(float(v) for v in shift['mean'])
      elif tables or workdir is not None:      # tables={}: the run's tables left out on purpose
        log.warning('eval.stable_shift is on but %s has no stable_shift in %s (recalibrate: '
                    'python -m jaxalign.calibrate --workdir RUN); CNN2\'s points are not moved',
                    where, FUSION_FILE)
    completion = cls(backend, convention, config.data.train_dir or None, fusion, None,
                     tables.get('learned'), shift)
    if not (mix and config.eval.completion_blend and pose_aware and backend != 'none'):
      return completion
    # One mix table per completion it was estimated for ('blends'), or the run's own ('blend').
    blend = None if residuals is None else (
        residuals.get('blends', {}).get(backend) or residuals.get('blend'))
    if blend is None:
      log.warning('eval.completion_blend is on but %s has no blend table in %s (train with '
                  'validation faces: data.val_dir, data.synthetic.num_val or '
                  'data.holdout_fraction); the completion is not mixed with CNN1', where,
                  FUSION_FILE)
      return completion
    if not completion.fits(blend):
      log.warning('the blend table was estimated for completion %s (backend, fused, '
                  'convention), not for the %s that runs; the completion is not mixed with '
                  'CNN1', (blend.get('backend'), bool(blend.get('fused')),
                           blend.get('convention')), completion.made_for)
      return completion
    alpha = np.asarray(blend['alpha'], np.float64)
    stable = config_lib.model_scheme(config).stable_mask()
    if not config.eval.get('blend_stable', False):
      alpha = alpha.copy()
      alpha[:, stable] = np.nan        # CNN2's stable points as they are
    elif not blend.get('stable_mixed', False):     # tables from before the option lack it
      log.warning('eval.blend_stable is on but the blend table of %s was estimated without it '
                  '(recalibrate: python -m jaxalign.calibrate --workdir RUN); CNN2\'s stable '
                  'points are not mixed', where)
    return dataclasses.replace(
        completion, blend=dict(blend, alpha=alpha, bins=tuple(residuals['bins'])))


@dataclasses.dataclass(frozen=True)
class ModelEnsemble:
  """The networks of an ensemble run (``config.ensemble.members`` > 1), each in inference mode.

  Wherever a model goes (:func:`predict_records` and everything above it: the second pass, the
  completion's calibration, evaluation, ``predict``, the detection verifier), an ensemble goes
  too: each member's CNN pair runs on the same crops and their points are averaged, except
  where one member has collapsed (:func:`ensemble_predictions`). Members share the config
  (crop, input size, scheme); they differ in their training draws.
  """

  members: tuple

  def __post_init__(self):
    if not self.members:
      raise ValueError('an ensemble needs at least one member model')

  def __len__(self) -> int:
    return len(self.members)

  def eval(self) -> None:
    for m in self.members:
      m.eval()


class Run:
  """A trained run, opened once: its config (``WORKDIR/config.json`` merged onto
  :func:`jaxalign.training.config.base_config`, so every default lives there), its model
  (restored on first use: parameters and model state only, never the optimiser; for an
  ensemble run, a :class:`ModelEnsemble` of the members' checkpoints) and its completion
  (:meth:`completion`).

  ``Run.load(workdir)`` is the one way to open a run; ``evaluate``, ``predict``, ``complete
  --workdir``, the end-of-training evaluation and the pose experiment all use it.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, step: int | None = None):
    self.workdir = str(workdir)
    self.config = config
    self._step = step
    self._model = None

  @classmethod
  def load(cls, workdir, step: int | None = None) -> 'Run':
    """Opens the run in ``workdir`` at its latest checkpoint (or ``step``).

    Raises:
      FileNotFoundError: no ``config.json`` in ``workdir``.
      ValueError: a damaged config or one with a retired option.
    """
    return cls(str(workdir), load_config(str(workdir)), step)

  @property
  def member_dirs(self) -> list[str]:
    """The folders of the run's networks: ``[workdir]``, or an ensemble's members
    (:func:`jaxalign.training.runs.member_dirs`)."""
    return runs.member_dirs(self.workdir, int(self.config.ensemble.members))

  def _restore(self) -> None:
    if self._model is not None:
      return
    model, _, step = runs.restore_model(self.workdir, self._step, self.config)
    dirs = self.member_dirs[1:]
    if dirs:
      others = []
      for folder in dirs:
        if not runs.is_run_dir(folder):
          raise FileNotFoundError(f'{self.workdir}: ensemble member {folder} is missing (the '
                                  f'run has config.ensemble.members='
                                  f'{self.config.ensemble.members}); train it with python -m '
                                  'jaxalign.train on the same --workdir')
        member_config = load_config(folder)
        for key in ('kind', 'input_size', 'scheme', 'cnn2_input_size'):
          if member_config.model[key] != self.config.model[key]:
            raise ValueError(f'ensemble member {folder}: config.model.{key}='
                             f'{member_config.model[key]!r}, the run has '
                             f'{self.config.model[key]!r}')
        others.append(runs.restore_model(folder, None, member_config)[0])
      model = ModelEnsemble((model,) + tuple(others))
    self._model, self._step = model, step

  @property
  def model(self):
    """The ``nnx.Module`` in inference mode (BatchNorm running averages).

    Raises:
      FileNotFoundError: no checkpoint (of the requested step) in the run.
      ValueError: the checkpoint does not fit the config's model.
    """
    self._restore()
    return self._model

  @property
  def step(self) -> int:
    """The restored checkpoint's step."""
    self._restore()
    return self._step

  @property
  def mean_shape(self) -> np.ndarray | None:
    """The training mean shape (L, 2) in network-input pixels (``WORKDIR/data_stats.json``),
    or None for a run without it."""
    return runs.read_mean_shape(self.workdir)

  def completion(self, backend: str | None = None, convention: str | None = None) -> Completion:
    """The run's :class:`Completion` (another ``backend`` or ``convention`` when given)."""
    return Completion.of_run(self.config, self.workdir, backend, convention)


def face_axes(points: np.ndarray, scheme: schemes_lib.LandmarkScheme
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Each face's own axes from its (N, L, 2) points: the unit x axis (N, 2) from the viewer's
  left outer eye corner to the right one (``scheme.inter_ocular``), the y axis (N, 2) at right
  angles to it (down the face for an upright face, image y pointing down) and the unit of
  length (N,), the corners' distance in pixels (NaN where the points give none)."""
  a, b = scheme.inter_ocular
  pts = np.asarray(points, np.float64)
  axis = pts[:, b] - pts[:, a]
  scale = metrics.normalizer(pts, 'inter_ocular', scheme)
  with np.errstate(invalid='ignore', divide='ignore'):
    x = axis / np.where(scale > 0, scale, np.nan)[:, None]
  return x, np.stack([-x[:, 1], x[:, 0]], -1), np.where(scale > 0, scale, np.nan)


def shift_stable(out: dict, shift, scheme: schemes_lib.LandmarkScheme) -> dict:
  """:func:`predict_records`' dict with CNN2's stable points moved by ``shift`` (dx, dy) in the
  face's own axes and units (:func:`face_axes` of CNN1's points) and the pair's points merged
  again; faces without axes keep their points."""
  x, y, scale = face_axes(out['rough'], scheme)
  move = (float(shift[0]) * x + float(shift[1]) * y) * scale[:, None]          # (N, 2) pixels
  move = np.where(np.isfinite(move), move, 0.0)[:, None]
  stable = (out['stable'] + move).astype(np.float32)       # NaN (non-stable) points stay NaN
  return dict(out, stable=stable, cnn_points=merge_stable(stable, out['rough']))


def merge_stable(stable: np.ndarray, other: np.ndarray) -> np.ndarray:
  """CNN2's stable points where it has them (not NaN), ``other`` elsewhere. (..., L, 2)."""
  return np.where(np.isnan(stable), other, stable).astype(np.float32)


def fill_unstable(stable, completed, rough, ok=None) -> tuple[np.ndarray, np.ndarray]:
  """The one fallback: CNN2's ``stable`` points, the completion's points elsewhere, and CNN1's
  (``rough``) for every point that is not finite and for the unstable points of a face whose
  fit failed (``ok`` False).

  Args:
    stable: (N, L, 2) CNN2's points, NaN at the unstable points.
    completed: (N, L, 2) the completion's points.
    rough: (N, L, 2) CNN1's points.
    ok: (N,) bool, the backend's verdict per face (None: every fit succeeded).

  Returns:
    (points (N, L, 2) float32, fallback (N, L) bool: the points taken from CNN1).
  """
  filled = merge_stable(stable, np.asarray(completed, np.float32))
  ok = np.ones(len(filled), bool) if ok is None else np.asarray(ok, bool)
  bad = ~np.isfinite(filled).all(-1) | (~ok[:, None] & np.isnan(stable).any(-1))
  return np.where(bad[..., None], rough, filled).astype(np.float32), bad


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
  tta = bool(config.eval.mirror_tta)
  if config.model.kind == 'plain':
    rough = model(views['images'], mirror_tta=tta)['points']
    b = rough.shape[0]
    return (transforms.warp_points(rough, to_image), None, jnp.zeros(b, bool),
            jnp.zeros(b, jnp.float32))
  out = model(views['images'], source=views['source'], source_to_input=views['matrices'],
              mirror_tta=tta)
  image_to_view = transforms.compose(batch['crop_from_image'], views['matrices'], out['matrix'])
  outside = _outside_fraction(image_to_view, model.cnn2_image_size, batch['image_hw'])
  return (transforms.warp_points(out['rough'], to_image),
          transforms.warp_points(out['sl_points'], to_image), out['flipped'], outside)


def predict_records(model, config, records, batch_size: int = 64, num_workers: int = 0) -> dict:
  """The CNNs' landmarks of ``records`` (:class:`jaxalign.data.records.FaceRecord` list).

  Args:
    model: :attr:`Run.model` (inference mode); a :class:`ModelEnsemble` runs every member and
      merges their points (:func:`ensemble_predictions`; then also ``ensemble_choice``).
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
  if isinstance(model, ModelEnsemble):
    return ensemble_predictions([predict_records(m, config, records, batch_size, num_workers)
                                 for m in model.members], config)
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


def recrop_records(records, points, shift=(0.0, 0.0)) -> list:
  """``records`` with each box replaced by the tight box of ``points`` (N, L, 2) (the network's
  own landmarks, image pixels), the framing the networks were trained on, moved by ``shift``
  (dx, dy) fractions of its width and height; a face whose points give no valid box keeps its
  box."""
  out = []
  dx, dy = (float(v) for v in shift)
  for r, p in zip(records, np.asarray(points, np.float32)):
    box = records_lib.landmark_box(p) if np.isfinite(p).all() else None
    if box is not None and (dx or dy):
      w, h = box[2] - box[0], box[3] - box[1]
      box = box + np.array([dx * w, dy * h, dx * w, dy * h], np.float32)
    out.append(dataclasses.replace(r, box=box) if box is not None and records_lib.valid_box(box)
               else r)
  return out


def average_predictions(preds: list[dict]) -> dict:
  """:func:`predict_records`' dicts on the same faces (two passes, or an ensemble's members)
  -> one: CNN1's points and the pair's points averaged where every dict is valid (the first's
  elsewhere). The stable set, the flip, the boxes and the outside fraction stay the first's; at
  those stable points the others contribute their own pair's estimate (CNN2's, or CNN1's where
  they flipped the other way)."""
  first = preds[0]
  if len(preds) == 1:
    return first
  every = np.logical_and.reduce([p['valid'] for p in preds])[:, None, None]

  def mean(key):
    return np.where(every, np.mean([p[key] for p in preds], axis=0), first[key]
                    ).astype(np.float32)

  rough = mean('rough')
  stable = np.where(np.isnan(first['stable']), np.nan, mean('cnn_points')).astype(np.float32)
  return dict(first, rough=rough, stable=stable, cnn_points=merge_stable(stable, rough))


def member_disagreement(preds: list[dict]) -> np.ndarray:
  """(N,) how far an ensemble's members' CNN1 points lie apart on each face: the largest mean
  point distance between two members, over the side of their mean points' box (sqrt(w h)).
  Members that see the same face agree to a few hundredths (docs/experiments/cpu_300w.md); a
  collapsed network is a tenth or more away. NaN where a member has no points."""
  rough = np.stack([np.asarray(p['rough'], np.float64) for p in preds])       # (K, N, L, 2)
  mean = rough.mean(0)
  side = np.sqrt(np.prod(np.nanmax(mean, 1) - np.nanmin(mean, 1), axis=-1))
  gaps = [np.linalg.norm(rough[i] - rough[j], axis=-1).mean(-1)
          for i in range(len(preds)) for j in range(i + 1, len(preds))]
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.max(gaps, axis=0) / side


def ensemble_predictions(preds: list[dict], config) -> dict:
  """An ensemble's members' :func:`predict_records` dicts on the same faces -> one.

  Every face gets the members' mean (:func:`average_predictions`), except a face on which they
  disagree by more than ``config.ensemble.max_disagreement`` (:func:`member_disagreement`): one
  member has collapsed there, so the face gets, whole (points, stable set, flip), the member
  whose CNN1 points fit a rigid 3D face best (:func:`jaxalign.morphable.pose.rigid_residual`;
  iBUG-68 only, others are averaged). ``ensemble_choice`` (N,) says which member was taken
  (-1: the mean).
  """
  out = average_predictions(preds)
  n = len(out['valid'])
  choice = np.full(n, -1, np.int64)
  limit = float(config.ensemble.max_disagreement)
  scheme = config_lib.model_scheme(config)
  if len(preds) > 1 and limit > 0 and scheme.name == schemes_lib.IBUG68.name:
    with np.errstate(invalid='ignore'):
      flagged = np.flatnonzero(member_disagreement(preds) > limit)
    if flagged.size:
      from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
      reference = pose.reference_points(scheme=scheme)
      residual = np.stack([pose.rigid_residual(np.asarray(p['rough'][flagged], np.float64),
                                               reference) for p in preds])   # (K, F)
      choice[flagged] = np.argmin(np.where(np.isfinite(residual), residual, np.inf), axis=0)
      out = {k: _take_members(v, [p[k] for p in preds], choice) for k, v in out.items()}
      log.info('ensemble: members disagree on %d of %d faces; each gets its most rigid '
               "member's points", flagged.size, n)
  return dict(out, ensemble_choice=choice)


def _take_members(merged, per_member, choice):
  """``merged`` (a per-face array, leading axis N) with the faces where ``choice`` >= 0 taken
  from that member's array instead; anything that is not a per-face array as it is."""
  n = len(choice)
  if not (isinstance(merged, np.ndarray) and merged.shape[:1] == (n,)):
    return merged
  faces = np.flatnonzero(choice >= 0)
  out = merged.copy()
  out[faces] = np.stack(per_member)[choice[faces], faces]
  return out


def recrop_shifts(config) -> list[tuple[float, float]]:
  """The (dx, dy) box moves of the passes after the first (:func:`predict_with_recrop`): none
  without ``eval.recrop``; (0, 0), then with ``eval.recrop_shift`` s > 0 also (+-s, 0) and
  (0, +-s)."""
  if not bool(config.eval.recrop):
    return []
  s = float(config.eval.get('recrop_shift', 0.0))
  return [(0.0, 0.0)] + ([(s, 0.0), (-s, 0.0), (0.0, s), (0.0, -s)] if s > 0 else [])


def predict_with_recrop(model, config, records, batch_size: int = 64) -> dict:
  """:func:`predict_records`, then (``config.eval.recrop``) a second pass on crops around the
  first pass's own points (no box jitter: that box is the network's, not a detector's), and
  (``config.eval.recrop_shift``) four more on that box moved left, right, up and down; all the
  passes averaged (:func:`average_predictions`). Beyond the paper: measured in
  docs/experiments/cpu_300w.md."""
  first = predict_records(model, config, records, batch_size=batch_size)
  shifts = recrop_shifts(config)
  if not shifts or not len(records):
    return first
  plain = pipeline.without_box_jitter(config)
  return average_predictions([first] + [
      predict_records(model, plain, recrop_records(records, first['cnn_points'], shift),
                      batch_size=batch_size) for shift in shifts])


# ------------------------------------------------------------------------------- completion

def complete_points(points, scheme, backend: str, flip=None, train_dir: str | None = None,
                    convention: str = '2d', learned: dict | None = None, **kwargs):
  """The unstable points of faces from their stable points, by ``backend``.

  'jax' / 'eos': :func:`jaxalign.morphable.completion.complete` (the 3DMM, ``convention`` '2d'
  or '3d'); 'gaussian': the 2D statistical completion
  (:func:`jaxalign.morphable.statistical.complete`) fitted on the training folder
  ``train_dir``; 'learned': the JAX 3DMM (pose, coefficients, and the points of the poses the
  learned model hands back), then :class:`jaxalign.morphable.learned.LearnedCompletion` of the
  tables ``learned`` (``LearnedCompletion.to_dict()``) for the unstable points. The learned
  model reads 2D (300-W) annotations, so with ``convention='3d'`` the 3DMM's points are kept.

  Raises:
    ValueError: 'gaussian' without a training folder, 'learned' without tables, or an unknown
    backend.
  """
  if backend == 'gaussian':
    from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
    if not train_dir:
      raise ValueError("the 'gaussian' completion is fitted on the run's training shapes, but "
                       'config.data.train_dir is empty')
    model = _gaussian_model(str(train_dir), schemes_lib.get_scheme(scheme))
    return statistical.complete(points, model, scheme=scheme, flip=flip)
  if backend not in ('jax', 'eos', 'learned'):
    raise ValueError(f'unknown completion backend {backend!r}; expected one of {BACKENDS}')
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  result = completion.complete(points, scheme=scheme, backend='jax' if backend == 'learned'
                               else backend, flip=flip, convention=convention, **kwargs)
  if backend != 'learned':
    return result
  if learned is None:
    raise ValueError(f"the 'learned' completion needs its tables ({LEARNED_FILE})")
  if convention != '2d':
    log.warning("the 'learned' completion reads 2D annotations; with the %s convention the "
                "3DMM's points are kept", convention)
    return result
  from jaxalign.morphable import learned as learned_lib  # pylint: disable=g-import-not-at-top
  model = learned_lib.LearnedCompletion.from_dict(learned)
  # The 3DMM's looking direction (the pipeline's, when given), so both use the same mirror set.
  pts = model.complete(np.asarray(points, np.float32),
                       flip=np.asarray(result.flipped, bool) if flip is None else flip,
                       completed_3dmm=np.asarray(result.points, np.float32))
  return dataclasses.replace(result, points=pts)


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


def run_pipeline(model, config, records, completion: Completion | str | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
  """The full pipeline on records: the CNN pair, then the completion of the unstable points.

  Args:
    model, config: from :class:`Run` (or a trainer's model in inference mode).
    records: the faces (see :func:`predict_records`).
    completion: a :class:`Completion` (e.g. :meth:`Run.completion`), or a backend name ('jax',
      'eos', 'gaussian' or 'none'; None: the run's, :func:`resolve_backend`) for the
      completion without the run's tables. With ``completion.fusion`` the fit also takes
      CNN1's unstable points (beyond the paper) and the unfused completion is returned too, as
      ``points_unfused``; with ``completion.blend`` each unstable point is then mixed with
      CNN1's, ``alpha c + (1 - alpha) o`` at the face's |yaw| bin (beyond the paper), and the
      unmixed points are returned as ``points_unblended``. With ``completion.stable_shift``
      CNN2's stable points are first moved by it (:func:`shift_stable`; ``cnn_points`` too).
    batch_size: images per forward pass (default ``config.eval.batch_size``).

  Returns:
    :func:`predict_records`'s dict plus ``points`` (the final landmarks), ``yaw``/``pitch``/
    ``roll`` (N,) degrees of the 3DMM fit (NaN where not fitted), ``shape_coeffs`` /
    ``expression_coeffs`` ((N, K) / (N, E) or None), ``backend`` (the completion that ran, or
    None), ``completion_error`` (why it could not run, or None), ``num_fallbacks`` and
    ``timings``.
  """
  if not isinstance(completion, Completion):
    completion = Completion.of_run(config, None, completion, tables={})
  backend, convention = completion.backend, completion.convention
  scheme = config_lib.model_scheme(config)
  plain = config.model.kind == 'plain'
  n = len(records)
  batch_size = int(batch_size or config.eval.batch_size)
  t0 = time.perf_counter()
  out = predict_with_recrop(model, config, records, batch_size=batch_size)
  if completion.stable_shift is not None and not plain:
    out = shift_stable(out, completion.stable_shift, scheme)
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
  fit_backend = ('jax' if backend in ('gaussian', 'none', 'learned') else backend) if plain \
      else backend
  if scheme.name != schemes_lib.IBUG68.name:
    if not plain and backend != 'none':
      error = (f'no 3DMM completion for the {scheme.name} scheme (the completion reads '
               'iBUG-68 points); unstable points from CNN1')
      log.warning('%s', error)
  elif valid.any() and fit_backend != 'none':
    sel = np.flatnonzero(valid)
    rough = out['rough'][sel]
    fit_input = rough if plain else out['stable'][sel]
    fuse = completion.fusion if not plain else None
    mix = completion.blend if not plain else None

    def fit(**extra):
      return complete_points(
          fit_input, scheme, fit_backend, flip=None if plain else out['flipped'][sel],
          train_dir=completion.train_dir, convention=convention, learned=completion.learned,
          **extra)

    yaw_cnn1 = cnn1_yaw(rough) if (fuse or mix) else None
    result = fit(**fusion_inputs(rough, fuse, yaw_cnn1))
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
      filled, bad = fill_unstable(stable, result.points, rough, getattr(result, 'ok', None))
      num_fallbacks = int(bad.any(-1).sum())
      if num_fallbacks:
        log.warning('completion failed on %d faces; their unstable points are CNN1\'s',
                    num_fallbacks)
      points[sel] = filled
      if fuse:
        unfused = fit()
        points_unfused = points.copy()
        points_unfused[sel] = fill_unstable(stable, unfused.points, rough,
                                            getattr(unfused, 'ok', None))[0]
      if mix:
        from jaxalign.morphable import completion as completion_lib  # pylint: disable=g-import-not-at-top
        points_unblended = points.copy()
        points[sel] = completion_lib.blend_points(
            filled, rough, np.asarray(mix['alpha'], np.float64), yaw_cnn1,
            bins=tuple(mix['bins']))
  t2 = time.perf_counter()
  return dict(out, points=points, points_unfused=points_unfused,
              points_unblended=points_unblended, yaw=yaw, pitch=pitch, roll=roll,
              shape_coeffs=shape_coeffs, expression_coeffs=expression_coeffs,
              num_fallbacks=num_fallbacks, backend=ran, completion_error=error,
              timings={'cnn_s': t1 - t0, 'completion_s': t2 - t1, 'pipeline_s': t2 - t0,
                       'faces_per_s': n / (t2 - t0) if t2 > t0 and n else None})
