"""configs/cpu_300w.py end to end on a few of the shared real 300-W training faces (tiny model):
its data split, pretraining stage, learned completion, second pass and `val` report."""

import json
import os
import pathlib

import numpy as np
import pytest

from jaxalign import workflow
from jaxalign.data.sources import w300
from jaxalign.training import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_300W = REPO.parent / 'shared' / '300w'

pytestmark = pytest.mark.skipif(not SHARED_300W.is_dir(), reason=f'{SHARED_300W} (the shared '
                                '300-W training faces) is absent')


def _few_faces(root: pathlib.Path, num_fit: int, num_val: int) -> dict[str, int]:
  """Links the first ``num_fit`` training and ``num_val`` validation faces of each subset of the
  shared faces into a 300-W layout under ``root``; returns the counts per split."""
  parts, _ = w300.load(SHARED_300W, ['fit', 'val'], boxes='landmarks')
  counts = {}
  for split, per_subset in (('fit', num_fit), ('val', num_val)):
    taken = {}
    for r in parts[split]:
      subset = r.meta['subset']
      if taken.get(subset, 0) >= per_subset:
        continue
      taken[subset] = taken.get(subset, 0) + 1
      image = pathlib.Path(r.image)
      (root / subset).mkdir(parents=True, exist_ok=True)
      for path in (image, image.with_suffix('.pts')):
        os.symlink(path, root / subset / path.name)
    counts[split] = sum(taken.values())
  return counts


def _tiny_config(tmp_path, batch_size: int):
  """configs/cpu_300w.py shrunk to seconds: a tiny model on 32 px, 2 steps, the faces that
  :func:`_few_faces` linked under ``tmp_path / '300w'``."""
  c = config_lib.load_config_file(str(REPO / 'configs' / 'cpu_300w.py'))
  c.data.root = str(tmp_path / '300w')
  c.model.depth = 'tiny'
  c.model.input_size = 32
  c.batch_size = batch_size
  c.num_steps = c.checkpoint_every = 2
  c.log_every = 1
  c.eval.batch_size = 8
  c.data.num_workers = 0
  c.data.pose_bins = 2
  c.data.crop_cache.dir = str(tmp_path / 'crops')
  return c


def test_cpu_300w_trains_on_shared_faces_and_reports_val(tmp_path, sfm_dir):
  # 39 fit faces: after the holdout slice, enough for a learned completion (30).
  counts = _few_faces(tmp_path / '300w', num_fit=13, num_val=2)
  c = _tiny_config(tmp_path, batch_size=8)
  if c.pretrain.config:          # the stage runs too, shrunk to the smoke config
    c.pretrain.config = 'configs/smoke.py'
    c.pretrain.num_steps = 1
  workdir = tmp_path / 'run'
  result = workflow.train_and_evaluate(c, str(workdir))
  assert result['step'] == 2
  stats = json.loads((workdir / 'data_stats.json').read_text())
  # The fit faces train, except the holdout slice that calibrates the completion.
  assert 0 < stats['num_train'] < counts['fit']
  report = json.loads((workdir / 'eval' / 'val' / 'report.json').read_text())
  assert report['num_images'] == counts['val'] and np.isfinite(report['nme'])
  assert report['boxes'] == {'landmarks': counts['val']}
  assert (workdir / 'learned_completion.json').is_file()
  assert report['completion_backend'] == 'learned'
  assert (workdir / 'cnn1_residuals.json').is_file()
  assert (workdir / 'pretrain').is_dir() == bool(c.pretrain.config)


def test_synthetic_faces_mixed_into_the_real_batches(tmp_path, sfm_dir, monkeypatch):
  # data.mix: the smoke config's 16 rendered faces (rendered under the working directory, as
  # its own run would) join the real faces' batches in a bin of their own; they train the
  # networks only, so the real faces alone make the mean shape and the holdout slice.
  from jaxalign.training import trainer  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  counts = _few_faces(tmp_path / '300w', num_fit=4, num_val=1)
  c = _tiny_config(tmp_path, batch_size=6)
  c.pretrain.config = ''
  c.data.holdout_fraction = 0.0
  c.eval.enabled = False
  c.data.mix.config = 'configs/smoke.py'
  c.data.mix.bins = 1
  data = trainer.prepare_data(c)
  real = len(data['records'])
  assert real == counts['fit'] and data['num_mixed'] == 16
  assert len(data['train_records']) == real + 16
  assert all('synthetic' in r.image for r in data['train_records'][real:])
  for step in range(6):
    assert (data['sampler'].batch_indices(step) >= real).sum() == 2   # 1 bin of 3: 2 of 6
  without = config_lib.load_config_file(str(REPO / 'configs' / 'cpu_300w.py'))
  without.update(c)
  without.data.mix.config, without.data.mix.bins = '', 0
  np.testing.assert_allclose(trainer.prepare_data(without)['mean_shape'], data['mean_shape'])
  result = trainer.train(c, str(tmp_path / 'run'))
  assert result['step'] == 2 and result['skipped_images'] == 0
  stats = json.loads((tmp_path / 'run' / 'data_stats.json').read_text())
  assert stats['num_train'] == real and stats['num_mixed'] == 16
