"""``optim.ema_decay``: a moving average of the weights, trained beside them and restored in
their place wherever a run's model is loaded (evaluation, ``init_from``)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.training import config as config_lib
from jaxalign.training import runs
from jaxalign.training import state as state_lib

from conftest import smoke_config, write_faces


def test_update_ema_mixes_floats_with_the_warmed_up_decay_and_keeps_integers():
  ema = {'params': {'w': jnp.array([1.0, 2.0])}, 'model_state': {'n': jnp.array(3)}}
  new_params, new_state = {'w': jnp.array([3.0, 6.0])}, {'n': jnp.array(4)}
  # Step 0: the warm-up caps the decay at 1 / 10.
  out = state_lib.update_ema(ema, new_params, new_state, 0.999, 0)
  np.testing.assert_allclose(out['params']['w'], 0.1 * np.array([1, 2]) + 0.9 * np.array([3, 6]),
                             rtol=1e-6)
  assert int(out['model_state']['n']) == 4
  # Late in training the configured decay holds.
  out = state_lib.update_ema(ema, new_params, new_state, 0.5, 10_000)
  np.testing.assert_allclose(out['params']['w'], [2.0, 4.0], rtol=1e-6)


def test_bad_ema_decay_is_refused_by_name():
  c = config_lib.base_config()
  c.data.train_dir = '/somewhere'
  for bad in (-0.1, 1.0, float('nan')):
    c.optim.ema_decay = bad
    with pytest.raises(ValueError, match='optim.ema_decay'):
      config_lib.validate(c, 1)
  c.optim.ema_decay = 0.99
  config_lib.validate(c, 1)


def _params(model):
  return {p: np.asarray(v[...]) for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}


def test_a_run_with_ema_is_restored_as_its_average(tmp_path):
  from jaxalign import workflow
  write_faces(tmp_path / 'train', 16, 0)
  config = smoke_config(tmp_path / 'train', num_steps=3)
  config.optim.ema_decay = 0.9
  config.model.cnn1_mirror_offset = True
  workdir = str(tmp_path / 'run')
  workflow.train_and_evaluate(config, workdir)

  averaged, saved, step = runs.restore_model(workdir)
  assert step == 3 and saved.optim.ema_decay == 0.9
  raw_config = config_lib.load_run_config(workdir)
  raw_config.optim.ema_decay = 0.0       # the same checkpoint read without its average
  raw, _, _ = runs.restore_model(workdir, config=raw_config)
  fresh = state_lib.create_model(saved, seed=int(saved.seed))
  a, r, f = _params(averaged), _params(raw), _params(fresh)
  assert a.keys() == r.keys()
  moved = [p for p in r if not np.allclose(r[p], f[p])]
  assert moved, 'training moved no weight'
  # The average lags the weights: it differs from them, and lies between the start and them
  # (with a decay below 1 every weight's average is a convex mix of its past values).
  assert any(not np.allclose(a[p], r[p]) for p in moved)
  # A model started from the run (init_from) takes the average too.
  model = state_lib.create_model(saved, seed=5)
  runs.init_from_run(model, workdir)
  for path, value in _params(model).items():
    np.testing.assert_array_equal(value, a[path], err_msg=str(path))
  # A model of another landmark scheme starts its mirror offset fresh (it is per point) and
  # its heads too.
  other = config_lib.load_run_config(workdir)
  other.model.scheme = 'aflw19'
  _, skipped = runs.init_from_run(state_lib.create_model(other, seed=5), workdir)
  assert 'cnn1_mirror_offset' in skipped


def test_resuming_with_the_average_switched_is_refused_by_name(tmp_path):
  """A run resumed with ``optim.ema_decay`` switched on has another state structure: the change
  is named and the checkpoint stays where it is (switching it off is the same key's check)."""
  from jaxalign import workflow
  from jaxalign.training import checkpointing
  write_faces(tmp_path / 'train', 16, 0)
  workdir = str(tmp_path / 'run')
  workflow.train_and_evaluate(smoke_config(tmp_path / 'train', num_steps=2), workdir)
  config = smoke_config(tmp_path / 'train', num_steps=4)
  config.optim.ema_decay = 0.9
  changed = r'config\.optim\.ema_decay \(0\.0 -> 0\.9\)'
  with pytest.raises(checkpointing.CheckpointError, match=changed):
    workflow.train_and_evaluate(config, workdir)
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()
