"""python -m jaxalign.train --config configs/experiments/pose_aware.py --workdir runs/pose/pose_aware

Pose experiment, arm 1: pose-aware (flip, CNN2 on SLs, JAX 3DMM completion).

Paper size on a GPU (ResNet-50, 224 px): `--config configs/experiments/pose_aware.py:paper`.
The whole experiment (every arm and seed, evaluation and report) is one command:
`python -m jaxalign.experiments.pose [--size quick|paper]`; see docs/experiments/pose.md
and jaxalign/experiments/pose_config.py for the sizes, the data and the model mismatch.
"""

from jaxalign.experiments import pose_config


def get_config(size='quick'):
  return pose_config.arm_config('pose_aware', size)
