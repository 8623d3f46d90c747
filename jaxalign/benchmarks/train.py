"""``python -m jaxalign.bench train --config configs/default.py [--steps N] [--config.key=v]``.

Prints images/s of (1) the bare training step with one batch already on the device (both
networks, augmentation included: everything the jitted step does) and (2) the whole pipeline
(grain decode + crop on the host, transfer, step), so a user sees whether input is the
bottleneck. ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax


def run(config, steps: int, warmup: int) -> dict:
  """Measures the bare step and the full pipeline; returns a dict of figures."""
  # pylint: disable=g-import-not-at-top
  from jaxalign.data import pipeline
  from jaxalign.training import config as config_lib, mesh as mesh_lib, optim
  from jaxalign.training import state as state_lib, step as step_lib, trainer
  mesh_lib.configure_cpu_devices(config)     # the devices a training run would have
  mesh = mesh_lib.make_mesh()
  config_lib.validate(config, mesh.devices.size)
  data = trainer.prepare_data(config)
  model = state_lib.create_model(config, data['mean_shape'], data['canonical_shape'], 0)
  defs, params, model_state = state_lib.split_model(model)
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  state = mesh_lib.replicate(state_lib.init_state(params, model_state, tx, 0), mesh)
  train_step = step_lib.compile_step(defs, tx, schedule, config, mesh)
  total = warmup + steps
  it = pipeline.train_iterator(data['records'], data['sampler'], config, 0, 2 * total + 1)
  batch = step_lib.device_batch(next(it), mesh)
  for _ in range(warmup):                      # compile + warm up
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  bare = steps * config.batch_size / (time.perf_counter() - t0)
  for _ in range(warmup):
    state, metrics = train_step(state, step_lib.device_batch(next(it), mesh))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, step_lib.device_batch(next(it), mesh))
  jax.block_until_ready(metrics)
  full = steps * config.batch_size / (time.perf_counter() - t0)
  return {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'model': config.model.kind, 'depth': str(config.model.depth),
          'width': int(config.model.width), 'input_size': int(config.model.input_size),
          'dtype': config.model.dtype, 'batch_size': int(config.batch_size), 'steps': steps,
          'bare_step_images_per_s': bare, 'pipeline_images_per_s': full,
          'pipeline_vs_bare': full / bare}


def main(argv) -> int:
  overrides = [a for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench train', description=__doc__)
  p.add_argument('--config', required=True, help='a configs/*.py file')
  p.add_argument('--steps', type=int, default=20, help='timed steps (default 20)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps first (default 2)')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  args = p.parse_args(rest)
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config = config_lib.load_config_file(args.config)
    config_lib.apply_overrides(config, overrides)
    result = run(config, args.steps, args.warmup)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  else:
    print(f"{result['device']}: {result['model']} ResNet-{result['depth']} "
          f"(width {result['width']}) {result['input_size']} px {result['dtype']}, "
          f"batch {result['batch_size']}")
    print(f"  bare step (data on device): {result['bare_step_images_per_s']:.1f} images/s")
    print(f"  whole pipeline:             {result['pipeline_images_per_s']:.1f} images/s "
          f"({100 * result['pipeline_vs_bare']:.0f} % of the bare step)")
  return 0
