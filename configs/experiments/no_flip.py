"""python -m jaxalign.train --config configs/experiments/no_flip.py --workdir runs/pose/no_flip

Pose experiment, arm 3: no flip.

Paper size on a GPU (ResNet-50, 224 px): `--config configs/experiments/no_flip.py:paper`.
The whole experiment (every arm and seed, evaluation and report) is one command:
`python -m jaxalign.experiments.pose [--size quick|paper]`; see docs/experiments/pose.md
and jaxalign/experiments/pose_config.py for the sizes, the data and the model mismatch.
"""

from jaxalign.experiments import pose_config


def get_config(size='quick'):
  return pose_config.arm_config('no_flip', size)
