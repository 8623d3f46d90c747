"""The evaluation report: metrics from prediction arrays, ``report.json``, ``report.md``, npz.

Everything here works on arrays (``pred``, ``gt`` of shape (N, L, 2) in image pixels, ``boxes``
(N, 4)), so it is tested without a model. NMEs are fractions (0.0277, not 2.77 %); the markdown
shows percentages. All metric arithmetic is :mod:`jaxalign.metrics`'.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxalign import atomic
from jaxalign import metrics
from jaxalign import schemes as schemes_lib
from jaxalign.evaluation import plots

# Signed yaw bins of 15 degrees over [-90, 90] (eos sign: > 0 right-looking), as in the paper's
# Figure 5b (faces outside [-90, 90] are left out of the bins).
YAW_BINS = tuple(range(-90, 91, 15))
# |yaw| bins of the pose experiment (issue 8).
ABS_YAW_BINS = (0, 30, 60, 90)
FAILURE_THRESHOLDS = (0.08, 0.10)
CED_MAX_ERROR = 0.10

# The paper's results (Li et al., BMVC 2019, Tables 1-3), NME as fractions, keyed by
# (data set, split). COFW-68 and 300-W use the inter-ocular normaliser unless said otherwise;
# AFLW-Full is normalised by the face box.
PAPER_RESULTS: dict[tuple[str, str | None], dict[str, float]] = {
    ('300w', 'common'): {'nme_inter_ocular': 0.0248},
    ('300w', 'challenge'): {'nme_inter_ocular': 0.0398},
    ('300w', 'full'): {'nme_inter_ocular': 0.0277, 'nme_inter_pupil': 0.0387},
    ('cofw68', None): {'nme_inter_ocular': 0.0355},
    ('aflw', None): {'nme_bbox': 0.0151},
}

_DATASET_ALIASES = {
    '300w': '300w', 'ibug300w': '300w', 'w300': '300w',
    'cofw68': 'cofw68', 'cofw': 'cofw68',
    'aflw': 'aflw', 'aflwfull': 'aflw', 'aflw19': 'aflw',
}


def paper_reference(dataset: str | None, split: str | None = None) -> dict[str, float] | None:
  """The paper's numbers for a data set / split, or None when the paper has none."""
  if not dataset:
    return None
  key = _DATASET_ALIASES.get(re.sub(r'[^a-z0-9]', '', dataset.lower()))
  if key is None:
    return None
  split = (split or '').lower() or None
  if (key, split) in PAPER_RESULTS:
    return dict(PAPER_RESULTS[(key, split)])
  if key != '300w' and (key, None) in PAPER_RESULTS:   # single-test-split data sets
    return dict(PAPER_RESULTS[(key, None)])
  return None


def _mean(x) -> float | None:
  """Mean over the finite entries (NaN: not evaluable; inf: a non-finite prediction, counted
  separately as ``num_nonfinite``), None when there is none."""
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def _finite_or_none(x) -> float | None:
  return float(x) if np.isfinite(x) else None


def yaw_bins(nme, yaw, edges: Sequence[float] = YAW_BINS, absolute: bool = False
             ) -> list[dict[str, Any]]:
  """Per-bin mean NME: a list of ``{yaw_min, yaw_max, count, nme}`` (``nme`` None if empty).

  Bins are [min, max), the last one closed (:func:`jaxalign.metrics.nme_by_pose`); faces with
  an unknown (NaN) yaw or outside the edges are left out. With ``absolute`` the bins are over
  |yaw|.
  """
  rows = metrics.nme_by_pose(nme, yaw, edges, absolute=absolute)
  return [{'yaw_min': float(r['yaw_min']), 'yaw_max': float(r['yaw_max']),
           'count': int(r['count']),
           'nme': float(r['nme']) if r['count'] and np.isfinite(r['nme']) else None}
          for r in rows]


def per_image_errors(pred, gt, boxes, scheme=schemes_lib.IBUG68, left_looking=None
                     ) -> dict[str, np.ndarray]:
  """(N,) NME per image under each normaliser and over the SL / UL groups (fractions).

  The SL group of a face is the stable set of its true looking direction
  (:func:`jaxalign.metrics.stable_mask_by_direction`: the mirror set for a left-looking face,
  ``left_looking`` (N,) bool); without ``left_looking`` the fixed ``scheme.stable`` set.
  """
  scheme = schemes_lib.get_scheme(scheme)
  if left_looking is None:
    sl = np.asarray(scheme.stable_mask(), bool)[None]
  else:
    sl = metrics.stable_mask_by_direction(left_looking, scheme)
  out = {
      'nme_inter_ocular': metrics.nme(pred, gt, 'inter_ocular', scheme=scheme),
      'nme_inter_pupil': metrics.nme(pred, gt, 'inter_pupil', scheme=scheme),
      'nme_bbox': metrics.nme(pred, gt, 'bbox', scheme=scheme, boxes=boxes),
      'nme_stable': metrics.nme(pred, gt, 'inter_ocular', scheme=scheme,
                                indices=np.broadcast_to(sl, np.shape(gt)[:2])),
      'nme_unstable': metrics.nme(pred, gt, 'inter_ocular', scheme=scheme,
                                  indices=np.broadcast_to(~sl, np.shape(gt)[:2])),
  }
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def compute_report(pred, gt, boxes, *, scheme=schemes_lib.IBUG68, yaw=None,
                   yaw_source: str | None = None, errors: Mapping[str, np.ndarray] | None = None
                   ) -> dict[str, Any]:
  """The metrics part of ``report.json``.

  Args:
    pred, gt: (N, L, 2) image pixels.
    boxes: (N, 4) face boxes (for the box normaliser).
    scheme: landmark scheme of the points.
    yaw: (N,) degrees per image (NaN where unknown) for ``nme_by_yaw``.
    yaw_source: where the yaws come from ("annotations", "3dmm", "annotations+3dmm").
    errors: per-image errors from :func:`per_image_errors` (computed when None).

  Returns:
    A dict with ``num_images``, ``nme_inter_ocular``, ``nme_inter_pupil``, ``nme_bbox``,
    ``fr_0.08``, ``fr_0.10``, ``auc_0.08``, ``auc_0.10`` (inter-ocular), ``nme_stable``,
    ``nme_unstable``, ``nme_by_yaw``, ``nme_by_abs_yaw``, ``yaw_source``, ``scheme``.
  """
  scheme = schemes_lib.get_scheme(scheme)
  pred = np.asarray(pred, np.float32)
  gt = np.asarray(gt, np.float32)
  if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
    raise ValueError(f'pred and gt must both have shape (N, L, 2); got {pred.shape}, {gt.shape}')
  if pred.shape[1] != scheme.num_points:
    raise ValueError(f'{scheme.name} has {scheme.num_points} points, the arrays have '
                     f'{pred.shape[1]}')
  errors = dict(errors) if errors is not None else per_image_errors(pred, gt, boxes, scheme)
  io_nme = errors['nme_inter_ocular']
  report: dict[str, Any] = {
      'num_images': int(len(pred)), 'scheme': scheme.name,
      'num_nonfinite': int(np.isinf(np.asarray(io_nme)).sum()),
      'num_unevaluable': int(np.isnan(np.asarray(io_nme)).sum())}
  for key in ('nme_inter_ocular', 'nme_inter_pupil', 'nme_bbox'):
    report[key] = _mean(errors[key])
  for t in FAILURE_THRESHOLDS:
    report[f'fr_{t:.2f}'] = _finite_or_none(metrics.failure_rate(io_nme, t))
  for t in FAILURE_THRESHOLDS:
    report[f'auc_{t:.2f}'] = _finite_or_none(metrics.auc(io_nme, t))
  report['nme_stable'] = _mean(errors['nme_stable'])
  report['nme_unstable'] = _mean(errors['nme_unstable'])
  if yaw is None:
    yaw = np.full(len(pred), np.nan)
  yaw = np.asarray(yaw, np.float64)
  report['nme_by_yaw'] = yaw_bins(io_nme, yaw)
  report['nme_by_abs_yaw'] = yaw_bins(io_nme, yaw, ABS_YAW_BINS, absolute=True)
  report['yaw_source'] = yaw_source
  return report


def stage2_metrics(cnn, cnn1, gt, boxes, left_looking, flipped, yaw,
                   scheme=schemes_lib.IBUG68) -> dict[str, Any]:
  """Whether the cascade refines: CNN2's stable points against CNN1's on the same points.

  Args:
    cnn: (N, L, 2) the CNN pair's points (CNN2's where it predicts, CNN1's elsewhere).
    cnn1: (N, L, 2) CNN1's points.
    gt, boxes: ground truth and normalising boxes.
    left_looking: (N,) bool, the true looking direction (picks each face's SL set).
    flipped: (N,) bool, whether the model mirrored the face.
    yaw: (N,) true yaw in degrees (NaN unknown), for ``flip_accuracy_by_yaw``.

  Returns:
    ``cnn1_nme_stable`` (inter-ocular), ``cnn1_nme_stable_bbox`` and ``cnn_nme_stable_bbox``
    (box-normalised means), ``stage2_gain`` (1 - CNN2 / CNN1 mean box-normalised SL error),
    ``stage2_win_rate`` (fraction of faces where CNN2's SL error is below CNN1's) and
    ``flip_accuracy_by_yaw`` (per |yaw| bin: faces, fraction mirrored as their true direction).
  """
  scheme = schemes_lib.get_scheme(scheme)
  sl = metrics.stable_mask_by_direction(left_looking, scheme)
  e2 = metrics.nme(cnn, gt, 'bbox', scheme=scheme, boxes=boxes, indices=sl)
  e1 = metrics.nme(cnn1, gt, 'bbox', scheme=scheme, boxes=boxes, indices=sl)
  io1 = metrics.nme(cnn1, gt, 'inter_ocular', scheme=scheme, indices=sl)
  ok = np.isfinite(e1) & np.isfinite(e2)
  m1, m2 = _mean(e1[ok]), _mean(e2[ok])
  correct = (np.asarray(flipped, bool) == np.asarray(left_looking, bool)).astype(np.float64)
  yaw = np.asarray(yaw, np.float64)
  by_yaw = [{'yaw_min': b['yaw_min'], 'yaw_max': b['yaw_max'], 'count': b['count'],
             'accuracy': b['nme']} for b in yaw_bins(correct, yaw, ABS_YAW_BINS, absolute=True)]
  return {
      'cnn1_nme_stable': _mean(io1),
      'cnn1_nme_stable_bbox': m1,
      'cnn_nme_stable_bbox': m2,
      'stage2_gain': None if not m1 or m2 is None else 1.0 - m2 / m1,
      'stage2_win_rate': float(np.mean(e2[ok] < e1[ok])) if ok.any() else None,
      'flip_accuracy': _mean(correct),
      'flip_accuracy_by_yaw': by_yaw,
  }


def ced_curve(errors, max_error: float = CED_MAX_ERROR, num: int = 201):
  """(thresholds, fractions) of the cumulative error distribution up to ``max_error``."""
  return metrics.ced(errors, max_threshold=max_error, num=num)


def save_predictions(path: str | os.PathLike, pred, gt, boxes, **extra) -> None:
  """Writes ``predictions.npz``: ``pred``, ``gt`` (N, L, 2) float32 image pixels, ``boxes``
  (N, 4) and any per-image extras (yaw, per-image NME, image names...)."""
  arrays = {'pred': np.asarray(pred, np.float32), 'gt': np.asarray(gt, np.float32),
            'boxes': np.asarray(boxes, np.float32)}
  for k, v in extra.items():
    arrays[k] = np.asarray(v)
  with atomic.atomic_open(path, 'wb') as f:   # a kill leaves the old file or the new one
    np.savez_compressed(f, **arrays)


def load_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a ``predictions.npz`` into a dict of arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no predictions file')
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def _pct(value) -> str:
  return '-' if value is None else f'{100 * value:.2f}'


def _fmt_time(value) -> str:
  return '-' if value is None else f'{value:.3g}'


def format_markdown(report: Mapping[str, Any], paper: Mapping[str, float] | None = None) -> str:
  """``report.md``: the report as tables (percentages), with the paper's numbers beside ours."""
  title = report.get('dataset') or 'evaluation'
  lines = [f'# Evaluation: {title}', '']
  facts = [('run', report.get('workdir')), ('checkpoint step', report.get('checkpoint_step')),
           ('images', report.get('num_images')),
           ('images skipped', report.get('num_skipped')),
           ('completion backend', report.get('completion_backend')),
           ('landmark scheme', report.get('scheme')),
           ('yaw from', report.get('yaw_source'))]
  lines += ['| | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in facts if v is not None]
  lines += ['', '## Accuracy (NME in % of the normaliser; AUC and failure rate in %)', '']
  rows = [('NME inter-ocular', 'nme_inter_ocular'), ('NME inter-pupil', 'nme_inter_pupil'),
          ('NME box', 'nme_bbox'), ('NME stable landmarks (inter-ocular)', 'nme_stable'),
          ('NME unstable landmarks (inter-ocular)', 'nme_unstable'),
          ('failure rate @ 0.08 (inter-ocular)', 'fr_0.08'),
          ('failure rate @ 0.10 (inter-ocular)', 'fr_0.10'),
          ('AUC @ 0.08 (inter-ocular)', 'auc_0.08'), ('AUC @ 0.10 (inter-ocular)', 'auc_0.10')]
  if paper:
    lines += ['| metric | ours | paper |', '|---|---:|---:|']
    lines += [f'| {name} | {_pct(report.get(key))} | {_pct(paper.get(key))} |'
              for name, key in rows]
    lines += ['', 'Paper: Li et al., "Pose-aware face alignment based on CNN and 3DMM", '
              'BMVC 2019.']
  else:
    lines += ['| metric | ours |', '|---|---:|']
    lines += [f'| {name} | {_pct(report.get(key))} |' for name, key in rows]
  how = [w for w, key in (('fused with CNN1', 'completion_fusion'),
                          ('mixed with CNN1', 'completion_blend')) if report.get(key)]
  stages = [('the full pipeline' + (f' (completion {" and ".join(how)})' if how else ''),
             'nme_inter_ocular', 'nme_bbox'),
            ('the CNN pair alone (CNN2\'s SLs, CNN1\'s other points)', 'cnn_nme_inter_ocular',
             'cnn_nme_bbox'),
            ('the completion before the mix with CNN1', 'unblended_nme_inter_ocular',
             'unblended_nme_bbox'),
            ('the completion without fusion' + (' or mix' if report.get('completion_blend')
                                                else ''),
             'unfused_nme_inter_ocular', 'unfused_nme_bbox'),
            ('the training mean shape', 'mean_shape_nme_inter_ocular', 'mean_shape_nme_bbox')]
  stages = [s for s in stages if report.get(s[1]) is not None]
  if len(stages) > 1:
    lines += ['', '## Stage by stage (NME in %)', '', '| points | inter-ocular | box |',
              '|---|---:|---:|']
    lines += [f'| {name} | {_pct(report.get(a))} | {_pct(report.get(b))} |'
              for name, a, b in stages]
  if report.get('stage2_gain') is not None:
    lines += ['', '## The cascade: CNN2 against CNN1 on the stable points', '',
              '| metric | value |', '|---|---:|',
              f'| CNN1 SL NME, inter-ocular (%) | {_pct(report.get("cnn1_nme_stable"))} |',
              f'| CNN1 SL NME, box (%) | {_pct(report.get("cnn1_nme_stable_bbox"))} |',
              f'| CNN2 SL NME, box (%) | {_pct(report.get("cnn_nme_stable_bbox"))} |',
              f'| stage-2 gain (1 - CNN2/CNN1, box) | {report["stage2_gain"]:.3f} |',
              f'| stage-2 win rate (faces) | {_pct(report.get("stage2_win_rate"))} |',
              f'| flip accuracy (%) | {_pct(report.get("flip_accuracy"))} |',
              f'| CNN2 input outside the photo (%) | '
              f'{_pct(report.get("cnn2_outside_fraction"))} |']
    bins = report.get('flip_accuracy_by_yaw') or []
    if bins:
      lines += ['', '| abs(yaw) | faces | flip accuracy (%) |', '|---|---:|---:|']
      lines += [f'| {b["yaw_min"]}-{b["yaw_max"]} | {b["count"]} | {_pct(b["accuracy"])} |'
                for b in bins]
  for title_, key in (('NME by yaw', 'nme_by_yaw'), ('NME by |yaw|', 'nme_by_abs_yaw')):
    bins = report.get(key) or []
    if not any(b['count'] for b in bins):
      continue
    lines += ['', f'## {title_} (degrees, inter-ocular NME in %)', '',
              '| yaw | images | NME |', '|---|---:|---:|']
    lines += [f'| {plots.bin_label(b["yaw_min"], b["yaw_max"], i == len(bins) - 1)} | '
              f'{b["count"]} | {_pct(b["nme"])} |' for i, b in enumerate(bins)]
  timings = report.get('timings') or {}
  if timings:
    lines += ['', '## Timings (seconds unless said)', '', '| what | value |', '|---|---:|']
    lines += [f'| {k} | {_fmt_time(v)} |' for k, v in timings.items()]
  lines += ['', 'Files: `report.json`, `predictions.npz` (pred, gt, boxes in image pixels), '
            '`ced.png`, `nme_by_pose.png`, `best_worst.png`.', '']
  return '\n'.join(lines)


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any],
                 paper: Mapping[str, float] | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes ``report.json`` and ``report.md`` into ``out_dir`` (created); returns their paths."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  obj = dict(report)
  if paper:
    obj['paper'] = dict(paper)
  json_path, md_path = out / 'report.json', out / 'report.md'
  atomic.write_text(json_path, json.dumps(obj, indent=2, allow_nan=False) + '\n')
  atomic.write_text(md_path, format_markdown(report, paper))
  return json_path, md_path


def read_report(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a ``report.json`` (a file or the folder holding it)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / 'report.json'
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no evaluation report')
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not a valid report ({e.msg})') from None
