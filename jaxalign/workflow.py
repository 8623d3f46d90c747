"""``train_and_evaluate(config, workdir)``: train a run, then evaluate its held-out splits.

What ``python -m jaxalign.train`` runs. The training is :func:`jaxalign.training.trainer.train`;
then the run is opened once (:class:`jaxalign.inference.Run`), the completion's tables are
calibrated on the validation faces (:func:`jaxalign.calibration.calibrate`, written to
``WORKDIR/cnn1_residuals.json``) and the held-out splits are evaluated by
:func:`jaxalign.evaluation.runner.evaluate_splits`, the same evaluator as ``python -m
jaxalign.evaluate`` (so both give the same numbers). This module sits above all of them, which
keeps the imports one-way: training -> inference -> calibration / evaluation -> workflow.
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections

from jaxalign import atomic
from jaxalign import calibration
from jaxalign import inference
from jaxalign.evaluation import runner
from jaxalign.training import config as config_lib
from jaxalign.training import runs
from jaxalign.training import trainer

log = logging.getLogger('jaxalign.train')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` when it holds a checkpoint), then calibrates the
  completion's tables on the validation faces and evaluates the held-out splits.

  The trained run is opened once (:class:`jaxalign.inference.Run`: its saved config, the
  parameters and model state of its latest checkpoint) for both.

  Returns:
    :func:`jaxalign.training.trainer.train`'s dict (without ``data`` and ``config``) plus
    ``report`` (the first held-out split's report, or None) and ``reports`` (``{split:
    report}``, when evaluated).

  Raises:
    ValueError / FileNotFoundError: bad config values or data folders (named in the message).
    jaxalign.training.trainer.NonFiniteLossError: the loss became non-finite.
  """
  pretrain(config, workdir)
  if train_members(config, workdir) is None:
    return {'interrupted': True, 'report': None}
  result = trainer.train(config, workdir)
  data = result.pop('data')
  resolved = result.pop('config')
  result['report'] = None
  if result.get('interrupted') or jax.process_index() != 0:
    return result
  calibrate = bool(data.get('holdout'))
  evaluate = bool(resolved.eval.enabled and data['test_sets'])
  workdir = os.path.abspath(workdir)
  run = inference.Run.load(workdir)
  recalibrate(run, data['records'], data['holdout'] if calibrate else None)
  if evaluate:
    result['reports'] = runner.evaluate_splits(run, data['test_sets'], data['mean_shape'])
    result['report'] = next(iter(result['reports'].values()))
  return result


def stretch_schedule(config: ml_collections.ConfigDict, num_steps: int) -> None:
  """Sets ``config.num_steps`` and stretches a piecewise schedule's ``optim.decay_steps`` by
  the same factor, in place, so that the decays fall at the same fractions of the run (a cosine
  schedule already spans ``num_steps``). Without it, a pretraining stage lengthened from 1,500
  to 3,000 steps would spend its last 2,000 at the floor rate."""
  old = int(config.num_steps)
  config.num_steps = int(num_steps)
  if config.optim.schedule == 'piecewise' and old > 0:
    config.optim.decay_steps = max(1, round(int(config.optim.decay_steps) * num_steps / old))


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """The pretraining stage (``config.pretrain``): trains ``pretrain.config``, with this run's
  architecture (``model.kind``, ``depth``, ``cnn2_depth``, ``width``), into
  ``WORKDIR/pretrain`` with its own data, evaluation and report, unless a checkpoint of its
  last step is already there (a rerun resumes it, or skips it once finished). The trainer then
  starts the run from its weights (:func:`jaxalign.training.trainer.init_source`).

  Returns:
    The pretraining run's folder, or None when the config has no pretraining stage.
  """
  if not (config.get('pretrain') and config.pretrain.config):
    return None
  config_lib.validate_pretrain(config)
  stage = config_lib.load_config_file(config_lib.pretrain_config_path(config))
  if int(config.pretrain.num_steps):
    stretch_schedule(stage, int(config.pretrain.num_steps))
  # The stage pretrains this run's architecture (a plain twin pretrains a plain network), on
  # the devices (and processes) of the main run.
  for key in ('kind', 'depth', 'cnn2_depth', 'width', 'cnn2_width', 'head', 'heatmap_stride'):
    stage.model[key] = config.model[key]
  for key in ('cpu_devices', 'distributed', 'coordinator_address', 'num_processes',
              'process_id', 'distributed_timeout_s'):
    stage[key] = config[key]
  folder = trainer.pretrain_dir(workdir)
  if trainer.finished_steps(folder) >= int(stage.num_steps):
    log.info('pretraining stage already finished in %s', folder)
    return folder
  log.info('pretraining stage: %s, %d steps, into %s', config.pretrain.config,
           stage.num_steps, folder)
  train_and_evaluate(stage, folder)
  return folder


def train_members(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
  """An ensemble's members 1 .. K-1 (``config.ensemble.members`` = K > 1), trained one after
  the other before the run itself (member 0), each unless a checkpoint of its last step is
  already there (a rerun resumes or skips it).

  Member k is this config with ``ensemble.member = k`` (its training draws are seed + k's,
  :func:`jaxalign.training.config.draw_seed`; its data and held-out split are the seed's) and
  ``ensemble.members = 1``, started from what the run starts from (``init_from``, or the
  pretraining stage: one stage for every member), trained and evaluated into
  ``WORKDIR/members/k`` (:func:`jaxalign.training.runs.member_dirs`) with its own report.
  The run's own end of training then calibrates and evaluates the ensemble
  (:class:`jaxalign.inference.ModelEnsemble`).

  Returns:
    The members' folders (empty for a single network), or None when a member's training was
    interrupted (``stop_after_steps``; a rerun resumes it).
  """
  count = int(config.ensemble.members)
  if count <= 1:
    return []
  start = trainer.init_source(config, workdir)
  folders = runs.member_dirs(workdir, count)[1:]
  for k, folder in enumerate(folders, 1):
    member = config.copy_and_resolve_references()
    member.ensemble.members, member.ensemble.member = 1, k
    member.pretrain.config, member.init_from = '', start
    if trainer.finished_steps(folder) >= int(member.num_steps):
      log.info('ensemble member %d of %d already trained in %s', k, count, folder)
      continue
    log.info('ensemble member %d of %d: %d steps into %s', k, count, member.num_steps, folder)
    if train_and_evaluate(member, folder).get('interrupted'):
      return None
  return folders


def recalibrate(run, train_records, holdout) -> dict:
  """Fits the run's learned completion on its training faces (``WORKDIR/learned_completion
  .json``) and, with held-out faces, calibrates its completion tables on them
  (``WORKDIR/cnn1_residuals.json``, mix tables for every completion that can run). What the end
  of training does, and ``python -m jaxalign.calibrate`` for an existing run.

  Returns:
    ``{'learned': tables or None, 'residuals': table or None}`` as written.
  """
  cnn, noise = None, config_lib.learned_sl_noise(run.config)
  if noise is None:              # 'auto': CNN2's SL noise on the held-out faces
    noise = 0.0
    if holdout and calibration.learned_applies(run.config):
      cnn = calibration.cnn_pass(run.model, run.config, holdout)
      noise = calibration.sl_noise(run.config, cnn, holdout)
      log.info('learned completion: CNN2 SL noise %.4f inter-ocular (%d held-out faces)',
               noise, int(cnn['valid'].sum()))
    elif calibration.learned_applies(run.config):
      log.warning("eval.learned_sl_noise='auto' without validation faces: fitted on clean SLs")
  learned = calibration.fit_learned(run.config, train_records, sl_noise=noise)
  if learned is not None:
    atomic.write_json(os.path.join(run.workdir, inference.LEARNED_FILE), learned)
  table = None
  if holdout:
    table = calibration.calibrate(run.model, run.config, holdout, learned=learned, cnn=cnn)
    if table is not None:
      atomic.write_json(os.path.join(run.workdir, inference.FUSION_FILE), table)
  return {'learned': learned, 'residuals': table}
