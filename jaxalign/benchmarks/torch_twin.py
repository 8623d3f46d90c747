"""The PyTorch twin of this project's aligners, for ``python -m jaxalign.bench compare``.

Only the benchmarks import it (PyTorch is the optional extra ``compare``). It mirrors
:mod:`jaxalign.models.resnet` and :mod:`jaxalign.models.aligner` so that both frameworks time
the same work:

* :class:`ResNet`: torchvision's ResNet layout (v1.5, the stride on the bottleneck's 3x3
  convolution; the same module names, so ``state_dict()`` keys are torchvision's), written here
  in plain ``torch.nn`` because torchvision's wheels on PyPI are linked against the CUDA build
  of torch and do not load next to the CPU wheel. Input normalisation happens inside the
  model, as in the JAX model.
* :class:`Regressor`: backbone + linear head, ``points = mean_shape + image_size * head(f)``.
* :class:`PlainTwin` and :class:`PoseAwareTwin`: the plain baseline and the CNN1 -> spatial
  transform -> CNN2 pair; the transform is the weighted least-squares similarity onto the
  canonical shape (after a mirror of left-looking faces) and the warp is
  :func:`warp_images` (``affine_grid`` + ``grid_sample`` with the matrix convention of
  :func:`jaxalign.transforms.warp_image`).
* :func:`wing_loss` and :func:`make_train_step`: the training step with wing loss (w = 18,
  epsilon = 3, summed over x and y, averaged over points and batch) and SGD with momentum and
  L2 weight decay added to the gradient (``torch.optim.SGD``, the same update as optax's
  ``add_decayed_weights`` + ``sgd``).

The flip decision of :class:`PoseAwareTwin` uses the yaw of an affine camera fitted to the
same (L, 3) mean-face reference the JAX model holds, not the JAX model's iterative rigid fit:
it costs the same order (68 points per face, nothing next to two ResNets) but may decide a
near-frontal face differently. Speed, not numerics, is what the twin is for; the tests check
its warp against :func:`jaxalign.transforms.warp_image` and its parameter count against the
JAX model's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxalign.models import resnet as jax_resnet

IMAGENET_MEAN = jax_resnet.IMAGENET_MEAN
IMAGENET_STD = jax_resnet.IMAGENET_STD


def _conv(cin, cout, kernel, stride):
  return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

  expansion = 1

  def __init__(self, cin, width, stride):
    super().__init__()
    self.conv1 = _conv(cin, width, 3, stride)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv(width, width, 3, 1)
    self.bn2 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = (nn.Sequential(_conv(cin, width, 1, stride), nn.BatchNorm2d(width))
                       if stride != 1 or cin != width else None)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50 v1.5)."""

  expansion = 4

  def __init__(self, cin, width, stride):
    super().__init__()
    cout = width * 4
    self.conv1 = _conv(cin, width, 1, 1)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv(width, width, 3, stride)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = _conv(width, cout, 1, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = (nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                       if stride != 1 or cin != cout else None)

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """torchvision's ResNet without ``fc``: (B, 3, H, W) images in 0..255 -> (B, F) features.

  Args:
    depth: anything :func:`jaxalign.models.resnet.resnet_spec` takes (18, 34, 50, 'tiny', a
      ResNetSpec with another width).
  """

  def __init__(self, depth=50):
    super().__init__()
    spec = jax_resnet.resnet_spec(depth)
    block = Bottleneck if spec.block == 'bottleneck' else BasicBlock
    width = spec.width
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    cin = width
    for i, n in enumerate(spec.stage_sizes):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, width * 2 ** i, 2 if (i > 0 and j == 0) else 1))
        cin = width * 2 ** i * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_stages = len(spec.stage_sizes)
    self.num_features = cin
    for m in self.modules():   # torchvision's initialisation
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    self.register_buffer('input_mean', mean, persistent=False)
    self.register_buffer('input_std', std, persistent=False)

  def forward(self, images):
    x = (images - self.input_mean) / self.input_std
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f'layer{i + 1}')(x)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1).float()


class Regressor(nn.Module):
  """ResNet + linear head: (B, 3, S, S) in 0..255 -> (B, L, 2) points in input pixels."""

  def __init__(self, num_points, depth, image_size, mean_shape):
    super().__init__()
    self.backbone = ResNet(depth)
    self.head = nn.Linear(self.backbone.num_features, 2 * num_points)
    nn.init.trunc_normal_(self.head.weight, std=float(np.sqrt(1e-4 / self.head.in_features)))
    nn.init.zeros_(self.head.bias)
    self.num_points = int(num_points)
    self.image_size = int(image_size)
    self.register_buffer('mean_shape', torch.tensor(np.array(mean_shape, np.float32)))

  def forward(self, images):
    offsets = self.head(self.backbone(images)).view(-1, self.num_points, 2)
    return self.mean_shape + self.image_size * offsets


def wing_loss(pred, target, w: float = 18.0, epsilon: float = 3.0):
  """Wing loss summed over x and y, averaged over points and batch (no missing points)."""
  ax = (pred.float() - target).abs()
  c = w - w * np.log1p(w / epsilon)
  return torch.where(ax < w, w * torch.log1p(ax / epsilon), ax - c).sum(-1).mean()


# ------------------------------------------------------------------------ spatial transform

def _normalizer(size: int) -> torch.Tensor:
  """3x3 map from pixel-centre coordinates to ``affine_grid``'s [-1, 1] (align_corners=False):
  ``u = (2 x + 1) / size - 1``."""
  return torch.tensor([[2.0 / size, 0.0, 1.0 / size - 1.0],
                       [0.0, 2.0 / size, 1.0 / size - 1.0],
                       [0.0, 0.0, 1.0]])


def _to_3x3(m):
  bottom = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
  return torch.cat([m, bottom.expand(m.shape[:-2] + (1, 3))], -2)


def warp_images(images, matrices, out_size: int):
  """:func:`jaxalign.transforms.warp_image` in PyTorch: (B, C, H, W) images, (B, 2, 3)
  input-to-output matrices in pixel-centre coordinates -> (B, C, out, out) bilinear samples,
  zeros outside (``grid_sample`` with ``padding_mode='zeros'``, ``align_corners=False``)."""
  _, _, h, w = images.shape
  if h != w:
    raise ValueError(f'warp_images takes square images, got {h}x{w}')
  inv = torch.linalg.inv(_to_3x3(matrices.double()))
  theta = _normalizer(h).double() @ inv @ torch.linalg.inv(_normalizer(out_size).double())
  grid = F.affine_grid(theta[:, :2].to(images.dtype), (images.shape[0], images.shape[1],
                                                       out_size, out_size),
                       align_corners=False)
  return F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros',
                       align_corners=False)


def _similarity(src, dst, weights):
  """Weighted least-squares similarity src (B, L, 2) -> dst (L, 2): (B, 2, 3)."""
  w = weights[None]
  cs = (w[..., None] * src).sum(1) / w.sum(-1, keepdim=True)
  cd = (weights[:, None] * dst).sum(0) / weights.sum()
  p, q = src - cs[:, None], (dst - cd)[None]
  norm = (w * (p * p).sum(-1)).sum(-1)
  a = (w * (p[..., 0] * q[..., 0] + p[..., 1] * q[..., 1])).sum(-1) / norm
  b = (w * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0])).sum(-1) / norm
  lin = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
  t = cd[None] - torch.einsum('bij,bj->bi', lin, cs)
  return torch.cat([lin, t[..., None]], -1)


def _yaw(points, reference):
  """Yaw in degrees (> 0 right-looking) of (B, L, 2) points under an affine camera fitted to
  the (L, 3) reference (NaN rows unused)."""
  ok = torch.isfinite(reference).all(-1)
  x = reference[ok] - reference[ok].mean(0)
  y = points[:, ok] - points[:, ok].mean(1, keepdim=True)
  y = y * torch.tensor([1.0, -1.0])            # image y down -> model y up
  a = torch.linalg.solve(x.T @ x, x.T @ y).transpose(1, 2)   # (B, 2, 3) camera rows
  r1 = F.normalize(a[:, 0], dim=-1)
  r2 = F.normalize(a[:, 1], dim=-1)
  r3 = torch.linalg.cross(r1, r2)
  return torch.rad2deg(torch.atan2(r3[:, 0], r3[:, 2]))


class PlainTwin(nn.Module):
  """One regressor over all L points (:class:`jaxalign.models.aligner.PlainAligner`)."""

  def __init__(self, num_points, depth, image_size, mean_shape):
    super().__init__()
    self.net = Regressor(num_points, depth, image_size, mean_shape)

  def loss(self, images, points):
    return wing_loss(self.net(images), points)


class PoseAwareTwin(nn.Module):
  """CNN1 -> spatial transform -> CNN2 (:class:`jaxalign.models.aligner.PoseAwareAligner`).

  Args:
    depth, cnn2_depth: the two backbones.
    image_size, cnn2_image_size: input sides.
    mean_shape: (L, 2) CNN1's starting guess; canonical_shape: (L, 2) CNN2's frame.
    stable: (K,) stable point indices; flip_index: (L,) mirror permutation.
    transform_weights: (L,) similarity weights; pose_reference: (L, 3) mean-face points.
  """

  def __init__(self, *, depth, cnn2_depth, image_size, cnn2_image_size, mean_shape,
               canonical_shape, stable, flip_index, transform_weights, pose_reference):
    super().__init__()
    stable = np.asarray(stable, np.int64)
    self.cnn1 = Regressor(len(mean_shape), depth, image_size, mean_shape)
    self.cnn2 = Regressor(len(stable), cnn2_depth, cnn2_image_size,
                          np.asarray(canonical_shape)[stable])
    self.image_size, self.cnn2_image_size = int(image_size), int(cnn2_image_size)
    for name, value in (('canonical', canonical_shape), ('weights', transform_weights),
                        ('reference', pose_reference)):
      self.register_buffer(name, torch.tensor(np.array(value, np.float32)))
    flip_index = np.asarray(flip_index, np.int64)
    self.register_buffer('stable', torch.as_tensor(stable))
    self.register_buffer('mirrored_stable', torch.as_tensor(flip_index[stable]))
    self.register_buffer('flip_index', torch.as_tensor(flip_index))

  def spatial_transform(self, rough):
    """(B, L, 2) input pixels -> ((B, 2, 3) input -> canonical matrix, (B,) mirrored)."""
    flipped = _yaw(rough, self.reference) < 0
    mirrored = rough[:, self.flip_index] * torch.tensor([-1.0, 1.0]) + torch.tensor(
        [self.image_size - 1.0, 0.0])
    src = torch.where(flipped[:, None, None], mirrored, rough)
    sim = _similarity(src, self.canonical, self.weights)
    flip = torch.tensor([[-1.0, 0.0, self.image_size - 1.0], [0.0, 1.0, 0.0], [0, 0, 1.0]])
    matrix = torch.where(flipped[:, None, None], sim @ flip, sim)
    return matrix, flipped

  def loss(self, images, points):
    rough = self.cnn1(images)
    l1 = wing_loss(rough, points)
    with torch.no_grad():
      matrix, flipped = self.spatial_transform(rough.float())
      warped = warp_images(images, matrix, self.cnn2_image_size)
      moved = torch.einsum('bij,blj->bli', matrix[..., :2], points) + matrix[:, None, :, 2]
      idx = torch.where(flipped[:, None], self.mirrored_stable, self.stable)
      targets = torch.take_along_dim(moved, idx[..., None], dim=1)
    if images.is_contiguous(memory_format=torch.channels_last):
      warped = warped.contiguous(memory_format=torch.channels_last)
    return l1 + wing_loss(self.cnn2(warped), targets)


def twin_of(jax_model):
  """The twin of a JAX aligner (:func:`jaxalign.training.state.create_model`): the same
  architecture, sizes and fixed shapes (own random weights)."""
  from jaxalign.models import aligner  # pylint: disable=g-import-not-at-top
  if isinstance(jax_model, aligner.PlainAligner):
    net = jax_model.net
    return PlainTwin(net.num_points, net.backbone.spec, net.image_size,
                     np.asarray(net.mean_shape[...]))
  if isinstance(jax_model, aligner.PoseAwareAligner):
    m = jax_model
    return PoseAwareTwin(
        depth=m.cnn1.backbone.spec, cnn2_depth=m.cnn2.backbone.spec,
        image_size=m.image_size, cnn2_image_size=m.cnn2_image_size,
        mean_shape=np.asarray(m.cnn1.mean_shape[...]),
        canonical_shape=np.asarray(m.canonical_shape[...]), stable=m.stable_indices,
        flip_index=m.scheme.flip_index_array(),
        transform_weights=np.asarray(m.transform_weights[...]),
        pose_reference=np.asarray(m.pose_reference[...]))
  raise TypeError(f'no PyTorch twin for {type(jax_model).__name__}')


def count_params(module: nn.Module) -> int:
  return int(sum(p.numel() for p in module.parameters()))


def make_train_step(twin, *, learning_rate: float, momentum: float, weight_decay: float,
                    dtype: str = 'float32'):
  """``step(images, points) -> loss``: forward, wing loss, backward, SGD update.

  ``dtype='bfloat16'`` runs forward and backward under CPU autocast (bf16 convolutions, fp32
  weights and loss), the twin of the JAX model's bf16 compute dtype.
  """
  opt = torch.optim.SGD(twin.parameters(), lr=learning_rate, momentum=momentum,
                        weight_decay=weight_decay)
  twin.train()
  use_bf16 = dtype == 'bfloat16'

  def step(images, points):
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=use_bf16):
      loss = twin.loss(images, points)
    loss.backward()
    opt.step()
    return loss.detach()

  return step
