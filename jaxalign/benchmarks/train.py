"""``python -m jaxalign.bench train --config configs/default.py [--steps N] [--photos [DIR]]``.

Prints images/s of (1) the bare training step with one batch already on the device (both
networks, augmentation included: everything the jitted step does) and (2) the whole pipeline
(grain decode + crop on the host, transfer, step), so a user sees whether input is the
bottleneck. ``--json`` prints one JSON object instead.

``--photos [DIR]`` times the input pipeline on full-size photos instead: the host crops of DIR's
faces (a 300-W-style folder) decoded from the photos (JPEG draft decoding included) and read
from the decode-once crop cache (:mod:`jaxalign.data.crop_cache`), each in one process so that
the figures are images per second of one core's CPU time; the cache's build time and size; the
bare step; and the whole pipeline fed from the cache. Without DIR it renders (once, into
``--photos-dir``) 64 synthetic photos of 4,000 x 3,000 px as JPEG, one face each: the detection
bench's scenes (:func:`jaxalign.benchmarks.detect_scenes.make_scenes`, 500 x 375 px, faces of
20 to 160 px) upscaled 8 times with sensor noise, so the faces' landmark boxes are 160 to
1,280 px, as in HELEN's photos.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

PHOTO_SIZE = (4000, 3000)
# The repository's embedded default (configs/default.py), as python -m jaxalign.train finds it.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'configs', 'default.py')
_PHOTO_UPSCALE = 8
_PHOTOS_VERSION = 1


def _setup(config, data=None) -> dict:
  """Data (``data``: :func:`jaxalign.training.trainer.prepare_data`'s, made if None), mesh,
  replicated state and the compiled step of ``config`` (as a run builds them)."""
  # pylint: disable=g-import-not-at-top
  from jaxalign.training import config as config_lib, mesh as mesh_lib, optim
  from jaxalign.training import state as state_lib, step as step_lib, trainer
  mesh_lib.configure_cpu_devices(config)     # the devices a training run would have
  mesh = mesh_lib.make_mesh()
  config_lib.validate(config, mesh.devices.size)
  data = data if data is not None else trainer.prepare_data(config)
  model = state_lib.create_model(config, data['mean_shape'], data['canonical_shape'], 0)
  defs, params, model_state = state_lib.split_model(model)
  tx, schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
  state = mesh_lib.replicate(state_lib.init_state(
      params, model_state, tx, 0, ema=state_lib.ema_decay(config) > 0), mesh)
  return {'data': data, 'mesh': mesh, 'state': state,
          'step': step_lib.compile_step(defs, tx, schedule, config, mesh)}


def _time_steps(setup, batches, steps: int, warmup: int, batch_size: int) -> float:
  """Images/s of ``steps`` steps fed by ``batches`` (host batches; None: the same device batch
  every step) after ``warmup`` untimed ones."""
  from jaxalign.training import step as step_lib  # pylint: disable=g-import-not-at-top
  mesh, train_step, state = setup['mesh'], setup['step'], setup['state']
  fixed = step_lib.device_batch(setup['first'], mesh) if batches is None else None

  def next_batch():
    return fixed if batches is None else step_lib.device_batch(next(batches), mesh)

  for _ in range(warmup):                      # compile + warm up
    state, metrics = train_step(state, next_batch())
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, next_batch())
  jax.block_until_ready(metrics)
  setup['state'] = state
  return steps * batch_size / (time.perf_counter() - t0)


def _describe(config) -> dict:
  return {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
          'model': config.model.kind, 'depth': str(config.model.depth),
          'width': int(config.model.width), 'input_size': int(config.model.input_size),
          'dtype': config.model.dtype, 'batch_size': int(config.batch_size)}


def run(config, steps: int, warmup: int) -> dict:
  """Measures the bare step and the full pipeline; returns a dict of figures."""
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  setup = _setup(config)
  data = setup['data']
  total = warmup + steps
  it = pipeline.train_iterator(data['records'], data['sampler'], config, 0, 2 * total + 1)
  setup['first'] = next(it)
  bare = _time_steps(setup, None, steps, warmup, config.batch_size)
  full = _time_steps(setup, it, steps, warmup, config.batch_size)
  return dict(_describe(config), steps=steps, bare_step_images_per_s=bare,
              pipeline_images_per_s=full, pipeline_vs_bare=full / bare)


# --------------------------------------------------------------------------- full-size photos

def render_photos(out_dir, num: int = 64, seed: int = 0, size=PHOTO_SIZE) -> pathlib.Path:
  """Writes ``num`` synthetic JPEG photos of ``size`` (w, h) px with one face each into
  ``out_dir`` (``photo_<i>.jpg`` + ``.pts``; a 300-W-style folder), once: a folder holding the
  same settings is reused."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxalign import io  # pylint: disable=g-import-not-at-top
  from jaxalign.benchmarks import detect_scenes  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  settings = {'version': _PHOTOS_VERSION, 'num': int(num), 'seed': int(seed),
              'size': list(size), 'upscale': _PHOTO_UPSCALE}
  marker = out / 'photos.json'
  if marker.is_file() and json.loads(marker.read_text()) == settings:
    return out
  out.mkdir(parents=True, exist_ok=True)
  w, h = size[0] // _PHOTO_UPSCALE, size[1] // _PHOTO_UPSCALE
  scenes = detect_scenes.make_scenes(num, seed, w, h, max_faces=1)
  rng = np.random.default_rng(seed)
  for i, scene in enumerate(scenes):
    if not scene.faces:      # the scene's face did not fit (tiny photos only)
      continue
    big = np.asarray(Image.fromarray(scene.image).resize(tuple(size), Image.BICUBIC), np.int16)
    # Sensor noise: an upscaled scene alone would be unnaturally smooth (and fast to decode).
    big = big + rng.integers(-6, 7, big.shape, dtype=np.int16)
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(out / f'photo_{i:03d}.jpg',
                                                                quality=90)
    # Pixel centres at integers: scaling by f maps centre p to (p + 0.5) f - 0.5.
    pts = (scene.faces[0].astype(np.float64) + 0.5) * _PHOTO_UPSCALE - 0.5
    io.write_pts(out / f'photo_{i:03d}.pts', pts.astype(np.float32))
  marker.write_text(json.dumps(settings))
  return out


def host_throughput(crops, indices) -> dict:
  """Host crops of ``indices`` by ``crops`` (:class:`jaxalign.data.pipeline.Crops`), in this
  process: images per second of wall time and of CPU time (one core's share)."""
  t0, c0 = time.perf_counter(), time.process_time()
  for i in indices:
    crops(int(i))
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {'images_per_s': len(indices) / wall, 'images_per_cpu_s': len(indices) / cpu}


def step_figures(config, data, steps: int, warmup: int, rounds: int) -> tuple[float, float]:
  """(bare step, pipeline fed from ``config``'s crop cache) images/s: ``rounds`` alternating
  rounds, the best of each (another job's load on the host hits both alike)."""
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  setup = _setup(config, data)
  it = pipeline.train_iterator(data['records'], data['sampler'], config, 0,
                               2 * rounds * (warmup + steps) + 1)
  setup['first'] = next(it)
  bare, piped = [], []
  for _ in range(rounds):
    bare.append(_time_steps(setup, None, steps, warmup, config.batch_size))
    piped.append(_time_steps(setup, it, steps, warmup, config.batch_size))
  return max(bare), max(piped)


def run_photos(config, photos_dir, steps: int, warmup: int, cache_dir=None,
               rounds: int = 3) -> dict:
  """The input pipeline on ``photos_dir`` with and without the crop cache, and the bare step.

  The cache is built into ``cache_dir`` (default: a temporary folder, removed after). The bare
  step and the cache-fed pipeline: :func:`step_figures`.
  """
  # pylint: disable=g-import-not-at-top
  from jaxalign.data import crop_cache, pipeline
  from jaxalign.training import mesh as mesh_lib, trainer
  # Before anything touches JAX (prepare_data does): the devices a training run would have.
  mesh_lib.configure_cpu_devices(config)
  config.data.synthetic.enabled = False
  config.data.source = ''
  config.data.train_dir = str(photos_dir)
  config.data.test_dir = ''
  config.data.val_dir = ''
  config.data.holdout_fraction = 0.0
  config.eval.enabled = False
  with tempfile.TemporaryDirectory(prefix='jaxalign-crops-') as tmp:
    config.data.crop_cache.dir = str(cache_dir or tmp)
    data = trainer.prepare_data(config)
    records = data['records']
    spec = dataclasses.replace(pipeline.CropSpec.from_config(config),
                               cache_dir=config.data.crop_cache.dir)
    n = len(records)
    c0 = time.process_time()
    summary = crop_cache.build(records, spec, spec.cache_dir)
    build_cpu = time.process_time() - c0
    cache = crop_cache.CropCache(spec.cache_dir, spec)
    order = np.random.default_rng(0).permutation(n)
    photos = host_throughput(pipeline.Crops(records, spec), order)
    cached_crops = pipeline.Crops(records, spec, cache)
    cached = host_throughput(cached_crops, np.tile(order, max(1, 2048 // n)))
    # The cache's crops against the photos' (the test does whole batches; here real sizes).
    diff = max(float(np.abs(pipeline.load_example(records[i], spec)['image'].astype(np.int16)
                            - cached_crops(i)['image']).max()) for i in order[:4])
    factors = [_draft_factor(r, spec) for r in records]
    config.data.crop_cache.enabled = True
    bare, piped = step_figures(config, data, steps, warmup, rounds)
  sides = [float(np.max(r.box[2:] - r.box[:2])) for r in records]
  return dict(
      _describe(config), steps=steps, photos=str(photos_dir), faces=n,
      face_box_px=[round(min(sides)), round(float(np.median(sides))), round(max(sides))],
      crop_size=spec.crop_size,
      draft_factors={str(f): factors.count(f) for f in sorted(set(factors))},
      photos_images_per_s_per_core=photos['images_per_cpu_s'],
      photos_images_per_s_wall=photos['images_per_s'],
      cache_images_per_s_per_core=cached['images_per_cpu_s'],
      cache_images_per_s_wall=cached['images_per_s'],
      cache_vs_photos_per_core=cached['images_per_cpu_s'] / photos['images_per_cpu_s'],
      cache_build_s=summary.seconds, cache_build_cpu_s=build_cpu,
      cache_bytes=summary.bytes, cache_max_abs_diff=diff,
      bare_step_images_per_s=bare, cache_pipeline_images_per_s=piped,
      cache_pipeline_vs_bare=piped / bare, rounds=rounds,
      num_workers=pipeline.num_workers(config),
      load_average=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None)


def _draft_factor(record, spec) -> int:
  """The JPEG draft factor the pipeline decodes ``record``'s photo at."""
  from jaxalign.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.draft_factor(float(np.abs(pipeline.host_crop_matrix(record.box, spec)[0, 0])))


def main(argv) -> int:
  overrides = [a for a in argv if a.startswith('--config.')]
  rest = [a for a in argv if not a.startswith('--config.')]
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench train', description=__doc__)
  p.add_argument('--config', default=DEFAULT_CONFIG,
                 help='a configs/*.py file (default: configs/default.py)')
  p.add_argument('--steps', type=int, default=20, help='timed steps (default 20)')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps first (default 2)')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.add_argument('--photos', nargs='?', const='', default=None, metavar='DIR',
                 help='time the input pipeline on full-size photos with and without the crop '
                      'cache (DIR: a folder of images + .pts; without DIR: 64 synthetic '
                      '4,000 x 3,000 JPEGs rendered once into --photos-dir)')
  p.add_argument('--rounds', type=int, default=3,
                 help='--photos: alternating rounds of the bare step and the cache-fed '
                      'pipeline, best of each (default 3)')
  p.add_argument('--photos-dir', default='runs/bench/photos-4000x3000',
                 help='where --photos without DIR renders its photos (reused when present)')
  args = p.parse_args(rest)
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config = config_lib.load_config_file(args.config)
    config_lib.apply_overrides(config, overrides)
    if args.photos is None:
      result = run(config, args.steps, args.warmup)
    else:
      folder = args.photos or render_photos(args.photos_dir)
      if not os.path.isdir(folder):
        raise FileNotFoundError(f'--photos {folder}: no such folder')
      result = run_photos(config, folder, args.steps, args.warmup, rounds=args.rounds)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(result))
  elif args.photos is not None:
    r = result
    print(f"{r['faces']} faces in {r['photos']} (landmark boxes {r['face_box_px']} px, JPEG "
          f"draft factors {r['draft_factors']}), {r['crop_size']} px host crops")
    print(f"  from the photos:   {r['photos_images_per_s_per_core']:.1f} images/s per core")
    print(f"  from the cache:    {r['cache_images_per_s_per_core']:.1f} images/s per core "
          f"({r['cache_vs_photos_per_core']:.0f}x)")
    print(f"  cache build:       {r['cache_build_s']:.1f} s, {r['cache_bytes'] / 1e6:.1f} MB")
    print(f"  bare step:         {r['bare_step_images_per_s']:.1f} images/s")
    print(f"  pipeline (cache):  {r['cache_pipeline_images_per_s']:.1f} images/s "
          f"({100 * r['cache_pipeline_vs_bare']:.0f} % of the bare step)")
  else:
    print(f"{result['device']}: {result['model']} ResNet-{result['depth']} "
          f"(width {result['width']}) {result['input_size']} px {result['dtype']}, "
          f"batch {result['batch_size']}")
    print(f"  bare step (data on device): {result['bare_step_images_per_s']:.1f} images/s")
    print(f"  whole pipeline:             {result['pipeline_images_per_s']:.1f} images/s "
          f"({100 * result['pipeline_vs_bare']:.0f} % of the bare step)")
  return 0
