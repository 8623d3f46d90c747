"""Training and evaluation on the registered data sets (``data.source``, configs/paper_*.py).

Tiny 300-W and AFLW fixtures in the real formats (written with the helpers of
``test_datasets.py``) go through ``train_and_evaluate`` with a tiny model: the records come
from :mod:`jaxalign.data.sources`, every test split is evaluated into
``eval/<split>/report.json`` with the configured normaliser, bad files are counted.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxalign import workflow
from jaxalign import io, metrics, schemes
from jaxalign.data import records as records_lib
from jaxalign.training import config as config_lib
from jaxalign import inference
from jaxalign.evaluation import runner
from jaxalign.training import data_setup, trainer
from test_datasets import make_300w, make_aflw, make_cofw68, make_points, write_image

REPO = pathlib.Path(__file__).resolve().parents[1]


def _paper_config(name, **overrides):
  """configs/<name>.py shrunk to a tiny model: seconds on a CPU."""
  c = config_lib.load_config_file(str(REPO / 'configs' / f'{name}.py'))
  tiny = {'model.depth': 'tiny', 'model.input_size': 32, 'batch_size': 8, 'num_steps': 2,
          'checkpoint_every': 2, 'log_every': 1, 'eval.batch_size': 8, 'data.num_workers': 0,
          'data.pose_bins': 2, 'optim.learning_rate': 1e-4, 'eval.completion': False}
  for key, value in {**tiny, **overrides}.items():
    if isinstance(value, dict):
      value = ml_collections.ConfigDict(value)
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _write_300w(root: pathlib.Path) -> pathlib.Path:
  """make_300w plus one face more in afw and, to be skipped and counted, a malformed .pts in
  afw (train) and in ibug (test) and a corrupt image in helen/trainset (train)."""
  make_300w(root)
  write_image(root / 'afw' / 'afw_extra.jpg', value=60)
  io.write_pts(root / 'afw' / 'afw_extra.pts', make_points(50))
  for subset, name in (('afw', 'afw_bad'), ('ibug', 'ibug_bad')):
    write_image(root / subset / f'{name}.jpg')
    (root / subset / f'{name}.pts').write_text('version: 1\nn_points: 68\n{\n1 2\n}\n')
  (root / 'helen' / 'trainset' / 'helen_trainset_0.jpg').write_bytes(b'\xff\xd8 truncated')
  return root


def _report(workdir, split):
  with open(os.path.join(workdir, 'eval', split, 'report.json'), encoding='utf-8') as f:
    return json.load(f)


# ----------------------------------------------------------------------------- end to end

def test_paper_300w_trains_on_the_source_and_reports_every_split(tmp_path):
  root = _write_300w(tmp_path / '300W')
  # The plain ResNet keeps this test fast: the data wiring does not depend on the model, and the
  # pose-aware pair runs in the AFLW test below (and on 68 points in test_train_e2e.py).
  config = _paper_config('paper_300w', **{'data.root': str(root), 'model.kind': 'plain'})
  workdir = str(tmp_path / 'run')
  result = workflow.train_and_evaluate(config, workdir)
  assert result['step'] == 2
  # Training: afw 2 + 1 + helen/trainset 1 + lfpw/trainset 1 faces; the bad afw .pts counted,
  # the corrupt helen image replaced in the batches (every face is drawn in two steps).
  assert result['invalid_files'] == 1
  assert result['skipped_images'] > 0
  with open(os.path.join(workdir, trainer.DATA_STATS), encoding='utf-8') as f:
    assert json.load(f)['num_train'] == 5
  assert list(result['reports']) == ['common', 'challenge', 'full']
  expected = {'common': 2, 'challenge': 2, 'full': 4}
  for split, num in expected.items():
    rep = _report(workdir, split)
    assert rep['num_images'] == num, split
    assert rep['dataset'] == f'300w:{split}' and rep['split'] == split
    assert rep['primary_normalization'] == 'inter_ocular'
    assert rep['nme'] == rep['nme_inter_ocular'] and np.isfinite(rep['nme'])
    assert np.isfinite(rep['mean_shape_nme_inter_ocular'])
    assert rep['scheme'] == 'ibug68'
    assert rep['num_invalid_files'] == 1            # the malformed ibug .pts
    assert rep['paper']['nme_inter_ocular'] > 0     # the paper's number beside ours
    assert os.path.isfile(os.path.join(workdir, 'eval', split, 'report.md'))
  assert result['report'] == result['reports']['common']
  # The saved config is the run's: evaluation / prediction CLIs read it back.
  saved = inference.load_config(workdir)
  assert saved.data.source == '300w' and list(saved.data.test_splits) == list(expected)


def test_paper_aflw_19_points_train_and_evaluate_with_box_nme(tmp_path):
  root = tmp_path / 'AFLW'
  root.mkdir()
  make_aflw(root, n=14, missing_image=13)
  options = {'num_train': 8}
  config = _paper_config('paper_aflw', **{'data.root': str(root), 'data.options': options,
                                          'data.test_options': options,
                                          'eval.completion': True})
  assert config.model.kind == 'pose_aware' and config.model.scheme == 'aflw19'
  workdir = str(tmp_path / 'run')
  result = workflow.train_and_evaluate(config, workdir)
  assert result['step'] == 2
  by_split = {s: len(v[0]) for s, v in data_setup.test_sets(config).items()}
  assert set(by_split) == {'test', 'frontal'} and sum(by_split.values()) > 0
  for split, num in by_split.items():
    rep = _report(workdir, split)
    assert rep['num_images'] == num and rep['scheme'] == 'aflw19'
    assert rep['primary_normalization'] == 'bbox' and rep['nme'] == rep['nme_bbox']
    assert np.isfinite(rep['mean_shape_nme_bbox']) and np.isfinite(rep['cnn_nme_bbox'])
    # No 3DMM completion for 19 points: CNN1's unstable points, and the report says so.
    assert rep['completion'] is False and 'aflw19' in rep['completion_error']
  # The model predicts 19 points; CNN2 the 12 stable ones.
  model = inference.Run.load(workdir).model
  assert model.scheme is schemes.AFLW19 or model.scheme.name == 'aflw19'
  assert len(model.stable_indices) == len(schemes.AFLW19.stable) == 12


def test_cli_with_a_missing_data_root_fails_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxalign.train', '--config', str(REPO / 'configs' / 'paper_300w.py'),
       '--workdir', str(tmp_path / 'run'), '--config.data.root=/nonexistent'],
      capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert errors == ['error: config.data.root: 300-W folder /nonexistent does not exist or is '
                    'not a folder'], proc.stderr
  assert 'Traceback' not in proc.stderr


# ----------------------------------------------------------------------------- config checks

def test_base_and_paper_configs_validate():
  config_lib.validate(config_lib.load_config_file(str(REPO / 'configs' / 'smoke.py')), 8)
  for name in ('paper_300w', 'paper_cofw68', 'paper_aflw', 'the300w_lp'):
    config_lib.validate(config_lib.load_config_file(str(REPO / 'configs' / f'{name}.py')), 1)
  c = config_lib.base_config()
  assert c.data.source == '' and c.eval.normalization == 'inter_ocular'
  assert c.eval.completion_convention == '2d'


@pytest.mark.parametrize('overrides,key', [
    ({'data.source': 'nope'}, 'data.source'),
    ({'data.train_split': 'common2'}, 'data.train_split'),
    ({'data.test_splits': ('full', 'hard')}, 'data.test_splits'),
    ({'data.test_source': 'aflw', 'data.test_splits': ('test',), 'data.test_options': {}},
     'model.scheme'),
    ({'model.scheme': 'aflw19'}, 'model.scheme'),
    ({'data.options': {'box': 'detector'}}, 'data.options'),
    ({'data.test_options': {'boxes_diir': 'x'}}, 'data.test_options'),
    ({'data.train_dir': '/somewhere'}, 'data.train_dir'),
    ({'data.root': ''}, 'data.root'),
    ({'eval.normalization': 'face'}, 'eval.normalization'),
    ({'eval.completion_convention': '2.5d'}, 'eval.completion_convention'),
])
def test_validate_names_the_bad_data_key(overrides, key):
  c = _paper_config('paper_300w', **overrides)
  with pytest.raises(ValueError, match=f'config.{key}:'):
    config_lib.validate(c, 1)


# ----------------------------------------------------------------------------- data setup

def test_folder_training_with_a_registered_test_set(tmp_path):
  root = tmp_path / '300W'
  make_300w(root)
  c = _paper_config('smoke', **{'data.train_dir': str(root / 'afw'), 'data.test_source': '300w',
                                'data.test_root': str(root), 'data.test_splits': ('challenge',),
                                'data.synthetic.enabled': False})
  config_lib.validate(c, 1)
  recs, num_invalid = data_setup.training_records(c)
  assert len(recs) == 2 and num_invalid == 0
  sets = data_setup.test_sets(c)
  assert list(sets) == ['challenge'] and len(sets['challenge'][0]) == 2
  assert sets['challenge'][0][0].meta['box_source'] == 'detector'
  # Without test splits the folder's test_dir is the one held-out split, as before.
  c.data.test_splits = ()
  c.data.test_dir = str(root / 'ibug')
  c.data.test_split = 'ibug'
  assert {k: len(v[0]) for k, v in data_setup.test_sets(c).items()} == {'ibug': 2}


def test_missing_test_root_and_tfds_errors_name_the_key(tmp_path):
  make_300w(tmp_path / '300W')
  c = _paper_config('paper_cofw68', **{'data.root': str(tmp_path / '300W'),
                                       'data.test_root': str(tmp_path / 'nowhere')})
  assert len(data_setup.training_records(c)[0]) == 4
  with pytest.raises(FileNotFoundError, match='config.data.test_root: COFW-68 folder'):
    data_setup.test_sets(c)
  (tmp_path / 'cofw').mkdir()
  make_cofw68(tmp_path / 'cofw', n=3, annotate=(1, 3))     # face 2 lacks its 68 points
  c.data.test_root = str(tmp_path / 'cofw')
  sets = data_setup.test_sets(c)
  assert list(sets) == ['test'] and len(sets['test'][0]) == 2 and sets['test'][1] == 1
  try:
    import tensorflow_datasets  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    c = _paper_config('the300w_lp', **{'data.root': str(tmp_path)})
    with pytest.raises(ValueError, match='config.data.root: .*tensorflow-datasets'):
      data_setup.training_records(c)


# ----------------------------------------------------------------------------- evaluation

def _fake_predictions(records, scheme, shift=1.0, stable_only=False):
  gt = np.stack([r.points for r in records]).astype(np.float32)
  pred = gt + shift
  stable = np.where(scheme.stable_mask()[None, :, None], pred, np.nan).astype(np.float32)
  rough = pred + 1.0
  return {'points': (stable if stable_only else pred).copy(), 'rough': rough,
          'stable': stable, 'cnn_points': np.where(np.isnan(stable), rough, stable),
          'flipped': np.zeros(len(records), bool),
          'boxes': np.stack([r.box for r in records]).astype(np.float32),
          'valid': np.ones(len(records), bool)}


def test_evaluate_uses_the_configured_normaliser_and_3d_completion(tmp_path, monkeypatch):
  """The report's ``nme`` is the configured normaliser's; '3d' completes in the 3D
  convention (the 3DMM fit itself is tested in test_morphable_completion.py)."""
  scheme = schemes.IBUG68
  recs = [records_lib.FaceRecord(image=f'{i}.png', points=make_points(i, size=64),
                                 box=np.asarray([0, 0, 60, 50], np.float32)) for i in range(3)]
  calls = {}

  def fake_predict(model, config, records, batch_size, **kw):
    calls['predict'] = True
    return _fake_predictions(records, scheme, stable_only=True)

  class FakeResult:
    def __init__(self, points):
      self.points = points

  def fake_complete(points, scheme, backend, flip, convention, **kw):
    calls['convention'] = convention
    return FakeResult(np.where(np.isnan(points), 7.0, points))

  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(inference, 'predict_records', fake_predict)
  monkeypatch.setattr(completion, 'complete', fake_complete)
  c = _paper_config('the300w_lp', **{'eval.completion': True})
  mean = np.asarray(make_points(9, size=32))
  info = {'dataset': 'aflw2k3d:test', 'name': 'aflw2k3d', 'split': 'test',
          'normalization': 'bbox'}
  rep = runner.evaluate_records(None, c, recs, tmp_path / 'e', info, mean_shape=mean, step=3,
                                num_invalid=2, with_plots=False)
  assert calls == {'predict': True, 'convention': '3d'}
  assert rep['completion'] and rep['completion_convention'] == '3d'
  assert rep['primary_normalization'] == 'bbox' and rep['nme'] == rep['nme_bbox']
  assert rep['dataset'] == 'aflw2k3d:test'
  gt = np.stack([r.points for r in recs])
  expected = np.where(scheme.stable_mask()[None, :, None], gt + 1.0, 7.0)
  boxes = np.stack([r.box for r in recs])
  np.testing.assert_allclose(rep['nme'], metrics.nme(expected, gt, 'bbox', scheme=scheme,
                                                     boxes=boxes).mean(), rtol=1e-5)
  assert rep['num_invalid_files'] == 2 and rep['checkpoint_step'] == 3
  assert 'mean_shape_nme_bbox' in rep and 'mean_shape_nme_inter_ocular' in rep
  # Inter-ocular primary: ``nme`` is the inter-ocular NME and the box NME uses the landmarks'
  # box, as the evaluation CLI does.
  calls.clear()
  c.eval.completion_convention = '2d'
  c.eval.normalization = 'inter_ocular'
  info = {'dataset': 'test', 'name': None, 'split': 'test', 'normalization': 'inter_ocular'}
  rep = runner.evaluate_records(None, c, recs, tmp_path / 'e2', info, mean_shape=mean,
                                with_plots=False)
  assert calls == {'predict': True, 'convention': '2d'}
  np.testing.assert_allclose(rep['nme'], metrics.nme(expected, gt, scheme=scheme).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(rep['nme_bbox'], metrics.nme(expected, gt, 'bbox', scheme=scheme)
                             .mean(), rtol=1e-5)
  assert rep['primary_normalization'] == 'inter_ocular' and rep['dataset'] == 'test'
