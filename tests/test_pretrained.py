"""Tests for jaxalign.models.pretrained: torchvision-layout ResNet weights -> Flax ResNet.

The numerical check runs an independent plain-numpy NCHW ResNet directly on the torchvision
state dict (im2col convolutions, torch's BatchNorm and padding conventions) and compares it
with the Flax model after loading the same dict from a .safetensors file.
"""

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxalign.models import pretrained
from jaxalign.models import resnet as resnet_lib


_forward = nnx.jit(lambda m, x: m(x))
_feature_map = nnx.jit(lambda m, x: m.feature_map(x))


# --- an independent reference: torchvision's ResNet forward in numpy (NCHW, OIHW) ------------

def _np_conv(x, w, stride, pad):
  n, c, h, wd = x.shape
  o, i, kh, kw = w.shape
  assert i == c
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  oh = (h + 2 * pad - kh) // stride + 1
  ow = (wd + 2 * pad - kw) // stride + 1
  cols = np.empty((n, c, kh, kw, oh, ow), np.float64)
  for a in range(kh):
    for b in range(kw):
      cols[:, :, a, b] = xp[:, :, a:a + stride * oh:stride, b:b + stride * ow:stride]
  return np.einsum('ncabhw,ocab->nohw', cols, w.astype(np.float64))


def _np_bn(x, sd, prefix):
  g = sd[f'{prefix}.weight'][None, :, None, None]
  b = sd[f'{prefix}.bias'][None, :, None, None]
  m = sd[f'{prefix}.running_mean'][None, :, None, None]
  v = sd[f'{prefix}.running_var'][None, :, None, None]
  return (x - m) / np.sqrt(v + 1e-5) * g + b


def _np_maxpool(x):
  xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  n, c, h, w = x.shape
  oh, ow = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
  out = np.full((n, c, oh, ow), -np.inf)
  for a in range(3):
    for b in range(3):
      out = np.maximum(out, xp[:, :, a:a + 2 * oh:2, b:b + 2 * ow:2])
  return out


def _np_resnet_features(sd, images_nhwc, stage_sizes, bottleneck):
  """torchvision ResNet (v1.5) up to the global average pool, eval mode."""
  relu = lambda t: np.maximum(t, 0)
  mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
  std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
  x = (images_nhwc.transpose(0, 3, 1, 2).astype(np.float64) / 255.0 - mean) / std
  x = relu(_np_bn(_np_conv(x, sd['conv1.weight'], 2, 3), sd, 'bn1'))
  x = _np_maxpool(x)
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      stride = 2 if (i > 0 and j == 0) else 1
      if bottleneck:
        y = relu(_np_bn(_np_conv(x, sd[f'{p}.conv1.weight'], 1, 0), sd, f'{p}.bn1'))
        y = relu(_np_bn(_np_conv(y, sd[f'{p}.conv2.weight'], stride, 1), sd, f'{p}.bn2'))
        y = _np_bn(_np_conv(y, sd[f'{p}.conv3.weight'], 1, 0), sd, f'{p}.bn3')
      else:
        y = relu(_np_bn(_np_conv(x, sd[f'{p}.conv1.weight'], stride, 1), sd, f'{p}.bn1'))
        y = _np_bn(_np_conv(y, sd[f'{p}.conv2.weight'], 1, 1), sd, f'{p}.bn2')
      if f'{p}.downsample.0.weight' in sd:
        x = _np_bn(_np_conv(x, sd[f'{p}.downsample.0.weight'], stride, 0), sd,
                   f'{p}.downsample.1')
      x = relu(y + x)
  return x.mean(axis=(2, 3)), x


# --- torchvision's key list, written out from its architecture (not from our key map) --------

def _torchvision_shapes(stage_sizes, bottleneck, width=64, num_classes=1000):
  """{key: shape} of torchvision.models.resnet{18,34,50}().state_dict() for these stages."""
  shapes = {}

  def bn(prefix, c):
    for name in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{prefix}.{name}'] = (c,)
    shapes[f'{prefix}.num_batches_tracked'] = ()

  shapes['conv1.weight'] = (width, 3, 7, 7)
  bn('bn1', width)
  expansion = 4 if bottleneck else 1
  cin = width
  for i, n in enumerate(stage_sizes):
    planes = width * 2 ** i
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      stride = 2 if (i > 0 and j == 0) else 1
      if bottleneck:
        shapes[f'{p}.conv1.weight'] = (planes, cin, 1, 1)
        bn(f'{p}.bn1', planes)
        shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
        bn(f'{p}.bn2', planes)
        shapes[f'{p}.conv3.weight'] = (planes * 4, planes, 1, 1)
        bn(f'{p}.bn3', planes * 4)
      else:
        shapes[f'{p}.conv1.weight'] = (planes, cin, 3, 3)
        bn(f'{p}.bn1', planes)
        shapes[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
        bn(f'{p}.bn2', planes)
      if stride != 1 or cin != planes * expansion:
        shapes[f'{p}.downsample.0.weight'] = (planes * expansion, cin, 1, 1)
        bn(f'{p}.downsample.1', planes * expansion)
      cin = planes * expansion
  shapes['fc.weight'] = (num_classes, cin)
  shapes['fc.bias'] = (num_classes,)
  return shapes


def _random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in shapes.items():
    if key.endswith('num_batches_tracked'):
      sd[key] = np.array(100, np.int64)
    elif key.endswith('running_var'):
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith('running_mean') or key.endswith('.bias'):
      sd[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif len(shape) == 1:  # BN weight
      sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      fan_in = int(np.prod(shape[1:]))
      sd[key] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
  return sd


@pytest.mark.parametrize('depth', ['tiny_bottleneck', 'tiny'])
def test_features_match_numpy_reference(tmp_path, depth):
  spec = resnet_lib.resnet_spec(depth)
  bottleneck = spec.block == 'bottleneck'
  sd = _random_state_dict(_torchvision_shapes(spec.stage_sizes, bottleneck, spec.width))
  path = tmp_path / 'weights.safetensors'
  save_file(sd, str(path))

  model = resnet_lib.ResNet(depth, rngs=nnx.Rngs(0))
  assert pretrained.init_from_pretrained(model, path) == 1
  model.eval()
  images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  fmap = np.asarray(_feature_map(model, images))
  feats = np.asarray(_forward(model, images))
  ref_feats, ref_map = _np_resnet_features(sd, images, spec.stage_sizes, bottleneck)
  assert feats.shape == ref_feats.shape == (2, spec.num_features)
  np.testing.assert_allclose(fmap, ref_map.transpose(0, 2, 3, 1), rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(feats, ref_feats, rtol=1e-4, atol=1e-4)
  # A different init would not match: the comparison is meaningful.
  other = resnet_lib.ResNet(depth, rngs=nnx.Rngs(5))
  other.eval()
  assert np.abs(np.asarray(_forward(other, images)) - ref_feats).max() > 1e-2


def test_resnet50_key_mapping_is_complete_and_round_trips(tmp_path):
  shapes = _torchvision_shapes((3, 4, 6, 3), bottleneck=True)
  assert len(shapes) == 320  # len(torchvision.models.resnet50().state_dict())
  sd = _random_state_dict(shapes, seed=3)
  path = tmp_path / 'resnet50.safetensors'
  save_file(sd, str(path))
  # Abstract model (no 25M random initial values): loading makes every variable concrete.
  model = nnx.eval_shape(lambda: resnet_lib.ResNet(50, rngs=nnx.Rngs(0)))
  report = pretrained.load_torchvision_into_resnet(model, pretrained.load_state_dict(path))
  skipped = {k for k in shapes if k.startswith('fc.') or k.endswith('num_batches_tracked')}
  assert set(report.loaded) == set(shapes) - skipped
  assert set(report.skipped) == skipped
  exported = pretrained.export_torchvision_state_dict(model)
  assert set(exported) == set(shapes) - skipped
  for key, value in exported.items():
    np.testing.assert_array_equal(value, sd[key], err_msg=key)
  # Spot-check the layout conversions directly on the Flax variables.
  np.testing.assert_array_equal(
      np.asarray(model.layers[2][5].conv2.kernel[...]),
      sd['layer3.5.conv2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      np.asarray(model.layers[3][0].downsample.bn.var[...]),
      sd['layer4.0.downsample.1.running_var'])
  np.testing.assert_array_equal(np.asarray(model.bn1.scale[...]), sd['bn1.weight'])


def test_errors_name_missing_unexpected_and_misshaped_keys(tmp_path):
  spec = resnet_lib.resnet_spec('tiny')
  good = _random_state_dict(_torchvision_shapes(spec.stage_sizes, False, spec.width))
  model = resnet_lib.ResNet('tiny', rngs=nnx.Rngs(0))
  before = np.asarray(model.conv1.kernel[...]).copy()

  bad = dict(good)
  del bad['layer2.0.bn1.running_var']
  bad['layer5.0.conv1.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  bad['layer1.0.conv2.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(ValueError) as err:
    pretrained.load_torchvision_into_resnet(model, bad)
  msg = str(err.value)
  assert 'missing keys: layer2.0.bn1.running_var' in msg
  assert 'unexpected keys: layer5.0.conv1.weight' in msg
  assert 'layer1.0.conv2.weight' in msg and 'mis-shaped' in msg
  np.testing.assert_array_equal(np.asarray(model.conv1.kernel[...]), before)  # untouched

  # ResNet-18 weights into a ResNet-50 fail loudly.
  r18 = _random_state_dict(_torchvision_shapes((2, 2, 2, 2), False, 64))
  with pytest.raises(ValueError, match='missing keys'):
    pretrained.load_torchvision_into_resnet(resnet_lib.ResNet(
        resnet_lib.ResNetSpec((1, 1, 1, 1), 'bottleneck', 8), rngs=nnx.Rngs(0)), r18)


def test_file_errors(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match='nope.safetensors'):
    pretrained.load_state_dict(tmp_path / 'nope.safetensors')
  junk = tmp_path / 'junk.safetensors'
  junk.write_bytes(b'not a safetensors file')
  with pytest.raises(ValueError, match='junk.safetensors'):
    pretrained.load_state_dict(junk)
  weird = tmp_path / 'w.npz'
  weird.write_bytes(b'')
  with pytest.raises(ValueError, match='unknown weight file type'):
    pretrained.load_state_dict(weird)
  pth = tmp_path / 'resnet50.pth'
  pth.write_bytes(b'')
  import builtins
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == 'torch':
      raise ImportError('No module named torch')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  with pytest.raises(ImportError, match='convert the file'):
    pretrained.load_state_dict(pth)


def test_init_from_pretrained_needs_a_backbone(tmp_path):
  spec = resnet_lib.resnet_spec('tiny')
  path = tmp_path / 'w.safetensors'
  save_file(_random_state_dict(_torchvision_shapes(spec.stage_sizes, False, spec.width)),
            str(path))
  with pytest.raises(ValueError, match='no ResNet backbone'):
    pretrained.init_from_pretrained(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), path)
  # The landmark regressor's backbone is loaded, its head left alone.
  reg = resnet_lib.LandmarkRegressor(5, depth='tiny', image_size=32, rngs=nnx.Rngs(0))
  head_before = np.asarray(reg.head.kernel[...]).copy()
  assert pretrained.init_from_pretrained(reg, path) == 1
  np.testing.assert_array_equal(np.asarray(reg.head.kernel[...]), head_before)
  expected = pretrained.load_state_dict(path)['conv1.weight'].transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(np.asarray(reg.backbone.conv1.kernel[...]), expected)
