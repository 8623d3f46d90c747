"""Training pieces: config validation, schedule and optimiser, logging, checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxalign.training import checkpointing, config as config_lib, logger, optim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_schedule_and_optimizer():
  c = config_lib.base_config()
  schedule = optim.learning_rate_schedule(c)
  assert c.num_steps == 180_000 and c.optim.momentum == 0.9 and c.optim.weight_decay == 5e-4
  for step, lr in ((0, 1e-5), (59_999, 1e-5), (60_000, 1e-6), (119_999, 1e-6),
                   (120_000, 1e-7), (179_999, 1e-7)):
    np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-5)
  # One SGD step: v = g + wd * p; p -= lr * v (momentum starts at zero).
  tx = optim.make_optimizer(c)
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.5, 0.5])}
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -1e-5 * (grads['w'] + 5e-4 * params['w']), rtol=1e-6)
  # Second step: momentum 0.9 on the trace.
  updates2, _ = tx.update(grads, state, params)
  v1 = grads['w'] + 5e-4 * params['w']
  np.testing.assert_allclose(updates2['w'], -1e-5 * (0.9 * v1 + v1), rtol=1e-6)


def test_adamw_optimizer():
  c = config_lib.base_config()
  c.optim.optimizer = 'adamw'
  c.optim.schedule = 'constant'
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.1
  tx = optim.make_optimizer(c)
  params = {'w': jnp.array([1.0, -2.0, 3.0])}
  grads = {'w': jnp.array([0.5, -40.0, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step: m / sqrt(v) = sign(g) whatever the gradient's scale; the decay is decoupled
  # (lr * wd * p, not through the gradient's normalisation).
  expected = -1e-3 * (np.sign(grads['w']) + 0.1 * params['w'])
  np.testing.assert_allclose(updates['w'], expected, rtol=1e-4, atol=1e-9)
  c.optim.optimizer = 'lamb'
  with pytest.raises(ValueError, match='optim.optimizer'):
    optim.make_optimizer(c)
  # A run saved before the key existed trained with SGD.
  del c.optim['optimizer']
  sgd_tx = optim.make_optimizer(c)
  sgd, _ = sgd_tx.update(grads, sgd_tx.init(params), params)
  np.testing.assert_allclose(sgd['w'], -1e-3 * (grads['w'] + 0.1 * params['w']), rtol=1e-6)


def test_validate_names_the_bad_key():
  c = config_lib.base_config()
  c.data.train_dir = '/somewhere'
  config_lib.validate(c, 8)
  c.batch_size = 12
  with pytest.raises(ValueError, match=r'batch_size.*12.*8 devices'):
    config_lib.validate(c, 8)
  c.batch_size = 16
  c.model.kind = 'vit'
  with pytest.raises(ValueError, match='model.kind'):
    config_lib.validate(c, 1)
  c.model.kind = 'plain'
  c.model.head = 'max'
  with pytest.raises(ValueError, match='model.head'):
    config_lib.validate(c, 1)
  c.model.head = 'flatten'
  c.optim.schedule = 'exotic'
  with pytest.raises(ValueError, match='optim.schedule'):
    config_lib.validate(c, 1)
  c.optim.schedule = 'piecewise'
  c.optim.optimizer = 'adam'
  with pytest.raises(ValueError, match='optim.optimizer'):
    config_lib.validate(c, 1)
  c.optim.optimizer = 'adamw'
  config_lib.validate(c, 1)
  c.optim.optimizer = 'sgd'
  for key, bad in (('width', 0), ('width', -16), ('cnn2_width', -1), ('heatmap_stride', 6)):
    good = c.model[key]
    c.model[key] = bad
    with pytest.raises(ValueError, match=f'model.{key}'):
      config_lib.validate(c, 1)
    c.model[key] = good
  for bad in (0.0, -1.0, float('nan'), float('inf')):
    c.loss.contour_weight = bad
    with pytest.raises(ValueError, match='loss.contour_weight'):
      config_lib.validate(c, 1)
  c.loss.contour_weight = 2.0
  config_lib.validate(c, 1)
  for key, bad in (('heatmap_weight', -0.5), ('heatmap_weight', float('nan')),
                   ('heatmap_sigma', 0.0), ('heatmap_sigma', float('inf'))):
    good = c.loss[key]
    c.loss[key] = bad
    with pytest.raises(ValueError, match=f'loss.{key}'):
      config_lib.validate(c, 1)
    c.loss[key] = good
  c.loss.heatmap_weight = 1.0     # the pooled/flatten head has no heatmap
  with pytest.raises(ValueError, match="loss.heatmap_weight: needs model.head='heatmap'"):
    config_lib.validate(c, 1)
  c.model.head = 'heatmap'
  config_lib.validate(c, 1)
  c.model.head, c.loss.heatmap_weight = 'flatten', 0.0
  as_saved = c.to_dict()           # as a run's config.json could hold it
  as_saved['model']['cnn2_mirror_offset'] = 1
  with pytest.raises(ValueError, match='model.cnn2_mirror_offset: must be True or False'):
    config_lib.validate(ml_collections.ConfigDict(as_saved), 1)
  as_saved['model']['cnn2_mirror_offset'] = False
  as_saved['model']['cnn1_mirror_offset'] = 'yes'
  with pytest.raises(ValueError, match='model.cnn1_mirror_offset: must be True or False'):
    config_lib.validate(ml_collections.ConfigDict(as_saved), 1)
  c.data.train_dir = ''
  with pytest.raises(ValueError, match='data.train_dir'):
    config_lib.validate(c, 1)


@pytest.mark.parametrize('name', ['default', 'smoke', 'baseline_resnet50'])
def test_config_files(name):
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  c = config_lib.load_config_file(path)
  for key in ('num_steps', 'batch_size', 'seed', 'checkpoint_every'):
    assert key in c
  with open(path) as f:
    text = f.read()
  doc = text.split('"""')[1]
  assert doc.startswith(f'python -m jaxalign.train --config configs/{name}.py')  # command first
  if name == 'smoke':
    assert c.batch_size % 8 == 0 and c.log_every == 1


def test_metrics_truncation(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    for s in range(1, 6):
      f.write(json.dumps({'step': s, 'loss': float(s)}) + '\n')
    f.write('{"step": 6, "lo')      # torn line of a killed run
  logger.truncate_metrics(path, 3)
  assert [r['step'] for r in logger.read_metrics(path)] == [1, 2, 3]


def test_checkpoint_round_trip(tmp_path):
  state = {'step': jnp.int32(7), 'params': {'layers': {0: {'w': jnp.arange(6.0).reshape(2, 3)}}},
           'opt_state': optax.sgd(0.1, momentum=0.9).init({'w': jnp.ones(3)}),
           'rng': jax.random.key_data(jax.random.key(3))}
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, state, {'next_step': 7, 'sampler': {'seed': 1}})
  ckpt.close()
  ckpt = checkpointing.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 7
  abstract = checkpointing.abstract_with_shardings(
      state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  restored, data = ckpt.restore(abstract)
  ckpt.close()
  assert data == {'next_step': 7, 'sampler': {'seed': 1}}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_synthetic_cache_key_follows_the_ground_truth_version(monkeypatch):
  """A new jaw convention must not reuse synthetic data rendered with the old one."""
  from jaxalign.morphable import contour  # pylint: disable=g-import-not-at-top
  from jaxalign.training import data_setup  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(os.path.join(ROOT, 'configs', 'default.py'))
  key = data_setup.synthetic_key(c)
  assert data_setup.synthetic_key(c) == key
  monkeypatch.setattr(contour, 'GROUND_TRUTH_VERSION', contour.GROUND_TRUTH_VERSION + 1)
  assert data_setup.synthetic_key(c) != key


def test_contour_weight_weights_the_jaw_in_the_loss():
  """``loss.contour_weight`` u: the loss is sum_l w_l f(e_l) / sum_l w_l with w = u at the
  scheme's contour points and 1 elsewhere; with an error at the contour points only, u scales
  their share exactly so."""
  from flax import nnx
  from jaxalign import losses, schemes
  from jaxalign.models import aligner as aligner_lib
  from jaxalign.training import step as step_lib
  c = config_lib.base_config()
  c.model.kind = 'plain'
  assert step_lib.point_weights(c) is None       # the paper: every point alike
  model = aligner_lib.PlainAligner(depth='tiny', image_size=32, rngs=nnx.Rngs(0))
  model.eval()
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)), jnp.float32)
  pred = model.net(images)
  contour = list(schemes.IBUG68.contour)
  target = pred.at[:, contour, 0].add(4.0)       # 4 px off in x at the contour points only
  per_point = float(losses.wing(4.0) + losses.wing(0.0))
  for u in (1.0, 3.0):
    c.loss.contour_weight = u
    weights = step_lib.point_weights(c)
    assert weights is None if u == 1.0 else (
        weights[contour].tolist() == [u] * len(contour) and weights.sum() == 68 - 16 + 16 * u)
    loss, _ = step_lib.model_loss(model, images, target, c)
    expected = u * len(contour) * per_point / (68 - len(contour) + u * len(contour))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_inter_ocular_normalization_weights_faces_as_the_nme_does():
  """``loss.normalization='inter_ocular'``: face n weighs mean(io) / io_n (clipped to
  FACE_WEIGHT_RANGE), so with the same pixel error on two faces, the one with half the
  inter-ocular distance carries twice the weight; a face with a missing eye corner weighs 1."""
  from flax import nnx
  from jaxalign import losses
  from jaxalign.models import aligner as aligner_lib
  from jaxalign.training import step as step_lib
  c = config_lib.base_config()
  c.model.kind = 'plain'
  assert step_lib.face_weights(jnp.zeros((2, 68, 2)), c) is None     # the paper: faces alike
  c.loss.normalization = 'inter_ocular'
  model = aligner_lib.PlainAligner(depth='tiny', image_size=32, rngs=nnx.Rngs(0))
  model.eval()
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)), jnp.float32)
  pred = model.net(images)
  # The targets: the prediction moved 2 px in x on face 0 and 6 px on face 1, with outer eye
  # corners 20 and 10 px apart; face 2 exact, its eye corner missing.
  target = pred.at[0, :, 0].add(2.0).at[1, :, 0].add(6.0)
  target = target.at[0, 45].set(target[0, 36] + jnp.array([20.0, 0.0]))
  target = target.at[1, 45].set(target[1, 36] + jnp.array([10.0, 0.0]))
  target = target.at[2, 45].set(jnp.nan)
  w = np.asarray(step_lib.face_weights(target, c))
  np.testing.assert_allclose(w, [15 / 20, 15 / 10, 1.0], rtol=1e-6)
  loss, _ = step_lib.model_loss(model, images, target, c)
  f = lambda d: np.asarray(losses.wing(d[..., 0]) + losses.wing(d[..., 1]))
  per = f(np.asarray(pred - target))                                    # (3, 68)
  per = np.where(np.isfinite(per), per, 0.0)
  weights = np.broadcast_to(w[:, None], per.shape).copy()
  weights[2, 45] = 0.0                                                  # NaN target: no weight
  np.testing.assert_allclose(float(loss), (weights * per).sum() / weights.sum(), rtol=1e-4)
  # Extreme distances are clipped.
  far = target.at[1, 45].set(target[1, 36] + jnp.array([0.1, 0.0]))
  assert float(step_lib.face_weights(far, c)[1]) == step_lib.FACE_WEIGHT_RANGE[1]
  c.data.train_dir = '/somewhere'
  config_lib.validate(c, 1)
  c.loss.normalization = 'box'
  with pytest.raises(ValueError, match='loss.normalization'):
    config_lib.validate(c, 1)
