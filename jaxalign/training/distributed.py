"""Multi-process runs: ``jax.distributed.initialize`` from the config.

JAX's multi-controller model runs one Python process per host (or per group of devices); each
process runs the same program, sees its own devices as local and every process's devices as
global. The config keys:

- ``distributed``: True to start the distributed runtime. With nothing else set, JAX detects
  the cluster itself (SLURM, Cloud TPU pods, Open MPI: the launcher's environment variables).
- ``coordinator_address`` (``'host:port'`` of process 0), ``num_processes``, ``process_id``:
  for launches without such a manager (e.g. two processes on one machine). Setting any of them
  implies ``distributed``; unset ones are left to the auto-detection.

On the CPU, cross-process collectives (the gradient all-reduce) need XLA's CPU collectives
library; this module selects gloo (``jax_cpu_collectives_implementation``) before the runtime
starts, unless another implementation was chosen.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger('jaxalign.train')


def requested(config) -> bool:
  """True when the config asks for a multi-process run (any of the keys set)."""
  return bool(config.distributed or config.coordinator_address
              or int(config.num_processes or 0) > 0 or int(config.process_id) >= 0)


def initialize_args(config) -> dict:
  """The keyword arguments for ``jax.distributed.initialize`` (unset keys left out).

  Raises:
    ValueError: naming the key, for a malformed address, count or id.
  """
  address = str(config.coordinator_address or '')
  num = config.num_processes
  pid = config.process_id
  if address:
    host, sep, port = address.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f'config.coordinator_address: {address!r} is not host:port '
                       '(e.g. 127.0.0.1:12345)')
  if not isinstance(num, int) or num < 0:
    raise ValueError(f'config.num_processes: must be a non-negative integer (0 = auto), '
                     f'got {num!r}')
  if not isinstance(pid, int) or pid < -1:
    raise ValueError(f'config.process_id: must be an integer >= 0 (-1 = auto), got {pid!r}')
  if num and pid >= num:
    raise ValueError(f'config.process_id: {pid} is not below config.num_processes={num}')
  args = {}
  if address:
    args['coordinator_address'] = address
  if num:
    args['num_processes'] = num
  if pid >= 0:
    args['process_id'] = pid
  return args


def initialize(config) -> bool:
  """Starts JAX's distributed runtime when the config asks for it; returns whether it runs.

  Must run before any JAX computation. Calling it again (tests train several times in one
  process) is a no-op.

  Raises:
    ValueError: a malformed ``coordinator_address`` / ``num_processes`` / ``process_id``, or
      the runtime could not start (the message names the address).
  """
  if not requested(config):
    return False
  if jax.distributed.is_initialized():
    return True
  args = initialize_args(config)
  if jax.config.jax_cpu_collectives_implementation in (None, '', 'none'):
    # Without a CPU collectives library a multi-process CPU computation fails at compile time.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  timeout = int(config.distributed_timeout_s)
  try:
    jax.distributed.initialize(initialization_timeout=timeout, **args)
  except (RuntimeError, ValueError) as e:
    # XLA's errors are multi-line status dumps; the first line says what went wrong.
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = args.get('coordinator_address', 'the auto-detected cluster')
    raise ValueError(f'config.coordinator_address: cannot start the distributed runtime with '
                     f'{where} ({first})') from None
  log.info('process %d of %d, %d local / %d global devices', jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def sync(name: str, timeout_s: int) -> None:
  """Waits until every process reaches ``name``, then builds the CPU collectives' context.

  The wait is the coordination service's barrier (up to ``timeout_s`` seconds). The tiny
  all-process collective after it makes gloo build its context while the processes are in
  step: gloo gives its first collective only 30 s for every process to arrive, which a loaded
  host misses when one process starts slowly (seen in CI, at orbax's first barrier). A no-op
  in a one-process run.
  """
  if jax.process_count() == 1:
    return
  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils
  from orbax.checkpoint import multihost
  multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s) * 1000)
  multihost_utils.sync_global_devices(name)
