"""``config.init_from=RUN_DIR``: a model starts from a trained run's weights (fine-tuning, the
synthetic pretraining of real-face runs), keeping its own constants (mean shape, canonical)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxalign.models import resnet
from jaxalign.training import config as config_lib
from jaxalign.training import runs
from jaxalign.training import state as state_lib


def _arrays(model, kind):
  return {path: np.asarray(v[...]) for path, v in nnx.iter_graph(model) if isinstance(v, kind)}


def _fresh(smoke_run, seed=7, **model_keys):
  config = config_lib.load_run_config(str(smoke_run))
  for key, value in model_keys.items():
    config.model[key] = value
  return state_lib.create_model(config, seed=seed), config


def test_copies_every_parameter_and_statistic_and_keeps_the_constants(smoke_run):
  source, _, _ = runs.restore_model(str(smoke_run))
  model, _ = _fresh(smoke_run)
  constants = _arrays(model, resnet.ModelConstant)
  before = _arrays(model, nnx.Param)
  copied, skipped = runs.init_from_run(model, str(smoke_run))
  assert skipped == []
  have, want = _arrays(model, nnx.Param), _arrays(source, nnx.Param)
  assert len(copied) == len(want) + len(_arrays(source, nnx.BatchStat))
  assert have.keys() == want.keys()
  for path in want:
    np.testing.assert_array_equal(have[path], want[path], err_msg=str(path))
  # A fresh initialisation with another seed differs, so the copy did something.
  assert any(not np.array_equal(before[p], want[p]) for p in want)
  for path, stats in _arrays(source, nnx.BatchStat).items():
    np.testing.assert_array_equal(_arrays(model, nnx.BatchStat)[path], stats)
  for path, value in _arrays(model, resnet.ModelConstant).items():
    np.testing.assert_array_equal(value, constants[path], err_msg=str(path))


def test_heads_of_another_landmark_scheme_are_skipped(smoke_run):
  model, _ = _fresh(smoke_run, scheme='aflw19')
  copied, skipped = runs.init_from_run(model, str(smoke_run))
  assert skipped and all('head' in name for name in skipped)
  assert any('backbone' in name for name in copied)


def test_a_pooled_run_starts_a_heatmap_model_on_its_backbone(smoke_run, tmp_path):
  """``model.head='heatmap'`` from a pooled run: the backbones are copied, the heatmap heads
  start fresh (reported as skipped), so the model starts at its own mean shape; a training step
  from there moves the heads and the backbones."""
  import jax.numpy as jnp
  from jaxalign import workflow
  source, _, _ = runs.restore_model(str(smoke_run))
  model, _ = _fresh(smoke_run, head='heatmap')
  copied, skipped = runs.init_from_run(model, str(smoke_run))
  assert skipped and all('heatmap' in name for name in skipped)
  assert {'cnn1.heatmap.logits.kernel', 'cnn2.heatmap.offsets.bias'} <= set(skipped)
  assert not any('heatmap' in name for name in copied)
  have, want = _arrays(model, nnx.Param), _arrays(source, nnx.Param)
  backbone = [p for p in want if 'backbone' in p]
  assert backbone
  for path in backbone:
    np.testing.assert_array_equal(have[path], want[path], err_msg=str(path))
  model.eval()
  size = model.image_size
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)), jnp.float32)
  np.testing.assert_allclose(model.cnn1(images), np.broadcast_to(
      model.cnn1.mean_shape[...], (2,) + model.cnn1.mean_shape.shape), atol=1e-3)
  # Fine-tuned from the pooled run for two steps: the zero-started outputs and the backbone move.
  config = config_lib.load_run_config(str(smoke_run))
  config.model.head = 'heatmap'
  config.init_from = str(smoke_run)
  config.num_steps = 2
  config.checkpoint_every = 2
  config.eval.enabled = False
  workflow.train_and_evaluate(config, str(tmp_path / 'run'))
  tuned, _, step = runs.restore_model(str(tmp_path / 'run'))
  assert step == 2
  trained = _arrays(tuned, nnx.Param)
  for net in ('cnn1', 'cnn2'):
    assert np.abs(trained[(net, 'heatmap', 'logits', 'kernel')]).max() > 0
    assert np.abs(trained[(net, 'heatmap', 'offsets', 'kernel')]).max() > 0
  assert any(not np.array_equal(trained[p], want[p]) for p in backbone)
  assert all(np.all(np.isfinite(v)) for v in trained.values())


def test_heatmap_heads_copy_at_their_stride_and_start_fresh_at_another(smoke_run):
  """A heatmap model starts another at the same ``model.heatmap_stride`` whole; at another
  stride (which reads other stages) its heads start fresh on the copied backbones."""
  source, _ = _fresh(smoke_run, seed=1, head='heatmap')
  same, _ = _fresh(smoke_run, seed=2, head='heatmap')
  copied, skipped = runs.init_from_model(same, source)
  assert skipped == [] and 'cnn1.heatmap.logits.kernel' in copied
  finer, _ = _fresh(smoke_run, seed=2, head='heatmap', heatmap_stride=4)
  copied, skipped = runs.init_from_model(finer, source)
  assert skipped and all('heatmap' in name for name in skipped)
  assert 'cnn1.heatmap.smooth.kernel' in skipped
  assert not any('heatmap' in name for name in copied) and any('backbone' in n for n in copied)
  # The reverse: a pooled model from a heatmap run keeps its fresh linear heads.
  pooled, _ = _fresh(smoke_run, seed=2)
  copied, skipped = runs.init_from_model(pooled, source)
  assert {'cnn1.head.kernel', 'cnn2.head.bias'} <= set(skipped)
  assert all('head' in name for name in skipped) and any('backbone' in n for n in copied)


def test_pooled_heads_start_grid_heads_with_the_same_outputs(smoke_run):
  """A run with pooled heads starts a ``model.head='flatten'`` model as the grid heads that
  give the same points (every cell's kernel block the pooled kernel / G), so the fine-tuning
  starts where the run stopped."""
  import jax.numpy as jnp
  source, _, _ = runs.restore_model(str(smoke_run))
  model, _ = _fresh(smoke_run, head='flatten', input_size=64)   # a 2 x 2 grid
  assert model.cnn1.backbone.feature_grid(model.image_size) == 2
  copied, skipped = runs.init_from_run(model, str(smoke_run))
  assert skipped == [] and {'cnn1.head.kernel', 'cnn2.head.kernel'} <= set(copied)
  assert model.cnn1.head.kernel.shape[0] == 4 * source.cnn1.head.kernel.shape[0]
  pooled, _ = _fresh(smoke_run, input_size=64)      # the source's pooled heads, at 64 px
  runs.init_from_run(pooled, str(smoke_run))
  for net in ('cnn1', 'cnn2'):
    getattr(model, net).mean_shape[...] = getattr(pooled, net).mean_shape[...]
  model.eval()
  pooled.eval()
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)), jnp.float32)
  for net in ('cnn1', 'cnn2'):
    np.testing.assert_allclose(getattr(model, net)(images), getattr(pooled, net)(images),
                               atol=1e-3)


def test_pooled_to_grid_kernel_layout():
  """Cell k of the flattened (G, G, C) map holds rows k * C .. (k + 1) * C of the kernel."""
  kernel = np.arange(6, dtype=np.float32).reshape(3, 2)
  grid = resnet.pooled_to_grid_kernel(kernel, 2)
  assert grid.shape == (12, 2)
  for k in range(4):
    np.testing.assert_array_equal(grid[3 * k:3 * (k + 1)], kernel / 2)
  fmap = np.random.default_rng(1).normal(size=(5, 2, 2, 3)).astype(np.float32)
  np.testing.assert_allclose((fmap.reshape(5, -1) / 2) @ grid, fmap.mean(axis=(1, 2)) @ kernel,
                             rtol=1e-5, atol=1e-5)


def test_another_architecture_is_refused_by_name(smoke_run):
  model, _ = _fresh(smoke_run, kind='plain')
  with pytest.raises(ValueError, match='init_from=.*lacks'):
    runs.init_from_run(model, str(smoke_run))


def test_a_folder_without_a_run_is_refused(smoke_run, tmp_path):
  assert runs.is_run_dir(str(smoke_run))
  assert not runs.is_run_dir(str(tmp_path))
  model, _ = _fresh(smoke_run)
  with pytest.raises(FileNotFoundError):
    runs.init_from_run(model, str(tmp_path))


def test_training_starts_from_the_run(smoke_run, tmp_path):
  """``train`` with init_from=RUN: after one step at a tiny rate the convolutions are the run's."""
  from jaxalign import workflow
  config = config_lib.load_run_config(str(smoke_run))
  config.init_from = str(smoke_run)
  config.seed = 5
  config.num_steps = 1
  config.checkpoint_every = 1
  config.optim.learning_rate = 1e-12
  config.optim.final_learning_rate = 1e-12
  config.optim.weight_decay = 0.0
  workflow.train_and_evaluate(config, str(tmp_path / 'run'))
  tuned, _, step = runs.restore_model(str(tmp_path / 'run'))
  source, _, _ = runs.restore_model(str(smoke_run))
  assert step == 1
  have, want = _arrays(tuned, nnx.Param), _arrays(source, nnx.Param)
  for path in want:
    np.testing.assert_allclose(have[path], want[path], atol=1e-6, err_msg=str(path))
  assert jax.tree.leaves(want)


def test_the_pretraining_stage_runs_first_and_starts_the_run(smoke_run, tmp_path, monkeypatch,
                                                             sfm_dir):
  """``pretrain.config``: one command trains the stage into WORKDIR/pretrain, then the run from
  its weights; a rerun does not train the stage again."""
  from jaxalign import workflow
  from jaxalign.training import trainer
  config = config_lib.load_run_config(str(smoke_run))
  config.pretrain.config = 'configs/smoke.py'     # synthetic faces, resolved from the checkout
  config.pretrain.num_steps = 2
  config.model.kind = 'plain'      # smoke.py is pose-aware: the stage takes the run's kind
  config.model.head = 'flatten'    # ... and its heads
  config.model.heatmap_stride = 16   # (copied whatever the head)
  config.num_steps = 1
  config.checkpoint_every = 1
  config.optim.learning_rate = 1e-12
  config.optim.final_learning_rate = 1e-12
  config.optim.weight_decay = 0.0
  config.eval.enabled = False
  workdir = tmp_path / 'run'
  calls = []
  real_train = trainer.train
  monkeypatch.setattr(trainer, 'train', lambda c, w: calls.append(w) or real_train(c, w))
  workflow.train_and_evaluate(config, str(workdir))
  stage = workdir / 'pretrain'
  assert calls == [str(stage), str(workdir)]
  assert trainer.finished_steps(str(stage)) == 2
  stage_config = config_lib.load_run_config(str(stage))
  assert stage_config.data.synthetic.enabled and stage_config.model.kind == 'plain'
  assert stage_config.model.head == 'flatten' and stage_config.model.heatmap_stride == 16
  # The stage's piecewise decays keep their fraction of its (overridden) length.
  smoke = config_lib.load_config_file('configs/smoke.py')
  assert stage_config.optim.schedule == 'piecewise'
  assert stage_config.optim.decay_steps == round(smoke.optim.decay_steps * 2 / smoke.num_steps)
  tuned, _, _ = runs.restore_model(str(workdir))
  pretrained, _, _ = runs.restore_model(str(stage))
  have, want = _arrays(tuned, nnx.Param), _arrays(pretrained, nnx.Param)
  for path in want:
    np.testing.assert_allclose(have[path], want[path], atol=1e-6, err_msg=str(path))
  # The run's own constants: its mean shape comes from its own training faces.
  mean = [p for p in _arrays(tuned, resnet.ModelConstant) if p[-1] == 'mean_shape']
  assert mean
  assert not np.allclose(_arrays(tuned, resnet.ModelConstant)[mean[0]],
                         _arrays(pretrained, resnet.ModelConstant)[mean[0]])
  calls.clear()
  config.num_steps = 2
  workflow.train_and_evaluate(config, str(workdir))      # resumes the run, not the stage
  assert calls == [str(workdir)]


def test_stretch_schedule_keeps_the_decays_at_their_fractions():
  """``pretrain.num_steps``: a piecewise schedule's decays stretch with the length (a
  1,500-step stage with a decay at 1,000, run for 3,000 steps, decays at 2,000, not at 1,000
  and then 2,000 steps at the floor); a cosine schedule already spans ``num_steps``."""
  from jaxalign import workflow
  from jaxalign.training import optim
  config = config_lib.load_config_file('configs/default.py')
  rates = optim.learning_rate_schedule(config)
  workflow.stretch_schedule(config, 2 * config.num_steps)
  stretched = optim.learning_rate_schedule(config)
  assert config.optim.schedule == 'piecewise'
  for step in (0, 400, 999, 1000, 1400):
    assert float(stretched(2 * step)) == pytest.approx(float(rates(step)))
  cosine = config_lib.base_config()
  cosine.optim.schedule = 'cosine'
  before = cosine.optim.decay_steps
  workflow.stretch_schedule(cosine, 1234)
  assert cosine.num_steps == 1234 and cosine.optim.decay_steps == before


@pytest.mark.parametrize('change, key', [
    (dict(init_from='runs/x'), 'config.pretrain.config'),
    (dict(pretrain_config='configs/nope.py'), 'config.pretrain.config'),
    (dict(pretrain_steps=-1), 'config.pretrain.num_steps'),
])
def test_bad_pretraining_settings_are_named(change, key):
  config = config_lib.base_config()
  config.pretrain.config = change.get('pretrain_config', 'configs/smoke.py')
  config.pretrain.num_steps = change.get('pretrain_steps', 0)
  config.init_from = change.get('init_from', '')
  with pytest.raises(ValueError, match=key):
    config_lib.validate_pretrain(config)


def test_only_a_pooled_head_is_converted_to_a_grid_head():
  """The kernel of a grid head (G1 * G1 * C rows) never passes for a pooled one (C rows), even
  when a larger grid (G2 * G2 * C) is a whole multiple of it: such a head is skipped."""
  c, k = 32, 10
  path = ('cnn1', 'head', 'kernel')
  assert runs._pooled_head_grid(path, (c, k), (4 * c, k), c) == 2
  assert runs._pooled_head_grid(path, (c, k), (16 * c, k), c) == 4
  assert runs._pooled_head_grid(path, (4 * c, k), (16 * c, k), c) == 0   # 2 x 2 grid -> 4 x 4
  assert runs._pooled_head_grid(path, (c, k), (4 * c, k + 2), c) == 0    # other points
  assert runs._pooled_head_grid(('cnn1', 'head', 'bias'), (c,), (4 * c,), c) == 0


def test_a_narrower_run_starts_a_wider_model_with_the_same_outputs(smoke_run):
  """``model.width`` 4 -> 8 for CNN1 (ResNet-18 topology; CNN2 stays at 4 by
  ``model.cnn2_width``): the wider network starts computing the narrower one's points, in
  inference and in training mode (batch statistics), and its new channels are not dead (fresh
  incoming weights, outgoing weights zero but trainable)."""
  import jax.numpy as jnp
  narrow, _ = _fresh(smoke_run, seed=3, depth='18', width=4, input_size=32)
  wide, _ = _fresh(smoke_run, seed=5, depth='18', width=8, cnn2_width=4, input_size=32)
  assert wide.cnn2.backbone.conv1.kernel.shape[-1] == 4
  assert narrow.cnn2.backbone.conv1.kernel.shape[-1] == 4
  copied, skipped = runs.init_from_model(wide, narrow)
  assert skipped == [] and len(copied) == len(_arrays(wide, nnx.Param)) + len(
      _arrays(wide, nnx.BatchStat))
  for net in ('cnn1', 'cnn2'):
    getattr(wide, net).mean_shape[...] = getattr(narrow, net).mean_shape[...]
  stem = wide.cnn1.backbone.conv1.kernel[...]
  assert stem.shape[-1] == 8
  assert np.abs(np.asarray(stem[..., 4:])).sum() > 0          # fresh, not zero
  assert np.abs(np.asarray(wide.cnn1.head.kernel[...])[32:]).sum() == 0
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)), jnp.float32)
  for mode in ('eval', 'train'):
    getattr(wide, mode)()
    getattr(narrow, mode)()
    for net in ('cnn1', 'cnn2'):
      np.testing.assert_allclose(getattr(wide, net)(images), getattr(narrow, net)(images),
                                 atol=1e-3, err_msg=f'{net} in {mode} mode')
  # The new channels learn: the head's zero rows (the new features' outgoing weights) get a
  # gradient at the first step.
  wide.train()
  grads = nnx.grad(lambda m: jnp.sum(m.cnn1(images) ** 2))(wide)
  assert np.abs(np.asarray(grads.cnn1.head.kernel[...])[32:]).sum() > 0
  # A wider run cannot start a narrower model, and the error names the variable.
  with pytest.raises(ValueError, match=r'shape .*architectures differ'):
    runs.init_from_model(narrow, wide, 'the wide run')


def test_widened_layout():
  have = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)          # (kh, kw, cin, cout)
  fresh = np.full((1, 1, 4, 5), 7.0, np.float32)
  out = runs.widened(have, fresh)
  np.testing.assert_array_equal(out[..., :2, :3], have)
  np.testing.assert_array_equal(out[..., 2:, :], 0)                   # new inputs: zero
  np.testing.assert_array_equal(out[..., :2, 3:], 7)                  # new outputs: fresh
  np.testing.assert_array_equal(runs.widened(np.ones(3), np.zeros(5)), [1, 1, 1, 0, 0])
  assert runs.widened(np.ones((2, 3)), np.ones((1, 5))) is None       # an axis shrinks
  assert runs.widened(np.ones(3), np.ones((3, 1))) is None            # another rank


def test_a_run_without_the_mirror_offset_starts_a_model_with_it(smoke_run):
  """``model.cnn2_mirror_offset``: a run that did not learn one starts the model's networks and
  leaves its offset at zero (fresh); one that did copies it."""
  source, _ = _fresh(smoke_run, seed=1)
  model, _ = _fresh(smoke_run, seed=2, cnn2_mirror_offset=True)
  copied, skipped = runs.init_from_model(model, source)
  assert skipped == ['mirror_offset'] and any('cnn2' in name for name in copied)
  assert not np.asarray(model.mirror_offset[...]).any()
  model.mirror_offset[...] = model.mirror_offset[...] + 0.5
  again, _ = _fresh(smoke_run, seed=3, cnn2_mirror_offset=True)
  copied, skipped = runs.init_from_model(again, model)
  assert skipped == [] and 'mirror_offset' in copied
  np.testing.assert_array_equal(np.asarray(again.mirror_offset[...]), 0.5)
