"""python -m jaxalign.bench completion: the learned and Gaussian backends on real faces (by
cross-validation or a stored model), the prior grid, and the learned rows of --by-yaw."""

import json

import numpy as np
import pytest

from jaxalign import io
from jaxalign import schemes
from jaxalign.benchmarks import completion as bench
from jaxalign.morphable import completion
from jaxalign.morphable import fitting
from jaxalign.morphable.learned import LearnedCompletion

S = schemes.IBUG68


def _write_faces(folder, base, n, seed):
  """``n`` .pts faces: the real face with small random shape changes, rotated and scaled, every
  second one mirrored (a left-looking face)."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  b = np.asarray(base, np.float64) - np.mean(base, 0)
  basis = np.random.default_rng(7).normal(0, 0.5, (2, 68, 2))
  for i in range(n):
    p = b + np.einsum('k,kli->li', rng.normal(0, 1, 2), basis)
    a = rng.uniform(-0.2, 0.2)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * rng.uniform(0.8, 1.5)
    p = p @ rot.T + 150.0
    if i % 2:
      p = p[S.flip_index_array()]
      p[:, 0] = 299.0 - p[:, 0]
    io.write_pts(folder / f'face_{i:02d}.pts', p.astype(np.float32))


@pytest.fixture(scope='module')
def faces(tmp_path_factory, real_face_points):
  folder = tmp_path_factory.mktemp('bench_learned') / 'faces'
  _write_faces(folder, real_face_points, 16, 0)
  return folder


def test_real_cross_validates_learned_and_gaussian(faces, sfm_dir, capsys):
  rc = bench.main(['--real', str(faces), '--backends', 'jax,gaussian,learned', '--folds', '4',
                   '--json'])
  assert rc == 0
  out = json.loads(capsys.readouterr().out)
  assert out['faces'] == 16 and set(out['mean']) == {'jax', 'gaussian', 'learned'}
  assert len(out['per_face']) == 16 and set(out['per_face'][0]['learned']) == {
      'all', 'inner', 'jaw'}
  m = out['mean']
  # 12 training faces per fold fill no |yaw| bin (30 needed): the pose switch hands every face
  # to the 3DMM, whose points the bench passes in, so 'learned' equals 'jax' face by face.
  assert out['learned_cv']['use_learned'] == [[False] * 5] * 4
  assert [r['learned'] for r in out['per_face']] == [r['jax'] for r in out['per_face']]
  # The Gaussian learns the two shape modes from the other faces: far better than the 3DMM.
  assert m['gaussian']['all'] < 0.3 * m['jax']['all'], m
  assert m['learned']['faces'] == 16
  assert sum(out['yaw_counts']) == 16 and set(out['by_yaw']['learned']) == {'all', 'inner', 'jaw'}
  flips = [row['flipped'] for row in out['per_face']]
  assert all(a != b for a, b in zip(flips[::2], flips[1::2]))   # every second one mirrored
  # The text report prints per-face rows, bins and means.
  text = bench.format_real(out)
  assert 'face_00.pts' in text and 'mean' in text and '|yaw| 0-15' in text


def test_real_with_a_stored_model(faces, tmp_path, sfm_dir, capsys):
  pts, _ = bench.real_faces([faces])
  model = LearnedCompletion.fit(pts, S, switch='none')
  path = tmp_path / 'learned.json'
  path.write_text(json.dumps(model.to_dict()))
  assert bench.main(['--real', str(faces), '--backends', 'learned', '--learned', str(path),
                     '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out['learned_model']['faces'] == 16 and out['mean']['learned']['all'] < 0.01
  (tmp_path / 'bad.json').write_text('{"format": "other"}')
  assert bench.main(['--real', str(faces), '--learned', str(tmp_path / 'bad.json')]) == 2
  assert 'not a learned completion' in capsys.readouterr().err


def test_real_bad_input(tmp_path, sfm_dir, capsys):
  assert bench.main(['--real', '--data-dir', str(tmp_path / 'nowhere')]) == 2
  assert 'no such 300-W folder' in capsys.readouterr().err
  _write_faces(tmp_path / 'few', np.random.default_rng(0).normal(100, 20, (68, 2)), 3, 0)
  assert bench.main(['--real', str(tmp_path / 'few'), '--backends', 'learned']) == 2
  assert '2 faces per fold' in capsys.readouterr().err
  assert bench.main(['--real', str(tmp_path / 'few'), '--backends', 'magic']) == 2
  assert 'unknown backend' in capsys.readouterr().err


def test_prior_grid_picks_by_cross_validation(faces, sfm_dir):
  configs = {'default': completion.JAX_DEFAULTS, 'eos prior': fitting.EOS_DEFAULTS}
  out = bench.prior_grid([faces], folds=2, configs=configs, eos=False)
  assert [r['setting'] for r in out['table']] == ['default', 'eos prior']
  assert len(out['cv']['picks']) == 2 and set(out['cv']['picks']) <= set(configs)
  best = min(out['table'], key=lambda r: r['all'])
  assert out['cv']['all'] >= best['all'] - 1e-12       # held out: never better than the best
  assert 'picked per fold' in bench.format_prior_grid(out)


def test_by_yaw_scores_the_learned_completions(sfm_dir):
  faces, _ = bench.renderer_faces(8, 3)
  # A stored model that hands every pose to the 3DMM reproduces the JAX backend's rows.
  never = LearnedCompletion.fit(faces, S, switch='count', min_bin_faces=10 ** 6)
  out = bench.by_yaw(faces=12, seed=3, train_faces=40, backends=('jax',), learned=never)
  rows = out['results']
  assert {'learned_synthetic/true_flip', 'learned_given/true_flip'} <= set(rows)
  np.testing.assert_array_equal(rows['learned_given/true_flip']['bbox']['jaw'],
                                rows['jax/true_flip']['bbox']['jaw'])
  assert 'learned_synthetic/true_flip' in bench.format_by_yaw(out)


def test_real_reads_a_300w_split(tmp_path, sfm_dir):
  from test_datasets import make_300w
  from jaxalign.data.sources import w300
  make_300w(tmp_path)
  names = {s: bench.w300_faces(tmp_path, s)[1] for s in ('train', 'fit', 'val')}
  assert sorted(names['fit'] + names['val']) == sorted(names['train'])
  assert names['val'] and not set(names['fit']) & set(names['val'])
  recs, _ = w300.load(tmp_path, ['train'])
  assert sorted(names['val']) == sorted(r.image for r in recs['train'] if w300.in_val(r))
  out = bench.real(backends=('jax',), data_dir=tmp_path, split='val')
  assert out['faces'] == len(names['val']) and 'val' in out['sources'][0]
  grid = bench.prior_grid(data_dir=tmp_path, split='fit', folds=2, eos=False,
                          configs={'default': completion.JAX_DEFAULTS})
  assert grid['faces'] == len(names['fit']) and 'fit' in grid['sources'][0]
