"""The learned completion as a backend of the pipeline ('learned'): its tables travel in the
run's Completion, the 3DMM keeps the poses it hands back, and the end of training (or
``python -m jaxalign.calibrate``) writes them."""

import json

import numpy as np
import pytest

from jaxalign import calibration, inference, schemes
from jaxalign.morphable import learned
from jaxalign.training import config as config_lib
from test_learned_completion import _faces

S = schemes.IBUG68


@pytest.fixture(scope='module')
def tables(real_face_points):
  train = _faces(real_face_points, 120, seed=0, amp=0.02)
  return learned.LearnedCompletion.fit(train, S, yaw=np.full(len(train), 10.0),
                                       switch='none').to_dict()


def test_learned_backend_completes_with_the_tables_and_keeps_the_3dmm_pose(
    tables, real_face_points, sfm_dir):
  faces = _faces(real_face_points, 4, seed=3, amp=0.02)
  stable = np.where(S.stable_mask()[None, :, None], faces, np.nan).astype(np.float32)
  flip = np.zeros(4, bool)
  res = inference.complete_points(stable, S, 'learned', flip=flip, learned=tables)
  want = learned.LearnedCompletion.from_dict(tables).complete(stable, flip=flip)
  np.testing.assert_array_equal(res.points, want)
  np.testing.assert_array_equal(res.points[:, S.stable], stable[:, S.stable])
  jax_res = inference.complete_points(stable, S, 'jax', flip=flip)
  np.testing.assert_allclose(res.yaw, jax_res.yaw)              # the pose is the 3DMM's
  assert not np.allclose(res.points, jax_res.points)
  # The 3D jaw convention is not what the learned model read: the 3DMM's points stay.
  res3 = inference.complete_points(stable, S, 'learned', flip=flip, learned=tables,
                                   convention='3d')
  np.testing.assert_array_equal(res3.points,
                                inference.complete_points(stable, S, 'jax', flip=flip,
                                                          convention='3d').points)
  with pytest.raises(ValueError, match='learned_completion.json'):
    inference.complete_points(stable, S, 'learned', flip=flip)


def test_completion_value_gates_the_learned_backend(tables):
  config = config_lib.base_config()
  config.eval.completion_backend = 'learned'
  # Asked for by name without the tables: an error naming them; the run's own setting falls
  # back to the JAX 3DMM (the end of a training run with too few faces for the tables).
  with pytest.raises(ValueError, match='learned_completion.json'):
    inference.Completion.of_run(config, backend='learned',
                                tables={'residuals': None, 'learned': None})
  assert inference.Completion.of_run(
      config, tables={'residuals': None, 'learned': None}).backend == 'jax'
  rms = [[0.1] * 68] * 12
  blend = lambda b: {'alpha': [[0.5] * 68] * 12, 'backend': b, 'fused': True,
                     'convention': '2d'}
  residuals = {'rms': rms, 'bins': list(range(-90, 91, 15)), 'blend': blend('jax'),
               'blends': {'jax': blend('jax'), 'learned': blend('learned')}}
  config.eval.completion_fusion = config.eval.completion_blend = True
  c = inference.Completion.of_run(config, tables={'residuals': residuals, 'learned': tables})
  assert c.backend == 'learned' and c.fused and c.blend['backend'] == 'learned'
  c = inference.Completion.of_run(config, backend='jax',
                                  tables={'residuals': residuals, 'learned': tables})
  assert c.blend['backend'] == 'jax'


def test_fit_learned_needs_enough_faces(real_face_points):
  from jaxalign.data import records
  config = config_lib.base_config()
  faces = _faces(real_face_points, 40, seed=5, amp=0.02)
  recs = [records.FaceRecord(image='x.png', points=p, box=records.landmark_box(p), yaw=10.0)
          for p in faces]
  assert calibration.fit_learned(config, recs[:learned.DEFAULT_MIN_BIN_FACES - 1]) is None
  config.model.kind = 'plain'
  assert calibration.fit_learned(config, recs) is None


def test_calibrate_cli_writes_the_learned_tables(smoke_run, tmp_path):
  """The end of training and ``python -m jaxalign.calibrate`` share one function; on a run
  with too few faces for a learned model it writes the mix tables only and says so."""
  from jaxalign import calibrate
  assert calibrate.main(['--workdir', str(tmp_path / 'nothing')]) == 2
  assert calibrate.main(['--workdir', str(smoke_run)]) == 0
  assert not (smoke_run / inference.LEARNED_FILE).exists()


def test_complete_cli_with_a_runs_learned_completion(tables, real_face_points, tmp_path):
  """``python -m jaxalign.complete --workdir RUN`` completes with the run's learned tables
  (no checkpoint needed), and ``--completion learned`` without a run is refused."""
  from jaxalign import complete, io
  run = tmp_path / 'run'
  run.mkdir()
  config = config_lib.base_config()
  config.eval.completion_backend = 'learned'
  config_lib.save_run_config(config, str(run))
  (run / inference.LEARNED_FILE).write_text(json.dumps(tables))
  faces = _faces(real_face_points, 3, seed=7, amp=0.02)
  paths = []
  for i, f in enumerate(faces):
    paths.append(str(tmp_path / f'face{i}.pts'))
    io.write_pts(paths[-1], f)
  assert complete.main(paths + ['--out', str(tmp_path / 'out'), '--workdir', str(run),
                                '--report', str(tmp_path / 'r.json')]) == 0
  report = json.loads((tmp_path / 'r.json').read_text())
  assert report['backend'] == 'learned' and report['mean']['count'] == 3
  got = np.stack([io.read_pts(tmp_path / 'out' / f'face{i}.pts') for i in range(3)])
  want = inference.complete_points(faces, S, 'learned', learned=tables).points
  np.testing.assert_allclose(got, want, atol=1e-3)
  assert complete.main(paths + ['--out', str(tmp_path / 'o2'), '--completion', 'learned']) == 2


def test_learned_sl_noise_config_values():
  config = config_lib.base_config()
  assert config_lib.learned_sl_noise(config) == 0.0
  config.eval.learned_sl_noise = 'auto'
  assert config_lib.learned_sl_noise(config) is None
  config.eval.learned_sl_noise = '0.03'
  assert config_lib.learned_sl_noise(config) == 0.03
  for bad in ('-0.1', 'nan', 'inf', 'noisy'):
    config.eval.learned_sl_noise = bad
    with pytest.raises(ValueError, match='eval.learned_sl_noise'):
      config_lib.validate(config, 1)


def test_auto_sl_noise_is_cnn2s_on_the_held_out_faces(smoke_run, real_face_points, tmp_path):
  """``eval.learned_sl_noise='auto'``: the end of training measures CNN2's SL noise on the
  held-out faces and fits the learned completion with it."""
  from jaxalign import workflow
  from jaxalign.data import records
  import shutil
  out_dir = tmp_path / 'run'
  shutil.copytree(smoke_run, out_dir)
  run = inference.Run.load(str(out_dir))
  run.config.eval.learned_sl_noise = 'auto'
  holdout, _ = records.scan_folder(smoke_run.parent / 'test')
  faces = _faces(real_face_points, 40, seed=5, amp=0.02)
  train = [records.FaceRecord(image='x.png', points=p, box=records.landmark_box(p), yaw=10.0)
           for p in faces]
  written = workflow.recalibrate(run, train, holdout)
  cnn = calibration.cnn_pass(run.model, run.config, holdout)
  expected = calibration.sl_noise(run.config, cnn, holdout)
  assert expected > 0        # two training steps: far from the truth
  assert written['learned']['options']['sl_noise'] == pytest.approx(expected)
  stored = json.loads((out_dir / inference.LEARNED_FILE).read_text())
  assert stored['options']['sl_noise'] == pytest.approx(expected)
  # A number is used as given, without looking at the held-out faces.
  run.config.eval.learned_sl_noise = '0.02'
  assert workflow.recalibrate(run, train, [])['learned']['options']['sl_noise'] == 0.02
