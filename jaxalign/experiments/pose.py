"""The pose experiment: ``python -m jaxalign.experiments.pose [--size quick|paper] [--out DIR]``.

Tests the paper's central claim (its Figure 5b) on synthetic faces whose pose we control:
renders one training and one disjoint test set with model mismatch
(:data:`~jaxalign.experiments.pose_config.MISMATCH`), trains every arm of
:data:`~jaxalign.experiments.pose_config.ARMS` with every seed of the size, evaluates all runs
with ``python -m jaxalign.evaluate --compare`` (each run with its own completion backend) and
writes ``DIR/pose.md`` with the NME-by-pose plot of all arms (:mod:`.pose_report`).

Runs go to ``--root`` (default ``runs/experiments/pose-<size>``): ``data/`` (the two data
sets), ``runs/<arm>_s<seed>/`` (training runs; a finished run is not trained again, so an
interrupted experiment resumes), ``compare/`` (the comparison). Arms 5 and 7 evaluate copies of
arm 1's runs with another completion instead of training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Callable, Sequence

from jaxalign.experiments import pose_config

log = logging.getLogger('jaxalign.experiments.pose')
# Written into a run when it is trained: how long it took (for later, resumed invocations).
TIMING_FILE = 'experiment_timing.json'


def plan(size: str = 'quick', arms: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
  """(arm, seed) of every run, arms needed by others first.

  Args:
    size: 'quick', 'cpu' or 'paper' (its seeds).
    arms: subset of :data:`pose_config.ARMS` (default all; an arm that reuses another's
      networks pulls that arm in).
    seeds: override every arm's seeds.
  """
  s = pose_config.get_size(size)
  names = list(pose_config.ARMS) if arms is None else list(arms)
  for name in names:
    if name not in pose_config.ARMS:
      raise ValueError(f'unknown arm {name!r}; expected one of {sorted(pose_config.ARMS)}')
  for name in list(names):
    reuse = pose_config.ARMS[name].reuses
    if reuse and reuse not in names:
      names.insert(0, reuse)
  order = sorted(names, key=lambda n: (pose_config.ARMS[n].reuses is not None,
                                      list(pose_config.ARMS).index(n)))
  out = []
  for name in order:
    arm = pose_config.ARMS[name]
    arm_seeds = seeds if seeds is not None else (s.ablation_seeds if arm.ablation else s.seeds)
    out += [(name, int(seed)) for seed in arm_seeds]
  return out


def run_name(arm: str, seed: int) -> str:
  return f'{arm}_s{seed}'


def make_data(root: str | os.PathLike, size: str = 'quick', num_train: int | None = None,
              num_test: int | None = None) -> tuple[str, str, str]:
  """Renders (once) the training, test and validation sets; returns their folders.

  The folders hold a ``COMPLETE`` marker when done, so an interrupted rendering is redone.
  """
  from jaxalign.data import synthetic, synthetic_dataset  # pylint: disable=g-import-not-at-top
  s = pose_config.get_size(size)
  data = pathlib.Path(root) / 'data'
  out = []
  for split, num, seed in (('train', num_train or s.num_train, pose_config.TRAIN_SEED),
                           ('test', num_test or s.num_test, pose_config.TEST_SEED),
                           ('val', s.num_val, pose_config.VAL_SEED)):
    folder = data / split
    marker = folder / 'COMPLETE'
    if not marker.is_file():
      if folder.exists():
        shutil.rmtree(folder)
      config = synthetic.SynthConfig(size=s.image_size, **pose_config.MISMATCH)
      t0 = time.perf_counter()
      summary = synthetic_dataset.synthesize(folder, num, config=config, seed=seed)
      for index, error in summary.failed:
        log.warning('%s face %d failed: %s', split, index, error)
      log.info('rendered %d %s faces in %.0f s', summary.written, split,
               time.perf_counter() - t0)
      marker.write_text(json.dumps({'num': num, 'seed': seed}) + '\n', encoding='utf-8')
    out.append(str(folder))
  return out[0], out[1], out[2]


def _finished(workdir: pathlib.Path, num_steps: int) -> bool:
  from jaxalign.evaluation import runner  # pylint: disable=g-import-not-at-top
  if not (workdir / 'config.json').is_file():
    return False
  try:
    return runner._latest_step(str(workdir)) == num_steps  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    return False


def run_config(arm: str, seed: int, size: str, train_dir: str, test_dir: str,
               overrides: dict | None = None, val_dir: str = ''):
  """The training config of one run (the arm's config file plus the experiment's data)."""
  c = pose_config.arm_config(arm, size)
  c.seed = int(seed)
  c.data.train_dir = train_dir
  c.data.test_dir = test_dir
  c.data.val_dir = val_dir
  c.eval.enabled = False        # every run is evaluated once, by the comparison
  return pose_config.override(c, overrides or {})


def _checkpoint_steps(workdir: pathlib.Path) -> list[str]:
  ckpt = workdir / 'checkpoints'
  return sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []


def _get(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def _copy_run(src: pathlib.Path, dst: pathlib.Path, overrides: dict) -> None:
  """A copy of a finished run with config keys changed (for the evaluation-only arms)."""
  from jaxalign import inference  # pylint: disable=g-import-not-at-top
  if dst.exists():
    try:   # already copied from this very checkpoint: keep it (and its evaluation)
      same = (_checkpoint_steps(dst) == _checkpoint_steps(src) and all(
          _get(inference.Run.load(dst).config, k) == v for k, v in overrides.items()))
    except (FileNotFoundError, KeyError, ValueError):
      same = False
    if same:
      return
    shutil.rmtree(dst)
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns('eval', 'tensorboard'))
  config = pose_config.override(inference.Run.load(dst).config, overrides)
  inference.save_config(config, str(dst))


def train_all(root: str | os.PathLike, size: str, runs: Sequence[tuple[str, int]],
              train_dir: str, test_dir: str, overrides: dict | None = None,
              progress: Callable[[str], None] | None = None,
              val_dir: str = '') -> dict[str, dict]:
  """Trains (or copies) every run; returns {run name: {'arm', 'seed', 'workdir', 'seconds',
  'error'}}. A failed run is recorded and the others go on."""
  from jaxalign import workflow  # pylint: disable=g-import-not-at-top
  base = pathlib.Path(root) / 'runs'
  base.mkdir(parents=True, exist_ok=True)
  info = {}
  for arm, seed in runs:
    name = run_name(arm, seed)
    workdir = base / name
    a = pose_config.ARMS[arm]
    t0 = time.perf_counter()
    error = None
    resumed = False
    try:
      config = run_config(arm, seed, size, train_dir, test_dir, overrides, val_dir)
      if a.reuses:
        src = base / run_name(a.reuses, seed)
        if info.get(run_name(a.reuses, seed), {}).get('error'):
          raise RuntimeError(f'{run_name(a.reuses, seed)} failed')
        _copy_run(src, workdir, a.overrides)
      elif not _finished(workdir, config.num_steps):
        if progress:
          progress(f'training {name}')
        workflow.train_and_evaluate(config, str(workdir))
        (workdir / TIMING_FILE).write_text(json.dumps(
            {'train_s': time.perf_counter() - t0}) + '\n', encoding='utf-8')
      else:
        resumed = True
    except Exception as e:  # pylint: disable=broad-except
      # One failed arm must not lose the others; the report lists it.
      error = f'{type(e).__name__}: {e}'
      log.exception('run %s failed', name)
    seconds = time.perf_counter() - t0
    if resumed:
      # Trained by an earlier invocation: report the time it took then.
      try:
        seconds = json.loads((workdir / TIMING_FILE).read_text())['train_s']
      except (OSError, ValueError, KeyError):
        seconds = float('nan')
    info[name] = {'arm': arm, 'seed': seed, 'workdir': str(workdir), 'seconds': seconds,
                  'error': error, 'resumed': resumed}
    if progress:
      progress(f'{name}: ' + (f'FAILED {error}' if error else
                              f'{info[name]["seconds"]:.0f} s'))
  return info


def compare_command(workdirs: Sequence[str], out_dir: str) -> list[str]:
  """The ``python -m jaxalign.evaluate`` arguments of the comparison."""
  return ['--compare', *workdirs, '--out', out_dir]


def run(size: str = 'quick', out: str | os.PathLike = 'docs/experiments',
        root: str | os.PathLike | None = None, arms: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None, num_train: int | None = None,
        num_test: int | None = None, overrides: dict | None = None,
        progress: Callable[[str], None] | None = None, eval_timeout_s: float = 3600) -> dict:
  """The whole experiment; returns the summary written into ``pose.md``.

  Args:
    size: 'quick' (a 2-core CPU, about 20 minutes), 'cpu' (larger networks, about an hour)
      or 'paper' (ResNet-50, 224 px).
    out: folder of ``pose.md`` and its plot.
    root: runs folder (default ``runs/experiments/pose-<size>``).
    arms, seeds: subsets (tests); default every arm with its size's seeds.
    num_train, num_test: data set sizes (default the size's).
    overrides: config keys set on every run (tests: ``{'num_steps': 2}``).
    progress: called with a line per event.
    eval_timeout_s: limit on the comparison's wall time.
  """
  from jaxalign.experiments import pose_report  # pylint: disable=g-import-not-at-top
  from jaxalign.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  # Every run of this process trains on the same devices: fix the CPU device count (one per
  # core, config.cpu_devices) before anything starts JAX (checking finished runs reads
  # checkpoints).
  base = pose_config.override(pose_config.base_experiment_config(size), overrides or {})
  mesh_lib.configure_cpu_devices(base)
  root = pathlib.Path(root or f'runs/experiments/pose-{size}')
  runs = plan(size, arms, seeds)
  say = progress or (lambda line: None)
  say(f'{len(runs)} runs: ' + ', '.join(run_name(a, s) for a, s in runs))
  t0 = time.perf_counter()
  train_dir, test_dir, val_dir = make_data(root, size, num_train, num_test)
  data_seconds = time.perf_counter() - t0
  say(f'data ready ({data_seconds:.0f} s): {train_dir}, {test_dir}, {val_dir}')
  info = train_all(root, size, runs, train_dir, test_dir, overrides, say, val_dir)
  done = [v['workdir'] for v in info.values() if not v['error']]
  if not done:
    raise RuntimeError('every run failed: ' + '; '.join(
        f'{k}: {v["error"]}' for k, v in info.items()))
  compare_dir = root / 'compare'
  argv = compare_command(done, str(compare_dir))
  say('python -m jaxalign.evaluate ' + ' '.join(argv))
  t0 = time.perf_counter()
  # The CLI itself, in a process of its own (what a user reruns; a fresh JAX process).
  import subprocess  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, '-m', 'jaxalign.evaluate', *argv], capture_output=True,
                        text=True, timeout=eval_timeout_s, check=False)
  log.info('%s', proc.stdout)
  if proc.returncode:
    raise RuntimeError(f'python -m jaxalign.evaluate {" ".join(argv)} failed (exit '
                       f'{proc.returncode}): {proc.stderr[-2000:]}')
  eval_seconds = time.perf_counter() - t0
  say(f'evaluated {len(done)} runs in {eval_seconds:.0f} s')
  summary = pose_report.summarise(root, info, compare_dir, test_dir, size)
  summary['timings'] = {'data_s': data_seconds, 'eval_s': eval_seconds,
                        'train_s': {k: v['seconds'] for k, v in info.items()},
                        'total_s': time.perf_counter() - t_start}
  summary['command'] = 'python -m jaxalign.evaluate ' + ' '.join(argv)
  paths = pose_report.write(out, summary, root.resolve())
  say('wrote ' + ', '.join(paths))
  return summary


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m jaxalign.experiments.pose',
                              description=__doc__.split('\n\n')[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--size', default='quick', choices=sorted(pose_config.SIZES),
                 help="'quick' (CPU, ~20 min), 'cpu' (larger networks, ~1 h on a 2-core CPU) "
                 "or 'paper' (ResNet-50, 224 px, for a GPU)")
  p.add_argument('--out', default='docs/experiments', help='folder of pose.md and its plot')
  p.add_argument('--root', help='runs folder (default runs/experiments/pose-<size>)')
  p.add_argument('--arms', nargs='+', metavar='ARM', help=f'subset of {", ".join(pose_config.ARMS)}')
  p.add_argument('--seeds', nargs='+', type=int, help='seeds of every arm (default the size\'s)')
  p.add_argument('--num-train', type=int, help='training faces (default the size\'s)')
  p.add_argument('--num-test', type=int, help='test faces (default the size\'s)')
  p.add_argument('--steps', type=int, help='training steps of every run (default the size\'s)')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s: %(message)s')
  overrides = {}
  if args.steps:
    overrides.update({'num_steps': args.steps, 'checkpoint_every': args.steps})

  def progress(line):
    print(f'[{time.strftime("%H:%M:%S")}] {line}', flush=True)

  try:
    run(args.size, args.out, args.root, args.arms, args.seeds, args.num_train, args.num_test,
        overrides, progress)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
