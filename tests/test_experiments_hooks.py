"""The pose experiment's hooks in the trainer and the evaluation: model.flip, model.stable and
the 'gaussian' completion backend (each off by default)."""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign import schemes
from jaxalign.data import records
from jaxalign.data import synthetic
from jaxalign.data import synthetic_dataset
from jaxalign.evaluation import runner
from jaxalign.training import config as config_lib
from jaxalign import inference
from jaxalign.training import state as state_lib

S = schemes.IBUG68
ALT = tuple(i for i in S.stable if i != 54) + (53,)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp('hooks')
  out = []
  for split, num, seed in (('train', 40, 0), ('test', 8, 1)):
    synthetic_dataset.synthesize(root / split, num, config=synthetic.SynthConfig(size=64),
                                 seed=seed, workers=1)
    out.append(str(root / split))
  return out


def test_config_defaults_and_the_stable_key():
  c = config_lib.base_config()
  assert c.model.flip is True and c.model.stable == ''
  assert config_lib.model_scheme(c) is S
  c.model.stable = ','.join(map(str, ALT))
  assert config_lib.model_scheme(c).stable == tuple(sorted(ALT))
  assert config_lib.model_scheme(c).name == 'ibug68'
  c.model.stable = ' ' + ', '.join(map(str, ALT)) + ','
  assert config_lib.model_scheme(c).stable == tuple(sorted(ALT))
  c.data.train_dir = 'x'
  for bad in ('1,2,x', '1,1,2', '5,99'):
    c.model.stable = bad
    with pytest.raises(ValueError, match='model.stable'):
      config_lib.validate(c, 1)


def _left_looking_points(size=32):
  r = synthetic.Renderer(synthetic.SynthConfig(size=size))
  face = r.render(dataclasses.replace(r.sample(0, 0), yaw=-60.0, pitch=0.0, roll=0.0))
  return jnp.asarray(face.points[None])


@pytest.mark.parametrize('flip', [True, False])
def test_model_flip_key(flip):
  c = config_lib.base_config()
  c.model.depth, c.model.input_size, c.model.flip = 'tiny', 32, flip
  c.model.stable = ','.join(map(str, ALT))
  model = state_lib.create_model(c)
  assert model.flip_threshold == (0.0 if flip else float('inf'))
  assert model.scheme.stable == tuple(sorted(ALT))
  _, flipped = model.spatial_transform(_left_looking_points())
  assert bool(flipped[0]) is flip


def test_gaussian_backend_and_run_backend(folders):
  recs, _ = records.scan_folder(folders[1], num_points=68)
  gt = np.stack([r.points for r in recs]).astype(np.float32)
  yaw = np.array([r.yaw for r in recs])
  keep = np.where((yaw < 0)[:, None], S.stable_mask()[S.flip_index_array()][None],
                  S.stable_mask()[None])
  sls = np.where(keep[..., None], gt, np.nan).astype(np.float32)
  res = inference.complete_points(sls, S, 'gaussian', yaw < 0, train_dir=folders[0])
  assert res.backend == 'gaussian' and np.isfinite(res.points).all()
  np.testing.assert_array_equal(res.points[keep], gt[keep])
  with pytest.raises(ValueError, match='train_dir'):
    inference.complete_points(sls, S, 'gaussian', yaw < 0)
  c = config_lib.base_config()
  assert inference.resolve_backend(c) == 'jax'
  c.eval.completion_backend = 'gaussian'
  assert inference.resolve_backend(c) == 'gaussian' and inference.resolve_backend(c, 'eos') == 'eos'
  with pytest.raises(ValueError, match='unknown completion backend'):
    inference.resolve_backend(c, 'nope')


def test_evaluate_cli_offers_gaussian(capsys):
  from jaxalign import evaluate
  with pytest.raises(SystemExit):
    evaluate.main(['--help'])
  assert 'gaussian' in capsys.readouterr().out


def test_trained_run_with_every_hook(folders, tmp_path):
  """Two steps without flip, with another SL set, evaluated with the run's own backend."""
  from jaxalign import workflow
  c = config_lib.load_config_file(os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'smoke.py'))
  c.num_steps, c.checkpoint_every = 2, 2
  c.data.train_dir, c.data.test_dir = folders
  c.eval.enabled = False
  c.model.flip = False
  c.model.stable = ','.join(map(str, ALT))
  c.eval.completion = True               # smoke.py switches it off
  c.eval.completion_backend = 'gaussian'
  workdir = str(tmp_path / 'run')
  workflow.train_and_evaluate(c, workdir)
  rep = runner.evaluate(workdir)         # completion None: the run's 'gaussian'
  assert rep['completion_backend'] == 'gaussian' and rep['num_images'] == 8
  preds = np.load(os.path.join(rep['out_dir'], 'predictions.npz'))
  assert not preds['flipped'].any()      # no flip
  assert np.isfinite(preds['pred']).all()
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['model']['flip'] is False and saved['model']['stable'] == c.model.stable
