"""Two training processes on one machine equal one process: ``python -m jaxalign.train`` with
``--config.coordinator_address/num_processes/process_id``.

JAX fixes its devices when it starts, so every run is a subprocess with its own
``XLA_FLAGS=--xla_force_host_platform_device_count=N``: one process with 4 CPU devices against
two processes on 127.0.0.1 with 2 devices each (gloo CPU collectives), the smoke config on a
small fixture folder. The global batch is the same (each process loads its half), so the
losses agree step for step; a two-process rerun after losing the last checkpoint redoes those
steps exactly.
"""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxalign.training import logger
from test_pipeline import write_fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(workdir, train_dir, devices, cache, extra=(), log_path=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  cmd = [sys.executable, '-m', 'jaxalign.train', '--config', SMOKE, '--workdir', workdir,
         f'--config.data.train_dir={train_dir}', '--config.eval.enabled=False',
         # The plain model: half the compilation of the pose-aware pair, same parallel code.
         '--config.model.kind=plain', '--config.keep_checkpoints=5', *extra]
  out = open(log_path, 'w') if log_path else subprocess.DEVNULL
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_all(procs, logs):
  """Waits for every process; on a failure or a timeout ends the others and reports."""
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  bad = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
  if bad:
    tails = '\n'.join(f'--- {path}\n' + open(path).read()[-3000:] for path in logs)
    pytest.fail(f'processes failed {bad}:\n{tails}')


def _two_processes(workdir, train_dir, cache, tmp_path, tag):
  port = _free_port()
  logs = [str(tmp_path / f'{tag}{i}.log') for i in range(2)]
  procs = [_launch(workdir, train_dir, 2, cache, log_path=logs[i], extra=(
      f'--config.coordinator_address=127.0.0.1:{port}', '--config.num_processes=2',
      f'--config.process_id={i}', '--config.distributed_timeout_s=120')) for i in range(2)]
  return procs, logs


def _losses(workdir):
  return [(r['step'], r['loss']) for r in logger.read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  train_dir = write_fixture(str(tmp_path / 'train'), num=12, size=48, seed=0)
  cache = str(tmp_path / 'jax_cache')
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  # The one-process reference runs alongside the two-process run.
  procs, logs = _two_processes(two, train_dir, cache, tmp_path, 'two')
  logs.append(str(tmp_path / 'one.log'))
  procs.append(_launch(one, train_dir, 4, cache, log_path=logs[-1]))
  _wait_all(procs, logs)

  ref, got = _losses(one), _losses(two)
  assert [s for s, _ in ref] == [1, 2, 3, 4] == [s for s, _ in got]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-4)
  # Written once: one metrics line per step, one config, no per-process copies.
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == ['2', '4']

  # Lose the last checkpoint (as if killed before it was written): the two processes resume
  # from step 2 and redo steps 3-4 exactly.
  shutil.rmtree(os.path.join(two, 'checkpoints', '4'))
  procs, logs = _two_processes(two, train_dir, cache, tmp_path, 'resume')
  _wait_all(procs, logs)
  assert 'resumed from step 2' in open(logs[0]).read()
  assert _losses(two) == got


def test_process_shards_concatenate_to_the_global_batch(tmp_path):
  """Each process's share of a step's batch is its contiguous slice of the one-process batch."""
  from jaxalign.data import pipeline
  from jaxalign.training import config as config_lib, trainer
  c = config_lib.load_config_file(SMOKE)
  c.data.train_dir = write_fixture(str(tmp_path / 'train'), num=10, size=48, seed=0)
  c.eval.enabled = False
  data = trainer.prepare_data(c)
  spec = pipeline.CropSpec.from_config(c)

  def batch(step, index, count):
    return pipeline.TrainBatches(data['records'], data['sampler'], spec, index, count)(step)

  for step in (0, 3):
    whole = batch(step, 0, 1)
    parts = [batch(step, i, 2) for i in range(2)]
    for key in ('image', 'points', 'box', 'index'):
      assert parts[0][key].shape[0] == c.batch_size // 2
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_distributed_keys():
  from jaxalign.training import config as config_lib, distributed
  c = config_lib.base_config()
  assert not distributed.requested(c) and distributed.initialize_args(c) == {}
  assert distributed.initialize(c) is False           # single-process: nothing started
  c.coordinator_address, c.num_processes, c.process_id = '127.0.0.1:1234', 2, 1
  assert distributed.requested(c)
  assert distributed.initialize_args(c) == {'coordinator_address': '127.0.0.1:1234',
                                            'num_processes': 2, 'process_id': 1}
  for key, value, match in (('coordinator_address', 'nohost', 'not host:port'),
                            ('coordinator_address', 'h:99999', 'not host:port'),
                            ('process_id', 2, 'not below config.num_processes=2'),
                            ('num_processes', -1, 'non-negative')):
    bad = config_lib.base_config()
    bad.update_from_flattened_dict({'coordinator_address': '127.0.0.1:1234',
                                    'num_processes': 2, key: value})
    with pytest.raises(ValueError, match=f'config.{key}: .*{match}'):
      distributed.initialize_args(bad)
