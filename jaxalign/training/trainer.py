"""``train(config, workdir)``: the training run (:mod:`jaxalign.workflow` adds the evaluation).

1. Data: resolve the folders (rendering the synthetic set once if configured), read the
   records (bad files skipped and counted), fit the pose bins and the mean / canonical shapes.
2. Model and state: the aligner, optional ImageNet init, SGD state; replicated on one mesh.
3. Resume: the latest orbax checkpoint in ``WORKDIR/checkpoints`` if there is one.
4. Loop: grain batches (sharded on 'data'), one jitted step, metrics (one step behind the
   device so the host never stalls it), a checkpoint every ``checkpoint_every`` steps and at the
   end. A non-finite loss stops the run (:class:`NonFiniteLossError`) before it is saved.
"""

from __future__ import annotations

import logging
import math
import os
import time

import jax
import ml_collections
import numpy as np

from jaxalign import atomic
from jaxalign.data import pipeline, sampling
from jaxalign.models import aligner
from jaxalign.training import checkpointing, data_setup, distributed
from jaxalign.training import config as config_lib
from jaxalign.training import logger as logger_lib
from jaxalign.training import mesh as mesh_lib
from jaxalign.training import optim
from jaxalign.training import runs
from jaxalign.training import state as state_lib
from jaxalign.training import step as step_lib

log = logging.getLogger('jaxalign.train')
DATA_STATS = runs.DATA_STATS


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped without saving the bad state."""


def _setup_logging():
  root = logging.getLogger()
  if not root.handlers:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  logging.getLogger('jaxalign.train').setLevel(logging.INFO)
  for noisy in ('absl', 'orbax', 'jax._src'):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def prepare_data(config):
  """Records, sampler and shapes of a run (``config.data.*_dir`` resolved in place)."""
  scheme = config_lib.model_scheme(config)
  # data.source (a registered data set) or the data.train_dir folder / synthetic set.
  records, num_invalid = data_setup.training_records(config)
  records, holdout = data_setup.validation_records(config, records)
  # Read the held-out splits now, so that a wrong test path fails before the training.
  test_sets = data_setup.test_sets(config) if config.eval.enabled else {}
  spec = pipeline.CropSpec.from_config(config)
  shapes = pipeline.points_in_input(records, spec)
  sampler = sampling.BalancedSampler.from_shapes(
      shapes, config.batch_size, config_lib.draw_seed(config), int(config.data.pose_bins),
      bool(config.data.balanced), scheme)
  mean_shape = aligner.mean_shape_from_training(shapes)
  canonical = None
  if config.model.kind == 'pose_aware':
    size = int(config.model.cnn2_input_size or config.model.input_size)
    framed = scheme.stable if config.model.transform_points == 'stable' else None
    canonical = aligner.canonical_shape_from_training(
        shapes, size, scheme, flip_threshold=state_lib.flip_threshold(config),
        fill=float(config.model.cnn2_fill), frame_points=framed)
  return {'records': records, 'num_invalid': num_invalid, 'sampler': sampler,
          'mean_shape': mean_shape, 'canonical_shape': canonical, 'test_sets': test_sets,
          'holdout': holdout}


def _fetch(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` when it holds a checkpoint); the evaluation is
  :func:`jaxalign.workflow.train_and_evaluate`'s.

  Returns:
    dict with ``step`` (steps done), ``loss`` (last logged loss), ``skipped_images``,
    ``invalid_files``, ``interrupted`` (stopped by ``stop_after_steps``), ``config`` (the
    resolved config) and ``data`` (:func:`prepare_data`'s dict: test sets, mean shape).

  Raises:
    ValueError / FileNotFoundError: bad config values or data folders (named in the message).
    NonFiniteLossError: the loss became non-finite (the last good checkpoint is kept).
  """
  _setup_logging()
  config = ml_collections.ConfigDict(config.to_dict())   # resolved copy; the caller's stays
  mesh_lib.configure_cpu_devices(config)   # one CPU device per core (config.cpu_devices)
  distributed.initialize(config)   # multi-process runs (config.distributed & co.)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh_lib.make_mesh()
  num_devices = mesh.devices.size
  config_lib.validate(config, num_devices)
  data = prepare_data(config)
  records, sampler = data['records'], data['sampler']
  log.info('%d devices (%s), global batch %d; pose bins %s', num_devices,
           jax.devices()[0].platform, config.batch_size, sampler.bin_sizes)

  model = state_lib.create_model(config, data['mean_shape'], data['canonical_shape'],
                                 config_lib.draw_seed(config))
  source = init_source(config, workdir)
  if source:
    _initialise(model, source)
  defs, params, model_state = state_lib.split_model(model)
  log.info('model %s ResNet-%s, %.2f M parameters, input %d px', config.model.kind,
           config.model.depth, state_lib.count_params(params) / 1e6, config.model.input_size)
  tx = optim.make_optimizer(config)
  schedule = optim.learning_rate_schedule(config)
  state = mesh_lib.replicate(
      state_lib.init_state(params, model_state, tx, config_lib.draw_seed(config),
                           ema=state_lib.ema_decay(config) > 0), mesh)

  # Every process in step before the first collective (orbax's barrier in the Checkpointer).
  distributed.sync('jaxalign_start', int(config.distributed_timeout_s))
  ckpt = checkpointing.Checkpointer(workdir, int(config.keep_checkpoints), all_processes=True)
  start = 0
  abstract = checkpointing.abstract_with_shardings(state, mesh_lib.replicated(mesh))
  # A changed model config is refused naming the key; a damaged newest checkpoint falls back
  # to the newest that restores (both raise CheckpointError, a ValueError, when nothing fits).
  try:
    checkpointing.check_config_compatible(ckpt, workdir, config, abstract)
    restored = ckpt.restore_newest(abstract)
  except BaseException:
    ckpt.close()     # orbax's threads would otherwise die noisily at interpreter exit
    raise
  if restored is not None:
    state, data_state, _ = restored
    start = int(state['step'])
    if data_state.get('sampler') != sampler.state():
      raise ValueError(f'{ckpt.directory}: the checkpoint was written with another training '
                       f'set or batch ({data_state.get("sampler")} vs {sampler.state()}); '
                       'use a new --workdir')
    log.info('resumed from step %d (%s)', start, ckpt.directory)
  if jax.process_index() == 0:
    config_lib.save_run_config(config, workdir)
  _save_data_stats(workdir, data)

  result = {'step': start, 'loss': None, 'skipped_images': 0,
            'invalid_files': data['num_invalid'], 'config': config}
  try:
    if start < config.num_steps:
      result.update(_train_loop(config, workdir, mesh, defs, tx, schedule, state, start, ckpt,
                                sampler, records))
  finally:
    ckpt.close()
  result['data'] = data
  return result


def pretrain_dir(workdir: str) -> str:
  """Where the pretraining stage (``config.pretrain``) of the run in ``workdir`` trains."""
  return os.path.join(os.path.abspath(workdir), 'pretrain')


def finished_steps(workdir: str) -> int:
  """The step of the newest checkpoint in ``workdir`` (0 without one)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return 0
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    return int(ckpt.latest_step() or 0)
  finally:
    ckpt.close()


def init_source(config, workdir: str) -> str:
  """What the run's weights start from: ``config.init_from``, else the pretraining stage's run
  (``WORKDIR/pretrain``, trained first by :func:`jaxalign.workflow.pretrain`), else '' (random)."""
  if config.init_from:
    return str(config.init_from)
  if config.get('pretrain') and config.pretrain.config:
    folder = pretrain_dir(workdir)
    if not runs.is_run_dir(folder):
      raise FileNotFoundError(f'pretrain.config={config.pretrain.config!r}: no pretraining run '
                              f'in {folder}; train with jaxalign.workflow.train_and_evaluate '
                              '(python -m jaxalign.train), which runs the stage first')
    return folder
  return ''


def _initialise(model, source: str) -> None:
  """``config.init_from``: a training run's folder (its weights, e.g. a synthetic pretraining
  run) or a torchvision ResNet weights file (ImageNet backbones)."""
  if runs.is_run_dir(source):
    copied, skipped = runs.init_from_run(model, source)
    log.info('initialised %d variables from the run %s%s', len(copied), source,
             f' (starting fresh: {", ".join(skipped)})' if skipped else '')
    return
  from jaxalign.models import pretrained  # pylint: disable=g-import-not-at-top
  n = pretrained.init_from_pretrained(model, source)
  log.info('initialised %d ResNet backbone(s) from %s', n, source)


def _save_data_stats(workdir, data):
  if jax.process_index() != 0:
    return
  stats = {'num_train': len(data['records']), 'invalid_files': data['num_invalid'],
           'pose_bin_sizes': data['sampler'].bin_sizes,
           'mean_shape': np.asarray(data['mean_shape']).tolist()}
  atomic.write_json(os.path.join(workdir, DATA_STATS), stats)


def _train_loop(config, workdir, mesh, defs, tx, schedule, state, start, ckpt, sampler,
                records) -> dict:
  num_steps = int(config.num_steps)
  stop_after = int(config.stop_after_steps or 0)
  train_step = step_lib.compile_step(defs, tx, schedule, config, mesh)
  logger = logger_lib.MetricsLogger(workdir, num_steps, start, int(config.log_every))
  batches = pipeline.train_iterator(records, sampler, config, start, num_steps)
  skipped_total = 0
  last = {'loss': None}
  pending = None          # (step number, device metrics, skipped) of the step in flight
  t_log, n_log = time.time(), 0

  def finish(item):
    """Host side of a finished step: NaN check and logging."""
    nonlocal t_log, n_log
    step_no, metrics, skipped = item
    values = _fetch(metrics)
    if not math.isfinite(values['loss']):
      good = ckpt.latest_step()
      raise NonFiniteLossError(
          f'the loss became {values["loss"]} at step {step_no}; stopping. The last good '
          f'checkpoint is step {good} in {ckpt.directory} (it is kept; a rerun resumes from '
          'it). Lower optim.learning_rate or check the data.')
    last['loss'] = values['loss']
    n_log += 1
    if step_no % config.log_every == 0 or step_no == num_steps:
      now = time.time()
      values['images_per_s'] = n_log * config.batch_size / max(now - t_log, 1e-9)
      values['skipped_images'] = skipped_total
      t_log, n_log = now, 0
      logger.write(step_no, values)

  def save(step_no):
    ckpt.save(step_no, state, {'next_step': step_no, 'sampler': sampler.state()})

  step_no = start
  try:
    for step_no in range(start + 1, num_steps + 1):
      host = next(batches)
      assert int(host['step']) == step_no - 1, (int(host['step']), step_no)
      skipped_total += int(host['num_skipped'])
      state, metrics = train_step(state, step_lib.device_batch(host, mesh))
      if pending is not None:
        finish(pending)
      pending = (step_no, metrics, int(host['num_skipped']))
      if step_no % config.checkpoint_every == 0 or step_no == num_steps:
        finish(pending)
        pending = None
        save(step_no)
      if stop_after and step_no - start >= stop_after:
        # Tests: behave like a run killed here (no final checkpoint, no evaluation).
        if pending is not None:
          finish(pending)
        logger.close()
        return {'step': step_no, 'loss': last['loss'], 'skipped_images': skipped_total,
                'interrupted': True}
    if pending is not None:
      finish(pending)
  except KeyboardInterrupt:
    logger.message(f'interrupted at step {step_no}; a rerun resumes from the last checkpoint')
    raise
  finally:
    logger.close()
  ckpt.wait()
  if skipped_total:
    log.warning('%d unreadable training images were replaced by others of their pose bin',
                skipped_total)
  return {'step': num_steps, 'loss': last['loss'], 'skipped_images': skipped_total}
