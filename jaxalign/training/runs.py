"""A finished (or running) training run's model, restored from its folder.

``restore_model(workdir)`` is what :class:`jaxalign.inference.Run` restores: the parameters and
model state only (the optimiser state on disk is never read). ``init_from_run`` starts a new
model from a run's weights (``config.init_from=RUN_DIR``: fine-tuning, synthetic pretraining).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from jaxalign.models import resnet
from jaxalign.training import checkpointing
from jaxalign.training import config as config_lib
from jaxalign.training import state as state_lib

# The training set's statistics the trainer writes beside the checkpoints (the mean shape).
DATA_STATS = 'data_stats.json'
# Where an ensemble's members 1 .. K-1 train, inside the run's folder (member_dirs).
MEMBERS_DIR = 'members'


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


def _trained_variables(model: nnx.Module) -> dict[tuple, nnx.Variable]:
  """Path -> variable for what training changes: parameters and BatchNorm statistics (not the
  :class:`~jaxalign.models.resnet.ModelConstant` mean shapes, canonical frame and weights)."""
  return {path: v for path, v in nnx.iter_graph(model)
          if isinstance(v, (nnx.Param, nnx.BatchStat))}


def _pooled_head_grid(path, have: tuple, want: tuple, num_features: int) -> int:
  """G when ``have`` is a pooled head's kernel (C, K), C = ``num_features`` (the backbone's
  channels; a grid head's kernel has G' * G' * C rows and is no pooled head), and ``want`` the
  'flatten' head's (G * G * C, K) of the same points, else 0."""
  if path[-2:] != ('head', 'kernel') or len(have) != 2 or len(want) != 2 or have[1] != want[1]:
    return 0
  if have[0] != num_features:
    return 0
  cells, rest = divmod(want[0], have[0])
  grid = round(cells ** 0.5)
  return grid if rest == 0 and grid > 1 and grid * grid == cells else 0


def _backbone_features(model: nnx.Module, path: tuple) -> int:
  """The channels of the backbone beside the head at ``path`` (0 when it has none)."""
  module = model
  for key in path[:-2]:
    module = module[key] if isinstance(module, (list, tuple, dict)) else getattr(module, str(key))
  backbone = getattr(module, 'backbone', None)
  return int(backbone.num_features) if backbone is not None else 0


def init_from_run(model: nnx.Module, workdir: str) -> tuple[list[str], list[str]]:
  """Starts ``model`` from a trained run: copies every parameter and BatchNorm statistic of the
  run's latest checkpoint whose path and shape match into ``model``, in place.

  This is how a run fine-tunes another (``config.init_from=RUN_DIR``, e.g. real faces from a
  synthetic pretraining run). The model's own constants stay: its mean shape and CNN2's
  canonical frame come from its own training set. The input size may differ (the backbones
  pool globally); the architecture may not. A pooled head (``model.head='mean'``) starts a
  grid head (``'flatten'``) as the grid head that gives the same outputs
  (:func:`~jaxalign.models.resnet.pooled_to_grid_kernel`).

  Returns:
    ``(copied, skipped)``: the dotted paths copied, and those skipped because the run's shape
    differs (the landmark heads of a run with another landmark scheme).
  Raises:
    FileNotFoundError: ``workdir`` holds no run (config.json and a checkpoint).
    ValueError: a backbone variable is missing from the run or has another shape (another
      depth, width or model kind), or nothing matched.
  """
  source, _, step = restore_model(workdir)
  have = _trained_variables(source)
  copied, skipped, missing = [], [], []
  for path, var in _trained_variables(model).items():
    name = '.'.join(str(p) for p in path)
    other = have.get(path)
    if other is None:
      missing.append(name)
      continue
    if other.shape != var.shape:
      grid = _pooled_head_grid(path, other.shape, var.shape, _backbone_features(model, path))
      if grid:
        # A pooled head starting a grid head (model.head='flatten'): the same outputs.
        var[...] = jax.numpy.asarray(resnet.pooled_to_grid_kernel(other[...], grid), var.dtype)
        copied.append(name)
        continue
      if 'head' in path:
        skipped.append(name)
        continue
      raise ValueError(f'init_from={workdir}: {name} has shape {other.shape} in the run '
                       f'(step {step}) but {var.shape} here: the architectures differ '
                       '(model.depth / width / kind)')
    var[...] = jax.numpy.asarray(other[...], var.dtype)
    copied.append(name)
  if missing or not copied:
    raise ValueError(f'init_from={workdir}: the run (step {step}) lacks {len(missing)} of this '
                     f'model\'s variables ({", ".join(missing[:3])}...): another model.kind '
                     'or depth')
  return copied, skipped


def is_run_dir(path: str) -> bool:
  """Whether ``path`` is a training run's folder (it holds ``config.json``)."""
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, config_lib.RUN_CONFIG_FILE))


def read_mean_shape(workdir) -> np.ndarray | None:
  """The training mean shape (L, 2) in network-input pixels that the trainer saved in
  ``WORKDIR/data_stats.json``, or None (an older run, or not a run)."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(str(workdir), DATA_STATS)
  try:
    with open(path, encoding='utf-8') as f:
      mean = json.load(f).get('mean_shape')
  except (OSError, ValueError, AttributeError):
    return None
  return None if mean is None else np.asarray(mean, np.float32)


def member_dirs(workdir: str, members: int) -> list[str]:
  """The folders of an ensemble's members (``config.ensemble.members``): member 0 is the run in
  ``workdir`` itself, member k >= 1 trains into ``WORKDIR/members/k``."""
  workdir = os.path.abspath(str(workdir))
  return [workdir] + [os.path.join(workdir, MEMBERS_DIR, str(k)) for k in range(1, int(members))]
