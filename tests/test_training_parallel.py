"""Data parallelism: the same step on 1 and on 8 simulated CPU devices agrees.

JAX fixes its device count when it starts, so the check runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``; it compares a 1-device mesh and an
8-device mesh in that process.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import os
    import numpy as np
    import jax
    assert jax.device_count() == 8, jax.devices()
    from jaxalign.training import config as config_lib, mesh as mesh_lib, optim, state as st
    from jaxalign.training import step as step_lib
    from jaxalign.data import pipeline

    c = config_lib.base_config()
    c.batch_size = 16
    c.model.depth = 'tiny'
    c.model.input_size = 32
    c.optim.learning_rate = 1.0     # first SGD step with momentum and no decay: -grad
    c.optim.weight_decay = 0.0
    c.optim.schedule = 'constant'
    spec = pipeline.CropSpec.from_config(c)
    rng = np.random.default_rng(0)
    s = spec.crop_size
    yy, xx = np.mgrid[0:s, 0:s]
    image = (127 + 100 * np.sin(xx[..., None] / 3.0 + yy[..., None] / 5.0 + np.arange(3)))
    batch = {'image': np.clip(image[None] + rng.normal(0, 20, (16, s, s, 3)), 0, 255
                              ).astype(np.uint8),
             'points': rng.uniform(8, 32, (16, 68, 2)).astype(np.float32),
             'box': np.tile(pipeline.crop_box(spec), (16, 1))}
    tx, schedule = optim.make_optimizer(c), optim.learning_rate_schedule(c)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
      model = st.create_model(c, seed=0)
      defs, params, model_state = st.split_model(model)
      mesh = mesh_lib.make_mesh(devices)
      train_step = step_lib.compile_step(defs, tx, schedule, c, mesh)
      # Host copy taken before placement: a numpy view of a device buffer would block donation.
      p0 = jax.tree.map(np.array, jax.device_get(params))
      state = mesh_lib.replicate(st.init_state(params, model_state, tx, 0), mesh)
      dev_batch = step_lib.device_batch(batch, mesh)
      assert len(dev_batch['image'].sharding.device_set) == len(devices)
      new, metrics = train_step(state, dev_batch)
      if len(devices) == 8:
        assert all(x.is_deleted() for x in jax.tree.leaves(state['params'])), 'not donated'
      grads = jax.tree.map(lambda a, b: a - b, p0, jax.device_get(new['params']))
      stats = jax.tree.map(np.array, jax.device_get(new['model_state']))
      results.append((float(metrics['loss']), grads, stats))
      if len(devices) == 8:   # a second step reuses the compiled program
        train_step(new, step_lib.device_batch(batch, mesh))
        assert train_step._cache_size() == 1, train_step._cache_size()
    (l1, g1, b1), (l8, g8, b8) = results
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for name, a, b in (('grads', g1, g8), ('batch stats', b1, b8)):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = max(float(np.abs(x).max()), 1e-6)
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * scale, err_msg=name)
    print('OK', l1, l8)
''')


def test_one_vs_eight_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert 'OK' in proc.stdout
