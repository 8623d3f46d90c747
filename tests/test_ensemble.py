"""config.ensemble: members trained by the same command, opened as one model, their points
averaged wherever a model goes (inference.ModelEnsemble)."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxalign import inference
from jaxalign import workflow
from jaxalign.data import records as records_lib
from jaxalign.training import config as config_lib
from jaxalign.training import data_setup
from jaxalign.training import runs

from conftest import REPO_ROOT, write_faces


def _smoke(root, **overrides):
  config = config_lib.load_config_file(str(REPO_ROOT / 'configs' / 'smoke.py'))
  config.num_steps = config.checkpoint_every = 2
  config.data.train_dir = str(root / 'train')
  config.data.test_dir = str(root / 'test')
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope='module')
def ensemble_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('ensemble')
  write_faces(root / 'train', 16, 0)
  write_faces(root / 'test', 4, 1)
  config = _smoke(root, **{'ensemble.members': 2, 'data.holdout_fraction': 0.25})
  result = workflow.train_and_evaluate(config, str(root / 'run'))
  return root / 'run', result


def _params(folder):
  model = runs.restore_model(str(folder))[0]
  from flax import nnx
  return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_the_command_trains_each_member_with_its_own_draws(ensemble_run):
  workdir, result = ensemble_run
  assert result['step'] == 2
  member = workdir / 'members' / '1'
  saved = json.loads((member / 'config.json').read_text())
  assert (saved['ensemble']['members'], saved['ensemble']['member']) == (1, 1)
  assert saved['seed'] == json.loads((workdir / 'config.json').read_text())['seed']
  # Same start and data, other draws (initialisation, batches, augmentation): other weights.
  differs = [not np.array_equal(a, b) for a, b in zip(_params(workdir), _params(member))]
  assert any(differs)
  # Each member has its own report; the run's report is the ensemble's.
  assert (member / 'eval' / 'test' / 'report.json').is_file()
  report = json.loads((workdir / 'eval' / 'test' / 'report.json').read_text())
  chosen = report['ensemble_single_member']
  assert chosen['count'] == len(chosen['images']) >= 0
  assert 'ensemble_single_member' not in json.loads(
      (member / 'eval' / 'test' / 'report.json').read_text())


def test_the_run_opens_as_an_ensemble_whose_points_are_the_members_mean(ensemble_run):
  workdir, _ = ensemble_run
  run = inference.Run.load(workdir)
  assert isinstance(run.model, inference.ModelEnsemble) and len(run.model) == 2
  assert run.member_dirs == [str(workdir), str(workdir / 'members' / '1')]
  recs, _ = records_lib.scan_folder(str(workdir.parent / 'test'), num_points=68)
  config = run.config.copy_and_resolve_references()
  config.ensemble.max_disagreement = 0.0      # the mean on every face (the choice: below)
  together = inference.predict_records(run.model, config, recs)
  np.testing.assert_array_equal(together['ensemble_choice'], -1)
  alone = [inference.predict_records(m, config, recs) for m in run.model.members]
  np.testing.assert_allclose(together['rough'], (alone[0]['rough'] + alone[1]['rough']) / 2,
                             atol=1e-5)
  # The first member's stable set: there the pairs' points averaged (CNN2's, or CNN1's for a
  # member that mirrored the face the other way), elsewhere CNN1's.
  stable = np.isfinite(alone[0]['stable'])
  want = np.where(stable, (alone[0]['cnn_points'] + alone[1]['cnn_points']) / 2,
                  (alone[0]['rough'] + alone[1]['rough']) / 2)
  np.testing.assert_allclose(together['cnn_points'], want, atol=1e-5)
  np.testing.assert_array_equal(np.isfinite(together['stable']), stable)
  np.testing.assert_array_equal(together['flipped'], alone[0]['flipped'])
  assert np.abs(alone[0]['rough'] - alone[1]['rough']).max() > 1e-4   # two different networks
  # The full pipeline and its end-of-run evaluation read the same averaged pair.
  res = inference.run_pipeline(run.model, config, recs, 'none')
  np.testing.assert_allclose(res['cnn_points'], together['cnn_points'], atol=1e-5)


def test_a_missing_member_is_named(ensemble_run, tmp_path):
  workdir, _ = ensemble_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / 'members' / '1')
  with pytest.raises(FileNotFoundError, match=r'members/1'):
    inference.Run.load(copy).model  # pylint: disable=expression-not-assigned


def test_a_member_of_another_input_size_is_refused(ensemble_run, tmp_path):
  workdir, _ = ensemble_run
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  path = copy / 'members' / '1' / 'config.json'
  saved = json.loads(path.read_text())
  saved['model']['input_size'] = 48
  path.write_text(json.dumps(saved))
  with pytest.raises(ValueError, match='model.input_size'):
    inference.Run.load(copy).model  # pylint: disable=expression-not-assigned


def test_members_share_the_held_out_split(tmp_path):
  """The completion is calibrated on the run's held-out faces, which no member may train on."""
  write_faces(tmp_path / 'train', 16, 0)
  write_faces(tmp_path / 'test', 2, 1)
  split = {}
  for k in (0, 1):
    config = _smoke(tmp_path, **{'data.holdout_fraction': 0.25, 'ensemble.member': k})
    records, _ = data_setup.training_records(config)
    _, holdout = data_setup.validation_records(config, records)
    split[k] = sorted(r.image for r in holdout)
    assert config_lib.draw_seed(config) == config.seed + k
  assert split[0] == split[1] and split[0]


@pytest.mark.parametrize('value', [0, -1, 17])
def test_a_bad_member_count_is_named(value):
  config = config_lib.load_config_file(str(REPO_ROOT / 'configs' / 'smoke.py'))
  config.ensemble.members = value
  with pytest.raises(ValueError, match='config.ensemble.members'):
    config_lib.validate(config, 1)


def _member(points, flipped, scheme):
  stable = np.where(scheme.stable_mask()[:, None], points, np.nan).astype(np.float32)
  return {'rough': points.astype(np.float32), 'stable': stable,
          'cnn_points': inference.merge_stable(stable, points.astype(np.float32)),
          'flipped': np.asarray(flipped), 'valid': np.ones(len(points), bool),
          'boxes': np.zeros((len(points), 4), np.float32)}


def test_a_collapsed_member_is_outvoted_by_the_most_rigid_one(real_face_points, sfm_dir):
  """Members that agree are averaged; on a face where one has collapsed (points scattered, far
  from the other's), the face is the other member's, whole: points, stable set, flip."""
  from jaxalign import schemes
  scheme = schemes.IBUG68
  face = np.asarray(real_face_points, np.float64)
  rng = np.random.default_rng(0)
  sane = np.stack([face, face + 1.0])
  other = np.stack([face + rng.normal(0, 1.0, face.shape), face - 1.0])
  side = np.sqrt(np.prod(face.max(0) - face.min(0)))
  scattered = face.mean(0) + rng.normal(0, 0.3 * side, face.shape)      # a collapse
  collapsed = np.stack([scattered, face - 1.0])
  config = config_lib.load_config_file(str(REPO_ROOT / 'configs' / 'smoke.py'))
  for name, second in (('agree', other), ('collapse', collapsed)):
    preds = [_member(sane, [False, False], scheme), _member(second, [True, False], scheme)]
    gap = inference.member_disagreement(preds)
    out = inference.ensemble_predictions(preds, config)
    if name == 'agree':
      assert gap.max() < config.ensemble.max_disagreement
      np.testing.assert_array_equal(out['ensemble_choice'], [-1, -1])
      np.testing.assert_allclose(out['rough'], (sane + other) / 2, atol=1e-4)
      continue
    assert gap[0] > config.ensemble.max_disagreement > gap[1]
    np.testing.assert_array_equal(out['ensemble_choice'], [0, -1])
    np.testing.assert_array_equal(out['rough'][0], preds[0]['rough'][0])
    np.testing.assert_array_equal(out['cnn_points'][0], preds[0]['cnn_points'][0])
    np.testing.assert_allclose(out['rough'][1], face, atol=1e-4)         # (face+1 + face-1)/2
    # The collapse the other way round: the face is the second member's, its flip included.
    out = inference.ensemble_predictions(preds[::-1], config)
    np.testing.assert_array_equal(out['ensemble_choice'], [1, -1])
    assert not out['flipped'][0] and out['flipped'][1] == preds[1]['flipped'][1]
    config.ensemble.max_disagreement = 0.0          # off: the mean everywhere
    out = inference.ensemble_predictions(preds, config)
    np.testing.assert_array_equal(out['ensemble_choice'], [-1, -1])
    np.testing.assert_allclose(out['rough'], (sane + collapsed) / 2, atol=1e-4)
