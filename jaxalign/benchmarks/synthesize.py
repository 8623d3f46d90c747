"""Synthetic face throughput: ``python -m jaxalign.bench synthesize [--num N] [--size S]``.

Two numbers: (1) rendering alone in this process (per-core speed: milliseconds of CPU per
face), and (2) the whole ``synthesize`` job (render + PNG + .pts + annotations) with ``--workers``
processes into a temporary folder: faces per second of wall time, and CPU time per face summed
over the workers. On a shared machine the wall figure depends on the load; the CPU figures do
not (much).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from jaxalign.data import synthetic
from jaxalign.data import synthetic_dataset


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m jaxalign.bench synthesize')
  p.add_argument('--num', type=int, default=1000, help='faces for the data set run')
  p.add_argument('--render-num', type=int, default=None,
                 help='faces for the in-process render timing (default min(num, 100))')
  p.add_argument('--size', type=int, default=128)
  p.add_argument('--workers', type=int, default=None, help='default: every CPU core')
  p.add_argument('--occlusion', type=float, default=0.0)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--json', action='store_true', help='also print one JSON line')
  args = p.parse_args(argv)
  if args.num <= 0:
    print(f'error: --num must be positive, got {args.num}', file=sys.stderr)
    return 2
  config = synthetic.SynthConfig(size=args.size, occlusion=args.occlusion)
  renderer = synthetic.Renderer(config)
  renderer.face(args.seed, 0)                     # warm up caches
  n_render = args.render_num or min(args.num, 100)
  wall0, cpu0 = time.perf_counter(), time.process_time()
  for i in range(n_render):
    renderer.face(args.seed, i)
  render_wall = (time.perf_counter() - wall0) / n_render
  render_cpu = (time.process_time() - cpu0) / n_render
  with tempfile.TemporaryDirectory() as tmp:
    summary = synthetic_dataset.synthesize(tmp, args.num, config=config, seed=args.seed,
                                           workers=args.workers)
  result = {
      'benchmark': 'synthesize', 'size': args.size, 'faces': summary.written,
      'workers': summary.workers, 'cpu_count': os.cpu_count(),
      'faces_per_second': round(summary.faces_per_second, 2),
      'wall_seconds': round(summary.seconds, 2),
      'cpu_ms_per_face': round(1000 * summary.cpu_seconds / max(summary.written, 1), 2),
      'render_only_cpu_ms_per_face': round(1000 * render_cpu, 2),
      'render_only_wall_ms_per_face': round(1000 * render_wall, 2),
      'load_average': [round(x, 2) for x in os.getloadavg()],
      'date': time.strftime('%Y-%m-%d %H:%M'),
  }
  print(f'synthesize {args.size}x{args.size}: {result["faces_per_second"]} faces/s with '
        f'{summary.workers} workers ({summary.written} faces, {result["wall_seconds"]} s wall, '
        f'start-up included); {result["cpu_ms_per_face"]} ms CPU per face in the workers '
        f'(= {1000 / max(result["cpu_ms_per_face"], 1e-9):.0f} faces/s per core); render only: '
        f'{result["render_only_cpu_ms_per_face"]} ms CPU per face; load average '
        f'{result["load_average"]}')
  if summary.failed:
    print(f'{len(summary.failed)} faces failed: {summary.failed[:3]}', file=sys.stderr)
  if args.json:
    print(json.dumps(result))
  return 1 if summary.failed else 0


if __name__ == '__main__':
  sys.exit(main())
