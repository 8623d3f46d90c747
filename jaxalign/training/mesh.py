"""Data parallelism: one named mesh over every device, axis ``'data'``.

The training state is replicated (``P()``), batches are sharded on their leading axis
(``P('data')``); the jitted step then computes with global batch semantics (BatchNorm statistics
and the loss are over the whole global batch) and XLA inserts the gradient all-reduce.
Multi-host: every process builds the same mesh over ``jax.devices()`` and feeds its local
slice of the batch (:func:`shard_batch`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every host)."""
  devices = list(jax.devices() if devices is None else devices)
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
  """Places every leaf of ``tree`` on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))
