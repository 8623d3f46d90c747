"""python -m jaxalign.train --config configs/experiments/unbalanced.py --workdir runs/pose/unbalanced

Pose experiment, arm 4: no pose-balanced batches.

Paper size on a GPU (ResNet-50, 224 px): `--config configs/experiments/unbalanced.py:paper`.
The whole experiment (every arm and seed, evaluation and report) is one command:
`python -m jaxalign.experiments.pose [--size quick|paper]`; see docs/experiments/pose.md
and jaxalign/experiments/pose_config.py for the sizes, the data and the model mismatch.
"""

from jaxalign.experiments import pose_config


def get_config(size='quick'):
  return pose_config.arm_config('unbalanced', size)
