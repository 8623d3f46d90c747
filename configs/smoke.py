"""python -m jaxalign.train --config configs/smoke.py --workdir /tmp/smoke \
    --config.data.train_dir=DIR [--config.data.test_dir=DIR]

Smoke test: a tiny pose-aware pair on a few 32 px crops, seconds on a CPU.

Logs every step; the batch (8) splits evenly over 1, 2, 4 or 8 devices. Used by the tests with
small fixture folders; without a data folder it renders a tiny synthetic set.
"""

from jaxalign.training.config import base_config


def get_config():
  c = base_config()
  c.seed = 0
  c.num_steps = 4
  c.batch_size = 8
  c.checkpoint_every = 2
  c.log_every = 1
  c.model.kind = 'pose_aware'
  c.model.depth = 'tiny'
  c.model.input_size = 32
  c.data.num_workers = 0
  c.data.pose_bins = 2
  c.data.synthetic.enabled = True
  c.data.synthetic.num_train = 16
  c.data.synthetic.num_test = 8
  c.data.synthetic.image_size = 64
  c.optim.learning_rate = 1e-4
  c.optim.final_learning_rate = 1e-5
  c.optim.decay_steps = 2
  c.eval.batch_size = 8
  c.eval.completion = False
  return c
