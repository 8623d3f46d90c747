"""ResNet backbones (He et al. 2016) in Flax NNX and the landmark regressor built on them.

Layout and numerics follow torchvision's ``resnet18/34/50`` (v1.5: the stride of a bottleneck
block sits on its 3x3 convolution), so ImageNet weights in torchvision's layout load one to one
(``jaxalign.models.pretrained``):

* NHWC activations, HWIO kernels; explicit symmetric padding (3 for the 7x7 stem, 1 for 3x3
  convolutions and the stem's max pool) so that even input sizes give exactly torchvision's
  outputs (``'SAME'`` would pad asymmetrically under stride 2).
* BatchNorm with torch's defaults: epsilon 1e-5, running-average momentum 0.1 (Flax momentum
  0.9). Training or inference statistics follow the module mode: ``model.train()`` uses batch
  statistics and updates the running averages, ``model.eval()`` uses the running averages.
* Parameters and batch statistics are always float32; ``dtype`` (float32 or bfloat16) is the
  compute dtype of convolutions and normalisation. BatchNorm statistics are computed in float32
  (Flax promotes them), the pooled features and the regression head are float32.
* Input normalisation happens inside the model: images arrive as float or uint8 RGB in 0..255
  and are mapped to ``(x / 255 - mean) / std`` with the ImageNet mean and standard deviation
  (torchvision's preprocessing), so a pretrained backbone sees what it was trained on.

Performance (``docs/benchmarks.md``, "JAX vs PyTorch"): XLA's CPU backend runs the gradients
of 1x1 convolutions and of ``reduce_window`` max pooling far slower than the same arithmetic
written as a matrix product and as a maximum of shifted slices. :func:`options` (a context read
when the model is traced; the training step sets it from ``config.model.conv1x1`` and
``config.model.max_pool``) picks the expression; the defaults are the fast ones, the parameters
are the same either way (a 1x1 kernel stays an HWIO ``(1, 1, cin, cout)`` array) and so are the
results, up to float rounding (``tests/test_resnet.py``).

Module attribute names mirror torchvision's state-dict keys (``conv1``, ``bn1``,
``layers[i][j]`` <-> ``layer{i+1}.{j}``, ``downsample.conv``/``.bn`` <-> ``downsample.0``/``.1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
  """Architecture of a ResNet backbone.

  Attributes:
    stage_sizes: number of residual blocks in each stage (stage i > 0 halves the resolution).
    block: 'basic' (two 3x3 convolutions, ResNet-18/34) or 'bottleneck' (1x1, 3x3, 1x1 with 4x
      expansion, ResNet-50 and deeper).
    width: channels of the stem and of the first stage's 3x3 convolutions (64 for the
      standard networks; the tiny test variants use 8).
  """

  stage_sizes: tuple[int, ...]
  block: str
  width: int = 64

  def __post_init__(self):
    if self.block not in ('basic', 'bottleneck'):
      raise ValueError(f"ResNetSpec.block must be 'basic' or 'bottleneck', got {self.block!r}")
    if not self.stage_sizes or any(int(n) < 1 for n in self.stage_sizes):
      raise ValueError(f'ResNetSpec.stage_sizes must be positive counts, got {self.stage_sizes}')
    if self.width < 1:
      raise ValueError(f'ResNetSpec.width must be positive, got {self.width}')

  @property
  def expansion(self) -> int:
    return 4 if self.block == 'bottleneck' else 1

  @property
  def num_features(self) -> int:
    """Channels of the pooled feature vector."""
    return self.width * 2 ** (len(self.stage_sizes) - 1) * self.expansion


RESNET_SPECS = {
    18: ResNetSpec((2, 2, 2, 2), 'basic'),
    34: ResNetSpec((3, 4, 6, 3), 'basic'),
    50: ResNetSpec((3, 4, 6, 3), 'bottleneck'),
    101: ResNetSpec((3, 4, 23, 3), 'bottleneck'),
    152: ResNetSpec((3, 8, 36, 3), 'bottleneck'),
    # Test-sized variants: same topology and key names, one block per stage, width 8.
    'tiny': ResNetSpec((1, 1, 1, 1), 'basic', width=8),
    'tiny_bottleneck': ResNetSpec((1, 1, 1, 1), 'bottleneck', width=8),
}


def resnet_spec(depth: int | str | ResNetSpec) -> ResNetSpec:
  """The spec for a depth (18, 34, 50, 101, 152), a test variant ('tiny', 'tiny_bottleneck'),
  a string of digits ('50'), or a :class:`ResNetSpec` passed through."""
  if isinstance(depth, ResNetSpec):
    return depth
  key = int(depth) if isinstance(depth, str) and depth.isdigit() else depth
  try:
    return RESNET_SPECS[key]
  except (KeyError, TypeError):
    raise ValueError(
        f'unknown ResNet depth {depth!r}; known: {sorted(map(str, RESNET_SPECS))} '
        'or a ResNetSpec') from None


CONV1X1_IMPLS = ('dot', 'conv')
MAX_POOL_IMPLS = ('slices', 'reduce_window')


@dataclasses.dataclass(frozen=True)
class ResNetOptions:
  """How the backbone's operations are expressed (the same parameters and results).

  Attributes:
    conv1x1: 'dot' (a 1x1 convolution as a matrix product over the channels, strided ones
      subsample first) or 'conv' (``lax.conv_general_dilated``).
    max_pool: 'slices' (the stem's 3x3 / 2 max pool as the maximum of nine strided slices of
      the -inf padded input; its gradient is elementwise selects) or 'reduce_window'
      (``nnx.max_pool``, whose gradient is XLA's select-and-scatter).
  """

  conv1x1: str = 'dot'
  max_pool: str = 'slices'

  def __post_init__(self):
    if self.conv1x1 not in CONV1X1_IMPLS:
      raise ValueError(f'conv1x1 must be one of {CONV1X1_IMPLS}, got {self.conv1x1!r}')
    if self.max_pool not in MAX_POOL_IMPLS:
      raise ValueError(f'max_pool must be one of {MAX_POOL_IMPLS}, got {self.max_pool!r}')


_OPTIONS = threading.local()


def current_options() -> ResNetOptions:
  """The options in force (the innermost :func:`options` context, else the defaults)."""
  return getattr(_OPTIONS, 'value', None) or ResNetOptions()


@contextlib.contextmanager
def options(**kwargs):
  """Context in which traced ResNets use the given :class:`ResNetOptions` fields (read when
  a module is called, i.e. while ``jax.jit`` traces; a compiled function keeps what it was
  traced with)."""
  previous = getattr(_OPTIONS, 'value', None)
  _OPTIONS.value = dataclasses.replace(previous or ResNetOptions(), **kwargs)
  try:
    yield _OPTIONS.value
  finally:
    _OPTIONS.value = previous


def options_from_config(config) -> dict:
  """``options(**...)`` keyword arguments from ``config.model`` (defaults where unset)."""
  defaults = ResNetOptions()
  return {'conv1x1': config.model.get('conv1x1', defaults.conv1x1),
          'max_pool': config.model.get('max_pool', defaults.max_pool)}


class Conv(nnx.Conv):
  """``nnx.Conv`` (same parameters) whose 1x1 case can run as a matrix product."""

  def __call__(self, x):
    if self.kernel_size != (1, 1) or current_options().conv1x1 != 'dot':
      return super().__call__(x)
    sh, sw = self.strides if isinstance(self.strides, tuple) else (self.strides,) * 2
    if (sh, sw) != (1, 1):
      x = x[:, ::sh, ::sw]          # a 1x1 kernel with stride s reads every s-th pixel
    dtype = self.dtype or jnp.result_type(x, self.kernel[...])
    kernel = self.kernel[...].reshape(self.kernel[...].shape[2:]).astype(dtype)
    return jax.lax.dot_general(x.astype(dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max pool, stride 2, padding 1 (torchvision's stem pool) on (B, H, W, C)."""
  if current_options().max_pool == 'reduce_window':
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  h, w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      v = p[:, i:i + 2 * h - 1:2, j:j + 2 * w - 1:2]
      out = v if out is None else jnp.maximum(out, v)
  return out


def _conv(cin, cout, kernel, stride, *, dtype, rngs):
  pad = kernel // 2
  return Conv(
      cin, cout, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      use_bias=False, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal'), rngs=rngs)


def _bn(features, *, dtype, momentum, zero_scale=False, rngs):
  return nnx.BatchNorm(
      features, use_running_average=False, momentum=momentum, epsilon=1e-5, dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
      rngs=rngs)


class Downsample(nnx.Module):
  """1x1 strided projection shortcut (torchvision ``downsample.0`` conv, ``downsample.1`` BN)."""

  def __init__(self, cin, cout, stride, *, dtype, momentum, rngs):
    self.conv = _conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
    self.bn = _bn(cout, dtype=dtype, momentum=momentum, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

  expansion = 1

  def __init__(self, cin, width, stride, *, dtype, momentum, zero_init_residual, rngs):
    cout = width
    self.conv1 = _conv(cin, width, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, momentum=momentum, rngs=rngs)
    self.conv2 = _conv(width, cout, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(cout, dtype=dtype, momentum=momentum, zero_scale=zero_init_residual,
                   rngs=rngs)
    self.downsample = (
        Downsample(cin, cout, stride, dtype=dtype, momentum=momentum, rngs=rngs)
        if stride != 1 or cin != cout else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x channel expansion (ResNet-50 v1.5)."""

  expansion = 4

  def __init__(self, cin, width, stride, *, dtype, momentum, zero_init_residual, rngs):
    cout = width * 4
    self.conv1 = _conv(cin, width, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, momentum=momentum, rngs=rngs)
    self.conv2 = _conv(width, width, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(width, dtype=dtype, momentum=momentum, rngs=rngs)
    self.conv3 = _conv(width, cout, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(cout, dtype=dtype, momentum=momentum, zero_scale=zero_init_residual,
                   rngs=rngs)
    self.downsample = (
        Downsample(cin, cout, stride, dtype=dtype, momentum=momentum, rngs=rngs)
        if stride != 1 or cin != cout else None)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return nnx.relu(y + shortcut)


def normalize_images(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB in 0..255 (float or uint8) -> float32 ImageNet-normalised."""
  x = jnp.asarray(images, jnp.float32)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
  std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
  return (x - mean) / std


class ResNet(nnx.Module):
  """ResNet backbone without its classifier: images -> pooled features.

  Args:
    depth: 18, 34, 50, 101, 152, 'tiny', 'tiny_bottleneck' or a :class:`ResNetSpec`.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16, or their names); parameters stay
      float32.
    bn_momentum: Flax BatchNorm momentum of the running averages (0.9 == torch's 0.1).
    zero_init_residual: start each residual branch's last BatchNorm scale at zero (Goyal et
      al. 2017), so every block begins as the identity; off by default (torchvision's default).
    normalize_input: apply :func:`normalize_images` first (inputs in 0..255).
    rngs: ``nnx.Rngs`` with a ``params`` stream.
  """

  def __init__(self, depth: int | str | ResNetSpec = 50, *, dtype=jnp.float32,
               bn_momentum: float = 0.9, zero_init_residual: bool = False,
               normalize_input: bool = True, rngs: nnx.Rngs):
    self.spec = resnet_spec(depth)
    dtype = jnp.dtype(dtype)  # also accepts the names 'float32' / 'bfloat16' (configs)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f'ResNet dtype must be float32 or bfloat16, got {dtype}')
    self.dtype = dtype
    self.normalize_input = normalize_input
    spec = self.spec
    width = spec.width
    self.conv1 = _conv(3, width, 7, 2, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype=dtype, momentum=bn_momentum, rngs=rngs)
    block_cls = Bottleneck if spec.block == 'bottleneck' else BasicBlock
    cin = width
    stages = []
    for i, num_blocks in enumerate(spec.stage_sizes):
      stage_width = width * 2 ** i
      blocks = []
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(block_cls(cin, stage_width, stride, dtype=dtype, momentum=bn_momentum,
                                zero_init_residual=zero_init_residual, rngs=rngs))
        cin = stage_width * block_cls.expansion
      stages.append(nnx.List(blocks))
    self.layers = nnx.List(stages)
    self.num_features = cin

  def stage_maps(self, images: jax.Array) -> list[jax.Array]:
    """(B, H, W, 3) in 0..255 -> every stage's output activations in the compute dtype: stage
    i's is (B, H_i, W_i, C_i) at stride ``4 * 2 ** i`` (each stride-2 layer maps a side s to
    ceil(s / 2)); its cell (r, c) is centred on input pixel ``(stride * c, stride * r)``, since
    every stride-2 layer pads symmetrically and centres output i on input 2i."""
    x = normalize_images(images) if self.normalize_input else jnp.asarray(images, jnp.float32)
    x = x.astype(self.dtype)
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = max_pool_3x3_s2(x)
    maps = []
    for stage in self.layers:
      for block in stage:
        x = block(x)
      maps.append(x)
    return maps

  def stage_channels(self) -> list[int]:
    """Channels of each stage's output (:meth:`stage_maps`)."""
    return [self.spec.width * 2 ** i * self.spec.expansion
            for i in range(len(self.spec.stage_sizes))]

  def feature_map(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) in 0..255 -> (B, H/32, W/32, num_features) last-stage activations in the
    compute dtype (H/32 for four stages; each stage after the first halves it)."""
    return self.stage_maps(images)[-1]

  def feature_grid(self, image_size: int) -> int:
    """Side of :meth:`feature_map`'s output for a square ``image_size`` input: each stride-2
    layer (the stem's convolution and max pool, the first block of every stage after the first)
    maps a side s to ceil(s / 2) under its symmetric padding."""
    side = int(image_size)
    for _ in range(2 + len(self.spec.stage_sizes) - 1):
      side = -(-side // 2)
    return side

  def __call__(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) in 0..255 -> (B, num_features) float32 globally average-pooled features."""
    x = self.feature_map(images)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# The regression head's input (``config.model.head``): 'mean' pools the last feature map
# globally (torchvision's ResNet, the paper's network); 'flatten' keeps its grid (G x G cells of
# C channels, G = the input side halved, rounding up, at every stride-2 layer (5 of them for
# four stages), divided by G), so the linear head sees where a
# feature fired (beyond the paper; measured in docs/experiments/cpu_300w.md); 'heatmap' reads
# each point off a finer map of the backbone's stages (:class:`HeatmapHead`, stride
# :data:`HEATMAP_STRIDES`; beyond the paper).
HEADS = ('mean', 'flatten', 'heatmap')

# The strides the heatmap head can read its points at (stage i's output is at 4 * 2 ** i); 8
# is the default (a 10 x 10 map at 80 px, ``config.model.heatmap_stride``).
HEATMAP_STRIDES = (4, 8, 16, 32)


def _upsample2(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, h, w, C) at stride 2s -> (B, size[0], size[1], C) at stride s, linearly interpolated
  on the cells' centres: fine cell i sits at coarse coordinate i / 2 (both centred on input
  pixel s * i), so even cells copy a coarse cell and odd ones average two (the last repeats)."""
  for axis, (n_in, n_out) in ((1, (x.shape[1], size[0])), (2, (x.shape[2], size[1]))):
    i = np.arange(n_out)
    lo = np.minimum(i // 2, n_in - 1)
    hi = np.minimum((i + 1) // 2, n_in - 1)
    x = (jnp.take(x, lo, axis=axis) + jnp.take(x, hi, axis=axis)) / 2
  return x


class HeatmapHead(nnx.Module):
  """Points read off a feature map: a soft argmax with per-cell offsets (beyond the paper).

  The stages from the one at ``stride`` (one of :data:`HEATMAP_STRIDES`, default 8) on are
  projected to ``channels`` each (1x1), summed from the coarsest down (each upsampled by :func:`_upsample2`, a feature pyramid's top-down
  path) and smoothed by a 3x3 convolution with a ReLU. From that map, for each of L points,
  a 1x1 convolution gives a logit and an offset (x, y) per cell; the point is the expectation,
  over the softmax of the logits across the cells, of the cell's centre plus its offset:

    ``point = sum_c softmax(logit + prior)_c * (centre_c + stride * offset_c)``

  so a point is located where its features fire, at the map's resolution, and still reaches
  beyond the outer cells' centres (the crop's margins). ``prior`` is
  ``-|centre_c - mean_point|^2 / (2 (2 stride)^2)``, which the learned logits override by a
  few nats. The output convolutions' kernels start at zero and the offsets' bias at what moves
  the prior's expectation onto the mean shape, so on an ``image_size`` input the head starts
  at the mean shape exactly (as the pooled head does).
  """

  def __init__(self, stage_channels, num_points: int, *, channels: int, image_size: int,
               mean_shape: np.ndarray, stride: int = 8, rngs: nnx.Rngs):
    if stride not in HEATMAP_STRIDES:
      raise ValueError(f'heatmap stride must be one of {HEATMAP_STRIDES}, got {stride!r}')
    self.level = HEATMAP_STRIDES.index(stride)
    num_stages = len(stage_channels)
    stage_channels = list(stage_channels)[self.level:]
    if not stage_channels:
      raise ValueError(f'the heatmap head at stride {stride} reads stage {self.level} on; the '
                       f'backbone has {num_stages} stages')
    self.num_points = int(num_points)
    self.stride = int(stride)
    dense = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    self.lateral = nnx.List([nnx.Linear(c, channels, **dense) for c in stage_channels])
    self.smooth = nnx.Conv(channels, channels, (3, 3), padding=((1, 1), (1, 1)), **dense)
    zeros = nnx.initializers.zeros_init()
    self.logits = nnx.Linear(channels, num_points, kernel_init=zeros, **dense)
    self.offsets = nnx.Linear(channels, 2 * num_points, kernel_init=zeros, **dense)
    side = int(image_size)
    for _ in range(2 + self.level):      # the stem's convolution and pool, then the stages
      side = -(-side // 2)
    prior = self._prior(side, side, jnp.asarray(mean_shape, jnp.float32))
    start = expected_points(prior[None], jnp.zeros(prior.shape + (2,))[None], self.stride)[0]
    self.offsets.bias[...] = ((mean_shape - start) / self.stride).reshape(-1)

  def _prior(self, h: int, w: int, mean_shape: jax.Array) -> jax.Array:
    """(H, W, L) prior logits: a Gaussian of two cells' deviation around each mean point."""
    sigma = 2.0 * self.stride
    d2 = jnp.sum((_cell_centres(h, w, self.stride) - mean_shape) ** 2, -1)
    return (-d2 / (2 * sigma ** 2)).reshape(h, w, -1)

  def __call__(self, maps: list[jax.Array], mean_shape: jax.Array) -> jax.Array:
    """``maps``: :meth:`ResNet.stage_maps`' outputs; ``mean_shape`` (L, 2) in input pixels ->
    (B, L, 2) float32 points in input pixels."""
    return self.points_and_logits(maps, mean_shape)[0]

  def points_and_logits(self, maps: list[jax.Array], mean_shape: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """:meth:`__call__`'s points and the (B, H, W, L) logits (prior included) whose softmax
    over the cells weighs them (the auxiliary heatmap loss reads them:
    :func:`jaxalign.losses.heatmap_kl`)."""
    maps = [m.astype(jnp.float32) for m in maps[self.level:]]
    x = self.lateral[-1](maps[-1])
    for lateral, fine in zip(list(self.lateral)[-2::-1], maps[-2::-1]):
      x = lateral(fine) + _upsample2(x, fine.shape[1:3])
    x = nnx.relu(self.smooth(x))
    b, h, w, _ = x.shape
    logits = self.logits(x) + self._prior(h, w, mean_shape)
    offsets = self.offsets(x).reshape(b, h, w, self.num_points, 2)
    return expected_points(logits, offsets, self.stride), logits


def _cell_centres(h: int, w: int, stride: int) -> jax.Array:
  """(H * W, 1, 2) (x, y) input pixels of an (H, W) map's cells at ``stride``, row-major."""
  x, y = jnp.meshgrid(jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32))
  return stride * jnp.stack([x, y], -1).reshape(h * w, 1, 2)


def expected_points(logits: jax.Array, offsets: jax.Array, stride: int) -> jax.Array:
  """The soft argmax with offsets: logits (B, H, W, L), offsets (B, H, W, L, 2) in cells, cell
  (r, c) centred on input pixel (stride * c, stride * r) -> (B, L, 2) float32 (x, y) in input
  pixels, each point the expectation of its cells' centres plus offsets under the softmax of
  its logits over the H * W cells."""
  b, h, w, num_points = logits.shape
  centres = _cell_centres(h, w, stride)
  weights = jax.nn.softmax(logits.astype(jnp.float32).reshape(b, h * w, num_points), axis=1)
  targets = centres + stride * offsets.astype(jnp.float32).reshape(b, h * w, num_points, 2)
  return jnp.einsum('bcl,bcld->bld', weights, targets)


def pooled_to_grid_kernel(kernel: np.ndarray, grid: int) -> np.ndarray:
  """A pooled head's kernel (C, K) as the 'flatten' head's (G * G * C, K) that gives the same
  outputs: every cell's block is ``kernel / G`` (the grid head divides its inputs by G, so the
  sum over the G * G cells is ``kernel`` applied to their mean)."""
  kernel = np.asarray(kernel)
  return np.tile(kernel, (grid * grid, 1)) / grid


class ModelConstant(nnx.Variable):
  """A fixed array stored with the model (mean shapes, the canonical shape, fit weights).

  Saved with ``nnx.state(model)`` (so a checkpoint restores it), not an ``nnx.Param`` (so
  gradients and optimisers leave it alone).
  """


class LandmarkRegressor(nnx.Module):
  """ResNet + linear head regressing L landmarks in input-image pixels.

  ``points = mean_shape + image_size * Dense(features)``: the head predicts offsets from a
  fixed mean shape in units of the input side, so at initialisation the output is the mean
  shape (the head's kernel starts with standard deviation 0.01 / sqrt(fan_in), its bias at
  zero: a few pixels of spread around it) and the head's gradients do not grow with the input
  resolution. The mean shape is a :class:`ModelConstant` variable (checkpointed with the model,
  excluded from ``nnx.Param`` so optimisers leave it alone).

  Args:
    num_points: L.
    depth: backbone depth or spec (see :class:`ResNet`).
    image_size: side of the square input in pixels.
    mean_shape: (L, 2) initial guess in input pixels; default: every point at the image centre
      (pass the training mean shape instead).
    dtype, bn_momentum, zero_init_residual: see :class:`ResNet`.
    head: the head's input, one of :data:`HEADS`: 'mean' (globally pooled features, C values)
      or 'flatten' (the last feature map as it is, G * G * C values), or 'heatmap' (no linear
      head: :class:`HeatmapHead` on the stages' maps, 2 * width channels, any input size).
    heatmap_stride: the heatmap head's map stride, one of :data:`HEATMAP_STRIDES`.
    rngs: ``nnx.Rngs`` with a ``params`` stream.
  """

  def __init__(self, num_points: int, *, depth: int | str | ResNetSpec = 50,
               image_size: int = 224, mean_shape=None, dtype=jnp.float32,
               bn_momentum: float = 0.9, zero_init_residual: bool = False,
               head: str = 'mean', heatmap_stride: int = 8, rngs: nnx.Rngs):
    if head not in HEADS:
      raise ValueError(f'head must be one of {HEADS}, got {head!r}')
    self.head_input = head
    if num_points < 1:
      raise ValueError(f'num_points must be positive, got {num_points}')
    if image_size < 8:
      raise ValueError(f'image_size must be at least 8 pixels, got {image_size}')
    self.num_points = int(num_points)
    self.image_size = int(image_size)
    if mean_shape is None:
      mean_shape = np.full((num_points, 2), (image_size - 1) / 2.0, np.float32)
    mean_shape = np.asarray(mean_shape, np.float32)
    if mean_shape.shape != (num_points, 2):
      raise ValueError(
          f'mean_shape must have shape ({num_points}, 2), got {mean_shape.shape}')
    if not np.all(np.isfinite(mean_shape)):
      raise ValueError('mean_shape has non-finite values')
    self.backbone = ResNet(depth, dtype=dtype, bn_momentum=bn_momentum,
                           zero_init_residual=zero_init_residual, rngs=rngs)
    if head == 'heatmap':
      self.heatmap = HeatmapHead(self.backbone.stage_channels(), num_points,
                                 channels=2 * self.backbone.spec.width,
                                 image_size=self.image_size, mean_shape=mean_shape,
                                 stride=heatmap_stride, rngs=rngs)
      self.mean_shape = ModelConstant(jnp.asarray(mean_shape))
      return
    num_inputs = self.backbone.num_features
    if head == 'flatten':
      num_inputs *= self.backbone.feature_grid(self.image_size) ** 2
    self.head = nnx.Linear(
        num_inputs, 2 * num_points, dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.variance_scaling(1e-4, 'fan_in', 'truncated_normal'),
        bias_init=nnx.initializers.zeros_init(), rngs=rngs)
    self.mean_shape = ModelConstant(jnp.asarray(mean_shape))

  def __call__(self, images: jax.Array) -> jax.Array:
    """(B, S, S, 3) in 0..255 -> (B, L, 2) float32 (x, y) in input pixels."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3), got shape {images.shape}')
    if self.head_input == 'heatmap':
      return self.heatmap(self.backbone.stage_maps(images), self.mean_shape[...])
    if self.head_input == 'flatten':
      # The grid head's inputs are the cells of an image_size input's feature grid.
      if images.shape[1:3] != (self.image_size, self.image_size):
        raise ValueError(f"images must be (B, {self.image_size}, {self.image_size}, 3) for "
                         f"head='flatten' (its kernel reads that input's feature grid), got "
                         f'shape {images.shape}')
      # Divided by the grid's side G: a pooled head's kernel W is then this head's with every
      # cell's block at W / G (the same outputs: pooled_to_grid_kernel), and SGD moves the
      # outputs as fast as it moves the pooled head's (G * G inputs of about the pooled size,
      # each at 1 / G), so the learning rate keeps its meaning.
      features = self.backbone.feature_map(images).astype(jnp.float32)
      grid = features.shape[1]
      features = features.reshape(features.shape[0], -1) / grid
    else:
      features = self.backbone(images)
    offsets = self.head(features).reshape(-1, self.num_points, 2)
    return self.mean_shape[...] + self.image_size * offsets

  def points_and_heatmap(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A heatmap model's (B, L, 2) points (as :meth:`__call__`), its (B, H, W, L) logits and
    the (H * W, 1, 2) input pixels of the cells' centres (row-major), for the auxiliary
    heatmap loss (``loss.heatmap_weight``).

    Raises:
      ValueError: the model's head is not 'heatmap'.
    """
    if self.head_input != 'heatmap':
      raise ValueError(f"points_and_heatmap needs head='heatmap', this model's head is "
                       f'{self.head_input!r}')
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images must be (B, H, W, 3), got shape {images.shape}')
    points, logits = self.heatmap.points_and_logits(self.backbone.stage_maps(images),
                                                    self.mean_shape[...])
    _, h, w, _ = logits.shape
    return points, logits, _cell_centres(h, w, self.heatmap.stride)
