"""Orbax checkpoints of the whole training state and the data position.

Each checkpoint ``WORKDIR/checkpoints/<step>/`` holds two items: ``state`` (parameters,
optimiser state, batch statistics and other model variables, step, RNG key: the pytree of
:class:`jaxalign.training.state.TrainState`) and ``data`` (JSON: the next step the input
pipeline will produce and the sampler's identity, checked on resume). Saves are asynchronous
and atomic (orbax writes to a temporary folder and renames), so a run killed while saving
resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores training state under ``WORKDIR/checkpoints``."""

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'data'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    """Saves ``state`` (a pytree of arrays) and ``data_state`` (JSON-able) at ``step``."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, abstract_state, step: int | None = None):
    """Restores ``(state, data_state)`` of ``step`` (default: the latest).

    ``abstract_state`` gives the structure, dtypes and shardings (e.g. ``jax.eval_shape`` of
    the initial state with shardings attached).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(state, sharding):
  """``jax.ShapeDtypeStruct`` leaves of ``state`` carrying ``sharding`` (restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
