"""``evaluate(workdir, ...)``: the latest checkpoint of a run, the full pipeline, one data set.

Pipeline per face: crop around the data set's box as in training -> CNN1 -> spatial transform
(flip of left-looking faces) -> CNN2 -> stable points in image pixels
(:func:`jaxalign.training.inference.predict_records`) -> 3DMM completion of the unstable points
(:func:`jaxalign.morphable.completion.complete`, told which faces CNN1 flipped so that it keeps
the points CNN2 predicted). The plain baseline has no completion stage; its faces are still
fitted once to give a yaw where the annotations have none.

Output folder (default ``WORKDIR/eval/<data set tag>/``): ``report.json``, ``report.md``,
``predictions.npz``, ``ced.png``, ``nme_by_pose.png``, ``best_worst.png``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import time
from typing import Any

import numpy as np

from jaxalign import schemes as schemes_lib
from jaxalign.data import records as records_lib
from jaxalign.evaluation import plots
from jaxalign.evaluation import report as report_lib

BACKENDS = ('jax', 'eos', 'gaussian')   # 'gaussian': jaxalign.morphable.statistical
# Split evaluated when ``--dataset NAME`` names no split.
DEFAULT_SPLITS = {'300w': 'full', 'cofw68': 'test', 'aflw': 'test', 'aflw2k3d': 'test',
                  'folder': 'all', 'the300w_lp': 'train'}


def _tag(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_') or 'data'


def parse_dataset(spec: str) -> tuple[str, str | None]:
  """``NAME[:SPLIT]`` -> (name, split or None)."""
  name, _, split = spec.partition(':')
  if not name:
    raise ValueError(f'--dataset {spec!r}: expected NAME[:SPLIT], e.g. 300w:challenge')
  return name, split or None


def resolve_dataset(config, dataset: str | None = None, data_dir: str | None = None,
                    workdir: str | None = None):
  """The records to evaluate and their description.

  Args:
    config: the run's config.
    dataset: None (the run's own held-out split), a folder of images + ``.pts``, or
      ``NAME[:SPLIT]`` of a registered data set (:mod:`jaxalign.data.sources`), read from
      ``data_dir`` (a ``folder`` data set may give its folder as ``data_dir``).
    data_dir: root folder of the named data set.
    workdir: the run (relative synthetic-data paths in its config are tried against it too).

  Returns:
    (records, invalid, info) with info = {'dataset', 'name', 'split', 'tag', 'root',
    'normalization'}.

  Raises:
    ValueError / FileNotFoundError: naming the data set, split or folder.
  """
  from jaxalign.data import sources  # pylint: disable=g-import-not-at-top
  test_source = config.data.get('test_source', '') or config.data.get('source', '')
  if dataset is None and test_source and config.data.get('test_splits'):
    # A run trained on a registered data set: its first configured test split.
    dataset = f'{test_source}:{config.data.test_splits[0]}'
    data_dir = data_dir or config.data.get('test_root', '') or config.data.get('root', '')
  if dataset is None:
    root = default_test_dir(config, workdir)
    split = str(config.data.get('test_split', 'test') or 'test')
    records, invalid = records_lib.scan_folder(root, scheme=config.model.scheme)
    return records, invalid, {'dataset': f'{split} ({root})', 'name': None, 'split': split,
                              'tag': _tag(split), 'root': str(root),
                              'normalization': 'inter_ocular'}
  if os.path.isdir(dataset) and data_dir is None:
    records, invalid = records_lib.scan_folder(dataset, scheme=config.model.scheme)
    return records, invalid, {'dataset': dataset, 'name': 'folder', 'split': 'all',
                              'tag': _tag(pathlib.Path(dataset).resolve().name),
                              'root': dataset, 'normalization': 'inter_ocular'}
  name, split = parse_dataset(dataset)
  info = sources.source_info(name)
  split = split or DEFAULT_SPLITS.get(name) or info.splits[-1]
  if not data_dir:
    raise ValueError(f'--dataset {dataset}: give the data set\'s folder with --data_dir (see '
                     'docs/datasets.md), or pass a folder of images + .pts as --dataset')
  options = {'scheme': config.model.scheme} if name == 'folder' else {}
  records, invalid = sources.get_source(name, data_dir, split, **options)
  if info.scheme != config.model.scheme:
    raise ValueError(f'data set {name!r} uses the {info.scheme} landmarks but the run was '
                     f'trained on {config.model.scheme}')
  return records, invalid, {'dataset': f'{name}:{split}', 'name': name, 'split': split,
                            'tag': _tag(f'{name}_{split}'), 'root': str(data_dir),
                            'normalization': info.normalization}


def default_test_dir(config, workdir: str | None = None) -> pathlib.Path:
  """The run's held-out folder: ``config.data.test_dir`` (as saved, or relative to the run),
  else its synthetic test set (rendered again if the cache is gone)."""
  test_dir = str(config.data.get('test_dir') or '')
  candidates = []
  if test_dir:
    candidates.append(pathlib.Path(test_dir))
    if workdir is not None and not candidates[0].is_absolute():
      candidates.append(pathlib.Path(workdir) / test_dir)
  for c in candidates:
    if c.is_dir():
      return c
  synthetic = config.data.get('synthetic')
  if synthetic is not None and synthetic.get('enabled') and synthetic.get('num_test', 0) > 0:
    from jaxalign.training import data_setup  # pylint: disable=g-import-not-at-top
    _, rendered = data_setup.ensure_synthetic(config)
    if rendered and os.path.isdir(rendered):
      return pathlib.Path(rendered)
  if test_dir:
    raise FileNotFoundError(f'the run\'s held-out folder {test_dir} does not exist; pass '
                            '--dataset')
  raise ValueError('the run names no held-out data (config.data.test_dir is empty and it did '
                   'not train on synthetic data): pass --dataset')


def _yaws(records, fitted_yaw) -> tuple[np.ndarray, np.ndarray, str]:
  annotated = np.array([r.yaw is not None for r in records], bool)
  yaw = np.array([np.nan if r.yaw is None else float(r.yaw) for r in records], np.float64)
  fitted = np.asarray(fitted_yaw, np.float64) if fitted_yaw is not None else np.full(
      len(records), np.nan)
  yaw = np.where(annotated, yaw, fitted)
  source = ('annotations' if annotated.all() else '3dmm' if not annotated.any()
            else 'annotations+3dmm')
  return yaw, annotated, source


def run_backend(config, completion: str | None = None) -> str:
  """The completion backend of a run: ``completion``, or the run's
  ``config.eval.completion_backend`` when None (default 'jax')."""
  backend = completion or config.eval.get('completion_backend', 'jax') or 'jax'
  if backend not in BACKENDS:
    raise ValueError(f'unknown completion backend {backend!r}; expected one of {BACKENDS}')
  return backend


def run_pipeline(model, config, records, completion: str | None = 'jax',
                 batch_size: int | None = None) -> dict[str, Any]:
  """The full pipeline on records: CNN pair, then the 3DMM completion with its fit.

  Returns:
    dict with ``points`` (N, L, 2) final image-pixel landmarks, ``rough``, ``stable``,
    ``flipped``, ``boxes``, ``valid`` (from inference), ``yaw``/``pitch``/``roll`` (N,) of the
    fit (NaN where not fitted), ``shape_coeffs``/``expression_coeffs`` (N, K) / (N, E) or None,
    ``num_fallbacks`` (faces whose completion failed, their ULs from CNN1) and ``timings``.
  """
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxalign.training import inference  # pylint: disable=g-import-not-at-top
  completion = run_backend(config, completion)
  scheme = config_lib.model_scheme(config)
  n = len(records)
  batch_size = int(batch_size or config.eval.get('batch_size', 32))
  t0 = time.perf_counter()
  out = inference.predict_records(model, config, records, batch_size=batch_size, complete=False)
  t1 = time.perf_counter()
  valid = np.asarray(out['valid'], bool)
  plain = config.model.kind == 'plain'
  # The plain model's 68 points are fitted too (only for their yaw); the pose-aware model's
  # CNN2 points are completed.
  fit_input = out['rough'] if plain else out['stable']
  # The 3DMM reads iBUG-68 points; other schemes (AFLW-19) keep CNN1's unstable points.
  can_fit = scheme.name == 'ibug68'
  yaw = np.full(n, np.nan)
  pitch, roll = yaw.copy(), yaw.copy()
  shape_coeffs = expression_coeffs = None
  points = np.asarray(out['points'], np.float32).copy()
  num_fallbacks = 0
  sel = np.flatnonzero(valid)
  if not plain and not can_fit:
    points = np.where(np.isnan(out['stable']), out['rough'], out['stable']).astype(np.float32)
  if len(sel) and can_fit:
    # The plain model is fitted for its yaw only: a 3DMM gives one, the 2D model does not.
    backend = 'jax' if plain and completion == 'gaussian' else completion
    result = inference.complete_points(
        np.asarray(fit_input, np.float32)[sel], scheme, backend,
        train_dir=config.data.get('train_dir') or None,
        flip=None if plain else np.asarray(out['flipped'], bool)[sel])
    for name, arr in (('yaw', yaw), ('pitch', pitch), ('roll', roll)):
      arr[sel] = np.asarray(getattr(result, name), np.float64)
    k = np.asarray(result.shape_coeffs)
    e = np.asarray(result.expression_coeffs)
    shape_coeffs = np.full((n, k.shape[-1]), np.nan, np.float32)
    expression_coeffs = np.full((n, e.shape[-1]), np.nan, np.float32)
    shape_coeffs[sel], expression_coeffs[sel] = k, e
    if not plain:
      completed = np.asarray(result.points, np.float32)
      stable = np.asarray(out['stable'], np.float32)[sel]
      rough = np.asarray(out['rough'], np.float32)[sel]
      # Kept points are CNN2's; the others come from the fit, or from CNN1 where it failed.
      filled = np.where(np.isnan(stable), completed, stable)
      failed = ~np.asarray(result.ok, bool)[:, None] & np.isnan(stable).any(-1)
      bad = ~np.isfinite(filled).all(-1) | failed
      num_fallbacks = int(bad.any(-1).sum())
      if num_fallbacks:
        logging.warning('3DMM completion failed on %d faces; their unstable points are CNN1\'s',
                        num_fallbacks)
      points[sel] = np.where(bad[..., None], rough, filled)
  t2 = time.perf_counter()
  return dict(out, points=points, yaw=yaw, pitch=pitch, roll=roll, shape_coeffs=shape_coeffs,
              expression_coeffs=expression_coeffs, num_fallbacks=num_fallbacks,
              backend=completion if can_fit and not plain else None,
              timings={'cnn_s': t1 - t0, 'completion_s': t2 - t1, 'pipeline_s': t2 - t0,
                       'faces_per_s': n / (t2 - t0) if t2 > t0 and n else None})


def evaluate(workdir: str | os.PathLike, dataset: str | None = None,
             completion: str | None = None,
             out: str | os.PathLike | None = None, data_dir: str | None = None,
             batch_size: int | None = None, grid_size: int = 5) -> dict[str, Any]:
  """Evaluates a run's latest checkpoint on a data set and writes the report folder.

  Args:
    workdir: the training run.
    dataset: None (the run's held-out split), a folder, or ``NAME[:SPLIT]`` (with ``data_dir``).
    completion: completion backend, 'jax', 'eos' (3DMM) or 'gaussian' (2D statistical);
      None: the run's ``config.eval.completion_backend``.
    out: output folder (default ``WORKDIR/eval/<tag>``).
    data_dir: root of a named data set.
    batch_size: images per forward pass (default ``config.eval.batch_size``).
    grid_size: faces per row of the best/worst grid.

  Returns:
    The ``report.json`` object (with ``out_dir`` added).

  Raises:
    FileNotFoundError: no run, checkpoint or data set; ValueError: bad arguments or no usable
    image.
  """
  from jaxalign.training import inference  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  workdir = str(workdir)
  if completion is not None and completion not in BACKENDS:
    raise ValueError(f'unknown completion backend {completion!r}; expected one of {BACKENDS}')
  # The data set first (cheap, and its errors come before the model is restored).
  config = inference.load_config(workdir)
  records, invalid, info = resolve_dataset(config, dataset, data_dir, workdir)
  model, config, step = inference.load_run(workdir)
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  scheme = config_lib.model_scheme(config)
  completion = run_backend(config, completion)
  for bad in invalid:
    logging.warning('skipped %s: %s', bad.path, bad.reason)
  if not records:
    raise ValueError(f'no usable face in {info["dataset"]} ({len(invalid)} invalid files)')
  out_dir = pathlib.Path(out) if out is not None else pathlib.Path(workdir) / 'eval' / info['tag']
  t_load = time.perf_counter()
  res = run_pipeline(model, config, records, completion, batch_size)
  valid = np.asarray(res['valid'], bool)
  kept = [r for r, v in zip(records, valid) if v]
  for r, v in zip(records, valid):
    if not v:
      logging.warning('skipped %s: the image could not be decoded', r.image)
  if not kept:
    raise ValueError(f'no image of {info["dataset"]} could be decoded')
  pred = res['points'][valid]
  gt = np.stack([np.asarray(r.points, np.float32) for r in kept])
  input_boxes = np.asarray(res['boxes'], np.float32)[valid]
  # The box normaliser: the data set's face box where its protocol normalises by it (AFLW),
  # else the ground-truth landmarks' tight box. Saved as ``boxes`` so the npz reproduces it.
  if info['normalization'] == 'bbox':
    norm_boxes = np.stack([np.asarray(r.box, np.float32) for r in kept])
  else:
    norm_boxes = np.stack([records_lib.landmark_box(r.points) for r in kept])
  yaw, annotated, yaw_source = _yaws(kept, res['yaw'][valid])
  errors = report_lib.per_image_errors(pred, gt, norm_boxes, scheme)
  rep = report_lib.compute_report(pred, gt, norm_boxes, scheme=scheme, yaw=yaw,
                                   yaw_source=yaw_source, errors=errors)
  t_metrics = time.perf_counter()
  out_dir.mkdir(parents=True, exist_ok=True)
  report_lib.save_predictions(
      out_dir / 'predictions.npz', pred, gt, norm_boxes, input_boxes=input_boxes, yaw=yaw,
      yaw_annotated=annotated, flipped=np.asarray(res['flipped'], bool)[valid],
      images=np.array([r.image for r in kept]), **errors)
  primary = info['normalization']
  primary_errors = errors[f'nme_{primary}']
  label = {'inter_ocular': 'inter-ocular', 'bbox': 'box', 'inter_pupil': 'inter-pupil'}[primary]
  x, y = report_lib.ced_curve(primary_errors)
  plots.plot_ced({f'{pathlib.Path(workdir).name} (NME {100 * np.nanmean(primary_errors):.2f}%)':
                  (x, y)}, out_dir / 'ced.png', xlabel=f'NME ({label})',
                 title=f'CED: {info["dataset"]}')
  plots.plot_nme_by_pose({pathlib.Path(workdir).name: rep['nme_by_yaw']},
                         out_dir / 'nme_by_pose.png', title=f'NME by yaw: {info["dataset"]}')

  def load_image(i):
    from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
    try:
      return pipeline.decode_image(kept[i].image)
    except ValueError:
      return None

  plots.plot_best_worst(load_image, pred, gt, norm_boxes, errors['nme_inter_ocular'],
                        out_dir / 'best_worst.png', k=grid_size, scheme=scheme,
                        names=[r.image for r in kept])
  t_end = time.perf_counter()
  rep.update({
      'workdir': workdir, 'dataset': info['dataset'], 'split': info['split'],
      'checkpoint_step': int(step), 'model_kind': config.model.kind,
      'completion_backend': res['backend'],
      'num_skipped': len(invalid) + int((~valid).sum()),
      'num_completion_fallbacks': int(res['num_fallbacks']),
      'primary_normalization': primary,
      'timings': {'load_s': t_load - t_start, 'cnn_s': res['timings']['cnn_s'],
                  'completion_s': res['timings']['completion_s'],
                  'faces_per_s': res['timings']['faces_per_s'],
                  'metrics_s': t_metrics - t_load - res['timings']['pipeline_s'],
                  'plots_s': t_end - t_metrics, 'total_s': t_end - t_start},
  })
  paper = report_lib.paper_reference(info['name'], info['split'])
  report_lib.write_report(out_dir, rep, paper)
  rep['out_dir'] = str(out_dir)
  if paper:
    rep['paper'] = paper
  return rep


def compare_runs(workdirs, dataset: str | None = None, completion: str | None = None,
                 out: str | os.PathLike | None = None, data_dir: str | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
  """Evaluates each run (reusing an existing report of the same data set and backend) and
  writes one comparison (see :mod:`jaxalign.evaluation.compare`).

  The output folder defaults to ``compare/<tag>`` beside the first run.
  """
  from jaxalign.evaluation import compare  # pylint: disable=g-import-not-at-top
  from jaxalign.training import inference  # pylint: disable=g-import-not-at-top
  eval_dirs, tag = [], None
  for workdir in workdirs:
    config = inference.load_config(str(workdir))
    if dataset is None:
      tag = _tag(str(config.data.get('test_split', 'test') or 'test'))
    elif os.path.isdir(dataset) and data_dir is None:
      tag = _tag(pathlib.Path(dataset).resolve().name)
    else:
      name, split = parse_dataset(dataset)
      tag = _tag(f'{name}_{split or DEFAULT_SPLITS.get(name, "")}'.rstrip('_'))
    eval_dir = pathlib.Path(workdir) / 'eval' / tag
    existing = None
    if (eval_dir / 'report.json').is_file() and (eval_dir / 'predictions.npz').is_file():
      try:
        existing = report_lib.read_report(eval_dir)
      except ValueError:
        existing = None
    backend = run_backend(config, completion)   # None: each run's own backend
    fresh = (existing is not None and existing.get('completion_backend') in (backend, None)
             and existing.get('checkpoint_step') == _latest_step(workdir))
    if not fresh:
      evaluate(workdir, dataset, backend, eval_dir, data_dir, batch_size)
    eval_dirs.append(eval_dir)
  out_dir = pathlib.Path(out) if out is not None else (
      pathlib.Path(workdirs[0]).resolve().parent / 'compare' / (tag or 'data'))
  result = compare.compare(eval_dirs, out_dir)
  result['out_dir'] = str(out_dir)
  return result


def _latest_step(workdir) -> int | None:
  from jaxalign.training import checkpointing  # pylint: disable=g-import-not-at-top
  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()
