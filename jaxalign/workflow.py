"""``train_and_evaluate(config, workdir)``: train a run, then evaluate its held-out splits.

What ``python -m jaxalign.train`` runs. The training is :func:`jaxalign.training.trainer.train`;
the evaluation is :func:`jaxalign.evaluation.runner.evaluate_splits` on the latest checkpoint,
the same evaluator as ``python -m jaxalign.evaluate`` (so both give the same numbers). This
module sits above both packages, which keeps the imports one-way:
training -> inference -> evaluation -> workflow.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from jaxalign import atomic
from jaxalign import inference
from jaxalign.evaluation import runner
from jaxalign.training import config as config_lib
from jaxalign.training import trainer


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from ``workdir`` when it holds a checkpoint), then evaluates.

  Returns:
    :func:`jaxalign.training.trainer.train`'s dict (without ``data`` and ``config``) plus
    ``report`` (the first held-out split's report, or None) and ``reports`` (``{split:
    report}``, when evaluated).

  Raises:
    ValueError / FileNotFoundError: bad config values or data folders (named in the message).
    jaxalign.training.trainer.NonFiniteLossError: the loss became non-finite.
  """
  result = trainer.train(config, workdir)
  data = result.pop('data')
  resolved = result.pop('config')
  result['report'] = None
  if result.get('interrupted'):
    return result
  if data.get('holdout') and jax.process_index() == 0:
    model, _, _ = inference.load_run(os.path.abspath(workdir))
    table = residual_table(model, resolved, data['holdout'])
    if table is not None:
      atomic.write_json(os.path.join(os.path.abspath(workdir), inference.FUSION_FILE), table)
  if resolved.eval.enabled and data['test_sets'] and jax.process_index() == 0:
    model, _, step = inference.load_run(os.path.abspath(workdir))
    result['reports'] = runner.evaluate_splits(model, resolved, data['test_sets'],
                                               os.path.abspath(workdir), data['mean_shape'], step=step)
    result['report'] = next(iter(result['reports'].values()))
  return result



def residual_table(model, config, records) -> dict | None:
  """CNN1's residual RMS per point and |yaw| bin on held-out training faces (``records``), the
  table the completion's fusion weights come from (:func:`jaxalign.inference.fusion_table`);
  None for the plain model or a scheme without a 3DMM completion."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxalign.morphable import completion, pose  # pylint: disable=g-import-not-at-top
  if config.model.kind != 'pose_aware' or config.model.scheme != 'ibug68' or not records:
    return None
  out = inference.predict_records(model, config, records,
                                  batch_size=int(config.eval.get('batch_size', 32)))
  valid = out['valid']
  gt = np.stack([np.asarray(r.points, np.float32) for r in records])[valid]
  yaw = np.array([np.nan if r.yaw is None else float(r.yaw) for r in records])[valid]
  missing = ~np.isfinite(yaw)
  if missing.any():
    yaw[missing] = np.asarray(pose.estimate_pose(gt[missing])[..., 0], np.float64)
  bins = completion.YAW_BINS
  rough = out['rough'][valid]
  rms = completion.residual_rms(rough, gt, yaw, bins=bins)
  table = {'rms': np.where(np.isfinite(rms), rms, None).tolist(), 'bins': list(bins),
           'num_faces': int(valid.sum()), 'units': 'inter-ocular distance',
           'frame': 'right-looking (left-looking faces mirrored)'}
  blend = blend_table(config, out['stable'][valid], rough, out['flipped'][valid], gt, table)
  if blend is not None:
    table['blend'] = blend
  return table


def blend_table(config, stable, rough, flipped, gt, table) -> dict | None:
  """The completion/CNN1 mix of :func:`jaxalign.morphable.completion.blend_weights` on held-out
  faces: the run's completion (its backend, fused with CNN1 when ``eval.completion_fusion``,
  using ``table``'s residuals) against CNN1's points ``rough``; None when the run has no 3DMM
  completion. The faces' bins and frames come from the rigid fit of CNN1's points, as at test
  time."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxalign.morphable import completion  # pylint: disable=g-import-not-at-top
  backend = inference.resolve_backend(config)
  if backend not in ('jax', 'eos') or not len(gt):
    return None
  fused = bool(config.eval.get('completion_fusion', False)) and backend == 'jax'
  yaw = inference.cnn1_yaw(rough)
  extra = inference.fusion_inputs(rough, table, yaw) if fused else {}
  convention = str(config.eval.get('completion_convention', '2d') or '2d')
  result = inference.complete_points(stable, config_lib.model_scheme(config), backend,
                                     flip=flipped, convention=convention, **extra)
  completed = inference.merge_stable(stable, np.asarray(result.points, np.float32))
  completed = np.where(np.isfinite(completed), completed, rough)
  alpha = completion.blend_weights(completed, rough, gt, yaw, bins=tuple(table['bins']))
  return {'alpha': np.where(np.isfinite(alpha), alpha, None).tolist(), 'backend': backend,
          'fused': fused, 'convention': convention,
          'meaning': 'point = alpha * completion + (1 - alpha) * CNN1, per |yaw| bin and point '
                     '(rigid-fit yaw of CNN1\'s points), right-looking frame'}
