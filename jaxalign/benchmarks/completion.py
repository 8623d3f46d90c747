"""``python -m jaxalign.bench completion [--batch-size 256] [--json] [--tune] [--by-yaw]
[--real DIR...]``: 3DMM completion speed and accuracy, JAX backend vs eos, on the same faces.

``--fusion`` scores fused completion (:func:`jaxalign.morphable.completion.complete` with
``observed`` / ``weights``) on synthetic faces: observations = true points plus Gaussian noise of
a few levels (fractions of the inter-ocular distance, a stand-in for CNN1's points), weighted 0.5
or by :func:`~jaxalign.morphable.completion.fusion_weights` from the residuals of the same
noise on held-out faces (seed + 1).

``--real DIR...`` (folders or single files of ``.pts`` / ``.ljson`` 68-point faces, e.g.
``../shared/faces/real ../shared/faces/image_0010.pts``) scores the backends on real
annotations: ground-truth SLs in (their mirror for a left-looking face), the other points out,
inter-ocular NME over all completed points, the non-jaw and the jaw ones, per face (with the
estimated yaw), by |yaw| bin and on average. No synthetic face is involved. ``--real`` without a
folder reads the 300-W training faces of ``--data-dir`` (default ``../shared/300w``; ``--max-faces``
takes a fixed random subset, ``--eos-faces`` limits the slow eos backend to the first of them).
The backends that learn from annotations, ``gaussian`` (:mod:`jaxalign.morphable.statistical`),
``learned`` (:mod:`jaxalign.morphable.learned`) and ``learned_linear`` (the same without its
kernel part: the ridge baseline), are scored by ``--folds``-fold
cross-validation over the same faces (each fold completed by a model fitted on the others; the
learned one's pose switch gets the JAX 3DMM's points), or, with ``--learned FILE``, by a stored
model (:meth:`~jaxalign.morphable.learned.LearnedCompletion.to_dict` JSON). ``--prior-grid``
instead cross-validates the JAX fitter's prior (:func:`prior_grid`) on the same faces.

``--by-yaw`` instead scores the completion per |yaw| bin (0-30, 30-60, 60-75, 75-90 degrees),
split into the non-jaw and the jaw ULs, with the inter-ocular and the landmark-box normaliser,
for both backends and references without a 3DMM (the mean training shape of the SL pose
bin aligned to the SLs by a similarity, the 2D Gaussian completion of
:mod:`jaxalign.morphable.statistical` and the learned completion of
:mod:`jaxalign.morphable.learned`, fitted on synthetic training faces, and with ``--learned FILE``
a stored learned model, e.g. one fitted on real faces), from ground-truth SLs plus optional
Gaussian noise
(``--noise``, per coordinate, fraction of the landmark box's longer side), with the flip given as
the true yaw sign and as detected (``complete(flip=None)``). The faces come from
:class:`jaxalign.data.synthetic.Renderer` (pose and '2d' ground truth only, nothing is
rasterised; ``--faces``, ``--seed``, the references are fitted on ``--train-faces`` faces of
another seed) or from a folder of ``.pts`` files with yaw in ``annotations.jsonl`` (``--folder``,
e.g. a run's synthetic test set).

Faces are drawn from the Surrey Face Model with a mismatch the fitter cannot explain: random
shape (all 63 components, N(0, 1)) and expressions, i.i.d. 3D vertex noise (``--mismatch-mm``),
a random pose (yaw uniform in +-70 deg, pitch +-20, roll +-15), ground truth read off the mesh in
the '2d' (300-W) convention, and 2D annotation noise on the given points (``--noise``, fraction of
the inter-ocular distance). Both backends complete the ULs from the noisy SLs. Timings exclude
JAX compilation (one warm-up call first) and eos's model loading. ``jax_faces_per_s`` and
``eos_faces_per_s`` are end to end (``complete``: flip, fit, read the 68 points, un-flip), eos on a
process per core; ``*_fit_only_*`` time the fit alone (JAX: the jitted batch fit; eos:
``fit_shape_and_pose`` in one process, the library's raw speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from jaxalign import metrics
from jaxalign import schemes as schemes_lib


def _rotation(yaw, pitch, roll):
  """eos's R = R_y(yaw) R_x(pitch) R_z(roll), degrees."""
  y, p, r = np.radians([yaw, pitch, roll])
  ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
  rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
  rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
  return ry @ rx @ rz


def synthetic_faces(model, n, seed=0, mismatch_mm=1.0, noise=0.01, max_yaw=70.0,
                    image_size=(512, 512)):
  """Random faces from the model: dict with ``gt`` (n, 68, 2) '2d' points, ``given`` (gt + 2D
  noise), ``yaw`` (n,) degrees, ``image_size``."""
  from jaxalign.morphable import contour
  rng = np.random.default_rng(seed)
  gt = np.zeros((n, 68, 2), np.float32)
  yaws = rng.uniform(-max_yaw, max_yaw, n)
  geo = contour.landmark_geometry(model)
  used = np.unique(np.concatenate([geo.vertices, geo.candidates.reshape(-1)]))
  for i in range(n):
    a = rng.standard_normal(model.num_shape)
    b = np.maximum(rng.normal(0.0, 0.3, model.num_expression), 0.0)
    v = model.vertices(a, b).astype(np.float64)
    # Mismatch: vertex noise the model cannot explain (only the vertices the points can use).
    v[used] += rng.normal(0.0, mismatch_mm, (len(used), 3))
    rot = _rotation(yaws[i], rng.uniform(-20, 20), rng.uniform(-15, 15))
    scale = rng.uniform(1.2, 2.0)          # ~110-185 px between the outer eye corners
    t = np.array([image_size[0] / 2, image_size[1] / 2]) / scale + rng.normal(0, 10, 2)
    cam = contour.camera_from_pose(rot, t, scale, image_size[1])
    gt[i] = contour.ibug_points(v, cam, model, '2d')
  a, b = schemes_lib.IBUG68.inter_ocular
  io = np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
  given = gt + rng.normal(0.0, 1.0, gt.shape) * (noise * io)[:, None, None]
  return dict(gt=gt, given=given.astype(np.float32), yaw=yaws, image_size=image_size)


def ul_errors(result, gt):
  """(inner, jaw) per-face inter-ocular NME over the completed non-jaw points and jaw points."""
  inner = np.full(len(gt), np.nan)
  jaw = np.full(len(gt), np.nan)
  for i in range(len(gt)):
    ul = [j for j in range(17, 68) if not result.kept[i, j]]
    jw = [j for j in range(17) if not result.kept[i, j]]
    inner[i] = metrics.nme(result.points[i:i + 1], gt[i:i + 1], indices=ul)[0]
    jaw[i] = metrics.nme(result.points[i:i + 1], gt[i:i + 1], indices=jw)[0]
  return inner, jaw


def _time(fn, repeats):
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def run(batch=256, eos_faces=64, seed=0, repeats=3, mismatch_mm=1.0, noise=0.01, config=None):
  """Times and scores both backends; returns the JSON-able dict."""
  import jax
  from jaxalign.morphable import completion
  from jaxalign.morphable.model import load_model
  model = load_model()
  faces = synthetic_faces(model, batch, seed, mismatch_mm, noise)
  given, gt, size = faces['given'], faces['gt'], faces['image_size']

  def jax_run():
    r = completion.complete(given, backend='jax', image_size=size, model=model, config=config)
    return r

  jax_run()                                   # compile
  jax_s = _time(jax_run, repeats)
  from jaxalign.morphable import fitting
  jf = fitting.get_fitter(model)
  cfg = completion.JAX_DEFAULTS if config is None else config
  w = schemes_lib.IBUG68.stable_mask().astype(np.float32)
  jax.block_until_ready(jf.fit(given, w, float(size[1]), cfg))
  jax_fit_s = _time(lambda: jax.block_until_ready(jf.fit(given, w, float(size[1]), cfg)),
                    repeats)
  r_jax = jax_run()
  ne = min(eos_faces, batch)

  def eos_run():
    return completion.complete(given[:ne], backend='eos', image_size=size, model=model)

  eos_run()                                   # start the pool once (model loading)
  eos_s = _time(eos_run, 1)
  r_eos = eos_run()
  # eos's fit_shape_and_pose alone (one process, no readout): the library's raw speed.
  fitter = completion._eos_fitter(model.directory)
  stable = np.asarray(schemes_lib.IBUG68.stable)
  work = np.where(r_jax.flipped[:ne, None, None],
                  completion._mirror(given[:ne], np.full(ne, float(size[0])),
                                     schemes_lib.IBUG68), given[:ne])[:, stable]
  raw_s = _time(lambda: [fitter.fit_one(p, stable, size) for p in work], 1)
  ji, jj = ul_errors(r_jax, gt)
  ei, ej = ul_errors(r_eos, gt[:ne])
  out = {
      'date': time.strftime('%Y-%m-%d'),
      'device': jax.devices()[0].device_kind,
      'batch_size': batch,
      'eos_faces': ne,
      'jax_faces_per_s': batch / jax_s,
      'eos_faces_per_s': ne / eos_s,
      'speedup': (batch / jax_s) / (ne / eos_s),
      'eos_fit_only_faces_per_s_1proc': ne / raw_s,
      'jax_fit_only_faces_per_s': batch / jax_fit_s,
      'compilation_excluded': True,
      'jax_ul_nme_inner': float(np.nanmean(ji[:ne])),
      'eos_ul_nme_inner': float(np.nanmean(ei)),
      'jax_ul_nme_jaw': float(np.nanmean(jj[:ne])),
      'eos_ul_nme_jaw': float(np.nanmean(ej)),
      'jax_ul_nme_inner_all': float(np.nanmean(ji)),
      'synthetic': dict(mismatch_mm=mismatch_mm, noise_io=noise, seed=seed),
  }
  return out


def tune(n=128, seed=1, mismatch_mm=1.0, noise=0.01):
  """Grid over the JAX backend's prior and iterations on synthetic faces; prints a table.

  The seed differs from the benchmark's, so the choice is validated on other faces.
  """
  from jaxalign.morphable import completion
  from jaxalign.morphable import fitting
  from jaxalign.morphable.model import load_model
  model = load_model()
  faces = synthetic_faces(model, n, seed, mismatch_mm, noise)
  rows = []
  grid = [fitting.EOS_DEFAULTS]
  for noise_mm in (0.5, 1.0, 2.0, 4.0):
    for its in (3, 5, 8):
      for k in (None, 30):
        grid.append(dataclasses.replace(fitting.EOS_DEFAULTS, noise_mm=noise_mm,
                                        lambda_identity=1.0, num_iterations=its, num_shape=k))
  for cfg in grid:
    r = completion.complete(faces['given'], backend='jax', image_size=faces['image_size'],
                            model=model, config=cfg)
    inner, jaw = ul_errors(r, faces['gt'])
    rows.append(dict(noise_mm=cfg.noise_mm, lambda_identity=cfg.lambda_identity,
                     iterations=cfg.num_iterations, num_shape=cfg.num_shape,
                     ul_inner=float(np.nanmean(inner)), ul_jaw=float(np.nanmean(jaw))))
    print(json.dumps(rows[-1]), flush=True)
  return rows



YAW_BINS = (0.0, 30.0, 60.0, 75.0, 90.0)


def renderer_faces(n, seed, model=None, size=96, yaw_range=(-90.0, 90.0)):
  """(gt (n, 68, 2) '2d' points, yaw (n,)) of synthetic faces: the renderer's random faces
  (default: yaw uniform in +-90 degrees) at ``size`` px, posed and read off the mesh (no
  pixels)."""
  from jaxalign.data import synthetic
  from jaxalign.morphable import contour
  renderer = synthetic.Renderer(
      synthetic.SynthConfig(size=size, yaw_range=tuple(map(float, yaw_range))), model)
  gt = np.zeros((n, 68, 2), np.float32)
  yaw = np.zeros(n)
  for i in range(n):
    params = renderer.sample(seed, i)
    v = renderer.vertices(params)
    gt[i] = contour.ibug_points(v, renderer.camera(params, v), renderer.model, '2d')
    yaw[i] = params.yaw
  return gt, yaw


def folder_faces(folder):
  """(gt, yaw) of the faces of a folder whose records know their yaw (synthetic data sets)."""
  from jaxalign.data import records as records_lib
  recs, _ = records_lib.scan_folder(folder, num_points=68)
  recs = [r for r in recs if r.yaw is not None]
  if not recs:
    raise ValueError(f'{folder}: no face with a known yaw (annotations.jsonl)')
  return (np.stack([np.asarray(r.points, np.float32) for r in recs]),
          np.array([float(r.yaw) for r in recs]))


def add_noise(gt, level, seed=0):
  """gt plus N(0, (level * box side)^2) per coordinate (box: the landmarks' longer side)."""
  if not level:
    return gt.copy()
  rng = np.random.default_rng(seed)
  side = (np.nanmax(gt, 1) - np.nanmin(gt, 1)).max(-1)
  return (gt + rng.standard_normal(gt.shape) * (level * side)[:, None, None]).astype(np.float32)


def binned_ul_errors(points, kept, gt, yaw, bins=YAW_BINS):
  """{'inter_ocular'|'bbox': {'inner'|'jaw': [mean per |yaw| bin..., mean over all]}}.

  The errors of the completed points (not ``kept``), non-jaw (17-67) and jaw (0-16) apart.
  """
  out = {}
  a = np.abs(yaw)
  last = len(bins) - 2
  for norm in ('inter_ocular', 'bbox'):
    per = {}
    for part, idx in (('inner', range(17, 68)), ('jaw', range(17))):
      e = np.full(len(gt), np.nan)
      for i in range(len(gt)):
        sel = [j for j in idx if not kept[i, j]]
        if sel:
          e[i] = metrics.nme(points[i:i + 1], gt[i:i + 1], norm, indices=sel)[0]
      row = []
      for b, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        s = (a >= lo) & ((a < hi) | ((b == last) & (a <= hi)))
        row.append(float(np.nanmean(e[s])) if s.any() else float('nan'))
      row.append(float(np.nanmean(e)))
      per[part] = row
    out[norm] = per
  return out


def _mean_shape_reference(model, points, flip, scheme):
  """The SL pose bin's mean aligned shape, placed on the SLs by a least-squares similarity."""
  from jaxalign import geometry
  from jaxalign.morphable import statistical
  stable = scheme.stable_mask()
  pts = np.asarray(points, np.float64)
  work = np.where(flip[:, None, None], statistical._mirror(pts, scheme), pts)
  work = np.where(stable[None, :, None], work, np.nan)
  mean = model.means[np.searchsorted(model.edges, statistical._sl_yaw(work, scheme))]
  m = np.asarray(geometry.estimate_similarity(mean[:, stable].astype(np.float32),
                                              work[:, stable].astype(np.float32)), np.float64)
  pred = np.einsum('nij,nlj->nli', m[:, :, :2], mean) + m[:, None, :, 2]
  out = np.where(stable[None, :, None], work, pred)
  out = np.where(flip[:, None, None], statistical._mirror(out, scheme), out)
  kept = np.where(flip[:, None], stable[scheme.flip_index_array()][None], stable[None])
  return out.astype(np.float32), kept


def by_yaw(faces=400, seed=7, train_faces=1000, folder=None, noise=0.0, backends=('jax', 'eos'),
           references=True, config=None, learned=None):
  """Per-|yaw|-bin UL errors of the completion (see the module docstring); JSON-able dict.

  ``learned``: an optional fitted :class:`~jaxalign.morphable.learned.LearnedCompletion`
  scored as ``learned_given/true_flip`` (its pose switch gets the JAX backend's points).
  """
  from jaxalign.morphable import completion
  from jaxalign.morphable import learned as learned_lib
  from jaxalign.morphable import statistical
  from jaxalign.morphable.model import load_model
  scheme = schemes_lib.IBUG68
  model = load_model()
  if folder is None:
    gt, yaw = renderer_faces(faces, seed, model)
    source = f'renderer seed {seed}, {faces} faces'
  else:
    gt, yaw = folder_faces(folder)
    source = str(folder)
  given = add_noise(gt, noise, seed)
  size = np.ceil(np.nanmax(gt, axis=(0, 1))) + 1.0
  counts = [int(c) for c in np.histogram(np.abs(yaw), YAW_BINS)[0]]
  rows = {}
  truth = yaw < 0
  # The JAX 3DMM with the true flip: the learned completions' points where they switch to it.
  jax_true = completion.complete(given, backend='jax', image_size=size, flip=truth, model=model,
                                 config=config)
  for backend in backends:
    for mode, flip in (('true_flip', truth), ('detected_flip', None)):
      r = jax_true if (backend, mode) == ('jax', 'true_flip') else completion.complete(
          given, backend=backend, image_size=size, flip=flip, model=model,
          config=config if backend == 'jax' else None)
      rows[f'{backend}/{mode}'] = binned_ul_errors(r.points, r.kept, gt, yaw)
      if flip is None:
        wrong = (r.flipped != truth)[np.abs(yaw) > 20]
        rows[f'{backend}/{mode}']['wrong_flips'] = int(wrong.sum())
  if references:
    train, train_yaw = renderer_faces(train_faces, seed + 1000, model)
    for name, bins in (('mean_shape', 5), ('gaussian', 3)):
      ref = statistical.fit(train, scheme, num_bins=bins)
      if name == 'mean_shape':
        pts, kept = _mean_shape_reference(ref, given, truth, scheme)
      else:
        res = statistical.complete(given, ref, scheme, flip=truth)
        pts, kept = res.points, res.kept
      rows[f'{name}/true_flip'] = binned_ul_errors(pts, kept, gt, yaw)
    fitted = learned_lib.LearnedCompletion.fit(train, scheme, yaw=train_yaw)
    rows['learned_synthetic/true_flip'] = binned_ul_errors(
        fitted.complete(given, truth, completed_3dmm=jax_true.points), jax_true.kept, gt, yaw)
  if learned is not None:
    rows['learned_given/true_flip'] = binned_ul_errors(
        learned.complete(given, truth, completed_3dmm=jax_true.points), jax_true.kept, gt, yaw)
  return {'date': time.strftime('%Y-%m-%d'), 'faces': source, 'noise_box': noise,
          'bins': list(YAW_BINS), 'counts': counts, 'results': rows}


def format_by_yaw(out) -> str:
  """A plain-text table of :func:`by_yaw` (percent; non-jaw / jaw ULs per bin, then all)."""
  bins = out['bins']
  head = ' '.join(f'{int(lo)}-{int(hi)} (n={c})'.rjust(15)
                  for lo, hi, c in zip(bins[:-1], bins[1:], out['counts']))
  lines = [f"faces: {out['faces']}; SL noise {100 * out['noise_box']:.1f} % of the box",
           'UL NME %, non-jaw / jaw', f"{'':28s}{'':6s}{head}{'all'.rjust(15)}"]
  for name, row in out['results'].items():
    for norm in ('inter_ocular', 'bbox'):
      cells = ' '.join(f'{100 * a:6.2f}/{100 * b:6.2f}'.rjust(15)
                       for a, b in zip(row[norm]['inner'], row[norm]['jaw']))
      extra = ''
      if 'wrong_flips' in row and norm == 'bbox':
        extra = f"  wrong flips (|yaw| > 20): {row['wrong_flips']}"
      lines.append(f"{name:28s}{norm[:5]:6s}{cells}{extra}")
  return '\n'.join(lines)


def real_faces(paths):
  """(points (N, 68, 2), names) of the 68-point ``.pts`` / ``.ljson`` files in the given folders
  (not recursive) or files.

  Raises:
    FileNotFoundError: a path that does not exist; ValueError: an unreadable file, or no face.
  """
  import pathlib
  from jaxalign import io
  files = []
  for p in map(pathlib.Path, paths):
    if p.is_dir():
      files += sorted(f for f in p.iterdir() if f.suffix.lower() in ('.pts', '.ljson'))
    elif p.is_file():
      files.append(p)
    else:
      raise FileNotFoundError(f'{p}: no such file or folder')
  pts = []
  for f in files:
    x = (io.read_pts(f, num_points=68) if f.suffix.lower() == '.pts'
         else io.read_ljson(f, num_points=68))
    if not np.isfinite(x).all():
      raise ValueError(f'{f}: annotation has missing points')
    pts.append(x)
  if not pts:
    raise ValueError(f'no .pts or .ljson face in {", ".join(map(str, paths))}')
  return np.stack(pts).astype(np.float32), [str(f) for f in files]


def real_errors(result, gt):
  """{'all', 'inner', 'jaw'}: (N,) inter-ocular NME of the completed points, all of them, the
  non-jaw ones (17-67) and the jaw ones (0-16); NaN where the fit failed."""
  from jaxalign.morphable import learned
  e = learned.completed_errors(result.points, np.asarray(gt, np.float64), result.kept)
  return {k: np.where(result.ok, v, np.nan) for k, v in e.items()}


# |yaw| bins of the real-face report (300-W has few faces beyond 45 degrees).
REAL_YAW_BINS = (0.0, 15.0, 30.0, 45.0, 90.0)
DEFAULT_DATA_DIR = '../shared/300w'


def w300_faces(data_dir=DEFAULT_DATA_DIR, split='train', max_faces=0, seed=0):
  """(points (N, 68, 2) float32, names) of a 300-W split read by
  :func:`jaxalign.data.sources.get_source` (faces with a missing point skipped);
  ``max_faces`` > 0 keeps a fixed random subset (``seed``), in file order.

  Raises:
    FileNotFoundError: no such folder; ValueError: no usable face.
  """
  import pathlib
  from jaxalign.data import sources
  if not pathlib.Path(data_dir).is_dir():
    raise FileNotFoundError(f'{data_dir}: no such 300-W folder (--data-dir)')
  recs, _ = sources.get_source('300w', data_dir, split)
  recs = [r for r in recs if np.isfinite(r.points).all()]
  if max_faces and len(recs) > max_faces:
    keep = np.sort(np.random.default_rng(seed).choice(len(recs), max_faces, replace=False))
    recs = [recs[i] for i in keep]
  if not recs:
    raise ValueError(f'{data_dir}: no complete 68-point face in split {split!r}')
  return np.stack([r.points for r in recs]).astype(np.float32), [r.image for r in recs]


def _folds(n, k, seed):
  """k disjoint sorted index arrays covering range(n) (a seeded permutation)."""
  order = np.random.default_rng(seed).permutation(n)
  return [np.sort(order[f::k]) for f in range(k)]


def _cv_points(gt, flip, folds, seed, fit, complete):
  """(N, 68, 2) points of a learned backend by cross-validation: each fold completed by
  ``complete(model, test_idx)`` with ``model = fit(train_idx)``."""
  out = np.full(gt.shape, np.nan, np.float32)
  models = []
  for test in _folds(len(gt), folds, seed):
    train = np.setdiff1d(np.arange(len(gt)), test)
    models.append(fit(train))
    out[test] = complete(models[-1], test)
  return out, models


def _kept(flip, scheme=schemes_lib.IBUG68):
  stable = scheme.stable_mask()
  return np.where(np.asarray(flip)[:, None], stable[scheme.flip_index_array()][None],
                  stable[None])


def _by_bins(errors, yaw, bins):
  """{'all'|'inner'|'jaw': [mean per |yaw| bin...]} (None where a bin is empty)."""
  a = np.abs(np.asarray(yaw, np.float64))
  idx = np.clip(np.searchsorted(bins, a, side='right') - 1, 0, len(bins) - 2)
  out = {}
  for k, v in errors.items():
    out[k] = [float(np.nanmean(v[idx == b])) if np.isfinite(v[idx == b]).any() else None
              for b in range(len(bins) - 1)]
  return out


def real(paths=None, backends=None, config=None, data_dir=DEFAULT_DATA_DIR, max_faces=0,
         eos_faces=0, folds=5, seed=0, learned=None, split='train'):
  """The backends on real annotated faces (see the module docstring); JSON-able dict.

  Args:
    paths: folders / files of ``.pts`` / ``.ljson`` faces, or None: the 300-W training faces of
      ``data_dir`` (at most ``max_faces``, a fixed random subset).
    split: with ``paths`` None, the 300-W split: 'train' (all 2,012 shared faces), or 'fit' /
      'val' (the fixed validation tenth and the rest, :func:`jaxalign.data.sources.w300.in_val`;
      a run trained on 'fit' is scored on 'val' with ``learned``).
    backends: names among 'jax', 'eos', 'gaussian', 'learned', 'learned_linear' (the learned
      completion without its kernel part: the ridge baseline) (default: 'jax', 'eos' for
      ``paths``, 'jax', 'eos', 'gaussian', 'learned' for 300-W).
    config: the JAX backend's :class:`~jaxalign.morphable.fitting.FitConfig` (default its own).
    eos_faces: > 0: eos completes only the first that many faces (it is slow); every backend's
      mean over those faces is reported as well (``mean_eos_faces``).
    folds, seed: the cross-validation of 'gaussian' and 'learned' (at least 2 folds of 2 faces).
    learned: a fitted :class:`~jaxalign.morphable.learned.LearnedCompletion` to score as
      'learned' instead of the cross-validated one.
  """
  from jaxalign.morphable import completion
  from jaxalign.morphable import learned as learned_lib
  from jaxalign.morphable import pose
  from jaxalign.morphable import statistical
  from jaxalign.morphable.model import load_model
  scheme = schemes_lib.IBUG68
  if paths:
    gt, names = real_faces(paths)
    sources = list(map(str, paths))
  else:
    gt, names = w300_faces(data_dir, split, max_faces, seed)
    sources = [f'300-W {split} of {data_dir}' + (f' ({max_faces} random faces, seed {seed})'
                                               if max_faces else '')]
  if backends is None:
    backends = ('jax', 'eos') if paths else ('jax', 'eos', 'gaussian', 'learned')
  known = ('jax', 'eos', 'gaussian', 'learned', 'learned_linear')
  unknown = sorted(set(backends) - set(known))
  if unknown:
    raise ValueError(f'unknown backend(s) {unknown}; known: {", ".join(known)}')
  cv_needed = bool({'gaussian', 'learned_linear'} & set(backends)) or (
      'learned' in backends and learned is None)
  if cv_needed and (folds < 2 or len(gt) < 2 * folds):
    raise ValueError(f'cross-validating gaussian / learned needs --folds >= 2 and 2 faces per '
                     f'fold; got {len(gt)} faces, {folds} folds')
  model = load_model()
  n = len(gt)
  size = np.stack([completion.default_image_size(p) for p in gt])
  # One flip decision for every backend: the pipeline's (rigid fit of the given points).
  flip = pose.flip_from_points(gt, scheme, model)
  rigid_yaw = np.asarray(pose.estimate_pose(gt, scheme, model)[..., 0], np.float64)
  kept = _kept(flip)
  out = {'date': time.strftime('%Y-%m-%d'), 'faces': n, 'sources': sources,
         'normalization': 'inter_ocular', 'yaw_bins': list(REAL_YAW_BINS),
         'yaw_counts': [int(c) for c in np.histogram(np.abs(rigid_yaw), REAL_YAW_BINS)[0]],
         'mean': {}, 'by_yaw': {}, 'per_face': []}
  errors = {}
  jax_points = None
  if {'jax', 'learned', 'learned_linear'} & set(backends):
    r = completion.complete(gt, backend='jax', image_size=size, flip=flip, model=model,
                            config=config)
    jax_points = r.points
    if 'jax' in backends:
      errors['jax'] = real_errors(r, gt)
      out['jax_yaw'] = [float(y) for y in r.yaw]
  if 'eos' in backends:
    ne = min(eos_faces, n) if eos_faces else n
    r = completion.complete(gt[:ne], backend='eos', image_size=size[:ne], flip=flip[:ne],
                            model=model)
    e = real_errors(r, gt[:ne])
    errors['eos'] = {k: np.concatenate([v, np.full(n - ne, np.nan)]) for k, v in e.items()}
    out['eos_faces'] = ne
  if 'gaussian' in backends:
    pts, _ = _cv_points(
        gt, flip, folds, seed,
        lambda tr: statistical.fit(gt[tr], scheme),
        lambda m, te: statistical.complete(gt[te], m, scheme, flip=flip[te]).points)
    errors['gaussian'] = learned_lib.completed_errors(pts, gt.astype(np.float64), kept)
  for name in ('learned', 'learned_linear'):
    if name not in backends:
      continue
    if name == 'learned' and learned is not None:
      pts = learned.complete(gt, flip, completed_3dmm=jax_points)
      out['learned_model'] = {'faces': learned.num_faces, 'use_learned':
                              learned.use_learned.tolist(), 'yaw_bins': learned.yaw_bins.tolist()}
    else:
      options = {'kernel': name == 'learned'}
      pts, models = _cv_points(
          gt, flip, folds, seed,
          lambda tr, o=options: learned_lib.LearnedCompletion.fit(
              gt[tr], scheme, completed_3dmm=jax_points[tr], **o),
          lambda m, te: m.complete(gt[te], flip[te], completed_3dmm=jax_points[te]))
      out[f'{name}_cv'] = {'folds': folds, 'seed': seed,
                           'use_learned': [m.use_learned.tolist() for m in models],
                           'yaw_bins': models[0].yaw_bins.tolist()}
    errors[name] = learned_lib.completed_errors(pts, gt.astype(np.float64), kept)
  for b in backends:
    e = errors[b]
    out['mean'][b] = {k: float(np.nanmean(v)) for k, v in e.items()}
    out['mean'][b]['faces'] = int(np.isfinite(e['all']).sum())
    out['by_yaw'][b] = _by_bins(e, rigid_yaw, REAL_YAW_BINS)
  if 'eos' in backends and out['eos_faces'] < n:
    ne = out['eos_faces']
    out['mean_eos_faces'] = {b: {k: float(np.nanmean(v[:ne])) for k, v in errors[b].items()}
                             for b in backends}

  def num(x):
    return float(x) if np.isfinite(x) else None

  for i in range(n):
    row = {'file': names[i], 'yaw': float(rigid_yaw[i]), 'flipped': bool(flip[i])}
    for b in backends:
      row[b] = {k: num(v[i]) for k, v in errors[b].items()}
    out['per_face'].append(row)
  return out


def prior_configs() -> dict:
  """The JAX fitter settings :func:`prior_grid` compares: name -> FitConfig (the default,
  eos's, the shape prior's noise level x the number of shape components, and single changes of
  the adaptive noise, the pixel noise, the expression prior and the iterations)."""
  from jaxalign.morphable import completion
  from jaxalign.morphable import fitting
  grid = {'default (JAX_DEFAULTS)': completion.JAX_DEFAULTS,
          'previous default (TUNED_SYNTHETIC)': fitting.TUNED_SYNTHETIC,
          'eos prior (EOS_DEFAULTS)': fitting.EOS_DEFAULTS}
  # The single changes below start from the previous default (chosen on synthetic faces).
  base = fitting.TUNED_SYNTHETIC
  for noise_mm in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0):
    for k in (20, 30, None):
      grid[f'noise_mm {noise_mm:g}, {k or 63} shape'] = dataclasses.replace(
          base, noise_mm=noise_mm, num_shape=k)
  full = dataclasses.replace(base, num_shape=None)
  grid['63 shape, no adaptive noise, 5 rounds'] = dataclasses.replace(
      full, adaptive_noise=False, num_iterations=5)
  grid['63 shape, 5 rounds'] = dataclasses.replace(full, num_iterations=5)
  grid['63 shape, noise_px 1.73'] = dataclasses.replace(full, noise_px=3.0 ** 0.5)
  for lam in (1.0, 10.0):
    grid[f'63 shape, lambda_expression {lam:g}'] = dataclasses.replace(full,
                                                                      lambda_expression=lam)
  # Around the best single changes: plain rounds (no adaptive noise) with the expression prior.
  plain = dataclasses.replace(full, adaptive_noise=False, num_iterations=5)
  for noise_mm in (1.0, 1.5, 2.0):
    for lam in (0.0, 10.0, 30.0):
      if (noise_mm, lam) != (2.0, 0.0):
        grid[f'63 shape, plain 5 rounds, noise_mm {noise_mm:g}, lambda_expression {lam:g}'] = (
            dataclasses.replace(plain, noise_mm=noise_mm, lambda_expression=lam))
  grid['63 shape, plain 8 rounds, lambda_expression 10'] = dataclasses.replace(
      plain, num_iterations=8, lambda_expression=10.0)
  # The same with the default's adaptive noise (which guards noisy SLs).
  for noise_mm in (1.5, 2.0):
    grid[f'63 shape, noise_mm {noise_mm:g}, lambda_expression 30'] = dataclasses.replace(
        full, noise_mm=noise_mm, lambda_expression=30.0)
  for k in (30, 40, 50):
    grid[f'{k} shape, lambda_expression 30'] = dataclasses.replace(base, num_shape=k,
                                                                  lambda_expression=30.0)
  # A setting equal to an earlier one (e.g. the default) is listed once, under its first name.
  unique = {}
  for name, cfg in grid.items():
    if cfg not in unique.values():
      unique[name] = cfg
  return unique


def prior_grid(paths=None, data_dir=DEFAULT_DATA_DIR, max_faces=0, folds=5, seed=0,
               configs=None, eos=True, eos_faces=0, noise=0.0, split='train'):
  """Cross-validates the JAX fitter's prior on real annotated faces; JSON-able dict.

  Every setting of ``configs`` (default :func:`prior_configs`) completes every face from its
  ground-truth SLs (the pipeline's flip), plus Gaussian noise of ``noise`` times the landmark
  box's longer side per coordinate (:func:`add_noise`, a stand-in for a CNN's SLs; scored
  against the clean points). The table is each setting's mean inter-ocular NME of
  the completed points (all / non-jaw / jaw). The cross-validation picks, per fold, the setting
  with the lowest mean over all completed points on the other folds and scores it on the fold:
  the held-out mean says what choosing by this grid is worth, the picks how stable the choice
  is. ``eos``: eos's own fit as a reference row (never picked; ``eos_faces`` > 0 limits it).
  ``split``: the 300-W split read without ``paths`` (as :func:`real`).
  """
  from jaxalign.morphable import completion
  from jaxalign.morphable import pose
  from jaxalign.morphable.model import load_model
  scheme = schemes_lib.IBUG68
  gt, _ = real_faces(paths) if paths else w300_faces(data_dir, split, max_faces, seed)
  configs = prior_configs() if configs is None else configs
  model = load_model()
  n = len(gt)
  if folds < 2 or n < folds:
    raise ValueError(f'--folds must be >= 2 with at least one face per fold; got {n} faces, '
                     f'{folds} folds')
  size = np.stack([completion.default_image_size(p) for p in gt])
  flip = pose.flip_from_points(gt, scheme, model)
  given = add_noise(gt, noise, seed)
  table, errs = [], {}
  for name, cfg in configs.items():
    t = time.perf_counter()
    r = completion.complete(given, backend='jax', image_size=size, flip=flip, model=model,
                            config=cfg)
    errs[name] = real_errors(r, gt)
    table.append({'setting': name, 'config': dataclasses.asdict(cfg),
                  **{k: float(np.nanmean(v)) for k, v in errs[name].items()},
                  'failed': int((~r.ok).sum()), 'seconds': time.perf_counter() - t})
  picks, held = [], {k: np.full(n, np.nan) for k in ('all', 'inner', 'jaw')}
  for test in _folds(n, folds, seed):
    train = np.setdiff1d(np.arange(n), test)
    best = min(errs, key=lambda k: np.nanmean(errs[k]['all'][train]))
    picks.append(best)
    for k in held:
      held[k][test] = errs[best][k][test]
  out = {'date': time.strftime('%Y-%m-%d'), 'faces': n, 'noise_box': noise,
         'sources': list(map(str, paths)) if paths else [f'300-W {split} of {data_dir}'],
         'table': table, 'cv': {'folds': folds, 'seed': seed, 'picks': picks,
                                **{k: float(np.nanmean(v)) for k, v in held.items()}}}
  if eos:
    ne = min(eos_faces, n) if eos_faces else n
    r = completion.complete(given[:ne], backend='eos', image_size=size[:ne], flip=flip[:ne],
                            model=model)
    e = real_errors(r, gt[:ne])
    out['eos'] = {'faces': ne, **{k: float(np.nanmean(v)) for k, v in e.items()},
                  'failed': int((~r.ok).sum())}
  return out


def format_prior_grid(out) -> str:
  """A plain-text table of :func:`prior_grid` (percent)."""
  lines = [f"JAX fitter prior on {out['faces']} real faces ({', '.join(out['sources'])}), SL "
           f"noise {100 * out.get('noise_box', 0.0):.1f} % of the box; inter-ocular NME % of "
           'the completed points', f"{'setting':62s}{'all':>8s}"
           f"{'non-jaw':>8s}{'jaw':>8s}"]
  for row in out['table']:
    lines.append(f"{row['setting']:62s}{100 * row['all']:8.2f}{100 * row['inner']:8.2f}"
                 f"{100 * row['jaw']:8.2f}")
  if 'eos' in out:
    e = out['eos']
    lines.append(f"{'eos (' + str(e['faces']) + ' faces)':62s}{100 * e['all']:8.2f}"
                 f"{100 * e['inner']:8.2f}{100 * e['jaw']:8.2f}")
  cv = out['cv']
  lines.append(f"{str(cv['folds']) + '-fold CV of the choice (held out)':62s}"
               f"{100 * cv['all']:8.2f}{100 * cv['inner']:8.2f}{100 * cv['jaw']:8.2f}")
  lines.append('picked per fold: ' + '; '.join(cv['picks']))
  return '\n'.join(lines)


def fusion(faces=128, seed=11, levels=(0.01, 0.03, 0.06, 0.10), reference_rms=0.01):
  """UL errors of fused completion per observation noise level (see the module docstring)."""
  from jaxalign.morphable import completion
  from jaxalign.morphable.model import load_model
  model = load_model()
  f = synthetic_faces(model, faces, seed)
  held = synthetic_faces(model, faces, seed + 1)
  rng = np.random.default_rng(seed)

  def noisy(x, level):
    a, b = schemes_lib.IBUG68.inter_ocular
    d = np.linalg.norm(x[:, a] - x[:, b], axis=-1)
    return (x + rng.normal(0.0, 1.0, x.shape) * (level * d)[:, None, None]).astype(np.float32)

  def score(r):
    inner, jaw = ul_errors(r, f['gt'])
    return {'inner': float(np.nanmean(inner)), 'jaw': float(np.nanmean(jaw))}

  rows = [{'observations': None, 'weights': None,
           **score(completion.complete(f['given'], image_size=f['image_size'], model=model))}]
  for level in levels:
    obs = noisy(f['gt'], level)
    rms = completion.residual_rms(noisy(held['gt'], level), held['gt'], held['yaw'])
    w = completion.fusion_weights(rms, f['yaw'], reference_rms=reference_rms)
    for name, weights in (('0.5', 0.5), ('residual', w)):
      r = completion.complete(f['given'], image_size=f['image_size'], model=model,
                              observed=obs, weights=weights)
      rows.append({'observations': level, 'weights': name, **score(r)})
  return {'date': time.strftime('%Y-%m-%d'), 'faces': faces, 'seed': seed,
          'reference_rms': reference_rms, 'rows': rows}


def format_real(out, per_face=None) -> str:
  """A plain-text table of :func:`real` (percent): means, by |yaw| bin and (``per_face``;
  default when at most 60 faces) per face."""
  backends = list(out['mean'])

  def cell(v):
    return f'{100 * v:8.2f}' if v is not None and np.isfinite(v) else f"{'-':>8s}"

  lines = [f"{out['faces']} real faces from {', '.join(out['sources'])}; inter-ocular NME %, "
           'completed points: all / non-jaw / jaw']
  head = f"{'':34s}" + ''.join(f'{b:>24s}' for b in backends)
  if per_face is None:
    per_face = out['faces'] <= 60
  if per_face:
    lines.append(f"{'face':27s}{'yaw':>7s}" + head[34:])
    for row in out['per_face']:
      cells = ''.join(cell(row[b]['all']) + cell(row[b]['inner']) + cell(row[b]['jaw'])
                      for b in backends)
      name = row['file'].rsplit('/', 1)[-1]
      lines.append(f"{name[:27]:27s}{row['yaw']:7.1f}{cells}")
  else:
    lines.append(head)
  bins = out['yaw_bins']
  for b_i, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
    label = f"|yaw| {lo:g}-{hi:g} (n={out['yaw_counts'][b_i]})"
    cells = ''.join(cell(out['by_yaw'][b]['all'][b_i]) + cell(out['by_yaw'][b]['inner'][b_i])
                    + cell(out['by_yaw'][b]['jaw'][b_i]) for b in backends)
    lines.append(f'{label:34s}{cells}')
  cells = ''.join(cell(out['mean'][b]['all']) + cell(out['mean'][b]['inner'])
                  + cell(out['mean'][b]['jaw']) for b in backends)
  lines.append(f"{'mean':34s}{cells}")
  if 'mean_eos_faces' in out:
    m = out['mean_eos_faces']
    cells = ''.join(cell(m[b]['all']) + cell(m[b]['inner']) + cell(m[b]['jaw'])
                    for b in backends)
    lines.append(f"{'mean, the ' + str(out['eos_faces']) + ' eos faces':34s}{cells}")
  if 'learned_cv' in out:
    lines.append(f"learned: {out['learned_cv']['folds']}-fold CV; learned points used per |yaw| "
                 f"bin {out['learned_cv']['yaw_bins']}: {out['learned_cv']['use_learned']}")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench completion', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch-size', type=int, default=256, help='faces per JAX call (default 256)')
  p.add_argument('--eos-faces', type=int, default=None,
                 help='faces timed with eos (default 64); --real, --prior-grid: eos completes '
                      'only the first that many faces (default all)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--seed', type=int, default=None,
                 help='face seed (default 0; --by-yaw: 7)')
  p.add_argument('--mismatch-mm', type=float, default=1.0)
  p.add_argument('--noise', type=float, default=None,
                 help='2D noise on the given points: fraction of the inter-ocular distance '
                      '(default 0.01); --by-yaw, --prior-grid: of the landmark box side '
                      '(default 0)')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.add_argument('--tune', action='store_true', help='run the tuning grid instead')
  p.add_argument('--by-yaw', action='store_true',
                 help='score per |yaw| bin (non-jaw / jaw ULs, both normalisers) instead')
  p.add_argument('--faces', type=int, default=400, help='--by-yaw: renderer faces (default 400)')
  p.add_argument('--train-faces', type=int, default=1000,
                 help='--by-yaw: faces the references are fitted on (default 1000)')
  p.add_argument('--folder', default=None,
                 help='--by-yaw: score the faces of this folder instead (yaw from '
                      'annotations.jsonl)')
  p.add_argument('--backends', default=None,
                 help='--by-yaw, --real: comma-separated backends (default jax,eos; --real on '
                      '300-W: jax,eos,gaussian,learned)')
  p.add_argument('--fusion', action='store_true',
                 help='score fused completion (noisy observations of the ULs) instead')
  p.add_argument('--real', nargs='*', metavar='DIR', default=None,
                 help='score the real faces (.pts / .ljson) of these folders or files instead; '
                      'without any: the 300-W training faces of --data-dir')
  p.add_argument('--data-dir', default=DEFAULT_DATA_DIR,
                 help=f'--real, --prior-grid: the 300-W folder (default {DEFAULT_DATA_DIR})')
  p.add_argument('--max-faces', type=int, default=0,
                 help='--real, --prior-grid on 300-W: a fixed random subset of this many faces '
                      '(default 0: all)')
  p.add_argument('--split', default='train', choices=('train', 'fit', 'val'),
                 help='--real, --prior-grid on 300-W: the split (default train: all training '
                      'faces; fit / val: the fixed validation tenth and the rest)')
  p.add_argument('--folds', type=int, default=5,
                 help='--real, --prior-grid: cross-validation folds (default 5)')
  p.add_argument('--learned', default=None, metavar='JSON',
                 help='--real, --by-yaw: score this stored learned completion (a '
                      'LearnedCompletion.to_dict JSON file)')
  p.add_argument('--per-face', action='store_true',
                 help='--real: print the per-face rows (default: at most 60 faces)')
  p.add_argument('--prior-grid', action='store_true',
                 help='cross-validate the JAX fitter prior on real faces (--real DIRs or '
                      '--data-dir) instead')
  args = p.parse_args(argv)
  from jaxalign import assets
  try:
    assets.sfm_dir()
  except assets.MissingModelFilesError as e:
    print(e, file=sys.stderr)
    return 2
  if args.fusion:
    out = fusion(seed=11 if args.seed is None else args.seed)
    if args.json:
      print(json.dumps(out))
    else:
      for row in out['rows']:
        print(f"observations {row['observations']} weights {row['weights']}: non-jaw "
              f"{100 * row['inner']:.2f} %, jaw {100 * row['jaw']:.2f} %")
    return 0
  backends = (None if args.backends is None
              else tuple(b for b in args.backends.split(',') if b))
  learned = None
  if args.learned:
    from jaxalign.morphable import learned as learned_lib
    try:
      with open(args.learned) as f:
        learned = learned_lib.LearnedCompletion.from_dict(json.load(f))
    except (OSError, ValueError) as e:
      print(f'--learned {args.learned}: {e}', file=sys.stderr)
      return 2
  if args.prior_grid:
    try:
      out = prior_grid(args.real or None, args.data_dir, args.max_faces, args.folds,
                       eos=backends is None or 'eos' in backends,
                       eos_faces=args.eos_faces or 0, noise=args.noise or 0.0,
                       split=args.split)
    except (FileNotFoundError, ValueError) as e:
      print(e, file=sys.stderr)
      return 2
    print(json.dumps(out) if args.json else format_prior_grid(out))
    return 0
  if args.real is not None:
    try:
      out = real(args.real or None, backends, data_dir=args.data_dir, max_faces=args.max_faces,
                 eos_faces=args.eos_faces or 0, folds=args.folds,
                 learned=learned, split=args.split)
    except (FileNotFoundError, ValueError) as e:
      print(e, file=sys.stderr)
      return 2
    print(json.dumps(out) if args.json else format_real(out, args.per_face or None))
    return 0
  if args.tune:
    tune(mismatch_mm=args.mismatch_mm, noise=0.01 if args.noise is None else args.noise)
    return 0
  if args.by_yaw:
    seed = 7 if args.seed is None else args.seed
    noise = 0.0 if args.noise is None else args.noise
    out = by_yaw(args.faces, seed, args.train_faces, args.folder, noise,
                 backends or ('jax', 'eos'), learned=learned)
    print(json.dumps(out) if args.json else format_by_yaw(out))
    return 0
  out = run(args.batch_size, args.eos_faces or 64, 0 if args.seed is None else args.seed,
            args.repeats, args.mismatch_mm, 0.01 if args.noise is None else args.noise)
  if args.json:
    print(json.dumps(out))
  else:
    for k, v in out.items():
      print(f'{k}: {v}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
