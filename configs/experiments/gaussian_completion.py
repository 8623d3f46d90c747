"""python -m jaxalign.train --config configs/experiments/gaussian_completion.py --workdir runs/pose/gaussian_completion

Pose experiment, arm 7: 2D Gaussian completion.

Paper size on a GPU (ResNet-50, 224 px): `--config configs/experiments/gaussian_completion.py:paper`.
The whole experiment (every arm and seed, evaluation and report) is one command:
`python -m jaxalign.experiments.pose [--size quick|paper]`; see docs/experiments/pose.md
and jaxalign/experiments/pose_config.py for the sizes, the data and the model mismatch.
The experiment runner does not train this arm: it evaluates the networks of arm 1
(`pose_aware`) with this arm's completion, which isolates the completion stage. Launched on
its own, as above, it trains the same network as arm 1 and evaluates it this way.
"""

from jaxalign.experiments import pose_config


def get_config(size='quick'):
  return pose_config.arm_config('gaussian_completion', size)
