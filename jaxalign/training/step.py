"""The jitted training step: augmentation, forward, loss, gradients, SGD update.

One compiled function per run: ``jax.jit`` with the state replicated and the batch sharded on
the mesh's ``'data'`` axis, the state donated (updated in place). Under that sharding the loss
and BatchNorm statistics are over the global batch, so the step gives the same result on one
device or many (up to the order of float additions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.models import aligner
from jaxalign.models import resnet
from jaxalign.data import pipeline
from jaxalign.training import config as config_lib
from jaxalign.training import mesh as mesh_lib
from jaxalign.training import state as state_lib

DEVICE_KEYS = ('image', 'points', 'box')


def loss_kwargs(config) -> dict:
  return {'w': float(config.loss.w), 'epsilon': float(config.loss.epsilon)} \
      if config.loss.kind == 'wing' else {}


def point_weights(config) -> np.ndarray | None:
  """(L,) loss weights of the points: ``loss.contour_weight`` at the scheme's contour points
  (the jaw), 1 elsewhere; None when all are 1 (the paper)."""
  contour_weight = float(config.loss.get('contour_weight', 1.0))
  if contour_weight == 1.0:
    return None
  scheme = config_lib.model_scheme(config)
  weights = np.ones(scheme.num_points, np.float32)
  weights[list(scheme.contour)] = contour_weight
  return weights


# Bounds of a face's weight under loss.normalization='inter_ocular' (its batch's mean inter-ocular
# distance over its own): a face seen side on has almost no inter-ocular distance, and its
# weight must not swamp the batch.
FACE_WEIGHT_RANGE = (0.5, 3.0)


def face_weights(points, config):
  """(B,) per-face loss weights for ``loss.normalization`` on (B, L, 2) target points, or None.

  'inter_ocular' (beyond the paper): the batch's mean inter-ocular distance over the face's
  own (the scheme's ``inter_ocular`` points; clipped to :data:`FACE_WEIGHT_RANGE`), so that a
  pixel of error weighs in the loss as it weighs in the inter-ocular NME; a face whose
  distance is undefined (a missing eye corner) gets weight 1. '' (the paper): None.
  """
  if not config.loss.get('normalization', ''):
    return None
  a, b = config_lib.model_scheme(config).inter_ocular
  io = jnp.linalg.norm(points[:, a] - points[:, b], axis=-1)
  ok = jnp.isfinite(io) & (io > 0)
  mean = jnp.sum(jnp.where(ok, io, 0.0)) / jnp.maximum(jnp.sum(ok), 1)
  weight = jnp.clip(mean / jnp.where(ok, io, 1.0), *FACE_WEIGHT_RANGE)
  return jax.lax.stop_gradient(jnp.where(ok, weight, 1.0))


def model_loss(model, images, points, config, source=None, source_to_input=None,
               cnn2_jitter=None, mirrored=None):
  """``(loss, metrics)`` of a model in training mode on (B, n, n, 3) images with (B, L, 2)
  target points in input pixels (:func:`jaxalign.models.aligner.compute_losses`); CNN2 samples
  ``source`` (the host crops) through ``source_to_input`` when given, its view moved by
  ``cnn2_jitter`` (B, 2, 3) when given; ``mirrored`` (B,) bool: the faces the augmentation
  mirrored (the networks' mirror offsets apply to them).

  The plain model regresses all points. The pose-aware pair is trained as the paper does:
  CNN1 on all points, CNN2 on the stable points of the image warped with CNN1's prediction
  (``model.transform_from='prediction'``, gradient stopped, so CNN1 is frozen as far as CNN2's
  loss is concerned); the two losses are summed with ``loss.cnn{1,2}_weight``. The points are
  weighted by :func:`point_weights` (``loss.contour_weight``; beyond the paper) and the faces by
  :func:`face_weights` (``loss.normalization``; beyond the paper). A heatmap head's
  auxiliary term is added with ``loss.heatmap_weight`` (``loss.heatmap_sigma`` cells; beyond
  the paper).
  """
  weights, per_face = point_weights(config), face_weights(points, config)
  if per_face is not None:
    weights = per_face[:, None] * (1.0 if weights is None else jnp.asarray(weights)[None])
  loss, aux = aligner.compute_losses(
      model, images, points, weights=weights, kind=config.loss.kind,
      cnn1_weight=float(config.loss.cnn1_weight), cnn2_weight=float(config.loss.cnn2_weight),
      transform_from=config.model.transform_from,
      loss_params=loss_kwargs(config), source=source, source_to_input=source_to_input,
      cnn2_jitter=cnn2_jitter, heatmap_weight=float(config.loss.get('heatmap_weight', 0.0)),
      heatmap_sigma=float(config.loss.get('heatmap_sigma', 1.0)), mirrored=mirrored)
  return loss, {k: v for k, v in aux.items() if k != 'points'}


def make_step_fn(defs: state_lib.ModelDefs, tx, schedule, config):
  """The un-jitted ``(state, batch) -> (state, metrics)``."""

  def step_fn(state, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state['rng']), state['step'])
    views = pipeline.prepare_views(batch, config, key)

    def loss_of(params):
      model = state_lib.merge(defs.train, params, state['model_state'])
      loss, metrics = model_loss(model, views['images'], views['points'], config,
                                 views['source'], views['matrices'], views.get('cnn2_jitter'),
                                 views.get('mirrored'))
      return loss, (metrics, state_lib.model_state_of(model))

    with resnet.options(**resnet.options_from_config(config)):   # read while tracing
      (_, (metrics, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
          state['params'])
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state['step']))
    new_state = dict(state, step=state['step'] + 1, params=params, model_state=model_state,
                     opt_state=opt_state)
    if 'ema' in state:
      new_state['ema'] = state_lib.update_ema(state['ema'], params, model_state,
                                              state_lib.ema_decay(config), state['step'])
    return new_state, metrics

  return step_fn


def compile_step(defs, tx, schedule, config, mesh):
  """``step_fn`` under ``jax.jit``: state replicated and donated, batch sharded on 'data'."""
  rep, sharded = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  return jax.jit(make_step_fn(defs, tx, schedule, config),
                 in_shardings=(rep, {k: sharded for k in DEVICE_KEYS}),
                 out_shardings=(rep, rep), donate_argnums=(0,))


def device_batch(host_batch: dict, mesh) -> dict:
  """The arrays the step needs, as global arrays sharded on 'data'."""
  return mesh_lib.shard_batch({k: host_batch[k] for k in DEVICE_KEYS}, mesh)
