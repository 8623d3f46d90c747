"""python -m jaxalign.train --config configs/baseline_resnet50.py --workdir runs/baseline_resnet50 --config.data.root=/data/300W

The paper's baseline, the "original ResNet-50": one ResNet-50 regressing all 68 points, trained
and tested exactly as ``paper_300w.py`` (same data, boxes, splits, optimisation: wing loss
w = 18, epsilon = 3; SGD momentum 0.9, weight decay 5e-4; learning rate 1e-5 -> 1e-7 with decay
step 60,000; 180,000 steps), so that the two runs compare with
``python -m jaxalign.evaluate --compare runs/paper_300w runs/baseline_resnet50 --dataset 300w:full --data_dir /data/300W``.
Only the model differs. Add ``--config.init_from=resnet50.safetensors`` for ImageNet weights.
"""

import os

from jaxalign.training.config import load_config_file


def get_config():
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'paper_300w.py'))
  c.model.kind = 'plain'
  c.eval.completion = False    # the plain model predicts all 68 points itself
  return c
