"""A finished (or running) training run's model, restored from its folder.

``restore_model(workdir)`` is what :func:`jaxalign.inference.load_run` returns, and what a
sequential schedule uses to start CNN2's training from another run's trained CNN1
(``model.init_cnn1_from``, :func:`copy_cnn1`).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxalign.training import checkpointing, optim
from jaxalign.training import config as config_lib
from jaxalign.training import state as state_lib


def restore_model(workdir: str, step: int | None = None):
  """``(model, config, step)``: the run's model in inference mode (BatchNorm running averages)
  from its latest (or given) checkpoint, its resolved config, and the checkpoint's step.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
  """
  config = config_lib.load_run_config(workdir)
  model = state_lib.create_model(config, seed=int(config.seed))
  defs, params, model_state = state_lib.split_model(model)
  tx = optim.make_optimizer(config)
  abstract = jax.eval_shape(lambda: state_lib.init_state(params, model_state, tx, config.seed))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = checkpointing.abstract_with_shardings(abstract, device)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {ckpt.directory}')
    restored, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  model = state_lib.merge(defs.eval, restored['params'], restored['model_state'])
  return model, config, int(restored['step'])


def copy_cnn1(model, workdir: str) -> int:
  """Copies CNN1 (parameters and BatchNorm statistics) of the run in ``workdir`` into the
  pose-aware ``model`` in place; returns the source checkpoint's step.

  Raises:
    FileNotFoundError: no such run or checkpoint.
    ValueError: the source has no CNN1 of the same architecture (named in the message).
  """
  source, _, step = restore_model(workdir)
  if not hasattr(model, 'cnn1'):
    raise ValueError('config.model.init_cnn1_from: only the pose-aware model has a CNN1')
  net = getattr(source, 'cnn1', None) or getattr(source, 'net', None)
  if net is None:
    raise ValueError(f'config.model.init_cnn1_from: {workdir} holds no CNN1')
  src = nnx.to_pure_dict(nnx.state(net))
  dst = nnx.to_pure_dict(nnx.state(model.cnn1))
  src_shapes = jax.tree.map(np.shape, src)
  dst_shapes = jax.tree.map(np.shape, dst)
  if src_shapes != dst_shapes:
    raise ValueError(f'config.model.init_cnn1_from: the CNN1 of {workdir} does not match this '
                     'model (check model.depth, model.width, model.input_size, model.scheme)')
  state = nnx.state(model.cnn1)
  nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, src))
  nnx.update(model.cnn1, state)
  return step
