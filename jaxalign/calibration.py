"""The completion's tables, calibrated on held-out faces at the end of training.

``calibrate(model, config, records)`` measures, on faces the training never saw (validation
faces or a held-out slice of the training set), what the run's :class:`jaxalign.inference
.Completion` needs beyond its backend:

- ``rms``: CNN1's residual RMS per |yaw| bin and point (inter-ocular units, right-looking
  frame), from which the fusion weights of CNN1's unstable points in the 3DMM fit come
  (``eval.completion_fusion``; :func:`jaxalign.morphable.completion.fusion_weights`);
- ``stable_shift``: CNN2's mean residual (truth minus CNN2) over its stable points, in each
  face's own axes and units (:func:`jaxalign.inference.face_axes` of CNN1's points), which
  ``eval.stable_shift`` moves CNN2's points by before the completion;
- ``blend``: the mix of each completed unstable point (and with ``eval.blend_stable`` each of
  CNN2's stable points) with CNN1's, alpha per |yaw| bin and point fitted by least squares
  (``eval.completion_blend``;
  :func:`jaxalign.morphable.completion.blend_weights`), estimated for the completion that
  will run (its backend, fusion and convention, :meth:`Completion.fits`).

Both come from :func:`jaxalign.inference.run_pipeline` itself (first the CNNs alone, then the
run's completion fused with the new residuals and not yet mixed), so the mix is estimated on
exactly the points the evaluation and ``predict`` will mix, with the same fallback. The table
is what :mod:`jaxalign.workflow` writes to ``WORKDIR/cnn1_residuals.json``.

Layering: above :mod:`jaxalign.inference`, below :mod:`jaxalign.workflow`.
"""

from __future__ import annotations

import logging

import numpy as np

from jaxalign import inference
from jaxalign import schemes as schemes_lib
from jaxalign.morphable import completion as completion_lib
from jaxalign.morphable import pose as pose_lib
from jaxalign.training import config as config_lib

log = logging.getLogger('jaxalign.calibration')


def _truth_yaw(records, gt) -> np.ndarray:
  """(N,) degrees: the records' annotated yaw, else the rigid-fit yaw of their ground truth."""
  yaw = np.array([np.nan if r.yaw is None else float(r.yaw) for r in records], np.float64)
  missing = ~np.isfinite(yaw)
  if missing.any():
    yaw[missing] = np.asarray(pose_lib.estimate_pose(gt[missing])[..., 0], np.float64)
  return yaw


def learned_applies(config) -> bool:
  """Whether the run can have a learned completion (pose-aware, iBUG-68)."""
  return (config.model.kind == 'pose_aware'
          and config_lib.model_scheme(config).name == schemes_lib.IBUG68.name)


def cnn_pass(model, config, records, batch_size: int | None = None) -> dict:
  """The CNN pair alone on ``records`` (:func:`jaxalign.inference.run_pipeline` without a
  completion); shared by :func:`sl_noise` and :func:`calibrate`."""
  return inference.run_pipeline(model, config, records, 'none', batch_size)


def sl_noise(config, cnn, records) -> float:
  """CNN2's SL noise on held-out ``records`` (:func:`cnn_pass`'s result ``cnn``), in inter-ocular
  units per coordinate after the best similarity
  (:func:`jaxalign.morphable.learned.measure_sl_noise`); what ``eval.learned_sl_noise='auto'``
  fits the learned completion with. 0.0 when no face was predicted."""
  from jaxalign.morphable import learned  # pylint: disable=g-import-not-at-top
  valid = cnn['valid']
  if not valid.any():
    return 0.0
  gt = np.stack([np.asarray(r.points, np.float64) for r, v in zip(records, valid) if v])
  return learned.measure_sl_noise(cnn['cnn_points'][valid], gt, config_lib.model_scheme(config),
                                  flip=cnn['flipped'][valid])


def stable_shift(config, cnn, records) -> dict | None:
  """CNN2's mean residual on held-out ``records`` (:func:`cnn_pass`'s result ``cnn``, before any
  shift): the ground truth minus CNN2's stable points, in each face's own axes and units
  (:func:`jaxalign.inference.face_axes` of CNN1's points: x from the viewer's left outer eye
  corner to the right one, y at right angles, lengths over their distance), averaged over
  the faces and the stable points. ``{'mean': [dx, dy], 'num_faces', 'units', 'axes'}``; None
  when no face has CNN2's points.

  Why: CNN2 sees left-looking faces mirrored (the spatial transform), so an offset of the
  annotations that does not mirror with the face (300-W's, about half a pixel along the eyes'
  axis on ``val``) is, to CNN2, one way on half its faces and the other way on the rest; it
  learns neither, where CNN1, which never mirrors, learns it (docs/experiments/cpu_300w.md,
  session 23)."""
  scheme = config_lib.model_scheme(config)
  valid = np.asarray(cnn['valid'], bool)
  if not valid.any():
    return None
  gt = np.stack([np.asarray(r.points, np.float64) for r, v in zip(records, valid) if v])
  x, y, scale = inference.face_axes(cnn['rough'][valid], scheme)
  residual = gt - np.asarray(cnn['stable'], np.float64)[valid]          # NaN off CNN2's points
  local = np.stack([np.einsum('nld,nd->nl', residual, x), np.einsum('nld,nd->nl', residual, y)],
                   -1) / scale[:, None, None]
  faces = np.isfinite(local).all(-1).any(-1)
  if not faces.any():
    return None
  return {'mean': np.nanmean(local[faces].reshape(-1, 2), 0).tolist(),
          'num_faces': int(faces.sum()),
          'units': "the outer eye corners' distance (CNN1's points)",
          'axes': "x from the viewer's left outer eye corner to the right one (CNN1's points), "
                  'y at right angles (down an upright face); truth minus CNN2, added to CNN2'}


def fit_learned(config, records, sl_noise: float = 0.0) -> dict | None:
  """The learned completion (:class:`jaxalign.morphable.learned.LearnedCompletion`, its
  options' defaults: chosen by cross-validation, ``docs/method.md``) fitted on the run's
  training faces ``records``, as ``to_dict()`` (what ``WORKDIR/learned_completion.json``
  holds); None for the plain model or a scheme other than iBUG-68. The records' annotated yaw
  (synthetic faces) decides their mirroring where known; the pose switch to the 3DMM is chosen
  out of fold on the same faces. None also with fewer training faces than a |yaw| bin needs
  (``learned.DEFAULT_MIN_BIN_FACES``). ``sl_noise`` > 0: fitted for SLs that noisy (inter-ocular
  units per coordinate, e.g. :func:`sl_noise`'s measure of CNN2; ``eval.learned_sl_noise``)."""
  from jaxalign.morphable import learned  # pylint: disable=g-import-not-at-top
  scheme = config_lib.model_scheme(config)
  if not learned_applies(config) or not records:
    return None
  if len(records) < learned.DEFAULT_MIN_BIN_FACES:   # no |yaw| bin could ever use it
    log.warning('%d training faces: too few for a learned completion (at least %d)',
                len(records), learned.DEFAULT_MIN_BIN_FACES)
    return None
  shapes = np.stack([np.asarray(r.points, np.float64) for r in records])
  yaw = np.array([np.nan if r.yaw is None else float(r.yaw) for r in records], np.float64)
  return learned.LearnedCompletion.fit(
      shapes, scheme, yaw=yaw if np.isfinite(yaw).all() else None,
      sl_noise=float(sl_noise)).to_dict()


def calibrate(model, config, records, batch_size: int | None = None,
              learned: dict | None = None, cnn: dict | None = None) -> dict | None:
  """The completion tables of a run measured on the held-out ``records`` (ground truth in
  ``points``).

  Args:
    model, config: the run (:class:`jaxalign.inference.Run`'s ``model`` and ``config``).
    records: held-out faces (:class:`jaxalign.data.records.FaceRecord`).
    batch_size: images per forward pass (default ``config.eval.batch_size``).
    learned: the run's learned completion tables (:func:`fit_learned`), when it has them.
    cnn: :func:`cnn_pass` on these ``records`` when already run (else it runs here).

  Returns:
    ``{'rms': (B, L) nested list (None where a bin has no face), 'bins', 'num_faces', 'units',
    'frame'}`` plus ``stable_shift`` (:func:`stable_shift`; the mix below is fitted on points
    moved by it when ``eval.stable_shift`` is on), ``blend`` (``alpha``, ``backend``, ``fused``, ``convention``, ``meaning``)
    for the run's completion when it is 'jax', 'eos' or 'learned', and ``blends``
    (``{backend: blend}``) for it and the other completions that can run here ('jax', and
    'learned' with ``learned``), so ``--completion`` can switch; None for the plain model, a
    scheme without a 3DMM completion, or no readable face.
  """
  if (config.model.kind != 'pose_aware' or config_lib.model_scheme(config).name
      != schemes_lib.IBUG68.name or not records):
    return None
  bins = completion_lib.YAW_BINS
  if cnn is None:
    cnn = cnn_pass(model, config, records, batch_size)
  valid = cnn['valid']
  if not valid.any():
    return None
  kept = [r for r, v in zip(records, valid) if v]
  gt = np.stack([np.asarray(r.points, np.float32) for r in kept])
  rough = cnn['rough'][valid]
  rms = completion_lib.residual_rms(rough, gt, _truth_yaw(kept, gt), bins=bins)
  table = {'rms': np.where(np.isfinite(rms), rms, None).tolist(), 'bins': list(bins),
           'num_faces': int(valid.sum()), 'units': 'inter-ocular distance',
           'frame': 'right-looking (left-looking faces mirrored)'}
  shift = stable_shift(config, cnn, records)
  if shift is not None:
    table['stable_shift'] = shift
  tables = {'residuals': table, 'learned': learned}
  own = inference.resolve_backend(config)
  # The run's own first; 'learned' only with its tables (a run with too few training faces
  # for them completes with the JAX fit: inference.Completion.of_run).
  backends = [b for b in dict.fromkeys((own, 'jax', 'learned'))
              if b != 'learned' or learned is not None]
  blends = {}
  mix_stable = bool(config.eval.get('blend_stable', False))
  for backend in backends:
    if backend not in ('jax', 'eos', 'learned'):
      continue
    # This completion with these residuals, before the mix (what the mix is fitted on).
    completion = inference.Completion.of_run(config, backend=backend, tables=tables, mix=False)
    res = inference.run_pipeline(model, config, records, completion, batch_size)
    completed = res['points'][valid]
    alpha = completion_lib.blend_weights(completed, rough, gt, inference.cnn1_yaw(rough),
                                         bins=bins, mix_stable=mix_stable)
    blends[backend] = {
        'alpha': np.where(np.isfinite(alpha), alpha, None).tolist(),
        'backend': completion.backend, 'fused': completion.fused,
        'convention': completion.convention,
        'stable_mixed': mix_stable,
        'stable_shifted': completion.stable_shift is not None,
        'meaning': 'point = alpha * completion + (1 - alpha) * CNN1, per |yaw| bin and point '
                   '(rigid-fit yaw of CNN1\'s points), right-looking frame; the completion '
                   'keeps CNN2\'s stable points (mixed too where stable_mixed)'}
  if own in blends:
    table['blend'] = blends[own]
  if blends:
    table['blends'] = blends
  return table
