"""The ResNet performance options (jaxalign.models.resnet.options): same parameters, same
outputs and gradients as the reference expressions (lax.conv, reduce_window max pool)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import resnet
from jaxalign.training import config as config_lib


def _run(model, images, **opts):
  """Feature maps, loss and parameter gradients in training mode under ``options(**opts)``."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  @jax.jit
  def run(params):
    def loss(p):
      m = nnx.merge(graphdef, p, rest)
      maps = m.feature_map(images)
      return jnp.sum(jnp.mean(maps, (1, 2)) ** 2), maps
    with resnet.options(**opts):
      return jax.value_and_grad(loss, has_aux=True)(params)

  (value, maps), grads = run(params)
  return value, maps, grads


@pytest.mark.slow
def test_fast_options_match_reference():
  # Odd input side: the strided slices must give the shapes of lax.conv and reduce_window.
  model = resnet.ResNet('tiny_bottleneck', rngs=nnx.Rngs(params=0))   # strided 1x1 shortcuts
  images = jax.random.uniform(jax.random.key(1), (2, 37, 37, 3), maxval=255.0)
  ref_loss, ref_maps, ref_grads = _run(model, images, conv1x1='conv', max_pool='reduce_window')
  loss, maps, grads = _run(model, images, conv1x1='dot', max_pool='slices')
  assert maps.shape == ref_maps.shape == (2, 2, 2, 256)
  np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=2e-3, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def test_max_pool_slices_equals_reduce_window():
  x = jax.random.normal(jax.random.key(0), (2, 9, 12, 3))
  with resnet.options(max_pool='reduce_window'):
    ref = resnet.max_pool_3x3_s2(x)
  with resnet.options(max_pool='slices'):
    out = resnet.max_pool_3x3_s2(x)
  np.testing.assert_array_equal(out, ref)


def test_options_context_restores_and_defaults():
  assert resnet.current_options() == resnet.ResNetOptions()
  with resnet.options(conv1x1='conv'):
    assert resnet.current_options().conv1x1 == 'conv'
    with resnet.options(max_pool='reduce_window'):
      assert resnet.current_options() == resnet.ResNetOptions('conv', 'reduce_window')
    assert resnet.current_options().max_pool == 'slices'
  assert resnet.current_options() == resnet.ResNetOptions()


def test_bad_option_is_named():
  with pytest.raises(ValueError, match='conv1x1'):
    resnet.ResNetOptions(conv1x1='fft')
  c = config_lib.base_config()
  c.data.synthetic.enabled = True
  c.model.max_pool = 'avg'
  with pytest.raises(ValueError, match='config.model.max_pool'):
    config_lib.validate(c, 1)
