"""Data parallelism: one named mesh over every device, axis ``'data'``.

The training state is replicated (``P()``), batches are sharded on their leading axis
(``P('data')``); the jitted step then computes with global batch semantics (BatchNorm statistics
and the loss are over the whole global batch) and XLA inserts the gradient all-reduce.
Multi-process: every process builds the same mesh over ``jax.devices()`` (process-major order)
and feeds its contiguous slice of the global batch (:func:`shard_batch`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


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
