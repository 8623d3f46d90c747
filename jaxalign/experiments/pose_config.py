"""The pose experiment's arms, sizes and data (one place; ``configs/experiments/*.py`` and the
runner :mod:`jaxalign.experiments.pose` both read it).

Every arm shares the backbone, input size, data, steps and seeds of its size and differs from
the pose-aware pipeline (arm ``pose_aware``) in one setting only:

==================  =========================================================================
arm                 setting
==================  =========================================================================
pose_aware          (1) the paper's pipeline: flip, CNN2 on the SLs, JAX 3DMM completion
plain               (2) one ResNet regressing all 68 points (``model.kind='plain'``)
no_flip             (3) no flip of left-looking faces (``model.flip=False``)
unbalanced          (4) uniformly drawn batches (``data.balanced=False``)
eos_completion      (5) completion with eos instead of the JAX fitter
stable_*            (6) another choice of the 4 right-side SLs (``model.stable``)
gaussian_completion (7) the 2D Gaussian completion (:mod:`jaxalign.morphable.statistical`)
==================  =========================================================================

Arms 5 and 7 change only the evaluation: the runner evaluates arm 1's trained networks with
the other completion (copies of its runs), which isolates the completion stage.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from jaxalign import schemes
from jaxalign.training import config as config_lib

# How the rendered faces differ from what the fitters can represent (see docs/experiments/
# pose.md): shape components 30-62 (beyond the 30 the JAX fitter uses) drawn 1.5x wider, a
# smooth random per-vertex deformation of 3 mm RMS (40 mm bumps, outside every fitter's shape
# space), expression strengths up to 1.6 (the renderer's default tops out at 1.0) and Gaussian
# annotation noise of 0.5 % of the face box side on the 2D ground truth.
MISMATCH = dict(tail_shape_sigma=1.5, tail_start=30, deformation_mm=3.0,
                deformation_scale_mm=40.0, expression_strength=(0.2, 1.6),
                annotation_noise=0.005)

# Data set seeds: the training, test and validation sets never share a face (different random
# streams).
TRAIN_SEED = 0
TEST_SEED = 1_000_003
VAL_SEED = 2_000_003


@dataclasses.dataclass(frozen=True)
class Size:
  """One size of the experiment (everything but the arm)."""

  num_train: int
  num_test: int
  image_size: int        # rendered image side (pixels)
  input_size: int        # network input side (pixels)
  depth: str             # ResNet depth of both CNNs (and of the plain baseline)
  width: int             # stem channels (64 = the standard ResNet)
  num_steps: int
  batch_size: int
  learning_rate: float
  final_learning_rate: float
  decay_steps: int
  seeds: tuple[int, ...]       # seeds of arms 1, 2 (and 5, 7, which reuse arm 1's networks)
  ablation_seeds: tuple[int, ...]   # seeds of arms 3, 4, 6
  eval_batch_size: int
  num_val: int = 300     # validation faces: CNN1's residuals and the completion's mix


SIZES = {
    # Every arm and seed in 19 minutes on the shared 2-core CPU (measured 2026-11-25).
    'quick': Size(num_train=1500, num_test=300, image_size=64, input_size=64, depth='18',
                  width=8, num_steps=800, batch_size=32, learning_rate=1e-3,
                  final_learning_rate=1e-4, decay_steps=600, seeds=(0, 1, 2),
                  ablation_seeds=(0,), eval_batch_size=100),
    # Larger networks (the embedded default's quarter-width ResNet-18s, 1,500 steps) so that
    # CNN1 is not the whole story; about an hour on an idle 2-core CPU (2026-12-03: every arm,
    # 58 minutes of training; pose-aware trainings about 7 min each, plain 3 min).
    'cpu': Size(num_train=2000, num_test=300, image_size=96, input_size=64, depth='18',
                width=16, num_steps=1500, batch_size=32, learning_rate=1e-3,
                final_learning_rate=1e-4, decay_steps=1000, seeds=(0, 1),
                ablation_seeds=(0,), eval_batch_size=100),
    # The paper's networks and input (ResNet-50, 224 px) and optimisation, for a GPU.
    'paper': Size(num_train=20_000, num_test=2_000, image_size=256, input_size=224, depth='50',
                  width=64, num_steps=180_000, batch_size=64, learning_rate=1e-5,
                  final_learning_rate=1e-7, decay_steps=60_000, seeds=(0, 1, 2),
                  ablation_seeds=(0, 1, 2), eval_batch_size=64),
}

# Arm 6: alternatives to the paper's 4 right-side SLs (22, 35, 42, 54: inner brow end, nose
# wing, inner eye corner, mouth corner), each added to the same 30 left/midline points.
DEFAULT_RIGHT = (22, 35, 42, 54)
STABLE_ALTERNATIVES = {
    # The right-side points nearest the midline: they stay in view longest under yaw.
    'stable_midline': (22, 34, 42, 63),
    # Upper face only: brow and eye (no nose or mouth point on the right).
    'stable_upper': (22, 23, 42, 47),
    # The outermost right-side points (brow end, outer eye corner, mouth corner, jaw end): the
    # first to be hidden when the face turns right.
    'stable_outer': (16, 26, 45, 54),
}


def stable_set(right) -> tuple[int, ...]:
  """The 30 default left/midline SLs plus the given right-side points, sorted."""
  base = [i for i in schemes.IBUG68.stable if i not in DEFAULT_RIGHT]
  return tuple(sorted(set(base) | {int(i) for i in right}))


@dataclasses.dataclass(frozen=True)
class Arm:
  """An arm: its number in the issue, a description and its config overrides."""

  number: str
  title: str
  overrides: dict
  reuses: str | None = None     # evaluate this arm's networks instead of training
  ablation: bool = False        # trained with ``Size.ablation_seeds``


ARMS = {
    'pose_aware': Arm('1', 'pose-aware (flip, CNN2 on SLs, JAX 3DMM completion)', {}),
    'plain': Arm('2', 'plain ResNet on 68 points', {'model.kind': 'plain'}),
    'no_flip': Arm('3', 'no flip', {'model.flip': False}, ablation=True),
    'unbalanced': Arm('4', 'no pose-balanced batches', {'data.balanced': False}, ablation=True),
    'eos_completion': Arm('5', 'eos completion', {'eval.completion_backend': 'eos'},
                          reuses='pose_aware'),
    **{name: Arm('6', f'SLs with right-side {",".join(map(str, right))}',
                 {'model.stable': ','.join(map(str, stable_set(right)))}, ablation=True)
       for name, right in STABLE_ALTERNATIVES.items()},
    'gaussian_completion': Arm('7', '2D Gaussian completion',
                               {'eval.completion_backend': 'gaussian'}, reuses='pose_aware'),
}


def get_size(size: str) -> Size:
  if size not in SIZES:
    raise ValueError(f'unknown experiment size {size!r}; expected one of {sorted(SIZES)}')
  return SIZES[size]


# The embedded default (``configs/default.py``), which every size of the experiment builds on.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 'default.py')


def override(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """``config`` with ``{'a.b': value}`` set through :func:`jaxalign.training.config
  .apply_overrides` (a key the config does not have is a ValueError naming it)."""
  return config_lib.apply_overrides(config, [f'{k}={v}' for k, v in values.items()])


def base_experiment_config(size: str = 'quick') -> ml_collections.ConfigDict:
  """The pose-aware arm's config at a size: ``configs/default.py`` (its evaluation protocol:
  detector-like test boxes, the completion fused and mixed with CNN1 by its residuals on the
  validation faces, which the runner passes as data.val_dir) with the size's networks,
  optimisation and synthetic data with the model mismatch.

  Raises:
    FileNotFoundError: ``configs/default.py`` is not beside the package.
  """
  s = get_size(size)
  c = config_lib.load_config_file(DEFAULT_CONFIG)
  override(c, {
      'num_steps': s.num_steps, 'batch_size': s.batch_size, 'checkpoint_every': s.num_steps,
      'log_every': max(1, min(100, s.num_steps // 10)),
      'model.depth': s.depth, 'model.width': s.width, 'model.input_size': s.input_size,
      'data.synthetic.num_train': s.num_train, 'data.synthetic.num_test': s.num_test,
      'data.synthetic.image_size': s.image_size,
      # The runner renders the validation faces itself (with the mismatch, data.val_dir).
      'data.synthetic.num_val': 0,
      'optim.learning_rate': s.learning_rate, 'optim.final_learning_rate': s.final_learning_rate,
      'optim.decay_steps': s.decay_steps, 'eval.batch_size': s.eval_batch_size})
  # The renderer's options are a free-form dict (no key of the base config to override).
  c.data.synthetic.kwargs = ml_collections.ConfigDict(
      {k: list(v) if isinstance(v, tuple) else v for k, v in MISMATCH.items()})
  return c


def arm_config(arm: str, size: str = 'quick') -> ml_collections.ConfigDict:
  """The config of one arm at a size (``configs/experiments/<arm>.py`` returns this)."""
  if arm not in ARMS:
    raise ValueError(f'unknown arm {arm!r}; expected one of {sorted(ARMS)}')
  return override(base_experiment_config(size), ARMS[arm].overrides)
