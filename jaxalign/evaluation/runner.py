"""``evaluate(workdir, ...)``: the latest checkpoint of a run, the full pipeline, one data set.

The pipeline is :func:`jaxalign.inference.run_pipeline` (CNN pair, then the completion of the
unstable points); :func:`evaluate_records` is the one evaluator, shared by the end-of-run
evaluation (:func:`evaluate_splits`) and ``python -m jaxalign.evaluate`` (:func:`evaluate`).

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

from jaxalign import inference
from jaxalign import metrics
from jaxalign import schemes as schemes_lib
from jaxalign.data import pipeline
from jaxalign.data import records as records_lib
from jaxalign.evaluation import plots
from jaxalign.evaluation import report as report_lib
from jaxalign.prediction import face_boxes
from jaxalign.training import checkpointing
from jaxalign.training import config as config_lib
from jaxalign.training import data_setup

BACKENDS = inference.BACKENDS
# Split evaluated when ``--dataset NAME`` names no split.
DEFAULT_SPLITS = {'300w': 'full', 'cofw68': 'test', 'aflw': 'test', 'aflw2k3d': 'test',
                  'folder': 'all', 'the300w_lp': 'train'}


def implausible_shapes(cnn1, names, scheme) -> dict | None:
  """The faces on which CNN1 collapsed: its (N, L, 2) points fit no rigid 3D face (the rigid
  fit's RMS residual / point-box side above :data:`jaxalign.morphable.pose.MAX_RESIDUAL`,
  the threshold that rejects scattered points in detection). Such single faces move a run's
  mean NME by tenths of a point (docs/experiments/cpu_300w.md), so the report names them.

  Returns:
    ``{'max_residual', 'count', 'images'}`` (``names`` of the flagged faces, worst first), or
    None for a scheme without the 3D reference points (only iBUG-68 has them).
  """
  if scheme.name != schemes_lib.IBUG68.name:
    return None
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  try:
    reference = pose.reference_points(scheme=scheme)
  except (FileNotFoundError, OSError) as e:   # no 3DMM files: the count is optional
    logging.warning('cnn1_implausible not computed: %s', e)
    return None
  residual = pose.rigid_residual(np.asarray(cnn1, np.float64), reference)
  # A face without enough finite points (inf) was not decoded or not predicted: not a collapse.
  bad = np.isfinite(residual) & (residual > pose.MAX_RESIDUAL)
  order = np.flatnonzero(bad)[np.argsort(-residual[bad])]
  return {'max_residual': pose.MAX_RESIDUAL, 'count': int(bad.sum()),
          'images': [str(names[k]) for k in order]}


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
  test_source = config.data.test_source or config.data.source
  if dataset is None and test_source and config.data.test_splits:
    # A run trained on a registered data set: its first configured test split, described as
    # the end-of-run evaluation describes it (same folder, same numbers).
    split = config.data.test_splits[0]
    data_dir = data_dir or config.data.test_root or config.data.root
    if not data_dir:
      raise ValueError(f'the run\'s test set {test_source} has no folder: pass --data-dir')
    records, invalid = sources.get_source(test_source, data_dir, split)
    return records, invalid, _split_info(config, split)
  if dataset is None:
    root = default_test_dir(config, workdir)
    split = str(config.data.test_split or 'test')
    records, invalid = records_lib.scan_folder(root, scheme=config.model.scheme)
    info = dict(_split_info(config, split), root=str(root))
    return records, invalid, info
  if os.path.isdir(dataset) and data_dir is None:
    records, invalid = records_lib.scan_folder(dataset, scheme=config.model.scheme)
    return records, invalid, {'dataset': dataset, 'name': 'folder', 'split': 'all',
                              'tag': _tag(pathlib.Path(dataset).resolve().name),
                              'root': dataset, 'normalization': 'inter_ocular'}
  name, split = parse_dataset(dataset)
  info = sources.source_info(name)
  split = split or DEFAULT_SPLITS.get(name) or info.splits[-1]
  if not data_dir:
    raise ValueError(f'--dataset {dataset}: give the data set\'s folder with --data-dir (see '
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
  test_dir = str(config.data.test_dir or '')
  candidates = []
  if test_dir:
    candidates.append(pathlib.Path(test_dir))
    if workdir is not None and not candidates[0].is_absolute():
      candidates.append(pathlib.Path(workdir) / test_dir)
  for c in candidates:
    if c.is_dir():
      return c
  if config.data.synthetic.enabled and config.data.synthetic.num_test > 0:
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


def _finite_mean(x) -> float | None:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def _true_direction(records, gt, scheme, annotated) -> tuple[np.ndarray, np.ndarray]:
  """(left-looking (N,) bool, yaw (N,) degrees) of the faces as annotated: the annotated yaw
  where there is one, else the rigid-fit yaw of the ground-truth points (iBUG-68 only; other
  schemes: NaN, not left-looking)."""
  from jaxalign.morphable import pose as pose_lib  # pylint: disable=g-import-not-at-top
  yaw = np.array([np.nan if r.yaw is None else float(r.yaw) for r in records], np.float64)
  missing = ~np.asarray(annotated, bool)
  if missing.any() and scheme.name == 'ibug68':
    yaw[missing] = np.asarray(pose_lib.estimate_pose(gt[missing], scheme)[..., 0], np.float64)
  return pose_lib.is_left_looking(yaw), yaw


def evaluate_records(model, config, records, out_dir, info: dict, *, step: int | None = None,
                     workdir: str | None = None, mean_shape=None, completion: str | None = None,
                     batch_size: int | None = None, num_invalid: int = 0, grid_size: int = 5,
                     with_plots: bool = True) -> dict[str, Any]:
  """The one evaluator: the full pipeline (:func:`jaxalign.inference.run_pipeline`) on
  ``records`` against their ground truth; writes ``report.json``, ``report.md``,
  ``predictions.npz`` and the plots into ``out_dir``.

  The end-of-run evaluation and ``python -m jaxalign.evaluate`` both call this, so they give
  the same numbers. Besides :func:`jaxalign.evaluation.report.compute_report`'s metrics the
  report has ``nme`` (under ``primary_normalization``), ``cnn_nme_<norm>`` (the CNNs alone:
  CNN2's stable points, CNN1's others) and ``mean_shape_nme_<norm>`` (the training mean shape
  placed in each box; when ``mean_shape`` is given), for the inter-ocular and the primary
  normaliser.

  Args:
    model, config: the run (:class:`jaxalign.inference.Run`'s ``model`` and ``config``).
    info: :func:`resolve_dataset`'s description (``dataset``, ``name``, ``split``,
      ``normalization``).
    workdir: the run's folder: its completion tables (:meth:`jaxalign.inference.Completion
      .of_run`) and its name in the plots.
    completion: the completion backend (None: the run's); the convention is the records'
      own when they name one (AFLW2000-3D: '3d'), else the run's.
    num_invalid: files of the data set that could not be read (recorded).

  Raises:
    ValueError: no image could be decoded.
  """
  t_start = time.perf_counter()
  scheme = config_lib.model_scheme(config)
  from jaxalign.data import sources  # pylint: disable=g-import-not-at-top
  # The data set's jaw convention (AFLW2000-3D: '3d') decides the completion's on any run.
  completion = inference.Completion.of_run(config, workdir, completion,
                                           sources.records_convention(records))
  res = inference.run_pipeline(model, config, records, completion, batch_size)
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
  primary = info.get('normalization') or 'inter_ocular'
  # The box normaliser: the data set's face box where its protocol normalises by it (AFLW),
  # else the ground-truth landmarks' tight box. Saved as ``boxes`` so the npz reproduces it.
  if primary == 'bbox':
    norm_boxes = np.stack([np.asarray(r.box, np.float32) for r in kept])
  else:
    norm_boxes = np.stack([records_lib.landmark_box(r.points) for r in kept])
  yaw, annotated, yaw_source = _yaws(kept, res['yaw'][valid])
  true_left, true_yaw = _true_direction(kept, gt, scheme, annotated)
  errors = report_lib.per_image_errors(pred, gt, norm_boxes, scheme, left_looking=true_left)
  rep = report_lib.compute_report(pred, gt, norm_boxes, scheme=scheme, yaw=yaw,
                                  yaw_source=yaw_source, errors=errors)
  cnn = res['cnn_points'][valid]
  cnn1 = np.asarray(res['rough'], np.float32)[valid]
  flipped = np.asarray(res['flipped'], bool)[valid]
  if config.model.kind == 'pose_aware':
    rep.update(report_lib.stage2_metrics(cnn, cnn1, gt, norm_boxes, true_left, flipped,
                                         true_yaw, scheme))
    outside = res.get('cnn2_outside')
    rep['cnn2_outside_fraction'] = None if outside is None else _finite_mean(outside[valid])
  rep['cnn1_implausible'] = implausible_shapes(cnn1, [str(r.image) for r in kept], scheme)
  if res.get('ensemble_choice') is not None:
    # An ensemble's faces on which its members disagreed (one collapsed): each got one member.
    choice = np.asarray(res['ensemble_choice'])[valid]
    rep['ensemble_single_member'] = {
        'count': int((choice >= 0).sum()),
        'images': {str(r.image): int(c) for r, c in zip(kept, choice) if c >= 0}}
  baseline = None
  if mean_shape is not None:
    baseline = pipeline.shape_in_boxes(mean_shape, kept, pipeline.CropSpec.from_config(config))
  unfused = None if res.get('points_unfused') is None else res['points_unfused'][valid]
  unblended = None if res.get('points_unblended') is None else res['points_unblended'][valid]
  for norm in dict.fromkeys(('inter_ocular', 'bbox', primary)):
    rep[f'cnn_nme_{norm}'] = float(np.nanmean(metrics.nme(cnn, gt, norm, scheme=scheme,
                                                          boxes=norm_boxes)))
    if unfused is not None:
      # The same completion without CNN1's points in the fit (``nme`` is the fused one).
      rep[f'unfused_nme_{norm}'] = float(np.nanmean(metrics.nme(
          unfused, gt, norm, scheme=scheme, boxes=norm_boxes)))
    if unblended is not None:
      # The completion before its mix with CNN1's points (``nme`` is the mixed one).
      rep[f'unblended_nme_{norm}'] = float(np.nanmean(metrics.nme(
          unblended, gt, norm, scheme=scheme, boxes=norm_boxes)))
    if baseline is not None:
      rep[f'mean_shape_nme_{norm}'] = float(np.nanmean(metrics.nme(
          baseline, gt, norm, scheme=scheme, boxes=norm_boxes)))
  t_metrics = time.perf_counter()
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  report_lib.save_predictions(
      out_dir / 'predictions.npz', pred, gt, norm_boxes, input_boxes=input_boxes, yaw=yaw,
      yaw_annotated=annotated, flipped=flipped, true_left=true_left, true_yaw=true_yaw,
      cnn=cnn, cnn1=cnn1,
      images=np.array([str(r.image) for r in kept]), **errors)
  name = pathlib.Path(workdir).name if workdir else 'run'
  if with_plots:
    primary_errors = errors[f'nme_{primary}']
    label = {'inter_ocular': 'inter-ocular', 'bbox': 'box', 'inter_pupil': 'inter-pupil'}[primary]
    x, y = report_lib.ced_curve(primary_errors)
    plots.plot_ced({f'{name} (NME {100 * np.nanmean(primary_errors):.2f}%)': (x, y)},
                   out_dir / 'ced.png', xlabel=f'NME ({label})', title=f'CED: {info["dataset"]}')
    plots.plot_nme_by_pose({name: rep['nme_by_yaw']}, out_dir / 'nme_by_pose.png',
                           title=f'NME by yaw: {info["dataset"]}')

    def load_image(i):
      try:
        return pipeline.decode_image(kept[i].image)
      except ValueError:
        return None

    plots.plot_best_worst(load_image, pred, gt, norm_boxes, errors['nme_inter_ocular'],
                          out_dir / 'best_worst.png', k=grid_size, scheme=scheme,
                          names=[str(r.image) for r in kept])
  t_end = time.perf_counter()
  backend = res['backend']
  rep.update({
      'workdir': None if workdir is None else str(workdir),
      'dataset': info['dataset'], 'split': info.get('split'),
      'checkpoint_step': None if step is None else int(step),
      'model_kind': config.model.kind,
      'primary_normalization': primary,
      'nme': rep[f'nme_{primary}'],
      'completion': backend is not None,
      'completion_backend': backend,
      'completion_convention': completion.convention if backend in ('jax', 'eos') else None,
      'completion_error': res['completion_error'],
      'completion_fusion': res.get('points_unfused') is not None,
      'completion_blend': res.get('points_unblended') is not None,
      # CNN2's points moved by the held-out mean residual (eval.stable_shift), or None.
      'stable_shift': None if completion.stable_shift is None else list(completion.stable_shift),
      'num_completion_fallbacks': int(res['num_fallbacks']),
      'num_skipped': int(num_invalid) + int((~valid).sum()),
      'num_invalid_files': int(num_invalid),
      'box_jitter': config.eval.box_jitter.to_dict(),
      # Which boxes the faces were cropped around, with counts (face_boxes.box_counts).
      'boxes': info.get('boxes') or face_boxes.box_counts(records),
      'timings': {'cnn_s': res['timings']['cnn_s'],
                  'completion_s': res['timings']['completion_s'],
                  'faces_per_s': res['timings']['faces_per_s'],
                  'metrics_s': t_metrics - t_start - res['timings']['pipeline_s'],
                  'plots_s': t_end - t_metrics, 'total_s': t_end - t_start},
  })
  rep = _json_safe(rep)
  # The paper reports AFLW-Full only (not the AFLW-Frontal subset).
  paper = None if info.get('split') == 'frontal' else report_lib.paper_reference(
      info.get('name'), info.get('split'))
  report_lib.write_report(out_dir, rep, paper)
  logging.info('eval %s: %d images, NME (%s) %.4f, CNN only %.4f -> %s', info['dataset'],
               rep['num_images'], primary, rep['nme'] if rep['nme'] is not None else np.nan,
               rep[f'cnn_nme_{primary}'] or np.nan, out_dir)
  rep['out_dir'] = str(out_dir)
  if paper:
    rep['paper'] = paper
  return rep


def evaluate_splits(run, test_sets: dict, mean_shape=None) -> dict:
  """The end-of-run evaluation: every held-out split into ``WORKDIR/eval/<split>/``.

  Args:
    run: the trained :class:`jaxalign.inference.Run`.
    test_sets: ``{split: (records, num_invalid)}`` from
      :func:`jaxalign.training.data_setup.test_sets`.
    mean_shape: the training mean shape (default the run's, :attr:`Run.mean_shape`).

  Returns:
    ``{split: report}``.
  """
  mean_shape = run.mean_shape if mean_shape is None else mean_shape
  reports = {}
  for split, (records, num_invalid) in test_sets.items():
    info = _split_info(run.config, split)
    reports[split] = evaluate_records(
        run.model, run.config, records, pathlib.Path(run.workdir) / 'eval' / info['tag'], info,
        step=run.step, workdir=run.workdir, mean_shape=mean_shape, num_invalid=num_invalid)
  return reports


def _split_info(config, split: str) -> dict:
  """The description of one of the run's own held-out splits."""
  test_source = config.data.test_source or config.data.source
  if test_source and config.data.test_splits:
    from jaxalign.data import sources  # pylint: disable=g-import-not-at-top
    return {'dataset': f'{test_source}:{split}', 'name': test_source, 'split': split,
            'tag': _tag(split), 'root': str(config.data.test_root or config.data.root),
            'normalization': sources.source_info(test_source).normalization}
  return {'dataset': f'{split} ({config.data.test_dir})', 'name': None,
          'split': split, 'tag': _tag(split), 'root': str(config.data.test_dir),
          'normalization': str(config.eval.normalization)}


def evaluate(workdir: str | os.PathLike, dataset: str | None = None,
             completion: str | None = None,
             out: str | os.PathLike | None = None, data_dir: str | None = None,
             batch_size: int | None = None, grid_size: int = 5,
             boxes: str = 'auto') -> dict[str, Any]:
  """Evaluates a run's latest checkpoint on a data set and writes the report folder.

  Args:
    workdir: the training run.
    dataset: None (the run's held-out split), a folder, or ``NAME[:SPLIT]`` (with ``data_dir``).
    completion: completion backend, 'jax', 'eos' (3DMM), 'gaussian' (2D statistical) or
      'none'; None: the run's (:func:`jaxalign.inference.resolve_backend`).
    out: output folder (default ``WORKDIR/eval/<tag>``).
    data_dir: root of a named data set.
    batch_size: images per forward pass (default ``config.eval.batch_size``).
    grid_size: faces per row of the best/worst grid.
    boxes: the face boxes of a named data set (:data:`jaxalign.prediction.face_boxes.MODES`):
      'auto' (its box files where it has them, else the face detector on the photo, else the
      landmark box jittered like a detector's; the run's ``eval.box_jitter`` is then not
      applied again), 'detector', or 'landmarks' (the landmark boxes with the run's jitter,
      as the end-of-run evaluation). The run's own split always uses the latter.

  Returns:
    The ``report.json`` object (with ``out_dir`` added); its ``boxes`` counts the faces per
    kind of box.

  Raises:
    FileNotFoundError: no run, checkpoint or data set; ValueError: bad arguments or no usable
    image.
  """
  t_start = time.perf_counter()
  run = inference.Run.load(workdir)
  # The data set first (cheap, and its errors come before the model is restored).
  inference.resolve_backend(run.config, completion)
  records, invalid, info = resolve_dataset(run.config, dataset, data_dir, run.workdir)
  for bad in invalid:
    logging.warning('skipped %s: %s', bad.path, bad.reason)
  if not records:
    raise ValueError(f'no usable face in {info["dataset"]} ({len(invalid)} invalid files)')
  out_dir = pathlib.Path(out) if out is not None else pathlib.Path(run.workdir) / 'eval' / info['tag']
  config = run.config
  # The run's own test split keeps the end-of-run boxes (same numbers) unless --boxes says.
  own = (info['name'] == (config.data.test_source or config.data.source)
         and info['split'] in tuple(config.data.test_splits))
  if dataset is not None and info['name'] != 'folder' and (boxes != 'auto' or not own):
    records, config, info['boxes'] = face_boxes.for_evaluation(
        records, config, boxes, normalization=info['normalization'])
  run.model  # pylint: disable=pointless-statement   (restored here, timed as the load)
  t_load = time.perf_counter()
  rep = evaluate_records(run.model, config, records, out_dir, info, step=run.step,
                         workdir=run.workdir, mean_shape=run.mean_shape, completion=completion,
                         batch_size=batch_size, num_invalid=len(invalid), grid_size=grid_size)
  rep['timings']['load_s'] = t_load - t_start
  return rep


def compare_runs(workdirs, dataset: str | None = None, completion: str | None = None,
                 out: str | os.PathLike | None = None, data_dir: str | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
  """Evaluates each run (reusing an existing report of the same data set and backend) and
  writes one comparison (see :mod:`jaxalign.evaluation.compare`).

  The output folder defaults to ``compare/<tag>`` beside the first run.
  """
  from jaxalign.evaluation import compare  # pylint: disable=g-import-not-at-top
  eval_dirs, tag = [], None
  for workdir in workdirs:
    config = inference.Run.load(workdir).config
    if dataset is None:
      tag = _tag(str(config.data.test_split or 'test'))
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
    backend = inference.resolve_backend(config, completion)   # None: each run's own backend
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
  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()
