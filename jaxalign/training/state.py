"""Model construction and the training state pytree.

The training state is a plain dict of arrays (what orbax saves and the jitted step donates):

* ``step``: int32 scalar, steps done;
* ``params``: the model's ``nnx.Param`` variables as a pure dict (what the optimiser updates);
* ``model_state``: every other model variable (BatchNorm statistics, the fixed mean shape);
* ``opt_state``: the optax state;
* ``rng``: (2,) uint32 root key data; step ``t`` uses ``fold_in(rng, t)``.

The module structure (``nnx.GraphDef``) stays outside: one for training mode (batch
statistics) and one for inference mode (running averages).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models import aligner
from jaxalign.models import resnet
from jaxalign.morphable import pose as pose_lib
from jaxalign.training import config as config_lib

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def model_depth(config, key: str = 'depth'):
  """``config.model.<key>`` as the model code takes it: a :class:`ResNetSpec` of that depth
  with ``config.model.width`` stem channels (64 = the standard network; 'tiny' variants keep
  their own width); None when empty. For ``'cnn2_depth'``, ``model.cnn2_width`` (when not 0)
  is CNN2's width, and an empty ``cnn2_depth`` is CNN1's depth at that width."""
  m = config.model
  cnn2_width = int(m.get('cnn2_width', 0) or 0) if key == 'cnn2_depth' else 0
  depth = m[key] or (m.depth if cnn2_width else '')
  if depth in ('', None, 0):
    return None
  depth = int(depth) if isinstance(depth, str) and depth.isdigit() else depth
  width = cnn2_width or int(m.width or 64)
  if isinstance(depth, int) and width != 64:
    return dataclasses.replace(resnet.resnet_spec(depth), width=width)
  return depth


def flip_threshold(config) -> float:
  """The pose-aware model's flip threshold: 0 (mirror every left-looking face), or infinity
  with ``config.model.flip=False`` (never mirror: the no-flip ablation)."""
  return 0.0 if config.model.flip else float('inf')


def transform_weights(config):
  """The spatial transform's per-point weights: the stable points only
  (``model.transform_points='stable'``: the points CNN2 predicts, and where CNN1 is most
  accurate), or every point (``'all'``)."""
  which = config.model.transform_points
  if which == 'all':
    return None
  if which != 'stable':
    raise ValueError(f"config.model.transform_points: expected 'stable' or 'all', got {which!r}")
  return config_lib.model_scheme(config).stable_mask().astype(np.float32)


def create_model(config, mean_shape=None, canonical_shape=None, seed: int = 0) -> nnx.Module:
  """The aligner ``config.model`` describes (:func:`jaxalign.models.aligner.make_aligner`).

  Args:
    config: training config (``model.kind``, ``depth``, ``input_size``, ``dtype``, ``scheme``,
      ``cnn2_depth``, ``cnn2_input_size``).
    mean_shape: (L, 2) training mean shape in network-input pixels (the regression heads'
      starting point), or None for the model's default.
    canonical_shape: (L, 2) CNN2's canonical frame in its input pixels, or None.
    seed: parameter initialisation seed.
  """
  m = config.model
  kwargs = dict(depth=model_depth(config), image_size=int(m.input_size),
                scheme=config_lib.model_scheme(config), mean_shape=mean_shape,
                dtype=_DTYPES[m.dtype], head=m.get('head', 'mean'),
                heatmap_stride=int(m.get('heatmap_stride', 8)),
                cnn1_mirror_offset=bool(m.get('cnn1_mirror_offset', False)),
                rngs=nnx.Rngs(params=seed))
  if m.kind == 'pose_aware':
    kwargs.update(cnn2_depth=model_depth(config, 'cnn2_depth'),
                  cnn2_image_size=m.cnn2_input_size or None,
                  canonical_shape=canonical_shape, flip_threshold=flip_threshold(config),
                  transform_weights=transform_weights(config),
                  mirror_offset=bool(m.get('cnn2_mirror_offset', False)),
                  pose_reference=pose_lib.reference_points(
                      scheme=config_lib.model_scheme(config)))
  return aligner.make_aligner(m.kind, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelDefs:
  """The static halves of a split model: training-mode and inference-mode graph defs."""

  train: nnx.GraphDef
  eval: nnx.GraphDef


def split_model(model: nnx.Module):
  """``(ModelDefs, params, model_state)`` with pure-dict states."""
  model.eval()
  eval_def, _, _ = nnx.split(model, nnx.Param, ...)
  model.train()
  train_def, params, rest = nnx.split(model, nnx.Param, ...)
  return ModelDefs(train_def, eval_def), nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge(graphdef: nnx.GraphDef, params, model_state) -> nnx.Module:
  return nnx.merge(graphdef, params, model_state)


def model_state_of(model: nnx.Module):
  """The non-parameter variables of ``model`` as a pure dict (after a forward pass)."""
  _, _, rest = nnx.split(model, nnx.Param, ...)
  return nnx.to_pure_dict(rest)


def init_state(params, model_state, tx, seed: int, ema: bool = False) -> dict:
  """The step-0 training state (host arrays); with ``ema``, an ``'ema'`` entry holding a
  moving average of ``params`` and ``model_state`` (``optim.ema_decay``), starting at them."""
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': params,
      'model_state': model_state,
      'opt_state': tx.init(params),
      'rng': jax.random.key_data(jax.random.key(int(seed))),
  }
  if ema:
    state['ema'] = jax.tree.map(jnp.array, {'params': params, 'model_state': model_state})
  return state


def ema_decay(config) -> float:
  """``optim.ema_decay`` (0 when the run predates the key: no moving average)."""
  return float(config.optim.get('ema_decay', 0.0))


def update_ema(ema: dict, params, model_state, decay: float, step) -> dict:
  """``ema`` moved towards the new weights: ``d * ema + (1 - d) * new`` with
  ``d = min(decay, (1 + step) / (10 + step))`` (the warm-up keeps the first steps from
  weighing the start for long). Integer leaves are taken as they are."""
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))

  def mix(old, new):
    if not jnp.issubdtype(new.dtype, jnp.floating):
      return new
    return (d * old.astype(jnp.float32) + (1.0 - d) * new.astype(jnp.float32)).astype(new.dtype)

  return jax.tree.map(mix, ema, {'params': params, 'model_state': model_state})


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
