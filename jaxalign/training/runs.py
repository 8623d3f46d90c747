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
  optimiser is built and its state on disk is never read. A run trained with a moving average
  of its weights (``optim.ema_decay`` > 0) gives the average.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint (of ``step``) in ``workdir``.
    ValueError: the checkpoint does not fit the config's model (named).
  """
  config = config_lib.load_run_config(workdir) if config is None else config
  model = state_lib.create_model(config, seed=int(config.seed))
  defs, params, model_state = state_lib.split_model(model)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  weights = {'params': params, 'model_state': model_state}
  ema = state_lib.ema_decay(config) > 0
  abstract = checkpointing.abstract_with_shardings(
      {'step': jax.ShapeDtypeStruct((), np.int32), **({'ema': weights} if ema else weights)},
      device)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    restored, _ = ckpt.restore_model(abstract, step)
  finally:
    ckpt.close()
  weights = restored['ema'] if ema else restored
  model = state_lib.merge(defs.eval, weights['params'], weights['model_state'])
  return model, config, int(restored['step'])


def _trained_variables(model: nnx.Module) -> dict[tuple, nnx.Variable]:
  """Path -> variable for what training changes: parameters and BatchNorm statistics (not the
  :class:`~jaxalign.models.resnet.ModelConstant` mean shapes, canonical frame and weights)."""
  return {path: v for path, v in nnx.iter_graph(model)
          if isinstance(v, (nnx.Param, nnx.BatchStat))}


def _heatmap_strides(model: nnx.Module) -> dict[tuple, int]:
  """Path -> stride of every :class:`~jaxalign.models.resnet.HeatmapHead` in ``model``."""
  return {path: node.stride for path, node in nnx.iter_graph(model)
          if isinstance(node, resnet.HeatmapHead)}


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


def widened(have: np.ndarray, fresh: np.ndarray) -> np.ndarray | None:
  """A narrower network's array ``have`` inside a wider network's freshly initialised
  ``fresh`` so that the wider network computes what the narrower one did, or None when
  ``fresh`` is not a widening of ``have`` (another rank, or an axis that shrinks).

  The narrower network's channels keep their weights (the leading block of every axis); the new
  channels keep their fresh incoming weights and BatchNorm parameters, and their outgoing
  weights (the rows of a kernel's input axis, the second last: (kh, kw, cin, cout) for a
  convolution, (cin, cout) for a dense layer) are zero, so that nothing they compute reaches
  the old channels or the output at first. Each BatchNorm normalises its channels on their own,
  so the old channels' activations, in training and in inference mode, are unchanged; the zero
  rows get gradients at the first step, so the new channels start learning at once.
  """
  have, fresh = np.asarray(have), np.asarray(fresh)
  if have.ndim != fresh.ndim or any(h > f for h, f in zip(have.shape, fresh.shape)):
    return None
  out = np.array(fresh, copy=True)
  out[tuple(slice(0, h) for h in have.shape)] = have
  if have.ndim >= 2 and fresh.shape[-2] > have.shape[-2]:
    out[..., have.shape[-2]:, :] = 0
  return out


def init_from_run(model: nnx.Module, workdir: str) -> tuple[list[str], list[str]]:
  """Starts ``model`` from a trained run: copies every parameter and BatchNorm statistic of the
  run's latest checkpoint whose path and shape match into ``model``, in place.

  This is how a run fine-tunes another (``config.init_from=RUN_DIR``, e.g. real faces from a
  synthetic pretraining run). The model's own constants stay: its mean shape and CNN2's
  canonical frame come from its own training set. The input size may differ (the backbones
  pool globally); the depth and kind may not. A pooled head (``model.head='mean'``) starts a
  grid head (``'flatten'``) as the grid head that gives the same outputs
  (:func:`~jaxalign.models.resnet.pooled_to_grid_kernel`). A narrower run (a smaller
  ``model.width``) starts a wider model as the wider network that computes the same points
  (:func:`widened`: the new channels start with zero outgoing weights). A head the run does
  not have (``'heatmap'`` from a pooled run, or the reverse, or a heatmap head of another
  ``model.heatmap_stride``) starts fresh on its backbone.

  Returns:
    ``(copied, skipped)``: the dotted paths copied (widened ones included), and those skipped
    because the run's shape differs (the landmark heads of a run with another landmark scheme)
    or the run has no such head (another ``model.head``).
  Raises:
    FileNotFoundError: ``workdir`` holds no run (config.json and a checkpoint).
    ValueError: a backbone variable is missing from the run or has another shape that is no
      widening (another depth or model kind, or a wider run), or nothing matched.
  """
  source, _, step = restore_model(workdir)
  return init_from_model(model, source, f'init_from={workdir} (step {step})')


def init_from_model(model: nnx.Module, source: nnx.Module,
                    name: str = 'the source model') -> tuple[list[str], list[str]]:
  """:func:`init_from_run`'s copy from a model in memory (``name`` names it in errors)."""
  have = _trained_variables(source)
  # A heatmap head of another stride reads other stages: it starts fresh, as a missing head.
  theirs = _heatmap_strides(source)
  for where, stride in _heatmap_strides(model).items():
    if theirs.get(where, stride) != stride:
      have = {p: v for p, v in have.items() if p[:len(where)] != where}
  copied, skipped, missing = [], [], []
  for path, var in _trained_variables(model).items():
    dotted = '.'.join(str(p) for p in path)
    other = have.get(path)
    # A mirror offset (model.cnn1_mirror_offset, model.cnn2_mirror_offset) the run did not
    # learn, or learned for another landmark scheme's points, starts fresh (zero).
    offset = str(path[-1]).endswith('mirror_offset')
    if offset and other is not None and other.shape != var.shape:
      skipped.append(dotted)
      continue
    if other is None:
      # Another head (model.head), or a missing mirror offset: fresh on the run's networks.
      (skipped if 'heatmap' in path or 'head' in path or offset else missing).append(dotted)
      continue
    if other.shape != var.shape:
      grid = _pooled_head_grid(path, other.shape, var.shape, _backbone_features(model, path))
      if grid:
        # A pooled head starting a grid head (model.head='flatten'): the same outputs.
        var[...] = jax.numpy.asarray(resnet.pooled_to_grid_kernel(other[...], grid), var.dtype)
        copied.append(dotted)
        continue
      is_head = 'head' in path
      # A head widens only along its input (the backbone's channels): another number of
      # outputs is another landmark scheme.
      wide = None if is_head and other.shape[-1] != var.shape[-1] else widened(other[...],
                                                                                var[...])
      if wide is not None:
        var[...] = jax.numpy.asarray(wide, var.dtype)
        copied.append(dotted)
        continue
      if is_head:
        skipped.append(dotted)
        continue
      raise ValueError(f'{name}: {dotted} has shape {other.shape} there but {var.shape} here: '
                       'the architectures differ (model.depth / width / kind)')
    var[...] = jax.numpy.asarray(other[...], var.dtype)
    copied.append(dotted)
  if missing or not copied:
    raise ValueError(f'{name} lacks {len(missing)} of this model\'s variables '
                     f'({", ".join(missing[:3])}...): another model.kind or depth')
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
