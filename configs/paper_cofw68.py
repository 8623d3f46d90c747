"""python -m jaxalign.train --config configs/paper_cofw68.py --workdir runs/paper_cofw68

The paper's COFW-68 experiment (Li et al., BMVC 2019): train on the 300-W training set (Ren et
al. protocol, detector boxes), test on the 507 COFW test faces with the 68-point annotation of
Ghiasi and Fowlkes and their 300-W-style boxes; inter-ocular NME (reported: 3.55 %).

Folders default to data/300W and data/COFW68; set them with --config.data.root=/path/to/300W
--config.data.test_root=/path/to/COFW68. Layout and download: docs/datasets.md.
"""

import ml_collections

from jaxalign.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model.scheme = 'ibug68'
  c.data.source = '300w'
  c.data.root = 'data/300W'
  c.data.train_split = 'train'
  c.data.options = ml_collections.ConfigDict({'boxes': 'detector'})
  c.data.test_source = 'cofw68'
  c.data.test_root = 'data/COFW68'
  c.data.test_splits = ('test',)
  c.data.test_options = ml_collections.ConfigDict({'boxes': 'cofw68'})
  c.eval.normalization = 'inter_ocular'
  return c
