"""The end-of-run evaluation: held-out split -> ``WORKDIR/eval/<split>/report.json``.

The full pipeline (:func:`jaxalign.training.inference.predict_records`: CNN pair + 3DMM
completion for the pose-aware model) against the ground truth, with the metrics of
:func:`jaxalign.evaluation.report.compute_report`, plus

* ``mean_shape_nme_inter_ocular``: the trivial baseline, the training mean shape (in
  network-input pixels) placed in each test box through the same crop as the network's input;
* ``cnn_nme_inter_ocular``: the CNNs alone (CNN2's stable points, CNN1's unstable points);
* ``completion``: whether the 3DMM completion ran, and its backend.
"""

from __future__ import annotations

import logging
import os
import time

import jax.numpy as jnp
import numpy as np

from jaxalign import metrics, schemes, transforms
from jaxalign.data import pipeline
from jaxalign.evaluation import report as report_lib
from jaxalign.training import inference

log = logging.getLogger('jaxalign.train')


def input_from_image_matrices(records, spec: pipeline.CropSpec) -> np.ndarray:
  """(N, 2, 3) maps from each record's image pixels to its network input (no augmentation)."""
  host = np.stack([pipeline.host_crop_matrix(r.box, spec) for r in records]).astype(np.float32)
  crop = transforms.crop_matrix(jnp.asarray(pipeline.crop_box(spec)), spec.input_size)
  return np.asarray(transforms.compose(host, crop[None]), np.float32)


def points_in_input(records, spec: pipeline.CropSpec) -> np.ndarray:
  """(N, L, 2) the records' landmarks in network-input pixels."""
  pts = np.stack([np.asarray(r.points, np.float32) for r in records])
  return np.asarray(transforms.warp_points(pts, input_from_image_matrices(records, spec)))


def mean_shape_in_boxes(mean_shape, records, spec: pipeline.CropSpec) -> np.ndarray:
  """(N, L, 2) the (L, 2) input-pixel mean shape placed in each record's box (image pixels)."""
  inv = transforms.invert(input_from_image_matrices(records, spec))
  return np.asarray(transforms.warp_points(jnp.asarray(mean_shape)[None], inv))


def evaluate(model, config, records, out_dir: str, mean_shape, step: int | None = None,
             complete: bool | None = None) -> dict:
  """Evaluates ``model`` on ``records`` and writes ``out_dir/report.json`` (and report.md).

  Falls back to the CNNs alone (and says so in the report) if the 3DMM completion cannot run.
  """
  scheme = schemes.get_scheme(config.model.scheme)
  spec = pipeline.CropSpec.from_config(config)
  complete = bool(config.eval.completion) if complete is None else complete
  complete = complete and config.model.kind == 'pose_aware'
  t0 = time.time()
  completion_error = None
  try:
    out = inference.predict_records(model, config, records, int(config.eval.batch_size),
                                    complete=complete)
  except (ImportError, AttributeError, NotImplementedError) as e:
    if not complete:
      raise
    completion_error = f'{type(e).__name__}: {e}'
    log.warning('3DMM completion unavailable (%s); evaluating the CNN pair alone',
                completion_error)
    complete = False
    out = inference.predict_records(model, config, records, int(config.eval.batch_size),
                                    complete=False)
  seconds = time.time() - t0
  valid = out['valid']
  gt = np.stack([np.asarray(r.points, np.float32) for r in records])[valid]
  boxes = out['boxes'][valid]
  yaw = np.array([np.nan if r.yaw is None else r.yaw for r in records], np.float64)[valid]
  rep = report_lib.compute_report(out['points'][valid], gt, boxes, scheme=scheme, yaw=yaw,
                                  yaw_source='annotations' if np.isfinite(yaw).any() else None)
  cnn_points = np.where(np.isnan(out['stable']), out['rough'], out['stable'])[valid]
  baseline = mean_shape_in_boxes(mean_shape, [r for r, v in zip(records, valid) if v], spec)
  rep.update({
      'step': step,
      'model': config.model.kind,
      'num_skipped_images': int((~valid).sum()),
      'completion': bool(complete),
      'completion_backend': config.eval.completion_backend if complete else None,
      'completion_error': completion_error,
      'cnn_nme_inter_ocular': float(np.nanmean(metrics.nme(cnn_points, gt, scheme=scheme))),
      'mean_shape_nme_inter_ocular': float(np.nanmean(metrics.nme(baseline, gt,
                                                                   scheme=scheme))),
      'seconds': seconds,
  })
  rep = _json_safe(rep)
  report_lib.write_report(out_dir, rep)
  log.info('eval %s: %d images, NME (inter-ocular) %.4f, mean shape %.4f, CNN only %.4f -> %s',
           os.path.basename(out_dir), rep['num_images'], rep['nme_inter_ocular'] or np.nan,
           rep['mean_shape_nme_inter_ocular'] or np.nan, rep['cnn_nme_inter_ocular'] or np.nan,
           out_dir)
  return rep


def _json_safe(obj):
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if np.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj
