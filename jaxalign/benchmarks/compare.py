"""``python -m jaxalign.bench compare [--model plain|pose_aware] [--depth 50] [--input-size 224]
[--batch-size 16] [--steps 3] [--rounds 3] [--dtype float32] [--json]``.

Times one training step of the same architecture in JAX (this project's model and jitted step,
built through its config / state / step API) and in PyTorch (the twin of
:mod:`jaxalign.benchmarks.torch_twin`: torchvision's ResNet layout, the same head, wing loss,
SGD with momentum and weight decay, batch, resolution and precision), on the same machine in
one run.

* Both sides use the same cores: PyTorch's intra-op pool is set to the cores this process may
  run on, which is what XLA's CPU client uses. JAX runs as a training run with this config
  would: on a CPU the cores become ``config.cpu_devices`` devices (default one per core, the
  batch sharded over them; ``--config.cpu_devices=1`` for one device and XLA's threads).
  ``jax_devices`` in the JSON says which.
* PyTorch runs in its faster memory format: after warm-up one short round in NCHW and one in
  channels_last decide, and the rest uses the winner.
* JAX's on-device augmentation is off (the twin has none); the step still warps each uint8
  crop to the input (an identity warp here), as training does.
* Timing alternates JAX and PyTorch rounds of ``--steps`` steps each, so that load from other
  processes hits both; images/s is the total images over the total time of each side's rounds.

PyTorch comes from the optional extra ``compare`` (``pip install -e '.[compare]'``). Exit
codes: 0 ok, 2 bad flags or PyTorch missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def jax_threads() -> int:
  """The cores this process may run on (XLA's CPU client sizes its thread pool to them)."""
  from jaxalign.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  return mesh_lib.host_cores()


def make_config(model: str, depth: str, input_size: int, batch_size: int, dtype: str,
                overrides=()):
  """The training config of the compared step (the paper's optimiser and loss, no
  augmentation), with ``--config.key=value`` overrides applied."""
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.kind = model
  c.model.depth = str(depth)
  c.model.width = 64
  c.model.input_size = int(input_size)
  c.model.dtype = dtype
  c.batch_size = int(batch_size)
  c.augment.enabled = False
  c.data.synthetic.enabled = True       # validate() wants a data source; none is read here
  config_lib.apply_overrides(c, list(overrides))
  return c


def synthetic_batch(config, seed: int = 0) -> dict:
  """A host batch at the network input size: uint8 images, points near the model's mean
  shape (input pixels), boxes covering the whole image (an identity crop)."""
  from jaxalign.models import aligner  # pylint: disable=g-import-not-at-top
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  b, s = int(config.batch_size), int(config.model.input_size)
  mean = aligner.default_shape(config_lib.model_scheme(config), s)
  return {'image': rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          'points': (mean[None] + rng.normal(0, 0.03 * s, (b,) + mean.shape)).astype(np.float32),
          'box': np.tile(np.array([0, 0, s, s], np.float32), (b, 1))}


class JaxSide:
  """This project's jitted training step on one fixed device batch."""

  def __init__(self, config, batch):
    # pylint: disable=g-import-not-at-top
    import jax
    from jaxalign.training import config as config_lib, mesh as mesh_lib, optim
    from jaxalign.training import state as state_lib, step as step_lib
    self.jax = jax
    # The devices a training run with this config has (on a CPU: config.cpu_devices, by default
    # one per core; the cores PyTorch's threads get too).
    mesh_lib.configure_cpu_devices(config)
    mesh = mesh_lib.make_mesh()
    self.num_devices = int(mesh.devices.size)
    config_lib.validate(config, mesh.devices.size)
    self.model = state_lib.create_model(config)
    defs, params, model_state = state_lib.split_model(self.model)
    self.num_params = state_lib.count_params(params)
    tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
    self.state = mesh_lib.replicate(state_lib.init_state(
        params, model_state, tx, 0, ema=state_lib.ema_decay(config) > 0), mesh)
    self.step = step_lib.compile_step(defs, tx, schedule, config, mesh)
    self.batch = step_lib.device_batch(batch, mesh)

  def run(self, n: int) -> float:
    """Seconds for n steps (waits for the last)."""
    t0 = time.perf_counter()
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    self.jax.block_until_ready(metrics)
    return time.perf_counter() - t0


class TorchSide:
  """The PyTorch twin's training step on one fixed batch, in a chosen memory format."""

  def __init__(self, jax_model, config, batch, threads: int):
    # pylint: disable=g-import-not-at-top
    import torch
    from jaxalign.benchmarks import torch_twin
    self.torch = torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    self.twin = torch_twin.twin_of(jax_model)
    self.num_params = torch_twin.count_params(self.twin)
    o = config.optim
    self.step = torch_twin.make_train_step(
        self.twin, learning_rate=float(o.learning_rate), momentum=float(o.momentum),
        weight_decay=float(o.weight_decay), dtype=config.model.dtype)
    self.images_nchw = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).float().contiguous()
    self.points = torch.from_numpy(batch['points'])
    self.set_format('nchw')

  def set_format(self, fmt: str) -> None:
    torch = self.torch
    mf = torch.channels_last if fmt == 'channels_last' else torch.contiguous_format
    self.twin.to(memory_format=mf)
    self.images = self.images_nchw.contiguous(memory_format=mf)
    self.format = fmt

  def run(self, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
      self.step(self.images, self.points)
    return time.perf_counter() - t0


def run(config, steps: int, rounds: int, warmup: int = 1, threads: int | None = None,
        log=None) -> dict:
  """Builds both sides, picks PyTorch's memory format, alternates timed rounds.

  Returns a dict with ``jax_images_per_s``, ``torch_images_per_s``, ``ratio`` (JAX / PyTorch),
  the per-round figures, PyTorch's format and both parameter counts.
  """
  log = log or (lambda *_: None)
  threads = threads or jax_threads()
  load_before = os.getloadavg()[0]
  batch = synthetic_batch(config)
  b = int(config.batch_size)
  t0 = time.perf_counter()
  jx = JaxSide(config, batch)
  # The twin copies the model's fixed shapes before the first (donating) step frees them.
  tr = TorchSide(jx.model, config, batch, threads)
  jx.run(warmup + 1)                       # compile + warm up
  log(f'jax: compiled and warmed up in {time.perf_counter() - t0:.0f} s')
  formats = {}
  for fmt in ('nchw', 'channels_last'):
    tr.set_format(fmt)
    tr.run(warmup)
    formats[fmt] = b * steps / tr.run(steps)
    log(f'torch {fmt}: {formats[fmt]:.2f} images/s')
  tr.set_format(max(formats, key=formats.get))
  jax_t, torch_t, per_round = 0.0, 0.0, []
  for r in range(rounds):
    # Alternate which side goes first, so neither always follows the other's cache state.
    order = (jx, tr) if r % 2 == 0 else (tr, jx)
    times = {id(side): side.run(steps) for side in order}
    jax_t += times[id(jx)]
    torch_t += times[id(tr)]
    per_round.append({'jax_images_per_s': b * steps / times[id(jx)],
                      'torch_images_per_s': b * steps / times[id(tr)]})
    log(f'round {r + 1}: jax {per_round[-1]["jax_images_per_s"]:.2f}, torch '
        f'{per_round[-1]["torch_images_per_s"]:.2f} images/s')
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  jax_ips = b * steps * rounds / jax_t
  torch_ips = b * steps * rounds / torch_t
  return {
      'model': config.model.kind, 'depth': str(config.model.depth),
      'input_size': int(config.model.input_size), 'batch_size': b,
      'dtype': config.model.dtype, 'steps_per_round': steps, 'rounds': rounds,
      'threads': threads, 'jax_devices': jx.num_devices,
      'jax_version': jax.__version__, 'torch_version': torch.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      # Other processes' load skews both sides (PyTorch's OpenMP barriers suffer more from
      # oversubscribed cores than XLA's thread pool): keep it with the figures.
      'load_average_1min': [round(load_before, 2), round(os.getloadavg()[0], 2)],
      'jax_params': jx.num_params, 'torch_params': tr.num_params,
      'torch_memory_format': tr.format, 'torch_format_images_per_s': formats,
      'jax_images_per_s': jax_ips, 'torch_images_per_s': torch_ips,
      'ratio': jax_ips / torch_ips, 'per_round': per_round,
  }


def main(argv) -> int:
  overrides = [a for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench compare', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='plain', choices=('plain', 'pose_aware'))
  p.add_argument('--depth', default='50', help="ResNet depth: 18, 34, 50 (default 50)")
  p.add_argument('--input-size', type=int, default=224, help='input side in pixels')
  p.add_argument('--batch-size', type=int, default=16)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--steps', type=int, default=3, help='steps per timed round (default 3)')
  p.add_argument('--rounds', type=int, default=3, help='timed rounds per side (default 3)')
  p.add_argument('--threads', type=int, default=0,
                 help='PyTorch threads (default: the cores XLA uses)')
  p.add_argument('--json', action='store_true', help='print one JSON line')
  args = p.parse_args(rest)
  for name in ('input_size', 'batch_size', 'steps', 'rounds'):
    if getattr(args, name) < 1:
      print(f'error: --{name.replace("_", "-")} must be positive, got {getattr(args, name)}',
            file=sys.stderr)
      return 2
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("error: PyTorch is not installed; install the extra: pip install -e '.[compare]'",
          file=sys.stderr)
    return 2
  log = (lambda *_: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
  try:
    config = make_config(args.model, args.depth, args.input_size, args.batch_size, args.dtype,
                         overrides)
    from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxalign.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    # The devices JaxSide will have (config.cpu_devices), checked before anything is built.
    config_lib.validate(config, mesh_lib.cpu_device_count(
        int(config.cpu_devices or 0), int(config.batch_size), jax_threads()))
  except (ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  result = run(config, args.steps, args.rounds, threads=args.threads or None, log=log)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"{result['model']} ResNet-{result['depth']}, {result['input_size']} px, batch "
          f"{result['batch_size']}, {result['dtype']}, {result['threads']} threads, "
          f"{result['jax_devices']} JAX devices "
          f"(jax {result['jax_version']}, torch {result['torch_version']})")
    print(f"  JAX:     {result['jax_images_per_s']:.2f} images/s")
    print(f"  PyTorch: {result['torch_images_per_s']:.2f} images/s "
          f"({result['torch_memory_format']})")
    print(f"  JAX / PyTorch: {result['ratio']:.2f} (1-minute load average "
          f"{result['load_average_1min'][0]:.1f} -> {result['load_average_1min'][1]:.1f} on "
          f"{os.cpu_count()} cores)")
  return 0
