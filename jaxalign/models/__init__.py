"""Flax NNX models: ResNet backbones, the pose-aware two-CNN aligner and the plain baseline.

See :mod:`jaxalign.models.resnet`, :mod:`jaxalign.models.aligner` and
:mod:`jaxalign.models.pretrained` (ImageNet weights in torchvision's layout).
"""

from jaxalign.models.aligner import (
    Aligner,
    PlainAligner,
    PoseAwareAligner,
    canonical_shape_from_training,
    compute_losses,
    default_shape,
    make_aligner,
    mean_shape_from_training,
    place_shape,
)
from jaxalign.models.pretrained import init_from_pretrained
from jaxalign.models.resnet import (
    LandmarkRegressor,
    ModelConstant,
    ResNet,
    ResNetSpec,
    resnet_spec,
)

__all__ = [
    'Aligner', 'LandmarkRegressor', 'ModelConstant', 'PlainAligner', 'PoseAwareAligner', 'ResNet',
    'ResNetSpec', 'canonical_shape_from_training', 'compute_losses', 'default_shape',
    'init_from_pretrained', 'make_aligner', 'mean_shape_from_training',
    'place_shape', 'resnet_spec',
]
