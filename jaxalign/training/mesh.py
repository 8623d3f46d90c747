"""Data parallelism: one named mesh over every device, axis ``'data'``.

The training state is replicated (``P()``), batches are sharded on their leading axis
(``P('data')``); the jitted step then computes with global batch semantics (BatchNorm statistics
and the loss are over the whole global batch) and XLA inserts the gradient all-reduce.
Multi-process: every process builds the same mesh over ``jax.devices()`` (process-major order)
and feeds its contiguous slice of the global batch (:func:`shard_batch`).
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxalign.training import distributed

DATA_AXIS = 'data'


def host_cores() -> int:
  """The cores this process may run on (XLA's CPU client sizes its thread pool to them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # not Linux
    return os.cpu_count() or 1


def cpu_device_count(requested: int, batch_size: int, cores: int) -> int:
  """How many CPU devices ``config.cpu_devices`` asks for: ``requested`` if > 0, else (auto)
  the largest count <= ``cores`` that divides ``batch_size`` (the global batch is sharded
  evenly), at least 1.

  Raises:
    ValueError: a negative ``requested``.
  """
  if requested < 0:
    raise ValueError(f'config.cpu_devices: must be >= 0 (0 = one per core), got {requested}')
  if requested:
    return requested
  return max([n for n in range(1, max(cores, 1) + 1) if batch_size % n == 0] or [1])


def configure_cpu_devices(config) -> int | None:
  """Splits the host's CPU cores into ``config.cpu_devices`` JAX devices (0 = one per core).

  On a CPU, XLA parallelises one device's program over the cores only inside large ops; the
  small convolutions of the embedded default leave a core idle, while one device per core runs
  the data-parallel shards side by side (measured in ``docs/benchmarks.md``). The devices only
  matter where the CPU is the default backend (with a GPU, ``jax.devices()`` are the GPUs).

  Must run before JAX starts its backends. Leaves the count alone (returns None) in a
  multi-process run, when ``jax_num_cpu_devices`` or XLA_FLAGS'
  ``--xla_force_host_platform_device_count`` already choose it, or when the backends are
  already up (a second run in one process). Returns the count it set.
  """
  requested = int(config.cpu_devices or 0)
  n = cpu_device_count(requested, int(config.batch_size), host_cores())
  if (distributed.requested(config) or jax.config.jax_num_cpu_devices >= 0
      or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')):
    return None
  try:
    jax.config.update('jax_num_cpu_devices', n)
  except RuntimeError:      # the backends are already initialised
    return None
  return n


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every host).

  Devices are ordered by process, so process ``p`` of ``P`` holds the rows
  ``[p B / P, (p + 1) B / P)`` of a global batch of ``B``: the slice its input pipeline loads
  (:class:`jaxalign.data.pipeline.TrainBatches`), making the global batch the same for any
  number of processes.
  """
  devices = sorted(jax.devices() if devices is None else devices,
                   key=lambda d: (d.process_index, d.id))
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: dict, mesh) -> dict:
  """Host numpy batch (this process's rows) -> global arrays sharded on ``'data'``.

  Scalars (per-batch counters) are replicated.
  """
  sharded, rep = data_sharded(mesh), replicated(mesh)

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      return jax.device_put(x, rep)
    return jax.make_array_from_process_local_data(sharded, x)

  return jax.tree.map(put, batch)


def replicate(tree, mesh):
  """Places every leaf of ``tree`` on every device of ``mesh``.

  Multi-process: every process passes the same values (built from the same seed). They are
  placed with ``make_array_from_process_local_data``, because ``device_put``'s check that the
  processes agree compares with ``==`` and fails on the NaN entries some model constants hold.
  """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
