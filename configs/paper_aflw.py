"""python -m jaxalign.train --config configs/paper_aflw.py --workdir runs/paper_aflw

The paper's AFLW-Full experiment (Li et al., BMVC 2019): 19 landmarks (jaxalign.schemes.AFLW19,
its own stable / unstable split), the CFSS / LAB release AFLWinfo_release.mat: train on 20,000
faces, test on 4,386 (AFLW-Full; AFLW-Frontal, the 1,165 test faces with every point visible, is
evaluated too), NME normalised by the face box size sqrt(w * h) (reported: 1.51 %). The pose-aware
pair runs on the 19 points (CNN2 on the 12 stable ones); the 3DMM completion is iBUG-68 only, so
the 7 unstable points are CNN1's (eval.completion=False).

The folder defaults to data/AFLW; set it with --config.data.root=/path/to/AFLW. Layout and
download: docs/datasets.md.
"""

import ml_collections

from jaxalign.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model.scheme = 'aflw19'
  c.data.source = 'aflw'
  c.data.root = 'data/AFLW'
  c.data.train_split = 'train'
  c.data.options = ml_collections.ConfigDict()
  c.data.test_source = ''
  c.data.test_root = ''
  c.data.test_splits = ('test', 'frontal')
  c.data.test_options = ml_collections.ConfigDict()
  c.eval.normalization = 'bbox'
  # The 3DMM completion reads iBUG-68 points; for the 19-point scheme the unstable points
  # (right brow / eye outer points, right nostril and mouth corner, chin) come from CNN1.
  c.eval.completion = False
  return c
