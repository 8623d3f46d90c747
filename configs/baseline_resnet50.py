"""The paper's baseline: one ResNet-50 regressing all 68 points (300-W), for GPUs.

  python -m jaxalign.train --config configs/baseline_resnet50.py --workdir runs/baseline_resnet50 \
      --config.data.train_dir=/data/300w/train --config.data.test_dir=/data/300w/full \
      --config.init_from=/weights/resnet50-11ad3fa6.pth

Same optimisation as the pose-aware pair (wing loss w = 18, epsilon = 3; SGD momentum 0.9,
weight decay 5e-4; learning rate 1e-5 -> 1e-7 with decay step 60,000; 180,000 steps) so the
two are comparable; only the model differs.
"""

from jaxalign.training.config import base_config


def get_config():
  c = base_config()
  c.seed = 0
  c.num_steps = 180_000
  c.batch_size = 64
  c.checkpoint_every = 5_000
  c.log_every = 100
  c.model.kind = 'plain'
  c.model.depth = '50'
  c.model.input_size = 224
  c.model.dtype = 'bfloat16'
  c.data.train_dir = ''        # a 300-W-style folder (images + .pts)
  c.data.test_dir = ''
  c.data.test_split = 'full'
  c.eval.completion = False    # the plain model predicts all 68 points itself
  return c
