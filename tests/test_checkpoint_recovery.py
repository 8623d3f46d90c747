"""Damaged checkpoints: fall back to the newest that restores, exit 2 when none does, refuse a
model config change naming the key.

One 4-step smoke run (checkpoints at 2 and 4) is trained once per module; every test damages a
copy of its workdir and resumes it.
"""

import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxalign.training import checkpointing
from jaxalign.training import config as config_lib
from jaxalign.training import logger, trainer
from test_pipeline import write_fixture

# Training runs and subprocesses: tens of seconds on a 2-core machine.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'configs', 'smoke.py')


def _config(train_dir, **overrides):
  c = config_lib.load_config_file(SMOKE)
  c.data.train_dir = train_dir
  c.eval.enabled = False
  c.model.kind = 'plain'          # half the compilation of the pose-aware pair
  c.keep_checkpoints = 5
  c.update_from_flattened_dict(overrides)
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp('ckpt')
  train_dir = write_fixture(str(root / 'train'), num=8, size=48, seed=0)
  workdir = str(root / 'run')
  trainer.train(_config(train_dir), workdir)
  return train_dir, workdir


def _copy(trained, tmp_path):
  dst = str(tmp_path / 'run')
  shutil.copytree(trained[1], dst)
  return dst


def _losses(workdir):
  return [(r['step'], r['loss']) for r in logger.read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]


def _state_files(workdir, step):
  """The data files of a checkpoint's state, largest first."""
  root = os.path.join(workdir, 'checkpoints', str(step), 'state')
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
           if os.sep + 'd' + os.sep in os.path.join(d, f) + os.sep]
  return sorted(files, key=os.path.getsize, reverse=True)


def _truncate_largest(workdir, step):
  path = _state_files(workdir, step)[0]
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 3)
  return path


def test_truncated_latest_falls_back_to_previous(trained, tmp_path, caplog):
  work = _copy(trained, tmp_path)
  reference = _losses(work)
  _truncate_largest(work, 4)
  # The damaged step 4 is also what metrics.jsonl says was done; the rerun redoes steps 3-4.
  with caplog.at_level(logging.WARNING, logger='jaxalign.train'):
    result = trainer.train(_config(trained[0]), work)
  lines = [r.getMessage() for r in caplog.records]
  assert any('checkpoint step 4' in m and 'cannot be restored' in m for m in lines), lines
  assert any('resuming from step 2' in m for m in lines), lines
  assert result['step'] == 4
  assert _losses(work) == reference        # steps 3-4 recomputed exactly
  assert os.listdir(os.path.join(work, checkpointing.DAMAGED_DIR))
  assert checkpointing.Checkpointer(work).all_steps() == [2, 4]


def test_missing_files_fall_back(trained, tmp_path, caplog):
  work = _copy(trained, tmp_path)
  for name in ('_METADATA', 'manifest.ocdbt'):
    p = os.path.join(work, 'checkpoints', '4', 'state', name)
    if os.path.exists(p):
      os.remove(p)
  ckpt = checkpointing.Checkpointer(work)
  state = _abstract_state(trained[0])
  with caplog.at_level(logging.WARNING, logger='jaxalign.train'):
    restored = ckpt.restore_newest(state)
  ckpt.close()
  assert restored is not None and restored[2] == 2
  assert int(restored[0]['step']) == 2
  assert any('checkpoint step 4' in r.getMessage() for r in caplog.records)


def _abstract_state(train_dir, **overrides):
  """The restore target of the smoke run (1 device)."""
  from jaxalign.training import mesh as mesh_lib, optim, state as state_lib
  c = _config(train_dir, **overrides)
  data = trainer.prepare_data(c)
  model = state_lib.create_model(c, data['mean_shape'], data['canonical_shape'], int(c.seed))
  _, params, model_state = state_lib.split_model(model)
  init = state_lib.init_state(params, model_state, optim.make_optimizer(c), c.seed)
  mesh = mesh_lib.make_mesh(jax.devices()[:1])
  return checkpointing.abstract_with_shardings(init, mesh_lib.replicated(mesh))


def test_wrong_shapes_are_a_damaged_checkpoint(trained, tmp_path):
  """A checkpoint whose arrays do not fit (here: the restore target changed behind the
  config's back) is reported, never padded or truncated silently."""
  work = _copy(trained, tmp_path)
  target = _abstract_state(trained[0])
  target = dict(target, step=jax.ShapeDtypeStruct((3,), np.int32,
                                                  sharding=target['step'].sharding))
  ckpt = checkpointing.Checkpointer(work)
  with pytest.raises(checkpointing.CheckpointError, match=r'step 4: .*step: saved \(\) vs now'):
    ckpt.restore_newest(target)
  ckpt.close()


def test_model_config_change_is_refused_naming_the_key(trained, tmp_path):
  work = _copy(trained, tmp_path)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"config\.model\.depth \('tiny' -> 'tiny_bottleneck'\)"):
    trainer.train(_config(trained[0], **{'model.depth': 'tiny_bottleneck'}), work)
  # A model key that does not change shapes resumes (nothing left to train here).
  result = trainer.train(_config(trained[0], **{'model.flip': False}), work)
  assert result['step'] == 4


def test_no_checkpoint_restores_exits_2(trained, tmp_path):
  work = _copy(trained, tmp_path)
  for step in (2, 4):
    _truncate_largest(work, step)
  proc = subprocess.run(
      [sys.executable, '-m', 'jaxalign.train', '--config', SMOKE, '--workdir', work,
       f'--config.data.train_dir={trained[0]}', '--config.eval.enabled=False',
       '--config.model.kind=plain', '--config.keep_checkpoints=5'],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1'))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
  assert len(errors) == 1 and 'no checkpoint can be restored' in errors[0], proc.stderr[-3000:]
  assert 'step 4' in errors[0] and 'OUT_OF_RANGE' in errors[0]


def test_every_array_is_read_before_orbax_restores(trained, tmp_path):
  """read_every_array reads a sound checkpoint whole, names an array the metadata lists but the
  database lacks, names the damage of a truncated one (tensorstore's OUT_OF_RANGE), and reads
  only the arrays under ``roots``."""
  work = _copy(trained, tmp_path)
  state_dir = os.path.join(work, 'checkpoints', '4', 'state')
  checkpointing.read_every_array(state_dir)
  # Every array the metadata lists is in the database; one that is not is named.
  saved = checkpointing.Checkpointer(work).saved_shapes(4)
  checkpointing.read_every_array(state_dir, expected=saved)
  with pytest.raises(ValueError, match=r'missing from the database \(params\.no_such_array\)'):
    checkpointing.read_every_array(state_dir, expected=list(saved) + ['params/no_such_array'])
  _truncate_largest(work, 4)
  with pytest.raises(ValueError, match='OUT_OF_RANGE'):
    checkpointing.read_every_array(state_dir)
  checkpointing.read_every_array(state_dir, roots=('no_such_root',))
  with pytest.raises(ValueError, match='OUT_OF_RANGE'):
    checkpointing.read_every_array(state_dir, roots=('step', 'params', 'model_state',
                                                     'opt_state', 'rng'))


def test_the_noise_filter_holds_only_within_the_restore():
  """quiet_abandoned_reads installs the unraisable hook and the asyncio filter for the block
  only: afterwards an unraisable error raised in orbax's code is reported again."""
  before = sys.unraisablehook
  asyncio_log = logging.getLogger('asyncio')
  filters = list(asyncio_log.filters)
  with checkpointing.quiet_abandoned_reads():
    assert sys.unraisablehook is not before
    assert len(asyncio_log.filters) == len(filters) + 1
  assert sys.unraisablehook is before and asyncio_log.filters == filters
  with pytest.raises(RuntimeError):
    with checkpointing.quiet_abandoned_reads():
      raise RuntimeError('the restore failed')
  assert sys.unraisablehook is before and asyncio_log.filters == filters


def test_a_failed_restore_leaves_no_filter_behind(trained, tmp_path):
  work = _copy(trained, tmp_path)
  _truncate_largest(work, 4)
  before = sys.unraisablehook
  ckpt = checkpointing.Checkpointer(work)
  restored = ckpt.restore_newest(_abstract_state(trained[0]))
  ckpt.close()
  assert restored[2] == 2
  assert sys.unraisablehook is before
  assert not any(isinstance(f, checkpointing._AbandonedTaskFilter)  # pylint: disable=protected-access
                 for f in logging.getLogger('asyncio').filters)


def test_abandoned_read_filter_drops_only_abandoned_read_errors():
  """After a failed restore, tensorstore's late callbacks ('Event loop is closed') and orbax's
  abandoned read coroutines report unraisable exceptions (dozens of tracebacks on stderr, in
  CI): exactly those are dropped."""
  seen = []
  hook = checkpointing._abandoned_read_filter(seen.append)  # pylint: disable=protected-access

  class Unraisable:
    def __init__(self, exc, tb=None):
      self.exc_value, self.exc_traceback = exc, tb

  def raised_in(filename):
    code = compile('raise Exception("read failed")', filename, 'exec')
    try:
      exec(code)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      return Unraisable(e, e.__traceback__)

  hook(Unraisable(RuntimeError('Event loop is closed')))
  hook(raised_in(os.path.join('site-packages', 'orbax', 'checkpoint', 'serialization.py')))
  assert not seen
  for unraisable in (Unraisable(RuntimeError('other')),
                     Unraisable(ValueError('Event loop is closed')),
                     raised_in(os.path.join('site-packages', 'mylib', 'io.py'))):
    hook(unraisable)
  assert [type(u.exc_value) for u in seen] == [RuntimeError, ValueError, Exception]
  # asyncio's 'Task exception was never retrieved' of an orbax read is dropped, others kept.
  keep = checkpointing._AbandonedTaskFilter().filter  # pylint: disable=protected-access
  for unraisable, kept in ((raised_in(os.path.join('x', 'orbax', 'a.py')), False),
                           (raised_in(os.path.join('x', 'mylib', 'a.py')), True)):
    exc = unraisable.exc_value
    record = logging.LogRecord('asyncio', logging.ERROR, 'f', 1, 'Task exception was never '
                               'retrieved', (), (type(exc), exc, exc.__traceback__))
    assert keep(record) is kept
