"""python -m jaxalign.train --config configs/the300w_lp.py --workdir runs/the300w_lp

Large-pose training on 300W-LP (61,225 faces rendered by 3DDFA's face profiling), evaluated on
AFLW2000-3D (2,000 faces) with box-size NME, both read from their unzipped folders (300W_LP/,
AFLW2000/ under one root) or from a tensorflow-datasets data dir. Not an experiment of the
paper; the common large-pose benchmark.

AFLW2000-3D is annotated in the 3D convention (jaw points are projections of fixed 3D
vertices), so training uses 300W-LP's 3D-convention landmarks and the evaluation completes the
unstable points in the 3D convention (eval.completion_convention; the records also say
meta['convention'] == '3d').

The root defaults to data/tfds; set it with --config.data.root=/path/to/folder (the folder
holding 300W_LP/ and AFLW2000/, or the TFDS data dir; see docs/datasets.md).
"""

import ml_collections

from jaxalign.training.config import base_config


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.model.scheme = 'ibug68'
  c.data.source = 'the300w_lp'
  c.data.root = 'data/tfds'
  c.data.train_split = 'train'
  c.data.options = ml_collections.ConfigDict({'landmarks': '3d'})
  c.data.test_source = 'aflw2k3d'
  c.data.test_root = ''                     # same TFDS data dir
  c.data.test_splits = ('test',)
  c.data.test_options = ml_collections.ConfigDict()
  c.eval.normalization = 'bbox'
  c.eval.completion_convention = '3d'
  return c
