"""A finished (or running) training run's model, restored from its folder.

``restore_model(workdir)`` is what :class:`jaxalign.inference.Run` restores: the parameters and
model state only (the optimiser state on disk is never read).
"""

from __future__ import annotations

import jax
import numpy as np

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
