"""A finished (or running) training run's model, restored from its folder.

``restore_model(workdir)`` is what :class:`jaxalign.inference.Run` restores: the parameters and
model state only (the optimiser state on disk is never read).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxalign.training import checkpointing
from jaxalign.training import config as config_lib
from jaxalign.training import state as state_lib

# The training set's statistics the trainer writes beside the checkpoints (the mean shape).
DATA_STATS = 'data_stats.json'


def restore_model(workdir: str, step: int | None = None, config=None):
  """``(model, config, step)``: the run's model in inference mode (BatchNorm running averages)
  from its latest (or given) checkpoint, its config (``config``, else ``WORKDIR/config.json``
  merged onto the base config) and the checkpoint's step.

  Only the parameters and the model's other variables are read (a partial restore): no
  optimiser is built and its state on disk is never read.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint (of ``step``) in ``workdir``.
    ValueError: the checkpoint does not fit the config's model (named).
  """
  config = config_lib.load_run_config(workdir) if config is None else config
  model = state_lib.create_model(config, seed=int(config.seed))
  defs, params, model_state = state_lib.split_model(model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = checkpointing.abstract_with_shardings(
      {'step': jax.ShapeDtypeStruct((), np.int32), 'params': params,
       'model_state': model_state}, device)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    restored, _ = ckpt.restore_model(abstract, step)
  finally:
    ckpt.close()
  model = state_lib.merge(defs.eval, restored['params'], restored['model_state'])
  return model, config, int(restored['step'])


def read_mean_shape(workdir) -> np.ndarray | None:
  """The training mean shape (L, 2) in network-input pixels that the trainer saved in
  ``WORKDIR/data_stats.json``, or None (an older run, or not a run)."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(str(workdir), DATA_STATS)
  try:
    with open(path, encoding='utf-8') as f:
      mean = json.load(f).get('mean_shape')
  except (OSError, ValueError, AttributeError):
    return None
  return None if mean is None else np.asarray(mean, np.float32)


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
