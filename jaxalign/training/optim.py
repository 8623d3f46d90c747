"""The optimiser and learning-rate schedule (optax), from ``config.optim``.

The paper: SGD with momentum 0.9, weight decay 5e-4, learning rate 1e-5 dropping to 1e-7 with
decay step 60,000 (so 1e-5, 1e-6, 1e-7 over the three 60,000-step thirds of 180,000 steps).
Weight decay is the classic L2 term added to the gradient (``optax.add_decayed_weights`` before
the momentum), on every parameter as in Caffe/PyTorch SGD.

``optim.optimizer = 'adamw'`` (beyond the paper) uses Adam with decoupled weight decay
(Loshchilov & Hutter 2019) and the same schedule instead; ``optim.momentum`` is then Adam's b1.
"""

from __future__ import annotations

import optax

from jaxalign.training.config import OPTIMIZERS


def learning_rate_schedule(config) -> optax.Schedule:
  """``step -> learning rate`` for ``config.optim``.

  'piecewise': ``learning_rate * 0.1 ** (step // decay_steps)`` floored at
  ``final_learning_rate``; 'cosine': cosine decay from ``learning_rate`` to
  ``final_learning_rate`` over ``num_steps``; 'constant'. ``warmup_steps`` > 0 prepends a
  linear warm-up from 0.
  """
  o = config.optim
  lr, final = float(o.learning_rate), float(o.final_learning_rate)
  if o.schedule == 'piecewise':
    boundaries = {}
    value, k = lr, 1
    while value * 0.1 >= final * (1 - 1e-6) and k * o.decay_steps < config.num_steps:
      boundaries[k * int(o.decay_steps)] = 0.1
      value *= 0.1
      k += 1
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  elif o.schedule == 'cosine':
    schedule = optax.cosine_decay_schedule(lr, config.num_steps, alpha=final / lr)
  elif o.schedule == 'constant':
    schedule = optax.constant_schedule(lr)
  else:
    raise ValueError(f'config.optim.schedule: unknown schedule {o.schedule!r}')
  if o.warmup_steps > 0:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, int(o.warmup_steps)), schedule], [int(o.warmup_steps)])
  return schedule


def make_optimizer(config) -> optax.GradientTransformation:
  """``optim.optimizer`` with the schedule (+ optional global-norm clipping): 'sgd' (the paper:
  momentum and L2 weight decay added to the gradient) or 'adamw' (Adam, ``momentum`` as its b1,
  weight decay decoupled from the gradient's scale)."""
  o = config.optim
  name = o.get('optimizer', 'sgd')     # runs saved before the key existed trained with SGD
  if name not in OPTIMIZERS:
    raise ValueError(f'config.optim.optimizer: unknown optimizer {name!r}; expected {OPTIMIZERS}')
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(o.grad_clip_norm)))
  if name == 'adamw':
    parts.append(optax.adamw(learning_rate_schedule(config), b1=float(o.momentum),
                             weight_decay=float(o.weight_decay)))
    return optax.chain(*parts)
  if o.weight_decay > 0:
    parts.append(optax.add_decayed_weights(float(o.weight_decay)))
  parts.append(optax.sgd(learning_rate_schedule(config), momentum=float(o.momentum) or None,
                         nesterov=bool(o.nesterov)))
  return optax.chain(*parts)
