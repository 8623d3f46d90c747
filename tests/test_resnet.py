"""Tests for jaxalign.models.resnet: specs, shapes, dtypes, BatchNorm modes, the landmark head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import resnet as resnet_lib


# Everything runs under jit: eager NNX dispatches (and compiles) op by op, which is far slower.
_forward = nnx.jit(lambda m, x: m(x))
_feature_map = nnx.jit(lambda m, x: m.feature_map(x))


def _images(n=4, size=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)),
                     jnp.float32)


def test_specs():
  assert resnet_lib.resnet_spec(50).num_features == 2048
  assert resnet_lib.resnet_spec('18').num_features == 512
  assert resnet_lib.resnet_spec(34).stage_sizes == (3, 4, 6, 3)
  assert resnet_lib.resnet_spec('tiny').num_features == 64
  assert resnet_lib.resnet_spec('tiny_bottleneck').num_features == 256
  custom = resnet_lib.ResNetSpec((1, 2), 'basic', width=4)
  assert resnet_lib.resnet_spec(custom) is custom and custom.num_features == 8
  with pytest.raises(ValueError, match='unknown ResNet depth 42'):
    resnet_lib.resnet_spec(42)
  with pytest.raises(ValueError, match='block'):
    resnet_lib.ResNetSpec((1,), 'dense')


def test_resnet50_parameter_count_matches_torchvision():
  # torchvision resnet50 has 25,557,032 parameters, of which fc holds 2048*1000 + 1000.
  abstract = nnx.eval_shape(lambda: resnet_lib.ResNet(50, rngs=nnx.Rngs(0)))
  params = nnx.state(abstract, nnx.Param)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert count == 25_557_032 - (2048 * 1000 + 1000)


def test_shapes_and_float32_dtypes():
  model = resnet_lib.ResNet('tiny', rngs=nnx.Rngs(0))
  model.eval()
  x = _images()
  fmap = _feature_map(model, x)
  assert fmap.shape == (4, 1, 1, 64) and fmap.dtype == jnp.float32
  feats = _forward(model, x)
  assert feats.shape == (4, 64) and feats.dtype == jnp.float32
  np.testing.assert_allclose(feats, fmap[:, 0, 0], rtol=1e-6)
  # uint8 input is accepted (read as 0..255).
  np.testing.assert_allclose(_forward(model, jnp.round(x).astype(jnp.uint8)),
                             _forward(model, jnp.round(x)), rtol=1e-5, atol=1e-5)
  # 64 px input: 2x2 final map for four stages (shape only: no compilation).
  assert nnx.eval_shape(lambda m, x: m.feature_map(x), model, _images(2, 64)).shape == (
      2, 2, 2, 64)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  model = resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=32, dtype='bfloat16',
                                       rngs=nnx.Rngs(0))
  ref = resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=32, rngs=nnx.Rngs(0))
  for variable_type in (nnx.Param, nnx.BatchStat):
    leaves = jax.tree.leaves(nnx.state(model, variable_type))
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
  x = _images()
  assert nnx.eval_shape(lambda m, x: m.backbone.feature_map(x), model, x).dtype == jnp.bfloat16
  out = _forward(model, x)
  assert out.dtype == jnp.float32 and out.shape == (4, 5, 2)
  # Same parameters, so bf16 and f32 agree up to bf16 rounding (outputs ~ the mean shape).
  np.testing.assert_allclose(out, _forward(ref, x), atol=0.5)
  grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))(model, x)
  assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))
             for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match='float32 or bfloat16'):
    resnet_lib.ResNet('tiny', dtype=jnp.float16, rngs=nnx.Rngs(0))


def test_train_and_eval_batchnorm():
  model = resnet_lib.ResNet('tiny', rngs=nnx.Rngs(0))
  x = _images(4)
  stats0 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))

  # Training mode (the default): batch statistics, running averages updated, and an example's
  # output depends on the rest of the batch.
  forward = _forward
  train_full = forward(model, x)
  stats1 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.allclose(a, b), stats0, stats1))
  assert all(changed)
  train_half = forward(model, x[:2])
  assert np.abs(np.asarray(train_full[:2]) - np.asarray(train_half)).max() > 1e-3
  # The stem BN's running mean moved by (1 - momentum) toward the batch mean.
  stem = np.asarray(nnx.jit(lambda m, x: m.conv1(resnet_lib.normalize_images(x)))(model, x))
  batch_mean = stem.mean((0, 1, 2))
  np.testing.assert_allclose(stats1['bn1']['mean'][...], 0.1 * batch_mean, rtol=1e-4,
                             atol=1e-5)

  # Eval mode: running averages, untouched, per-example outputs.
  model.eval()
  stats2 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  eval_full = forward(model, x)
  eval_half = forward(model, x[:2])
  np.testing.assert_allclose(eval_full[:2], eval_half, rtol=1e-5, atol=1e-5)
  stats3 = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, stats2, stats3)))
  model.train()
  assert model.bn1.use_running_average is False


def test_landmark_head_starts_at_the_mean_shape():
  mean = np.stack(np.meshgrid(np.linspace(5, 26, 4), np.linspace(6, 25, 3)), -1).reshape(-1, 2)
  model = resnet_lib.LandmarkRegressor(12, depth='tiny', image_size=32, mean_shape=mean,
                                       rngs=nnx.Rngs(1))
  out = _forward(model, _images(4))
  assert out.shape == (4, 12, 2) and out.dtype == jnp.float32
  # Offsets of a few pixels at most, not zero (the head is random, not degenerate).
  dev = np.abs(np.asarray(out) - mean)
  assert 0 < dev.max() < 3.0
  # The mean shape is a ModelConstant, not a parameter.
  assert 'mean_shape' not in nnx.state(model, nnx.Param)
  np.testing.assert_allclose(nnx.state(model, resnet_lib.ModelConstant)['mean_shape'][...], mean)
  # Default mean shape: the image centre.
  centre = resnet_lib.LandmarkRegressor(3, depth='tiny', image_size=32, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(centre.mean_shape[...], 15.5)
  with pytest.raises(ValueError, match=r'mean_shape must have shape \(12, 2\)'):
    resnet_lib.LandmarkRegressor(12, depth='tiny', image_size=32, mean_shape=mean[:5],
                                 rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'images must be \(B, H, W, 3\)'):
    model(jnp.zeros((2, 32, 32)))


def test_zero_init_residual_blocks_start_as_identity():
  model = resnet_lib.ResNet('tiny', zero_init_residual=True, rngs=nnx.Rngs(0))
  block = model.layers[0][0]  # no downsample: identity shortcut
  assert block.downsample is None
  x = jnp.abs(jax.random.normal(jax.random.key(0), (2, 8, 8, 8)))
  np.testing.assert_allclose(nnx.jit(lambda b, x: b(x))(block, x), x, atol=1e-6)


@pytest.mark.parametrize('size', [64, 70, 33])
def test_flatten_head_sees_the_whole_feature_grid(size):
  """``head='flatten'``: the head's input is the last feature map as a grid (G x G x C, G the
  input side halved five times, rounded up), so moving a feature to another cell moves the
  points; the pooled head cannot tell the cells apart."""
  model = resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=size, head='flatten',
                                       rngs=nnx.Rngs(0))
  grid = model.backbone.feature_grid(size)
  fmap = _feature_map(model.backbone, _images(2, size))
  assert fmap.shape[1:3] == (grid, grid)
  assert model.head.kernel.shape == (grid * grid * model.backbone.num_features, 10)
  out = _forward(model, _images(2, size))
  assert out.shape == (2, 5, 2) and np.all(np.isfinite(out))
  # The head on a feature map and on the same map with its cells swapped.
  swapped = jnp.flip(fmap, axis=(1, 2))
  heads = {}
  for kind in ('mean', 'flatten'):
    m = resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=size, head=kind,
                                     rngs=nnx.Rngs(0))
    m.head.kernel[...] = jax.random.normal(jax.random.key(1), m.head.kernel.shape)
    feed = ((lambda f: f.reshape(f.shape[0], -1)) if kind == 'flatten'
            else (lambda f: jnp.mean(f, axis=(1, 2))))
    heads[kind] = np.abs(np.asarray(m.head(feed(fmap)) - m.head(feed(swapped)))).max()
  assert heads['mean'] < 1e-4 < heads['flatten']
  with pytest.raises(ValueError, match="head must be one of"):
    resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=size, head='max', rngs=nnx.Rngs(0))
  # The grid head reads the feature grid of an image_size input only.
  with pytest.raises(ValueError, match=f"images must be \\(B, {size}, {size}, 3\\) for head='flatten'"):
    model(_images(1, size + 32))


@pytest.mark.parametrize('stride', [4, 8])
def test_heatmap_head_starts_at_the_mean_shape_at_any_input_size(stride):
  """``head='heatmap'``: on its own input size the fresh head gives the mean shape exactly (its
  offsets' bias undoes the prior's pull away from points outside the outer cells' centres);
  on another size it still gives finite points near it."""
  rng = np.random.default_rng(0)
  mean = rng.uniform(2, 78, (7, 2)).astype(np.float32)
  mean[0] = (79.0, 79.0)                    # beyond the last cell centre (72) of an 80 px input
  model = resnet_lib.LandmarkRegressor(7, depth='tiny', image_size=80, head='heatmap',
                                       mean_shape=mean, heatmap_stride=stride,
                                       rngs=nnx.Rngs(0))
  assert not hasattr(model, 'head')
  # One lateral projection per stage from the one at the stride on (stride 4: stage 0).
  assert len(model.heatmap.lateral) == 4 - resnet_lib.HEATMAP_STRIDES.index(stride)
  with pytest.raises(ValueError, match='heatmap stride must be one of'):
    resnet_lib.LandmarkRegressor(7, depth='tiny', image_size=80, head='heatmap',
                                 heatmap_stride=6, rngs=nnx.Rngs(0))
  model.eval()
  out = np.asarray(_forward(model, _images(2, 80)))
  np.testing.assert_allclose(out, np.broadcast_to(mean, out.shape), atol=1e-3)
  other = np.asarray(_forward(model, _images(2, 64)))
  assert other.shape == (2, 7, 2) and np.all(np.isfinite(other))
  assert np.abs(other - mean).max() < 16


def test_expected_points_read_the_peak_cell_and_its_offset():
  """The soft argmax: a sharp logit peak at cell (r, c) puts the point on (stride c, stride r)
  plus the offset there (in cells); two equal peaks put it halfway."""
  logits = np.full((1, 5, 6, 2), -1e4, np.float32)
  offsets = np.zeros((1, 5, 6, 2, 2), np.float32)
  logits[0, 3, 4, 0] = 0.0                       # point 0: cell row 3, column 4
  offsets[0, 3, 4, 0] = (0.25, -0.5)
  logits[0, 1, 0, 1] = logits[0, 1, 2, 1] = 0.0  # point 1: halfway between columns 0 and 2
  out = np.asarray(resnet_lib.expected_points(jnp.asarray(logits), jnp.asarray(offsets), 8))
  np.testing.assert_allclose(out[0], [[8 * 4.25, 8 * 2.5], [8.0, 8.0]], atol=1e-4)


def test_upsampling_keeps_the_cells_centres():
  """The heatmap head's top-down path: a map linear in its cells' centres stays linear at the
  finer stride (fine cell i sits on coarse coordinate i / 2), and odd sizes are kept."""
  coarse = jnp.asarray(np.arange(3, dtype=np.float32)[None, :, None, None] * 16.0)
  coarse = jnp.broadcast_to(coarse, (1, 3, 3, 1))          # the centres' row coordinate
  fine = np.asarray(resnet_lib._upsample2(coarse, (5, 5)))  # pylint: disable=protected-access
  np.testing.assert_allclose(fine[0, :, 2, 0], 8.0 * np.arange(5))
  assert resnet_lib._upsample2(coarse, (6, 4)).shape == (1, 6, 4, 1)  # pylint: disable=protected-access
