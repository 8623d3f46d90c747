"""The PyTorch twin of the benchmarks (jaxalign.benchmarks.torch_twin): its spatial transform
matches jaxalign.transforms.warp_image and its models have the JAX models' parameter counts.
Skipped without PyTorch (the optional extra 'compare')."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from jaxalign import transforms  # pylint: disable=g-import-not-at-top
from jaxalign.benchmarks import torch_twin  # pylint: disable=g-import-not-at-top
from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
from jaxalign.training import state as state_lib  # pylint: disable=g-import-not-at-top


def test_warp_matches_warp_image():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (40, 40, 3)).astype(np.float32)
  matrix = np.asarray(transforms.compose(
      transforms.similarity_matrix(0.3, 0.8, (20.0, 17.0), (3.0, -2.0)),
      transforms.hflip_matrix(40.0)), np.float32)   # rotation, scale, shift and a mirror
  want = np.asarray(transforms.warp_image(image, matrix, 32))
  got = torch_twin.warp_images(torch.from_numpy(image).permute(2, 0, 1)[None],
                               torch.tensor(matrix)[None], 32)[0].permute(1, 2, 0).numpy()
  # Part of the output falls outside the input (zeros there on both sides).
  assert (want == 0).any() and (want > 0).mean() > 0.3
  np.testing.assert_allclose(got, want, atol=2e-2)


def _config(kind, depth='tiny', size=32):
  c = config_lib.base_config()
  c.model.kind, c.model.depth, c.model.input_size = kind, depth, size
  return c


@pytest.fixture(scope='module')
def pose_model():
  return state_lib.create_model(_config('pose_aware'))   # basic blocks, both CNNs


def test_parameter_count_matches(pose_model):
  plain = state_lib.create_model(_config('plain', 'tiny_bottleneck'))   # bottleneck blocks
  for model in (pose_model, plain):
    _, params, _ = state_lib.split_model(model)
    twin = torch_twin.twin_of(model)
    assert torch_twin.count_params(twin) == state_lib.count_params(params)


def test_resnet50_layout_and_count():
  """ResNet-50's twin has torchvision's 23.5 M backbone parameters and its key names."""
  net = torch_twin.ResNet(50)
  assert torch_twin.count_params(net) == 23_508_032
  keys = net.state_dict().keys()
  assert 'layer4.2.bn3.running_var' in keys and 'layer2.0.downsample.0.weight' in keys


def test_train_step_lowers_the_loss(pose_model):
  torch.manual_seed(0)
  model = pose_model
  twin = torch_twin.twin_of(model)
  step = torch_twin.make_train_step(twin, learning_rate=1e-4, momentum=0.9, weight_decay=5e-4)
  images = torch.rand(4, 3, 32, 32) * 255
  points = torch.tensor(np.array(model.cnn1.mean_shape[...]))[None].repeat(4, 1, 1) + 2.0
  losses = [float(step(images, points)) for _ in range(4)]
  assert np.isfinite(losses).all() and min(losses[1:]) < 0.8 * losses[0]
