"""Numbers, plot and ``pose.md`` of the pose experiment (:mod:`jaxalign.experiments.pose`).

Every number is recomputed from the runs' ``predictions.npz`` (what ``python -m
jaxalign.evaluate --compare`` evaluated): NME normalised by the inter-ocular distance (outer eye
corners), per |yaw| bin [0, 30), [30, 60), [60, 90] and overall, and over the stable (SL) and
unstable (UL) points of the paper's default split (the same points for every arm, so arm 6's
alternative splits are compared on equal terms). Arms are summarised by the mean and the sample
standard deviation over their seeds.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jaxalign import metrics
from jaxalign import schemes as schemes_lib
from jaxalign.experiments import pose_config
from jaxalign.morphable import pose as pose_lib

BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))
BIN_KEYS = ('0-30', '30-60', '60-90')
COLUMNS = ('all', *BIN_KEYS, 'sl', 'ul')
# Secondary: NME normalised by the ground truth's landmark box (less distorted at large yaw,
# where the inter-ocular distance shrinks towards zero).
BOX_COLUMNS = ('box_all', *(f'box_{k}' for k in BIN_KEYS))


def run_metrics(pred, gt, yaw, scheme=schemes_lib.IBUG68) -> dict[str, float | None]:
  """Mean NME (fractions) of one run: overall, per |yaw| bin, over SLs and ULs."""
  scheme = schemes_lib.get_scheme(scheme)
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  signed_yaw = np.asarray(yaw, np.float64)
  yaw = np.abs(signed_yaw)
  io = metrics.nme(pred, gt, 'inter_ocular', scheme=scheme)
  out = {'all': _mean(io), 'count': int(len(io))}
  for key, (lo, hi) in zip(BIN_KEYS, BINS):
    sel = (yaw >= lo) & ((yaw < hi) if hi < 90 else (yaw <= hi))
    out[key] = _mean(io[sel])
    out[f'count_{key}'] = int(sel.sum())
  box = metrics.nme(pred, gt, 'bbox', scheme=scheme)
  out['box_all'] = _mean(box)
  for key, (lo, hi) in zip(BIN_KEYS, BINS):
    sel = (yaw >= lo) & ((yaw < hi) if hi < 90 else (yaw <= hi))
    out[f'box_{key}'] = _mean(box[sel])
  sl, ul = _split_errors(pred, gt, signed_yaw, scheme)
  out['sl'], out['ul'] = _mean(sl), _mean(ul)
  for key, (lo, hi) in zip(BIN_KEYS, BINS):
    sel = (yaw >= lo) & ((yaw < hi) if hi < 90 else (yaw <= hi))
    out[f'ul_{key}'] = _mean(ul[sel]) if sel.any() else None
  return out


def _split_errors(pred, gt, yaw, scheme) -> tuple[np.ndarray, np.ndarray]:
  """(N,) NME over each face's SLs and ULs, the SLs being the visible half: the scheme's
  stable set for a right-looking (or frontal) face, its mirror for a left-looking one
  (:func:`jaxalign.morphable.pose.is_left_looking` of the true yaw), i.e. the points CNN2
  predicts and the completion keeps."""
  left = pose_lib.is_left_looking(yaw)
  mirrored = scheme.flip_index_array()
  out = []
  for right_set in (np.asarray(scheme.stable), np.asarray(scheme.unstable)):
    e_right = metrics.nme(pred, gt, 'inter_ocular', scheme=scheme, indices=right_set)
    e_left = metrics.nme(pred, gt, 'inter_ocular', scheme=scheme,
                         indices=np.sort(mirrored[right_set]))
    out.append(np.where(left, e_left, e_right))
  return out[0], out[1]


def _mean(x) -> float | None:
  x = np.asarray(x, np.float64)
  x = x[np.isfinite(x)]
  return float(x.mean()) if x.size else None


def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
  """{'mean', 'std' (sample, None with one seed), 'n'} over the seeds' values."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  return {'mean': float(v.mean()) if v.size else None,
          'std': float(v.std(ddof=1)) if v.size > 1 else None, 'n': int(v.size)}


def oracle(train_dir: str, test_dir: str, backends=('jax', 'eos', 'gaussian')) -> dict:
  """UL error of each completion fed the ground-truth SLs of the test faces (flipped by their
  true yaw): what the completion does when the CNN is perfect."""
  from jaxalign.data import records as records_lib  # pylint: disable=g-import-not-at-top
  from jaxalign import inference  # pylint: disable=g-import-not-at-top
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  scheme = schemes_lib.IBUG68
  recs, _ = records_lib.scan_folder(test_dir, num_points=68)
  gt = np.stack([np.asarray(r.points, np.float32) for r in recs])
  yaw = np.array([np.nan if r.yaw is None else r.yaw for r in recs], np.float64)
  flip = pose_lib.is_left_looking(yaw)
  keep = np.where(flip[:, None], scheme.stable_mask()[scheme.flip_index_array()][None],
                  scheme.stable_mask()[None])
  sls = np.where(keep[..., None], gt, np.nan).astype(np.float32)
  out = {}
  for backend in backends:
    try:
      if backend == 'gaussian':
        res = inference.complete_points(sls, scheme, 'gaussian', flip=flip,
                                        train_dir=train_dir)
      else:
        # One eos process: forking a process that runs JAX threads can deadlock.
        res = completion.complete(sls, backend=backend, flip=flip,
                                  workers=1 if backend == 'eos' else None)
      out[backend] = run_metrics(res.points, gt, yaw)
    except Exception as e:  # pylint: disable=broad-except
      out[backend] = {'error': f'{type(e).__name__}: {e}'}
  return out


def summarise(root, info: dict, compare_dir, test_dir: str, size: str) -> dict[str, Any]:
  """Per-run and per-arm numbers of an experiment (JSON-able)."""
  from jaxalign.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  comparison = json.loads((pathlib.Path(compare_dir) / 'comparison.json').read_text())
  by_workdir = {str(pathlib.Path(r['workdir']).resolve()): r for r in comparison['runs']
                if r.get('workdir')}
  runs = {}
  for name, v in info.items():
    row = {'arm': v['arm'], 'seed': v['seed'], 'error': v['error'],
           'workdir': v['workdir'], 'train_s': v['seconds'], 'resumed': v.get('resumed', False)}
    comp = by_workdir.get(str(pathlib.Path(v['workdir']).resolve()))
    if v['error'] is None and comp is None:
      row['error'] = 'not in the comparison'
    if row['error'] is None:
      preds = report_lib.load_predictions(pathlib.Path(comp['eval_dir']) / 'predictions.npz')
      row.update(run_metrics(preds['pred'], preds['gt'], preds['yaw']))
      row['completion_backend'] = comp.get('completion_backend')
      row['eval_dir'] = comp['eval_dir']
    runs[name] = row
  arms = {}
  for arm in pose_config.ARMS:
    rows = [r for r in runs.values() if r['arm'] == arm and r['error'] is None]
    if not rows and not any(r['arm'] == arm for r in runs.values()):
      continue
    a = pose_config.ARMS[arm]
    arms[arm] = {'number': a.number, 'title': a.title, 'reuses': a.reuses,
                 'seeds': [r['seed'] for r in rows],
                 'failed': [n for n, r in runs.items() if r['arm'] == arm and r['error']]}
    for col in COLUMNS + BOX_COLUMNS + tuple(f'ul_{k}' for k in BIN_KEYS):
      arms[arm][col] = aggregate([r.get(col) for r in rows])
  root = pathlib.Path(root)
  s = pose_config.get_size(size)
  summary = {'size': size, 'sizes': dict(s.__dict__), 'mismatch': pose_config.MISMATCH,
             'runs': runs, 'arms': arms, 'compare_dir': str(compare_dir),
             'stable_alternatives': {k: list(pose_config.stable_set(v))
                                     for k, v in pose_config.STABLE_ALTERNATIVES.items()},
             'test_counts': next(({k: r[f'count_{k}'] for k in BIN_KEYS} for r in runs.values()
                                  if r['error'] is None), {})}
  summary['plain_is_cnn1'] = plain_is_cnn1(runs)
  summary['paired'] = paired_differences(runs)
  summary['oracle'] = oracle(str(root / 'data' / 'train'), test_dir)
  return summary


def paired_differences(runs: dict, a: str = 'plain', b: str = 'pose_aware',
                       num_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
  """Face-by-face differences ``b - a`` of the per-face NME, pooled over the seeds both arms
  ran, per |yaw| bin and overall, with a 95 % bootstrap confidence interval over faces.

  Both arms are evaluated on the same test faces in the same order (the experiment's one test
  folder), so face ``i`` of one run is face ``i`` of the other: the comparison is paired and
  the shared per-face difficulty cancels. Box-normalised NME is the headline at large yaw,
  where the inter-ocular distance collapses.

  Returns:
    ``{'bbox'|'inter_ocular': {bin: {'mean', 'lo', 'hi', 'n'}}, 'seeds': [...]}`` (fractions);
    empty when no seed has both arms.
  """
  from jaxalign.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  by_seed = {}
  for r in runs.values():
    if r.get('error') is None and r.get('eval_dir') and r['arm'] in (a, b):
      by_seed.setdefault(r['seed'], {})[r['arm']] = r['eval_dir']
  diffs = {'bbox': [], 'inter_ocular': []}
  yaws, seeds = [], []
  for s, dirs in sorted(by_seed.items()):
    if a not in dirs or b not in dirs:
      continue
    pa = report_lib.load_predictions(pathlib.Path(dirs[a]) / 'predictions.npz')
    pb = report_lib.load_predictions(pathlib.Path(dirs[b]) / 'predictions.npz')
    if pa['gt'].shape != pb['gt'].shape or not np.allclose(pa['gt'], pb['gt'], equal_nan=True):
      continue   # not the same faces: no pairing
    for norm in diffs:
      diffs[norm].append(metrics.nme(pb['pred'], pb['gt'], norm) -
                         metrics.nme(pa['pred'], pa['gt'], norm))
    yaws.append(np.abs(np.asarray(pa['yaw'], np.float64)))
    seeds.append(s)
  if not seeds:
    return {}
  yaw = np.concatenate(yaws)
  rng = np.random.default_rng(seed)
  out: dict[str, Any] = {'seeds': seeds}
  for norm, parts in diffs.items():
    d = np.concatenate(parts)
    rows = {}
    for key, (lo, hi) in (('all', (0.0, 90.0)),) + tuple(zip(BIN_KEYS, BINS)):
      sel = (yaw >= lo) & ((yaw < hi) if hi < 90 else (yaw <= hi)) & np.isfinite(d)
      x = d[sel]
      if not x.size:
        rows[key] = {'mean': None, 'lo': None, 'hi': None, 'n': 0}
        continue
      boot = x[rng.integers(0, x.size, (num_boot, x.size))].mean(1)
      rows[key] = {'mean': float(x.mean()), 'lo': float(np.quantile(boot, 0.025)),
                   'hi': float(np.quantile(boot, 0.975)), 'n': int(x.size)}
    out[norm] = rows
  return out


def _last_metrics(workdir: str) -> dict | None:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.is_file():
    return None
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1]) if lines else None


def plain_is_cnn1(runs: dict) -> bool | None:
  """Whether every plain run's final loss equals its seed's pose-aware CNN1 loss exactly (the
  same initialisation and batches: the plain network is then the first stage itself). None
  when no pair was trained."""
  pairs = []
  for r in runs.values():
    if r['arm'] != 'plain' or r['error']:
      continue
    twin = runs.get(f'pose_aware_s{r["seed"]}')
    if twin is None or twin['error']:
      continue
    a, b = _last_metrics(r['workdir']), _last_metrics(twin['workdir'])
    if a is None or b is None:
      continue
    pairs.append(a.get('step') == b.get('step') and a.get('loss_cnn1') == b.get('loss_cnn1'))
  return all(pairs) if pairs else None


# ------------------------------------------------------------------------------------- output
def _pct(stat) -> str:
  if stat is None or stat.get('mean') is None:
    return '-'
  m = 100 * stat['mean']
  return f'{m:.2f} ± {100 * stat["std"]:.2f}' if stat.get('std') is not None else f'{m:.2f}'


def _p(x) -> str:
  return '-' if x is None else f'{100 * x:.2f}'


def plot(summary: dict, path: str | os.PathLike) -> None:
  """NME (all points) and UL NME by |yaw| bin for every arm: mean over seeds, std bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  x = np.array([15.0, 45.0, 75.0])
  arms = summary['arms']
  for i, (arm, a) in enumerate(arms.items()):
    style = '-' if arm in ('pose_aware', 'plain') else '--'
    width = 2.5 if arm in ('pose_aware', 'plain') else 1.2
    offset = (i - len(arms) / 2) * 0.6
    for ax, prefix in zip(axes, ('', 'ul_')):
      means = [a[prefix + k]['mean'] for k in BIN_KEYS]
      stds = [a[prefix + k]['std'] or 0.0 for k in BIN_KEYS]
      if all(m is None for m in means):
        continue
      y = np.array([np.nan if m is None else 100 * m for m in means])
      ax.errorbar(x + offset, y, yerr=100 * np.asarray(stds), marker='o', linestyle=style,
                  linewidth=width, capsize=3,
                  label=f'({a["number"]}) {arm} [{len(a["seeds"])} seed'
                        f'{"s" if len(a["seeds"]) != 1 else ""}]')
  for ax, title in zip(axes, ('NME, all 68 points', 'NME, unstable points (UL)')):
    ax.set_xticks(x, ['0-30', '30-60', '60-90'])
    ax.set_xlabel('|yaw| (degrees)')
    ax.set_ylabel('NME (% inter-ocular)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, loc='upper left')
  fig.suptitle(f'Pose experiment ({summary["size"]} size): mean over seeds, bars = std')
  fig.tight_layout()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _difference(a: dict, b: dict, key: str) -> tuple[float | None, float | None]:
  """(mean of b - mean of a, standard error of the difference) in fractions."""
  sa, sb = a.get(key) or {}, b.get(key) or {}
  if sa.get('mean') is None or sb.get('mean') is None:
    return None, None
  d = sb['mean'] - sa['mean']
  if sa.get('std') is None:
    return d, None
  # A one-seed arm borrows the reference arm's seed-to-seed spread.
  std_b = sb['std'] if sb.get('std') is not None else sa['std']
  return d, math.sqrt(sa['std'] ** 2 / sa['n'] + std_b ** 2 / sb['n'])


def _verdict(d, se) -> str:
  if d is None:
    return 'not measured'
  word = 'higher' if d > 0 else 'lower'
  if se is None:
    return f'{abs(100 * d):.2f} points {word} (no seed spread to judge it by)'
  clear = abs(d) > 2 * se
  return (f'{abs(100 * d):.2f} points {word} (standard error of the difference '
          f'{100 * se:.2f}; {"more" if clear else "less"} than twice it, so '
          f'{"a clear" if clear else "not a clear"} difference)')


def conclusions(summary: dict) -> list[str]:
  """The plain-language findings, derived from the numbers."""
  arms = summary['arms']
  out = []
  paired = (summary.get('paired') or {}).get('bbox', {}).get('60-90')
  if paired and paired['mean'] is not None:
    better = paired['hi'] < 0
    worse = paired['lo'] > 0
    out.append(f'**Paired, box-normalised, |yaw| 60-90** ({paired["n"]} face-runs): pose-aware '
               f'minus plain is {100 * paired["mean"]:+.2f} points (95 % interval '
               f'{100 * paired["lo"]:+.2f} to {100 * paired["hi"]:+.2f}): the pose-aware '
               'pipeline is ' + ('better' if better else 'worse' if worse else
                                 'not distinguishable from the plain network') + ' there.')
  pa, pl = arms.get('pose_aware'), arms.get('plain')
  if pa and pl and pa['all']['mean'] is not None and pl['all']['mean'] is not None:
    d_large, se_large = _difference(pl, pa, '60-90')
    d_front, se_front = _difference(pl, pa, '0-30')
    d_all, se_all = _difference(pl, pa, 'all')
    front = (summary.get('paired') or {}).get('bbox', {}).get('0-30')
    if paired and paired['mean'] is not None and front and front['mean'] is not None:
      # The paired face-by-face intervals decide (the seeds' spread is the weaker test).
      claim = paired['hi'] < 0 and not front['lo'] > 0
      basis = ('by the paired box-normalised comparison: better at |yaw| 60-90 and not worse '
               'at 0-30' if claim else 'by the paired box-normalised comparison at |yaw| 60-90 '
               'and 0-30')
    else:
      holds_large = d_large is not None and d_large < 0 and (se_large is None
                                                              or -d_large > 2 * se_large)
      hurts_front = d_front is not None and d_front > 0 and (se_front is None
                                                              or d_front > 2 * se_front)
      claim = holds_large and not hurts_front
      basis = 'by the seeds\' spread'
    out.append(f'**The claim {"holds" if claim else "does not hold"} here** ({basis}). Across '
               f'seeds (unpaired, inter-ocular), the pose-aware pipeline\'s NME at |yaw| 60-90 '
               f'is {_verdict(d_large, se_large)}; at |yaw| 0-30 it is '
               f'{_verdict(d_front, se_front)}; overall it is {_verdict(d_all, se_all)}.')
    o = summary.get('oracle', {}).get('jax', {})
    if o.get('ul') is not None and pa['ul']['mean'] is not None:
      out.append(
          f'Where the error comes from: with the ground-truth SLs the JAX completion\'s UL '
          f'error is {_p(o["ul"])} % (|yaw| 60-90: {_p(o.get("ul_60-90"))} %); fed the CNN\'s '
          f'SLs (SL error {_p(pa["sl"]["mean"])} %) it is {_p(pa["ul"]["mean"])} %, against '
          f'the plain network\'s {_p(pl["ul"]["mean"])} % on the same points. '
          + ('The completion itself is not the limit: the CNN\'s SL error, amplified by the '
             'fit, is. At this size the CNN is the bottleneck, and the comparison says more '
             'about small networks trained briefly than about the paper\'s setting.'
             if pa['ul']['mean'] > 1.5 * o['ul'] else
             'The completion\'s own error (the model mismatch) is a large part of the UL '
             'error: a better CNN would not remove it.'))
  orc = summary.get('oracle', {})
  done = {k: v for k, v in orc.items() if v.get('ul') is not None}
  if len(done) > 1:
    best = min(done, key=lambda k: done[k]['ul'])
    out.append('Completion alone (ground-truth SLs, no CNN): UL error ' + ', '.join(
        f'{k} {_p(v["ul"])} % (|yaw| 60-90: {_p(v.get("ul_60-90"))} %)'
        for k, v in done.items()) + f'; {best} is the most accurate completion on these faces'
        + (' — the 3DMM has no advantage over a 2D shape model fitted to the training shapes '
           'here.' if best == 'gaussian' else '.'))
  for arm, a in arms.items():
    if arm in ('pose_aware', 'plain') or not pa or a['all']['mean'] is None:
      continue
    d_all, se_all = _difference(pa, a, 'all')
    d_large, se_large = _difference(pa, a, '60-90')
    out.append(f'Arm {a["number"]} ({arm}: {a["title"]}): overall {_verdict(d_all, se_all)} '
               f'than arm 1; at |yaw| 60-90 {_verdict(d_large, se_large)}.')
  return out


def markdown(summary: dict, plot_name: str) -> str:
  s = summary['sizes']
  m = summary['mismatch']
  arms = summary['arms']
  lines = [
      '# Pose experiment: does the pose-aware pipeline beat a plain CNN on large poses?', '',
      '*Generated by `python -m jaxalign.experiments.pose --size '
      f'{summary["size"]}`; every number below comes from that run.*', '',
      '## Question', '',
      'The paper (Li et al., BMVC 2019, Figure 5b) claims that, compared with a plain ResNet-50 '
      'regressing all 68 points, the pose-aware pipeline (flip left-looking faces, a second CNN '
      'on the 34 stable landmarks, 3DMM completion of the other 34) reduces the error on '
      'large-pose faces without hurting semi-frontal ones. We test that on synthetic faces '
      'whose pose we control, with ablations of each ingredient.', '',
      '## Protocol', '',
      f'* **Data.** `python -m jaxalign.synthesize` faces (Surrey Face Model, yaw uniform in '
      f'-90..90, pitch and roll in -20..20 degrees), {s["num_train"]} training faces (seed '
      f'{pose_config.TRAIN_SEED}) and {s["num_test"]} test faces (seed '
      f'{pose_config.TEST_SEED}: no face in both), rendered at {s["image_size"]} px. Test faces '
      f'per |yaw| bin: ' + ', '.join(f'{k}: {v}' for k, v in summary['test_counts'].items())
      + '.',
      '* **Model mismatch.** Rendering and fitting with the very same model would favour the '
      '3DMM stage, so the rendered faces differ from what the fitters can represent: '
      f'(a) shape coefficients {m["tail_start"]}-62 are drawn with standard deviation '
      f'{m["tail_shape_sigma"]} (the others 0.9) — the JAX completion fits only the first 30 '
      f'components, eos all 63; (b) a smooth random per-vertex deformation of '
      f'{m["deformation_mm"]} mm RMS (sum of 12 Gaussian bumps of width '
      f'{m["deformation_scale_mm"]} mm on random vertices, random 3D directions) that no '
      f'fitter\'s shape space contains; (c) expression strengths (total blendshape weight) up '
      f'to {m["expression_strength"][1]} instead of 1.0; (d) Gaussian annotation noise of '
      f'{100 * m["annotation_noise"]:.1f} % of the face box side on the 2D ground truth '
      '(training and test). See `jaxalign/data/synthetic.py` (`SynthConfig`).',
      f'* **Networks and training (same for every arm).** ResNet-{s["depth"]} with '
      f'{s["width"]} stem channels (the standard network has 64) at {s["input_size"]} px input, '
      f'for CNN1 and CNN2 of the pose-aware pipeline and for the plain baseline; '
      f'{s["num_steps"]} steps of batch {s["batch_size"]}, wing loss, SGD momentum 0.9, '
      f'learning rate {s["learning_rate"]:g} dropping to {s["final_learning_rate"]:g} after '
      f'{s["decay_steps"]} steps, the paper\'s augmentation. Seeds (initialisation and batch '
      f'order) {list(s["seeds"])} for arms 1 and 2, {list(s["ablation_seeds"])} for the '
      'trained ablations 3, 4 and 6.' + (
          ' **These are CPU sizes**, far from the paper\'s (ResNet-50 at 224 px, 180,000 '
          'steps, ImageNet-size data); `--size paper` runs the same code at the paper\'s size '
          'on a GPU.' if summary['size'] == 'quick' else '')
      + (' In these runs the plain network ends with exactly the loss of the pose-aware '
         'pipeline\'s CNN1 of the same seed (same initialisation and batches): the plain '
         'baseline *is* the first stage, so arms 1 and 2 differ only by the second stage '
         '(flip, CNN2, completion).' if summary.get('plain_is_cnn1') else ''),
      '* **Arms.** (1) pose-aware; (2) plain ResNet on 68 points; (3) no flip of left-looking '
      'faces; (4) uniform instead of pose-balanced batches; (5) eos instead of the JAX fitter '
      'for the completion; (6) three other choices of the 4 right-side SLs; (7) a 2D Gaussian '
      'shape model instead of the 3DMM (`jaxalign/morphable/statistical.py`: per pose bin, ULs '
      'as the conditional mean given the SLs, fitted on the training shapes). Arms 5 and 7 '
      'evaluate arm 1\'s trained networks (same weights, all its seeds) with the other '
      'completion, which isolates the completion stage. Arm 6 alternatives (right-side points '
      'added to the same 30 left/midline points): ' + '; '.join(
          f'`{k}` = {",".join(map(str, pose_config.STABLE_ALTERNATIVES[k]))}'
          for k in pose_config.STABLE_ALTERNATIVES) + ' (paper: 22, 35, 42, 54).',
      '* **Evaluation protocol (every arm; the embedded default\'s).** Test boxes disturbed '
      'like a face detector\'s (`eval.box_jitter`: shift 0.05, scale 0.07, 10 degrees, '
      'deterministic per face, the same for every arm). Pose-aware arms: the completion fused '
      'with CNN1\'s unstable points and mixed with them (`eval.completion_fusion`, '
      '`eval.completion_blend`), both weighted by CNN1\'s residuals on '
      f'{s.get("num_val", 300)} validation faces (own seed, the mismatch of the training '
      'faces) measured at the end of each run; never the test faces.',
      '* **Metric.** NME = mean point-to-point error / inter-ocular distance (outer eye '
      'corners 36, 45), in %, by |yaw| bin of the test face\'s true yaw; SL / UL = the '
      'paper\'s default 34 / 34 split for every arm (arm 6 included, so all arms are scored on '
      'the same points), SL = the visible half: the stable set, mirrored for a left-looking face. '
      'Mean ± sample standard deviation over seeds (no ± with one seed; a one-seed arm is judged '
      'against arm 1\'s seed spread). '
      'Large-yaw NME is large for every method partly because the inter-ocular distance '
      'shrinks as the face turns.',
      f'* **Comparison.** `{summary["command"]}` (tables and plots in `'
      f'{summary["compare_dir"]}`'
      + (f'; `{ROOT_TOKEN}` is the experiment\'s `--root` folder'
         if ROOT_TOKEN in str(summary.get('command', '')) else '') +
      '); the numbers here are recomputed from the same `predictions.npz` files.', '',
      '## Results', '',
      f'![NME by pose of every arm]({plot_name})', '',
      '| arm | seeds | NME all | 0-30 | 30-60 | 60-90 | SL | UL |',
      '|---|---:|---:|---:|---:|---:|---:|---:|']
  for arm, a in arms.items():
    cells = [f'({a["number"]}) {arm}', str(len(a['seeds']))]
    cells += [_pct(a[c]) for c in COLUMNS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', 'UL error by |yaw| (%):', '', '| arm | UL 0-30 | UL 30-60 | UL 60-90 |',
            '|---|---:|---:|---:|']
  for arm, a in arms.items():
    lines.append(f'| ({a["number"]}) {arm} | ' + ' | '.join(
        _pct(a[f'ul_{k}']) for k in BIN_KEYS) + ' |')
  if any(a.get('box_all', {}).get('mean') is not None for a in arms.values()):
    lines += ['', 'The same predictions, NME normalised by the ground truth\'s landmark box '
              '(sqrt(width x height); not the issue\'s metric, shown because the inter-ocular '
              'distance shrinks towards zero as |yaw| nears 90 and inflates that bin), %:', '',
              '| arm | box all | box 0-30 | box 30-60 | box 60-90 |', '|---|---:|---:|---:|---:|']
    for arm, a in arms.items():
      lines.append(f'| ({a["number"]}) {arm} | ' + ' | '.join(
          _pct(a.get(c)) for c in BOX_COLUMNS) + ' |')
  orc = summary.get('oracle', {})
  if orc:
    lines += ['', 'Completion from the **ground-truth** SLs (no CNN; the completion\'s own error '
              'under the model mismatch), UL NME (%):', '',
              '| completion | UL all | UL 0-30 | UL 30-60 | UL 60-90 |', '|---|---:|---:|---:|---:|']
    for backend, r in orc.items():
      if 'error' in r:
        lines.append(f'| {backend} | failed: {r["error"]} | | | |')
      else:
        lines.append(f'| {backend} | {_p(r["ul"])} | ' + ' | '.join(
            _p(r.get(f'ul_{k}')) for k in BIN_KEYS) + ' |')
  failed = [f'`{n}` ({r["error"]})' for n, r in summary['runs'].items() if r['error']]
  if failed:
    lines += ['', '**Failed runs** (left out of the tables): ' + '; '.join(failed) + '.']
  paired = summary.get('paired') or {}
  if paired.get('bbox'):
    lines += ['', 'Paired, face by face (pose-aware minus plain on the same test faces, seeds '
              f'{paired["seeds"]} pooled; mean and 95 % bootstrap interval, NME points; '
              'negative = pose-aware better):', '',
              '| normaliser | all | 0-30 | 30-60 | 60-90 |', '|---|---|---|---|---|']
    for norm, label in (('bbox', 'box (headline at 60-90)'), ('inter_ocular', 'inter-ocular')):
      cells = []
      for key in ('all',) + BIN_KEYS:
        r = paired[norm][key]
        cells.append('-' if r['mean'] is None else
                     f'{100 * r["mean"]:+.2f} [{100 * r["lo"]:+.2f}, {100 * r["hi"]:+.2f}] '
                     f'(n={r["n"]})')
      lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Conclusion', '']
  lines += [f'* {c}' for c in conclusions(summary)]
  lines += ['', '## Per-run numbers', '',
            '| run | completion | NME all | 0-30 | 30-60 | 60-90 | SL | UL | train s |',
            '|---|---|---:|---:|---:|---:|---:|---:|---:|']
  for name, r in summary['runs'].items():
    if r['error']:
      lines.append(f'| {name} | failed | | | | | | | {r["train_s"]:.0f} |')
      continue
    lines.append(f'| {name} | {r.get("completion_backend") or "-"} | '
                 + ' | '.join(_p(r.get(c)) for c in COLUMNS) + f' | {r["train_s"]:.0f} |')
  t = summary.get('timings', {})
  if t:
    resumed = [n for n, r in summary['runs'].items() if r.get('resumed')]
    train = sum(r['train_s'] for r in summary['runs'].values()
                if np.isfinite(r.get('train_s', np.nan)))
    from jaxalign.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    lines += ['', f'Time on this machine ({mesh_lib.host_cores()} cores; 1-minute load average '
              f'{os.getloadavg()[0]:.1f} when the file was written): training '
              f'{train / 60:.1f} min in all ("train '
              's" above, compilation included; copied runs: the copy). The invocation that '
              f'wrote this file took {t["total_s"] / 60:.1f} min (data {t["data_s"]:.0f} s, '
              f'evaluation {t["eval_s"]:.0f} s)' + (
                  f'; it reused {len(resumed)} runs trained earlier (their training time is '
                  'the one measured then) and the evaluations of unchanged runs.'
                  if resumed else '.')]
  lines.append('')
  return '\n'.join(lines)


ROOT_TOKEN = '$ROOT'


def relative_paths(summary, root):
  """``summary`` with every path under an absolute experiment ``root`` written as
  ``$ROOT/...`` (the ``--root`` folder), so that the generated docs hold no path of the machine
  that ran the experiment; a relative root is kept as it is."""
  root = str(root).rstrip(os.sep)
  if not os.path.isabs(root):
    return summary

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return type(x)(fix(v) for v in x)
    if isinstance(x, str) and root in x:
      return x.replace(root + os.sep, ROOT_TOKEN + '/').replace(root, ROOT_TOKEN)
    return x

  return fix(summary)


def write(out: str | os.PathLike, summary: dict, root=None) -> list[str]:
  """Writes ``pose.md``, ``pose_nme_by_pose.png`` and ``pose.json`` into ``out``; paths under
  the experiment's ``root`` as ``$ROOT/...`` when it is absolute (:func:`relative_paths`)."""
  if root is not None:
    summary = relative_paths(summary, root)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  png = out / 'pose_nme_by_pose.png'
  plot(summary, png)
  md = out / 'pose.md'
  md.write_text(markdown(summary, png.name), encoding='utf-8')
  js = out / 'pose.json'
  js.write_text(json.dumps(summary, indent=1, default=str) + '\n', encoding='utf-8')
  return [str(md), str(png), str(js)]
