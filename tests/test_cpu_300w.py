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


def test_cpu_300w_trains_on_shared_faces_and_reports_val(tmp_path, sfm_dir):
  # 39 fit faces: after the holdout slice, enough for a learned completion (30).
  counts = _few_faces(tmp_path / '300w', num_fit=13, num_val=2)
  c = config_lib.load_config_file(str(REPO / 'configs' / 'cpu_300w.py'))
  c.data.root = str(tmp_path / '300w')
  c.model.depth = 'tiny'
  c.model.input_size = 32
  c.model.cnn2_input_size = 40     # CNN2's frame larger than CNN1's input, as the config's
  c.batch_size = 8
  c.num_steps = c.checkpoint_every = 2
  c.log_every = 1
  c.eval.batch_size = 8
  c.data.num_workers = 0
  c.data.pose_bins = 2
  c.data.crop_cache.dir = str(tmp_path / 'crops')
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
  # CNN2's held-out offset is calibrated and applied (eval.stable_shift), beside its learned
  # mirror offset (model.cnn2_mirror_offset).
  residuals = json.loads((workdir / 'cnn1_residuals.json').read_text())
  assert len(residuals['stable_shift']['mean']) == 2
  assert report['stable_shift'] == residuals['stable_shift']['mean']
  assert (workdir / 'pretrain').is_dir() == bool(c.pretrain.config)
  # CNN1's learned mirror offset (model.cnn1_mirror_offset, for the mirrored faces of
  # augment.mirror_prob and eval.mirror_tta's mirrored pass) is trained and kept in the weights'
  # moving average (optim.ema_decay), which is what the run restores.
  from jaxalign.training import checkpointing, runs
  assert c.eval.mirror_tta and c.augment.mirror_prob > 0 and c.optim.ema_decay > 0
  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  try:
    saved = ckpt.saved_shapes(2)
  finally:
    ckpt.close()
  assert saved['ema/params/cnn1_mirror_offset'] == saved['params/cnn1_mirror_offset'] == (68, 2)
  model, _, _ = runs.restore_model(str(workdir))
  assert np.abs(np.asarray(model.cnn1_mirror_offset[...])).max() > 0
