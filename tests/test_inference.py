"""jaxalign.inference: Run (a run opened once: config merged onto the base config, parameters
and model state without the optimiser), Completion (the one gating rule of the completion's
tables), the one fallback, and the calibration that makes the tables through run_pipeline."""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest

from jaxalign import calibration
from jaxalign import inference
from jaxalign import predict as predict_cli
from jaxalign.morphable import completion as completion_lib
from jaxalign.schemes import IBUG68
from jaxalign.training import checkpointing
from jaxalign.training import config as config_lib
from jaxalign.training import optim
from jaxalign.training import state as state_lib


@pytest.fixture(scope='module')
def run(smoke_run):
  """The session's trained smoke run (tests/conftest.py)."""
  return smoke_run


def _smoke_config(**overrides):
  import pathlib
  config = config_lib.load_config_file(
      str(pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'smoke.py'))
  config.update_from_flattened_dict(overrides)
  return config


def test_predict_never_creates_optimiser_state(run, tmp_path, monkeypatch, real_face_paths):
  """Opening a run for predict builds no optimiser and reads only the parameters, the model
  state and the step of the checkpoint (an orbax partial restore)."""
  def forbidden(*args, **kwargs):
    raise AssertionError('inference must not build an optimiser or a training state')

  monkeypatch.setattr(optim, 'make_optimizer', forbidden)
  monkeypatch.setattr(state_lib, 'init_state', forbidden)
  monkeypatch.setattr(checkpointing.Checkpointer, 'restore', forbidden)
  restored = []
  original = checkpointing.Checkpointer.restore_model

  def spy(self, abstract, step=None):
    tree, step = original(self, abstract, step)
    restored.append(sorted(tree))
    return tree, step

  monkeypatch.setattr(checkpointing.Checkpointer, 'restore_model', spy)
  image, _ = real_face_paths
  rc = predict_cli.main(['--workdir', str(run), str(image), '--bbox', '60,60,200,200',
                         '--out', str(tmp_path / 'p'), '--no-progress'])
  assert rc == 0
  assert restored == [['model_state', 'params', 'step']]
  out = json.loads((tmp_path / 'p' / 'image_0010.json').read_text())
  assert out['checkpoint_step'] == 2


def test_run_load_is_lazy_and_names_a_missing_run(run, tmp_path):
  opened = inference.Run.load(run)
  assert opened._model is None           # pylint: disable=protected-access
  assert opened.step == 2 and opened._model is not None   # pylint: disable=protected-access
  assert opened.mean_shape.shape == (68, 2)
  with pytest.raises(FileNotFoundError, match='config.json'):
    inference.Run.load(tmp_path / 'nowhere')
  empty = tmp_path / 'no_ckpt'
  empty.mkdir()
  shutil.copy(run / 'config.json', empty / 'config.json')
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    inference.Run.load(empty).model   # pylint: disable=expression-not-assigned


def test_an_old_config_json_loads_with_the_base_defaults(run, tmp_path):
  """A run written before newer keys existed: every missing key takes base_config()'s default,
  except the keys whose old behaviour differs (LEGACY_DEFAULTS); retired options are dropped,
  or refused where they changed the predictions."""
  old = tmp_path / 'old'
  shutil.copytree(run, old, ignore=shutil.ignore_patterns('eval'))
  saved = json.loads((old / 'config.json').read_text())
  for section, key in (('model', 'transform_points'), ('model', 'cnn2_fill'),
                       ('eval', 'completion_fusion'), ('eval', 'box_jitter'),
                       ('eval', 'completion_convention'), ('data', 'host_scale'),
                       ('data', 'jpeg_draft')):
    del saved[section][key]
  saved['model']['cnn2_residual'] = False      # a retired option at its default
  saved['model']['freeze_cnn1'] = True         # a retired training-only option
  saved['data']['mix'] = {'config': 'configs/default.py', 'bins': 1}   # another (session 16)
  saved['data']['options'] = {'a_loader_option': 3}
  (old / 'config.json').write_text(json.dumps(saved))
  opened = inference.Run.load(old)
  c = opened.config
  assert c.model.transform_points == 'all'     # what a run without the key did
  assert c.eval.completion_fusion is False and c.eval.completion_convention == '2d'
  assert c.eval.box_jitter.shift == 0.0 and c.data.host_scale == 0.0
  assert c.data.jpeg_draft is False            # its photos decoded in full, as it trained
  assert c.data.options.to_dict() == {'a_loader_option': 3}
  assert 'freeze_cnn1' not in c.model and 'cnn2_residual' not in c.model
  assert 'mix' not in c.data
  res = inference.run_pipeline(opened.model, c, _records(run), opened.completion('none'))
  assert np.isfinite(res['points']).all()
  saved['model']['cnn2_residual'] = True
  (old / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r'config\.model\.cnn2_residual=True'):
    inference.Run.load(old)
  # The options retired in session 13 (measured on cpu_300w, rejected): their default loads,
  # the other value is refused by name.
  for section, key, default, other in (('model', 'cnn2_points', 'stable', 'all'),
                                       ('eval', 'cnn1_guard', False, True)):
    saved['model']['cnn2_residual'] = False
    saved[section][key] = default
    (old / 'config.json').write_text(json.dumps(saved))
    assert key not in inference.Run.load(old).config[section]
    saved[section][key] = other
    (old / 'config.json').write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=rf'config\.{section}\.{key}={other!r}'):
      inference.Run.load(old)
    del saved[section][key]


def _records(run):
  from jaxalign.data import records as records_lib
  config = inference.Run.load(run).config
  recs, _ = records_lib.scan_folder(config.data.test_dir, 68)
  return recs[:2]


def _tables(backend='jax', fused=True, convention='2d'):
  bins = list(completion_lib.YAW_BINS)
  rms = np.full((len(bins) - 1, 68), 0.05).tolist()
  alpha = np.full((len(bins) - 1, 68), 0.5).tolist()
  return {'residuals': {'rms': rms, 'bins': bins, 'blend': {
      'alpha': alpha, 'backend': backend, 'fused': fused, 'convention': convention}}}


def test_completion_gating_is_one_rule(caplog):
  config = _smoke_config(**{'eval.completion': True, 'eval.completion_fusion': True,
                            'eval.completion_blend': True})
  c = inference.Completion.of_run(config, tables=_tables())
  assert (c.backend, c.convention, c.fused) == ('jax', '2d', True)
  assert c.blend is not None and c.blend['bins'] == completion_lib.YAW_BINS
  # CNN2's stable points are mixed only with eval.blend_stable (the table has them at 0.5).
  stable = IBUG68.stable_mask()
  assert np.isnan(c.blend['alpha'][:, stable]).all()
  assert (c.blend['alpha'][:, ~stable] == 0.5).all()
  config.eval.blend_stable = True
  mixed = _tables()
  mixed['residuals']['blend']['stable_mixed'] = True
  assert (inference.Completion.of_run(config, tables=mixed).blend['alpha'] == 0.5).all()
  with caplog.at_level(logging.WARNING, logger='jaxalign.inference'):
    inference.Completion.of_run(config, tables=_tables())      # estimated without the option
  assert any('estimated without it' in r.getMessage() for r in caplog.records)
  config.eval.blend_stable = False
  caplog.clear()
  # eos: no fusion, and the mix made for the fused jax completion does not fit.
  with caplog.at_level(logging.WARNING, logger='jaxalign.inference'):
    c = inference.Completion.of_run(config, backend='eos', tables=_tables())
  assert c.fusion is None and c.blend is None
  assert any('blend table was estimated' in r.getMessage() for r in caplog.records)
  c = inference.Completion.of_run(config, backend='eos', tables=_tables('eos', False))
  assert c.blend is not None
  # Another convention, or the plain model: no mix, no fusion.
  assert inference.Completion.of_run(config, convention='3d', tables=_tables()).blend is None
  plain = _smoke_config(**{'model.kind': 'plain', 'eval.completion_fusion': True,
                           'eval.completion_blend': True})
  c = inference.Completion.of_run(plain, backend='jax', tables=_tables())
  assert c.fusion is None and c.blend is None
  # Switched off in the config: the tables are ignored.
  off = _smoke_config(**{'eval.completion': True})
  c = inference.Completion.of_run(off, tables=_tables())
  assert c.fusion is None and c.blend is None
  # Missing tables: a warning, no fusion.
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger='jaxalign.inference'):
    c = inference.Completion.of_run(config, tables={})
  assert c.fusion is None and any('no cnn1_residuals.json' in r.getMessage()
                                  for r in caplog.records)
  # A hand-made value is checked too.
  with pytest.raises(ValueError, match='jax backend'):
    inference.Completion('eos', fusion={'rms': np.zeros((4, 68)), 'bins': (0, 1)})
  with pytest.raises(ValueError, match='unknown completion backend'):
    inference.Completion('nope')


def test_learned_tables_are_carried(run, tmp_path):
  other = tmp_path / 'learned'
  shutil.copytree(run, other, ignore=shutil.ignore_patterns('eval'))
  assert inference.Run.load(other).completion().learned is None
  (other / inference.LEARNED_FILE).write_text(json.dumps({'kind': 'test', 'values': [1, 2]}))
  assert inference.Run.load(other).completion().learned == {'kind': 'test', 'values': [1, 2]}
  (other / inference.LEARNED_FILE).write_text('[1, 2]')
  with pytest.raises(ValueError, match='learned_completion.json'):
    inference.Run.load(other).completion()


def test_the_one_fallback():
  stable = np.full((2, 3, 2), np.nan, np.float32)
  stable[:, 0] = 1.0                              # point 0 stable, points 1-2 unstable
  completed = np.full((2, 3, 2), 5.0, np.float32)
  completed[0, 2, 1] = np.nan                     # one coordinate the completion left NaN
  rough = np.full((2, 3, 2), 9.0, np.float32)
  points, bad = inference.fill_unstable(stable, completed, rough, ok=np.array([True, False]))
  np.testing.assert_array_equal(bad, [[False, False, True], [False, True, True]])
  np.testing.assert_array_equal(points[0], [[1, 1], [5, 5], [9, 9]])   # the whole point
  np.testing.assert_array_equal(points[1], [[1, 1], [9, 9], [9, 9]])   # failed fit: CNN1's


def test_calibration_goes_through_run_pipeline(run, monkeypatch):
  """The tables come from run_pipeline itself: the CNNs alone, then the run's completion fused
  with the new residuals and not yet mixed; alpha is fitted on exactly those points."""
  config = inference.Run.load(run).config
  config.eval.completion = True
  config.eval.completion_fusion = True
  config.eval.completion_blend = True
  opened = inference.Run(run, config)
  calls = []
  original = inference.run_pipeline

  def spy(model, config, records, completion=None, batch_size=None):
    res = original(model, config, records, completion, batch_size)
    calls.append((completion, res))
    return res

  monkeypatch.setattr(inference, 'run_pipeline', spy)
  recs = _records(run) * 2
  table = calibration.calibrate(opened.model, config, recs)
  assert [c if isinstance(c, str) else c.backend for c, _ in calls] == ['none', 'jax']
  second = calls[1][0]
  assert second.fused and second.blend is None
  np.testing.assert_array_equal(np.asarray(second.fusion['rms'], np.float64),
                                np.asarray(table['rms'], np.float64))
  res = calls[1][1]
  gt = np.stack([r.points for r in recs]).astype(np.float32)
  alpha = completion_lib.blend_weights(res['points'], res['rough'], gt,
                                       inference.cnn1_yaw(res['rough']))
  np.testing.assert_array_equal(np.where(np.isfinite(alpha), alpha, np.nan),
                                np.asarray(table['blend']['alpha'], np.float64))
  assert table['blend']['backend'] == 'jax' and table['blend']['fused'] is True


def test_average_predictions_keeps_the_first_pass_stable_set():
  """eval.recrop's merge: CNN1's and the pair's points averaged over two passes, the stable set
  (and flip, boxes) the first pass's, a face the second pass could not read kept as it was."""
  nan = np.nan
  first = {'rough': np.zeros((2, 3, 2), np.float32), 'valid': np.array([True, True]),
           'stable': np.array([[[2, 2], [nan, nan], [nan, nan]]] * 2, np.float32),
           'flipped': np.array([False, True]), 'boxes': np.ones((2, 4), np.float32)}
  first['cnn_points'] = inference.merge_stable(first['stable'], first['rough'])
  second = {'rough': np.full((2, 3, 2), 4.0, np.float32), 'valid': np.array([True, False]),
            'stable': np.array([[[nan, nan], [6, 6], [nan, nan]]] * 2, np.float32),
            'flipped': np.array([True, True]), 'boxes': np.zeros((2, 4), np.float32)}
  second['cnn_points'] = inference.merge_stable(second['stable'], second['rough'])
  out = inference.average_predictions([first, second])
  # face 0: point 0 stable in pass 1 (2) and CNN1's in pass 2 (4) -> 3; points 1-2 CNN1's mean.
  np.testing.assert_array_equal(out['cnn_points'][0], [[3, 3], [2, 2], [2, 2]])
  np.testing.assert_array_equal(out['rough'][0], np.full((3, 2), 2.0))
  assert np.isnan(out['stable'][0, 1:]).all() and not np.isnan(out['stable'][0, 0]).any()
  np.testing.assert_array_equal(out['cnn_points'][1], first['cnn_points'][1])   # pass 2 invalid
  np.testing.assert_array_equal(out['flipped'], first['flipped'])
  np.testing.assert_array_equal(out['boxes'], first['boxes'])


def test_recrop_records_frames_the_points():
  from jaxalign.data import records as records_lib
  recs = [records_lib.FaceRecord(image='a.jpg', points=np.zeros((3, 2), np.float32),
                                 box=np.array([0, 0, 9, 9], np.float32)) for _ in range(3)]
  pts = np.array([[[1, 2], [5, 8], [3, 4]],
                  [[1, 2], [np.nan, 8], [3, 4]],      # not finite: the box stays
                  [[1, 2], [1, 2], [1, 2]]],          # no extent: the box stays
                 np.float32)
  out = inference.recrop_records(recs, pts)
  np.testing.assert_array_equal(out[0].box, [1, 2, 5, 8])
  np.testing.assert_array_equal(out[1].box, recs[1].box)
  np.testing.assert_array_equal(out[2].box, recs[2].box)
  assert out[0].image == 'a.jpg' and out[0] is not recs[0]
  # Moved by fractions of the box's width (x) and height (y); a kept box is not moved.
  moved = inference.recrop_records(recs, pts, shift=(0.25, -0.5))
  np.testing.assert_allclose(moved[0].box, [2, -1, 6, 5])
  np.testing.assert_array_equal(moved[1].box, recs[1].box)


def test_recrop_shifts_follow_the_config():
  from jaxalign.training import config as config_lib
  c = config_lib.base_config()
  assert inference.recrop_shifts(c) == []
  c.eval.recrop_shift = 0.03
  assert inference.recrop_shifts(c) == []            # no second pass, no shifted ones
  c.eval.recrop = True
  c.eval.recrop_shift = 0.0
  assert inference.recrop_shifts(c) == [(0.0, 0.0)]
  c.eval.recrop_shift = 0.03
  assert inference.recrop_shifts(c) == [(0.0, 0.0), (0.03, 0.0), (-0.03, 0.0), (0.0, 0.03),
                                        (0.0, -0.03)]
  c.data.train_dir = '/somewhere'
  config_lib.validate(c, 1)
  for bad in (-0.01, 0.5, float('nan')):
    c.eval.recrop_shift = bad
    with pytest.raises(ValueError, match='eval.recrop_shift'):
      config_lib.validate(c, 1)


def test_blend_stable_must_be_a_bool():
  import ml_collections
  from jaxalign.training import config as config_lib
  saved = config_lib.base_config().to_dict()      # as a run's config.json could hold it
  saved['data']['train_dir'] = '/somewhere'
  saved['eval']['blend_stable'] = 'yes'
  with pytest.raises(ValueError, match=r'eval\.blend_stable: must be True or False'):
    config_lib.validate(ml_collections.ConfigDict(saved), 1)


def test_recrop_is_the_mean_of_a_pass_and_a_pass_around_its_points(run):
  """run_pipeline with eval.recrop: the given (jittered) boxes, then crops around the first
  pass's own points without jitter, the two averaged."""
  from jaxalign.data import pipeline
  opened = inference.Run.load(run)
  config = opened.config.copy_and_resolve_references()
  config.eval.box_jitter.shift, config.eval.box_jitter.scale = 0.05, 0.07
  config.eval.box_jitter.rotation_deg = 10.0
  recs = _records(run)
  plain = inference.run_pipeline(opened.model, config, recs, 'none')
  config.eval.recrop = True
  res = inference.run_pipeline(opened.model, config, recs, 'none')
  first = inference.predict_records(opened.model, config, recs)
  second = inference.predict_records(opened.model, pipeline.without_box_jitter(config),
                                     inference.recrop_records(recs, first['cnn_points']))
  want = inference.average_predictions([first, second])
  np.testing.assert_allclose(res['points'], want['cnn_points'], atol=1e-4)
  np.testing.assert_allclose(plain['points'], first['cnn_points'], atol=1e-4)
  assert np.abs(res['points'] - plain['points']).max() > 1e-3
  np.testing.assert_array_equal(res['boxes'], plain['boxes'])
  # eval.recrop_shift: four more passes on the second pass's box moved, all averaged.
  config.eval.recrop_shift = 0.05
  shifted = inference.run_pipeline(opened.model, config, recs, 'none')
  passes = [first, second] + [
      inference.predict_records(opened.model, pipeline.without_box_jitter(config),
                                inference.recrop_records(recs, first['cnn_points'], shift))
      for shift in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05))]
  want = inference.average_predictions(passes)
  np.testing.assert_allclose(shifted['points'], want['cnn_points'], atol=1e-4)
  assert np.abs(shifted['points'] - res['points']).max() > 1e-3


def test_predict_ignores_the_evaluation_box_jitter(run, tmp_path, real_face_paths):
  """eval.box_jitter disturbs landmark boxes in evaluation only: predict's boxes (a detector's
  or the caller's) are used as given, so its points do not depend on it."""
  jittered = tmp_path / 'jittered'
  shutil.copytree(run, jittered)
  config = json.loads((jittered / 'config.json').read_text())
  config['eval']['box_jitter'].update(shift=0.05, scale=0.07, rotation_deg=10.0)
  (jittered / 'config.json').write_text(json.dumps(config))
  image, _ = real_face_paths
  points = []
  for r in (run, jittered):
    out_dir = tmp_path / f'p_{r.name}'
    assert predict_cli.main(['--workdir', str(r), str(image), '--bbox', '60,60,200,200',
                             '--out', str(out_dir), '--no-progress']) == 0
    points.append(json.loads((out_dir / 'image_0010.json').read_text()))
  first, second = (np.asarray(p['faces'][0]['points'] if 'faces' in p else p['points'],
                               np.float64) for p in points)
  np.testing.assert_array_equal(first, second)


def test_the_plain_twin_of_a_learned_config_needs_no_learned_tables(caplog):
  """configs/cpu_300w.py uses the learned completion; its plain twin (model.kind=plain) fits the
  3DMM only for the pose, so it opens its completion without learned_completion.json."""
  config = _smoke_config(**{'model.kind': 'plain', 'eval.completion': True,
                           'eval.completion_backend': 'learned'})
  completion = inference.Completion.of_run(config, None, tables={})
  assert completion.backend == 'jax' and completion.learned is None
  # A pose-aware run without the tables (too few training faces for a learned completion, or
  # never calibrated) completes with the JAX 3DMM and says so, instead of failing after training.
  config.model.kind = 'pose_aware'
  with caplog.at_level(logging.WARNING, logger='jaxalign'):
    completion = inference.Completion.of_run(config, None, tables={})
  assert completion.backend == 'jax' and completion.learned is None
  assert 'learned_completion.json' in caplog.text
  with pytest.raises(ValueError, match='learned_completion.json'):
    inference.Completion('learned', '2d')


def test_predict_refines_only_a_detector_box_to_cnn1_framing(run, monkeypatch, real_face_paths):
  """predict's refinement: a detector's box is replaced by the tight box of CNN1's first-pass
  points (inference.recrop_records); a box the caller gave is kept."""
  from jaxalign.data import pipeline as data_pipeline
  from jaxalign.prediction import pipeline as predict_pipeline
  opened = inference.Run.load(run)
  image = data_pipeline.decode_image(str(real_face_paths[0]))
  box = np.array([60, 60, 200, 200], np.float32)
  faces = [predict_pipeline.Face(0, box, 'detector:mtcnn'), predict_pipeline.Face(0, box, 'bbox')]
  seen = []
  original = inference.run_pipeline

  def spy(model, config, records, completion=None, batch_size=None):
    seen.append(records)
    return original(model, config, records, completion, batch_size)

  monkeypatch.setattr(inference, 'run_pipeline', spy)
  predict_pipeline.predict_faces(opened.model, opened.config, [image], faces, 'none')
  from jaxalign.data import records as records_lib
  given = dataclasses.replace(seen[0][0], box=box)
  first = inference.predict_records(opened.model, opened.config, [given])
  np.testing.assert_allclose(seen[0][0].box, records_lib.landmark_box(first['rough'][0]),
                             atol=1e-3)
  np.testing.assert_array_equal(seen[0][1].box, box)


def test_calibration_of_a_learned_run_without_learned_tables_mixes_the_jax_fit(run):
  """A run set to the learned completion but with too few training faces for its tables: the
  calibration measures the JAX fit's mix instead of failing (end of training keeps its run)."""
  config = inference.load_config(run)
  config.eval.completion = True
  config.eval.completion_backend = 'learned'
  config.eval.completion_fusion = True
  config.eval.completion_blend = True
  opened = inference.Run(run, config)
  table = calibration.calibrate(opened.model, config, _records(run) * 2, learned=None)
  assert list(table['blends']) == ['jax'] and 'blend' not in table
  completion = inference.Completion.of_run(config, tables={'residuals': table, 'learned': None})
  assert completion.backend == 'jax' and completion.blend['backend'] == 'jax'


def _turned_face(angle, scale, centre):
  """The canonical 68-point shape turned by ``angle`` radians, scaled and placed at
  ``centre`` (image pixels)."""
  shape = np.asarray(_mean68(), np.float64)
  c, s = np.cos(angle), np.sin(angle)
  return (shape @ np.array([[c, s], [-s, c]]) * scale + centre).astype(np.float32)


def _mean68():
  from jaxalign.models import aligner
  return aligner.default_shape(IBUG68, 64) - 32.0


def test_stable_shift_is_measured_and_applied_in_each_faces_axes():
  """calibration.stable_shift reads CNN2's mean residual in the faces' own axes (CNN1's eye
  corners), whatever their roll and size; inference.shift_stable moves CNN2's points back by
  it, in pixels of each face, and leaves CNN1's points and the non-stable ones alone."""
  from jaxalign.data import records as records_lib
  stable = IBUG68.stable_mask()
  offset = np.array([0.02, -0.01])           # truth minus CNN2, in eye-corner distances
  faces, stables, roughs = [], [], []
  for i, (angle, scale) in enumerate(((0.0, 1.0), (0.4, 2.0), (-0.3, 0.7), (1.0, 1.5))):
    gt = _turned_face(angle, scale, np.array([100.0 + 10 * i, 90.0]))
    x, y, unit = (v[0] for v in inference.face_axes(gt[None], IBUG68))
    np.testing.assert_allclose(x, [np.cos(angle), np.sin(angle)], atol=1e-5)
    np.testing.assert_allclose(y, [-np.sin(angle), np.cos(angle)], atol=1e-5)
    pred = np.full_like(gt, np.nan)
    pred[stable] = gt[stable] - (offset[0] * x + offset[1] * y) * unit
    faces.append(records_lib.FaceRecord(f'face{i}.png', gt, records_lib.landmark_box(gt)))
    stables.append(pred)
    roughs.append(gt)
  cnn = {'valid': np.array([True] * 4), 'rough': np.stack(roughs), 'stable': np.stack(stables),
         'cnn_points': inference.merge_stable(np.stack(stables), np.stack(roughs))}
  config = _smoke_config()
  table = calibration.stable_shift(config, cnn, faces)
  np.testing.assert_allclose(table['mean'], offset, atol=1e-6)
  assert table['num_faces'] == 4
  moved = inference.shift_stable(cnn, table['mean'], IBUG68)
  gts = np.stack(roughs)
  np.testing.assert_allclose(moved['stable'][:, stable], gts[:, stable], atol=1e-4)
  assert np.isnan(moved['stable'][:, ~stable]).all()
  np.testing.assert_array_equal(moved['rough'], cnn['rough'])
  np.testing.assert_allclose(moved['cnn_points'], gts, atol=1e-4)
  # No face with CNN2's points: nothing to measure.
  assert calibration.stable_shift(config, dict(cnn, valid=np.zeros(4, bool)), faces) is None


def test_stable_shift_gating(caplog):
  """eval.stable_shift applies the run's table; off, the table is ignored; on without one, a
  warning (silent where the tables are left out on purpose, tables={})."""
  config = _smoke_config(**{'eval.completion': True, 'eval.stable_shift': True})
  tables = _tables()
  tables['residuals']['stable_shift'] = {'mean': [0.01, -0.002]}
  assert inference.Completion.of_run(config, tables=tables).stable_shift == (0.01, -0.002)
  config.eval.stable_shift = False
  assert inference.Completion.of_run(config, tables=tables).stable_shift is None
  config.eval.stable_shift = True
  with caplog.at_level(logging.WARNING, logger='jaxalign.inference'):
    assert inference.Completion.of_run(config, tables={}).stable_shift is None
    assert not any('stable_shift' in r.getMessage() for r in caplog.records)
    assert inference.Completion.of_run(config, tables=_tables()).stable_shift is None
  assert any('no stable_shift' in r.getMessage() for r in caplog.records)
  plain = _smoke_config(**{'model.kind': 'plain', 'eval.stable_shift': True})
  assert inference.Completion.of_run(plain, tables=tables).stable_shift is None
  import ml_collections
  saved = config_lib.base_config().to_dict()      # as a run's config.json could hold it
  saved['data']['train_dir'] = '/somewhere'
  saved['eval']['stable_shift'] = 'yes'
  with pytest.raises(ValueError, match=r'eval\.stable_shift: must be True or False'):
    config_lib.validate(ml_collections.ConfigDict(saved), 1)
