"""``python -m jaxalign.bench completion [--batch-size 256] [--json] [--tune] [--by-yaw]
[--real DIR...]``: 3DMM completion speed and accuracy, JAX backend vs eos, on the same faces.

``--fusion`` scores fused completion (:func:`jaxalign.morphable.completion.complete` with
``observed`` / ``weights``) on synthetic faces: observations = true points plus Gaussian noise of
a few levels (fractions of the inter-ocular distance, a stand-in for CNN1's points), weighted 0.5
or by :func:`~jaxalign.morphable.completion.fusion_weights` from the residuals of the same
noise on held-out faces (seed + 1).

``--real DIR...`` (folders or single files of ``.pts`` / ``.ljson`` 68-point faces, e.g.
``../shared/faces/real ../shared/faces/image_0010.pts``) scores both backends on real
annotations: ground-truth SLs in (their mirror for a left-looking face), the other points out,
inter-ocular NME over all completed points, the non-jaw and the jaw ones, per face (with the
estimated yaw) and on average. No synthetic face is involved.

``--by-yaw`` instead scores the completion per |yaw| bin (0-30, 30-60, 60-75, 75-90 degrees),
split into the non-jaw and the jaw ULs, with the inter-ocular and the landmark-box normaliser,
for both backends and two references without a 3DMM (the mean training shape of the SL pose
bin aligned to the SLs by a similarity, and the 2D Gaussian completion of
:mod:`jaxalign.morphable.statistical`), from ground-truth SLs plus optional Gaussian noise
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
           references=True, config=None):
  """Per-|yaw|-bin UL errors of the completion (see the module docstring); JSON-able dict."""
  from jaxalign.morphable import completion
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
  for backend in backends:
    for mode, flip in (('true_flip', truth), ('detected_flip', None)):
      r = completion.complete(given, backend=backend, image_size=size, flip=flip, model=model,
                              config=config if backend == 'jax' else None)
      rows[f'{backend}/{mode}'] = binned_ul_errors(r.points, r.kept, gt, yaw)
      if flip is None:
        wrong = (r.flipped != truth)[np.abs(yaw) > 20]
        rows[f'{backend}/{mode}']['wrong_flips'] = int(wrong.sum())
  if references:
    train, _ = renderer_faces(train_faces, seed + 1000, model)
    for name, bins in (('mean_shape', 5), ('gaussian', 3)):
      ref = statistical.fit(train, scheme, num_bins=bins)
      if name == 'mean_shape':
        pts, kept = _mean_shape_reference(ref, given, truth, scheme)
      else:
        res = statistical.complete(given, ref, scheme, flip=truth)
        pts, kept = res.points, res.kept
      rows[f'{name}/true_flip'] = binned_ul_errors(pts, kept, gt, yaw)
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
  non-jaw ones (17-67) and the jaw ones (0-16)."""
  out = {k: np.full(len(gt), np.nan) for k in ('all', 'inner', 'jaw')}
  for i in range(len(gt)):
    if not result.ok[i]:
      continue
    ul = [j for j in range(68) if not result.kept[i, j]]
    for k, sel in (('all', ul), ('inner', [j for j in ul if j >= 17]),
                   ('jaw', [j for j in ul if j < 17])):
      out[k][i] = metrics.nme(result.points[i:i + 1], gt[i:i + 1], indices=sel)[0]
  return out


def real(paths, backends=('jax', 'eos'), config=None):
  """Both backends on real annotated faces (see the module docstring); JSON-able dict."""
  from jaxalign.morphable import completion
  from jaxalign.morphable.model import load_model
  model = load_model()
  gt, names = real_faces(paths)
  size = np.stack([completion.default_image_size(p) for p in gt])
  out = {'date': time.strftime('%Y-%m-%d'), 'faces': len(gt), 'sources': list(map(str, paths)),
         'normalization': 'inter_ocular', 'mean': {}, 'per_face': []}
  rows = [{'file': n} for n in names]
  for backend in backends:
    r = completion.complete(gt, backend=backend, image_size=size, model=model,
                            config=config if backend == 'jax' else None)
    e = real_errors(r, gt)
    out['mean'][backend] = {k: float(np.nanmean(v)) for k, v in e.items()}
    out['mean'][backend]['failed'] = int((~r.ok).sum())
    for i, row in enumerate(rows):
      row[backend] = {k: float(e[k][i]) for k in e}
      row.setdefault('yaw', float(r.yaw[i]))
      row.setdefault('flipped', bool(r.flipped[i]))
  out['per_face'] = rows
  return out


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


def format_real(out) -> str:
  """A plain-text table of :func:`real` (percent)."""
  backends = list(out['mean'])
  lines = [f"{out['faces']} real faces from {', '.join(out['sources'])}; inter-ocular NME %, "
           'completed points: all / non-jaw / jaw']
  head = f"{'face':28s}{'yaw':>7s}" + ''.join(f'{b:>24s}' for b in backends)
  lines.append(head)
  for row in out['per_face']:
    cells = ''.join(
        f"{100 * row[b]['all']:8.2f}{100 * row[b]['inner']:8.2f}{100 * row[b]['jaw']:8.2f}"
        for b in backends)
    name = row['file'].rsplit('/', 1)[-1]
    lines.append(f"{name[:28]:28s}{row['yaw']:7.1f}{cells}")
  cells = ''.join(f"{100 * out['mean'][b]['all']:8.2f}{100 * out['mean'][b]['inner']:8.2f}"
                  f"{100 * out['mean'][b]['jaw']:8.2f}" for b in backends)
  lines.append(f"{'mean':28s}{'':7s}{cells}")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench completion', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch-size', type=int, default=256, help='faces per JAX call (default 256)')
  p.add_argument('--eos-faces', type=int, default=64, help='faces timed with eos (default 64)')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--seed', type=int, default=None,
                 help='face seed (default 0; --by-yaw: 7)')
  p.add_argument('--mismatch-mm', type=float, default=1.0)
  p.add_argument('--noise', type=float, default=None,
                 help='2D noise on the given points: fraction of the inter-ocular distance '
                      '(default 0.01); --by-yaw: of the landmark box side (default 0)')
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
  p.add_argument('--backends', default='jax,eos',
                 help='--by-yaw, --real: comma-separated backends')
  p.add_argument('--fusion', action='store_true',
                 help='score fused completion (noisy observations of the ULs) instead')
  p.add_argument('--real', nargs='+', metavar='DIR', default=None,
                 help='score the real faces (.pts / .ljson) of these folders or files instead')
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
  if args.real:
    try:
      out = real(args.real, tuple(b for b in args.backends.split(',') if b))
    except (FileNotFoundError, ValueError) as e:
      print(e, file=sys.stderr)
      return 2
    print(json.dumps(out) if args.json else format_real(out))
    return 0
  if args.tune:
    tune(mismatch_mm=args.mismatch_mm, noise=0.01 if args.noise is None else args.noise)
    return 0
  if args.by_yaw:
    seed = 7 if args.seed is None else args.seed
    noise = 0.0 if args.noise is None else args.noise
    out = by_yaw(args.faces, seed, args.train_faces, args.folder, noise,
                 tuple(b for b in args.backends.split(',') if b))
    print(json.dumps(out) if args.json else format_by_yaw(out))
    return 0
  out = run(args.batch_size, args.eos_faces, 0 if args.seed is None else args.seed, args.repeats,
            args.mismatch_mm, 0.01 if args.noise is None else args.noise)
  if args.json:
    print(json.dumps(out))
  else:
    for k, v in out.items():
      print(f'{k}: {v}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
