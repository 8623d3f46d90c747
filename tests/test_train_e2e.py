"""End to end: train the smoke config on fixture folders, resume exactly, stop on NaN."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxalign import workflow
from jaxalign import metrics
from jaxalign.data import records
from jaxalign.training import config as config_lib
from jaxalign import inference
from jaxalign.training import logger, trainer
from test_pipeline import write_fixture


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  train = write_fixture(str(root / 'train'), num=12, size=64, seed=0)
  test = write_fixture(str(root / 'test'), num=5, size=64, seed=1)
  with open(os.path.join(train, 'face002.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n truncated')                  # corrupt image
  with open(os.path.join(train, 'face005.pts'), 'w') as f:
    f.write('version: 1\nn_points: 68\n{\n1 2 3\n}\n')        # malformed annotation
  return train, test


SMOKE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs',
                     'smoke.py')


def _config(data_dirs, **overrides):
  c = config_lib.load_config_file(SMOKE)
  c.data.train_dir, c.data.test_dir = data_dirs
  for key, value in overrides.items():
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return c


def _losses(workdir):
  return [(m['step'], m['loss']) for m in logger.read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]


def test_train_resume_nan(data_dirs, tmp_path):
  # Uninterrupted run: 4 steps, checkpoints at 2 and 4, evaluation at the end.
  full = str(tmp_path / 'full')
  result = workflow.train_and_evaluate(_config(data_dirs), full)
  assert result['step'] == 4 and result['invalid_files'] == 1
  assert result['skipped_images'] > 0         # the corrupt PNG was drawn and replaced
  rows = logger.read_metrics(os.path.join(full, 'metrics.jsonl'))
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  for key in ('loss', 'learning_rate', 'images_per_s', 'loss_cnn1', 'loss_cnn2'):
    assert all(np.isfinite(r[key]) for r in rows), key
  with open(os.path.join(full, 'eval', 'test', 'report.json')) as f:
    report = json.load(f)
  assert report['num_images'] == 5
  assert report['nme_inter_ocular'] > 0 and report['mean_shape_nme_inter_ocular'] > 0
  assert os.path.exists(os.path.join(full, 'config.json'))
  assert any(n.startswith('events') for n in os.listdir(os.path.join(full, 'tensorboard')))
  # The reusable inference: checkpoint -> model -> image-pixel points, as the report saw them.
  run = inference.Run.load(full)
  assert run.step == 4 and run.config.model.kind == 'pose_aware'
  test_records, _ = records.scan_folder(data_dirs[1])
  out = inference.run_pipeline(run.model, run.config, test_records, run.completion(),
                               batch_size=4)
  assert out['points'].shape == (5, 68, 2) and np.isfinite(out['points']).all()
  assert out['valid'].all() and out['flipped'].shape == (5,)
  gt = np.stack([r.points for r in test_records])
  np.testing.assert_allclose(np.mean(metrics.nme(out['points'], gt)),
                             report['nme_inter_ocular'], rtol=1e-4)

  # "Killed" after step 3 (checkpoint at 2, step 3 already logged), then resumed.
  resumed = str(tmp_path / 'resumed')
  # (The end-of-run evaluation is off here: it does not change the losses, and saves time.)
  out = workflow.train_and_evaluate(
      _config(data_dirs, stop_after_steps=3, **{'eval.enabled': False}), resumed)
  assert out['interrupted'] and [s for s, _ in _losses(resumed)] == [1, 2, 3]
  nan_dir = str(tmp_path / 'nan')
  shutil.copytree(resumed, nan_dir)
  workflow.train_and_evaluate(_config(data_dirs, **{'eval.enabled': False}), resumed)
  assert _losses(resumed) == _losses(full)     # bit-exact: the same losses, each step once

  # A non-finite loss stops the run with a clear error and keeps the last good checkpoint.
  with pytest.raises(trainer.NonFiniteLossError, match='last good checkpoint is step 2'):
    workflow.train_and_evaluate(
        _config(data_dirs, **{'optim.learning_rate': 1e30, 'eval.enabled': False}), nan_dir)
  assert sorted(os.listdir(os.path.join(nan_dir, 'checkpoints'))) == ['2']


def test_bad_config_values(data_dirs, tmp_path):
  with pytest.raises(ValueError, match='model.kind'):
    workflow.train_and_evaluate(_config(data_dirs, **{'model.kind': 'transformer'}),
                               str(tmp_path / 'a'))
  with pytest.raises(FileNotFoundError, match='does-not-exist'):
    workflow.train_and_evaluate(
        _config(data_dirs, **{'data.train_dir': str(tmp_path / 'does-not-exist')}),
        str(tmp_path / 'b'))
  with pytest.raises(ValueError, match='model.depth'):
    workflow.train_and_evaluate(_config(data_dirs, **{'model.depth': '42'}), str(tmp_path / 'c'))
