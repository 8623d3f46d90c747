"""Several evaluated runs side by side: one table, one CED plot and one NME-by-pose plot.

Input: evaluation folders written by :func:`jaxalign.evaluation.runner.evaluate` (each with
``report.json`` and ``predictions.npz``). The per-image errors are recomputed from the
predictions (the same metrics as the reports), so the curves of all runs are drawn the same way.
Output folder: ``comparison.json``, ``comparison.md``, ``ced.png``, ``nme_by_pose.png``.

When the runs were evaluated on the same faces, every run after the first is also compared with
the first face by face (:func:`paired_differences`): the mean per-face NME difference with a
95 % bootstrap interval, overall and per |yaw| bin, inter-ocular and box-normalised (the
headline at large yaw, where the inter-ocular distance collapses). The yaw of a face is the
rigid 3DMM fit of its ground truth (the same for every run).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxalign import metrics
from jaxalign import schemes as schemes_lib
from jaxalign.evaluation import plots
from jaxalign.evaluation import report as report_lib

# |yaw| bins of the paired comparison (degrees; the last one closed).
PAIRED_BINS = (('all', 0.0, 90.0), ('0-30', 0.0, 30.0), ('30-60', 30.0, 60.0),
               ('60-90', 60.0, 90.0))
COLUMNS = (('NME io', 'nme_inter_ocular'), ('NME ip', 'nme_inter_pupil'), ('NME box', 'nme_bbox'),
           ('NME SL', 'nme_stable'), ('NME UL', 'nme_unstable'), ('FR@0.08', 'fr_0.08'),
           ('FR@0.10', 'fr_0.10'), ('AUC@0.08', 'auc_0.08'), ('AUC@0.10', 'auc_0.10'))


def _labels(eval_dirs: Sequence[pathlib.Path], reports: Sequence[dict]) -> list[str]:
  """Run names: the workdir's folder name, made unique with the data set or the path."""
  names = []
  for d, r in zip(eval_dirs, reports):
    workdir = r.get('workdir')
    names.append(pathlib.Path(workdir).name if workdir else d.name)
  if len(set(names)) < len(names):
    names = [f'{n} ({r.get("dataset") or d.name})' for n, d, r in zip(names, eval_dirs, reports)]
  if len(set(names)) < len(names):
    names = [str(d) for d in eval_dirs]
  return names


def compare(eval_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            labels: Sequence[str] | None = None) -> dict[str, Any]:
  """Writes the comparison of evaluated runs into ``out_dir``.

  Args:
    eval_dirs: evaluation folders (each with ``report.json`` and ``predictions.npz``).
    out_dir: output folder (created).
    labels: names of the runs in the table and legends (default: their workdirs' names).

  Returns:
    The ``comparison.json`` object: ``runs`` (one row per run: label, eval_dir, the report's
    summary numbers and ``nme_by_abs_yaw``), and the output file names.

  Raises:
    FileNotFoundError / ValueError: naming the folder whose report or predictions are missing
      or malformed.
  """
  dirs = [pathlib.Path(d) for d in eval_dirs]
  if not dirs:
    raise ValueError('nothing to compare: no evaluation folders given')
  reports = [report_lib.read_report(d) for d in dirs]
  names = list(labels) if labels is not None else _labels(dirs, reports)
  if len(names) != len(dirs):
    raise ValueError(f'{len(names)} labels for {len(dirs)} runs')
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  curves, pose_series, rows, all_preds = {}, {}, [], []
  for name, d, rep in zip(names, dirs, reports):
    preds = report_lib.load_predictions(d / 'predictions.npz')
    for key in ('pred', 'gt', 'boxes'):
      if key not in preds:
        raise ValueError(f'{d / "predictions.npz"}: no {key!r} array')
    all_preds.append(preds)
    scheme = schemes_lib.get_scheme(rep.get('scheme', 'ibug68'))
    errors = report_lib.per_image_errors(preds['pred'], preds['gt'], preds['boxes'], scheme)
    io_nme = errors['nme_inter_ocular']
    x, y = report_lib.ced_curve(io_nme)
    auc = rep.get('auc_0.08')
    curves[f'{name} (AUC@0.08 {100 * auc:.1f}%)' if auc is not None else name] = (x, y)
    yaw = preds.get('yaw', np.full(len(io_nme), np.nan))
    pose_series[name] = report_lib.yaw_bins(io_nme, yaw, report_lib.ABS_YAW_BINS, absolute=True)
    row = {'label': name, 'eval_dir': str(d), 'workdir': rep.get('workdir'),
           'dataset': rep.get('dataset'), 'checkpoint_step': rep.get('checkpoint_step'),
           'completion_backend': rep.get('completion_backend'),
           'num_images': rep.get('num_images')}
    row.update({key: rep.get(key) for _, key in COLUMNS})
    row['nme_by_abs_yaw'] = pose_series[name]
    rows.append(row)
  plots.plot_ced(curves, out / 'ced.png', title='CED (inter-ocular)')
  plots.plot_nme_by_pose(pose_series, out / 'nme_by_pose.png', title='NME by |yaw|')
  paired = paired_against_first(names, all_preds, schemes_lib.get_scheme(
      reports[0].get('scheme', 'ibug68')))
  result = {'runs': rows, 'paired': paired,
            'files': ['comparison.md', 'ced.png', 'nme_by_pose.png']}
  (out / 'comparison.json').write_text(json.dumps(result, indent=2) + '\n', encoding='utf-8')
  (out / 'comparison.md').write_text(format_markdown(rows, paired), encoding='utf-8')
  return result


def paired_differences(diff, abs_yaw, num_boot: int = 2000, seed: int = 0,
                       bins=PAIRED_BINS) -> dict[str, dict[str, Any]]:
  """Mean of per-face differences with a 95 % bootstrap interval, overall and per |yaw| bin.

  Args:
    diff: (N,) per-face differences (e.g. NME of run b minus NME of run a on face i);
      non-finite entries are left out.
    abs_yaw: (N,) |yaw| in degrees of each face (NaN: only in 'all').
    num_boot, seed: bootstrap resamples over faces and their generator's seed.
    bins: ``(key, lo, hi)`` triples; [lo, hi), the bin ending at 90 closed.

  Returns:
    ``{key: {'mean', 'lo', 'hi', 'n'}}`` (None and n = 0 for an empty bin).
  """
  d = np.asarray(diff, np.float64)
  yaw = np.asarray(abs_yaw, np.float64)
  rng = np.random.default_rng(seed)
  rows = {}
  for key, lo, hi in bins:
    sel = np.isfinite(d)
    if key != 'all':
      sel &= (yaw >= lo) & ((yaw < hi) if hi < 90 else (yaw <= hi))
    x = d[sel]
    if not x.size:
      rows[key] = {'mean': None, 'lo': None, 'hi': None, 'n': 0}
      continue
    boot = x[rng.integers(0, x.size, (num_boot, x.size))].mean(1)
    rows[key] = {'mean': float(x.mean()), 'lo': float(np.quantile(boot, 0.025)),
                 'hi': float(np.quantile(boot, 0.975)), 'n': int(x.size)}
  return rows


def paired_against_first(names, preds, scheme) -> dict[str, Any] | None:
  """Each run after the first minus the first, face by face (:func:`paired_differences`), in
  inter-ocular and box-normalised NME; None unless at least two runs share the same faces
  (equal ground truth). The |yaw| of a face is the rigid 3DMM fit of its ground truth."""
  if len(preds) < 2:
    return None
  gt = preds[0]['gt']
  same = [i for i in range(1, len(preds)) if preds[i]['gt'].shape == gt.shape
          and np.allclose(preds[i]['gt'], gt, equal_nan=True)]
  if not same:
    return None
  from jaxalign.morphable import pose  # pylint: disable=g-import-not-at-top
  abs_yaw = np.abs(np.asarray(pose.estimate_pose(gt)[..., 0], np.float64)) \
      if scheme.num_points == 68 else np.full(len(gt), np.nan)
  base = {norm: metrics.nme(preds[0]['pred'], gt, norm, scheme)
          for norm in ('inter_ocular', 'bbox')}
  out = {'baseline': names[0], 'yaw_source': 'rigid 3DMM fit of the ground truth',
         'runs': {}}
  for i in same:
    out['runs'][names[i]] = {
        norm: paired_differences(metrics.nme(preds[i]['pred'], gt, norm, scheme) - base[norm],
                                 abs_yaw) for norm in base}
  return out


def _pct(v) -> str:
  return '-' if v is None else f'{100 * v:.2f}'


def format_markdown(rows: Sequence[dict[str, Any]], paired: dict | None = None) -> str:
  """The comparison tables: summary numbers (in %), NME by |yaw| (in %, with counts) and the
  paired differences against the first run (NME points, 95 % bootstrap interval)."""
  lines = ['# Comparison', '', 'NME, failure rate (FR) and AUC in %; inter-ocular unless said '
           '(ip: inter-pupil, box: face box; SL / UL: stable / unstable landmarks).', '']
  lines += ['| run | data | step | completion | images | ' + ' | '.join(c for c, _ in COLUMNS)
            + ' |', '|---|---|---:|---|---:|' + '---:|' * len(COLUMNS)]
  for r in rows:
    cells = [r['label'], str(r.get('dataset') or '-'), str(r.get('checkpoint_step') or '-'),
             str(r.get('completion_backend') or '-'), str(r.get('num_images') or '-')]
    cells += [_pct(r.get(key)) for _, key in COLUMNS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  bins = [(b['yaw_min'], b['yaw_max']) for b in rows[0]['nme_by_abs_yaw']] if rows else []
  if bins and any(b['count'] for r in rows for b in r['nme_by_abs_yaw']):
    lines += ['', '## NME by |yaw| (degrees; % with image count)', '',
              '| run | ' + ' | '.join(plots.bin_label(a, b, i == len(bins) - 1)
                                      for i, (a, b) in enumerate(bins)) + ' |',
              '|---|' + '---:|' * len(bins)]
    for r in rows:
      cells = [f'{_pct(b["nme"])} ({b["count"]})' for b in r['nme_by_abs_yaw']]
      lines.append(f'| {r["label"]} | ' + ' | '.join(cells) + ' |')
  if paired:
    keys = [k for k, _, _ in PAIRED_BINS]
    lines += ['', f'## Face by face, minus {paired["baseline"]} (NME points, 95 % bootstrap '
              'interval; |yaw| from the rigid 3DMM fit of the ground truth)', '',
              '| run | NME | ' + ' | '.join(keys) + ' |', '|---|---|' + '---|' * len(keys)]
    for label, by_norm in paired['runs'].items():
      for norm, rows_ in by_norm.items():
        cells = ['-' if r['mean'] is None else
                 f'{100 * r["mean"]:+.2f} [{100 * r["lo"]:+.2f}, {100 * r["hi"]:+.2f}] ({r["n"]})'
                 for r in (rows_[k] for k in keys)]
        lines.append(f'| {label} | {"box" if norm == "bbox" else "io"} | '
                     + ' | '.join(cells) + ' |')
  lines += ['', 'Plots: `ced.png`, `nme_by_pose.png`.', '']
  return '\n'.join(lines)
