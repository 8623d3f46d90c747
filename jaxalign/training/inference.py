"""Inference from a training run: checkpoint -> model -> landmarks in image pixels.

The reusable core of the end-of-run evaluation, ``python -m jaxalign.evaluate`` and
``python -m jaxalign.predict``::

  model, config, step = load_run('runs/default')
  out = predict_records(model, config, records, batch_size=64)
  out['points']    # (N, L, 2) image pixels: the full pipeline (CNN pair + 3DMM completion of
                   # the unstable points for the pose-aware model; the regression for 'plain')
  out['rough']     # (N, L, 2) CNN1's rough points (== points for 'plain')
  out['stable']    # (N, L, 2) CNN2's stable points, NaN at the unstable ones ('pose_aware')
  out['flipped']   # (N,) bool: the face was mirrored (left-looking) before CNN2
  out['boxes']     # (N, 4) the face boxes used (x0, y0, x1, y1), image pixels
  out['valid']     # (N,) bool: False where the image could not be decoded (points NaN)

Records are cropped exactly as in training (:mod:`jaxalign.data.pipeline`, no augmentation);
predictions come back through the inverse of the crop matrices.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxalign import schemes, transforms
from jaxalign.data import pipeline
from jaxalign.training import checkpointing, optim
from jaxalign.training import config as config_lib
from jaxalign.training import state as state_lib

CONFIG_FILE = 'config.json'


def save_config(config, workdir: str) -> str:
  """Writes the resolved config as ``WORKDIR/config.json`` (what :func:`load_run` reads)."""
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config of a run (``WORKDIR/config.json``)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir} is not a jaxalign training run')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(workdir: str, step: int | None = None):
  """Loads a run's model from its latest (or given) checkpoint.

  Returns:
    (model, config, step): the ``nnx.Module`` in inference mode (BatchNorm running averages),
    the run's resolved ``ConfigDict``, and the checkpoint's step.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
  """
  config = load_config(workdir)
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


def _split_outputs(model, images, config):
  """Runs the model; returns (rough (B, L, 2), stable (B, L, 2) NaN at ULs or None,
  flipped (B,) bool) in network-input pixels."""
  out = model(images)
  if config.model.kind == 'plain':
    return out['points'], None, jnp.zeros(out['points'].shape[0], bool)
  return out['rough'], out['sl_points'], out['flipped']


@functools.partial(jax.jit, static_argnames=('graphdef', 'config_json'))
def _predict_batch(graphdef, params, config_json, batch):
  config = ml_collections.ConfigDict(json.loads(config_json))
  model = nnx.merge(graphdef, params)
  images, _, matrices = pipeline.prepare_batch(batch, config, None)
  rough, stable, flipped = _split_outputs(model, images, config)
  to_image = transforms.invert(transforms.compose(batch['crop_from_image'], matrices))
  rough = transforms.warp_points(rough, to_image)
  stable = None if stable is None else transforms.warp_points(stable, to_image)
  return rough, stable, flipped


def predict_records(model, config, records, batch_size: int = 64, complete: bool | None = None,
                    completion_backend: str | None = None, num_workers: int = 0) -> dict:
  """Landmarks of ``records`` (a list of :class:`jaxalign.data.records.FaceRecord`).

  Args:
    model: from :func:`load_run` (inference mode).
    config: the run's config.
    records: faces with ``image`` and ``box`` (``points`` may be anything of shape (L, 2)).
    batch_size: images per forward pass (the last batch is padded, so one compilation).
    complete: fill the unstable points with the 3DMM completion (pose-aware model); default
      ``config.eval.completion``. Without it, the pose-aware model's unstable points come from
      CNN1's rough prediction.
    completion_backend: 'jax' or 'eos' (default ``config.eval.completion_backend``).
    num_workers: grain worker processes for decoding (0 = in this process).

  Returns:
    dict of numpy arrays, see the module docstring.
  """
  n = len(records)
  scheme = config_lib.model_scheme(config)
  num_points = scheme.num_points
  spec = pipeline.CropSpec.from_config(config)
  model.eval()
  graphdef, params = nnx.split(model)
  config_json = config.to_json(sort_keys=True)
  rough = np.full((n, num_points, 2), np.nan, np.float32)
  stable = np.full((n, num_points, 2), np.nan, np.float32)
  flipped = np.zeros(n, bool)
  valid = np.zeros(n, bool)
  for batch in pipeline.eval_batches(records, spec, batch_size, num_workers):
    dev = {k: jnp.asarray(batch[k]) for k in ('image', 'points', 'box', 'crop_from_image')}
    r, s, f = _predict_batch(graphdef, params, config_json, dev)
    keep = batch['index'] >= 0
    idx = batch['index'][keep]
    rough[idx] = np.asarray(r)[keep]
    if s is not None:
      stable[idx] = np.asarray(s)[keep]
    flipped[idx] = np.asarray(f)[keep]
    valid[idx] = batch['valid'][keep]
  rough[~valid] = np.nan
  stable[~valid] = np.nan
  if config.model.kind == 'plain':
    points = rough.copy()
  else:
    complete = config.eval.completion if complete is None else complete
    points = _fill_unstable(stable, rough, scheme, complete,
                            completion_backend or config.eval.completion_backend, valid, flipped,
                            train_dir=config.data.get('train_dir') or None)
  boxes = np.stack([np.asarray(r.box, np.float32) for r in records]) if n else \
      np.zeros((0, 4), np.float32)
  return {'points': points, 'rough': rough, 'stable': stable, 'flipped': flipped,
          'boxes': boxes, 'valid': valid}


def complete_points(points, scheme, backend: str, flip=None, train_dir: str | None = None,
                    **kwargs):
  """:func:`jaxalign.morphable.completion.complete` for the 3DMM backends ('jax', 'eos');
  for 'gaussian' the 2D statistical completion
  (:func:`jaxalign.morphable.statistical.complete`) fitted on the run's training folder.

  Raises:
    ValueError: 'gaussian' without a training folder.
  """
  if backend == 'gaussian':
    from jaxalign.morphable import statistical  # pylint: disable=g-import-not-at-top
    if not train_dir:
      raise ValueError("the 'gaussian' completion is fitted on the run's training shapes, but "
                       'config.data.train_dir is empty')
    return statistical.complete(points, statistical.model_for_folder(train_dir, scheme),
                                scheme=scheme, flip=flip)
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  return completion.complete(points, scheme=scheme, backend=backend, flip=flip, **kwargs)


def _fill_unstable(stable, rough, scheme, complete: bool, backend: str, valid, flipped,
                   train_dir: str | None = None) -> np.ndarray:
  """CNN2's stable points plus unstable points from the 3DMM completion (or CNN1).

  The completion is told which faces CNN2 saw mirrored, so it reads the same (mirror) SL set.
  """
  out = np.where(np.isnan(stable), rough, stable)
  if not complete or not valid.any():
    return out
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  result = complete_points(stable[valid], scheme, backend, flipped[valid], train_dir)
  completed = np.asarray(result.points, np.float32)
  sel = np.flatnonzero(valid)
  out[sel] = np.where(np.isnan(stable[sel]), completed, stable[sel])
  logging.info('completed %d faces with the %s 3DMM backend', len(sel), backend)
  return out
