"""Orbax checkpoints of the whole training state and the data position.

Each checkpoint ``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (parameters,
optimiser state, batch statistics and other model variables, step, RNG key: the pytree of
:class:`jaxalign.training.state.TrainState`) and ``data`` (JSON: the next step the input
pipeline will produce and the sampler's identity, checked on resume). Saves are asynchronous
and atomic (orbax writes to a temporary folder and renames), so a run killed while saving
resumes from the previous complete checkpoint. Multi-process runs: every process calls save and
restore; orbax writes each array once (the primary replica) and coordinates the processes.

Damaged checkpoints (truncated or missing files, arrays of other shapes):
:meth:`Checkpointer.restore_newest` tries the steps newest first, logs one line per checkpoint
that does not restore (its step and the reason), moves those aside to
``WORKDIR/checkpoints_damaged/<step>`` (so the rerun can save that step again) and resumes from
the newest that restores; when none does it raises :class:`CheckpointError` (the CLI exits 2).
A config change that alters the parameter shapes is refused up front
(:func:`check_config_compatible`) with the config key named.

Before orbax restores a checkpoint, :func:`read_every_array` reads each of its arrays with
tensorstore and waits for every read. Orbax restores asynchronously and gives up at the first
failing read, leaving the others in flight; those finish (or are torn down at exit) after the
restore has returned and print dozens of tracebacks ('Event loop is closed', 'Exception ignored
in <coroutine ...>') long after the one line that names the damage. Reading first costs one
more read of the checkpoint on resume and never leaves a read behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp
import tensorstore as ts

log = logging.getLogger('jaxalign.train')
DAMAGED_DIR = 'checkpoints_damaged'
# Config subtrees and keys whose values decide the shapes or the structure of the saved state
# (the model; the optimiser's state; the weights' moving average, kept or not).
SHAPE_KEYS = ('model.', 'optim.optimizer', 'optim.ema_decay')


class CheckpointError(ValueError):
  """No checkpoint of a run can be restored, or the config no longer fits the checkpoints."""


def _one_line(e: BaseException) -> str:
  """The first non-empty line of the innermost cause of an exception (orbax wraps tensorstore's
  precise error, e.g. ``OUT_OF_RANGE: Error reading ... in OCDBT database``, in a generic one
  that spans many lines)."""
  seen = {id(e)}
  while True:
    inner = e.__cause__ or e.__context__
    if inner is None or id(inner) in seen or not str(inner).strip():
      break
    seen.add(id(inner))
    e = inner
  for line in str(e).splitlines():
    if line.strip():
      return f'{type(e).__name__}: {line.strip()[:300]}'
  return type(e).__name__


@contextlib.contextmanager
def quiet_abandoned_reads():
  """Within the block (a restore that may fail), drops the debris of a failed orbax restore,
  which would print dozens of tracebacks.

  A failed restore abandons the reads still in flight. Python reports each of them through one
  of three channels: the read coroutines raise when collected ('Exception ignored in
  <coroutine ...>', an unraisable exception); tasks that failed unobserved are logged by asyncio
  ('Task exception was never retrieved'); and tensorstore reads that finish after orbax closed
  its event loop fail to wake it ('Event loop is closed', unraisable). Inside the block exactly
  those are dropped (errors raised in orbax's code, and the closed loop); the restore's own
  error is the caller's to report. On leaving, the abandoned reads are collected while the
  filters still hold, then the previous hook and the asyncio log come back, so that later
  errors of the process print as usual.
  """
  previous = sys.unraisablehook
  hook = _abandoned_read_filter(previous)
  sys.unraisablehook = hook
  asyncio_log = logging.getLogger('asyncio')
  task_filter = _AbandonedTaskFilter()
  asyncio_log.addFilter(task_filter)
  try:
    yield
  finally:
    gc.collect()
    if sys.unraisablehook is hook:
      sys.unraisablehook = previous
    asyncio_log.removeFilter(task_filter)


def _raised_in_orbax(exc: BaseException | None) -> bool:
  """Whether ``exc`` (or an exception it chains to) was raised in orbax's code."""
  marker = os.sep + 'orbax' + os.sep
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    tb = exc.__traceback__
    while tb is not None:
      if marker in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
    exc = exc.__cause__ or exc.__context__
  return False


def _abandoned_read_filter(previous):
  """An unraisable hook that drops the errors of abandoned orbax reads (raised in orbax's code,
  or 'Event loop is closed') and passes every other one to ``previous``."""
  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
      return
    if _raised_in_orbax(exc):
      return
    previous(unraisable)
  return hook


class _AbandonedTaskFilter(logging.Filter):
  """Drops asyncio's reports of orbax read tasks whose failure nobody awaited."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not _raised_in_orbax(exc)


# The metadata file of an array in orbax's tensorstore layout, and the driver that reads it.
_ZARR_METADATA = {'/.zarray': 'zarr', '/zarr.json': 'zarr3'}


def read_every_array(state_dir: str, roots=None, expected=None) -> None:
  """Reads every array of the orbax (OCDBT) checkpoint item in ``state_dir`` and waits for all
  reads; raises the first read error (tensorstore's ``ValueError``, e.g. ``OUT_OF_RANGE: Error
  reading ... in OCDBT database``) once none is left in flight.

  Args:
    state_dir: the item's folder (``checkpoints/<step>/state``). One without an OCDBT manifest
      is left to orbax (nothing read here).
    roots: only the arrays under these top-level keys (e.g. ``('params', 'model_state')``);
      default all.
    expected: the arrays the item's metadata lists (``'params/cnn1/...'`` paths, as
      :func:`shape_table`); one of them (under ``roots``) missing from the database raises.

  Arrays are read one at a time, whole (every process reads every global array), so memory
  holds at most the largest one.

  Raises:
    ValueError: a read failed, or an expected array is missing (named).
  """
  if not os.path.exists(os.path.join(state_dir, 'manifest.ocdbt')):
    return
  context = ts.Context()     # one open database for every array
  base = {'driver': 'ocdbt', 'base': {'driver': 'file', 'path': os.path.abspath(state_dir)}}
  keys = ts.KvStore.open(base, context=context).result().list().result()
  drivers = {}
  for key in keys:
    key = key.decode()
    for suffix, driver in _ZARR_METADATA.items():
      if key.endswith(suffix):
        drivers[key[:-len(suffix)]] = driver

  def wanted(name):
    return roots is None or any(name == r or name.startswith(r + '.') for r in roots)

  missing = sorted(n for n in (p.replace('/', '.') for p in (expected or ()))
                   if wanted(n) and n not in drivers)
  if missing:
    raise ValueError(f'{state_dir}: {len(missing)} array(s) of the metadata are missing from '
                     f'the database ({", ".join(missing[:3])})')
  for name in sorted(n for n in drivers if wanted(n)):
    # .result() on each future: the read is over (done or failed) before the next starts.
    store = ts.open({'driver': drivers[name], 'kvstore': dict(base, path=name + '/')},
                    open=True, context=context).result()
    store.read().result()


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return '/'.join(parts)


def shape_table(tree) -> dict[str, tuple]:
  """``{'params/cnn1/...': shape}`` of a pytree of arrays, ShapeDtypeStructs or orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): tuple(getattr(x, 'shape', ())) for p, x in leaves}


def shape_differences(saved: dict, wanted: dict, limit: int = 3) -> list[str]:
  """Up to ``limit`` lines 'path: saved (a,) vs now (b,)' (or missing / new entries)."""
  out = []
  for path in sorted(set(saved) | set(wanted)):
    if path not in wanted:
      out.append(f'{path}: in the checkpoint only')
    elif path not in saved:
      out.append(f'{path}: not in the checkpoint')
    elif tuple(saved[path]) != tuple(wanted[path]):
      out.append(f'{path}: saved {tuple(saved[path])} vs now {tuple(wanted[path])}')
    if len(out) >= limit:
      break
  return out


class Checkpointer:
  """Saves and restores training state under ``WORKDIR/checkpoints``.

  ``all_processes``: every process of a multi-process run uses this manager together (the
  trainer: orbax coordinates the saves and restores of the processes). Without it (the
  default, for readers such as the end-of-run evaluation, which process 0 runs alone) the
  manager is this process's own and never waits for the others.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
               all_processes: bool = False):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    kwargs = {}
    if not all_processes and jax.process_count() > 1:
      me = jax.process_index()
      kwargs['multiprocessing_options'] = ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'solo{me}')
    if kwargs:
      os.makedirs(self.directory, exist_ok=True)   # orbax cannot create it for a subset
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not kwargs, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, **kwargs)
    self._solo = bool(kwargs)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of the checkpoints on disk, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    """Saves ``state`` (a pytree of arrays) and ``data_state`` (JSON-able) at ``step``."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def saved_shapes(self, step: int) -> dict[str, tuple] | None:
    """:func:`shape_table` of the state saved at ``step``; None if its metadata is unreadable."""
    try:
      meta = self.manager.item_metadata(step)['state']
    except Exception:  # pylint: disable=broad-except
      return None      # a damaged checkpoint: restore_newest reports it
    return None if meta is None else shape_table(meta)

  def restore(self, abstract_state, step: int | None = None):
    """Restores ``(state, data_state)`` of ``step`` (default: the latest).

    ``abstract_state`` gives the structure, dtypes and shardings (e.g. ``jax.eval_shape`` of
    the initial state with shardings attached).

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the saved arrays have other shapes or another structure than
        ``abstract_state`` (orbax would otherwise pad or truncate them silently).
      Exception: orbax / tensorstore errors of a damaged checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    saved = self.saved_shapes(step)
    if saved is not None:
      diff = shape_differences(saved, shape_table(abstract_state))
      if diff:
        raise ValueError('the saved state does not fit the model: ' + '; '.join(diff))
    read_every_array(os.path.join(self.directory, str(step), 'state'), expected=saved)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    if not isinstance(restored['data'], dict):
      raise ValueError(f'data item is {type(restored["data"]).__name__}, expected a JSON object')
    return restored['state'], restored['data']

  def restore_model(self, abstract_model, step: int | None = None):
    """Restores only the entries of ``abstract_model`` (``step``, ``params``,
    ``model_state``: what inference needs) of ``step`` (default: the latest); the optimiser
    state and the RNG on disk are never read (an orbax partial restore).

    Returns:
      ``(tree, step)``.

    Raises:
      FileNotFoundError: no checkpoint.
      ValueError: the saved arrays do not fit ``abstract_model`` (named).
      Exception: orbax / tensorstore errors of a damaged checkpoint (their debris silenced).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.all_steps():
      raise FileNotFoundError(f'no checkpoint of step {step} in {self.directory} (steps: '
                              f'{self.all_steps()})')
    wanted = shape_table(abstract_model)
    roots = {path.split('/')[0] for path in wanted}
    saved = self.saved_shapes(step)
    if saved is not None:
      diff = shape_differences({k: v for k, v in saved.items() if k.split('/')[0] in roots},
                               wanted)
      if diff:
        raise ValueError('the saved state does not fit the model: ' + '; '.join(diff))
    path = os.path.join(self.directory, str(step), 'state')
    read_every_array(path, roots=sorted(roots), expected=saved)
    with quiet_abandoned_reads(), ocp.PyTreeCheckpointer() as reader:
      tree = reader.restore(path, args=ocp.args.PyTreeRestore(
          item=abstract_model,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_model),
          partial_restore=True))
    return tree, step

  def restore_newest(self, abstract_state):
    """Restores the newest checkpoint that restores: ``(state, data_state, step)``, or None
    when there is no checkpoint.

    Every newer checkpoint that fails is logged in one line (step and reason) and moved to
    ``WORKDIR/checkpoints_damaged/``; a fallback is logged too.

    Raises:
      CheckpointError: there are checkpoints but none restores (the message names the newest
        and its reason).
    """
    steps = self.all_steps()
    if not steps:
      return None
    failed = []
    for step in reversed(steps):
      with quiet_abandoned_reads():
        try:
          state, data_state = self.restore(abstract_state, step)
        except Exception as e:  # pylint: disable=broad-except
          # Any failure (tensorstore, orbax, shape, JSON) means this checkpoint is unusable.
          reason = _one_line(e)
          del e
          state = None
      if state is None:
        log.warning('checkpoint step %d in %s cannot be restored: %s', step, self.directory,
                    reason)
        failed.append((step, reason))
        continue
      if failed:
        log.warning('resuming from step %d, the newest checkpoint that restores (damaged: '
                    'step %s, moved to %s)', step, ', '.join(str(s) for s, _ in failed),
                    os.path.join(self.workdir, DAMAGED_DIR))
        self._set_aside([s for s, _ in failed])
      return state, data_state, step
    newest, reason = failed[0]
    raise CheckpointError(
        f'{self.directory}: no checkpoint can be restored (steps {steps}; the newest, step '
        f'{newest}: {reason}); move the folder away to train from scratch, or use a new '
        '--workdir')

  def _set_aside(self, steps) -> None:
    """Moves damaged step folders out of ``checkpoints/`` (process 0), so that the resumed run
    can save those steps again."""
    if jax.process_index() == 0 or self._solo:
      dest_root = os.path.join(self.workdir, DAMAGED_DIR)
      os.makedirs(dest_root, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if os.path.exists(src):
          dest = os.path.join(dest_root, f'{step}-{int(time.time())}')
          shutil.move(src, dest)
    if jax.process_count() > 1 and not self._solo:
      ocp.multihost.sync_global_processes('jaxalign_checkpoints_set_aside')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def config_changes(workdir: str, config, prefixes=SHAPE_KEYS) -> list[tuple[str, object, object]]:
  """``(key, saved, new)`` for the keys under ``prefixes`` that differ between the run's saved
  ``WORKDIR/config.json`` and ``config`` (empty when there is no saved config)."""
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return []
  new = json.loads(config.to_json_best_effort())

  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f'{prefix}{k}.'))
      else:
        out[f'{prefix}{k}'] = v
    return out

  a, b = flat(saved), flat(new)
  keys = sorted(k for k in set(a) | set(b) if k.startswith(tuple(prefixes)))
  return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def check_config_compatible(ckpt: Checkpointer, workdir: str, config, abstract_state) -> None:
  """Refuses a config whose model no longer fits the run's checkpoints.

  When the newest readable checkpoint's saved shapes differ from ``abstract_state`` and the
  shape-relevant keys (:data:`SHAPE_KEYS`: ``model.*``, ``optim.optimizer``,
  ``optim.ema_decay``) differ from ``WORKDIR/config.json``, the change is named.

  Raises:
    CheckpointError: naming ``config.<key>`` (saved and new value) and the workdir.
  """
  changes = config_changes(workdir, config)
  if not changes:
    return
  wanted = shape_table(abstract_state)
  for step in reversed(ckpt.all_steps()):
    saved = ckpt.saved_shapes(step)
    if saved is None:
      continue          # unreadable: restore_newest reports it
    diff = shape_differences(saved, wanted, limit=1)
    if not diff:
      return
    names = ', '.join(f'config.{k} ({old!r} -> {new!r})' for k, old, new in changes)
    raise CheckpointError(
        f'{workdir}: {names} changes the saved state\'s shapes or structure ({diff[0]}), so the '
        f'checkpoints of step {step} and before cannot be resumed; use a new --workdir or '
        'restore the old value')


def abstract_with_shardings(state, sharding):
  """``jax.ShapeDtypeStruct`` leaves of ``state`` carrying ``sharding`` (restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
