"""One flag style across every command: ``--help`` of each CLI spells its flags with dashes
(the argparse/POSIX norm); only ``python -m jaxalign.train`` keeps absl's ``--config.key``."""

import contextlib
import importlib
import io
import re

import pytest

from jaxalign import bench

CLIS = ('jaxalign.evaluate', 'jaxalign.predict', 'jaxalign.complete', 'jaxalign.synthesize',
        'jaxalign.datasets', 'jaxalign.assets', 'jaxalign.experiments.pose')


def _help(main, argv):
  out = io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    with pytest.raises(SystemExit) as e:
      main(argv)
  assert e.value.code == 0, argv
  return out.getvalue()


def _flags(text):
  return set(re.findall(r'(?<![\w-])--[A-Za-z][\w-]*', text))


@pytest.mark.parametrize('name', CLIS)
def test_cli_flags_use_dashes(name):
  module = importlib.import_module(name)
  text = _help(module.main, ['--help'])
  flags = _flags(text)
  assert flags, name
  assert not [f for f in flags if '_' in f], (name, sorted(flags))


@pytest.mark.parametrize('command', bench.COMMANDS)
def test_bench_flags_use_dashes(command):
  text = _help(bench.main, [command, '--help'])
  flags = _flags(text)
  assert not [f for f in flags if '_' in f], (command, sorted(flags))


def test_the_completion_backend_flag_has_one_name():
  for name in ('jaxalign.evaluate', 'jaxalign.predict', 'jaxalign.complete'):
    text = _help(importlib.import_module(name).main, ['--help'])
    assert '--completion' in _flags(text) and '--backend' not in _flags(text), name
