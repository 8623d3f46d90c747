"""The end-of-run evaluation: held-out split -> ``WORKDIR/eval/<split>/report.json``.

The full pipeline (:func:`jaxalign.training.inference.predict_records`: CNN pair + 3DMM
completion for the pose-aware model) against the ground truth, with the metrics of
:func:`jaxalign.evaluation.report.compute_report`, plus

* ``mean_shape_nme_inter_ocular``: the trivial baseline, the training mean shape (in
  network-input pixels) placed in each test box through the same crop as the network's input;
* ``cnn_nme_inter_ocular``: the CNNs alone (CNN2's stable points, CNN1's unstable points);
* ``completion``: whether the 3DMM completion ran, and its backend.

:func:`evaluate_splits` runs it for every held-out split of a config (``data.test_splits`` of
a registered data set, or the ``data.test_dir`` folder) into ``WORKDIR/eval/<split>/``, with
the NME normaliser of ``eval.normalization`` ('inter_ocular' for 300-W and COFW-68, 'bbox' for
AFLW and AFLW2000-3D) reported as ``nme``.
"""

from __future__ import annotations

import logging
import os
import time

import jax.numpy as jnp
import numpy as np

from jaxalign import metrics, schemes, transforms
from jaxalign.data import pipeline
from jaxalign.data import records as records_lib
from jaxalign.evaluation import report as report_lib
from jaxalign.training import config as config_lib
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
             complete: bool | None = None, dataset: str | None = None,
             split: str | None = None, num_invalid: int | None = None) -> dict:
  """Evaluates ``model`` on ``records`` and writes ``out_dir/report.json`` (and report.md).

  Besides the metrics of :func:`jaxalign.evaluation.report.compute_report` (every normaliser),
  the report has ``primary_normalization`` (``config.eval.normalization``), ``nme`` (the NME
  under it)
  and the mean-shape and CNN-only baselines under it (``mean_shape_nme_<normalization>``,
  ``cnn_nme_<normalization>``; the inter-ocular ones are always there). The 3DMM completion
  (pose-aware model) uses ``config.eval.completion_convention`` ('2d' or '3d'). It falls back
  to the CNNs alone, and says why in ``completion_error``, when the completion cannot run: it
  is not installed, or the landmark scheme has no 3DMM completion (only iBUG-68 has one; the
  unstable points then come from CNN1).

  Args:
    model, config: from :func:`jaxalign.training.inference.load_run` (or the trainer).
    records: the test faces.
    out_dir: where report.json / report.md go (created).
    mean_shape: (L, 2) training mean shape in network-input pixels (the trivial baseline).
    step: checkpoint step, recorded in the report.
    complete: override ``config.eval.completion``.
    dataset, split: the data set's registry name and split, recorded in the report as
      ``dataset`` = 'NAME:SPLIT' and ``split`` (and used to put the paper's numbers beside ours
      in report.md), as :mod:`jaxalign.evaluation.runner` does.
    num_invalid: files of the test data set that were skipped (recorded as
      ``num_invalid_files``).
  """
  scheme = config_lib.model_scheme(config)
  spec = pipeline.CropSpec.from_config(config)
  normalization = str(config.eval.get('normalization', 'inter_ocular') or 'inter_ocular')
  convention = str(config.eval.get('completion_convention', '2d') or '2d')
  complete = bool(config.eval.completion) if complete is None else complete
  complete = complete and config.model.kind == 'pose_aware'
  completion_error = None
  if complete and scheme.name != schemes.IBUG68.name:
    completion_error = (f'no 3DMM completion for the {scheme.name} scheme (the completion '
                        'reads iBUG-68 points); unstable points from CNN1')
    log.warning('%s', completion_error)
    complete = False
  t0 = time.time()
  out = _predict(model, config, records, complete, convention)
  seconds = time.time() - t0
  valid = out['valid']
  gt = np.stack([np.asarray(r.points, np.float32) for r in records])[valid]
  # The box normaliser, as in jaxalign.evaluation.runner: the data set's face box where the
  # protocol normalises by it (eval.normalization == 'bbox': AFLW), else the landmarks' box.
  if normalization == 'bbox':
    boxes = out['boxes'][valid]
  else:
    boxes = np.stack([records_lib.landmark_box(p) for p in gt]) if len(gt) else \
        np.zeros((0, 4), np.float32)
  yaw = np.array([np.nan if r.yaw is None else r.yaw for r in records], np.float64)[valid]
  rep = report_lib.compute_report(out['points'][valid], gt, boxes, scheme=scheme, yaw=yaw,
                                  yaw_source='annotations' if np.isfinite(yaw).any() else None)
  cnn_points = np.where(np.isnan(out['stable']), out['rough'], out['stable'])[valid]
  baseline = mean_shape_in_boxes(mean_shape, [r for r, v in zip(records, valid) if v], spec)

  def nme(points, norm):
    return float(np.nanmean(metrics.nme(points, gt, norm, scheme=scheme, boxes=boxes)))

  rep.update({
      'step': step,
      'model': config.model.kind,
      'dataset': f'{dataset}:{split}' if dataset else None,
      'split': split,
      'num_skipped_images': int((~valid).sum()),
      'num_invalid_files': num_invalid,
      'primary_normalization': normalization,
      'nme': rep[f'nme_{normalization}'],
      'completion': bool(complete),
      'completion_backend': config.eval.completion_backend if complete else None,
      'completion_convention': convention if complete else None,
      'completion_error': completion_error,
      'seconds': seconds,
  })
  for norm in dict.fromkeys(('inter_ocular', normalization)):
    rep[f'cnn_nme_{norm}'] = nme(cnn_points, norm)
    rep[f'mean_shape_nme_{norm}'] = nme(baseline, norm)
  rep = _json_safe(rep)
  # The paper reports AFLW-Full only (not the AFLW-Frontal subset).
  paper = None if split == 'frontal' else report_lib.paper_reference(dataset, split)
  report_lib.write_report(out_dir, rep, paper)
  log.info('eval %s: %d images, NME (%s) %.4f, mean shape %.4f, CNN only %.4f -> %s',
           os.path.basename(out_dir), rep['num_images'], normalization,
           _nan(rep['nme']), _nan(rep[f'mean_shape_nme_{normalization}']),
           _nan(rep[f'cnn_nme_{normalization}']), out_dir)
  return rep


def evaluate_splits(model, config, test_sets: dict, workdir: str, mean_shape,
                    step: int | None = None) -> dict:
  """Evaluates every held-out split into ``workdir/eval/<split>/report.json``.

  Args:
    test_sets: ``{split: (records, num_invalid)}`` from
      :func:`jaxalign.training.data_setup.test_sets`.

  Returns:
    ``{split: report}``.
  """
  dataset = (config.data.get('test_source', '') or config.data.get('source', '')) or None
  reports = {}
  for split, (records, num_invalid) in test_sets.items():
    reports[split] = evaluate(model, config, records, os.path.join(workdir, 'eval', split),
                              mean_shape, step=step, dataset=dataset, split=split,
                              num_invalid=num_invalid)
  return reports


def _nan(value) -> float:
  return np.nan if value is None else value


def _predict(model, config, records, complete: bool, convention: str) -> dict:
  """:func:`inference.predict_records`, with the unstable points completed in
  ``convention`` (the inference helper completes in the 2D convention only)."""
  batch = int(config.eval.batch_size)
  if not complete or convention == '2d':
    return inference.predict_records(model, config, records, batch, complete=complete)
  out = inference.predict_records(model, config, records, batch, complete=False)
  valid = out['valid']
  if valid.any():
    stable = out['stable'][valid]
    backend = config.eval.completion_backend
    result = inference.complete_points(
        stable, config_lib.model_scheme(config), backend, flip=out['flipped'][valid],
        train_dir=config.data.get('train_dir') or None,
        **({} if backend == 'gaussian' else {'convention': convention}))
    completed = np.asarray(result.points, np.float32)
    out['points'][valid] = np.where(np.isnan(stable), completed, stable)
  return out


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
