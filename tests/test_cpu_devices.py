"""config.cpu_devices: the host's cores as JAX devices (jaxalign.training.mesh)."""

import os
import subprocess
import sys

import pytest

from jaxalign.training import mesh


def test_cpu_device_count():
  assert mesh.cpu_device_count(0, 32, 2) == 2          # auto: one per core
  assert mesh.cpu_device_count(0, 32, 6) == 4          # ... as many as divide the batch
  assert mesh.cpu_device_count(0, 7, 4) == 1
  assert mesh.cpu_device_count(3, 32, 2) == 3          # explicit (validate checks the batch)
  with pytest.raises(ValueError, match='config.cpu_devices'):
    mesh.cpu_device_count(-1, 32, 2)


_PROBE = '''
import jax
from jaxalign.training import config as config_lib, mesh
c = config_lib.base_config()
c.cpu_devices, c.batch_size = %d, 8
print(mesh.configure_cpu_devices(c), jax.device_count())
'''


def _probe(requested, xla_flags):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  env['JAX_PLATFORMS'] = 'cpu'
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  out = subprocess.run([sys.executable, '-c', _PROBE % requested], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
  return out.stdout.split()


def test_configure_cpu_devices_in_a_fresh_process():
  assert _probe(3, '') == ['3', '3']
  # XLA_FLAGS' device count wins (the tests' and the user's explicit choice).
  assert _probe(3, '--xla_force_host_platform_device_count=2') == ['None', '2']
