"""SIGKILL a training run (at a step, or while a checkpoint is being written), rerun the same
command, and check that metrics.jsonl equals an uninterrupted run's, step for step.

The killed run is ``python -m jaxalign.train`` started through a small wrapper that sends
SIGKILL to its own process at the chosen point (deterministic, unlike a timer): after the
metrics line of step ``k`` (``step:k``), or right after the asynchronous save of step ``k``
has started writing (``save:k``: the checkpoint's temporary folder exists, the commit has not
happened). The rerun is the plain command. All runs share a compilation cache.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from jaxalign.training import logger
from test_pipeline import write_fixture

# Three training subprocesses: tens of seconds on a 2-core machine.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
NUM_STEPS = 6

WRAPPER = textwrap.dedent('''
    import os, signal, sys, time
    mode, k = os.environ['KILL_AT'].split(':')
    k = int(k)
    from jaxalign.training import checkpointing, logger

    def die(note):
      print(f'KILLED {note}', file=sys.stderr, flush=True)
      os.kill(os.getpid(), signal.SIGKILL)

    if mode == 'save':
      original_save = checkpointing.Checkpointer.save

      def save(self, step, state, data_state):
        original_save(self, step, state, data_state)
        if step == k:
          deadline = time.time() + 10
          while time.time() < deadline:
            if any('tmp' in n for n in os.listdir(self.directory)):
              die(f'mid-save {step}')
            time.sleep(0.0002)
          die(f'after-save {step}')
      checkpointing.Checkpointer.save = save
    else:
      original_write = logger.MetricsLogger.write

      def write(self, step, metrics):
        original_write(self, step, metrics)
        if step == k:
          die(f'step {step}')
      logger.MetricsLogger.write = write

    from absl import app
    from jaxalign import train
    app.run(lambda argv: sys.exit(train.main(argv)))
''')


def _cmd(workdir, train_dir, wrapper=None):
  head = [sys.executable, wrapper] if wrapper else [sys.executable, '-m', 'jaxalign.train']
  return head + ['--config', SMOKE, '--workdir', workdir, f'--config.data.train_dir={train_dir}',
                 '--config.eval.enabled=False', '--config.model.kind=plain',
                 f'--config.num_steps={NUM_STEPS}', '--config.checkpoint_every=2']


def _env(cache, **extra):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS='--xla_force_host_platform_device_count=1',
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              **extra)


def _losses(workdir):
  return [(r['step'], r['loss']) for r in logger.read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(train folder, compilation cache, reference losses of an uninterrupted run)."""
  root = tmp_path_factory.mktemp('kill')
  train_dir = write_fixture(str(root / 'train'), num=10, size=48, seed=0)
  cache = str(root / 'jax_cache')
  ref = str(root / 'reference')
  proc = subprocess.run(_cmd(ref, train_dir), cwd=REPO, env=_env(cache), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = _losses(ref)
  assert [s for s, _ in losses] == list(range(1, NUM_STEPS + 1))
  return train_dir, cache, losses


def _kill_then_rerun(setup, workdir, kill_points):
  train_dir, cache, reference = setup
  wrapper = os.path.join(os.path.dirname(workdir), 'kill_wrapper.py')
  with open(wrapper, 'w') as f:
    f.write(WRAPPER)
  notes = []
  for point in kill_points:
    proc = subprocess.run(_cmd(workdir, train_dir, wrapper), cwd=REPO,
                          env=_env(cache, KILL_AT=point), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
    notes += [ln for ln in proc.stderr.splitlines() if ln.startswith('KILLED')]
  proc = subprocess.run(_cmd(workdir, train_dir), cwd=REPO, env=_env(cache),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _losses(workdir) == reference, (kill_points, notes)
  # The interrupted save left no temporary folder behind (orbax cleans them on restart).
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]
  return notes


def test_sigkill_at_a_random_point_resumes_exactly(setup, tmp_path):
  rng = random.Random()
  point = rng.choice([f'step:{rng.randint(1, NUM_STEPS - 1)}',
                      f'save:{rng.choice(range(2, NUM_STEPS, 2))}'])
  print('kill point', point)
  _kill_then_rerun(setup, str(tmp_path / 'run'), [point])


def test_sigkill_during_checkpoint_write_then_again(setup, tmp_path):
  """Killed while the step-4 checkpoint is written, then killed again at step 5 of the rerun
  (which resumed from step 2), then finished."""
  notes = _kill_then_rerun(setup, str(tmp_path / 'run'), ['save:4', 'step:5'])
  assert notes[0] in ('KILLED mid-save 4', 'KILLED after-save 4'), notes
  print(notes)
