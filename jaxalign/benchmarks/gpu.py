"""``python -m jaxalign.bench gpu [--quick] [--json] [--out DIR] [--batch-sizes 32 128]``: the
one-shot accelerator benchmark (meant to finish in under 8 minutes on one GPU).

It measures, on whatever device JAX runs on (it names it):

1. **training**: the pose-aware ResNet-50 pair at 224 px (the paper's setting), in float32 and
   bfloat16 compute, at each ``--batch-sizes`` value: the bare jitted step (one batch already
   on the device) and the whole input pipeline (grain decode + crop on the host, transfer,
   step), via :func:`jaxalign.benchmarks.train.run`, on a small synthetic training set
   rendered into ``OUT/data`` (cached);
2. **completion**: 3DMM completion faces/s (JAX backend, :func:`jaxalign.morphable.completion
   .complete`) at batch 4,096, compilation excluded (best of 3);
3. **predict**: faces/s of the whole ``python -m jaxalign.predict`` pipeline on a photo
   (``python -m jaxalign.bench predict --json`` in a subprocess, untrained pair of the same
   size), at batch 1 and 32.

It writes ``OUT/gpu_benchmark.json`` and ``OUT/gpu_benchmark.md`` (a markdown table) and prints
the table (``--json``: the JSON, one line). ``--quick`` shrinks everything (tiny ResNets at
32 px, batch 4, 64 completion faces) so that the whole run takes seconds on a CPU: the test
suite runs it. Exit codes: 0 ok, 1 a section failed (the others are still written, the failure
is in the JSON), 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import numpy as np

FULL = dict(depth='50', width=64, input_size=224, batch_sizes=(32, 128), steps=10, warmup=2,
            num_train=512, image_size=256, completion_batch=4096, predict_batches=(1, 32))
QUICK = dict(depth='tiny', width=8, input_size=32, batch_sizes=(4,), steps=2, warmup=1,
             num_train=8, image_size=48, completion_batch=64, predict_batches=(1, 4))


def train_config(sizes: dict, dtype: str, batch_size: int, data_root: str,
                 quick: bool = False):
  """The pose-aware training config of one row (synthetic data, in-place defaults)."""
  from jaxalign.training import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.kind = 'pose_aware'
  c.model.depth = sizes['depth']
  c.model.width = sizes['width']
  c.model.input_size = sizes['input_size']
  c.model.dtype = dtype
  c.batch_size = int(batch_size)
  c.num_steps = 1000
  c.data.synthetic.enabled = True
  c.data.synthetic.root = data_root
  c.data.synthetic.num_train = sizes['num_train']
  c.data.synthetic.num_test = 4
  c.data.synthetic.image_size = sizes['image_size']
  c.eval.enabled = False
  if quick:
    c.data.num_workers = 0       # no worker processes for a few tiny images
  return c


def bench_training(sizes: dict, data_root: str, log, quick: bool = False) -> list[dict]:
  from jaxalign.benchmarks import train as train_bench  # pylint: disable=g-import-not-at-top
  rows = []
  for dtype in ('float32', 'bfloat16'):
    for b in sizes['batch_sizes']:
      t0 = time.perf_counter()
      r = train_bench.run(train_config(sizes, dtype, b, data_root, quick), sizes['steps'],
                          sizes['warmup'])
      r['wall_s'] = time.perf_counter() - t0
      log(f"train {dtype} batch {b}: bare {r['bare_step_images_per_s']:.1f}, pipeline "
          f"{r['pipeline_images_per_s']:.1f} images/s ({r['wall_s']:.0f} s)")
      rows.append(r)
  return rows


def bench_completion(sizes: dict, log) -> dict:
  # pylint: disable=g-import-not-at-top
  from jaxalign.benchmarks import completion as completion_bench
  from jaxalign.morphable import completion
  from jaxalign.morphable.model import load_model
  model = load_model()
  n = int(sizes['completion_batch'])
  # Speed does not depend on the faces: render up to 256 and tile them to the batch.
  faces = completion_bench.synthetic_faces(model, min(n, 256), seed=0)
  given = np.resize(faces['given'], (n,) + faces['given'].shape[1:])

  def call():
    return completion.complete(given, backend='jax', image_size=faces['image_size'],
                               model=model)

  call()                                                       # compile
  best = float('inf')
  for _ in range(3):
    t = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - t)
  log(f'completion batch {n}: {n / best:.0f} faces/s')
  return {'batch_size': n, 'faces_per_s': n / best, 'compilation_excluded': True}


def bench_predict(sizes: dict, log) -> dict:
  sets = [f"model.depth={sizes['depth']}", f"model.width={sizes['width']}",
          f"model.input_size={sizes['input_size']}", 'model.kind=pose_aware']
  cmd = [sys.executable, '-m', 'jaxalign.bench', 'predict', '--json', '--batch-size',
         *map(str, sizes['predict_batches'])]
  for s in sets:
    cmd += ['--set', s]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    raise RuntimeError(f'bench predict exited {proc.returncode}: {tail[0]}')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for row in result['rows']:
    log(f"predict batch {row['batch']}: {row['faces_per_s']:.1f} faces/s")
  return result


def device_info() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return {'platform': d.platform, 'device_kind': d.device_kind,
          'device_count': jax.device_count(), 'jax_version': jax.__version__,
          'cpu_count': os.cpu_count()}


def markdown(result: dict) -> str:
  """The result as a markdown table block."""
  dev = result['device']
  lines = [f"GPU benchmark, {result['date']}: {dev['device_count']} x {dev['device_kind']} "
           f"({dev['platform']}), jax {dev['jax_version']}"
           f"{' (--quick sizes)' if result['quick'] else ''}", '',
           '| what | dtype | batch | bare step images/s | whole pipeline images/s |',
           '| --- | --- | --- | --- | --- |']
  for r in result.get('training', []):
    lines.append(f"| pose-aware ResNet-{r['depth']} pair, {r['input_size']} px, train | "
                 f"{r['dtype']} | {r['batch_size']} | {r['bare_step_images_per_s']:.1f} | "
                 f"{r['pipeline_images_per_s']:.1f} |")
  lines += ['', '| what | batch | faces/s |', '| --- | --- | --- |']
  c = result.get('completion')
  if c:
    lines.append(f"| 3DMM completion (JAX) | {c['batch_size']} | {c['faces_per_s']:.0f} |")
  for row in (result.get('predict') or {}).get('rows', []):
    lines.append(f"| predict (photo -> points, completion included) | {row['batch']} | "
                 f"{row['faces_per_s']:.1f} |")
  for name, err in result.get('errors', {}).items():
    lines.append(f'\n{name} failed: {err}')
  return '\n'.join(lines) + '\n'


def main(argv) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench gpu', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='tiny sizes: seconds on a CPU')
  p.add_argument('--json', action='store_true', help='print the JSON (one line)')
  p.add_argument('--out', default='runs/bench-gpu', help='output folder (default runs/bench-gpu)')
  p.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                 help='training batch sizes (default 32 128; --quick: 4)')
  p.add_argument('--skip', nargs='+', default=(), choices=('training', 'completion', 'predict'),
                 help='sections to leave out')
  args = p.parse_args(argv)
  sizes = dict(QUICK if args.quick else FULL)
  if args.batch_sizes:
    if min(args.batch_sizes) < 1:
      print(f'error: --batch-sizes must be positive, got {args.batch_sizes}', file=sys.stderr)
      return 2
    sizes['batch_sizes'] = tuple(args.batch_sizes)
  out = pathlib.Path(args.out)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f'error: --out {args.out}: {e}', file=sys.stderr)
    return 2
  log = (lambda *_: None) if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
  t0 = time.perf_counter()
  result = {'benchmark': 'gpu', 'date': time.strftime('%Y-%m-%d'), 'quick': args.quick,
            'device': device_info(), 'sizes': {k: list(v) if isinstance(v, tuple) else v
                                               for k, v in sizes.items()}, 'errors': {}}
  sections = {
      'training': lambda: bench_training(sizes, str(out / 'data'), log, args.quick),
      'completion': lambda: bench_completion(sizes, log),
      'predict': lambda: bench_predict(sizes, log),
  }
  for name, fn in sections.items():
    if name in args.skip:
      continue
    try:
      result[name] = fn()
    except Exception as e:  # pylint: disable=broad-except
      # One failed section must not lose the others' figures: record it, exit 1 at the end.
      result['errors'][name] = f'{type(e).__name__}: {e}'
      log(traceback.format_exc())
  result['total_s'] = time.perf_counter() - t0
  (out / 'gpu_benchmark.json').write_text(json.dumps(result, indent=1))
  table = markdown(result)
  (out / 'gpu_benchmark.md').write_text(table)
  if args.json:
    print(json.dumps(result))
  else:
    print(table)
    print(f'wrote {out / "gpu_benchmark.json"} and {out / "gpu_benchmark.md"} '
          f'({result["total_s"]:.0f} s)')
  return 1 if result['errors'] else 0
