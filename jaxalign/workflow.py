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

from jaxalign import inference
from jaxalign.evaluation import runner
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
  if resolved.eval.enabled and data['test_sets'] and jax.process_index() == 0:
    model, _, step = inference.load_run(os.path.abspath(workdir))
    result['reports'] = runner.evaluate_splits(model, resolved, data['test_sets'],
                                               os.path.abspath(workdir), data['mean_shape'], step=step)
    result['report'] = next(iter(result['reports'].values()))
  return result

