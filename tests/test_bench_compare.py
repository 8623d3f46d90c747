"""python -m jaxalign.bench compare: JAX vs the PyTorch twin in one run."""

import json
import sys

import pytest

from jaxalign.benchmarks import compare


def test_missing_torch_is_a_clear_error(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)   # import torch -> ImportError
  assert compare.main(['--depth', 'tiny']) == 2
  err = capsys.readouterr().err
  assert 'PyTorch is not installed' in err and '[compare]' in err and len(err.splitlines()) == 1


def test_bad_flags_exit_2(capsys):
  pytest.importorskip('torch')
  assert compare.main(['--batch-size', '0']) == 2
  assert '--batch-size' in capsys.readouterr().err
  assert compare.main(['--depth', '13']) == 2
  assert 'depth' in capsys.readouterr().err
  assert compare.main(['--batch-size', '16', '--config.cpu_devices=3']) == 2
  assert 'not divisible by the 3 devices' in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('model', ['plain', 'pose_aware'])
def test_compare_json(model, capsys):
  pytest.importorskip('torch')
  assert compare.main(['--model', model, '--depth', 'tiny', '--input-size', '32',
                       '--batch-size', '2', '--steps', '1', '--rounds', '2', '--json']) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['jax_images_per_s'] > 0 and out['torch_images_per_s'] > 0
  assert out['ratio'] == pytest.approx(out['jax_images_per_s'] / out['torch_images_per_s'])
  assert out['jax_params'] == out['torch_params']
  assert out['torch_memory_format'] in ('nchw', 'channels_last')
  assert len(out['per_round']) == 2 and out['threads'] == compare.jax_threads()
  assert out['jax_devices'] == 1          # the tests' XLA_FLAGS fix one CPU device
